//! When the aggregator commits: as soon as it has folded everything there is, and
//! not more often than its window rules say while it is behind.

use std::time::Duration;

use proxybus_aggregator::{AggregatorSettings, StatsSnapshot};
use proxybus_shared::ProxyFeedback;
use proxybus_shared::subject::HEALTH_BUCKET;
use proxybus_tests::NatsServer;

use crate::helpers::{Running, config, event, jetstream, publish_all, wait_for_total};

/// `count` successful events over 50 proxies: nothing in them ejects or bars a
/// proxy, so no sweep has anything to end.
fn successes(count: usize) -> Vec<ProxyFeedback> {
    (0..count).map(|k| event(k % 50, "binance", true, None)).collect()
}

/// Publishes `events`, then starts an aggregator (the tests' settings, then `tweak`) behind
/// all of them, waits until each is in `PROXY_HEALTH` (within `limit`), and returns its
/// counters as they stand then.
async fn fold_behind(
    events: &[ProxyFeedback],
    tweak: impl FnOnce(&mut AggregatorSettings),
    limit: Duration,
) -> StatsSnapshot {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    publish_all(&js, events, 500).await;
    let mut settings = config(&server);
    tweak(&mut settings.settings);
    let app = Running::start(settings);
    wait_for_total(&js, HEALTH_BUCKET, events.len() as u64, limit).await;
    let stats = app.stats.snapshot();
    app.stop().await;
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_events_of_a_burst_are_committed_without_waiting_for_the_next_fetch() {
    // Three full batches: no fetch comes back short, so only the last message's
    // `num_pending` of 0 says the aggregator is caught up. Without it the window would
    // wait for the next fetch to expire (a minute) and for a sweep (an hour).
    let tweak = |settings: &mut AggregatorSettings| {
        settings.batch_size = 100;
        settings.fetch_wait_ms = 60_000;
        settings.sweep_interval_ms = 3_600_000;
    };
    let stats = fold_behind(&successes(300), tweak, Duration::from_secs(20)).await;
    assert_eq!(stats.last_seq, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_that_ends_nothing_does_not_cut_the_window_short() {
    // 200 full batches behind, one window for all of them (by events and by time), and a
    // sweep every 10 ms that finds nothing to end: one commit, when the last batch
    // (nothing pending after it) is folded — not one per sweep.
    let tweak = |settings: &mut AggregatorSettings| {
        settings.batch_size = 100;
        settings.commit_max_events = 1_000_000;
        settings.commit_interval_ms = 30_000;
        settings.sweep_interval_ms = 10;
    };
    let stats = fold_behind(&successes(20_000), tweak, Duration::from_secs(60)).await;
    assert_eq!(stats.events_folded, 20_000);
    assert!(stats.commits <= 2, "{} commits for one window of 20 000 events", stats.commits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_closes_at_commit_max_proxies_changed() {
    // 2 000 proxies, one event each, all behind: with windows of at most 250 proxies
    // the 2 000 records come in at least 8 commits, however long a window may last
    // by events and by time; every event still counts once.
    let events: Vec<_> = (0..2_000).map(|n| event(n, "binance", true, None)).collect();
    let tweak = |settings: &mut AggregatorSettings| {
        settings.batch_size = 50;
        settings.commit_max_events = 1_000_000;
        settings.commit_interval_ms = 30_000;
        settings.commit_max_proxies = 250;
    };
    let stats = fold_behind(&events, tweak, Duration::from_secs(60)).await;
    assert_eq!(stats.events_folded, 2_000);
    assert!((8..=9).contains(&stats.commits), "{} commits of at most 250 (+ a batch of 50) proxies", stats.commits);
}
