//! The supercluster harness against real nats-server processes: three regions joined by
//! gateways, NATS's preference for queue subscribers in the requester's own cluster, fail-over
//! through the gateways when a region's subscribers are gone, and a leaf node at the edge.

use std::time::Duration;

use async_nats::Client;
use futures::StreamExt;
use proxybus_tests::NatsSuperCluster;

const REGIONS: [(&str, usize); 3] = [("us-east", 1), ("eu-west", 1), ("ap-northeast", 1)];

/// A queue subscriber in `region` that answers every request with the region's name.
async fn responder(client: Client, region: &'static str) -> tokio::task::JoinHandle<()> {
    let mut requests = client.queue_subscribe("svc.echo", "svc".into()).await.unwrap();
    client.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                client.publish(reply, region.into()).await.unwrap();
            }
        }
    })
}

async fn who_answers(client: &Client) -> String {
    let reply = tokio::time::timeout(Duration::from_secs(5), client.request("svc.echo", "".into()))
        .await
        .expect("answered in time")
        .expect("answered");
    String::from_utf8(reply.payload.to_vec()).unwrap()
}

#[tokio::test]
async fn requests_stay_in_their_region_and_fail_over_through_gateways() {
    let world = NatsSuperCluster::start(&REGIONS).await.unwrap();
    assert_eq!(world.cluster_names(), ["us-east", "eu-west", "ap-northeast"]);
    let mut answering = Vec::new();
    for (region, _) in REGIONS {
        answering.push(responder(world.connect(region).await.unwrap(), region).await);
    }
    let feed = world.connect("eu-west").await.unwrap();
    // Interest crosses the gateways asynchronously; the local subscriber answers at once.
    for _ in 0..20 {
        assert_eq!(who_answers(&feed).await, "eu-west");
    }
    answering[1].abort();
    // Closing the eu-west responder's connection removes its interest; the next request is
    // answered by another region through a gateway.
    drop(answering.remove(1));
    let mut answered_elsewhere = None;
    for _ in 0..50 {
        match tokio::time::timeout(Duration::from_millis(500), feed.request("svc.echo", "".into())).await {
            Ok(Ok(reply)) => {
                let region = String::from_utf8(reply.payload.to_vec()).unwrap();
                if region != "eu-west" {
                    answered_elsewhere = Some(region);
                    break;
                }
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let region = answered_elsewhere.expect("another region answers once eu-west's responder is gone");
    assert!(["us-east", "ap-northeast"].contains(&region.as_str()), "{region}");
}

#[tokio::test]
async fn a_region_can_be_killed_and_restarted_and_a_leaf_reaches_the_supercluster() {
    let mut world = NatsSuperCluster::start(&REGIONS).await.unwrap();
    let _us = responder(world.connect("us-east").await.unwrap(), "us-east").await;

    let leaf = world.start_leaf("ap-northeast", "edge").await.unwrap();
    let edge = leaf.connect().await.unwrap();
    let mut answer = None;
    for _ in 0..50 {
        if let Ok(Ok(reply)) =
            tokio::time::timeout(Duration::from_millis(500), edge.request("svc.echo", "".into())).await
        {
            answer = Some(String::from_utf8(reply.payload.to_vec()).unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answer.as_deref(), Some("us-east"), "the edge reaches a responder two hops away");

    world.kill_cluster("eu-west").unwrap();
    let feed = world.connect("ap-northeast").await.unwrap();
    assert_eq!(who_answers(&feed).await, "us-east", "the rest of the world keeps working");
    world.restart_cluster("eu-west").await.unwrap();
    let back = world.connect("eu-west").await.unwrap();
    assert_eq!(who_answers(&back).await, "us-east", "the restarted region rejoined");
}
