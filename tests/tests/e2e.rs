//! End to end: a feed asks over NATS, the resolver asks the pool over HTTP, the
//! answer comes back; health published on `proxy.v1.health.{region}` stops an
//! ejected proxy from being handed out by both.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use proxybus_client::{ClientConfig, ProxyClient};
use proxybus_shared::config::{AuthMethod, ExternalProxyServiceConfig, ProxySettings};
use proxybus_shared::nats::NatsSettings;
use proxybus_shared::{
    Codec, ConnectionType, Encoding, ExchangeId, HealthState, HealthStats, ProxyId, ResponseSource, subject,
};
use proxybus_tests::NatsServer;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "e2e-pool-token-123";

fn sample_inventory() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../services/pool/inventory.sample.toml")
}

struct Pipeline {
    server: NatsServer,
    pool: std::sync::Arc<proxybus_pool::Selector>,
    stop: CancellationToken,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start_pipeline() -> Pipeline {
    let server = NatsServer::start().await.unwrap();
    let stop = CancellationToken::new();
    let pool_settings = proxybus_pool::PoolSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        inventory: sample_inventory(),
        watch_inventory: false,
        auth: proxybus_pool::AuthSettings { tokens: vec![TOKEN.into()], ..Default::default() },
        ..Default::default()
    };
    let pool = proxybus_pool::PoolServer::bind(proxybus_pool::PoolConfig {
        settings: pool_settings,
        nats: Some(NatsSettings::new(server.client_url())),
    })
    .await
    .unwrap();
    let pool_addr = pool.local_addr();
    let selector = pool.selector();
    tokio::spawn(pool.serve(stop.clone().cancelled_owned()));

    let proxy = ProxySettings {
        enabled: true,
        external_service: ExternalProxyServiceConfig {
            enabled: true,
            endpoints: vec![format!("http://{pool_addr}")],
            auth_method: AuthMethod::BearerToken,
            auth_credentials: [("token".to_owned(), TOKEN.into())].into_iter().collect(),
            ..Default::default()
        },
        ..Default::default()
    };
    let config = proxybus_resolver::ResolverConfig {
        proxy,
        resolver: proxybus_resolver::ResolverSettings::default(),
        nats: NatsSettings::new(server.client_url()),
    };
    tokio::spawn(proxybus_resolver::run(config, stop.clone().cancelled_owned()));
    wait_for_resolver(&server).await;
    Pipeline { server, pool: selector, stop }
}

async fn wait_for_resolver(server: &NatsServer) {
    let client = server.connect().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(reply) = client.request("$SRV.PING.proxybus-resolver", "".into()).await
                && !reply.payload.is_empty()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the resolver registered");
}

async fn feed(pipeline: &Pipeline, name: &str) -> ProxyClient {
    let nats = pipeline.server.connect().await.unwrap();
    let mut config = ClientConfig::new(NatsSettings::new(pipeline.server.client_url()), name);
    config.request_timeout = Duration::from_secs(5);
    ProxyClient::with_nats(config, nats)
}

fn binance() -> ExchangeId {
    "binance".parse().unwrap()
}

#[tokio::test]
async fn a_feed_gets_a_proxy_of_the_pool_through_nats_and_the_resolver() {
    let pipeline = start_pipeline().await;
    let inventory: BTreeSet<ProxyId> = pipeline.pool.proxies(None).into_iter().map(|p| p.proxy_id).collect();
    assert_eq!(inventory.len(), 12, "the sample inventory has a dozen proxies");

    let client = feed(&pipeline, "feed-e2e-1").await;
    let lease = client.get_proxy(&binance(), ConnectionType::Websocket, None).await.unwrap();
    assert_eq!(lease.source, ResponseSource::Service, "{lease:?}");
    let id = lease.proxy_id.expect("a proxy, not a direct connection");
    assert!(inventory.contains(&id), "{id} is not in the pool's inventory");
    assert_eq!(lease.region.as_ref().map(|r| r.as_str()), Some("us-east"), "the inventory's default region");
    let again = client.get_proxy(&binance(), ConnectionType::Websocket, None).await.unwrap();
    assert_eq!((again.source, again.proxy_id), (ResponseSource::Cache, Some(id)));

    let eu = client
        .get_proxy(&"kraken".parse().unwrap(), ConnectionType::Http, Some(&"eu-west".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(eu.region.as_ref().map(|r| r.as_str()), Some("eu-west"));
}

#[tokio::test]
async fn an_ejected_proxy_stops_being_handed_out() {
    let pipeline = start_pipeline().await;
    let client = feed(&pipeline, "feed-e2e-2").await;
    let lease = client.get_proxy(&binance(), ConnectionType::Websocket, None).await.unwrap();
    let ejected = lease.proxy_id.unwrap();

    // The aggregator's verdict, as it publishes it.
    let mut stats =
        HealthStats::new(ejected, lease.proxy.as_ref().unwrap().redacted(), lease.region.clone(), Utc::now());
    stats.state = HealthState::Ejected;
    stats.ejected_until = Some(Utc::now() + chrono::Duration::minutes(5));
    stats.consecutive_failures = 5;
    stats.ejections = 1;
    stats.last_seq = 1;
    let nats = pipeline.server.connect().await.unwrap();
    let body = Codec::default().encode(Encoding::MsgPack, &stats).unwrap();
    nats.publish(subject::health(lease.region.as_ref().unwrap()), body).await.unwrap();
    nats.flush().await.unwrap();

    tokio::time::timeout(Duration::from_secs(5), async {
        while pipeline.pool.proxies(None).iter().any(|p| p.proxy_id == ejected && p.state != HealthState::Ejected) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the pool applied the health update");

    // The resolver drops its cached answer; the feed asks again and gets another proxy.
    client.invalidate(&lease).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let next = client.get_proxy(&binance(), ConnectionType::Websocket, None).await.unwrap();
        if next.proxy_id.as_ref() != Some(&ejected) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the resolver kept serving the ejected proxy");
        client.invalidate(&next).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..20 {
        let other = feed(&pipeline, &format!("feed-e2e-new-{i}")).await;
        let lease = other.get_proxy(&binance(), ConnectionType::Websocket, None).await.unwrap();
        assert_ne!(lease.proxy_id.as_ref(), Some(&ejected), "feed {i} was handed the ejected proxy");
    }
}
