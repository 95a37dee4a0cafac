//! Selection across the whole pipeline (issue 14): a feed asks over a real
//! nats-server, the resolver asks the real pool service over HTTP, and the lab's
//! real proxies and simulated exchanges give their verdicts.
//!
//! - `exclude_proxy_ids` is honoured by every path: the resolver's cache (bypassed,
//!   never poisoned), the pool, the stale cache and the embedded settings, and
//!   with nothing left the fallback policy answers.
//! - The client library retries a connection an exchange refused through another
//!   proxy of the pool.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use proxybus_client::{ClientConfig, LeaseOptions, ProxyClient};
use proxybus_lab::{Lab, LabConfig, LabExchange, LabProxyConfig, ProxyFault, ProxyKind};
use proxybus_shared::config::{AuthMethod, ExternalProxyServiceConfig, ProxySettings};
use proxybus_shared::nats::NatsSettings;
use proxybus_shared::{ConnectionType, ExchangeId, ProxyId, ProxyRequest, ResponseSource};
use proxybus_tests::{NatsServer, TestInventory};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "selection-pool-token-1";

/// A nats-server, the pool service over `inventory` and a resolver with `proxy`
/// settings (its `external_service` pointed at the pool), each stoppable alone.
struct Pipeline {
    server: NatsServer,
    pool: std::sync::Arc<proxybus_pool::Selector>,
    stop_pool: CancellationToken,
    stop_all: CancellationToken,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop_pool.cancel();
        self.stop_all.cancel();
    }
}

async fn start_pipeline(
    inventory: &Path,
    proxy: ProxySettings,
    resolver: proxybus_resolver::ResolverSettings,
) -> Pipeline {
    start_pipeline_with(inventory, proxy, resolver, |_| {}).await
}

async fn start_pipeline_with(
    inventory: &Path,
    mut proxy: ProxySettings,
    resolver: proxybus_resolver::ResolverSettings,
    pool: impl FnOnce(&mut proxybus_pool::PoolSettings),
) -> Pipeline {
    proxybus_shared::telemetry::init_for_tests();
    let server = NatsServer::start().await.unwrap();
    let client = server.connect().await.unwrap();
    // The stream first (the aggregator makes it in a deployment), so the pool's
    // budget keeper sees every report from the start.
    let js = async_nats::jetstream::new(client.clone());
    proxybus_shared::feedback::ensure_feedback_stream(&js, &Default::default()).await.unwrap();
    let (stop_pool, stop_all) = (CancellationToken::new(), CancellationToken::new());
    let mut pool_settings = proxybus_pool::PoolSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        inventory: inventory.to_owned(),
        watch_inventory: false,
        auth: proxybus_pool::AuthSettings { tokens: vec![TOKEN.into()], ..Default::default() },
        ..Default::default()
    };
    pool(&mut pool_settings);
    let pool = proxybus_pool::PoolServer::bind(proxybus_pool::PoolConfig {
        settings: pool_settings,
        nats: Some(NatsSettings::new(server.client_url())),
    })
    .await
    .unwrap();
    let pool_addr = pool.local_addr();
    let selector = pool.selector();
    tokio::spawn(pool.serve(stop_pool.clone().cancelled_owned()));

    proxy.enabled = true;
    proxy.external_service = ExternalProxyServiceConfig {
        enabled: true,
        endpoints: vec![format!("http://{pool_addr}")],
        auth_method: AuthMethod::BearerToken,
        auth_credentials: [("token".to_owned(), TOKEN.into())].into_iter().collect(),
        ..Default::default()
    };
    let config = proxybus_resolver::ResolverConfig { proxy, resolver, nats: NatsSettings::new(server.client_url()) };
    tokio::spawn(proxybus_resolver::run(config, stop_all.clone().cancelled_owned()));
    proxybus_shared::nats::wait_for_service(
        &client,
        proxybus_shared::subject::RESOLVER_SERVICE,
        Duration::from_secs(10),
    )
    .await
    .expect("the resolver registered");
    Pipeline { server, pool: selector, stop_pool, stop_all }
}

async fn feed(pipeline: &Pipeline, config: impl FnOnce(&mut ClientConfig)) -> ProxyClient {
    let nats = pipeline.server.connect().await.unwrap();
    let mut settings = ClientConfig::new(NatsSettings::new(pipeline.server.client_url()), "feed-selection");
    settings.request_timeout = Duration::from_secs(5);
    config(&mut settings);
    ProxyClient::with_nats(settings, nats)
}

fn binance() -> ExchangeId {
    "binance".parse().unwrap()
}

fn excluding(ids: &[&ProxyId]) -> LeaseOptions {
    LeaseOptions { exclude_proxy_ids: ids.iter().map(|id| *(*id)).collect(), ..LeaseOptions::default() }
}

/// Asks the resolver as a feed without a local cache would.
async fn ask(nats: &async_nats::Client, client_id: &str, excluded: &[&ProxyId]) -> proxybus_shared::ProxyResponse {
    let mut request = ProxyRequest::new(binance(), ConnectionType::Websocket, client_id);
    request.exclude_proxy_ids = excluded.iter().map(|id| *(*id)).collect();
    let codec = proxybus_shared::Codec::default();
    let body = codec.encode(proxybus_shared::Encoding::MsgPack, &request).unwrap();
    let reply =
        nats.request(proxybus_shared::subject::request(&binance(), ConnectionType::Websocket), body).await.unwrap();
    assert!(reply.headers.as_ref().is_none_or(|h| h.get("Nats-Service-Error").is_none()), "{:?}", reply.headers);
    codec.decode(reply.headers.as_ref(), &reply.payload).unwrap()
}

#[tokio::test]
async fn exclude_proxy_ids_is_honoured_by_the_cache_the_pool_the_stale_cache_and_the_embedded_settings() {
    let dir = tempfile::tempdir().unwrap();
    let pool_urls = ["http://u:pw-a@10.1.0.1:3128", "http://u:pw-b@10.1.0.2:3128", "http://u:pw-c@10.1.0.3:3128"];
    let inventory = TestInventory::new("us-east")
        .ttl_seconds(2)
        .when_all_ejected("fail")
        .region("us-east", pool_urls)
        .write(dir.path().join("inventory.toml"));
    let embedded_urls = ["socks5://e:pw-1@10.9.0.1:1080", "socks5://e:pw-2@10.9.0.2:1080"];
    let proxy: ProxySettings = proxybus_shared::config::from_toml_str(&format!(
        "[default.websocket.pool]\nproxies = [{{ url = \"{}\" }}, {{ url = \"{}\" }}]",
        embedded_urls[0], embedded_urls[1]
    ))
    .unwrap();
    let resolver = proxybus_resolver::ResolverSettings {
        max_staleness_seconds: 600,
        failure_threshold: 1000,
        health_probe_interval_seconds: 0,
        ..Default::default()
    };
    let pipeline = start_pipeline(&inventory, proxy, resolver).await;
    let nats = pipeline.server.connect().await.unwrap();
    let pool_ids: Vec<ProxyId> = pool_urls.iter().map(|u| proxybus_shared::proxy_id(u)).collect();
    let embedded_ids: Vec<ProxyId> = embedded_urls.iter().map(|u| proxybus_shared::proxy_id(u)).collect();

    // The cache: the feed's answer is cached; a retry excluding it is answered afresh
    // by the pool, and the cached answer still serves the feed's ordinary requests.
    let first = ask(&nats, "feed-1", &[]).await;
    let mine = first.proxy_id.unwrap();
    assert_eq!(first.source, ResponseSource::Service);
    assert_eq!(ask(&nats, "feed-1", &[]).await.source, ResponseSource::Cache);
    let retry = ask(&nats, "feed-1", &[&mine]).await;
    assert_eq!(retry.source, ResponseSource::Service, "not from the cache");
    let other = retry.proxy_id.unwrap();
    assert_ne!(other, mine);
    let cached = ask(&nats, "feed-1", &[]).await;
    assert_eq!((cached.source, cached.proxy_id.as_ref()), (ResponseSource::Cache, Some(&mine)), "cache not poisoned");

    // The pool: with two excluded, only the third; the pool's leases say it chose it.
    let all_but_last: Vec<&ProxyId> = pool_ids[..2].iter().collect();
    for i in 0..5 {
        let answer = ask(&nats, &format!("feed-x{i}"), &all_but_last).await;
        assert_eq!((answer.source, answer.proxy_id.as_ref()), (ResponseSource::Service, Some(&pool_ids[2])));
    }
    assert!(pipeline.pool.active_leases(&pool_ids[2]) >= 5);

    // The pool has none left (its policy is fail): the embedded settings answer, never an excluded one.
    let mut excluded: Vec<&ProxyId> = pool_ids.iter().collect();
    let embedded = ask(&nats, "feed-1", &excluded).await;
    assert_eq!(embedded.source, ResponseSource::Embedded);
    assert!(embedded_ids.contains(embedded.proxy_id.as_ref().unwrap()));
    excluded.push(&embedded_ids[0]);
    for _ in 0..4 {
        let answer = ask(&nats, "feed-1", &excluded).await;
        assert_eq!((answer.source, answer.proxy_id.as_ref()), (ResponseSource::Embedded, Some(&embedded_ids[1])));
    }
    // Nothing left anywhere: the policy (direct_connection) says so.
    excluded.push(&embedded_ids[1]);
    let direct = ask(&nats, "feed-1", &excluded).await;
    assert_eq!((direct.source, direct.proxy_url), (ResponseSource::Direct, None));

    // The stale cache: the pool is gone and the cached answer has expired; it is
    // served stale, but never to a retry that excludes it.
    pipeline.stop_pool.cancel();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = ask(&nats, "feed-1", &[]).await;
    assert_eq!((stale.source, stale.proxy_id.as_ref()), (ResponseSource::StaleCache, Some(&mine)));
    let around = ask(&nats, "feed-1", &[&mine]).await;
    assert_eq!(around.source, ResponseSource::Embedded, "the stale entry is the excluded proxy");
    let stale_again = ask(&nats, "feed-1", &[]).await;
    assert_eq!((stale_again.source, stale_again.proxy_id.as_ref()), (ResponseSource::StaleCache, Some(&mine)));

    // The client library: its local cache is bypassed the same way, and its own
    // embedded fallback (bus silent) skips excluded proxies too.
    let client = feed(&pipeline, |c| {
        c.embedded = proxybus_shared::config::from_toml_str(&format!(
            "enabled = true\n[default.websocket.pool]\nproxies = [{{ url = \"{}\" }}, {{ url = \"{}\" }}]",
            embedded_urls[0], embedded_urls[1]
        ))
        .unwrap()
    })
    .await;
    let lease = client.get_proxy(&binance(), ConnectionType::Websocket, None).await.unwrap();
    let held = lease.proxy_id.unwrap();
    let around = client.get_proxy_with(&binance(), ConnectionType::Websocket, &excluding(&[&held])).await.unwrap();
    assert_ne!(around.proxy_id.as_ref(), Some(&held));
    assert_ne!(around.source, ResponseSource::Cache);
    pipeline.stop_all.cancel();
    let silent = feed(&pipeline, |c| {
        c.request_timeout = Duration::from_millis(300);
        c.embedded = proxybus_shared::config::from_toml_str(&format!(
            "enabled = true\n[default.websocket.pool]\nproxies = [{{ url = \"{}\" }}, {{ url = \"{}\" }}]",
            embedded_urls[0], embedded_urls[1]
        ))
        .unwrap();
    })
    .await;
    for _ in 0..3 {
        let lease = silent
            .get_proxy_with(&binance(), ConnectionType::Websocket, &excluding(&[&embedded_ids[0]]))
            .await
            .unwrap();
        assert_eq!((lease.source, lease.proxy_id.as_ref()), (ResponseSource::Embedded, Some(&embedded_ids[1])));
    }
}

fn lab_proxy(kind: ProxyKind, last: u8) -> LabProxyConfig {
    LabProxyConfig {
        kind,
        region: "us-east".into(),
        source_ip: Ipv4Addr::new(127, 0, 0, last),
        fault: ProxyFault::None,
        connection_types: vec![],
    }
}

#[tokio::test]
async fn the_client_retries_a_refused_connection_through_another_proxy_of_the_pool() {
    // Three lab proxies; Binance refuses the first two (451, a restricted location).
    let dir = tempfile::tempdir().unwrap();
    let mut config = LabConfig::demo(dir.path());
    config.simulator.binance.geo_restricted_ips =
        vec![Ipv4Addr::new(127, 0, 0, 2).into(), Ipv4Addr::new(127, 0, 0, 3).into()];
    config.simulator.coinbase.waf_blocked_ips.clear();
    config.proxies =
        vec![lab_proxy(ProxyKind::Http, 2), lab_proxy(ProxyKind::Socks5, 3), lab_proxy(ProxyKind::Http, 4)];
    let lab = Lab::start(config).await.unwrap();
    let good = proxybus_shared::proxy_id(&lab.proxies()[2].url());
    let pipeline = start_pipeline(lab.inventory_path(), ProxySettings::default(), Default::default()).await;

    let ws_url = "wss://stream.binance.com:9443/ws/btcusdt@trade";
    let restricted_451s = || {
        let stats = lab.simulator().stats();
        [2u8, 3]
            .iter()
            .map(|last| stats.of(LabExchange::Binance, Ipv4Addr::new(127, 0, 0, *last).into()).http_451)
            .sum::<u64>()
    };

    // With retries off, the refusal comes back to the caller: the pool's first
    // round-robin answer is the first proxy, a restricted one.
    let strict = feed(&pipeline, |c| {
        c.client_id = "feed-strict".into();
        c.verdict_retries = 0;
        c.extra_roots = vec![lab.ca().der()];
    })
    .await;
    let err = strict.connect_websocket(ws_url, &binance()).await.unwrap_err();
    assert!(err.to_string().contains("451"), "{err}");
    assert_eq!(restricted_451s(), 1);

    // A websocket: the next answer is the second proxy (restricted too), then
    // retries exclude the refused ones until the third, unrestricted, one.
    let client = feed(&pipeline, |c| c.extra_roots = vec![lab.ca().der()]).await;
    let ws = client.connect_websocket(ws_url, &binance()).await.unwrap();
    assert_eq!(ws.lease.proxy_id.as_ref(), Some(&good), "only the third proxy may reach binance");
    let after_ws = restricted_451s();
    assert!((2..=3).contains(&after_ws), "one or two refusals before the good proxy, got {}", after_ws - 1);
    let retried = client.retried_failures();
    assert_eq!(retried.get(&proxybus_shared::ErrorKind::Http451).copied(), Some(after_ws - 1), "{retried:?}");
    drop(ws);

    // A REST GET, by another feed: the same, and never through a proxy it already tried.
    let rest = feed(&pipeline, |c| {
        c.client_id = "feed-rest".into();
        c.extra_roots = vec![lab.ca().der()];
    })
    .await;
    let request = http::Request::get("https://api.binance.com/api/v3/ping").body(bytes::Bytes::new()).unwrap();
    let (response, lease) = rest.send_http(&binance(), request).await.unwrap();
    assert_eq!((response.status().as_u16(), lease.proxy_id.as_ref()), (200, Some(&good)));
    assert!(restricted_451s() - after_ws <= 2, "each restricted proxy at most once");

    // Every refusal was reported: a failed event with status 451 for each, in PROXY_FEEDBACK.
    for feed in [&strict, &client, &rest] {
        assert!(feed.flush_feedback(Duration::from_secs(10)).await, "{:?}", feed.feedback_stats());
    }
    let js = async_nats::jetstream::new(pipeline.server.connect().await.unwrap());
    let mut stream = js.get_stream(proxybus_shared::subject::FEEDBACK_STREAM).await.unwrap();
    let messages = stream.info().await.unwrap().state.messages;
    let mut reported_451 = 0;
    for seq in 1..=messages {
        let message = stream.get_raw_message(seq).await.unwrap();
        let event: proxybus_shared::ProxyFeedback =
            proxybus_shared::Codec::default().decode(Some(&message.headers), &message.payload).unwrap();
        reported_451 += u64::from(event.status_code == Some(451) && !event.success);
    }
    assert_eq!(reported_451, restricted_451s());
    drop(pipeline);
    lab.stop().await;
}

#[tokio::test]
async fn a_feed_past_the_weight_limit_through_one_proxy_is_steered_to_others_before_a_429() {
    // Binance's weight limit scaled down to 120 per window (an hour here, so no
    // window ends during the test); 40 depth polls of weight 5 need 200: one proxy
    // alone would get 429 after 24 polls, then 418 for continuing.
    let dir = tempfile::tempdir().unwrap();
    let mut config = LabConfig::demo(dir.path());
    config.simulator.binance.geo_restricted_ips.clear();
    config.simulator.coinbase.waf_blocked_ips.clear();
    config.simulator.binance.request_window_seconds = 3_600;
    config.proxies =
        vec![lab_proxy(ProxyKind::Http, 2), lab_proxy(ProxyKind::Socks5, 3), lab_proxy(ProxyKind::Http, 4)];
    let lab = Lab::start(config).await.unwrap();
    let budgets = lab.config().simulator.budget_settings();
    let limits = budgets.exchanges[&binance()].clone();
    assert_eq!((limits.request_weight_limit, limits.request_window_seconds), (120, 3_600));
    let pool_budgets = budgets.clone();
    let pipeline = start_pipeline_with(lab.inventory_path(), ProxySettings::default(), Default::default(), |pool| {
        pool.budgets = pool_budgets
    })
    .await;
    let client = feed(&pipeline, |c| {
        c.extra_roots = vec![lab.ca().der()];
        c.budgets = budgets.clone();
    })
    .await;

    let mut used_by = std::collections::BTreeMap::<ProxyId, u32>::new();
    for i in 0..40 {
        let request = http::Request::get("https://api.binance.com/api/v3/depth?symbol=BTCUSDT&limit=100")
            .body(bytes::Bytes::new())
            .unwrap();
        let (response, lease) = client.send_http(&binance(), request).await.unwrap();
        assert_eq!(response.status(), 200, "poll {i} through {:?}", lease.proxy_id);
        let used: u32 = response.headers()["x-mbx-used-weight-1m"].to_str().unwrap().parse().unwrap();
        used_by.insert(lease.proxy_id.unwrap(), used);
    }
    // Nobody was told 429 or 418, and the weight was spread over more than one IP.
    let stats = lab.simulator().stats();
    for last in [2u8, 3, 4] {
        let ip = Ipv4Addr::new(127, 0, 0, last).into();
        let of = stats.of(LabExchange::Binance, ip);
        assert_eq!((of.http_429, of.http_418), (0, 0), "{ip} was rate-limited: {of:?}");
    }
    assert!(used_by.len() >= 2, "one proxy took it all: {used_by:?}");
    assert!(used_by.values().all(|used| *used <= limits.request_weight_limit), "{used_by:?}");
    let near: Vec<ProxyId> =
        used_by.iter().filter(|(_, used)| limits.weight_near_limit(**used)).map(|(id, _)| *id).collect();
    assert!(!near.is_empty(), "the feed moved because a proxy came near the limit: {used_by:?}");

    // The shared budget: the pool folded the reported weight into PROXY_BUDGETS
    // (compare-and-set), and a new feed, which saw none of it, is not given a
    // proxy near the limit.
    let js = async_nats::jetstream::new(pipeline.server.connect().await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for id in &near {
        loop {
            let held = pipeline.pool.budget(id, &binance());
            if held.as_ref().is_some_and(|b| limits.weight_near_limit(b.weight_used)) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the pool never learned {id}'s budget: {held:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let bucket = js.get_key_value(proxybus_shared::subject::BUDGET_BUCKET).await.unwrap();
        let stored = bucket.get(proxybus_shared::budget::budget_key(id, &binance())).await.unwrap().expect("stored");
        let budget: proxybus_shared::budget::RateBudget =
            proxybus_shared::Codec::default().decode_as(proxybus_shared::Encoding::MsgPack, &stored).unwrap();
        assert_eq!(budget.weight_limit, 120);
        assert!(!budget.has_room(chrono::Utc::now(), limits.headroom), "{budget:?}");
    }
    for i in 0..6 {
        let fresh = feed(&pipeline, |c| c.client_id = format!("feed-fresh-{i}")).await;
        let lease = fresh.get_proxy(&binance(), ConnectionType::Http, None).await.unwrap();
        let id = lease.proxy_id.expect("a proxy");
        assert!(!near.contains(&id), "a fresh feed got {id}, near its limit");
    }
    drop(pipeline);
    lab.stop().await;
}

#[tokio::test]
async fn a_session_key_keeps_one_proxy_for_every_feed_of_the_session_through_the_resolver() {
    let dir = tempfile::tempdir().unwrap();
    let inventory = TestInventory::new("us-east")
        .region("us-east", (1..=3).map(|n| format!("http://u:pw@10.2.0.{n}:3128")))
        .write(dir.path().join("inventory.toml"));
    let pipeline = start_pipeline(&inventory, ProxySettings::default(), Default::default()).await;
    let session = |key: &str| LeaseOptions { session_key: Some(key.into()), ..LeaseOptions::default() };
    let a = feed(&pipeline, |c| c.client_id = "feed-a".into()).await;
    let b = feed(&pipeline, |c| c.client_id = "feed-b".into()).await;

    let first = a.get_proxy_with(&binance(), ConnectionType::Websocket, &session("btc-book")).await.unwrap();
    assert_eq!(first.source, ResponseSource::Service);
    let shared = b.get_proxy_with(&binance(), ConnectionType::Websocket, &session("btc-book")).await.unwrap();
    assert_eq!(shared.proxy_id, first.proxy_id, "another feed continues the session on its proxy");
    assert_eq!(shared.strategy, "session");
    let other = a.get_proxy_with(&binance(), ConnectionType::Websocket, &session("eth-book")).await.unwrap();
    assert_ne!(other.proxy_id, first.proxy_id, "another session of the same feed is its own");
    let cached = a.get_proxy_with(&binance(), ConnectionType::Websocket, &session("btc-book")).await.unwrap();
    assert_eq!((cached.source, cached.proxy_id), (ResponseSource::Cache, first.proxy_id));
    // Through the resolver without the client's cache: the resolver keeps each session's answer apart too.
    let nats = pipeline.server.connect().await.unwrap();
    for (key, expected) in [("btc-book", &first.proxy_id), ("eth-book", &other.proxy_id)] {
        let mut request = ProxyRequest::new(binance(), ConnectionType::Websocket, "feed-a");
        request.session_key = Some(key.into());
        let codec = proxybus_shared::Codec::default();
        let body = codec.encode(proxybus_shared::Encoding::MsgPack, &request).unwrap();
        let reply =
            nats.request(proxybus_shared::subject::request(&binance(), ConnectionType::Websocket), body).await.unwrap();
        let answer: proxybus_shared::ProxyResponse = codec.decode(reply.headers.as_ref(), &reply.payload).unwrap();
        assert_eq!((&answer.proxy_id, answer.source), (expected, ResponseSource::Cache), "{key}");
    }
}
