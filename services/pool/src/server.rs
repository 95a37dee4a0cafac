//! Start-up and shutdown: [`run`] and the [`PoolServer`] it binds then serves.
//!
//! Start-up loads the inventory, validates the settings, binds the listen address
//! (TLS when configured), then starts the background tasks — inventory reloads,
//! the NATS parts (health listener, rate budgets, published inventory) and active
//! checks — and serves the API. Shutdown stops accepting, lets requests in flight
//! finish (at most [`SHUTDOWN_GRACE`]), stops the background tasks and drains NATS.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proxybus_shared::config::{Issues, Validate};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{AppState, router};
use crate::auth::Auth;
use crate::inventory::{Inventory, InventoryError};
use crate::reload::InventoryReloader;
use crate::selector::Selector;
use crate::settings::{PoolConfig, PoolSettings};
use crate::{active_check, budgets, health, publish, tls};

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

/// Loads the inventory, binds and serves until `shutdown` resolves.
///
/// # Errors
/// [`PoolError`]: an invalid inventory or setting, an address that cannot be bound,
/// unusable TLS files, or the HTTP server failing.
pub async fn run(config: PoolConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), PoolError> {
    PoolServer::bind(config).await?.serve(shutdown).await
}

/// A bound, not yet serving, proxy-pool service: tests and `proxybus up` bind it to
/// learn the port (and hold the selector) before serving.
#[derive(Debug)]
pub struct PoolServer {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    config: PoolConfig,
    state: AppState,
    reloader: Option<InventoryReloader>,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
}

impl PoolServer {
    /// Loads the inventory file of `config.settings` and binds the listen address.
    ///
    /// # Errors
    /// As [`run`], before serving.
    pub async fn bind(config: PoolConfig) -> Result<Self, PoolError> {
        let path = config.settings.inventory.clone();
        let inventory = Inventory::load(&path)?;
        tracing::info!(path = %path.display(), proxies = inventory.len(), "inventory loaded");
        let selector = Arc::new(Selector::new(inventory, config.settings.selector_options()));
        let reloader = InventoryReloader::new(path, selector.clone());
        let mut server = Self::bind_with_selector(config, selector).await?;
        server.reloader = Some(reloader);
        Ok(server)
    }

    /// Binds the listen address over an in-memory selector (no inventory file,
    /// so no reloads): for tests and for running in-process.
    ///
    /// # Errors
    /// Invalid settings, an address that cannot be bound, unusable TLS files.
    pub async fn bind_with_selector(config: PoolConfig, selector: Arc<Selector>) -> Result<Self, PoolError> {
        let settings = &config.settings;
        let mut issues = Issues::default();
        settings.validate("", &mut issues);
        issues.into_result()?;
        let (listener, local_addr) = bind_listener(settings.listen)?;
        let tls = match &settings.tls {
            Some(tls_settings) => {
                Some(axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls::server_config(tls_settings)?)))
            }
            None => None,
        };
        let state = AppState::new(selector, Auth::from_settings(settings))
            .with_max_body_bytes(settings.max_body_bytes)
            .with_request_timeout(settings.request_timeout());
        Ok(Self { listener, local_addr, config, state, reloader: None, tls })
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

    /// Serves the API, the health listener, reloads and active checks until
    /// `shutdown` resolves; then stops accepting, lets requests in flight finish
    /// (at most [`SHUTDOWN_GRACE`]) and stops the background tasks.
    ///
    /// # Errors
    /// [`PoolError::Serve`] when the HTTP server fails.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), PoolError> {
        let Self { listener, local_addr, config, state, reloader, tls } = self;
        let PoolConfig { settings, nats } = config;
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let selector = state.selector.clone();

        if let Some(reloader) = reloader {
            tasks.spawn(reloader.run(settings.watch_inventory, cancel.clone()));
        }
        let nats_client = match &nats {
            Some(nats) => start_nats_tasks(nats, &settings, &selector, &tasks, &cancel).await,
            None => None,
        };
        start_active_checks(&settings, &selector, nats_client.clone(), &tasks, &cancel);

        let served = serve_http(listener, local_addr, tls, state, shutdown, &cancel).await;
        stop_background(tasks, cancel, nats_client).await;
        served.map_err(PoolError::Serve)
    }
}

/// Binds `addr` as a non-blocking listener; returns it with its real address.
fn bind_listener(addr: SocketAddr) -> Result<(std::net::TcpListener, SocketAddr), PoolError> {
    let bind_error = |source| PoolError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local_addr))
}

/// Connects to NATS and starts what needs it: the health listener (once the server
/// is known to be supported), rate budgets when enabled, and the published inventory.
/// The pool serves HTTP without the bus: a failed connection is logged, `None` returned.
async fn start_nats_tasks(
    nats: &proxybus_shared::nats::NatsSettings,
    settings: &PoolSettings,
    selector: &Arc<Selector>,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> Option<async_nats::Client> {
    let client = match nats.connect_retrying().await {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "cannot connect to NATS; health comes from HTTP only");
            return None;
        }
    };
    tasks.spawn(listen_health_when_supported(client.clone(), selector.clone(), cancel.clone()));
    if settings.budgets.enabled {
        tasks.spawn(budgets::keep_budgets(client.clone(), settings.budgets.clone(), cancel.clone().cancelled_owned()));
        tasks.spawn(budgets::follow_budgets(client.clone(), selector.clone(), cancel.clone().cancelled_owned()));
    }
    tasks.spawn(publish::run(client.clone(), selector.clone(), settings.health.inventory_id.clone(), cancel.clone()));
    Some(client)
}

/// Follows `proxy.v1.health.>` once the server is known to be supported; an old
/// server only costs the pool its health updates.
async fn listen_health_when_supported(client: async_nats::Client, selector: Arc<Selector>, cancel: CancellationToken) {
    tokio::select! {
        () = cancel.cancelled() => return,
        supported = proxybus_shared::nats::ensure_supported_once_connected(&client) => {
            if let Err(err) = supported {
                tracing::error!(error = %err, "not listening for health on NATS");
                return;
            }
        }
    }
    if let Err(err) = health::listen_health(client, selector, cancel.cancelled_owned()).await {
        tracing::error!(error = %err, "health listener stopped");
    }
}

/// Starts the active checks when enabled; their results go into `PROXY_FEEDBACK`
/// too when the pool is on the bus.
fn start_active_checks(
    settings: &PoolSettings,
    selector: &Arc<Selector>,
    nats_client: Option<async_nats::Client>,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) {
    if !settings.active_checks.enabled {
        return;
    }
    let publisher = nats_client.map(|client| active_check::ProbePublisher::new(client, &settings.health.inventory_id));
    tasks.spawn(active_check::run(selector.clone(), settings.active_checks.clone(), publisher, cancel.clone()));
}

/// Serves the API on `listener` until `shutdown` resolves, then shuts down gracefully
/// (no new connections, requests in flight get [`SHUTDOWN_GRACE`]) and cancels `cancel`.
async fn serve_http(
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    cancel: &CancellationToken,
) -> std::io::Result<()> {
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
    tracing::info!(%local_addr, tls = tls.is_some(), "proxy-pool API listening");
    let served = match tls {
        Some(config) => axum_server::from_tcp_rustls(listener, config).handle(handle).serve(app).await,
        None => axum_server::from_tcp(listener).handle(handle).serve(app).await,
    };
    cancel.cancel();
    watcher.abort();
    served
}

/// Stops the background tasks (at most [`SHUTDOWN_GRACE`]) and drains NATS.
async fn stop_background(tasks: TaskTracker, cancel: CancellationToken, nats_client: Option<async_nats::Client>) {
    cancel.cancel();
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait()).await.is_err() {
        tracing::warn!("background tasks did not stop in time");
    }
    if let Some(client) = nats_client {
        let _ = client.drain().await;
    }
}
