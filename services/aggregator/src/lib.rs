//! `proxybus-aggregator`: folds the feedback feeds publish into stream
//! `PROXY_FEEDBACK` into per-proxy [`HealthStats`](proxybus_shared::HealthStats),
//! exactly once, stores them in KV bucket `PROXY_HEALTH`, publishes every change on
//! `proxy.v1.health.{region}` and pushes it to the proxy services.
//!
//! Nothing reported is lost or counted twice, across a crash of the aggregator, a
//! restart of the NATS server, or a replay: state and stream position are committed
//! together before any message is acked (`store.rs`), and the fold is deterministic
//! (`fold.rs`). Any number of aggregators may run on one health bucket: the holder
//! of the leadership lease folds, the others are standbys that take over when it dies
//! (`lease.rs`), and a commit by one that lost the lease is fenced (`store.rs`). See
//! `docs/aggregator.md` for the health model, fail-over and operations.
//!
//! # Layout
//! - `server.rs`: [`run`] / [`run_with_stats`]: start-up (NATS, stream and buckets,
//!   checkpoint, micro-service `proxybus-aggregator`, push-back) and shutdown.
//! - `lease.rs`: the leadership lease in `PROXY_AGGREGATOR` (`leader.{health bucket}`):
//!   of several aggregators only its holder folds, the others are standbys.
//! - `live.rs`: the live loop: standby until the lease is won, state from the
//!   checkpoint, durable pull consumer, batches, commit, ack, push-back; steps down
//!   when the lease is lost or a commit is fenced.
//! - `fold.rs`: [`FeedbackFolder`], the deterministic health model.
//! - `event_ids.rs`: exactly once by `event_id`: the ids folded within a horizon,
//!   persisted with each commit.
//! - `policy.rs`: [`HealthPolicy`] (from `proxybus_shared::health`), thresholds and defaults.
//! - `inventory.rs`: region sizes from the pools' inventories in `PROXY_INVENTORY`.
//! - `sketch.rs`: latency percentiles (HDR histogram) stored with the state.
//! - [`record`]: the stored form of a proxy's state (HealthStats + `fold_state`).
//! - `store.rs`: [`HealthStore`], KV buckets, the checkpoint and the atomic commit of a
//!   batch, fenced by compare-and-set on the checkpoint's revision.
//! - `intake.rs`: decoding feedback and dead-lettering what cannot be folded.
//! - `push.rs`: `proxy.v1.health.{region}` and the HTTP push-back to proxy services.
//! - [`replay`](mod@replay): rebuilding health from the stream with an ordered consumer
//!   (`proxybus-aggregator replay`, `--what-if`).
//! - `stats.rs`, `metrics.rs`: [`AggregatorStats`], `$SRV.STATS` and Prometheus series.
//! - `config.rs`: [`AggregatorConfig`], [`AggregatorSettings`] (`PROXYBUS_AGGREGATOR_*`,
//!   `CRYPTOFEED_PROXY_*` and `NATS_*`).
//! - `error.rs`: [`AggregatorError`].
//! - `main.rs`: the `proxybus-aggregator` binary (`run`, `replay`).
//!
//! An event's path: `live.rs` (fetch) → `intake.rs` (decode, or dead-letter) →
//! `fold.rs` (+ `event_ids.rs`) → `store.rs` (commit, then ack) → `push.rs`.

#![warn(unreachable_pub)]

mod config;
mod error;
mod event_ids;
mod fold;
mod intake;
mod inventory;
mod lease;
mod live;
mod metrics;
mod policy;
mod push;
pub mod record;
pub mod replay;
mod server;
mod sketch;
mod stats;
mod store;

pub use config::{AggregatorConfig, AggregatorSettings, PushSettings};
pub use error::AggregatorError;
pub use fold::{FeedbackFolder, FoldOutcome, FoldState, ProxyHealth};
pub use policy::HealthPolicy;
pub use replay::{ReplayOptions, ReplayReport, ReplayStart, replay};
pub use server::{run, run_with_stats};
pub use stats::{AggregatorStats, Role, StatsSnapshot};
pub use store::{HealthStore, LoadedState, StoreError, read_bucket};
