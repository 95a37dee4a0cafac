//! When the aggregator commits: as soon as it has folded everything there is, and
//! not more often than its window rules say while it is behind.

use std::time::Duration;

use proxybus_shared::subject::HEALTH_BUCKET;
use proxybus_tests::NatsServer;

use crate::helpers::{Running, config, event, jetstream, publish_all, wait_for_total};

/// `count` successful events over 50 proxies: nothing in them ejects or bars a
/// proxy, so no sweep has anything to end.
fn successes(count: usize) -> Vec<proxybus_shared::ProxyFeedback> {
    (0..count).map(|k| event(k % 50, "binance", true, None)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_events_of_a_burst_are_committed_without_waiting_for_the_next_fetch() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    // Three full batches: no fetch comes back short, so only the last message's
    // `num_pending` of 0 says the aggregator is caught up. Without it the window would
    // wait for the next fetch to expire (a minute) and for a sweep (an hour).
    publish_all(&js, &successes(300), 300).await;
    let mut settings = config(&server);
    settings.settings.batch_size = 100;
    settings.settings.fetch_wait_ms = 60_000;
    settings.settings.sweep_interval_ms = 3_600_000;
    let app = Running::start(settings);
    wait_for_total(&js, HEALTH_BUCKET, 300, Duration::from_secs(20)).await;
    assert_eq!(app.stats.snapshot().last_seq, 300);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_that_ends_nothing_does_not_cut_the_window_short() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    publish_all(&js, &successes(20_000), 500).await;
    let mut settings = config(&server);
    // 200 full batches behind, one window for all of them (by events and by time), and a
    // sweep every 10 ms that finds nothing to end: one commit, when the last batch
    // (nothing pending after it) is folded — not one per sweep.
    settings.settings.batch_size = 100;
    settings.settings.commit_max_events = 1_000_000;
    settings.settings.commit_interval_ms = 30_000;
    settings.settings.sweep_interval_ms = 10;
    let app = Running::start(settings);
    wait_for_total(&js, HEALTH_BUCKET, 20_000, Duration::from_secs(60)).await;
    let stats = app.stats.snapshot();
    assert_eq!(stats.events_folded, 20_000);
    assert!(stats.commits <= 2, "{} commits for one window of 20 000 events", stats.commits);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_closes_at_commit_max_proxies_changed() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    // 2 000 proxies, one event each, all behind: with windows of at most 250 proxies
    // the 2 000 records come in at least 8 commits, however long a window may last
    // by events and by time; every event still counts once.
    let events: Vec<_> = (0..2_000).map(|n| event(n, "binance", true, None)).collect();
    publish_all(&js, &events, 500).await;
    let mut settings = config(&server);
    settings.settings.batch_size = 50;
    settings.settings.commit_max_events = 1_000_000;
    settings.settings.commit_interval_ms = 30_000;
    settings.settings.commit_max_proxies = 250;
    let app = Running::start(settings);
    wait_for_total(&js, HEALTH_BUCKET, 2_000, Duration::from_secs(60)).await;
    let stats = app.stats.snapshot();
    assert_eq!(stats.events_folded, 2_000);
    assert!((8..=9).contains(&stats.commits), "{} commits of at most 250 (+ a batch of 50) proxies", stats.commits);
    app.stop().await;
}
