//! `replay` rebuilds exactly what live folding stored.

use std::time::Duration;

use proxybus_aggregator::{ReplayOptions, ReplayStart};
use proxybus_shared::subject::HEALTH_BUCKET;
use proxybus_shared::{ErrorKind, HealthState};
use proxybus_tests::NatsServer;

use crate::helpers::{Running, config, event, jetstream, publish_all, records, wait_for_total};

#[tokio::test]
async fn replay_from_the_start_equals_the_live_state_field_by_field() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    let mut events = Vec::new();
    for k in 0..600 {
        let n = k % 10;
        // Proxies 0 and 1 fail hard (ejections), others mix in 429s and 451s.
        let kind = match (n, k % 7) {
            (0 | 1, _) => Some(ErrorKind::Refused),
            (_, 0) => Some(ErrorKind::Http429),
            (_, 1) => Some(ErrorKind::Http451),
            (_, 2) => Some(ErrorKind::Timeout),
            _ => None,
        };
        let mut e = event(n, ["binance", "kraken"][k % 2], kind.is_none(), kind);
        e.retry_after_seconds = kind.filter(|k| *k == ErrorKind::Http429).map(|_| 5);
        events.push(e);
    }
    let settings = config(&server);
    let app = Running::start(settings.clone());
    publish_all(&js, &events, 200).await;
    wait_for_total(&js, HEALTH_BUCKET, 600, Duration::from_secs(30)).await;
    app.stop().await;
    let live = records(&js, HEALTH_BUCKET).await;
    assert_eq!(live.len(), 10);
    assert!(live.values().any(|r| r.stats.state == HealthState::Ejected), "the scenario ejects someone");

    let mut ticks = 0;
    let report = proxybus_aggregator::replay(&settings, &ReplayOptions::default(), |done, total| {
        assert!(done <= total);
        ticks += 1;
    })
    .await
    .unwrap();
    assert_eq!((report.events, report.dead, report.proxies, report.last_seq), (600, 0, 10, 600));
    assert_eq!(ticks, 600, "progress for every event");
    let replayed = records(&js, proxybus_aggregator::replay::DEFAULT_REPLAY_BUCKET).await;
    for (id, record) in &live {
        assert_eq!(replayed.get(id), Some(record), "proxy {id}");
    }
    assert_eq!(replayed, live);

    // A partial replay counts only what follows its start.
    let options = ReplayOptions { start: ReplayStart::FromSeq(501), into: "PARTIAL".into() };
    let report = proxybus_aggregator::replay(&settings, &options, |_, _| {}).await.unwrap();
    assert_eq!(report.events, 100);
    let partial = records(&js, "PARTIAL").await;
    assert_eq!(partial.values().map(|r| r.stats.total).sum::<u64>(), 100);
    let since = ReplayOptions {
        start: ReplayStart::Since(chrono::Utc::now() + chrono::TimeDelta::hours(1)),
        into: "EMPTY".into(),
    };
    let report = proxybus_aggregator::replay(&settings, &since, |_, _| {}).await.unwrap();
    assert_eq!(report.events, 0);
}

#[tokio::test]
async fn replay_into_the_live_bucket_lets_the_aggregator_continue_exactly() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    let settings = config(&server);
    let first: Vec<_> =
        (0..50).map(|k| event(k % 5, "binance", k % 4 != 0, (k % 4 == 0).then_some(ErrorKind::Timeout))).collect();
    publish_all(&js, &first, 50).await;
    let options = ReplayOptions { start: ReplayStart::Beginning, into: HEALTH_BUCKET.into() };
    proxybus_aggregator::replay(&settings, &options, |_, _| {}).await.unwrap();
    assert_eq!(crate::helpers::total(&js, HEALTH_BUCKET).await, 50);
    let app = Running::start(settings);
    let second: Vec<_> = (0..30).map(|k| event(k % 5, "kraken", true, None)).collect();
    publish_all(&js, &second, 30).await;
    wait_for_total(&js, HEALTH_BUCKET, 80, Duration::from_secs(20)).await;
    app.stop().await;
}
