//! The messages of the wire contract (`shared/CONTRACT.md`, version 1).
//!
//! Every message carries `schema_version` (a missing one decodes as 1), ignores
//! unknown fields, and accepts an omitted optional field as null. Field names are
//! the contract's, in snake_case; do not rename them, only add.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::subject::{ExchangeId, Region};

/// Free-form metadata carried by requests and responses.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

fn schema_version() -> u32 {
    crate::SCHEMA_VERSION
}

/// Kind of connection a feed wants a proxy for; the last token of request subjects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[serde(remote = "Self")]
pub enum ConnectionType {
    /// REST calls.
    Http,
    /// Websocket streams.
    Websocket,
}

impl ConnectionType {
    /// Both connection types, in contract order.
    pub const ALL: [ConnectionType; 2] = [ConnectionType::Http, ConnectionType::Websocket];

    /// The contract's name of this connection type (`http` or `websocket`).
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionType::Http => "http",
            ConnectionType::Websocket => "websocket",
        }
    }
}

impl fmt::Display for ConnectionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ConnectionType {
    type Err = crate::SubjectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "http" => Ok(ConnectionType::Http),
            "websocket" => Ok(ConnectionType::Websocket),
            other => Err(crate::SubjectError::UnknownConnectionType(other.to_owned())),
        }
    }
}

/// What a client does when the proxy it was given fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
#[serde(remote = "Self")]
pub enum FallbackPolicy {
    /// Connect without a proxy.
    #[default]
    DirectConnection,
    /// Use the embedded `ProxySettings`.
    EmbeddedFallback,
    /// Give up with an error.
    Fail,
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
#[serde(remote = "Self")]
pub enum ResponseSource {
    /// Freshly chosen by an upstream proxy service.
    #[default]
    Service,
    /// From the resolver's cache, within its TTL.
    Cache,
    /// From an expired cache entry while upstream is unavailable.
    StaleCache,
    /// From the embedded `ProxySettings`.
    Embedded,
    /// No proxy: connect directly.
    Direct,
}

impl ResponseSource {
    /// The contract's name of this source (`service`, `cache`, `stale_cache`, `embedded`,
    /// `direct`), as in `ProxyResponse.source`; also the resolver's metric label.
    ///
    /// # Examples
    /// ```
    /// use proxybus_shared::ResponseSource;
    /// assert_eq!(ResponseSource::StaleCache.as_str(), "stale_cache");
    /// assert_eq!(serde_json::to_value(ResponseSource::StaleCache).unwrap(), "stale_cache");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseSource::Service => "service",
            ResponseSource::Cache => "cache",
            ResponseSource::StaleCache => "stale_cache",
            ResponseSource::Embedded => "embedded",
            ResponseSource::Direct => "direct",
        }
    }
}

/// A feed asks for a proxy (`proxy.v1.request.{exchange_id}.{connection_type}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProxyRequest {
    /// Contract version; a missing one is 1.
    #[serde(default = "schema_version")]
    pub schema_version: u32,
    /// Exchange the connection goes to; must equal the subject's token.
    pub exchange_id: ExchangeId,
    /// Connection type; must equal the subject's token.
    pub connection_type: ConnectionType,
    /// Preferred region; null means the resolver's own. `"any"` (an extension of contract v1)
    /// asks for the best proxy of every region: the resolver scatters the request to each
    /// region's resolvers and answers the healthiest, fastest reply (docs/scaling.md).
    #[serde(default)]
    pub region: Option<Region>,
    /// Who asks, e.g. `cryptofeed-{hostname}-{pid}`.
    pub client_id: String,
    /// Correlation id (a UUID); the resolver makes one when absent and echoes it.
    #[serde(default)]
    pub request_id: Option<String>,
    /// Free-form metadata (null reads as empty, in JSON as in MessagePack).
    #[serde(default, deserialize_with = "null_as_empty_metadata")]
    pub metadata: Metadata,
    /// Proxy URL schemes the caller can use (an aiohttp feed without
    /// `aiohttp-socks` can use `http` and `https` proxies only for REST); absent,
    /// null or empty means any. The resolver, the pool and embedded selection only
    /// answer proxies whose scheme is listed ([`ProxyScheme::accepted_by`]); with
    /// none left, the request falls back as when no proxy is available.
    /// An extension of contract v1: old resolvers ignore it.
    ///
    /// [`ProxyScheme::accepted_by`]: crate::ProxyScheme::accepted_by
    #[serde(default, deserialize_with = "null_as_empty", skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Option<Vec<crate::ProxyScheme>>")]
    pub proxy_schemes: Vec<crate::ProxyScheme>,
    /// Proxies the caller must not be given, e.g. the one an exchange just refused
    /// (a retry through another proxy); absent, null or empty excludes none. The
    /// resolver answers such a request without its cache (and does not cache the
    /// answer), and the pool and embedded selection never return a listed proxy;
    /// with none left, the request falls back as when no proxy is available
    /// (`fallback_policy`, or the pool's `when_all_ejected`). At most
    /// [`ProxyRequest::MAX_EXCLUDED`] ids. An extension of contract v1: old
    /// resolvers ignore it.
    #[serde(default, deserialize_with = "null_as_empty", skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Option<Vec<ProxyId>>")]
    pub exclude_proxy_ids: Vec<ProxyId>,
    /// One logical session (a feed's stream set, a user's connection) that keeps
    /// its proxy while it stays healthy, whichever client asks and across its
    /// reconnects, until the pool's rotation plan (`rotate_after_uses`,
    /// `rotate_after_seconds` per exchange, with jitter) moves it; 1 to
    /// [`ProxyRequest::MAX_SESSION_KEY`] printable characters. Absent: the pool's
    /// per-client stickiness. An extension of contract v1: old services ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_key: Option<String>,
}

/// A list that may be sent as null.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// Metadata that may be sent as null: MessagePack's nil already read as an empty
/// map, JSON's `null` was refused (found by the `bad_input` property test).
fn null_as_empty_metadata<'de, D>(deserializer: D) -> Result<Metadata, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(Option::<Metadata>::deserialize(deserializer)?.unwrap_or_default())
}

/// A map that may be sent as null.
fn null_as_empty_map<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(Option::<BTreeMap<String, String>>::deserialize(deserializer)?.unwrap_or_default())
}

impl ProxyRequest {
    /// A request with no region, no request id and empty metadata.
    pub fn new(exchange_id: ExchangeId, connection_type: ConnectionType, client_id: impl Into<String>) -> Self {
        Self {
            schema_version: crate::SCHEMA_VERSION,
            exchange_id,
            connection_type,
            region: None,
            client_id: client_id.into(),
            request_id: None,
            metadata: Metadata::new(),
            proxy_schemes: Vec::new(),
            exclude_proxy_ids: Vec::new(),
            session_key: None,
        }
    }

    /// Longest `session_key`, in bytes.
    pub const MAX_SESSION_KEY: usize = 128;

    /// Why the request's `session_key` is unusable, if it is: empty, longer than
    /// [`ProxyRequest::MAX_SESSION_KEY`] bytes, or with control characters.
    pub fn session_key_problem(&self) -> Option<String> {
        let key = self.session_key.as_deref()?;
        (key.is_empty() || key.len() > Self::MAX_SESSION_KEY || key.chars().any(char::is_control))
            .then(|| format!("session_key must be 1 to {} printable characters", Self::MAX_SESSION_KEY))
    }

    /// Most `exclude_proxy_ids` a request may carry (a bad request above it):
    /// enough to retry through every proxy of a large region, small enough that a
    /// request stays a few kilobytes.
    pub const MAX_EXCLUDED: usize = 256;

    /// Whether `id` is one of the request's `exclude_proxy_ids`.
    pub fn excludes(&self, id: &ProxyId) -> bool {
        self.exclude_proxy_ids.contains(id)
    }
}

/// The answer to a [`ProxyRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProxyResponse {
    /// Contract version; a missing one is 1.
    #[serde(default = "schema_version")]
    pub schema_version: u32,
    /// Proxy to use, credentials included; null means "connect directly".
    #[serde(default)]
    pub proxy_url: Option<String>,
    /// Lowercase hex of the first 8 bytes of SHA-256 of `proxy_url`.
    #[serde(default)]
    pub proxy_id: Option<ProxyId>,
    /// How it was chosen (`round_robin`, `p2c_ewma`, `sticky`, `direct` …).
    pub strategy: String,
    /// How long the client may reuse it.
    pub ttl_seconds: u64,
    /// What the client does if this proxy fails.
    #[serde(default)]
    pub fallback_policy: FallbackPolicy,
    /// Where the answer came from (an upstream proxy service may omit it: `service`).
    #[serde(default)]
    pub source: ResponseSource,
    /// Region of the proxy.
    #[serde(default)]
    pub region: Option<Region>,
    /// The request's id, echoed (an upstream proxy service may omit it).
    #[serde(default)]
    pub request_id: String,
    /// Free-form metadata (null reads as empty, in JSON as in MessagePack).
    #[serde(default, deserialize_with = "null_as_empty_metadata")]
    pub metadata: Metadata,
    /// Region of the resolver that answered (its `PROXYBUS_RESOLVER_REGION`); absent when that
    /// resolver has no region set, and in a proxy service's own answers. Next to `region` (the
    /// proxy's) it says whether a request was failed over to another region, and where its
    /// proxy came from (docs/scaling.md). An extension of contract v1: old clients ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver_region: Option<Region>,
}

/// A [`ProxyResponse`] to encode without copying it: the parts an answer shares
/// with every client that got the same proxy are borrowed (a resolver keeps one
/// copy of each distinct answer for many clients), the parts of one reply
/// (`source`, `ttl_seconds`, `request_id`, `resolver_region`) are given.
///
/// It serializes to exactly the bytes of the `ProxyResponse` it stands for — the
/// same fields in the same order, so msgpack (`rmp_serde::to_vec_named`) and JSON
/// agree byte for byte (a test checks both with every field set). Built with
/// [`ProxyResponse::reply_view`]; a field added to `ProxyResponse` must be added
/// here too, or that test fails.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProxyResponseRef<'a> {
    /// As [`ProxyResponse::schema_version`].
    pub schema_version: u32,
    /// As [`ProxyResponse::proxy_url`].
    pub proxy_url: Option<&'a str>,
    /// As [`ProxyResponse::proxy_id`].
    pub proxy_id: Option<&'a ProxyId>,
    /// As [`ProxyResponse::strategy`].
    pub strategy: &'a str,
    /// As [`ProxyResponse::ttl_seconds`].
    pub ttl_seconds: u64,
    /// As [`ProxyResponse::fallback_policy`].
    pub fallback_policy: FallbackPolicy,
    /// As [`ProxyResponse::source`].
    pub source: ResponseSource,
    /// As [`ProxyResponse::region`].
    pub region: Option<&'a Region>,
    /// As [`ProxyResponse::request_id`].
    pub request_id: &'a str,
    /// As [`ProxyResponse::metadata`].
    pub metadata: &'a Metadata,
    /// As [`ProxyResponse::resolver_region`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolver_region: Option<&'a Region>,
}

impl ProxyResponse {
    /// This answer as one reply: its shared fields borrowed, with the reply's own
    /// `source`, `ttl_seconds` (seconds), `request_id` and `resolver_region`.
    pub fn reply_view<'a>(
        &'a self,
        source: ResponseSource,
        ttl_seconds: u64,
        request_id: &'a str,
        resolver_region: Option<&'a Region>,
    ) -> ProxyResponseRef<'a> {
        ProxyResponseRef {
            schema_version: self.schema_version,
            proxy_url: self.proxy_url.as_deref(),
            proxy_id: self.proxy_id.as_ref(),
            strategy: &self.strategy,
            ttl_seconds,
            fallback_policy: self.fallback_policy,
            source,
            region: self.region.as_ref(),
            request_id,
            metadata: &self.metadata,
            resolver_region,
        }
    }
}

/// Machine-readable class of an error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[serde(remote = "Self")]
pub enum ErrorCode {
    /// The request was malformed or disagreed with its subject (400).
    BadRequest,
    /// No proxy could be found and the policy forbids a direct connection (404).
    NoProxyAvailable,
    /// The request body was over the payload limit (413).
    PayloadTooLarge,
    /// Upstream proxy services are unavailable and the policy is `fail` (503).
    UpstreamUnavailable,
    /// A fault of the service itself (500).
    Internal,
}

impl ErrorCode {
    /// The HTTP-style status code of this error class.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::NoProxyAvailable => 404,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UpstreamUnavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// The contract's name of this error class.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NoProxyAvailable => "no_proxy_available",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Body of an error reply; the same facts travel in the `Nats-Service-Error` headers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorReply {
    /// Contract version; a missing one is 1.
    #[serde(default = "schema_version")]
    pub schema_version: u32,
    /// HTTP-style status code (400, 404, 413, 503, 500).
    pub code: u16,
    /// Error class.
    pub error: ErrorCode,
    /// Human-readable explanation; never contains credentials.
    pub message: String,
    /// The request's id when it was known.
    #[serde(default)]
    pub request_id: Option<String>,
}

impl ErrorReply {
    /// An error reply of class `error` whose `code` is that class's status.
    pub fn new(error: ErrorCode, message: impl Into<String>, request_id: Option<String>) -> Self {
        Self { schema_version: crate::SCHEMA_VERSION, code: error.status(), error, message: message.into(), request_id }
    }
}

/// Stage of a connection that a feedback event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[serde(remote = "Self")]
pub enum FeedbackPhase {
    /// The feed starts connecting through the proxy.
    ConnectStart,
    /// The connection is up.
    Connected,
    /// The connection or request failed.
    Failed,
    /// A connection closed (releases a lease).
    Disconnected,
    /// One HTTP request went through the proxy.
    Request,
}

/// Why a connection through a proxy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[serde(remote = "Self")]
pub enum ErrorKind {
    /// No answer in time.
    Timeout,
    /// Connection refused.
    Refused,
    /// Name resolution failed.
    Dns,
    /// TLS handshake failed.
    Tls,
    /// The proxy rejected its credentials.
    ProxyAuth,
    /// The exchange answered 403 Forbidden.
    #[serde(rename = "http_403")]
    Http403,
    /// The exchange answered 418 (Binance's IP ban).
    #[serde(rename = "http_418")]
    Http418,
    /// The exchange answered 429 Too Many Requests.
    #[serde(rename = "http_429")]
    Http429,
    /// The exchange answered 451 (restricted location).
    #[serde(rename = "http_451")]
    Http451,
    /// The exchange answered a 5xx status.
    #[serde(rename = "http_5xx")]
    Http5xx,
    /// The websocket was closed by the peer; `ws_close_code` says how.
    WsClosed,
    /// The exchange refused the websocket handshake with a status other than
    /// 403/418/429/451/5xx (extension of the contract; `status_code` carries it).
    WsHandshakeRefused,
    /// Anything else; unknown kinds from newer clients decode as this.
    #[serde(other)]
    Other,
}

impl ErrorKind {
    /// The contract's name of this error kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Refused => "refused",
            ErrorKind::Dns => "dns",
            ErrorKind::Tls => "tls",
            ErrorKind::ProxyAuth => "proxy_auth",
            ErrorKind::Http403 => "http_403",
            ErrorKind::Http418 => "http_418",
            ErrorKind::Http429 => "http_429",
            ErrorKind::Http451 => "http_451",
            ErrorKind::Http5xx => "http_5xx",
            ErrorKind::WsClosed => "ws_closed",
            ErrorKind::WsHandshakeRefused => "ws_handshake_refused",
            ErrorKind::Other => "other",
        }
    }

    /// The error kind an HTTP status seen through a proxy stands for, if it is an error.
    pub fn from_status(status: u16) -> Option<ErrorKind> {
        match status {
            403 => Some(ErrorKind::Http403),
            418 => Some(ErrorKind::Http418),
            429 => Some(ErrorKind::Http429),
            451 => Some(ErrorKind::Http451),
            500..=599 => Some(ErrorKind::Http5xx),
            400..=499 => Some(ErrorKind::Other),
            _ => None,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened with one proxy, reported by a feed into stream `PROXY_FEEDBACK`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProxyFeedback {
    /// Contract version; a missing one is 1.
    #[serde(default = "schema_version")]
    pub schema_version: u32,
    /// Unique id of the event, also its `Nats-Msg-Id` header.
    #[serde(with = "uuid_as_string")]
    #[schemars(with = "Uuid")]
    pub event_id: Uuid,
    /// The proxy, as in the `ProxyResponse`.
    pub proxy_id: ProxyId,
    /// The proxy's URL with credentials redacted; never a password.
    pub proxy_url: String,
    /// Exchange the connection went to.
    pub exchange_id: ExchangeId,
    /// Connection type.
    pub connection_type: ConnectionType,
    /// Region of the proxy.
    #[serde(default)]
    pub region: Option<Region>,
    /// Stage of the connection.
    pub phase: FeedbackPhase,
    /// Whether this stage succeeded.
    pub success: bool,
    /// Latency of the stage in milliseconds.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Why it failed.
    #[serde(default)]
    pub error_kind: Option<ErrorKind>,
    /// HTTP status seen through the proxy.
    #[serde(default)]
    pub status_code: Option<u16>,
    /// From a `Retry-After` header.
    #[serde(default)]
    pub retry_after_seconds: Option<u64>,
    /// Free text, redacted.
    #[serde(default)]
    pub error_details: Option<String>,
    /// Close code of a websocket the peer closed (RFC 6455 §7.4; 1006 when the
    /// connection dropped without a close frame). Extension of the contract: who a
    /// close is about depends on it (`proxybus_shared::health::attribute_close`).
    #[serde(default)]
    pub ws_close_code: Option<u16>,
    /// The exchange's usage headers seen on the response this event reports, name
    /// (lowercase) → value, e.g. `x-mbx-used-weight-1m: "1180"` (Binance's request
    /// weight used by this IP in the current minute). Extension of the contract:
    /// folded into the proxy's rate budget (`proxybus_shared::budget`, KV bucket
    /// `PROXY_BUDGETS`); absent or empty when none were seen.
    #[serde(default, deserialize_with = "null_as_empty_map", skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub usage_headers: BTreeMap<String, String>,
    /// Websocket connects this event stands for (extension of the contract);
    /// absent: one for a websocket `connect_start`, none otherwise
    /// (`proxybus_shared::budget::connects_of`). Counted against the exchange's
    /// per-IP connect limit in the proxy's rate budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_count: Option<u32>,
    /// When it happened at the feed.
    pub timestamp: DateTime<Utc>,
    /// Who reports.
    pub client_id: String,
    /// Whether an active probe (a pool service's TCP connect, `CONNECT` or
    /// `GET /api/v3/ping` through the proxy) reported this, not a feed's traffic.
    /// Extension of the contract (default false): a passing probe can re-admit an
    /// ejected proxy ([`crate::health::HealthPolicy::probe_readmit_successes`], docs/health.md).
    #[serde(default, skip_serializing_if = "is_false")]
    pub probe: bool,
}

impl ProxyFeedback {
    /// Longest `latency_ms` an event may report: one hour (a stage that took longer did
    /// not succeed; a larger figure is a broken clock or a hostile feed, and would
    /// swamp every latency average it is folded into).
    pub const MAX_LATENCY_MS: u64 = 3_600_000;

    /// Why an event that decodes must still not be folded, if so: a `latency_ms` over
    /// [`MAX_LATENCY_MS`](Self::MAX_LATENCY_MS), or a `client_id` that is empty or holds
    /// control characters (NUL, line breaks: they forge log lines). The aggregator
    /// dead-letters such an event; the pool's HTTP API answers 400.
    pub fn problem(&self) -> Option<String> {
        if let Some(latency) = self.latency_ms.filter(|latency| *latency > Self::MAX_LATENCY_MS) {
            return Some(format!("latency_ms {latency} is over the maximum of {} ms", Self::MAX_LATENCY_MS));
        }
        (self.client_id.is_empty() || self.client_id.chars().any(char::is_control))
            .then(|| "client_id must be printable characters, at least one".to_owned())
    }

    /// An outcome of the proxy at `proxy_url` for `exchange_id` over `connection_type`, now, under
    /// a new `event_id`: `proxy_id` derived from the URL, the URL stored redacted, every optional
    /// field empty (set the ones that apply with struct update syntax).
    pub fn new(
        proxy_url: &str,
        exchange_id: ExchangeId,
        connection_type: ConnectionType,
        phase: FeedbackPhase,
        success: bool,
        client_id: impl Into<String>,
    ) -> Self {
        Self {
            schema_version: crate::SCHEMA_VERSION,
            event_id: Uuid::new_v4(),
            proxy_id: crate::proxy_id(proxy_url),
            proxy_url: crate::redact_url(proxy_url),
            exchange_id,
            connection_type,
            region: None,
            phase,
            success,
            latency_ms: None,
            error_kind: None,
            status_code: None,
            retry_after_seconds: None,
            error_details: None,
            ws_close_code: None,
            usage_headers: BTreeMap::new(),
            connect_count: None,
            probe: false,
            timestamp: Utc::now(),
            client_id: client_id.into(),
        }
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// What an operator does to a proxy (`proxybus ban|unban|drain|undrain|disable|enable`).
/// Extension of the contract: the `action` of an [`OperatorEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[serde(remote = "Self")]
pub enum OperatorAction {
    /// Bar the proxy (for one exchange, or all), until lifted or for a while.
    Ban,
    /// Lift bans (of one exchange, or all).
    Unban,
    /// No new leases (for one exchange, or all); existing ones finish.
    Drain,
    /// Lift drains (of one exchange, or all).
    Undrain,
    /// Take the proxy out everywhere until enabled again.
    Disable,
    /// Lift a disable.
    Enable,
}

impl OperatorAction {
    /// Every action, in contract order.
    pub const ALL: [OperatorAction; 6] = [
        OperatorAction::Ban,
        OperatorAction::Unban,
        OperatorAction::Drain,
        OperatorAction::Undrain,
        OperatorAction::Disable,
        OperatorAction::Enable,
    ];

    /// The contract's name of this action (`ban`, `unban` …), also a token of its subject.
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorAction::Ban => "ban",
            OperatorAction::Unban => "unban",
            OperatorAction::Drain => "drain",
            OperatorAction::Undrain => "undrain",
            OperatorAction::Disable => "disable",
            OperatorAction::Enable => "enable",
        }
    }

    /// Whether the action may name an exchange and a duration (`ban` and `drain`;
    /// `unban`/`undrain` may name an exchange only).
    pub fn takes_exchange(self) -> bool {
        matches!(self, OperatorAction::Ban | OperatorAction::Unban | OperatorAction::Drain | OperatorAction::Undrain)
    }

    /// Whether the action may last a while (`ban`, `drain`).
    pub fn takes_duration(self) -> bool {
        matches!(self, OperatorAction::Ban | OperatorAction::Drain)
    }
}

impl fmt::Display for OperatorAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for OperatorAction {
    type Err = crate::SubjectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OperatorAction::ALL.into_iter().find(|action| action.as_str() == s).ok_or_else(|| {
            crate::SubjectError::InvalidToken { what: "operator action", token: s.chars().take(64).collect() }
        })
    }
}

/// An operator's control of one proxy, published into stream `PROXY_FEEDBACK` on
/// `proxy.v1.feedback.operator.{action}.{proxy_id}` with `Nats-Msg-Id: {event_id}`
/// (extension of the contract). Folded by the aggregator into the proxy's
/// [`HealthStats::operator_controls`]; the stream is the audit trail and a replay
/// rebuilds them. Feeds' credentials may not publish it (`deploy/nats/permissions.conf`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OperatorEvent {
    /// Contract version; a missing one is 1.
    #[serde(default = "schema_version")]
    pub schema_version: u32,
    /// Unique id of the event, also its `Nats-Msg-Id` header.
    #[serde(with = "uuid_as_string")]
    #[schemars(with = "Uuid")]
    pub event_id: Uuid,
    /// The proxy; must equal the subject's last token.
    pub proxy_id: ProxyId,
    /// What is done; must equal the subject's action token.
    pub action: OperatorAction,
    /// The one exchange a `ban`/`drain` (or its lifting) is about; null means every exchange.
    #[serde(default)]
    pub exchange_id: Option<ExchangeId>,
    /// How long a `ban` or `drain` lasts, in seconds from when the stream stored it;
    /// null means until lifted.
    #[serde(default)]
    pub duration_seconds: Option<u64>,
    /// Why (free text, redacted; required, at most 512 characters).
    pub reason: String,
    /// Who: the operator's name (`--by`, else `$USER`, else the NATS user).
    pub operator: String,
    /// When the operator issued it.
    pub timestamp: DateTime<Utc>,
}

/// An operator's control in force on a proxy, or the last one issued (part of
/// [`HealthStats`], extension of the contract).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OperatorControl {
    /// `ban`, `drain` or `disable` when in force; any action as the last one issued.
    pub action: OperatorAction,
    /// The one exchange it is about; null means every exchange.
    #[serde(default)]
    pub exchange_id: Option<ExchangeId>,
    /// When it ends by itself; null means until lifted.
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    /// Why.
    pub reason: String,
    /// Who.
    pub operator: String,
    /// When it took effect (the stream's time of the event).
    pub at: DateTime<Utc>,
    /// Stream sequence of the event: where the audit trail holds it.
    pub seq: u64,
}

/// Health of a proxy as the aggregator classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
#[serde(remote = "Self")]
pub enum HealthState {
    /// Hand it out.
    #[default]
    Healthy,
    /// Failing more than it should, or on probation after an ejection.
    Degraded,
    /// Do not hand it out until `ejected_until`.
    Ejected,
}

impl HealthState {
    /// Every state, healthiest first.
    pub const ALL: [HealthState; 3] = [HealthState::Healthy, HealthState::Degraded, HealthState::Ejected];

    /// The contract's name of this state (`healthy`, `degraded`, `ejected`), as serialised.
    ///
    /// ```
    /// use proxybus_shared::HealthState;
    /// for state in HealthState::ALL {
    ///     assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
    /// }
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Degraded => "degraded",
            HealthState::Ejected => "ejected",
        }
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// State of a proxy towards one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
#[serde(remote = "Self")]
pub enum ExchangeState {
    /// Usable for this exchange.
    #[default]
    Healthy,
    /// Rate-limited (429/418) until `banned_until`.
    Cooldown,
    /// Restricted location (451) until `banned_until`.
    Banned,
}

/// Per-exchange part of [`HealthStats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
pub struct ExchangeHealth {
    /// Successful events for this exchange.
    #[serde(default)]
    pub successes: u64,
    /// Failed events for this exchange.
    #[serde(default)]
    pub failures: u64,
    /// Whether the proxy may be used for this exchange.
    #[serde(default)]
    pub state: ExchangeState,
    /// End of the cool-down or ban.
    #[serde(default)]
    pub banned_until: Option<DateTime<Utc>>,
    /// The last error seen for this exchange.
    #[serde(default)]
    pub last_error_kind: Option<ErrorKind>,
    /// `http_403`s, refused websocket handshakes and closes 1008 from this exchange
    /// since its last success (extension of the contract; bars the proxy for this
    /// exchange at `refusals_to_bar`, see docs/health.md).
    #[serde(default)]
    pub refusals_in_a_row: u32,
    /// `http_418` IP bans this exchange gave the proxy (extension of the contract;
    /// each one lasts twice as long as the one before, see docs/health.md).
    #[serde(default)]
    pub ip_bans: u32,
}

/// Health statistics of one proxy (KV bucket `PROXY_HEALTH`, subject `proxy.v1.health.{region}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HealthStats {
    /// Contract version; a missing one is 1.
    #[serde(default = "schema_version")]
    pub schema_version: u32,
    /// The proxy.
    pub proxy_id: ProxyId,
    /// The proxy's URL with credentials redacted.
    pub proxy_url: String,
    /// Region of the proxy.
    #[serde(default)]
    pub region: Option<Region>,
    /// Classification.
    pub state: HealthState,
    /// Events folded.
    pub total: u64,
    /// Successful events folded.
    pub successes: u64,
    /// Failed events folded.
    pub failures: u64,
    /// Time-decayed success rate, 0..1.
    pub success_rate: f64,
    /// Exponentially weighted moving average of latency.
    #[serde(default)]
    pub latency_ewma_ms: Option<f64>,
    /// Median latency.
    #[serde(default)]
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile latency.
    #[serde(default)]
    pub latency_p99_ms: Option<f64>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// How many times the proxy was ejected.
    pub ejections: u32,
    /// End of the current ejection.
    #[serde(default)]
    pub ejected_until: Option<DateTime<Utc>>,
    /// The last error seen.
    #[serde(default)]
    pub last_error_kind: Option<ErrorKind>,
    /// Failures counted by error kind (extension of the contract).
    #[serde(default)]
    pub error_counts: BTreeMap<ErrorKind, u64>,
    /// Per-exchange sub-stats.
    #[serde(default)]
    pub exchanges: BTreeMap<ExchangeId, ExchangeHealth>,
    /// When these stats last changed.
    pub updated_at: DateTime<Utc>,
    /// Stream sequence of the last folded event.
    pub last_seq: u64,
    /// Operators' bans, drains and disables in force, oldest first (extension of the
    /// contract; `proxybus_shared::health::apply_operator`, docs/health.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operator_controls: Vec<OperatorControl>,
    /// The last operator event folded for this proxy, whatever it did (extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_operator_action: Option<OperatorControl>,
}

impl HealthStats {
    /// Fresh stats of a proxy no event has been folded for.
    pub fn new(proxy_id: ProxyId, proxy_url: String, region: Option<Region>, now: DateTime<Utc>) -> Self {
        Self {
            schema_version: crate::SCHEMA_VERSION,
            proxy_id,
            proxy_url,
            region,
            state: HealthState::Healthy,
            total: 0,
            successes: 0,
            failures: 0,
            success_rate: 1.0,
            latency_ewma_ms: None,
            latency_p50_ms: None,
            latency_p99_ms: None,
            consecutive_failures: 0,
            ejections: 0,
            ejected_until: None,
            last_error_kind: None,
            error_counts: BTreeMap::new(),
            exchanges: BTreeMap::new(),
            updated_at: now,
            last_seq: 0,
            operator_controls: Vec::new(),
            last_operator_action: None,
        }
    }

    /// Whether the proxy may be handed out for `exchange` at `now`: not ejected and
    /// not in a cool-down or ban for that exchange ([`crate::health::usable_for`]).
    pub fn usable_for(&self, exchange: &ExchangeId, now: DateTime<Utc>) -> bool {
        crate::health::usable_for(self, exchange, now)
    }
}

/// One proxy of a pool service's inventory as published into KV bucket
/// `PROXY_INVENTORY`: its identity and region, never its URL or credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InventoryProxy {
    /// The proxy.
    pub proxy_id: ProxyId,
    /// Its region.
    pub region: Region,
}

/// The inventory of one pool service (KV bucket `PROXY_INVENTORY`, key
/// `{inventory_id}`); the aggregator sizes each region from the union of them
/// (extension of the contract).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProxyInventory {
    /// Contract version; a missing one is 1.
    #[serde(default = "schema_version")]
    pub schema_version: u32,
    /// Which inventory this is (the pool's `inventory_id`, `[A-Za-z0-9_-]`); also its key.
    pub inventory_id: String,
    /// Every proxy of the inventory, disabled ones included.
    pub proxies: Vec<InventoryProxy>,
    /// When it was published.
    pub updated_at: DateTime<Utc>,
}

/// Identity of a proxy: lowercase hex of the first 8 bytes of SHA-256 of its URL.
///
/// # Examples
/// ```
/// use proxybus_shared::{ProxyId, proxy_id};
/// let id = proxy_id("http://user:secret@10.0.0.1:8080");
/// assert_eq!(id.as_str().len(), 16);
/// assert_eq!(id.as_str().parse::<ProxyId>(), Ok(id.clone()));
/// assert!("not-a-proxy-id".parse::<ProxyId>().is_err());
/// ```
///
/// The 16 digits are held inline (no heap allocation): a `ProxyId` is copied, compared
/// and hashed as 16 bytes, which the aggregator does for every event it folds. Its
/// order is the order of the hex strings.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxyId([u8; ProxyId::LEN]);

/// A string that is not 16 lowercase hex digits was offered as a `proxy_id`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid proxy_id {0:?}: expected 16 lowercase hex digits")]
pub struct InvalidProxyId(String);

impl ProxyId {
    /// Length of a proxy id in hex digits.
    pub const LEN: usize = 16;

    /// Wraps the hex of an 8-byte digest prefix.
    pub(crate) fn from_digest_prefix(bytes: &[u8]) -> Self {
        let mut digits = [0; Self::LEN];
        hex::encode_to_slice(&bytes[..Self::LEN / 2], &mut digits).expect("16 hex digits for 8 bytes");
        Self(digits)
    }

    /// The id as its 16 hex digits.
    pub fn as_str(&self) -> &str {
        // Only lowercase hex digits are ever stored (`parse_digits`, `from_digest_prefix`).
        std::str::from_utf8(&self.0).expect("a proxy id holds ASCII hex digits")
    }

    /// The id of `text` when it is 16 lowercase hex digits.
    fn parse_digits(text: &str) -> Result<Self, InvalidProxyId> {
        let bytes = text.as_bytes();
        if bytes.len() == Self::LEN && bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            let mut digits = [0; Self::LEN];
            digits.copy_from_slice(bytes);
            Ok(Self(digits))
        } else {
            let shown: String = text.chars().take(32).collect();
            Err(InvalidProxyId(shown))
        }
    }
}

impl fmt::Debug for ProxyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ProxyId").field(&self.as_str()).finish()
    }
}

impl Serialize for ProxyId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ProxyId {
    /// Reads the string in place, without copying it first.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParseStr::new("16 lowercase hex digits", Self::parse_digits))
    }
}

/// A serde visitor that parses a string where it lies (borrowed from the input or a
/// transient buffer of the deserializer), so that a value made from a string — a
/// [`ProxyId`], a [`Uuid`] — costs no heap allocation to read.
struct ParseStr<F> {
    expecting: &'static str,
    parse: F,
}

impl<F> ParseStr<F> {
    fn new<T, E>(expecting: &'static str, parse: F) -> Self
    where
        F: FnOnce(&str) -> Result<T, E>,
    {
        Self { expecting, parse }
    }
}

impl<T, E, F> serde::de::Visitor<'_> for ParseStr<F>
where
    F: FnOnce(&str) -> Result<T, E>,
    E: fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<Er: serde::de::Error>(self, text: &str) -> Result<T, Er> {
        (self.parse)(text).map_err(Er::custom)
    }
}

impl TryFrom<String> for ProxyId {
    type Error = InvalidProxyId;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse_digits(&value)
    }
}

impl std::str::FromStr for ProxyId {
    type Err = InvalidProxyId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_digits(s)
    }
}

impl From<ProxyId> for String {
    fn from(id: ProxyId) -> Self {
        id.as_str().to_owned()
    }
}

impl fmt::Display for ProxyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl JsonSchema for ProxyId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ProxyId".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9a-f]{16}$",
            "description": "Lowercase hex of the first 8 bytes of SHA-256 of the proxy URL."
        })
    }
}

/// UUIDs travel as their hyphenated string in every encoding (the `uuid` crate
/// would write 16 raw bytes to non-human-readable formats such as MessagePack).
mod uuid_as_string {
    use serde::{Deserializer, Serializer};
    use uuid::Uuid;

    pub(super) fn serialize<S: Serializer>(id: &Uuid, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&id.hyphenated())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Uuid, D::Error> {
        deserializer.deserialize_str(super::ParseStr::new("a UUID string", Uuid::parse_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A proxy id and an event id are read from the string where it lies, in every form
    /// serde hands a string over: borrowed (MessagePack), escaped (JSON, unescaped into
    /// a buffer), and owned; anything else is refused with the reason.
    #[test]
    fn null_metadata_reads_as_empty_in_both_encodings() {
        let json = br#"{"schema_version":1,"proxy_url":null,"strategy":"s","ttl_seconds":1,"source":"service","request_id":"","metadata":null}"#;
        let codec = crate::Codec::default();
        let from_json: ProxyResponse = codec.decode_as(crate::Encoding::Json, json).unwrap();
        assert!(from_json.metadata.is_empty());
        let value: serde_json::Value = serde_json::from_slice(json).unwrap();
        let msgpack = rmp_serde::to_vec_named(&value).unwrap();
        let from_msgpack: ProxyResponse = codec.decode_as(crate::Encoding::MsgPack, &msgpack).unwrap();
        assert_eq!(from_json, from_msgpack);
        let request = br#"{"exchange_id":"binance","connection_type":"http","client_id":"c","metadata":null}"#;
        let request: ProxyRequest = codec.decode_as(crate::Encoding::Json, request).unwrap();
        assert!(request.metadata.is_empty());
    }

    #[test]
    fn ids_are_read_from_strings_in_every_form_and_nothing_else() {
        let id: ProxyId = "00ff10aa20bb30cc".parse().expect("valid");
        let packed = rmp_serde::to_vec(&id).expect("encodes");
        assert_eq!(rmp_serde::from_slice::<ProxyId>(&packed).expect("msgpack"), id);
        assert_eq!(serde_json::from_str::<ProxyId>(r#""00ff10aa20bb30cc""#).expect("json"), id);
        assert_eq!(serde_json::from_str::<ProxyId>(r#""\u0030\u0030ff10aa20bb30cc""#).expect("escaped"), id);
        assert_eq!(serde_json::from_value::<ProxyId>(serde_json::json!("00ff10aa20bb30cc")).expect("owned"), id);
        for bad in [r#""00FF10AA20BB30CC""#, r#""00ff10aa20bb30c""#, r#""00ff10aa20bb30ccd""#, "1234", "null"] {
            let err = serde_json::from_str::<ProxyId>(bad).expect_err(bad).to_string();
            assert!(err.contains("proxy_id") || err.contains("16 lowercase hex digits"), "{bad}: {err}");
        }
        // MessagePack `bin 8` of the same 16 bytes: not a string.
        let mut bin = vec![0xc4, 16];
        bin.extend_from_slice(b"00ff10aa20bb30cc");
        assert!(rmp_serde::from_slice::<ProxyId>(&bin).is_err(), "msgpack bin is not a string");
        // Ordered as the hex strings are.
        let mut ids: Vec<ProxyId> =
            ["f0", "0a", "a0", "09"].iter().map(|p| format!("{p}00000000000000").parse().unwrap()).collect();
        ids.sort();
        let shown: Vec<&str> = ids.iter().map(ProxyId::as_str).collect();
        assert_eq!(shown, ["0900000000000000", "0a00000000000000", "a000000000000000", "f000000000000000"]);

        #[derive(Deserialize)]
        struct WithUuid {
            #[serde(with = "uuid_as_string")]
            id: Uuid,
        }
        let uuid = Uuid::parse_str("67e55044-10b1-426f-9247-bb680e5fe0c8").expect("valid");
        let json = r#"{"id":"67e55044-10b1-426f-9247-bb680e5fe0c8"}"#;
        assert_eq!(serde_json::from_str::<WithUuid>(json).expect("json").id, uuid);
        let escaped = r#"{"id":"\u0036\u0037e55044-10b1-426f-9247-bb680e5fe0c8"}"#;
        assert_eq!(serde_json::from_str::<WithUuid>(escaped).expect("escaped").id, uuid);
        assert!(serde_json::from_str::<WithUuid>(r#"{"id":"not-a-uuid"}"#).is_err());
        assert!(serde_json::from_str::<WithUuid>(r#"{"id":7}"#).is_err());
    }
}

crate::by_name_only!(
    ConnectionType,
    FallbackPolicy,
    ResponseSource,
    ErrorCode,
    FeedbackPhase,
    ErrorKind,
    OperatorAction,
    HealthState,
    ExchangeState,
);
