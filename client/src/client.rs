//! [`ProxyClient`]: what it holds (the NATS connection, the lease cache, the
//! breaker on the resolver, the embedded settings, the feedback queue, the
//! tunnels' TLS), how it is made, and the feedback queue's handles. Leasing is
//! in `leasing.rs`, connecting through a lease in `connecting.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use moka::future::Cache;
use proxybus_shared::breaker::CircuitBreaker;
use proxybus_shared::embedded::EmbeddedSelector;
use proxybus_shared::{Codec, ConnectionType, ErrorKind, ErrorReply, ExchangeId, ProxyFeedback, ProxyId, subject};

use crate::config::ClientConfig;
use crate::lease::ProxyLease;
use crate::leasing::{CacheKey, LeaseExpiry};
use crate::reporter::{FeedbackStats, Reporter};
use crate::tunnel::{ConnectError, TunnelTls};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No proxy could be had and the policy forbids a direct connection.
    #[error("no proxy for {exchange} {connection_type}: {reason}")]
    Unavailable {
        /// The exchange.
        exchange: ExchangeId,
        /// The connection type.
        connection_type: ConnectionType,
        /// Why.
        reason: String,
    },
    /// The resolver answered with an error reply.
    #[error("resolver refused: {} ({})", .0.message, .0.error)]
    Resolver(ErrorReply),
    /// Connecting through the proxy failed (already reported as feedback).
    #[error("connection through proxy failed: {0}")]
    Connect(#[from] ConnectError),
    /// The target URL is not usable.
    #[error("invalid target URL: {0}")]
    InvalidUrl(String),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Http(String),
}

/// What every clone of a [`ProxyClient`] shares.
pub(crate) struct Inner {
    pub(crate) config: ClientConfig,
    pub(crate) nats: async_nats::Client,
    pub(crate) codec: Codec,
    pub(crate) cache: Cache<CacheKey, ProxyLease>,
    pub(crate) breaker: CircuitBreaker,
    pub(crate) embedded: EmbeddedSelector,
    pub(crate) reporter: Reporter,
    pub(crate) tls: Result<TunnelTls, String>,
    /// Proxies whose IP is near an exchange's limit, until the end of that window.
    pub(crate) near_limit: std::sync::Mutex<std::collections::HashMap<(ExchangeId, ProxyId), Instant>>,
    /// Failures retried through another proxy, by kind.
    pub(crate) retried: std::sync::Mutex<std::collections::BTreeMap<ErrorKind, u64>>,
}

/// The proxybus client a feed links; cheap to clone.
#[derive(Clone)]
pub struct ProxyClient {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for ProxyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyClient").field("client_id", &self.inner.config.client_id).finish()
    }
}

impl ProxyClient {
    /// Connects to the bus. The first connection is retried in the background,
    /// so a feed starts (on its fallbacks) even while NATS is down.
    pub async fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        let nats = config
            .nats
            .clone()
            .with_name(config.client_id.clone())
            .connect_retrying()
            .await
            .map_err(|err| ClientError::Http(format!("nats connect options: {err}")))?;
        Ok(Self::with_nats(config, nats))
    }

    /// A client over an existing NATS connection.
    pub fn with_nats(config: ClientConfig, nats: async_nats::Client) -> Self {
        let jetstream = jetstream::new(nats.clone());
        let reporter = Reporter::start(jetstream, config.feedback_queue_capacity);
        let breaker = CircuitBreaker::new(subject::RESOLVER_SERVICE, config.breaker);
        let cache = Cache::builder().max_capacity(config.cache_capacity).expire_after(LeaseExpiry).build();
        let embedded = EmbeddedSelector::new(config.embedded.clone());
        let tls = TunnelTls::new(&config.extra_roots, &config.proxy_ca).map_err(|err| err.message);
        Self {
            inner: Arc::new(Inner {
                codec: Codec::default(),
                config,
                nats,
                cache,
                breaker,
                embedded,
                reporter,
                tls,
                near_limit: std::sync::Mutex::default(),
                retried: std::sync::Mutex::default(),
            }),
        }
    }

    /// The client's id.
    pub fn client_id(&self) -> &str {
        &self.inner.config.client_id
    }

    /// The breaker guarding the resolver.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.inner.breaker
    }

    /// Queues a feedback event for JetStream; never blocks.
    pub fn report(&self, event: ProxyFeedback) {
        self.inner.reporter.report(event);
    }

    /// Counters of the feedback queue.
    pub fn feedback_stats(&self) -> FeedbackStats {
        self.inner.reporter.stats()
    }

    /// Waits until every queued event is acknowledged or `timeout` passes;
    /// returns whether the queue drained.
    pub async fn flush_feedback(&self, timeout: Duration) -> bool {
        self.inner.reporter.flush(timeout).await
    }
}
