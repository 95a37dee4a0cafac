//! The live resolver against an upstream proxy service that fails in every way
//! [`FaultyUpstream`] can (issue #17, part 3).
//!
//! One resolver runs in-process on its own nats-server, with one HTTPS endpoint
//! (the faulty upstream, its CA trusted), `external_service.timeout_seconds = 1`,
//! `failure_threshold = 3`, `recovery_timeout_seconds = 1`, and `/healthz` probes
//! off, so only traffic moves the breaker. A feed asks over raw NATS request, each
//! time with a new `client_id` (no cache hit hides a fault). For every fault:
//!
//! - every request is answered within the timeout budget: the upstream call is
//!   bounded by `timeout_seconds` (reqwest's total timeout, `proxy_service_client` in
//!   `shared/src/http.rs`), so an answer later than [`TIMEOUT`] + [`MARGIN`] is a bug
//!   of the timeout logic (the margin is for scheduling on a loaded 2-core machine);
//! - the answer is a fallback of the configured chain (`resolver.rs`: stale cache →
//!   embedded → direct per policy), counted in `$SRV.STATS` `fallback_used_count`;
//! - no answer carries anything but the healthy proxy or the fallback's: never a
//!   hostile URL (`upstream.rs`: an answer whose `proxy_url` is not a valid proxy URL
//!   counts as a failure of the endpoint);
//! - the breaker opens after exactly `failure_threshold` failed calls (no call reaches
//!   the upstream while it is open), and once the upstream heals it goes half-open after
//!   `recovery_timeout` and the one probe's success closes it (`shared/src/breaker.rs`,
//!   module doc); read from `proxybus_breaker_transitions_total` on the process's
//!   recorder and `circuit_breaker_open_count` in `$SRV.STATS`.
//!
//! The test prints a Markdown table of what it saw (docs/reliability.md, "Upstream faults").

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use proxybus_shared::{Codec, ConnectionType, Encoding, ProxyRequest, ProxyResponse, ResponseSource};
use proxybus_tests::{Fault, FaultyUpstream, HEALTHY_PROXY, HOSTILE_URLS, NatsServer, TlsFault};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// `external_service.timeout_seconds` of the resolver under test.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Scheduling slack on top of [`TIMEOUT`].
const MARGIN: Duration = Duration::from_millis(500);
/// `failure_threshold` of the resolver under test.
const FAILURES: usize = 3;
/// The embedded proxy (`CRYPTOFEED_PROXY_DEFAULT__HTTP__URL`) of the embedded-fallback configuration.
const EMBEDDED: &str = "socks5://feed:pw@embedded.example:1080";
/// Requests per fault.
const REQUESTS: usize = 6;

/// A resolver in-process, its nats-server and the faulty upstream it asks.
struct Rig {
    _nats: NatsServer,
    client: async_nats::Client,
    upstream: FaultyUpstream,
    stop: CancellationToken,
    endpoint: String,
    codec: Codec,
    asked: usize,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Rig {
    /// Starts nats-server, a TLS faulty upstream and the resolver; `embedded` configures the
    /// embedded proxy (else the chain ends with `direct`).
    async fn start(embedded: bool) -> Self {
        proxybus_shared::telemetry::init_for_tests();
        let nats = NatsServer::start().await.expect("nats-server starts");
        let upstream = FaultyUpstream::start_tls().await;
        let mut vars: Vec<(&str, String)> = vec![
            ("NATS_URL", nats.client_url()),
            ("CRYPTOFEED_PROXY_ENABLED", "true".into()),
            ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__ENABLED", "true".into()),
            ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__ENDPOINTS", format!(r#"["{}"]"#, upstream.url())),
            ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__AUTH_CREDENTIALS__TOKEN", "faults-token".into()),
            (
                "CRYPTOFEED_PROXY_EXTERNAL_SERVICE__AUTH_CREDENTIALS__CA_FILE",
                upstream.ca_file().expect("a TLS upstream").display().to_string(),
            ),
            ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__TIMEOUT_SECONDS", TIMEOUT.as_secs().to_string()),
            ("PROXYBUS_RESOLVER_FAILURE_THRESHOLD", FAILURES.to_string()),
            ("PROXYBUS_RESOLVER_RECOVERY_TIMEOUT_SECONDS", "1".into()),
            ("PROXYBUS_RESOLVER_HALF_OPEN_PROBES", "1".into()),
            ("PROXYBUS_RESOLVER_HEALTH_PROBE_INTERVAL_SECONDS", "0".into()),
            ("PROXYBUS_RESOLVER_FALLBACK_POLICY", "direct_connection".into()),
        ];
        if embedded {
            vars.push(("CRYPTOFEED_PROXY_DEFAULT__HTTP__URL", EMBEDDED.into()));
        }
        let env = vars.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        let config = proxybus_resolver::ResolverConfig::load(None, None, &env).expect("a valid configuration");
        let stop = CancellationToken::new();
        tokio::spawn(proxybus_resolver::run(config, stop.clone().cancelled_owned()));
        let client = nats.connect().await.expect("a client");
        let endpoint = upstream.url().to_owned();
        let mut rig = Rig { _nats: nats, client, upstream, stop, endpoint, codec: Codec::default(), asked: 0 };
        // Its endpoints listed, not just `$SRV.PING` answered (that comes before they subscribe).
        proxybus_shared::nats::wait_for_service(
            &rig.client,
            proxybus_shared::subject::RESOLVER_SERVICE,
            Duration::from_secs(10),
        )
        .await
        .expect("the resolver serves its endpoints");
        assert_eq!(rig.ask().await.1.source, ResponseSource::Service, "a healthy upstream answers");
        rig
    }

    /// Asks for a proxy for a new client; returns how long the answer took and the answer.
    ///
    /// # Panics
    /// On an error reply or no reply within 10 s (a hang).
    async fn ask(&mut self) -> (Duration, ProxyResponse) {
        self.asked += 1;
        let request =
            ProxyRequest::new("binance".parse().unwrap(), ConnectionType::Http, format!("feed-{}", self.asked));
        let body = self.codec.encode(Encoding::MsgPack, &request).unwrap();
        let started = Instant::now();
        let reply =
            tokio::time::timeout(Duration::from_secs(10), self.client.request("proxy.v1.request.binance.http", body))
                .await
                .expect("an answer within 10 s, not a hang")
                .expect("a reply");
        let elapsed = started.elapsed();
        assert!(
            reply.headers.as_ref().is_none_or(|h| h.get("Nats-Service-Error").is_none()),
            "error reply under {:?}: {:?}",
            self.upstream.fault(),
            reply.headers
        );
        let answer: ProxyResponse = self.codec.decode(reply.headers.as_ref(), &reply.payload).expect("a ProxyResponse");
        (elapsed, answer)
    }

    /// The `data` of `$SRV.STATS.proxybus-resolver`.
    async fn stats(&self) -> serde_json::Value {
        let reply = self.client.request("$SRV.STATS.proxybus-resolver", Bytes::new()).await.expect("stats");
        let stats: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        stats["endpoints"][0]["data"].clone()
    }

    /// `proxybus_breaker_transitions_total` of the endpoint's breaker, by target state.
    fn transitions(&self) -> BTreeMap<String, u64> {
        let text = proxybus_shared::telemetry::render_metrics();
        let mut counts = BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with("proxybus_breaker_transitions_total{")) {
            if !line.contains(&format!("breaker=\"{}\"", self.endpoint)) {
                continue;
            }
            let to = line.split("to=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap_or_default();
            let value: u64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0);
            counts.insert(to.to_owned(), value);
        }
        counts
    }
}

/// What one fault did.
struct Row {
    fault: String,
    slowest: Duration,
    sources: BTreeMap<&'static str, usize>,
    calls: usize,
    opened: u64,
    fallbacks: u64,
    healed_in: Duration,
}

fn source_name(source: ResponseSource) -> &'static str {
    source.as_str()
}

/// Transitions to `to` between two readings of [`Rig::transitions`].
fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, to: &str) -> u64 {
    after.get(to).copied().unwrap_or(0) - before.get(to).copied().unwrap_or(0)
}

/// Every fault of [`FaultyUpstream`], flap last.
fn faults() -> Vec<Fault> {
    let mut faults = vec![
        Fault::Slow(Duration::from_secs(2)),
        Fault::Status(500),
        Fault::Status(503),
        Fault::Status(429),
        Fault::Garbage,
    ];
    faults.extend(HOSTILE_URLS.iter().map(|url| Fault::HostileUrl((*url).to_owned())));
    faults.extend([Fault::Tls(TlsFault::UntrustedCert), Fault::Tls(TlsFault::PlainHttp), Fault::Reset, Fault::Flap]);
    faults
}

/// Runs every fault against a resolver whose fallback answers `fallback`, then heals.
async fn every_fault(embedded: bool, fallback: ResponseSource) {
    let mut rig = Rig::start(embedded).await;
    let budget = TIMEOUT + MARGIN;
    let fallback_url = embedded.then_some(EMBEDDED);
    let mut rows = Vec::new();
    for fault in faults() {
        let flapping = fault == Fault::Flap;
        let before_stats = rig.stats().await;
        let before = rig.transitions();
        rig.upstream.set(fault.clone());
        // Read after the switch: a call already in the handler before it is not one of this fault's.
        let calls = rig.upstream.calls();
        let mut row = Row {
            fault: fault.name(),
            slowest: Duration::ZERO,
            sources: BTreeMap::new(),
            calls: 0,
            opened: 0,
            fallbacks: 0,
            healed_in: Duration::ZERO,
        };
        // Flapping: spread over 4 s so both halves of its period are met.
        let (requests, pause) = if flapping { (16, Duration::from_millis(250)) } else { (REQUESTS, Duration::ZERO) };
        for i in 0..requests {
            let (elapsed, answer) = rig.ask().await;
            let url = answer.proxy_url.as_deref();
            assert!(elapsed <= budget, "{}: request {i} answered in {elapsed:?}, over {budget:?}", row.fault);
            assert!(
                url == fallback_url || (flapping && url == Some(HEALTHY_PROXY)),
                "{}: request {i} was handed {url:?}",
                row.fault
            );
            if let Some(url) = url {
                for hostile in ["file:", "javascript:", "data:", "gopher:", "\r", "\n", "/etc/passwd"] {
                    assert!(!url.contains(hostile), "{}: handed {url:?}", row.fault);
                }
            }
            if flapping {
                assert!(matches!(answer.source, ResponseSource::Service) || answer.source == fallback);
            } else {
                assert_eq!(answer.source, fallback, "{}: request {i}", row.fault);
            }
            row.slowest = row.slowest.max(elapsed);
            *row.sources.entry(source_name(answer.source)).or_default() += 1;
            tokio::time::sleep(pause).await;
        }
        row.calls = rig.upstream.calls() - calls;
        row.opened = delta(&before, &rig.transitions(), "open");
        let stats = rig.stats().await;
        let counter = |name: &str| stats[name].as_u64().unwrap() - before_stats[name].as_u64().unwrap();
        row.fallbacks = counter("fallback_used_count");
        assert_eq!(counter("circuit_breaker_open_count"), row.opened, "{}: $SRV.STATS and /metrics agree", row.fault);
        if flapping {
            assert!(row.sources.contains_key("service"), "{}: the healthy half answers: {:?}", row.fault, row.sources);
            assert!(row.sources.len() > 1, "{}: the failing half falls back: {:?}", row.fault, row.sources);
        } else {
            assert_eq!(row.opened, 1, "{}: the breaker opens once", row.fault);
            assert_eq!(row.fallbacks, REQUESTS as u64, "{}: every answer is a counted fallback", row.fault);
            let reached = matches!(fault, Fault::Slow(_) | Fault::Status(_) | Fault::Garbage | Fault::HostileUrl(_));
            let expected = if reached { FAILURES } else { 0 };
            assert_eq!(row.calls, expected, "{}: {FAILURES} failures open it, then no call goes out", row.fault);
        }

        // Heal: the first request after recovery_timeout is the half-open probe; its
        // success closes the breaker.
        let before = rig.transitions();
        rig.upstream.set(Fault::Healthy);
        let healing = Instant::now();
        loop {
            let (elapsed, answer) = rig.ask().await;
            assert!(elapsed <= budget, "healing after {}: answered in {elapsed:?}", row.fault);
            if answer.source == ResponseSource::Service {
                assert_eq!(answer.proxy_url.as_deref(), Some(HEALTHY_PROXY));
                break;
            }
            assert!(healing.elapsed() < Duration::from_secs(10), "{}: the breaker never closes", row.fault);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        row.healed_in = healing.elapsed();
        let after = rig.transitions();
        let delta = |to: &str| after.get(to).copied().unwrap_or(0) - before.get(to).copied().unwrap_or(0);
        if !flapping || row.opened > 0 {
            assert!(
                delta("half_open") >= 1 && delta("closed") >= 1,
                "{}: half-open, then closed: {after:?}",
                row.fault
            );
        }
        rows.push(row);
    }
    println!(
        "\n| fault | requests | slowest answer (budget {} ms) | answers | upstream calls | breaker opened | fallbacks counted | healed (service again) in |",
        budget.as_millis()
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in rows {
        let answers: Vec<String> = row.sources.iter().map(|(source, n)| format!("{n} {source}")).collect();
        println!(
            "| `{}` | {} | {} ms | {} | {} | {} | {} | {} ms |",
            row.fault.replace('|', "\\|"),
            row.sources.values().sum::<usize>(),
            row.slowest.as_millis(),
            answers.join(", "),
            row.calls,
            row.opened,
            row.fallbacks,
            row.healed_in.as_millis()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_fault_is_answered_in_time_by_the_embedded_fallback_and_the_breaker_cycles() {
    every_fault(true, ResponseSource::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_embedded_proxies_every_upstream_fault_is_answered_in_time_with_direct() {
    every_fault(false, ResponseSource::Direct).await;
}
