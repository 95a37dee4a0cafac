//! What `get_proxy` hands out.

use std::time::Duration;

use proxybus_shared::{
    ConnectionType, ErrorKind, ExchangeId, FallbackPolicy, FeedbackPhase, ProxyFeedback, ProxyId, ProxyUrl, Region,
    ResponseSource,
};

/// A proxy (or a direct connection) to use for one exchange and connection type.
#[derive(Debug, Clone)]
pub struct ProxyLease {
    /// The proxy; `None` means connect directly.
    pub proxy: Option<ProxyUrl>,
    /// The proxy's id, when there is a proxy.
    pub proxy_id: Option<ProxyId>,
    /// Exchange it is for.
    pub exchange: ExchangeId,
    /// Connection type it is for.
    pub connection_type: ConnectionType,
    /// Region of the proxy.
    pub region: Option<Region>,
    /// How it was chosen.
    pub strategy: String,
    /// Where it came from (`service`, `cache`, `embedded`, `direct` …).
    pub source: ResponseSource,
    /// What to do when it fails.
    pub fallback_policy: FallbackPolicy,
    /// How long it may be reused.
    pub ttl: Duration,
    /// The resolver's request id, when it came from the resolver.
    pub request_id: Option<String>,
    /// Region of the resolver that answered (`ProxyResponse.resolver_region`); `None` for a
    /// fallback answer or a resolver without a region. Another region than the feed's own
    /// means the request was failed over (docs/scaling.md).
    pub resolver_region: Option<Region>,
    /// The `session_key` session it was leased for, if any.
    pub session_key: Option<String>,
}

impl ProxyLease {
    /// Whether this lease means "connect directly".
    pub fn is_direct(&self) -> bool {
        self.proxy.is_none()
    }

    /// A feedback event about this lease, or `None` for a direct connection
    /// (there is no proxy to report on).
    pub fn feedback(&self, client_id: &str, phase: FeedbackPhase, success: bool) -> Option<ProxyFeedback> {
        let proxy = self.proxy.as_ref()?;
        Some(ProxyFeedback {
            schema_version: proxybus_shared::SCHEMA_VERSION,
            event_id: uuid::Uuid::new_v4(),
            proxy_id: self.proxy_id.unwrap_or_else(|| proxy.id()),
            proxy_url: proxy.redacted(),
            exchange_id: self.exchange.clone(),
            connection_type: self.connection_type,
            region: self.region.clone(),
            phase,
            success,
            latency_ms: None,
            error_kind: None,
            status_code: None,
            retry_after_seconds: None,
            error_details: None,
            ws_close_code: None,
            usage_headers: Default::default(),
            connect_count: None,
            timestamp: chrono::Utc::now(),
            client_id: client_id.to_owned(),
            probe: false,
        })
    }

    /// A failure event with its classification.
    pub(crate) fn failure(
        &self,
        client_id: &str,
        kind: ErrorKind,
        details: &str,
        latency: Duration,
    ) -> Option<ProxyFeedback> {
        let mut event = self.feedback(client_id, FeedbackPhase::Failed, false)?;
        event.error_kind = Some(kind);
        event.latency_ms = Some(latency.as_millis() as u64);
        event.error_details = Some(redact_details(details, self.proxy.as_ref()));
        Some(event)
    }
}

/// Error text with anything URL-like redacted and the proxy's password removed
/// (as written and as decoded), at most 512 characters.
pub(crate) fn redact_details(details: &str, proxy: Option<&ProxyUrl>) -> String {
    let text = match proxy {
        Some(proxy) => proxy.scrub(details),
        None => proxybus_shared::redact_text(details),
    };
    text.chars().take(512).collect()
}
