//! `reconnect-storm`: N feeds ask for a proxy at the same instant, as after an
//! exchange's daily websocket cut (Binance closes every websocket after 24 h;
//! every feed of a deployment reconnects within the same second).
//!
//! N simulated feeds (distinct `client_id`s `storm-{round}-{i}`, spread over four
//! exchanges, websocket) share [`CONNECTIONS`] NATS connections, as feeds share
//! a few processes. All N requests are sent at once; the row reports the time
//! from the first send to the last answer (as ops/s = N / that time) and the
//! latency of every request, against the same N bare request/replies sent at once
//! to the bare responder over the same connections. Two cases, alternating with
//! the baseline in every round:
//! - **cold**: N clients the resolver has never seen — every one is a distinct
//!   cache key, so the pool must decide each: exactly N upstream calls expected;
//! - **warm**: the same N clients again while their leases are cached (a cut
//!   shorter than the cache TTL): 0 upstream calls expected.
//!
//! A request that fails or times out is counted, not fatal: the target is that
//! every one is answered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use proxybus_shared::subject::SERVICE_ERROR_CODE_HEADER;
use proxybus_shared::{Codec, ConnectionType, Encoding, ExchangeId, ProxyRequest, ProxyResponse, subject};
use tokio::task::JoinSet;

use crate::Options;
use crate::bus::Bus;
use crate::cpu::CpuMeter;
use crate::pool::CountingPool;
use crate::report::{Round, Row, Series, latency_histogram};
use crate::resolve::{BARE_SUBJECT, cpu_note, start_bare_responder, start_resolver};

/// NATS connections the simulated feeds share.
pub const CONNECTIONS: usize = 16;
/// Exchanges the feeds are spread over (round robin by feed index).
pub const EXCHANGES: [&str; 4] = ["binance", "coinbase", "kraken", "bybit"];
/// How long one request of the storm may take before it counts as unanswered.
pub const STORM_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a subject process may take to start or stop.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// One storm: N requests sent at once.
#[derive(Debug, Clone)]
struct Storm {
    /// `(subject, payload)` of each request.
    requests: Vec<(Arc<str>, Bytes)>,
}

impl Storm {
    /// N feeds `storm-{tag}-{i}` asking the resolver for a websocket proxy.
    fn resolver(n: usize, tag: &str) -> Self {
        let codec = Codec::default();
        let requests = (0..n)
            .map(|i| {
                let exchange: ExchangeId = EXCHANGES[i % EXCHANGES.len()].parse().expect("valid exchange ids");
                let subject: Arc<str> = subject::request(&exchange, ConnectionType::Websocket).into();
                let request = ProxyRequest::new(exchange, ConnectionType::Websocket, format!("storm-{tag}-{i}"));
                (subject, codec.encode(Encoding::MsgPack, &request).expect("requests encode"))
            })
            .collect();
        Self { requests }
    }

    /// The same payloads, all to the bare responder.
    fn bare(&self) -> Self {
        let subject: Arc<str> = BARE_SUBJECT.into();
        Self { requests: self.requests.iter().map(|(_, payload)| (subject.clone(), payload.clone())).collect() }
    }
}

/// What one storm did.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    answered: u64,
    failed: u64,
}

/// Sends every request of `storm` at once over `clients` (request `i` on client
/// `i % clients.len()`), into `series`, with the CPU time of `process`.
async fn blow(
    clients: &[async_nats::Client],
    storm: &Storm,
    process: Option<u32>,
    bus: &Bus,
    series: &mut Series,
) -> anyhow::Result<Outcome> {
    let meter = CpuMeter::start(&[process, bus.server_pid(), Some(std::process::id())]);
    let headers = Encoding::MsgPack.headers();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, (subject, payload)) in storm.requests.iter().enumerate() {
        let client = clients[i % clients.len()].clone();
        let (subject, payload, headers) = (subject.to_string(), payload.clone(), headers.clone());
        tasks.spawn(async move {
            let at = Instant::now();
            let reply =
                tokio::time::timeout(STORM_REQUEST_TIMEOUT, client.request_with_headers(subject, headers, payload))
                    .await
                    .ok()?
                    .ok()?;
            let is_error = reply.headers.as_ref().and_then(|h| h.get(SERVICE_ERROR_CODE_HEADER)).is_some();
            let answer: ProxyResponse = Codec::default().decode_as(Encoding::MsgPack, &reply.payload).ok()?;
            (!is_error && answer.proxy_id.is_some()).then(|| at.elapsed())
        });
    }
    let mut latency = latency_histogram();
    let mut outcome = Outcome { answered: 0, failed: 0 };
    while let Some(result) = tasks.join_next().await {
        match result.context("a storm request panicked")? {
            Some(elapsed) => {
                outcome.answered += 1;
                latency.saturating_record(elapsed.as_micros() as u64);
            }
            None => outcome.failed += 1,
        }
    }
    let round = Round { ops: outcome.answered, seconds: started.elapsed().as_secs_f64() };
    series.push(round, Some(&latency));
    series.push_cpu(round.ops, &meter.stop());
    Ok(outcome)
}

/// `reconnect-storm`: N feeds at once, cold and warm, against N bare request/replies at once.
pub async fn reconnect_storm(bus: &mut Bus, options: &Options) -> anyhow::Result<Vec<Row>> {
    let n = options.counts().storm_clients;
    let pool = CountingPool::start(options).await?;
    let resolver = start_resolver(bus, options, &pool, (2 * n * options.rounds).max(100_000) as u64).await?;
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for c in 0..CONNECTIONS {
        let client = async_nats::ConnectOptions::new()
            .name(format!("proxybus-bench-storm-{c}"))
            .request_timeout(Some(STORM_REQUEST_TIMEOUT))
            .connect(bus.url())
            .await
            .with_context(|| format!("connecting to {}", bus.url()))?;
        clients.push(client);
    }
    // The bare responder replies with the bytes of one of the resolver's answers.
    let sample = Storm::resolver(1, "sample");
    let (subject, payload) = &sample.requests[0];
    let reply =
        clients[0].request_with_headers(subject.to_string(), Encoding::MsgPack.headers(), payload.clone()).await?;
    let (bare, _payload_file) = start_bare_responder(bus, options, &reply.payload).await?;
    // Warm-up (connections, allocator, the pool's HTTP connections), not timed.
    let warm_up = Storm::resolver((n / 10).max(1), "warm-up");
    blow(&clients, &warm_up.bare(), None, bus, &mut Series::new()).await?;
    blow(&clients, &warm_up, None, bus, &mut Series::new()).await?;

    let (mut baseline, mut cold, mut warm) = (Series::new(), Series::new(), Series::new());
    let (mut cold_calls, mut warm_calls, mut unanswered) = (Vec::new(), Vec::new(), 0);
    for round in 0..options.rounds {
        let storm = Storm::resolver(n, &round.to_string());
        unanswered += blow(&clients, &storm.bare(), bare.pid(), bus, &mut baseline).await?.failed;
        let before = pool.requests().await?;
        unanswered += blow(&clients, &storm, resolver.pid(), bus, &mut cold).await?.failed;
        cold_calls.push(pool.requests().await? - before);
        let before = pool.requests().await?;
        unanswered += blow(&clients, &storm, resolver.pid(), bus, &mut warm).await?.failed;
        warm_calls.push(pool.requests().await? - before);
    }
    bare.finish(PROCESS_TIMEOUT).await?;
    let report = resolver.finish(PROCESS_TIMEOUT).await?;
    pool.finish().await?;
    let distinct = n as u64;
    let every_answered = unanswered == 0;
    let row = |case: String, series: &Series, calls: Vec<u64>, expected: u64| {
        let met = every_answered && calls.iter().all(|&c| c == expected);
        let mut row = Row::new("reconnect-storm", case, "feeds → NATS → resolver", series)
            .against(format!("{n} bare request/replies at once"), &baseline)
            .rss(Some(report.peak_rss_bytes))
            .target(format!("all answered; {expected} upstream calls per storm"), met);
        row.note = format!(
            "ops/s = {n} / time to the last answer; {CONNECTIONS} connections, {} exchanges; upstream calls per \
             round {calls:?}; unanswered over the run {unanswered}; {}",
            EXCHANGES.len(),
            cpu_note(&row)
        );
        row.upstream_calls = Some(calls);
        row
    };
    Ok(vec![
        row(format!("{n} new feeds at once (cold)"), &cold, cold_calls, distinct),
        row(format!("the same {n} feeds again (cached)"), &warm, warm_calls, 0),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_has_distinct_clients_over_every_exchange() {
        let storm = Storm::resolver(8, "t");
        let codec = Codec::default();
        let requests: Vec<ProxyRequest> =
            storm.requests.iter().map(|(_, p)| codec.decode_as(Encoding::MsgPack, p).unwrap()).collect();
        let clients: std::collections::BTreeSet<_> = requests.iter().map(|r| r.client_id.clone()).collect();
        assert_eq!(clients.len(), 8, "one client_id per feed");
        for (i, ((subject, _), request)) in storm.requests.iter().zip(&requests).enumerate() {
            assert_eq!(request.exchange_id.as_str(), EXCHANGES[i % EXCHANGES.len()]);
            assert_eq!(subject.as_ref(), format!("proxy.v1.request.{}.websocket", EXCHANGES[i % EXCHANGES.len()]));
        }
        assert!(storm.bare().requests.iter().all(|(s, _)| s.as_ref() == BARE_SUBJECT));
    }
}
