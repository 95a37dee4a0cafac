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
//! - `server.rs`: [`run`], [`PoolServer`] (bind, then serve), start-up and shutdown, [`PoolError`].
//! - `settings.rs`: [`PoolConfig`] (what `run` takes) and [`PoolSettings`] (`PROXYBUS_POOL_*`).
//! - `inventory.rs`: the TOML inventory format, its validation, and the compiled
//!   [`Inventory`] / [`Pool`] / [`Proxy`].
//! - `strategy.rs`: [`Strategy`] (`round_robin`, `random`, `weighted`,
//!   `least_connections`, `p2c_ewma`) and the peak-EWMA latency estimate.
//! - `selector.rs`: [`Selector`], the choice (sticky → region → fallback regions →
//!   panic), feedback and health folding, the inventory view.
//! - `leases.rs`: leases per session (TTL, release on `disconnected`), sticky
//!   bindings and `session_key` sessions.
//! - `sessions.rs`: rotation plans of `session_key` sessions (per exchange, with jitter).
//! - `health.rs`: local outlier detection and per-exchange bars by the shared
//!   rules (`proxybus_shared::health`); `PROXY_HEALTH` and `proxy.v1.health.>` followed.
//! - `budgets.rs`: rate budgets per (proxy, exchange): usage reports folded into
//!   `PROXY_BUDGETS` with compare-and-set, and the bucket followed for selection.
//! - `publish.rs`: the inventory (ids and regions only) into KV bucket `PROXY_INVENTORY`.
//! - [`active_check`]: TCP connect and HTTP CONNECT checks.
//! - `api.rs`: routes, JSON errors, timeouts, body limit; `auth.rs`: tokens and allowlist.
//! - `request_body.rs`: what a handler left unread of an HTTP/1 body is read before the
//!   answer, so that an early answer (413, 401 …) does not break the kept-alive connection.
//! - `tls.rs`: rustls with optional or required client certificates.
//! - `reload.rs`: SIGHUP and file-change reloads of the inventory.
//! - `metrics.rs`: metric names and the gauges set at scrape time.
//! - `main.rs`: the `proxybus-pool` binary (arguments, tracing, signals).
//!
//! A request's path: `api.rs` (auth, JSON) → `selector.rs` (sticky → region →
//! fallback regions → panic, over `strategy.rs`, `health.rs`, `leases.rs`,
//! `sessions.rs`) → `api.rs` (the `ProxyResponse`).
//!
//! # Examples
//! ```no_run
//! # async fn demo() -> Result<(), proxybus_pool::PoolError> {
//! use proxybus_pool::{PoolConfig, PoolServer, PoolSettings};
//! let settings = PoolSettings { inventory: "inventory.toml".into(), ..PoolSettings::default() };
//! let server = PoolServer::bind(PoolConfig { settings, nats: None }).await?;
//! println!("listening on {}", server.local_addr());
//! server.serve(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

#![warn(unreachable_pub)]

pub mod active_check;
mod api;
mod auth;
mod budgets;
mod health;
mod inventory;
mod leases;
mod metrics;
mod publish;
mod reload;
mod request_body;
mod selector;
mod server;
mod sessions;
mod settings;
mod strategy;
mod tls;

pub use api::{ApiError, AppState, router};
pub use auth::Auth;
pub use health::{HealthOptions, LocalHealth};
pub use inventory::{Inventory, InventoryError, Pool, Proxy, WhenAllEjected};
pub use metrics::HealthSource;
pub use reload::InventoryReloader;
pub use selector::{ProxyView, SelectError, Selection, Selector, SelectorOptions, SessionInfo};
pub use server::{PoolError, PoolServer, SHUTDOWN_GRACE, run};
pub use sessions::{RotationSettings, SessionSettings};
pub use settings::{
    ActiveCheckSettings, AuthSettings, ClientAuth, HealthSettings, PoolConfig, PoolSettings, TlsSettings,
};
pub use strategy::Strategy;
pub use tls::TlsError;
