//! The health model's thresholds and durations: [`HealthPolicy`] lives in
//! `proxybus_shared::health`, the one place the rules are kept, so that the pool
//! service and the aggregator judge alike; it is re-exported here for callers of
//! this crate. Defaults and sources: `docs/health.md`.

pub use proxybus_shared::health::HealthPolicy;
