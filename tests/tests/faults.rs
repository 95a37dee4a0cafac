//! Faults of the bus and the streams under load (issue 17): the pipeline keeps answering and
//! nothing reported is lost or counted twice when
//!
//! - `nats-server` is stopped for 5 s and started again on the same store
//!   (`bus_outage_loses_nothing`): feeds get their proxies from the client's fallback meanwhile,
//!   and the feedback they queued is folded after it, exactly once;
//! - stream `PROXY_FEEDBACK` is full (`stream_full_then_room`, a stream made with discard *new*,
//!   which refuses publishes; `stream_full_discard_old_keeps_folding`, the contract's own discard
//!   *old*, which takes every publish and drops its oldest events — folded first by an aggregator
//!   that keeps up, lost, uncounted, while it is down:
//!   `stream_full_discard_old_while_the_aggregator_is_down`);
//! - the pool service is killed and started again, and one of two resolver replicas is killed
//!   (`replica_and_pool_restarts`).
//!
//! Services run as child processes (`pipeline.rs`) where the fault is a kill; in-process where
//! only the bus or a stream is at fault.

mod pipeline;

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::stream::DiscardPolicy;
use pipeline::{FeedRun, Pipeline, by_source, folded_total, run_feed};
use proxybus_client::{ClientConfig, ProxyClient};
use proxybus_shared::feedback::{FeedbackStreamConfig, publish_feedback};
use proxybus_shared::nats::NatsSettings;
use proxybus_shared::subject::FEEDBACK_STREAM;
use proxybus_shared::{ConnectionType, FeedbackPhase, ProxyFeedback, ResponseSource};
use proxybus_tests::NatsServer;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Each feed asks and reports once per interval.
const INTERVAL: Duration = Duration::from_millis(100);

#[test]
#[ignore = "entry point of the service processes this binary starts (pipeline::SERVICE_ENV)"]
fn service_process() {
    pipeline::run_service_if_asked();
}

/// Starts `feeds` feeds on the pipeline; they run until `stop`.
async fn start_feeds(
    pipeline: &Pipeline,
    feeds: usize,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<(ProxyClient, FeedRun)>> {
    let mut handles = Vec::with_capacity(feeds);
    for n in 0..feeds {
        let client = pipeline.feed(n).await;
        handles.push(tokio::spawn(run_feed(client, n, INTERVAL, stop.clone())));
    }
    handles
}

/// Every feed's run, after its feedback queue drained; with the feedback counters summed up.
struct Runs {
    runs: Vec<FeedRun>,
    reported: u64,
    published: u64,
    dropped: u64,
}

impl Runs {
    /// p50 and p99 of every request's latency, in microseconds.
    fn latency_micros(&self) -> (u64, u64) {
        let mut all = proxybus_tests::Latencies::default();
        for run in &self.runs {
            all.merge(run.latencies.clone());
        }
        (all.quantile_micros(0.50), all.quantile_micros(0.99))
    }
}

async fn finish_feeds(feeds: Vec<tokio::task::JoinHandle<(ProxyClient, FeedRun)>>) -> Runs {
    let mut runs = Runs { runs: Vec::new(), reported: 0, published: 0, dropped: 0 };
    for feed in feeds {
        let (client, run) = feed.await.unwrap();
        assert!(client.flush_feedback(Duration::from_secs(60)).await, "{} kept events queued", client.client_id());
        let stats = client.feedback_stats();
        runs.published += stats.published;
        runs.dropped += stats.dropped;
        runs.reported += run.reported;
        runs.runs.push(run);
    }
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_outage_loses_nothing() {
    const FEEDS: usize = 16;
    const OUTAGE: Duration = Duration::from_secs(5);
    let mut pipeline = Pipeline::start(1).await;
    let stop = CancellationToken::new();
    let feeds = start_feeds(&pipeline, FEEDS, &stop).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The window is taken strictly inside the outage: from when the server is gone
    // to just before it is restarted. A request sent while `stop` was still under
    // way could be answered by the resolver and is not an outage request.
    pipeline.server.stop().await.unwrap();
    let outage_began = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    let outage_ended = Instant::now();
    pipeline.server.restart().await.unwrap();
    // Past the client's breaker recovery (10 s), so the feeds are back on the resolver.
    tokio::time::sleep(Duration::from_secs(12)).await;
    stop.cancel();
    let runs = finish_feeds(feeds).await;
    let folded = pipeline.settled_total(runs.reported, Duration::from_secs(120)).await;

    let requests: Vec<_> = runs.runs.iter().flat_map(|run| run.requests.iter()).collect();
    let during: Vec<_> = requests.iter().copied().filter(|r| r.sent >= outage_began && r.sent < outage_ended).collect();
    let after: Vec<_> = requests.iter().copied().filter(|r| r.sent >= outage_ended + Duration::from_secs(11)).collect();
    let line = serde_json::json!({
        "test": "bus_outage_loses_nothing",
        "p50_us": runs.latency_micros().0,
        "p99_us": runs.latency_micros().1,
        "feeds": FEEDS,
        "requests": requests.len(),
        "sources": by_source(requests.iter().copied()),
        "requests_during_outage": during.len(),
        "answered_by_resolver_during_outage": during.iter().filter(|r| r.by_resolver).count(),
        "sources_during_outage": by_source(during.iter().copied()),
        "sources_after_recovery": by_source(after.iter().copied()),
        "events_reported": runs.reported,
        "events_published": runs.published,
        "events_dropped": runs.dropped,
        "events_folded": folded,
    });
    println!("FAULT {line}");
    assert!(during.len() >= FEEDS, "the feeds kept asking during the outage: {line}");
    for request in &during {
        assert!(
            matches!(request.outcome, Ok(ResponseSource::Cache | ResponseSource::Embedded)),
            "a request during the outage got {:?}: {line}",
            request.outcome
        );
    }
    let failures: Vec<_> = requests.iter().filter(|r| r.outcome.is_err()).collect();
    assert!(failures.is_empty(), "{} requests failed, the first: {:?}", failures.len(), failures.first());
    assert!(after.iter().any(|r| r.by_resolver), "the resolver answers again: {line}");
    assert_eq!((runs.dropped, runs.published), (0, runs.reported), "every event published: {line}");
    assert_eq!(folded, runs.reported, "every event folded exactly once: {line}");
}

/// A successful websocket feedback event about one of four proxies.
fn event(n: usize) -> ProxyFeedback {
    ProxyFeedback {
        latency_ms: Some(25),
        ..ProxyFeedback::new(
            &format!("http://u:pw@full-proxy-{}.example:3128", n % 4),
            "binance".parse().unwrap(),
            ConnectionType::Websocket,
            FeedbackPhase::Connected,
            true,
            "feed-stream-full",
        )
    }
}

/// A feed client on `server` whose feedback queue holds at most `capacity` events.
async fn reporting_client(server: &NatsServer, capacity: usize) -> ProxyClient {
    let mut config = ClientConfig::new(NatsSettings::new(server.client_url()), "feed-stream-full");
    config.feedback_queue_capacity = capacity;
    ProxyClient::with_nats(config, server.connect().await.unwrap())
}

/// The aggregator in-process on `server`, with `PROXY_FEEDBACK` limited to `max_bytes`.
fn start_aggregator(
    server: &NatsServer,
    max_bytes: i64,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<Result<(), proxybus_aggregator::AggregatorError>> {
    let mut config = proxybus_aggregator::AggregatorConfig::for_url(server.client_url());
    config.settings.stream_max_bytes = max_bytes;
    tokio::spawn(proxybus_aggregator::run(config, stop.clone().cancelled_owned()))
}

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, within: Duration, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stream_state(js: &jetstream::Context) -> jetstream::stream::State {
    js.get_stream(FEEDBACK_STREAM).await.unwrap().info().await.unwrap().state.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_full_then_room() {
    const SMALL: i64 = 32 * 1024;
    const ROOMY: i64 = 64 * 1024 * 1024;
    const EVENTS: usize = 600;
    const QUEUE: usize = 100;
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.connect().await.unwrap());
    // An operator's stream that refuses publishes when full; the aggregator's own
    // `ensure_feedback_stream` keeps a discard policy it finds (it is not the contract's to fix).
    let config = FeedbackStreamConfig { max_bytes: SMALL, ..FeedbackStreamConfig::default() };
    js.create_stream(jetstream::stream::Config { discard: DiscardPolicy::New, ..config.stream_config() })
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let aggregator = start_aggregator(&server, SMALL, &stop);

    let client = reporting_client(&server, QUEUE).await;
    for n in 0..EVENTS {
        client.report(event(n));
    }
    // The stream fills, publishes are refused, the queue holds what it can and drops the rest.
    wait_until("the stream filling and the queue overflowing", Duration::from_secs(30), || async {
        let stats = client.feedback_stats();
        stats.retries > 0 && stats.published + stats.dropped + stats.pending as u64 == EVENTS as u64
    })
    .await;
    let refused = publish_feedback(&js, &event(EVENTS)).await.expect_err("a full discard-new stream refuses");
    let full = client.feedback_stats();
    let stored_while_full = stream_state(&js).await.messages;
    wait_until("the stored events folded", Duration::from_secs(30), || async {
        folded_total(&js).await == stored_while_full
    })
    .await;
    assert!(!aggregator.is_finished(), "the aggregator runs on while the stream is full");

    // Room again: the operator raises the limit.
    let mut info = js.get_stream(FEEDBACK_STREAM).await.unwrap().info().await.unwrap().config.clone();
    info.max_bytes = ROOMY;
    js.update_stream(info).await.unwrap();
    assert!(client.flush_feedback(Duration::from_secs(60)).await, "the queue drained once there was room");
    let after = client.feedback_stats();
    let folded = settled(&js, after.published, Duration::from_secs(60)).await;
    let line = serde_json::json!({
        "test": "stream_full_then_room",
        "stream_max_bytes": SMALL,
        "queue_capacity": QUEUE,
        "events_reported": EVENTS,
        "publish_error": refused.to_string(),
        "stored_while_full": stored_while_full,
        "while_full": {"published": full.published, "dropped": full.dropped, "pending": full.pending, "retries": full.retries},
        "events_published": after.published,
        "events_dropped": after.dropped,
        "events_folded": folded,
    });
    println!("FAULT {line}");
    assert!(refused.to_string().contains("maximum bytes exceeded"), "a clear error: {refused}");
    assert!(full.dropped > 0 && full.pending > 0, "the queue was full and counted its drops: {line}");
    assert_eq!(after.published + after.dropped, EVENTS as u64, "nothing lost beyond what was counted: {line}");
    assert_eq!(after.pending, 0, "{line}");
    assert_eq!(stream_state(&js).await.messages, after.published, "each event stored once: {line}");
    assert_eq!(folded, after.published, "every published event folded exactly once: {line}");
    assert!(!aggregator.is_finished(), "the aggregator runs on");
}

/// Waits until `expected` events are folded, then a little longer; the total folded.
async fn settled(js: &jetstream::Context, expected: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    while folded_total(js).await < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    folded_total(js).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_full_discard_old_keeps_folding() {
    // The contract's stream (discard old) at a size that holds about a hundred events.
    const SMALL: i64 = 32 * 1024;
    const BURSTS: usize = 12;
    const BURST: usize = 50;
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.connect().await.unwrap());
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let aggregator = start_aggregator(&server, SMALL, &stop);
    wait_until("the aggregator making the stream", Duration::from_secs(30), || async {
        js.get_stream(FEEDBACK_STREAM).await.is_ok()
    })
    .await;
    let client = reporting_client(&server, 10_000).await;
    // An aggregator that keeps up folds every event before the stream discards it.
    for burst in 0..BURSTS {
        for n in 0..BURST {
            client.report(event(burst * BURST + n));
        }
        assert!(client.flush_feedback(Duration::from_secs(30)).await);
        let published = client.feedback_stats().published;
        wait_until("the burst folded", Duration::from_secs(30), || async { folded_total(&js).await >= published })
            .await;
    }
    let stats = client.feedback_stats();
    let state = stream_state(&js).await;
    let folded = settled(&js, stats.published, Duration::from_secs(10)).await;
    let line = serde_json::json!({
        "test": "stream_full_discard_old_keeps_folding",
        "stream_max_bytes": SMALL,
        "events_reported": BURSTS * BURST,
        "events_published": stats.published,
        "publish_retries": stats.retries,
        "events_dropped": stats.dropped,
        "stream_messages": state.messages,
        "stream_first_seq": state.first_sequence,
        "events_folded": folded,
    });
    println!("FAULT {line}");
    assert!(state.first_sequence > 1 && state.bytes <= SMALL as u64, "the stream discarded its oldest: {line}");
    assert_eq!(
        (stats.published, stats.dropped, stats.retries),
        ((BURSTS * BURST) as u64, 0, 0),
        "never refused: {line}"
    );
    assert_eq!(folded, stats.published, "every event folded exactly once: {line}");
    assert!(!aggregator.is_finished(), "the aggregator runs on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_and_pool_restarts() {
    const FEEDS: usize = 16;
    let mut pipeline = Pipeline::start(2).await;
    let stop = CancellationToken::new();
    let feeds = start_feeds(&pipeline, FEEDS, &stop).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The pool dies; the resolver's fallback answers; the pool comes back on the same port.
    let pool_killed = Instant::now();
    pipeline.pool.kill().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    pipeline.pool.restart().unwrap();
    pipeline.wait_for_pool().await;
    let pool_back = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // One resolver replica dies; the other, in the same queue group, answers alone.
    let resolver_killed = Instant::now();
    pipeline.resolvers[0].kill().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    pipeline.resolvers[0].restart().unwrap();
    pipeline.wait_for_resolvers(2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let runs = finish_feeds(feeds).await;
    let folded = pipeline.settled_total(runs.reported, Duration::from_secs(120)).await;

    let requests: Vec<_> = runs.runs.iter().flat_map(|run| run.requests.iter()).collect();
    let window =
        |from: Instant, to: Instant| by_source(requests.iter().copied().filter(|r| r.sent >= from && r.sent < to));
    let line = serde_json::json!({
        "test": "replica_and_pool_restarts",
        "p50_us": runs.latency_micros().0,
        "p99_us": runs.latency_micros().1,
        "feeds": FEEDS,
        "requests": requests.len(),
        "sources": by_source(requests.iter().copied()),
        "sources_pool_down": window(pool_killed, pool_back),
        "sources_one_resolver": window(resolver_killed, resolver_killed + Duration::from_secs(3)),
        "events_reported": runs.reported,
        "events_published": runs.published,
        "events_dropped": runs.dropped,
        "events_folded": folded,
    });
    println!("FAULT {line}");
    let failures: Vec<_> = requests.iter().filter(|r| r.outcome.is_err()).collect();
    assert!(failures.is_empty(), "{} requests failed, the first: {:?}: {line}", failures.len(), failures.first());
    assert_eq!((runs.dropped, runs.published), (0, runs.reported), "every event published: {line}");
    assert_eq!(folded, runs.reported, "every event folded exactly once: {line}");
    for service in [&mut pipeline.aggregator, &mut pipeline.resolvers[1]] {
        assert!(!service.has_exited().unwrap(), "{} crashed", service.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_full_discard_old_while_the_aggregator_is_down() {
    // The contract's stream at about 60 events while no aggregator folds: the stream drops
    // the oldest; the aggregator, started afterwards, folds every event the stream still
    // holds, once, and goes on. What was dropped before it was folded is lost (recorded).
    const SMALL: i64 = 32 * 1024;
    const EVENTS: usize = 600;
    let server = NatsServer::start().await.unwrap();
    let js = jetstream::new(server.connect().await.unwrap());
    let config = FeedbackStreamConfig { max_bytes: SMALL, ..FeedbackStreamConfig::default() };
    proxybus_shared::feedback::ensure_feedback_stream(&js, &config).await.unwrap();
    let client = reporting_client(&server, 10_000).await;
    for n in 0..EVENTS {
        client.report(event(n));
    }
    assert!(client.flush_feedback(Duration::from_secs(30)).await);
    let stats = client.feedback_stats();
    let held = stream_state(&js).await;

    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let mut config = proxybus_aggregator::AggregatorConfig::for_url(server.client_url());
    config.settings.stream_max_bytes = SMALL;
    let aggregator_stats = std::sync::Arc::new(proxybus_aggregator::AggregatorStats::default());
    let aggregator = tokio::spawn(proxybus_aggregator::run_with_stats(
        config,
        aggregator_stats.clone(),
        stop.clone().cancelled_owned(),
    ));
    let folded = settled(&js, held.messages, Duration::from_secs(30)).await;
    // Folding goes on after the gap.
    for n in 0..50 {
        client.report(event(EVENTS + 1 + n));
    }
    assert!(client.flush_feedback(Duration::from_secs(30)).await);
    let folded_after = settled(&js, held.messages + 50, Duration::from_secs(30)).await;
    let line = serde_json::json!({
        "test": "stream_full_discard_old_while_the_aggregator_is_down",
        "stream_max_bytes": SMALL,
        "events_reported": EVENTS,
        "events_published": stats.published,
        "events_dropped_by_client": stats.dropped,
        "stream_messages": held.messages,
        "stream_first_seq": held.first_sequence,
        "events_folded": folded,
        "events_lost_in_stream": EVENTS as u64 - folded,
        "events_lost_counted_by_aggregator": aggregator_stats.snapshot().events_lost,
        "events_folded_after_50_more": folded_after,
    });
    println!("FAULT {line}");
    assert_eq!((stats.published, stats.dropped, stats.retries), (EVENTS as u64, 0, 0), "never refused: {line}");
    assert_eq!(folded, held.messages, "every event the stream still held folded once: {line}");
    assert_eq!(folded_after, held.messages + 50, "folding goes on after the gap: {line}");
    assert_eq!(
        aggregator_stats.snapshot().events_lost,
        held.first_sequence - 1,
        "every event the stream removed before it was folded is counted: {line}"
    );
    assert!(!aggregator.is_finished(), "the aggregator runs on");
}
