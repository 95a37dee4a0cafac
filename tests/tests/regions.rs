//! Regional resolvers on a real supercluster (issue 16), one supercluster for every assertion:
//!
//! - a feed in `eu-west` is answered by an `eu-west` resolver;
//! - with every `eu-west` resolver gone, its next request is answered through a gateway by
//!   another region at once (no request timeout waited out), with the requested region when that
//!   region's proxy services serve it, else its own — and the answer says which;
//! - `PROXY_HEALTH` written in `us-east` is read from `eu-west`'s own mirror; a message on
//!   `proxy.v1.health.{region}` published in one region reaches a subscriber in another;
//! - restarted, the `eu-west` resolvers take their region's traffic back;
//! - `region: "any"` is answered with the best region's proxy (healthy, lowest latency), also
//!   within its deadline while the best region is dead;
//! - with the home region of `PROXY_HEALTH` dead as well, `eu-west` still reads its mirror.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use futures::StreamExt;
use proxybus_client::{ClientConfig, ProxyClient, ProxyLease};
use proxybus_shared::config::{AuthMethod, ExternalProxyServiceConfig, ProxySettings};
use proxybus_shared::nats::NatsSettings;
use proxybus_shared::{
    Codec, ConnectionType, Encoding, ExchangeId, HealthState, HealthStats, ProxyRequest, Region, ResponseSource,
    proxy_id, redact_url, subject,
};
use proxybus_tests::{NatsSuperCluster, TestInventory};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const REGIONS: [(&str, usize); 3] = [("us-east", 1), ("eu-west", 1), ("ap-northeast", 1)];
const TOKEN: &str = "regions-pool-token-16";
/// What a feed waits for the resolver before taking its fallback.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a resolver waits for the regions' answers to `any`.
const ANY_DEADLINE: Duration = Duration::from_millis(1000);
/// Proxies per region in each inventory.
const PROXIES: usize = 2;

/// Latency EWMA (ms) written to `PROXY_HEALTH` for each region's proxies: `ap-northeast`'s
/// are the fastest, then `us-east`'s.
fn latency_of(region: &str) -> f64 {
    match region {
        "ap-northeast" => 5.0,
        "us-east" => 40.0,
        _ => 300.0,
    }
}

fn proxy_url(region: &str, n: usize) -> String {
    let index = REGIONS.iter().position(|(name, _)| *name == region).unwrap();
    format!("http://feed:secret-{region}@127.0.{}.{}:3128", 100 + index, 10 + n)
}

/// A pool inventory with default region `home`, serving `home` and `also`.
fn write_inventory(dir: &Path, home: &str, also: &[&str]) -> PathBuf {
    std::iter::once(&home)
        .chain(also)
        .fold(TestInventory::new(home).ttl_seconds(60).sticky(false), |inventory, region| {
            inventory.region(region, (0..PROXIES).map(|n| proxy_url(region, n)))
        })
        .write(dir.join(format!("{home}.toml")))
}

/// One region's pool service (HTTP on loopback), serving until `stop`.
async fn start_pool(inventory: PathBuf, stop: &CancellationToken) -> String {
    let settings = proxybus_pool::PoolSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        inventory,
        watch_inventory: false,
        auth: proxybus_pool::AuthSettings { tokens: vec![TOKEN.into()], ..Default::default() },
        ..Default::default()
    };
    let pool = proxybus_pool::PoolServer::bind(proxybus_pool::PoolConfig { settings, nats: None }).await.unwrap();
    let addr = format!("http://{}", pool.local_addr());
    tokio::spawn(pool.serve(stop.clone().cancelled_owned()));
    addr
}

/// A resolver of `region` on its own connection to that region's servers, asking `pool`.
async fn start_resolver(world: &NatsSuperCluster, region: &str, pool: &str) -> JoinHandle<()> {
    let proxy = ProxySettings {
        enabled: true,
        external_service: ExternalProxyServiceConfig {
            enabled: true,
            endpoints: vec![pool.to_owned()],
            auth_method: AuthMethod::BearerToken,
            auth_credentials: [("token".to_owned(), TOKEN.into())].into_iter().collect(),
            ..Default::default()
        },
        ..Default::default()
    };
    let resolver = proxybus_resolver::ResolverSettings {
        region: Some(region.parse().unwrap()),
        regions: REGIONS.iter().map(|(name, _)| name.parse().unwrap()).collect(),
        any_region_deadline_ms: ANY_DEADLINE.as_millis() as u64,
        health_probe_interval_seconds: 0,
        ..Default::default()
    };
    let nats = NatsSettings::new(world.client_urls(region).join(","));
    let config = proxybus_resolver::ResolverConfig { proxy, resolver, nats };
    let client = world.connect_options().name(format!("resolver-{region}")).connect(world.client_urls(region)).await;
    let client = client.unwrap();
    tokio::spawn(async move {
        proxybus_resolver::run_with_client(client, config, std::future::pending()).await.unwrap();
    })
}

/// Waits until a client of `from` gets an answer on `region`'s own request subject: a resolver
/// of `region` is serving, and `from`'s servers know of it.
async fn wait_served(world: &NatsSuperCluster, from: &str, region: &str) {
    let client = world.connect(from).await.unwrap();
    let region: Region = region.parse().unwrap();
    let subject = subject::regional_request(&region, &binance(), ConnectionType::Http);
    let body = Codec::default()
        .encode(Encoding::MsgPack, &ProxyRequest::new(binance(), ConnectionType::Http, "readiness"))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.request(subject.clone(), body.clone()).await.is_err() {
        assert!(Instant::now() < deadline, "no resolver of {region} reachable from {from}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills `resolvers` (their tasks end, their connections close) and waits until `eu-west`'s
/// servers know that `region` has no resolver left: a request on `region`'s own subject sent
/// from `eu-west` gets "no responders". (Plain-subject interest crosses a gateway optimistically,
/// so the first such requests may go unanswered rather than refused.)
async fn kill_resolvers(world: &NatsSuperCluster, region: &str, resolvers: Vec<JoinHandle<()>>) {
    for resolver in &resolvers {
        resolver.abort();
    }
    for resolver in resolvers {
        assert!(resolver.await.unwrap_err().is_cancelled());
    }
    let client = world.connect("eu-west").await.unwrap();
    let region: Region = region.parse().unwrap();
    let subject = subject::regional_request(&region, &binance(), ConnectionType::Http);
    let body = Codec::default()
        .encode(Encoding::MsgPack, &ProxyRequest::new(binance(), ConnectionType::Http, "liveness"))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let asked = tokio::time::timeout(Duration::from_millis(300), client.request(subject.clone(), body.clone()));
        if let Ok(Err(err)) = asked.await
            && err.kind() == async_nats::client::RequestErrorKind::NoResponders
        {
            return;
        }
        assert!(Instant::now() < deadline, "{region}'s resolvers still known in eu-west");
    }
}

fn binance() -> ExchangeId {
    "binance".parse().unwrap()
}

/// A feed of `region` (`None`: no preference) connected to `home`'s servers.
async fn feed(world: &NatsSuperCluster, home: &str, region: Option<&str>, name: &str) -> ProxyClient {
    let nats = world.connect(home).await.unwrap();
    let mut config = ClientConfig::new(NatsSettings::new(world.client_urls(home).join(",")), name);
    config.region = region.map(|r| r.parse().unwrap());
    config.request_timeout = REQUEST_TIMEOUT;
    ProxyClient::with_nats(config, nats)
}

/// Asks the resolver anew (the feed's cached lease dropped first); the lease and how long it took.
async fn ask(feed: &ProxyClient, previous: Option<&ProxyLease>) -> (ProxyLease, Duration) {
    if let Some(lease) = previous {
        feed.invalidate(lease).await;
    }
    let started = Instant::now();
    let lease = feed.get_proxy(&binance(), ConnectionType::Websocket, None).await.unwrap();
    let elapsed = started.elapsed();
    assert!(
        matches!(lease.source, ResponseSource::Service | ResponseSource::Cache),
        "a resolver answered with a proxy of its services, not a fallback: {lease:?}"
    );
    (lease, elapsed)
}

fn region_of(region: &Option<Region>) -> &str {
    region.as_ref().map_or("-", Region::as_str)
}

/// Writes a healthy record with `latency_of(region)` for every proxy of every region into
/// `bucket`, as the aggregator would.
async fn write_health(bucket: &async_nats::jetstream::kv::Store) -> Vec<HealthStats> {
    let mut written = Vec::new();
    for (region, _) in REGIONS {
        for n in 0..PROXIES {
            let url = proxy_url(region, n);
            let mut stats =
                HealthStats::new(proxy_id(&url), redact_url(&url), Some(region.parse().unwrap()), Utc::now());
            stats.state = HealthState::Healthy;
            stats.total = 10;
            stats.successes = 10;
            stats.success_rate = 1.0;
            stats.latency_ewma_ms = Some(latency_of(region));
            stats.last_seq = 1;
            let value = Codec::default().encode(Encoding::MsgPack, &stats).unwrap();
            bucket.put(stats.proxy_id.as_str(), value).await.unwrap();
            written.push(stats);
        }
    }
    written
}

#[tokio::test]
async fn regions_answer_their_feeds_fail_over_at_once_share_health_and_answer_any() {
    let mut world = NatsSuperCluster::start(&REGIONS).await.unwrap();
    let stop = CancellationToken::new();
    let _stop_pools = stop.clone().drop_guard();
    let dir = tempfile::tempdir().unwrap();
    // us-east's proxy services also serve eu-west; ap-northeast's serve only their own region.
    let pools = [
        ("us-east", start_pool(write_inventory(dir.path(), "us-east", &["eu-west"]), &stop).await),
        ("eu-west", start_pool(write_inventory(dir.path(), "eu-west", &[]), &stop).await),
        ("ap-northeast", start_pool(write_inventory(dir.path(), "ap-northeast", &[]), &stop).await),
    ];
    let pool = |region: &str| pools.iter().find(|(name, _)| *name == region).unwrap().1.clone();
    let mut us = start_resolver(&world, "us-east", &pool("us-east")).await;
    let ap = start_resolver(&world, "ap-northeast", &pool("ap-northeast")).await;
    let mut eu = vec![
        start_resolver(&world, "eu-west", &pool("eu-west")).await,
        start_resolver(&world, "eu-west", &pool("eu-west")).await,
    ];
    for (region, _) in REGIONS {
        wait_served(&world, "eu-west", region).await;
    }

    // A feed in eu-west is answered by an eu-west resolver, with an eu-west proxy.
    let eu_feed = feed(&world, "eu-west", Some("eu-west"), "feed-eu-west-1").await;
    let (mut lease, _) = ask(&eu_feed, None).await;
    for _ in 0..10 {
        (lease, _) = ask(&eu_feed, Some(&lease)).await;
        assert_eq!(region_of(&lease.resolver_region), "eu-west", "{lease:?}");
        assert_eq!(region_of(&lease.region), "eu-west", "{lease:?}");
    }

    // Every eu-west resolver gone: the next request crosses a gateway and is answered at once.
    kill_resolvers(&world, "eu-west", std::mem::take(&mut eu)).await;
    let (failed_over, elapsed) = ask(&eu_feed, Some(&lease)).await;
    assert!(elapsed < Duration::from_secs(1), "fail-over took {elapsed:?} (request timeout {REQUEST_TIMEOUT:?})");
    match region_of(&failed_over.resolver_region) {
        // us-east's proxy services serve eu-west: the requested region.
        "us-east" => assert_eq!(region_of(&failed_over.region), "eu-west", "{failed_over:?}"),
        // ap-northeast's do not: its own.
        "ap-northeast" => assert_eq!(region_of(&failed_over.region), "ap-northeast", "{failed_over:?}"),
        other => panic!("answered by {other}: {failed_over:?}"),
    }
    // With us-east's resolver gone too, ap-northeast answers, from its own region, and says so.
    kill_resolvers(&world, "us-east", vec![us]).await;
    let (last_resort, elapsed) = ask(&eu_feed, Some(&failed_over)).await;
    assert!(elapsed < Duration::from_secs(1), "fail-over took {elapsed:?}");
    assert_eq!(region_of(&last_resort.resolver_region), "ap-northeast", "{last_resort:?}");
    assert_eq!(region_of(&last_resort.region), "ap-northeast", "{last_resort:?}");

    // Health fan-out: PROXY_HEALTH lives in us-east; each other region reads its own mirror.
    let home_js = jetstream::new(world.connect("us-east").await.unwrap());
    let health = home_js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: subject::HEALTH_BUCKET.into(),
            placement: Some(async_nats::jetstream::stream::Placement {
                cluster: Some("us-east".into()),
                tags: Vec::new(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let eu_js = jetstream::new(world.connect("eu-west").await.unwrap());
    let eu_west: Region = "eu-west".parse().unwrap();
    proxybus_shared::kv::ensure_health_mirror(&eu_js, &eu_west, 1).await.unwrap();
    let ap_js = jetstream::new(world.connect("ap-northeast").await.unwrap());
    proxybus_shared::kv::ensure_health_mirror(&ap_js, &"ap-northeast".parse().unwrap(), 1).await.unwrap();
    let written = write_health(&health).await;
    let mirror = proxybus_shared::kv::open_health_mirror(&eu_js, &eu_west).await.unwrap();
    let mut mirror_stream = eu_js.get_stream(mirror.stream_name.as_str()).await.unwrap();
    let placed = mirror_stream.info().await.unwrap().cluster.clone().and_then(|cluster| cluster.name);
    assert_eq!(placed.as_deref(), Some("eu-west"), "the mirror's servers are eu-west's");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let read = proxybus_shared::kv::health_stats(&mirror).await.unwrap();
        if read.len() == written.len() {
            for stats in &written {
                assert_eq!(read.get(&stats.proxy_id), Some(stats), "the mirror holds what us-east wrote");
            }
            break;
        }
        assert!(Instant::now() < deadline, "the eu-west mirror holds {} of {} records", read.len(), written.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A health message published in us-east reaches a subscriber in ap-northeast.
    let listener = world.connect("ap-northeast").await.unwrap();
    let mut updates = listener.subscribe(subject::HEALTH_WILDCARD).await.unwrap();
    listener.flush().await.unwrap();
    let publisher = world.connect("us-east").await.unwrap();
    let sent = &written[0];
    let body = Codec::default().encode(Encoding::MsgPack, sent).unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            publisher.publish(subject::health(sent.region.as_ref().unwrap()), body.clone()).await.unwrap();
            publisher.flush().await.unwrap();
            if let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(200), updates.next()).await {
                return message;
            }
        }
    })
    .await
    .expect("the health message crossed the gateways");
    assert_eq!(heard.subject.as_str(), "proxy.v1.health.us-east");
    let decoded: HealthStats = Codec::default().decode_as(Encoding::MsgPack, &heard.payload).unwrap();
    assert_eq!(&decoded, sent);

    // Restarted (loading the health just written), eu-west's resolvers take eu-west's traffic back.
    us = start_resolver(&world, "us-east", &pool("us-east")).await;
    eu.push(start_resolver(&world, "eu-west", &pool("eu-west")).await);
    eu.push(start_resolver(&world, "eu-west", &pool("eu-west")).await);
    wait_served(&world, "eu-west", "us-east").await;
    wait_served(&world, "eu-west", "eu-west").await;
    let (back, _) = ask(&eu_feed, Some(&last_resort)).await;
    assert_eq!(region_of(&back.resolver_region), "eu-west", "{back:?}");
    assert_eq!(region_of(&back.region), "eu-west", "{back:?}");

    // `any` from eu-west: every region answers; ap-northeast's proxies are the fastest.
    let any_feed = feed(&world, "eu-west", Some("any"), "feed-any-1").await;
    let (best, _) = ask(&any_feed, None).await;
    assert_eq!(region_of(&best.region), "ap-northeast", "{best:?}");
    assert_eq!(region_of(&best.resolver_region), "eu-west", "the eu-west resolver scattered and answered");
    // ap-northeast dead: the best of the living regions (us-east), within the deadline.
    world.kill_cluster("ap-northeast").unwrap();
    let any_feed = feed(&world, "eu-west", Some("any"), "feed-any-2").await;
    let (best, elapsed) = ask(&any_feed, None).await;
    assert_eq!(region_of(&best.region), "us-east", "{best:?}");
    assert!(elapsed < ANY_DEADLINE + Duration::from_secs(1), "took {elapsed:?} with a deadline of {ANY_DEADLINE:?}");

    // The home region gone too: eu-west still reads health from its own mirror.
    world.kill_cluster("us-east").unwrap();
    let kept = mirror.get(written[0].proxy_id.as_str()).await.unwrap().expect("the mirror keeps the record");
    let kept: HealthStats = Codec::default().decode_as(Encoding::MsgPack, &kept).unwrap();
    assert_eq!(kept, written[0]);

    for resolver in eu.into_iter().chain([us, ap]) {
        resolver.abort();
    }
}
