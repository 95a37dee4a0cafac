//! Inventories, requests, health statistics and a running service for the tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use proxybus_pool::{Inventory, PoolConfig, PoolError, PoolServer, PoolSettings, Selector, SelectorOptions};
use proxybus_shared::{
    ConnectionType, ExchangeHealth, ExchangeState, HealthState, HealthStats, ProxyId, ProxyRequest, proxy_id,
    redact_url,
};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The token every test service accepts.
pub(crate) const TOKEN: &str = "test-token-0123456789";

/// `http://user:secret-{n}@203.0.113.{n}:3128`: a proxy URL with a password to look for in leaks.
pub(crate) fn url(n: u8) -> String {
    format!("http://user{n}:secret-pw-{n}@203.0.113.{n}:3128")
}

/// The id of [`url`]`(n)`.
pub(crate) fn id(n: u8) -> ProxyId {
    proxy_id(&url(n))
}

/// `[[regions.{region}.proxies]]` entries for proxies `ns`.
pub(crate) fn proxies(region: &str, ns: &[u8]) -> String {
    ns.iter().map(|n| format!("[[regions.{region}.proxies]]\nurl = \"{}\"\n", url(*n))).collect()
}

/// A one-region inventory (`us-east`) of proxies `ns` with `strategy`, not sticky.
pub(crate) fn one_region(strategy: &str, ns: &[u8]) -> String {
    format!(
        "default_region = \"us-east\"\n[regions.us-east]\nstrategy = \"{strategy}\"\nsticky = false\n{}",
        proxies("us-east", ns)
    )
}

/// A selector over inventory text, with a fixed random seed.
pub(crate) fn selector(toml: &str) -> Selector {
    let options = SelectorOptions { seed: Some(42), ..SelectorOptions::default() };
    Selector::new(Inventory::from_toml_str(toml).expect("valid test inventory"), options)
}

/// A websocket request of `client` for `exchange`.
pub(crate) fn request(exchange: &str, client: &str) -> ProxyRequest {
    ProxyRequest::new(exchange.parse().unwrap(), ConnectionType::Websocket, client)
}

/// Health statistics of proxy `n` in `state`, ejected without an end when ejected.
pub(crate) fn stats(n: u8, state: HealthState) -> HealthStats {
    let mut stats = HealthStats::new(id(n), redact_url(&url(n)), Some("us-east".parse().unwrap()), Utc::now());
    stats.state = state;
    if state == HealthState::Ejected {
        stats.ejections = 1;
    }
    stats
}

/// Health statistics of proxy `n` ejected until `minutes` from now.
pub(crate) fn ejected_for(n: u8, minutes: i64) -> HealthStats {
    let mut stats = stats(n, HealthState::Ejected);
    stats.ejected_until = Some(Utc::now() + chrono::Duration::minutes(minutes));
    stats
}

/// Health statistics of proxy `n` banned for `exchange` for an hour (a 451).
pub(crate) fn banned_for(n: u8, exchange: &str) -> HealthStats {
    let mut stats = stats(n, HealthState::Healthy);
    stats.exchanges.insert(
        exchange.parse().unwrap(),
        ExchangeHealth {
            failures: 1,
            state: ExchangeState::Banned,
            banned_until: Some(Utc::now() + chrono::Duration::hours(1)),
            last_error_kind: Some(proxybus_shared::ErrorKind::Http451),
            ..ExchangeHealth::default()
        },
    );
    stats
}

/// A feedback event about proxy `n`.
pub(crate) fn feedback(
    n: u8,
    client: &str,
    exchange: &str,
    phase: &str,
    success: bool,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut event = serde_json::json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "proxy_id": id(n).to_string(),
        "proxy_url": redact_url(&url(n)),
        "exchange_id": exchange,
        "connection_type": "websocket",
        "phase": phase,
        "success": success,
        "timestamp": Utc::now().to_rfc3339(),
        "client_id": client,
    });
    if let (Some(event), serde_json::Value::Object(extra)) = (event.as_object_mut(), extra) {
        event.extend(extra);
    }
    event
}

/// A running service on 127.0.0.1 with its inventory in a temporary file.
pub(crate) struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
    /// The bound address.
    pub(crate) addr: SocketAddr,
    /// An HTTP client sending [`TOKEN`].
    pub(crate) client: reqwest::Client,
    /// The service's selector.
    pub(crate) selector: Arc<Selector>,
    /// The inventory file.
    pub(crate) inventory_path: PathBuf,
    /// The reloader of that file.
    pub(crate) reloader: proxybus_pool::InventoryReloader,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), PoolError>>>,
    _dir: TempDir,
}

/// Default test configuration: 127.0.0.1:0, [`TOKEN`], no NATS, no file watching.
pub(crate) fn test_config() -> PoolConfig {
    let mut settings =
        PoolSettings { listen: "127.0.0.1:0".parse().unwrap(), watch_inventory: false, ..PoolSettings::default() };
    settings.auth.tokens = vec![TOKEN.to_owned().into()];
    settings.health.listen_nats = false;
    PoolConfig { settings, nats: None }
}

/// Starts the service over `inventory` with [`test_config`] changed by `adjust`.
pub(crate) async fn spawn_app(inventory: &str, adjust: impl FnOnce(&mut PoolConfig)) -> TestApp {
    proxybus_shared::telemetry::init_for_tests();
    proxybus_shared::http::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let inventory_path = dir.path().join("inventory.toml");
    std::fs::write(&inventory_path, inventory).unwrap();
    let mut config = test_config();
    config.settings.inventory = inventory_path.clone();
    adjust(&mut config);
    let server = PoolServer::bind(config).await.expect("service binds");
    let addr = server.local_addr();
    let selector = server.selector();
    let reloader = server.reloader().expect("loaded from a file").clone();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async move {
        let _ = rx.await;
    }));
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {TOKEN}").parse().unwrap());
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .default_headers(headers)
        .build()
        .unwrap();
    TestApp {
        base: format!("http://{addr}"),
        addr,
        client,
        selector,
        inventory_path,
        reloader,
        shutdown: Some(tx),
        task: Some(task),
        _dir: dir,
    }
}

impl TestApp {
    /// POSTs JSON to `path`.
    pub(crate) async fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client.post(format!("{}{path}", self.base)).json(body).send().await.expect("request sent")
    }

    /// Asks for a proxy over HTTP; panics unless 200.
    pub(crate) async fn ask(&self, exchange: &str, client: &str) -> proxybus_shared::ProxyResponse {
        let response =
            self.post("/api/v1/proxy/request", &serde_json::to_value(request(exchange, client)).unwrap()).await;
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        response.json().await.unwrap()
    }

    /// Stops the service and waits for it to finish.
    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("service stops within the grace time")
                .unwrap()
                .expect("service stops cleanly");
        }
    }
}

/// Polls `condition` every 50 ms for at most `limit`.
pub(crate) async fn eventually(limit: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
