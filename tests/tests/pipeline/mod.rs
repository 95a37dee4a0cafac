//! What the load and fault tests (`soak.rs`, `faults.rs`) share: the pipeline — a
//! `nats-server`, the pool, one or more resolvers and the aggregator — with each service in a
//! child process of its own ([`ServiceProcess`]: the test binary started again on its
//! `service_process` test, which runs the service named in [`SERVICE_ENV`]), so that a test can
//! kill one like `kill -9` and measure its own memory; and feeds, each a `ProxyClient` asking for
//! proxies and reporting feedback in a loop ([`run_feed`]).
//!
//! Each binary uses its part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use proxybus_client::{ClientConfig, ProxyClient};
use proxybus_shared::config::{AuthMethod, ConnectionProxies, ExternalProxyServiceConfig, ProxyConfig, ProxySettings};
use proxybus_shared::nats::NatsSettings;
use proxybus_shared::subject::{FEEDBACK_STREAM, HEALTH_BUCKET};
use proxybus_shared::{ConnectionType, ExchangeId, FallbackPolicy, FeedbackPhase, ResponseSource};
use proxybus_tests::{Latencies, NatsServer, ServiceProcess, resolvers_serving};
use secrecy::SecretString;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Names the service a child process runs: `pool`, `resolver` or `aggregator`.
pub(crate) const SERVICE_ENV: &str = "PROXYBUS_TEST_SERVICE";
/// The NATS URL of a child service.
const NATS_URL_ENV: &str = "PROXYBUS_TEST_NATS_URL";
/// The pool's HTTP address (`127.0.0.1:PORT`): where it listens, where resolvers ask.
const POOL_ADDR_ENV: &str = "PROXYBUS_TEST_POOL_ADDR";
/// The pool's inventory file.
const INVENTORY_ENV: &str = "PROXYBUS_TEST_INVENTORY";
/// The name of the test function that is the children's entry point, in each binary.
pub(crate) const ENTRY_TEST: &str = "service_process";
/// The pool's bearer token.
const TOKEN: &str = "soak-pool-token-123";
/// The proxy a feed's and a resolver's embedded settings name, for when the pool or the bus is
/// away.
pub(crate) const EMBEDDED_PROXY: &str = "http://fallback-user:fallback-pw@fallback-proxy.example:3128";
/// The exchanges the feeds ask for, in turn.
pub(crate) const EXCHANGES: [&str; 4] = ["binance", "kraken", "coinbase", "okx"];

/// The sample inventory with every answer's TTL cut to one second, written into `dir`: the
/// resolvers cache an answer only that long, so the pool is asked again and again during a run.
fn short_lived_inventory(dir: &std::path::Path) -> PathBuf {
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../services/pool/inventory.sample.toml");
    let text = std::fs::read_to_string(sample).unwrap();
    let short: Vec<String> =
        text.lines()
            .map(|line| {
                if line.trim_start().starts_with("ttl_seconds") {
                    "ttl_seconds = 1".to_owned()
                } else {
                    line.to_owned()
                }
            })
            .collect();
    let path = dir.join("inventory.toml");
    std::fs::write(&path, short.join("\n")).unwrap();
    path
}

/// Embedded proxy settings naming [`EMBEDDED_PROXY`] for every exchange and connection type.
pub(crate) fn embedded_settings() -> ProxySettings {
    let proxy = ProxyConfig { url: Some(SecretString::from(EMBEDDED_PROXY)), ..ProxyConfig::default() };
    ProxySettings {
        enabled: true,
        default: Some(ConnectionProxies { http: Some(proxy.clone()), websocket: Some(proxy) }),
        ..ProxySettings::default()
    }
}

/// In a child started by [`Pipeline`]: runs the service named in [`SERVICE_ENV`] until the
/// parent kills it or goes away, then exits the process. Returns at once in any other process
/// (the entry test then passes without doing anything).
pub(crate) fn run_service_if_asked() {
    let Some(service) = std::env::var(SERVICE_ENV).ok().filter(|name| !name.is_empty()) else { return };
    proxybus_tests::exit_when_parent_goes();
    if std::env::var_os("TEST_LOG").is_some() {
        proxybus_shared::telemetry::init_from_env(&proxybus_shared::config::EnvSource::from_process());
    }
    let url = std::env::var(NATS_URL_ENV).expect("the NATS URL");
    let pool_addr = std::env::var(POOL_ADDR_ENV).expect("the pool's address");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let shutdown = proxybus_shared::shutdown::signal();
    let result = runtime.block_on(async {
        match service.as_str() {
            "pool" => {
                let settings = proxybus_pool::PoolSettings {
                    listen: pool_addr.parse().unwrap(),
                    inventory: std::env::var(INVENTORY_ENV).expect("the inventory").into(),
                    watch_inventory: false,
                    auth: proxybus_pool::AuthSettings { tokens: vec![TOKEN.into()], ..Default::default() },
                    ..Default::default()
                };
                let config = proxybus_pool::PoolConfig { settings, nats: Some(NatsSettings::new(url)) };
                proxybus_pool::run(config, shutdown).await.map_err(|err| err.to_string())
            }
            "resolver" => {
                let proxy = ProxySettings {
                    external_service: ExternalProxyServiceConfig {
                        enabled: true,
                        endpoints: vec![format!("http://{pool_addr}")],
                        auth_method: AuthMethod::BearerToken,
                        auth_credentials: [("token".to_owned(), TOKEN.into())].into_iter().collect(),
                        timeout_seconds: 1,
                        ..Default::default()
                    },
                    ..embedded_settings()
                };
                let config = proxybus_resolver::ResolverConfig {
                    proxy,
                    resolver: proxybus_resolver::ResolverSettings::default(),
                    nats: NatsSettings::new(url),
                };
                proxybus_resolver::run(config, shutdown).await.map_err(|err| err.to_string())
            }
            "aggregator" => {
                let config = proxybus_aggregator::AggregatorConfig::for_url(url);
                proxybus_aggregator::run(config, shutdown).await.map_err(|err| err.to_string())
            }
            other => Err(format!("no such service: {other}")),
        }
    });
    if let Err(error) = result {
        eprintln!("{service}: {error}");
        std::process::exit(1);
    }
    std::process::exit(0);
}

/// A pipeline on a `nats-server` of its own, every service a child process.
pub(crate) struct Pipeline {
    /// The bus.
    pub(crate) server: NatsServer,
    /// The pool's HTTP address.
    pub(crate) pool_addr: String,
    /// The pool service.
    pub(crate) pool: ServiceProcess,
    /// The resolver replicas (one queue group).
    pub(crate) resolvers: Vec<ServiceProcess>,
    /// The aggregator.
    pub(crate) aggregator: ServiceProcess,
    /// Holds the pool's inventory file.
    _dir: tempfile::TempDir,
}

/// A free port on 127.0.0.1 (bound and released; the pool binds it again).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn_service(service: &str, name: &str, url: &str, pool_addr: &str, inventory: &std::path::Path) -> ServiceProcess {
    let exe = std::env::current_exe().expect("the test binary");
    let args = [ENTRY_TEST, "--exact", "--ignored", "--nocapture", "--test-threads=1"];
    let inventory = inventory.to_str().expect("a UTF-8 temporary path");
    let envs = [(SERVICE_ENV, service), (NATS_URL_ENV, url), (POOL_ADDR_ENV, pool_addr), (INVENTORY_ENV, inventory)];
    ServiceProcess::spawn(name, &exe, &args, envs).unwrap()
}

impl Pipeline {
    /// Starts the bus, the pool, `resolvers` resolver replicas and the aggregator, and waits
    /// until each serves.
    pub(crate) async fn start(resolvers: usize) -> Self {
        let server = NatsServer::start().await.unwrap();
        let url = server.client_url();
        let pool_addr = format!("127.0.0.1:{}", free_port());
        let dir = tempfile::tempdir().unwrap();
        let inventory = short_lived_inventory(dir.path());
        let spawn = |service: &str, name: &str| spawn_service(service, name, &url, &pool_addr, &inventory);
        let pool = spawn("pool", "pool");
        let resolvers = (0..resolvers).map(|n| spawn("resolver", &format!("resolver-{n}"))).collect();
        let aggregator = spawn("aggregator", "aggregator");
        let pipeline = Self { server, pool_addr, pool, resolvers, aggregator, _dir: dir };
        pipeline.wait_for_pool().await;
        pipeline.wait_for_resolvers(pipeline.resolvers.len()).await;
        pipeline.wait_for_aggregator().await;
        pipeline
    }

    /// Waits until the pool accepts connections.
    pub(crate) async fn wait_for_pool(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(&self.pool_addr).await.is_err() {
            assert!(Instant::now() < deadline, "the pool did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `count` resolvers answer `$SRV.PING`.
    pub(crate) async fn wait_for_resolvers(&self, count: usize) {
        let client = self.server.connect().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while resolvers_serving(&client).await < count {
            assert!(Instant::now() < deadline, "{count} resolvers did not start");
        }
    }

    /// Waits until the aggregator has made stream `PROXY_FEEDBACK` and its consumer.
    pub(crate) async fn wait_for_aggregator(&self) {
        let js = jetstream::new(self.server.connect().await.unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut stream) = js.get_stream(FEEDBACK_STREAM).await
                && stream.info().await.is_ok_and(|info| info.state.consumer_count > 0)
            {
                return;
            }
            assert!(Instant::now() < deadline, "the aggregator did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A JetStream context on a connection of the test's own.
    pub(crate) async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.server.connect().await.unwrap())
    }

    /// Feed number `n`: a client of its own (`soak-feed-{n}`) over the library's own connection,
    /// with [`embedded_settings`] and policy `fail`, so that every answer that is not an error
    /// names a proxy.
    pub(crate) async fn feed(&self, n: usize) -> ProxyClient {
        feed_client(&self.server.client_url(), n).await
    }

    /// Waits until the aggregator has folded `expected` events into `PROXY_HEALTH`, then a
    /// little longer, and returns the total it shows (more than `expected` is a double count).
    pub(crate) async fn settled_total(&self, expected: u64, within: Duration) -> u64 {
        let js = self.jetstream().await;
        let deadline = Instant::now() + within;
        while folded_total(&js).await < expected {
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A late double count would show here.
        tokio::time::sleep(Duration::from_secs(2)).await;
        folded_total(&js).await
    }
}

/// A feed's client on `url`; see [`Pipeline::feed`].
pub(crate) async fn feed_client(url: &str, n: usize) -> ProxyClient {
    let mut config = ClientConfig::new(NatsSettings::new(url), format!("soak-feed-{n}"));
    config.embedded = embedded_settings();
    config.fallback_policy = FallbackPolicy::Fail;
    ProxyClient::connect(config).await.unwrap()
}

/// Sum of `total` over every record in `PROXY_HEALTH` (0 while the bucket does not exist).
pub(crate) async fn folded_total(js: &jetstream::Context) -> u64 {
    let Ok(bucket) = js.get_key_value(HEALTH_BUCKET).await else { return 0 };
    proxybus_shared::kv::health_stats(&bucket).await.map(|all| all.values().map(|s| s.total).sum()).unwrap_or(0)
}

/// One request of a feed: when it was sent, where its answer came from, or why it failed.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// When `get_proxy` was called.
    pub(crate) sent: Instant,
    /// The answer's source, or the error.
    pub(crate) outcome: Result<ResponseSource, String>,
    /// Whether a resolver answered (the lease carries its request id; the client's own
    /// fallback answers carry none). The client's cache is never used: each lease is dropped
    /// after use, so a `cache` answer is the resolver's.
    pub(crate) by_resolver: bool,
}

/// What a feed did over a run.
#[derive(Debug, Default)]
pub(crate) struct FeedRun {
    /// Every request, in order.
    pub(crate) requests: Vec<Request>,
    /// Latencies of the requests.
    pub(crate) latencies: Latencies,
    /// Feedback events handed to the client library.
    pub(crate) reported: u64,
}

impl FeedRun {
    /// The failed requests.
    pub(crate) fn failures(&self) -> impl Iterator<Item = &Request> {
        self.requests.iter().filter(|r| r.outcome.is_err())
    }
}

/// Asks for a proxy (a fresh answer each time: the cached lease is dropped after use) and
/// reports one `connected` event about it, every `interval`, until `stop`.
pub(crate) async fn run_feed(
    client: ProxyClient,
    n: usize,
    interval: Duration,
    stop: CancellationToken,
) -> (ProxyClient, FeedRun) {
    let mut run = FeedRun::default();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut turn = n;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let exchange: ExchangeId = EXCHANGES[turn % EXCHANGES.len()].parse().unwrap();
        let connection_type = if turn.is_multiple_of(2) { ConnectionType::Websocket } else { ConnectionType::Http };
        turn += 1;
        let sent = Instant::now();
        let answer = client.get_proxy(&exchange, connection_type, None).await;
        run.latencies.record(sent.elapsed());
        match answer {
            Ok(lease) => {
                run.requests.push(Request { sent, outcome: Ok(lease.source), by_resolver: lease.request_id.is_some() });
                match lease.feedback(client.client_id(), FeedbackPhase::Connected, true) {
                    Some(mut event) => {
                        event.latency_ms = Some(20 + (turn % 30) as u64);
                        client.report(event);
                        run.reported += 1;
                    }
                    None => run.requests.last_mut().unwrap().outcome = Err("a direct answer, not a proxy".into()),
                }
                client.invalidate(&lease).await;
            }
            Err(err) => run.requests.push(Request { sent, outcome: Err(err.to_string()), by_resolver: false }),
        }
    }
    (client, run)
}

/// Counts of answers by who answered and its source over many requests: `resolver_service`,
/// `resolver_cache`, `resolver_embedded` (the resolver's own fallback), `client_embedded` (the
/// client's fallback), `failed`.
pub(crate) fn by_source<'a>(requests: impl IntoIterator<Item = &'a Request>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for request in requests {
        let key = match &request.outcome {
            Ok(source) if request.by_resolver => format!("resolver_{}", source.as_str()),
            Ok(source) => format!("client_{}", source.as_str()),
            Err(_) => "failed".to_owned(),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}
