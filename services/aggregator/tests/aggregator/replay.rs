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
    let replayed = records(&js, proxybus_shared::subject::HEALTH_REPLAY_BUCKET).await;
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

/// Every key of `bucket` with its revision and value, and the bucket stream's last sequence.
async fn snapshot(js: &async_nats::jetstream::Context, bucket: &str) -> (Vec<(String, u64, Vec<u8>)>, u64) {
    use futures::TryStreamExt;
    let store = js.get_key_value(bucket).await.unwrap();
    let mut keys: Vec<String> = store.keys().await.unwrap().try_collect().await.unwrap();
    keys.sort();
    let mut entries = Vec::new();
    for key in keys {
        let entry = store.entry(&key).await.unwrap().unwrap();
        entries.push((key, entry.revision, entry.value.to_vec()));
    }
    let last = store.status().await.unwrap().info.state.last_sequence;
    (entries, last)
}

#[tokio::test]
async fn a_stricter_what_if_policy_ejects_more_and_leaves_live_state_alone() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    // Proxies 0..4 fail three times in a row, then recover: under the live policy (5 in a
    // row) nobody is ejected; under a policy of 2 in a row each of them is. Proxy 4 only
    // succeeds; proxy 5 is refused by binance three times (barred under both).
    let mut events = Vec::new();
    for round in 0..2 {
        for n in 0..4 {
            for _ in 0..3 {
                events.push(event(n, "binance", false, Some(ErrorKind::Timeout)));
            }
            events.push(event(n, "binance", true, None));
        }
        events.push(event(4, "binance", true, None));
        if round == 0 {
            for _ in 0..3 {
                events.push(event(5, "binance", false, Some(ErrorKind::Http403)));
            }
        }
    }
    let settings = config(&server);
    let app = Running::start(settings.clone());
    publish_all(&js, &events, 100).await;
    wait_for_total(&js, HEALTH_BUCKET, events.len() as u64, Duration::from_secs(30)).await;
    let live = records(&js, HEALTH_BUCKET).await;
    assert!(live.values().all(|r| r.stats.ejections == 0), "the live policy ejects nobody");
    let before = snapshot(&js, HEALTH_BUCKET).await;
    let feedback = js.get_stream(proxybus_shared::subject::FEEDBACK_STREAM).await.unwrap();
    let mut durable: async_nats::jetstream::consumer::PullConsumer =
        feedback.get_consumer(proxybus_shared::subject::AGGREGATOR_CONSUMER).await.unwrap();
    let delivered_before = durable.info().await.unwrap().delivered.stream_sequence;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stricter.toml");
    std::fs::write(&path, "consecutive_failures = 2\nmax_ejection_percent = 100\n").unwrap();
    let candidate = proxybus_aggregator::replay::load_policy(&path).unwrap();
    let report =
        proxybus_aggregator::replay::what_if(&settings, &candidate, ReplayStart::Beginning, |_, _| {}).await.unwrap();
    assert_eq!((report.events, report.last_seq), (events.len() as u64, events.len() as u64));
    assert!(report.live.ejections.is_empty(), "{:?}", report.live.ejections);
    assert!(
        report.candidate.ejections.len() > report.live.ejections.len(),
        "the stricter policy ejects more: {:?}",
        report.candidate.ejections
    );
    let ejected: std::collections::BTreeSet<_> = report.candidate.ejections.iter().map(|d| d.proxy_id).collect();
    assert_eq!(ejected, (0..4).map(crate::helpers::pid).collect(), "the four failing proxies, not the healthy one");
    for decision in &report.candidate.ejections {
        assert_eq!(decision.action, "ejected");
        assert_eq!(decision.seconds, Some(30), "the first ejection lasts base_ejection_time");
        assert!(decision.until.is_some() && decision.seq > 0);
    }
    assert_eq!(report.live.bars.len(), 1, "proxy 5's 403s bar it under both: {:?}", report.live.bars);
    assert_eq!(report.live.bars, report.candidate.bars);
    let table = proxybus_aggregator::replay::render_what_if(&report);
    assert!(table.contains("live policy 0 ejections") && table.contains("candidate 4 ejections"), "{table}");

    // Nothing live was touched: every key, revision and value, and the aggregator's consumer.
    assert_eq!(snapshot(&js, HEALTH_BUCKET).await, before, "PROXY_HEALTH is unchanged");
    assert_eq!(durable.info().await.unwrap().delivered.stream_sequence, delivered_before);
    assert!(js.get_key_value(proxybus_shared::subject::HEALTH_REPLAY_BUCKET).await.is_err(), "no bucket made");
    app.stop().await;

    // A candidate policy that breaks a rule is refused with the setting named.
    std::fs::write(&path, "consecutive_failures = 0\n").unwrap();
    let err = proxybus_aggregator::replay::load_policy(&path).unwrap_err().to_string();
    assert!(err.contains("consecutive_failures"), "{err}");
}
