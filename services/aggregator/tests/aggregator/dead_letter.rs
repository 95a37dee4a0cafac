//! Malformed feedback is dead-lettered with its reason, counted, and never blocks
//! the consumer.

use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;
use proxybus_shared::feedback::publish_feedback;
use proxybus_shared::subject::DEAD_REASON_HEADER;
use proxybus_shared::subject::HEALTH_BUCKET;
use proxybus_tests::NatsServer;

use crate::helpers::{Running, config, event, jetstream, wait_for_total};

#[tokio::test]
async fn malformed_feedback_goes_to_the_dead_letter_subject_with_its_reason() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    let watcher = server.connect().await.unwrap();
    let mut dead = watcher.subscribe("proxy.v1.feedback_dead.>").await.unwrap();
    watcher.flush().await.unwrap();
    let app = Running::start(config(&server));

    // Not msgpack at all.
    js.publish("proxy.v1.feedback.binance.http", vec![0xc1, 0xff, 0x00].into()).await.unwrap().await.unwrap();
    // JSON without proxy_id.
    let mut json = HeaderMap::new();
    json.insert("Content-Type", "application/json");
    let no_id = br#"{"event_id":"6f1c9a4e-2b0d-4b8e-9a53-0c7f5d7a1e11","proxy_url":"http://h:1","exchange_id":"kraken",
        "connection_type":"websocket","phase":"failed","success":false,"timestamp":"2026-01-01T00:00:00Z","client_id":"c"}"#;
    js.publish_with_headers("proxy.v1.feedback.kraken.websocket", json, no_id.to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
    // Msgpack with a negative latency.
    let good = event(4, "binance", true, None);
    let encoded = proxybus_shared::Codec::default().encode(proxybus_shared::Encoding::MsgPack, &good).unwrap();
    let mut value = rmpv::decode::read_value(&mut &encoded[..]).unwrap();
    if let rmpv::Value::Map(entries) = &mut value {
        for (key, field) in entries.iter_mut() {
            if key.as_str() == Some("latency_ms") {
                *field = rmpv::Value::from(-5);
            }
        }
    }
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &value).unwrap();
    js.publish("proxy.v1.feedback.binance.http", bytes.into()).await.unwrap().await.unwrap();
    // A well-formed event after them is folded.
    publish_feedback(&js, &good).await.unwrap();

    let mut reasons = Vec::new();
    for _ in 0..3 {
        let message = tokio::time::timeout(Duration::from_secs(20), dead.next()).await.expect("a dead letter").unwrap();
        let reason = message.headers.as_ref().and_then(|h| h.get(DEAD_REASON_HEADER)).unwrap().to_string();
        reasons.push((message.subject.to_string(), reason));
    }
    assert_eq!(reasons[0].0, "proxy.v1.feedback_dead.binance.http");
    assert!(reasons[0].1.contains("msgpack"), "{reasons:?}");
    assert_eq!(reasons[1].0, "proxy.v1.feedback_dead.kraken.websocket");
    assert!(reasons[1].1.contains("proxy_id"), "{reasons:?}");
    assert!(
        reasons[2].1.contains("-5") || reasons[2].1.contains("latency") || reasons[2].1.contains("invalid"),
        "{reasons:?}"
    );
    wait_for_total(&js, HEALTH_BUCKET, 1, Duration::from_secs(20)).await;
    let stats = app.stats.snapshot();
    assert_eq!(stats.dead_lettered, 3);
    assert_eq!(stats.events_folded, 1);
    app.stop().await;

    // Acked: a new aggregator neither folds nor dead-letters them again.
    let again = Running::start(config(&server));
    publish_feedback(&js, &event(4, "binance", true, None)).await.unwrap();
    wait_for_total(&js, HEALTH_BUCKET, 2, Duration::from_secs(20)).await;
    assert!(tokio::time::timeout(Duration::from_millis(300), dead.next()).await.is_err(), "no second dead letter");
    assert_eq!(again.stats.snapshot().dead_lettered, 0);
    again.stop().await;
}
