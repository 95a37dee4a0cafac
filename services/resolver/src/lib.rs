//! `proxybus-resolver`: the service every feed asks for a proxy.
//!
//! It answers `proxy.v1.request.{exchange}.{connection_type}` (NATS micro-service
//! `proxybus-resolver`, queue group `proxybus-resolver`, so any number of
//! processes share the load) from a per-client cache, from upstream proxy
//! services over HTTP behind circuit breakers with hedging, and when those fail
//! from the fallback chain: stale cache → embedded `ProxySettings` → direct
//! connection, or an error reply when the fallback policy says so. It follows
//! `proxy.v1.health.>` and never serves an ejected or banned proxy from cache
//! or embedded settings.
//!
//! # Layout
//! - `server.rs`: [`run`]: start-up (NATS, upstream, health, metrics, registration) and shutdown.
//! - `requests.rs`: the serving loop; one request in, one reply out: validation, replies, error replies.
//! - `resolver.rs`: [`Resolver`], the decision: cache, single-flight upstream, fallback chain.
//! - `cache.rs`: the bounded answer cache keyed per client, and the single-flight gate.
//! - `scatter.rs`: `region: "any"` sent to every region's resolvers, the best answer taken.
//! - `upstream.rs`: [`Upstream`], [`EndpointSet`]: endpoints, their breakers, hedged HTTP calls, answer validation.
//! - `discovery.rs`: static endpoints or DNS SRV discovery ([`SrvDiscovery`]), and `/healthz` probes.
//! - `health.rs`: the health book fed by `proxy.v1.health.>` and `PROXY_HEALTH`.
//! - `metrics.rs`: [`ResolverMetrics`], the seed's `ProxyServiceMetrics`, and the Prometheus series.
//! - `settings.rs`: [`ResolverSettings`] (`PROXYBUS_RESOLVER_*`) and [`ResolverConfig`].
//! - `main.rs`: arguments, configuration files, telemetry and signals; then [`run`].
//!
//! A request's path: `server.rs` (the endpoints it registered) → `requests.rs` (read,
//! validated) → `resolver.rs` (`cache.rs`, else `upstream.rs` or `scatter.rs`, else the
//! fallback chain, each checked against `health.rs`) → `requests.rs` (reply) → `metrics.rs`.

#![warn(unreachable_pub)]

mod cache;
mod discovery;
mod health;
mod metrics;
mod replies;
mod requests;
mod resolver;
mod scatter;
mod server;
mod settings;
mod upstream;

pub use crate::discovery::SrvDiscovery;
pub use crate::metrics::{ProxyServiceMetrics, ResolverMetrics};
pub use crate::resolver::{ResolveError, Resolver};
pub use crate::server::{ResolverError, run, run_with_client};
pub use crate::settings::{ResolverConfig, ResolverSettings, WarmUp};
pub use crate::upstream::{EndpointSet, Upstream};
