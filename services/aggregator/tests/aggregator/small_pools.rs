//! Ejection in small pools (issue #11, input a): the ejection cap is a share of
//! the region's inventory as the pools publish it in `PROXY_INVENTORY`, and at
//! least one proxy of a region can always be ejected (Envoy's `max_ejection_percent`).

use std::collections::BTreeMap;
use std::time::Duration;

use proxybus_aggregator::{FeedbackFolder, HealthPolicy};
use proxybus_shared::subject::HEALTH_BUCKET;
use proxybus_shared::{
    Codec, Encoding, ErrorKind, HealthState, InventoryProxy, ProxyInventory, kv, subject::INVENTORY_BUCKET,
};
use proxybus_tests::NatsServer;

use crate::helpers::{Running, at, config, event, eventually, jetstream, pid, publish_all, records};

fn timeouts(n: usize, times: usize) -> Vec<proxybus_shared::ProxyFeedback> {
    (0..times).map(|_| event(n, "binance", false, Some(ErrorKind::Timeout))).collect()
}

/// Input a), folded: a fresh one-region deployment of three proxies; the first to
/// report at all reports five timeouts in a row. It is ejected.
#[test]
fn the_first_proxy_to_report_five_timeouts_is_ejected_in_a_three_proxy_region() {
    for inventory in [None, Some(3)] {
        let mut folder = FeedbackFolder::new(HealthPolicy::default());
        if let Some(size) = inventory {
            folder.set_inventory_sizes(BTreeMap::from([("us-east".to_owned(), size)]));
        }
        let mut ejected = false;
        for (k, e) in timeouts(0, 5).iter().enumerate() {
            ejected |= folder.fold(e, k as u64 + 1, at(k as i64)).ejected;
        }
        let stats = &folder.get(&pid(0)).unwrap().stats;
        assert!(ejected, "inventory {inventory:?}");
        assert_eq!(stats.state, HealthState::Ejected, "inventory {inventory:?}");
        assert!(!stats.usable_for(&"binance".parse().unwrap(), at(10)));
        // A second failing proxy of the three stays: 50% of 3 is 1.
        let mut seq = 5;
        for e in timeouts(2, 5) {
            seq += 1;
            folder.fold(&e, seq, at(20));
        }
        assert_eq!(folder.get(&pid(2)).unwrap().stats.state, HealthState::Degraded, "inventory {inventory:?}");
    }
}

/// The same kind, not quoted by the issue: ten proxies in the inventory, three of
/// them heard of, all three failing. By the three heard of only one could go; by
/// the inventory of ten, five may, so all three are ejected.
#[test]
fn the_cap_counts_the_inventory_not_only_the_proxies_heard_of() {
    let fold_three_failing = |sizes: BTreeMap<String, usize>| {
        let mut folder = FeedbackFolder::new(HealthPolicy::default());
        folder.set_inventory_sizes(sizes);
        let mut seq = 0;
        for n in [0, 2, 4] {
            for e in timeouts(n, 5) {
                seq += 1;
                folder.fold(&e, seq, at(seq as i64));
            }
        }
        [0, 2, 4].iter().filter(|n| folder.get(&pid(**n)).unwrap().stats.state == HealthState::Ejected).count()
    };
    assert_eq!(fold_three_failing(BTreeMap::new()), 1, "3 heard of × 50% = 1");
    assert_eq!(fold_three_failing(BTreeMap::from([("us-east".to_owned(), 10)])), 3, "10 in the inventory × 50% = 5");
}

/// Input a) through NATS: the pools' inventory in `PROXY_INVENTORY` sizes the region
/// for the live aggregator, which stores the ejection in `PROXY_HEALTH`.
#[tokio::test]
async fn the_live_aggregator_sizes_regions_from_the_inventory_bucket() {
    let server = NatsServer::start().await.unwrap();
    let js = jetstream(&server).await;
    let bucket = kv::open_inventory_bucket(&js).await.unwrap();
    // Six proxies of us-east in the inventory, none heard of yet.
    let inventory = ProxyInventory {
        schema_version: 1,
        inventory_id: "default".into(),
        proxies: (0..6).map(|k| InventoryProxy { proxy_id: pid(2 * k), region: "us-east".parse().unwrap() }).collect(),
        updated_at: chrono::Utc::now(),
    };
    bucket.put("default", Codec::default().encode(Encoding::MsgPack, &inventory).unwrap()).await.unwrap();
    assert_eq!(bucket.name, INVENTORY_BUCKET);
    let app = Running::start(config(&server));
    // Give the aggregator its inventory before the first events.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Two proxies fail: by the two heard of only one could go; by six, three may.
    let mut events = timeouts(0, 5);
    events.extend(timeouts(2, 5));
    publish_all(&js, &events, 10).await;
    eventually(Duration::from_secs(20), "both proxies ejected", || async {
        let stored = records(&js, HEALTH_BUCKET).await;
        [0, 2].iter().all(|n| stored.get(&pid(*n)).is_some_and(|r| r.stats.state == HealthState::Ejected))
    })
    .await;
    app.stop().await;
}
