//! `proxybus-pool`: the reference proxy service of proxybus, the upstream the
//! resolver asks over HTTP. It owns proxy inventories per region, picks a proxy
//! for each request with a per-pool strategy (default `p2c_ewma`), keeps clients
//! on their proxy (sticky sessions), falls back to the nearest region, and learns
//! from health statistics (HTTP push and `proxy.v1.health.>`), feedback and
//! optional active checks. When every proxy is ejected it answers the least-bad
//! one (`strategy: "panic"`) unless configured to fail.
//!
//! The selection core ([`Inventory`], [`Selector`]) is plain synchronous code
//! usable in-process without HTTP; [`router`] builds the axum API over it, and
//! [`run`] / [`PoolServer`] serve it.
//!
//! # Layout
//! - [`inventory`]: the TOML inventory format, its validation, and the compiled
//!   [`Inventory`] / [`Pool`] / [`Proxy`].
//! - [`strategy`]: [`Strategy`] (`round_robin`, `random`, `weighted`,
//!   `least_connections`, `p2c_ewma`) and the peak-EWMA latency estimate.
//! - [`selector`]: [`Selector`], the choice (sticky → region → fallback regions →
//!   panic), feedback and health folding, the inventory view.
//! - [`leases`]: leases per session (TTL, release on `disconnected`), sticky
//!   bindings and `session_key` sessions.
//! - [`sessions`]: rotation plans of `session_key` sessions (per exchange, with jitter).
//! - [`health`]: local outlier detection and per-exchange bars by the shared
//!   rules (`proxybus_shared::health`); `PROXY_HEALTH` and `proxy.v1.health.>` followed.
//! - [`budgets`]: rate budgets per (proxy, exchange): usage reports folded into
//!   `PROXY_BUDGETS` with compare-and-set, and the bucket followed for selection.
//! - [`publish`]: the inventory (ids and regions only) into KV bucket `PROXY_INVENTORY`.
//! - [`active_check`]: TCP connect and HTTP CONNECT checks.
//! - [`api`]: routes, JSON errors, timeouts, body limit; [`auth`]: tokens and allowlist.
//! - [`tls`]: rustls with optional or required client certificates.
//! - [`reload`]: SIGHUP and file-change reloads of the inventory.
//! - [`settings`]: the service's settings (`PROXYBUS_POOL_*`); [`metrics`]: metric names.
//! - `main.rs`: the `proxybus-pool` binary (arguments, tracing, signals).
//!
//! # Examples
//! ```no_run
//! # async fn demo() -> Result<(), proxybus_pool::PoolError> {
//! use proxybus_pool::{PoolServer, Settings};
//! let settings = Settings { inventory: "inventory.toml".into(), ..Settings::default() };
//! let server = PoolServer::bind(settings).await?;
//! println!("listening on {}", server.local_addr());
//! server.serve(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod active_check;
pub mod api;
pub mod auth;
pub mod budgets;
pub mod health;
pub mod inventory;
pub mod leases;
pub mod metrics;
pub mod publish;
pub mod reload;
pub mod selector;
pub mod sessions;
pub mod settings;
pub mod strategy;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use api::{ApiError, AppState, router};
pub use auth::Auth;
pub use inventory::{Inventory, InventoryError, Pool, Proxy, WhenAllEjected};
pub use reload::InventoryReloader;
pub use selector::{ProxyView, SelectError, Selection, Selector, SelectorOptions, SessionInfo};
pub use settings::Settings;
pub use strategy::Strategy;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long in-flight requests and background tasks get to finish on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The inventory file is unreadable or invalid.
    #[error("inventory: {0}")]
    Inventory(#[from] InventoryError),
    /// The settings are invalid.
    #[error("settings: {0}")]
    Settings(#[from] proxybus_shared::config::ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The TLS configuration is invalid.
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Serve(std::io::Error),
}

/// A bound, not yet serving, proxy-pool service.
#[derive(Debug)]
pub struct PoolServer {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    settings: Settings,
    state: AppState,
    reloader: Option<InventoryReloader>,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
}

impl PoolServer {
    /// Loads the inventory file of `settings` and binds the listen address.
    pub async fn bind(settings: Settings) -> Result<Self, PoolError> {
        let inventory = Inventory::load(&settings.inventory)?;
        tracing::info!(path = %settings.inventory.display(), proxies = inventory.len(), "inventory loaded");
        let selector = Arc::new(Selector::new(inventory, settings.selector_options()));
        let reloader = InventoryReloader::new(settings.inventory.clone(), selector.clone());
        let mut server = Self::bind_with_selector(settings, selector).await?;
        server.reloader = Some(reloader);
        Ok(server)
    }

    /// Binds the listen address over an in-memory selector (no inventory file,
    /// so no reloads): for tests and for running in-process.
    pub async fn bind_with_selector(settings: Settings, selector: Arc<Selector>) -> Result<Self, PoolError> {
        use proxybus_shared::config::Validate;
        let mut issues = proxybus_shared::config::Issues::default();
        settings.validate("", &mut issues);
        issues.into_result()?;
        let addr = settings.listen;
        let listener = std::net::TcpListener::bind(addr).map_err(|source| PoolError::Bind { addr, source })?;
        listener.set_nonblocking(true).map_err(|source| PoolError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| PoolError::Bind { addr, source })?;
        let tls = match &settings.tls {
            Some(tls_settings) => {
                Some(axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls::server_config(tls_settings)?)))
            }
            None => None,
        };
        let state = AppState::new(selector, Auth::from_settings(&settings))
            .with_max_body_bytes(settings.max_body_bytes)
            .with_request_timeout(settings.request_timeout());
        Ok(Self { listener, local_addr, settings, state, reloader: None, tls })
    }

    /// The bound address (the real port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The selection core.
    pub fn selector(&self) -> Arc<Selector> {
        self.state.selector.clone()
    }

    /// The reloader of the inventory file, when there is one.
    pub fn reloader(&self) -> Option<&InventoryReloader> {
        self.reloader.as_ref()
    }

    /// Renders `/metrics` with `handle` instead of the process-wide recorder.
    pub fn with_metrics(mut self, handle: Option<metrics_exporter_prometheus::PrometheusHandle>) -> Self {
        self.state = self.state.with_metrics(handle);
        self
    }

    /// Serves the API, the health listener, reloads and active checks until
    /// `shutdown` resolves; then stops accepting, lets requests in flight finish
    /// (at most [`SHUTDOWN_GRACE`]) and stops the background tasks.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), PoolError> {
        let Self { listener, local_addr, settings, state, reloader, tls } = self;
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let selector = state.selector.clone();

        if let Some(reloader) = reloader {
            tasks.spawn(reloader.run(settings.watch_inventory, cancel.clone()));
        }
        let mut nats_client = None;
        if let Some(nats) = &settings.nats {
            match nats.connect_retrying().await {
                Ok(client) => {
                    let shutdown = cancel.clone().cancelled_owned();
                    let listener_client = client.clone();
                    let stop_waiting = cancel.clone();
                    let listener_selector = selector.clone();
                    tasks.spawn(async move {
                        // The pool serves HTTP without the bus; an old server only costs it health updates.
                        tokio::select! {
                            () = stop_waiting.cancelled() => return,
                            supported = proxybus_shared::nats::ensure_supported_once_connected(&listener_client) => {
                                if let Err(err) = supported {
                                    tracing::error!(error = %err, "not listening for health on NATS");
                                    return;
                                }
                            }
                        }
                        if let Err(err) = health::listen_health(listener_client, listener_selector, shutdown).await {
                            tracing::error!(error = %err, "health listener stopped");
                        }
                    });
                    if settings.budgets.enabled {
                        tasks.spawn(budgets::keep_budgets(
                            client.clone(),
                            settings.budgets.clone(),
                            cancel.clone().cancelled_owned(),
                        ));
                        tasks.spawn(budgets::follow_budgets(
                            client.clone(),
                            selector.clone(),
                            cancel.clone().cancelled_owned(),
                        ));
                    }
                    tasks.spawn(publish::run(
                        client.clone(),
                        selector.clone(),
                        settings.health.inventory_id.clone(),
                        cancel.clone(),
                    ));
                    nats_client = Some(client);
                }
                Err(err) => tracing::error!(error = %err, "cannot connect to NATS; health comes from HTTP only"),
            }
        }

        if settings.active_checks.enabled {
            // Probe results go into PROXY_FEEDBACK too when the pool is on the bus.
            let publisher = nats_client
                .clone()
                .map(|client| active_check::ProbePublisher::new(client, &settings.health.inventory_id));
            tasks.spawn(active_check::run(selector.clone(), settings.active_checks.clone(), publisher, cancel.clone()));
        }

        let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
        let handle = axum_server::Handle::new();
        let watcher = {
            let handle = handle.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                shutdown.await;
                tracing::info!("shutting down: no new connections, finishing requests in flight");
                handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
                cancel.cancel();
            })
        };
        tracing::info!(%local_addr, tls = settings.tls.is_some(), "proxy-pool API listening");
        let served = match tls {
            Some(config) => axum_server::from_tcp_rustls(listener, config).handle(handle).serve(app).await,
            None => axum_server::from_tcp(listener).handle(handle).serve(app).await,
        };
        cancel.cancel();
        watcher.abort();
        tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait()).await.is_err() {
            tracing::warn!("background tasks did not stop in time");
        }
        if let Some(client) = nats_client {
            let _ = client.drain().await;
        }
        served.map_err(PoolError::Serve)
    }
}

/// Loads the inventory, binds and serves until `shutdown` resolves.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), PoolError> {
    PoolServer::bind(settings).await?.serve(shutdown).await
}
