//! The service around the fold: micro-service stats, `/metrics`, ejection seen
//! from outside with short configured times, graceful shutdown.

use std::time::Duration;

use futures::StreamExt;
use proxybus_shared::feedback::publish_feedback;
use proxybus_shared::subject::HEALTH_BUCKET;
use proxybus_shared::{Codec, ErrorKind, HealthState, HealthStats};
use proxybus_tests::NatsServer;

use crate::helpers::{Running, config, event, eventually, jetstream, pid, publish_all, records, wait_for_total};

#[tokio::test]
async fn registers_as_a_micro_service_with_fold_stats_and_serves_metrics() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    let client = server.connect().await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut settings = config(&server);
    settings.settings.metrics_listen = format!("127.0.0.1:{port}");
    let app = Running::start(settings);
    let events: Vec<_> = (0..20).map(|k| event(k % 2, "binance", true, None)).collect();
    publish_all(&js, &events, 20).await;
    wait_for_total(&js, HEALTH_BUCKET, 20, Duration::from_secs(20)).await;

    let reply = client.request("$SRV.PING.proxybus-aggregator", "".into()).await.unwrap();
    let ping: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(ping["name"], "proxybus-aggregator");
    let fetch_stats = || async {
        let reply = client.request("$SRV.STATS.proxybus-aggregator", "".into()).await.unwrap();
        serde_json::from_slice::<serde_json::Value>(&reply.payload).unwrap()
    };
    eventually(Duration::from_secs(10), "stats show the folded events", || async {
        fetch_stats().await["endpoints"][0]["data"]["events_folded"] == 20
    })
    .await;
    let stats = fetch_stats().await;
    let data = &stats["endpoints"][0]["data"];
    for field in ["duplicates_skipped", "fold_lag_messages", "fold_lag_ms", "ejections", "dead_lettered"] {
        assert!(data.get(field).is_some(), "{field} missing from {data}");
    }
    let status = client.request(proxybus_shared::subject::AGGREGATOR_STATUS_SUBJECT, "".into()).await.unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.payload).unwrap();
    assert_eq!(status["events_folded"], 20);

    proxybus_shared::http::install_crypto_provider();
    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap();
    assert!(body.contains("proxybus_aggregator_events_folded_total 20"), "{body}");
    assert!(body.contains("proxybus_aggregator_fold_lag_messages"), "{body}");
    assert!(!body.contains("secret-pw"));
    app.stop().await;
}

#[tokio::test]
async fn ejection_and_restore_seen_on_the_bus_with_short_times() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    let watcher = server.connect().await.unwrap();
    let mut health = watcher.subscribe("proxy.v1.health.us-east").await.unwrap();
    watcher.flush().await.unwrap();
    let mut settings = config(&server);
    settings.settings.health.base_ejection_time_ms = 700;
    settings.settings.health.max_ejection_time_ms = 700;
    let app = Running::start(settings);
    // Proxies 0, 2, 4, 6 are in us-east; 0 fails five times.
    let warmup: Vec<_> = [0, 2, 4, 6].iter().map(|n| event(*n, "binance", true, None)).collect();
    publish_all(&js, &warmup, 4).await;
    for _ in 0..5 {
        publish_feedback(&js, &event(0, "binance", false, Some(ErrorKind::Timeout))).await.unwrap();
    }
    wait_for_total(&js, HEALTH_BUCKET, 9, Duration::from_secs(20)).await;
    let ejected = records(&js, HEALTH_BUCKET).await[&pid(0)].stats.clone();
    assert_eq!(ejected.state, HealthState::Ejected);
    assert_eq!(ejected.ejections, 1);
    let until = ejected.ejected_until.unwrap();
    assert_eq!(until - ejected.updated_at, chrono::TimeDelta::milliseconds(700), "stream time + ejection time");

    // The sweep announces the end of the ejection without any new event.
    let restored = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let message = health.next().await.unwrap();
            let stats: HealthStats = Codec::default().decode(message.headers.as_ref(), &message.payload).unwrap();
            if stats.proxy_id == pid(0) && stats.state == HealthState::Degraded && stats.ejections == 1 {
                return stats;
            }
        }
    })
    .await
    .expect("an announcement that the ejection ended");
    assert_eq!(restored.ejected_until, None);
    assert!(chrono::Utc::now() >= until);

    // Successes on probation restore it.
    for _ in 0..3 {
        publish_feedback(&js, &event(0, "binance", true, None)).await.unwrap();
    }
    wait_for_total(&js, HEALTH_BUCKET, 12, Duration::from_secs(20)).await;
    assert_eq!(records(&js, HEALTH_BUCKET).await[&pid(0)].stats.state, HealthState::Healthy);
    assert_eq!(app.stats.snapshot().ejections, 1);
    app.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_stops_promptly_and_a_restart_continues() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    let app = Running::start(config(&server));
    publish_all(&js, &(0..10).map(|k| event(k % 3, "okx", true, None)).collect::<Vec<_>>(), 10).await;
    wait_for_total(&js, HEALTH_BUCKET, 10, Duration::from_secs(20)).await;
    app.stop().await;
    publish_all(&js, &(0..10).map(|k| event(k % 3, "okx", true, None)).collect::<Vec<_>>(), 10).await;
    let app = Running::start(config(&server));
    wait_for_total(&js, HEALTH_BUCKET, 20, Duration::from_secs(20)).await;
    assert_eq!(app.stats.snapshot().events_folded, 10, "only the new events");
    app.stop().await;
}

/// Issue #11, item 5: an ejection or bar that has ended is cleared in the stored
/// record, not only treated as over by each reader.
#[tokio::test]
async fn ended_ejections_and_bars_are_cleared_in_the_stored_record() {
    let server = proxybus_tests::NatsServer::start().await.unwrap();
    let js = crate::helpers::jetstream(&server).await;
    let mut config = crate::helpers::config(&server);
    config.settings.health.base_ejection_time_ms = 300;
    let app = crate::helpers::Running::start(config);
    let mut events: Vec<_> =
        (0..5).map(|_| crate::helpers::event(0, "binance", false, Some(proxybus_shared::ErrorKind::Timeout))).collect();
    let mut limited = crate::helpers::event(2, "binance", false, Some(proxybus_shared::ErrorKind::Http429));
    limited.retry_after_seconds = Some(1);
    events.push(limited);
    crate::helpers::publish_all(&js, &events, 10).await;
    let binance: proxybus_shared::ExchangeId = "binance".parse().unwrap();
    crate::helpers::eventually(std::time::Duration::from_secs(20), "the ejection and the bar stored", || async {
        let stored = crate::helpers::records(&js, HEALTH_BUCKET).await;
        stored.get(&pid(0)).is_some_and(|r| r.stats.ejections == 1)
            && stored.get(&pid(2)).is_some_and(|r| r.stats.exchanges.contains_key(&binance))
    })
    .await;
    // No further event: the sweep writes the ended state. (A key being rewritten while the
    // bucket's keys are listed can be missing from one listing — nats-server#4824 — so a
    // missing record is "not yet", not a failure.)
    crate::helpers::eventually(std::time::Duration::from_secs(10), "the ended state stored", || async {
        let stored = crate::helpers::records(&js, HEALTH_BUCKET).await;
        let (Some(ejected), Some(limited)) = (stored.get(&pid(0)), stored.get(&pid(2))) else { return false };
        let ejection_over = ejected.stats.state == HealthState::Degraded
            && ejected.stats.ejected_until.is_none()
            && ejected.fold.on_probation;
        let Some(exchange) = limited.stats.exchanges.get(&binance) else { return false };
        ejection_over && exchange.state == proxybus_shared::ExchangeState::Healthy && exchange.banned_until.is_none()
    })
    .await;
    app.stop().await;
}
