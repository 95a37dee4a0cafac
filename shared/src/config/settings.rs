//! The seed's `ProxySettings` tree and `ExternalProxyServiceConfig`, with the
//! seed's names and defaults.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{Issues, Validate, key};
use crate::messages::ConnectionType;
use crate::proxy_url::ProxyUrl;

/// Range of accepted timeouts, in seconds (as the seed's `ProxyConfig`).
pub const TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 1..=300;

/// Proxy settings of a feed or a resolver (`CRYPTOFEED_PROXY_*`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProxySettings {
    /// Whether proxying is on at all; when off every answer is a direct connection.
    pub enabled: bool,
    /// Proxies for exchanges without an entry of their own.
    pub default: Option<ConnectionProxies>,
    /// Per-exchange proxies, keyed by exchange id.
    pub exchanges: BTreeMap<String, ConnectionProxies>,
    /// Delegation to external proxy services.
    pub external_service: ExternalProxyServiceConfig,
}

impl ProxySettings {
    /// The embedded proxy configuration for an exchange and connection type: the
    /// exchange's own entry, else the default; `None` when proxying is disabled.
    pub fn proxy_for(&self, exchange: &str, connection_type: ConnectionType) -> Option<&ProxyConfig> {
        if !self.enabled {
            return None;
        }
        self.exchanges
            .get(exchange)
            .and_then(|c| c.get(connection_type))
            .or_else(|| self.default.as_ref().and_then(|c| c.get(connection_type)))
    }
}

impl Validate for ProxySettings {
    fn validate(&self, prefix: &str, issues: &mut Issues) {
        if let Some(default) = &self.default {
            default.validate(&key(prefix, "default"), issues);
        }
        for (exchange, proxies) in &self.exchanges {
            let at = key(prefix, &format!("exchanges.{exchange}"));
            if exchange.parse::<crate::ExchangeId>().is_err() {
                issues.push(at.clone(), "exchange id must be 1 to 64 characters of a-z, 0-9, '_' or '-'");
            }
            proxies.validate(&at, issues);
        }
        self.external_service.validate(&key(prefix, "external_service"), issues);
    }
}

/// Proxies for the two connection types.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ConnectionProxies {
    /// Proxy for REST calls.
    pub http: Option<ProxyConfig>,
    /// Proxy for websocket streams.
    pub websocket: Option<ProxyConfig>,
}

impl ConnectionProxies {
    /// The configuration for one connection type.
    pub fn get(&self, connection_type: ConnectionType) -> Option<&ProxyConfig> {
        match connection_type {
            ConnectionType::Http => self.http.as_ref(),
            ConnectionType::Websocket => self.websocket.as_ref(),
        }
    }
}

impl Validate for ConnectionProxies {
    fn validate(&self, prefix: &str, issues: &mut Issues) {
        if let Some(http) = &self.http {
            http.validate(&key(prefix, "http"), issues);
        }
        if let Some(websocket) = &self.websocket {
            websocket.validate(&key(prefix, "websocket"), issues);
        }
    }
}

/// One proxy, or a pool of them, for one connection type.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ProxyConfig {
    /// A single proxy URL (`http`, `https`, `socks4`, `socks4a`, `socks5`, `socks5h`;
    /// the rules are those of [`ProxyUrl`]).
    #[serde(deserialize_with = "optional_secret")]
    pub url: Option<SecretString>,
    /// Connect timeout through this proxy, 1 to 300 seconds.
    pub timeout_seconds: u64,
    /// A pool of proxies instead of (or besides) `url`.
    pub pool: Option<ProxyPoolConfig>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self { url: None, timeout_seconds: 30, pool: None }
    }
}

impl ProxyConfig {
    /// The single proxy URL, if it is set and valid.
    pub fn proxy_url(&self) -> Option<ProxyUrl> {
        self.url.as_ref().and_then(|url| ProxyUrl::parse(url.expose_secret()).ok())
    }
}

impl Validate for ProxyConfig {
    fn validate(&self, prefix: &str, issues: &mut Issues) {
        if let Some(url) = &self.url {
            validate_proxy_url(&key(prefix, "url"), url, issues);
        }
        issues.check_range(key(prefix, "timeout_seconds"), self.timeout_seconds, TIMEOUT_RANGE);
        if let Some(pool) = &self.pool {
            pool.validate(&key(prefix, "pool"), issues);
        }
        if self.url.is_none() && self.pool.as_ref().is_none_or(|p| p.proxies.is_empty()) {
            issues.push(prefix, "needs a url or a pool with at least one proxy");
        }
    }
}

fn validate_proxy_url(at: &str, url: &SecretString, issues: &mut Issues) {
    let url = url.expose_secret();
    if let Err(err) = ProxyUrl::parse(url) {
        // Without `scheme://` the value may be anything, a password set in the wrong
        // variable included, and `redact_url` keeps a lone word as a host name: such a
        // value is not shown at all (found by `environment_errors_never_show_a_secret`).
        if url.contains("://") {
            issues.push(at, format!("{err} (in {})", crate::redact_url(url)));
        } else {
            issues.push(at, err.to_string());
        }
    }
}

/// How a pool picks a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolStrategy {
    /// In turn.
    #[default]
    RoundRobin,
    /// At random (weighted by `weight`).
    Random,
    /// The one with the fewest connections in use.
    LeastConnections,
}

impl PoolStrategy {
    /// The strategy's name in configuration and responses.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolStrategy::RoundRobin => "round_robin",
            PoolStrategy::Random => "random",
            PoolStrategy::LeastConnections => "least_connections",
        }
    }
}

/// A pool of proxies with a selection strategy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProxyPoolConfig {
    /// The proxies.
    pub proxies: Vec<ProxyUrlConfig>,
    /// How one is picked.
    pub strategy: PoolStrategy,
}

impl Validate for ProxyPoolConfig {
    fn validate(&self, prefix: &str, issues: &mut Issues) {
        for (i, proxy) in self.proxies.iter().enumerate() {
            proxy.validate(&key(prefix, &format!("proxies[{i}]")), issues);
        }
    }
}

/// One proxy of a pool.
#[derive(Debug, Clone, Deserialize)]
pub struct ProxyUrlConfig {
    /// The proxy URL.
    #[serde(deserialize_with = "super::lenient_secret")]
    pub url: SecretString,
    /// Relative weight for weighted strategies.
    #[serde(default = "one")]
    pub weight: f64,
    /// Whether the proxy may be used.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

impl ProxyUrlConfig {
    /// The proxy URL, if valid.
    pub fn proxy_url(&self) -> Option<ProxyUrl> {
        ProxyUrl::parse(self.url.expose_secret()).ok()
    }
}

impl Validate for ProxyUrlConfig {
    fn validate(&self, prefix: &str, issues: &mut Issues) {
        validate_proxy_url(&key(prefix, "url"), &self.url, issues);
        if !(self.weight.is_finite() && self.weight > 0.0) {
            issues.push(key(prefix, "weight"), format!("{} must be a positive number", self.weight));
        }
    }
}

/// How the resolver authenticates to proxy services (the seed's `ProxyServiceAuth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// `Authorization: Bearer {auth_credentials.token}`.
    #[default]
    BearerToken,
    /// `X-API-Key: {auth_credentials.api_key}`.
    ApiKey,
    /// A client certificate (`auth_credentials.cert_file`, `auth_credentials.key_file`).
    MutualTls,
    /// No authentication.
    None,
}

/// Delegation to external proxy services (the seed's `ExternalProxyServiceConfig`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ExternalProxyServiceConfig {
    /// Whether to ask proxy services at all.
    pub enabled: bool,
    /// Base URLs of the proxy services (`https://proxy-service-1:8080`).
    pub endpoints: Vec<String>,
    /// How to authenticate.
    pub auth_method: AuthMethod,
    /// Credentials of the method (`token`, `api_key`, `cert_file`, `key_file`).
    #[serde(deserialize_with = "secret_map")]
    pub auth_credentials: BTreeMap<String, SecretString>,
    /// Per-request timeout, 1 to 300 seconds.
    pub timeout_seconds: u64,
    /// Default TTL of cached answers, 0 to 86 400 seconds.
    pub cache_ttl_seconds: u64,
    /// Whether to protect each endpoint with a circuit breaker.
    pub circuit_breaker_enabled: bool,
    /// Whether to fall back to the embedded settings when services fail.
    pub fallback_to_embedded: bool,
    /// Phased rollout (the seed's migration plan): exchanges delegated to the
    /// services; empty means every exchange. The others use the embedded settings.
    pub exchanges: Vec<String>,
    /// Turns off certificate validation of `https` endpoints (a test
    /// deployment with self-signed certificates). Off by default; when on, every
    /// start logs a warning. Prefer `auth_credentials.ca_file` with the service's CA.
    pub insecure_skip_tls_verify: bool,
    /// DNS SRV name the endpoints are discovered under
    /// (`_proxy-service._tcp.example.internal`, as a Kubernetes headless service
    /// publishes); when set it replaces `endpoints`.
    pub srv_name: Option<String>,
}

impl Default for ExternalProxyServiceConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoints: Vec::new(),
            auth_method: AuthMethod::BearerToken,
            auth_credentials: BTreeMap::new(),
            timeout_seconds: 10,
            cache_ttl_seconds: 300,
            circuit_breaker_enabled: true,
            fallback_to_embedded: true,
            exchanges: Vec::new(),
            insecure_skip_tls_verify: false,
            srv_name: None,
        }
    }
}

impl ExternalProxyServiceConfig {
    /// Whether requests for `exchange` go to the services: enabled, and the
    /// exchange is in the rollout list (or the list is empty).
    pub fn delegates(&self, exchange: &str) -> bool {
        self.enabled && (self.exchanges.is_empty() || self.exchanges.iter().any(|e| e == exchange))
    }

    /// A credential by name (`token`, `api_key` …).
    pub fn credential(&self, name: &str) -> Option<&SecretString> {
        self.auth_credentials.get(name)
    }
}

impl Validate for ExternalProxyServiceConfig {
    fn validate(&self, prefix: &str, issues: &mut Issues) {
        issues.check_range(key(prefix, "timeout_seconds"), self.timeout_seconds, TIMEOUT_RANGE);
        issues.check_range(key(prefix, "cache_ttl_seconds"), self.cache_ttl_seconds, 0..=86_400);
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let at = key(prefix, &format!("endpoints[{i}]"));
            match url::Url::parse(endpoint) {
                Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                    issues.push(at, format!("unsupported scheme {:?}: expected http or https", url.scheme()));
                }
                Ok(url) if url.host_str().is_none_or(str::is_empty) => issues.push(at, "endpoint has no host"),
                Ok(_) => {}
                Err(err) => issues.push(at, format!("not a valid URL ({err}): {}", crate::redact_url(endpoint))),
            }
        }
        for (i, exchange) in self.exchanges.iter().enumerate() {
            if exchange.parse::<crate::ExchangeId>().is_err() {
                issues.push(
                    key(prefix, &format!("exchanges[{i}]")),
                    "exchange id must be 1 to 64 characters of a-z, 0-9, '_' or '-'",
                );
            }
        }
        if let Some(name) = &self.srv_name
            && (name.trim().is_empty() || name.len() > 253 || name.contains(char::is_whitespace))
        {
            issues.push(key(prefix, "srv_name"), "must be a DNS name of 1 to 253 characters");
        }
        if self.enabled && self.endpoints.is_empty() && self.srv_name.is_none() {
            issues.push(key(prefix, "endpoints"), "external_service is enabled but names no endpoint (nor srv_name)");
        }
        if self.enabled {
            let needed: &[&str] = match self.auth_method {
                AuthMethod::BearerToken => &["token"],
                AuthMethod::ApiKey => &["api_key"],
                AuthMethod::MutualTls => &["cert_file", "key_file"],
                AuthMethod::None => &[],
            };
            for name in needed {
                if self.credential(name).is_none_or(|s| s.expose_secret().is_empty()) {
                    issues.push(
                        key(prefix, &format!("auth_credentials.{name}")),
                        format!("required by auth_method {:?}", self.auth_method),
                    );
                }
            }
        }
    }
}

fn optional_secret<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<SecretString>, D::Error> {
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Null => Ok(None),
        value => super::lenient_secret(value).map(Some).map_err(serde::de::Error::custom),
    }
}

fn secret_map<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, SecretString>, D::Error> {
    // Read as any value first: serde's own "invalid type" error would quote a
    // string given in place of the table, and that string is most likely the
    // credential itself (found by `environment_errors_never_show_a_secret`).
    let serde_json::Value::Object(raw) = serde_json::Value::deserialize(deserializer)? else {
        return Err(serde::de::Error::custom("auth_credentials must be a table of name = credential"));
    };
    raw.into_iter()
        .map(|(name, value)| {
            let secret: SecretString = match value {
                serde_json::Value::String(s) => s.into(),
                serde_json::Value::Number(n) => n.to_string().into(),
                serde_json::Value::Bool(b) => b.to_string().into(),
                _ => return Err(serde::de::Error::custom(format!("credential {name:?} must be a string"))),
            };
            Ok((name, secret))
        })
        .collect()
}
