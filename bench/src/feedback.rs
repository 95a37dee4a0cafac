//! The feedback scenarios: `publish`, `fold`, `replay` and `aggregator-memory`.
//!
//! The data set is deterministic: proxy `k` is `http://bench:secret@10.a.b.c:3128`
//! in one of four regions, and event `i` picks its proxy, phase, exchange and
//! latency from a hash of `i` (70 % successful requests, 10 % connects, 8 %
//! `connect_start`, 6 % timeouts, 3 % `http_429`, 3 % clean disconnects). Events
//! are published with `Nats-Msg-Id` like every client does.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, context::PublishAckFuture};
use chrono::Utc;
use futures::StreamExt;
use proxybus_client::{ClientConfig, ProxyClient};
use proxybus_shared::feedback::{FeedbackStreamConfig, MSG_ID_HEADER, ensure_feedback_stream};
use proxybus_shared::nats::NatsSettings;
use proxybus_shared::subject::AGGREGATOR_STATUS_SUBJECT;
use proxybus_shared::subject::FEEDBACK_STREAM;
use proxybus_shared::{
    Codec, ConnectionType, Encoding, ErrorKind, ExchangeId, FeedbackPhase, ProxyFeedback, ProxyId, ProxyUrl, Region,
    subject,
};

use crate::Options;
use crate::bus::Bus;
use crate::report::{Round, Row, Series, mib};
use crate::subject::{SubjectProcess, peak_rss};

/// Messages per pull of the aggregator (its default `batch_size`), used by the baseline too.
pub const BATCH_SIZE: usize = 500;
/// Publishes in flight of the bare publisher and of filling the stream.
pub const PUBLISH_WINDOW: usize = 256;
/// How long the measured side may go without progress before the run fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a child may take to stop, or a replay to finish.
const CHILD_TIMEOUT: Duration = Duration::from_secs(1800);

/// One proxy of the data set.
#[derive(Debug, Clone)]
pub struct ProxyFixture {
    /// Its id.
    pub id: ProxyId,
    /// Its redacted URL.
    pub url: String,
    /// Its region.
    pub region: Region,
}

/// `n` proxies in four regions.
pub fn fixtures(n: usize) -> Vec<ProxyFixture> {
    let regions: Vec<Region> =
        ["us-east", "eu-west", "ap-northeast", "us-west"].iter().map(|r| r.parse().expect("valid region")).collect();
    (0..n)
        .map(|k| {
            let url = format!("http://bench:secret@10.{}.{}.{}:3128", (k >> 16) & 255, (k >> 8) & 255, k & 255);
            let url = ProxyUrl::parse(&url).expect("valid proxy URL");
            ProxyFixture { id: url.id(), url: url.redacted(), region: regions[k % regions.len()].clone() }
        })
        .collect()
}

/// SplitMix64: the data set's hash.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Event `i` of the data set over `proxies` (a fresh `event_id`).
pub fn event(i: u64, proxies: &[ProxyFixture]) -> ProxyFeedback {
    let h = mix(i);
    let proxy = &proxies[(h % proxies.len() as u64) as usize];
    let exchanges = ["binance", "coinbase", "kraken"];
    let exchange: ExchangeId = exchanges[(i % 3) as usize].parse().expect("valid exchange");
    let roll = (h >> 40) % 100;
    let latency = 20 + (h >> 20) % 480;
    let (phase, success, latency_ms, error_kind, retry_after) = match roll {
        0..70 => (FeedbackPhase::Request, true, Some(latency), None, None),
        70..80 => (FeedbackPhase::Connected, true, Some(latency), None, None),
        80..88 => (FeedbackPhase::ConnectStart, true, None, None, None),
        88..94 => (FeedbackPhase::Failed, false, Some(10_000), Some(ErrorKind::Timeout), None),
        94..97 => (FeedbackPhase::Request, false, Some(latency), Some(ErrorKind::Http429), Some(30)),
        _ => (FeedbackPhase::Disconnected, true, None, None, None),
    };
    ProxyFeedback {
        schema_version: proxybus_shared::SCHEMA_VERSION,
        event_id: uuid::Uuid::new_v4(),
        proxy_id: proxy.id,
        proxy_url: proxy.url.clone(),
        exchange_id: exchange,
        connection_type: if i.is_multiple_of(2) { ConnectionType::Websocket } else { ConnectionType::Http },
        region: Some(proxy.region.clone()),
        phase,
        success,
        latency_ms,
        error_kind,
        status_code: (error_kind == Some(ErrorKind::Http429)).then_some(429),
        retry_after_seconds: retry_after,
        error_details: None,
        ws_close_code: None,
        usage_headers: Default::default(),
        connect_count: None,
        timestamp: Utc::now(),
        client_id: format!("bench-feed-{}", i % 16),
        probe: false,
    }
}

/// Publishes `events` as a bare JetStream publisher: msgpack, `Nats-Msg-Id`,
/// [`PUBLISH_WINDOW`] acks outstanding, every ack awaited.
async fn publish_bare(jetstream: &jetstream::Context, events: &[ProxyFeedback]) -> anyhow::Result<()> {
    let codec = Codec::default();
    let mut acks: VecDeque<PublishAckFuture> = VecDeque::with_capacity(PUBLISH_WINDOW);
    for event in events {
        let mut headers = Encoding::MsgPack.headers();
        headers.insert(MSG_ID_HEADER, event.event_id.to_string().as_str());
        let payload = codec.encode(Encoding::MsgPack, event)?;
        let subject = subject::feedback(&event.exchange_id, event.connection_type);
        if acks.len() >= PUBLISH_WINDOW
            && let Some(ack) = acks.pop_front()
        {
            ack.into_future().await?;
        }
        acks.push_back(jetstream.publish_with_headers(subject, headers, payload).await?);
    }
    for ack in acks {
        ack.into_future().await?;
    }
    Ok(())
}

/// Creates stream `PROXY_FEEDBACK` if needed and empties it.
async fn empty_stream(jetstream: &jetstream::Context) -> anyhow::Result<jetstream::stream::Stream> {
    ensure_feedback_stream(jetstream, &FeedbackStreamConfig::default()).await?;
    let stream = jetstream.get_stream(FEEDBACK_STREAM).await?;
    stream.purge().await?;
    Ok(stream)
}

/// Makes the stream hold exactly `events` events over `proxies` proxies (reused
/// when the previous scenario left that data set); returns its last sequence.
async fn dataset(bus: &mut Bus, jetstream: &jetstream::Context, proxies: usize, events: u64) -> anyhow::Result<u64> {
    if bus.dataset != Some((proxies, events)) {
        bus.dataset = None;
        empty_stream(jetstream).await?;
        let fixtures = fixtures(proxies);
        let started = Instant::now();
        let chunk = 50_000;
        let mut i = 0;
        while i < events {
            let batch: Vec<ProxyFeedback> = (i..(i + chunk).min(events)).map(|i| event(i, &fixtures)).collect();
            publish_bare(jetstream, &batch).await?;
            i += batch.len() as u64;
        }
        eprintln!(
            "  stream filled: {events} events over {proxies} proxies in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        bus.dataset = Some((proxies, events));
    }
    let mut stream = jetstream.get_stream(FEEDBACK_STREAM).await?;
    let state = stream.info().await?.state.clone();
    if state.messages != events {
        bail!("stream holds {} messages, {events} expected", state.messages);
    }
    Ok(state.last_sequence)
}

/// `publish`: `ProxyClient::report` of `n` events and `flush_feedback`, against the bare publisher.
pub async fn publish(bus: &mut Bus, options: &Options) -> anyhow::Result<Vec<Row>> {
    let n = options.counts().publish_events;
    let nats = bus.connect().await?;
    let jetstream = jetstream::new(nats.clone());
    let fixtures = fixtures(1_000);
    bus.dataset = None;
    let (mut baseline, mut subject) = (Series::new(), Series::new());
    for round in 0..=options.rounds {
        // Round 0 is a warm-up of both sides.
        let events: Vec<ProxyFeedback> = (0..n as u64).map(|i| event(i, &fixtures)).collect();
        empty_stream(&jetstream).await?;
        let started = Instant::now();
        publish_bare(&jetstream, &events).await?;
        let bare = Round { ops: n as u64, seconds: started.elapsed().as_secs_f64() };

        let events: Vec<ProxyFeedback> = (0..n as u64).map(|i| event(i, &fixtures)).collect();
        empty_stream(&jetstream).await?;
        let mut config = ClientConfig::new(NatsSettings::new(bus.url()), format!("bench-publisher-{round}"));
        // Large enough that `report` never drops: the bench measures publishing, not the queue bound.
        config.feedback_queue_capacity = n;
        let client = ProxyClient::with_nats(config, nats.clone());
        let started = Instant::now();
        for event in events {
            client.report(event);
        }
        if !client.flush_feedback(STALL_TIMEOUT).await {
            bail!("the client's feedback queue did not drain: {:?}", client.feedback_stats());
        }
        let reported = Round { ops: n as u64, seconds: started.elapsed().as_secs_f64() };
        let stats = client.feedback_stats();
        if stats.published != n as u64 || stats.dropped != 0 {
            bail!("client published {} of {n} events, dropped {}", stats.published, stats.dropped);
        }
        let stored = jetstream.get_stream(FEEDBACK_STREAM).await?.info().await?.state.messages;
        if stored != n as u64 {
            bail!("the stream holds {stored} of the {n} events the client reported (each exactly once expected)");
        }
        if round > 0 {
            baseline.push(bare, None);
            subject.push(reported, None);
        }
    }
    empty_stream(&jetstream).await?;
    Ok(vec![
        Row::new("publish", format!("{n} events"), "ProxyClient::report + flush_feedback", &subject)
            .against(format!("bare JetStream publish, {PUBLISH_WINDOW} acks in flight"), &baseline)
            .min_ratio(0.8)
            .note("in-process (the client library runs in the feed's process): no separate RSS"),
    ])
}

/// The aggregator's counters, when it answers.
async fn aggregator_status(client: &async_nats::Client) -> Option<serde_json::Value> {
    let reply = tokio::time::timeout(Duration::from_secs(1), client.request(AGGREGATOR_STATUS_SUBJECT, "".into()))
        .await
        .ok()?
        .ok()?;
    serde_json::from_slice(&reply.payload).ok()
}

/// Runs an aggregator child into fresh buckets until it has committed `target`;
/// returns the round, the child's peak RSS, and the RSS when it had folded the first event.
async fn fold_with_aggregator(
    bus: &Bus,
    options: &Options,
    jetstream: &jetstream::Context,
    label: &str,
    events: u64,
    target: u64,
) -> anyhow::Result<(Round, u64, Option<u64>)> {
    let client = bus.connect().await?;
    let (health, state) = (format!("BENCH_HEALTH_{label}"), format!("BENCH_STATE_{label}"));
    let args = [
        "aggregator".to_owned(),
        "--nats-url".to_owned(),
        bus.url().to_owned(),
        "--health-bucket".to_owned(),
        health.clone(),
        "--state-bucket".to_owned(),
        state.clone(),
    ];
    let started = Instant::now();
    let process = SubjectProcess::spawn(&options.exe, "aggregator", &args)?;
    let pid = process.pid().map(|p| p.to_string()).unwrap_or_default();
    let (mut last, mut moved_at, mut early_rss) = (0_u64, Instant::now(), None);
    let folded = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let Some(status) = aggregator_status(&client).await else {
            if moved_at.elapsed() > STALL_TIMEOUT {
                bail!("the aggregator did not answer for {STALL_TIMEOUT:?}");
            }
            continue;
        };
        let seq = status["last_seq"].as_u64().unwrap_or(0);
        if seq > 0 && early_rss.is_none() {
            early_rss = peak_rss(&pid);
        }
        if seq >= target {
            break status;
        }
        if seq > last {
            (last, moved_at) = (seq, Instant::now());
        } else if moved_at.elapsed() > STALL_TIMEOUT {
            bail!("the aggregator stalled at sequence {seq} of {target}: {status}");
        }
    };
    let round = Round { ops: events, seconds: started.elapsed().as_secs_f64() };
    let report = process.finish(CHILD_TIMEOUT).await?;
    if folded["events_folded"].as_u64() != Some(events) || folded["dead_lettered"].as_u64() != Some(0) {
        bail!("the aggregator folded {folded}, {events} events expected");
    }
    for bucket in [&health, &state] {
        let _ = jetstream.delete_key_value(bucket).await;
    }
    let stream = jetstream.get_stream(FEEDBACK_STREAM).await?;
    let _ = stream.delete_consumer(proxybus_shared::subject::AGGREGATOR_CONSUMER).await;
    Ok((round, report.peak_rss_bytes, early_rss))
}

/// A bare durable pull consumer fetching [`BATCH_SIZE`] at a time and acking each message.
async fn consume_bare(jetstream: &jetstream::Context, name: &str, target: u64) -> anyhow::Result<u64> {
    let stream = jetstream.get_stream(FEEDBACK_STREAM).await?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.to_owned()),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: (BATCH_SIZE * 4) as i64,
            max_batch: BATCH_SIZE as i64,
            ..Default::default()
        })
        .await?;
    let mut count = 0;
    let mut moved_at = Instant::now();
    'fetch: loop {
        let mut messages = consumer.fetch().max_messages(BATCH_SIZE).expires(Duration::from_secs(1)).messages().await?;
        let mut batch = Vec::with_capacity(BATCH_SIZE);
        while let Some(message) = messages.next().await {
            batch.push(message.map_err(|err| anyhow::anyhow!(err))?);
        }
        if batch.is_empty() && moved_at.elapsed() > STALL_TIMEOUT {
            bail!("bare consumer stalled after {count} messages");
        }
        let mut done = false;
        for message in batch {
            let seq = message.info().map_err(|err| anyhow::anyhow!(err))?.stream_sequence;
            message.ack().await.map_err(|err| anyhow::anyhow!(err))?;
            count += 1;
            moved_at = Instant::now();
            done |= seq >= target;
        }
        if done {
            break 'fetch;
        }
    }
    stream.delete_consumer(name).await?;
    Ok(count)
}

/// `fold`: the aggregator folding the data set against the bare consume-and-ack.
pub async fn fold(bus: &mut Bus, options: &Options) -> anyhow::Result<Vec<Row>> {
    let counts = options.counts();
    let (proxies, events) = (counts.fold_proxies, counts.fold_events);
    let jetstream = jetstream::new(bus.connect().await?);
    let target = dataset(bus, &jetstream, proxies, events).await?;
    let (mut baseline, mut subject) = (Series::new(), Series::new());
    let mut rss = 0;
    for round in 0..options.rounds {
        let started = Instant::now();
        let consumed = consume_bare(&jetstream, &format!("bench-bare-{round}"), target).await?;
        baseline.push(Round { ops: consumed, seconds: started.elapsed().as_secs_f64() }, None);
        let (r, peak, _) =
            fold_with_aggregator(bus, options, &jetstream, &format!("FOLD_{round}"), events, target).await?;
        eprintln!("  round {round}: bare {:.0}/s, aggregator {:.0}/s", baseline.stat().rounds[round].rate(), r.rate());
        subject.push(r, None);
        rss = rss.max(peak);
    }
    Ok(vec![
        Row::new("fold", format!("{events} events, {proxies} proxies"), "aggregator (fold + commit + ack)", &subject)
            .against(format!("bare durable pull consumer, fetch {BATCH_SIZE} + ack"), &baseline)
            .rss(Some(rss))
            .min_ratio(0.7)
            .note("subject time runs from spawning the aggregator to its checkpoint reaching the last sequence"),
    ])
}

/// A bare ordered consumer reading the stream to `target`.
async fn read_ordered(jetstream: &jetstream::Context, target: u64) -> anyhow::Result<u64> {
    let stream = jetstream.get_stream(FEEDBACK_STREAM).await?;
    let ordered = stream
        .create_consumer(consumer::pull::OrderedConfig { deliver_policy: DeliverPolicy::All, ..Default::default() })
        .await?;
    let mut messages = ordered.messages().await?;
    let mut count = 0;
    loop {
        let message = tokio::time::timeout(STALL_TIMEOUT, messages.next())
            .await
            .context("ordered consumer stalled")?
            .context("ordered consumer ended")?
            .map_err(|err| anyhow::anyhow!(err))?;
        count += 1;
        if message.info().map_err(|err| anyhow::anyhow!(err))?.stream_sequence >= target {
            return Ok(count);
        }
    }
}

/// `replay`: `proxybus_aggregator::replay` from the start against a bare ordered read.
pub async fn replay(bus: &mut Bus, options: &Options) -> anyhow::Result<Vec<Row>> {
    let counts = options.counts();
    let (proxies, events) = (counts.fold_proxies, counts.fold_events);
    let jetstream = jetstream::new(bus.connect().await?);
    let target = dataset(bus, &jetstream, proxies, events).await?;
    let (mut baseline, mut subject) = (Series::new(), Series::new());
    let mut rss = 0;
    for round in 0..options.rounds {
        let started = Instant::now();
        let read = read_ordered(&jetstream, target).await?;
        baseline.push(Round { ops: read, seconds: started.elapsed().as_secs_f64() }, None);
        let into = format!("BENCH_REPLAY_{round}");
        let args =
            ["replay".to_owned(), "--nats-url".to_owned(), bus.url().to_owned(), "--into".to_owned(), into.clone()];
        let report = SubjectProcess::spawn(&options.exe, "replay", &args)?.finish(CHILD_TIMEOUT).await?;
        let replayed = report.events.unwrap_or(0);
        if replayed != events {
            bail!("replay folded {replayed} events, {events} expected");
        }
        let r = Round { ops: replayed, seconds: report.elapsed_seconds.unwrap_or(0.0) };
        eprintln!(
            "  round {round}: ordered read {:.0}/s, replay {:.0}/s",
            baseline.stat().rounds[round].rate(),
            r.rate()
        );
        subject.push(r, None);
        rss = rss.max(report.peak_rss_bytes);
        let _ = jetstream.delete_key_value(&into).await;
    }
    Ok(vec![
        Row::new("replay", format!("{events} events, {proxies} proxies"), "proxybus_aggregator::replay", &subject)
            .against("bare ordered consumer", &baseline)
            .rss(Some(rss))
            .min_ratio(0.7)
            .note(format!(
                "replay time (measured inside the child) includes writing the {proxies} folded records into a fresh bucket"
            )),
    ])
}

/// `aggregator-memory`: peak RSS of an aggregator that has folded two events of each of `n` proxies.
pub async fn aggregator_memory(bus: &mut Bus, options: &Options) -> anyhow::Result<Vec<Row>> {
    let proxies = options.counts().memory_proxies;
    let events = 2 * proxies as u64;
    let jetstream = jetstream::new(bus.connect().await?);
    let target = dataset(bus, &jetstream, proxies, events).await?;
    let (round, peak, early) = fold_with_aggregator(bus, options, &jetstream, "MEMORY", events, target).await?;
    let mut series = Series::new();
    series.push(round, None);
    let limit = 256 * 1024 * 1024;
    Ok(vec![
        Row::new(
            "aggregator-memory",
            format!("{proxies} proxies ({events} events)"),
            "aggregator (fold + commit)",
            &series,
        )
        .rss(Some(peak))
        .target("≤ 256 MiB RSS", peak <= limit)
        .note(format!(
            "peak RSS when the first batch was committed: {}; throughput = events folded and committed per second",
            early.map_or("unknown".to_owned(), mib)
        )),
    ])
}
