//! Test helpers: feedback builders, an aggregator run as a task (or in a runtime of
//! its own that a test can kill), KV readers and polling with a deadline.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, TimeZone, Utc};
use proxybus_aggregator::read_bucket;
use proxybus_aggregator::{AggregatorConfig, AggregatorStats, ProxyHealth};
use proxybus_shared::feedback::{FeedbackStreamConfig, ensure_feedback_stream, send_feedback};
use proxybus_shared::{ConnectionType, ErrorKind, FeedbackPhase, ProxyFeedback, ProxyId, proxy_id};
use proxybus_tests::NatsServer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A proxy URL with credentials; only its id and redacted form may travel.
pub(crate) fn proxy_url(n: usize) -> String {
    format!("http://user{n}:secret-pw-{n}@10.0.{}.{}:8080", n / 250, n % 250)
}

/// A feedback event of proxy `n`.
pub(crate) fn event(n: usize, exchange: &str, success: bool, error_kind: Option<ErrorKind>) -> ProxyFeedback {
    let url = proxy_url(n);
    let phase = if success { FeedbackPhase::Request } else { FeedbackPhase::Failed };
    ProxyFeedback {
        region: Some(if n.is_multiple_of(2) { "us-east" } else { "eu-west" }.parse().unwrap()),
        latency_ms: success.then_some(20 + (n as u64 * 7) % 50),
        error_kind,
        ..ProxyFeedback::new(&url, exchange.parse().unwrap(), ConnectionType::Http, phase, success, "test-feed")
    }
}

/// A fixed instant plus `ms` milliseconds.
pub(crate) fn at(ms: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::TimeDelta::milliseconds(ms)
}

/// The id of proxy `n`.
pub(crate) fn pid(n: usize) -> ProxyId {
    proxy_id(&proxy_url(n))
}

/// An aggregator configuration for `server` with short intervals.
pub(crate) fn config(server: &NatsServer) -> AggregatorConfig {
    let mut config = AggregatorConfig::for_url(server.client_url());
    config.settings.fetch_wait_ms = 200;
    config.settings.sweep_interval_ms = 100;
    config.settings.lag_interval_ms = 200;
    config.settings.push.retry_backoff_ms = 20;
    config.settings.push.breaker_recovery_ms = 200;
    config
}

/// JetStream of `server`, with stream `PROXY_FEEDBACK` in place.
pub(crate) async fn jetstream(server: &NatsServer) -> jetstream::Context {
    let js = jetstream::new(server.connect().await.unwrap());
    ensure_feedback_stream(&js, &FeedbackStreamConfig::default()).await.unwrap();
    js
}

/// Publishes every event with async acks, `window` in flight at a time, retrying
/// any that fails (same `event_id`, so the stream de-duplicates).
pub(crate) async fn publish_all(js: &jetstream::Context, events: &[ProxyFeedback], window: usize) {
    for chunk in events.chunks(window) {
        let mut todo: Vec<&ProxyFeedback> = chunk.iter().collect();
        let mut attempts = 0;
        while !todo.is_empty() {
            attempts += 1;
            assert!(attempts < 200, "publishing never succeeded");
            let mut acks = Vec::new();
            for event in &todo {
                acks.push((*event, send_feedback(js, event).await));
            }
            // Acks are awaited together: after a server restart every lost ack
            // times out at once rather than one after another.
            let outcomes = futures::future::join_all(acks.into_iter().map(|(event, ack)| async move {
                match ack {
                    Ok(future) => (event, future.await.is_ok()),
                    Err(_) => (event, false),
                }
            }))
            .await;
            let failed: Vec<&ProxyFeedback> =
                outcomes.into_iter().filter(|(_, ok)| !ok).map(|(event, _)| event).collect();
            if !failed.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            todo = failed;
        }
    }
}

/// An aggregator running as a task of this runtime.
pub(crate) struct Running {
    pub(crate) cancel: CancellationToken,
    pub(crate) stats: Arc<AggregatorStats>,
    pub(crate) handle: JoinHandle<Result<(), proxybus_aggregator::AggregatorError>>,
}

impl Running {
    /// Starts `run_with_stats(config)`.
    pub(crate) fn start(config: AggregatorConfig) -> Self {
        proxybus_shared::telemetry::init_for_tests();
        let cancel = CancellationToken::new();
        let stats = Arc::new(AggregatorStats::default());
        let handle =
            tokio::spawn(proxybus_aggregator::run_with_stats(config, stats.clone(), cancel.clone().cancelled_owned()));
        Self { cancel, stats, handle }
    }

    /// Graceful shutdown; the run must end cleanly within 10 s.
    pub(crate) async fn stop(self) {
        self.cancel.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), self.handle).await.expect("stops in time");
        result.expect("task did not panic").expect("run ended without error");
    }
}

/// An aggregator in a runtime of its own, so that a test can kill it with every
/// task it spawned, like a crashed process.
pub(crate) struct Crashable {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Crashable {
    /// Starts `run(config)` on a fresh one-thread runtime.
    pub(crate) fn start(config: AggregatorConfig) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        runtime.spawn(proxybus_aggregator::run(config, std::future::pending()));
        Self { runtime: Some(runtime) }
    }

    /// Kills it: every task is dropped wherever it was, nothing is shut down.
    pub(crate) fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Crashable {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Every record of `bucket`, by proxy id.
pub(crate) async fn records(js: &jetstream::Context, bucket: &str) -> BTreeMap<ProxyId, ProxyHealth> {
    let Ok(store) = js.get_key_value(bucket).await else { return BTreeMap::new() };
    read_bucket(&store).await.unwrap().into_iter().map(|r| (r.stats.proxy_id, r)).collect()
}

/// Sum of `total` over `bucket`.
pub(crate) async fn total(js: &jetstream::Context, bucket: &str) -> u64 {
    records(js, bucket).await.values().map(|r| r.stats.total).sum()
}

/// Polls `check` every 50 ms until it returns true; panics with `what` after `limit`.
pub(crate) async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the totals of `bucket` reach `expected`, then checks they stay there.
pub(crate) async fn wait_for_total(js: &jetstream::Context, bucket: &str, expected: u64, limit: Duration) {
    eventually(limit, &format!("{expected} events folded"), || async { total(js, bucket).await >= expected }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(total(js, bucket).await, expected, "no event counted twice");
}
