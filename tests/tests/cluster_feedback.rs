//! Feedback on a three-node cluster with a replicated (R3) `PROXY_FEEDBACK`: the node leading
//! the stream is killed while feeds publish; every event is stored once (a publisher whose ack
//! was lost publishes again with the same `Nats-Msg-Id`) and the aggregator folds each exactly
//! once (issue 16: killing one node of a 3-node cluster loses no feedback).

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::{event, folded_total};
use proxybus_shared::feedback::{FeedbackStreamConfig, ensure_feedback_stream, publish_feedback};
use proxybus_shared::subject::FEEDBACK_STREAM;
use proxybus_tests::NatsCluster;
use tokio_util::sync::CancellationToken;

const EVENTS: usize = 120;

#[tokio::test]
async fn killing_the_stream_leader_loses_no_feedback_and_folds_each_event_once() {
    let mut cluster = NatsCluster::start().await.unwrap();
    let js = jetstream::new(cluster.connect().await.unwrap());
    let config = FeedbackStreamConfig { replicas: 3, ..FeedbackStreamConfig::default() };
    ensure_feedback_stream(&js, &config).await.unwrap();

    let mut killed = false;
    for n in 0..EVENTS {
        if n == EVENTS / 2 {
            let mut stream = js.get_stream(FEEDBACK_STREAM).await.unwrap();
            let info = stream.info().await.unwrap();
            let leader = info.cluster.as_ref().and_then(|c| c.leader.clone()).expect("an R3 stream has a leader");
            cluster.kill_node(cluster.node_index(&leader).unwrap()).unwrap();
            killed = true;
        }
        let event = event("eu-west", &format!("proxy-{}", n % 6));
        // What the client library does: the same event again until JetStream acknowledges it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while publish_feedback(&js, &event).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "event {n} never acknowledged");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(killed);
    let mut stream = js.get_stream(FEEDBACK_STREAM).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, EVENTS as u64, "each event stored once");

    let cancel = CancellationToken::new();
    let config = proxybus_aggregator::AggregatorConfig::for_url(cluster.client_urls().join(","));
    let aggregator = tokio::spawn(proxybus_aggregator::run(config, cancel.clone().cancelled_owned()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while folded_total(&js).await < EVENTS as u64 {
        assert!(tokio::time::Instant::now() < deadline, "only {} of {EVENTS} folded", folded_total(&js).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(folded_total(&js).await, EVENTS as u64, "every event folded exactly once");
    cancel.cancel();
    aggregator.await.unwrap().unwrap();
}
