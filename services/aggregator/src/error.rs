//! [`AggregatorError`]: why the aggregator stopped or could not start.

use crate::store::StoreError;

/// Why the aggregator stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    /// NATS could not be reached.
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    /// State could not be loaded or stored.
    #[error(transparent)]
    Store(#[from] StoreError),
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
