//! Feedback fan-in across regions on a real supercluster: each region's feeds publish to the
//! contract's `proxy.v1.feedback.…` subjects, the server's cluster-scoped mappings put them in
//! that region's own stream, the global `PROXY_FEEDBACK` sources every regional stream, and one
//! aggregator folds every event exactly once — also when a feed publishes an event twice.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::{event, folded_total};
use proxybus_shared::Region;
use proxybus_shared::feedback::{FeedbackStreamConfig, ensure_fan_in, fan_in_mappings, publish_feedback};
use proxybus_shared::subject::regional_feedback_stream;
use proxybus_tests::NatsSuperCluster;
use tokio_util::sync::CancellationToken;

const REGIONS: [(&str, usize); 3] = [("us-east", 1), ("eu-west", 1), ("ap-northeast", 1)];
const EVENTS_PER_REGION: usize = 40;

#[tokio::test]
async fn feedback_of_every_region_is_folded_once_into_the_global_health() {
    let regions: Vec<Region> = REGIONS.iter().map(|(name, _)| name.parse().unwrap()).collect();
    let world = NatsSuperCluster::start_with(&REGIONS, &fan_in_mappings(&regions)).await.unwrap();
    let home = world.connect("us-east").await.unwrap();
    let home_js = jetstream::new(home);
    ensure_fan_in(&home_js, &FeedbackStreamConfig::default(), &regions, &regions[0]).await.unwrap();

    for (region, _) in REGIONS {
        let js = jetstream::new(world.connect(region).await.unwrap());
        for n in 0..EVENTS_PER_REGION {
            let event = event(region, &format!("{region}-proxy-{}", n % 4));
            let ack = publish_feedback(&js, &event).await.unwrap();
            assert_eq!(ack.stream, regional_feedback_stream(&region.parse().unwrap()), "stored in its own region");
            if n % 10 == 0 {
                // A feed whose ack was lost publishes again: the regional stream drops the repeat.
                let again = publish_feedback(&js, &event).await.unwrap();
                assert!(again.duplicate, "the repeat is recognised");
            }
        }
    }
    for region in &regions {
        let mut stream = home_js.get_stream(regional_feedback_stream(region)).await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, EVENTS_PER_REGION as u64, "{region}");
    }

    let cancel = CancellationToken::new();
    let config = proxybus_aggregator::AggregatorConfig::for_url(world.client_urls("us-east")[0].clone());
    let aggregator = tokio::spawn(proxybus_aggregator::run(config, cancel.clone().cancelled_owned()));
    let expected = (EVENTS_PER_REGION * REGIONS.len()) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while folded_total(&home_js).await < expected {
        assert!(tokio::time::Instant::now() < deadline, "only {} of {expected} folded", folded_total(&home_js).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(folded_total(&home_js).await, expected, "every event folded exactly once");
    let mut global = home_js.get_stream(proxybus_shared::subject::FEEDBACK_STREAM).await.unwrap();
    assert_eq!(global.info().await.unwrap().state.messages, expected, "the global stream sourced every region");
    cancel.cancel();
    aggregator.await.unwrap().unwrap();
}
