//! What a Rust feed links to use proxybus: the seed's `ProxyServiceClient` and
//! `ProxyInjector`, speaking NATS.
//!
//! ```no_run
//! # async fn demo() -> Result<(), proxybus_client::ClientError> {
//! use proxybus_client::{ClientConfig, ProxyClient};
//! use proxybus_shared::{ConnectionType, nats::NatsSettings};
//!
//! let client = ProxyClient::connect(ClientConfig::new(NatsSettings::default(), "cryptofeed-host-1")).await?;
//! let binance = "binance".parse().unwrap();
//! // A websocket through the leased proxy; connect_start / connected / failed are reported.
//! let ws = client.connect_websocket("wss://stream.binance.com:9443/ws/btcusdt@trade", &binance).await?;
//! // Or a reqwest client for REST calls, and a report of each response.
//! let (http, lease) = client.http_client(&binance).await?;
//! // Or one REST request over the client's own tunnel (every scheme, SOCKS4 user ids too).
//! let request = http::Request::get("https://api.binance.com/api/v3/time").body(bytes::Bytes::new()).unwrap();
//! let (response, _lease) = client.send_http(&binance, request).await?;
//! # let _ = (ws, http, lease, response);
//! # Ok(())
//! # }
//! ```
//!
//! A feed keeps running when proxybus is down: answers are cached for their TTL,
//! a circuit breaker guards the resolver, and when the bus is unreachable or
//! silent the embedded `ProxySettings` (then a direct connection, per policy)
//! take over. Feedback never blocks the caller: it is queued, published to
//! JetStream with `Nats-Msg-Id` and awaited acks, retried across reconnects;
//! when the queue is full the oldest events are dropped and counted.
//!
//! # Layout
//! - `config.rs`: [`ClientConfig`], from code or the environment.
//! - `lease.rs`: [`ProxyLease`], what `get_proxy` hands out, and feedback built from it.
//! - `client.rs`: [`ProxyClient`], what it holds and how it is made; [`ClientError`].
//! - `leasing.rs`: `get_proxy`: the cache, the breaker on the resolver, the request over
//!   NATS and the fallback chain; [`LeaseOptions`].
//! - `connecting.rs`: `connect_websocket`, `send_http`, `http_client`, `report_response`
//!   and the other reports of how a connection went, retries through another proxy.
//! - `reporter.rs`: the bounded feedback queue and its JetStream publisher.
//! - `tunnel.rs`: streams through proxies of every scheme (HTTP CONNECT, over TLS
//!   for `https`; SOCKS4/4a; SOCKS5/5h), and classification of failures into `error_kind`.
//!
//! A lease's path: `leasing.rs` (cache, resolver over NATS, fallbacks) → `connecting.rs`
//! (through `tunnel.rs`, with its outcome as a `lease.rs` feedback event) → `reporter.rs`
//! (JetStream).

mod client;
mod config;
mod connecting;
mod lease;
mod leasing;
mod reporter;
pub mod tunnel;

pub use client::{ClientError, ProxyClient};
pub use config::{ClientConfig, TLS_CA_FILE_ENV, read_pem_certificates, read_pem_certificates_from};
pub use connecting::{ProxiedWebSocket, http_error_kind};
pub use lease::ProxyLease;
pub use leasing::LeaseOptions;
pub use reporter::FeedbackStats;
