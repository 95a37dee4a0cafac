//! `proxybus-aggregator`: folds the feedback feeds publish into stream
//! `PROXY_FEEDBACK` into per-proxy [`HealthStats`](proxybus_shared::HealthStats),
//! exactly once, stores them in KV bucket `PROXY_HEALTH`, publishes every change on
//! `proxy.v1.health.{region}` and pushes it to the proxy services.
//!
//! Nothing reported is lost or counted twice, across a crash of the aggregator, a
//! restart of the NATS server, or a replay: state and stream position are committed
//! together before any message is acked ([`store`]), and the fold is deterministic
//! ([`fold`]). See `docs/aggregator.md` for the health model and operations.
//!
//! # Layout
//! - [`service`]: [`run`], the live loop: durable pull consumer, batches, commit,
//!   ack, push-back; NATS micro-service `proxybus-aggregator`.
//! - [`fold`]: [`FeedbackFolder`], the deterministic health model.
//! - [`event_ids`]: exactly once by `event_id`: the ids folded within a horizon,
//!   persisted with each commit.
//! - [`policy`]: [`HealthPolicy`] (from `proxybus_shared::health`), thresholds and defaults.
//! - [`inventory`]: region sizes from the pools' inventories in `PROXY_INVENTORY`.
//! - [`sketch`]: latency percentiles (HDR histogram) stored with the state.
//! - [`record`]: the stored form of a proxy's state (HealthStats + `fold_state`).
//! - [`store`]: KV buckets, the checkpoint and the atomic commit of a batch.
//! - [`intake`]: decoding feedback and dead-lettering what cannot be folded.
//! - [`push`]: `proxy.v1.health.{region}` and the HTTP push-back to proxy services.
//! - [`replay`]: rebuilding health from the stream with an ordered consumer.
//! - [`stats`], [`metrics`]: counters, `$SRV.STATS` and Prometheus `/metrics`.
//! - [`config`]: `PROXYBUS_AGGREGATOR_*`, `CRYPTOFEED_PROXY_*` and `NATS_*`.
//! - `main.rs`: the `proxybus-aggregator` binary (`run`, `replay`).

pub mod config;
pub mod event_ids;
pub mod fold;
pub mod intake;
pub mod inventory;
pub mod metrics;
pub mod policy;
pub mod push;
pub mod record;
pub mod replay;
pub mod service;
pub mod sketch;
pub mod stats;
pub mod store;

pub use config::{AggregatorConfig, AggregatorSettings};
pub use fold::{FeedbackFolder, FoldOutcome, FoldState, ProxyHealth};
pub use policy::HealthPolicy;
pub use replay::{ReplayOptions, ReplayReport, ReplayStart, replay};
pub use service::{run, run_with_stats};
pub use stats::{AggregatorStats, StatsSnapshot};

/// Why the aggregator stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    /// NATS could not be reached.
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    /// State could not be loaded or stored.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The micro-service could not be registered.
    #[error("cannot register the micro-service: {0}")]
    Service(String),
    /// The push-back HTTP client could not be built.
    #[error("cannot build the push-back client: {0}")]
    PushClient(#[from] proxybus_shared::http::HttpClientError),
    /// The metrics listener could not start.
    #[error("cannot serve metrics: {0}")]
    Metrics(String),
    /// A replay failed.
    #[error("replay failed: {0}")]
    Replay(String),
}
