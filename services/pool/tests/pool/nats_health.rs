//! Health statistics from `proxy.v1.health.{region}` on a real nats-server.

use std::time::Duration;

use proxybus_shared::nats::NatsSettings;
use proxybus_shared::{Codec, Encoding, HealthState, subject};
use proxybus_tests::NatsServer;

use crate::helpers::*;

#[tokio::test]
async fn health_published_on_the_bus_ejects_and_bans_proxies() {
    let server = NatsServer::start().await.expect("nats-server starts");
    let nats_url = server.client_url();
    let app = spawn_app(&one_region("round_robin", &[1, 2, 3]), |s| s.nats = Some(NatsSettings::new(nats_url))).await;
    let publisher = server.connect().await.unwrap();
    let codec = Codec::default();
    let region = "us-east".parse().unwrap();

    // Garbage first: the listener skips it and keeps going.
    publisher.publish(subject::health(&region), "not msgpack".into()).await.unwrap();
    // Proxy 1 ejected (MessagePack, the default encoding); proxy 2 banned for binance (JSON).
    let ejected = codec.encode(Encoding::MsgPack, &stats(1, HealthState::Ejected)).unwrap();
    let banned = codec.encode(Encoding::Json, &banned_for(2, "binance")).unwrap();
    // The service subscribes in the background: publish until it has applied both.
    let applied = eventually(Duration::from_secs(10), async || {
        publisher.publish(subject::health(&region), ejected.clone()).await.unwrap();
        publisher
            .publish_with_headers(subject::health(&region), Encoding::Json.headers(), banned.clone())
            .await
            .unwrap();
        publisher.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let views = app.selector.proxies(None);
        views.iter().any(|v| v.proxy_id == id(1) && v.state == HealthState::Ejected)
            && views.iter().any(|v| v.proxy_id == id(2) && v.health.is_some())
    })
    .await;
    assert!(applied, "health from the bus was not applied");

    for i in 0..30 {
        assert_eq!(app.ask("binance", &format!("b{i}")).await.proxy_id, Some(id(3)), "1 ejected, 2 banned for binance");
    }
    let mut coinbase = std::collections::HashSet::new();
    for i in 0..30 {
        coinbase.insert(app.ask("coinbase", &format!("c{i}")).await.proxy_id.unwrap());
    }
    assert_eq!(coinbase, [id(2), id(3)].into_iter().collect(), "2 still serves coinbase; 1 serves nothing");
    app.stop().await;
}

#[tokio::test]
async fn health_stored_before_start_is_loaded_from_the_bucket() {
    let server = NatsServer::start().await.expect("nats-server starts");
    let js = async_nats::jetstream::new(server.connect().await.unwrap());
    let bucket = proxybus_shared::kv::open_or_create(
        &js,
        &proxybus_shared::kv::BucketConfig::new(subject::HEALTH_BUCKET, "health as the aggregator stores it"),
    )
    .await
    .unwrap();
    let ejected = Codec::default().encode(Encoding::MsgPack, &stats(1, HealthState::Ejected)).unwrap();
    bucket.put(id(1).as_str(), ejected).await.unwrap();
    bucket.put("checkpoint-like-key", "not health".into()).await.unwrap();

    let nats_url = server.client_url();
    let app = spawn_app(&one_region("round_robin", &[1, 2]), |s| s.nats = Some(NatsSettings::new(nats_url))).await;
    let loaded = eventually(Duration::from_secs(10), async || {
        tokio::time::sleep(Duration::from_millis(20)).await;
        app.selector.proxies(None).iter().any(|v| v.proxy_id == id(1) && v.state == HealthState::Ejected)
    })
    .await;
    assert!(loaded, "the stored ejection was not loaded at start");
    for i in 0..10 {
        assert_eq!(
            app.ask("binance", &format!("b{i}")).await.proxy_id,
            Some(id(2)),
            "proxy 1 is ejected since before start"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn health_stored_after_start_is_followed_with_a_kv_watch() {
    let server = NatsServer::start().await.expect("nats-server starts");
    let nats_url = server.client_url();
    let app = spawn_app(&one_region("round_robin", &[1, 2]), |s| s.nats = Some(NatsSettings::new(nats_url))).await;
    let js = async_nats::jetstream::new(server.connect().await.unwrap());
    let bucket = proxybus_shared::kv::open_health_bucket(&js).await.unwrap();
    // Put into the bucket only: no proxy.v1.health.* message.
    let mut ejected = stats(1, HealthState::Ejected);
    ejected.last_seq = 3;
    bucket.put(id(1).as_str(), Codec::default().encode(Encoding::MsgPack, &ejected).unwrap()).await.unwrap();
    let followed = eventually(Duration::from_secs(10), async || {
        tokio::time::sleep(Duration::from_millis(20)).await;
        app.selector.proxies(None).iter().any(|v| v.proxy_id == id(1) && v.state == HealthState::Ejected)
    })
    .await;
    assert!(followed, "the ejection stored after start was not followed");
    for i in 0..10 {
        assert_eq!(app.ask("binance", &format!("b{i}")).await.proxy_id, Some(id(2)));
    }
    // An older record (a lower last_seq) never undoes it.
    let stale = stats(1, HealthState::Healthy);
    bucket.put(id(1).as_str(), Codec::default().encode(Encoding::MsgPack, &stale).unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.selector.proxies(None).iter().any(|v| v.proxy_id == id(1) && v.state == HealthState::Ejected));
    app.stop().await;
}

#[tokio::test]
async fn the_inventory_is_published_with_ids_and_regions_only_and_again_after_a_reload() {
    let server = NatsServer::start().await.expect("nats-server starts");
    let nats_url = server.client_url();
    let app = spawn_app(&one_region("round_robin", &[1, 2, 3]), |s| {
        s.nats = Some(NatsSettings::new(nats_url));
        s.settings.health.inventory_id = "pool-a".into();
    })
    .await;
    let js = async_nats::jetstream::new(server.connect().await.unwrap());
    let bucket = proxybus_shared::kv::open_inventory_bucket(&js).await.unwrap();
    let read = async || -> Option<(Vec<u8>, proxybus_shared::ProxyInventory)> {
        let bytes = bucket.get("pool-a").await.ok()??;
        let inventory = Codec::default().decode_as(Encoding::MsgPack, &bytes).ok()?;
        Some((bytes.to_vec(), inventory))
    };
    let published = eventually(Duration::from_secs(10), async || {
        tokio::time::sleep(Duration::from_millis(20)).await;
        read().await.is_some_and(|(_, inventory)| inventory.proxies.len() == 3)
    })
    .await;
    assert!(published, "the inventory was not published");
    let (bytes, inventory) = read().await.unwrap();
    assert_eq!(inventory.inventory_id, "pool-a");
    assert!(inventory.proxies.iter().all(|p| p.region.as_str() == "us-east"));
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("secret-pw") && !text.contains("203.0.113"), "no URL, no credential: {text}");

    std::fs::write(&app.inventory_path, one_region("round_robin", &[1, 2, 3, 4, 5])).unwrap();
    app.reloader.reload().unwrap();
    let republished = eventually(Duration::from_secs(10), async || {
        tokio::time::sleep(Duration::from_millis(20)).await;
        read().await.is_some_and(|(_, inventory)| inventory.proxies.len() == 5)
    })
    .await;
    assert!(republished, "the reloaded inventory was not published");
    app.stop().await;
}
