//! Configuration of a [`ProxyClient`](crate::ProxyClient).

use std::path::Path;
use std::time::Duration;

use proxybus_shared::breaker::BreakerConfig;
use proxybus_shared::config::{self, ConfigError, EnvSource, PROXY_ENV_PREFIX, ProxySettings};
use proxybus_shared::nats::NatsSettings;
use proxybus_shared::{Encoding, FallbackPolicy, ProxyScheme, Region};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// How a client reaches proxybus and what it does when it cannot.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The bus.
    pub nats: NatsSettings,
    /// Who asks (`cryptofeed-{hostname}-{pid}`); the resolver keeps one cache entry per client.
    pub client_id: String,
    /// Preferred region; `None` lets the resolver choose.
    pub region: Option<Region>,
    /// Embedded proxies for when proxybus is unreachable (the seed's `ProxySettings`).
    pub embedded: ProxySettings,
    /// How long to wait for the resolver (default 2 s).
    pub request_timeout: Duration,
    /// How long to wait for a connection through a proxy (default 10 s).
    pub connect_timeout: Duration,
    /// Encoding of requests (default MessagePack).
    pub encoding: Encoding,
    /// Breaker on the resolver (default: open after 3 failures, probe after 10 s).
    pub breaker: BreakerConfig,
    /// What to do when neither proxybus nor the embedded settings give a proxy
    /// (default `direct_connection`; `fail` returns an error).
    pub fallback_policy: FallbackPolicy,
    /// Feedback events kept while they wait to be published (default 10 000).
    pub feedback_queue_capacity: usize,
    /// Cached leases (default 10 000).
    pub cache_capacity: u64,
    /// Extra root certificates trusted for TLS to `https` proxies (a private
    /// CA of the proxies); webpki's roots are always trusted
    /// (`PROXYBUS_PROXY_CA_FILE`, a PEM bundle).
    pub proxy_ca: Vec<CertificateDer<'static>>,
    /// Proxy schemes this feed can use, sent as `ProxyRequest.proxy_schemes` and
    /// applied to the embedded fallback; empty (the default) means any, as this
    /// library speaks them all.
    pub proxy_schemes: Vec<ProxyScheme>,
    /// Certificates trusted for TLS to targets and to `https` proxies, besides the
    /// public web roots (a private CA such as the exchange lab's; default none;
    /// `PROXYBUS_TLS_CA_FILE`).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// How many times `connect_websocket` and `send_http` try again through a
    /// *different* proxy (`ProxyRequest.exclude_proxy_ids`) after the proxy failed
    /// or the exchange refused its IP (403, 418, 429, 451, a refused handshake;
    /// `proxybus_shared::health::attribute_failure`); default 2, 0 turns retries off.
    /// The exchange's own trouble (5xx) is not retried: another IP would not help.
    pub verdict_retries: u32,
    /// The exchanges' per-IP limits (`proxybus_shared::budget`; default: Binance's
    /// published ones). When a REST answer's usage header (Binance's
    /// `X-MBX-USED-WEIGHT-1M`) says the proxy's IP is past the limit's headroom, the
    /// feed moves to another proxy at once, for the rest of the window, before the
    /// pool's shared budget has caught up. Keep them equal to the pool's `budgets`.
    pub budgets: proxybus_shared::budget::BudgetSettings,
}

impl ClientConfig {
    /// Defaults for a client named `client_id` on the bus `nats`.
    pub fn new(nats: NatsSettings, client_id: impl Into<String>) -> Self {
        Self {
            nats,
            client_id: client_id.into(),
            region: None,
            embedded: ProxySettings::default(),
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(10),
            encoding: Encoding::MsgPack,
            breaker: BreakerConfig {
                failure_threshold: 3,
                recovery_timeout: Duration::from_secs(10),
                half_open_probes: 1,
            },
            fallback_policy: FallbackPolicy::DirectConnection,
            feedback_queue_capacity: 10_000,
            cache_capacity: 10_000,
            proxy_ca: Vec::new(),
            proxy_schemes: Vec::new(),
            extra_roots: Vec::new(),
            verdict_retries: 2,
            budgets: proxybus_shared::budget::BudgetSettings::default(),
        }
    }

    /// Also trusts the certificates of the PEM bundle at `path` (see [`ClientConfig::extra_roots`]).
    ///
    /// # Errors
    /// The file cannot be read or holds no certificate.
    pub fn with_ca_file(mut self, path: &Path) -> Result<Self, ConfigError> {
        let certs = read_pem_certificates(path).map_err(|message| {
            ConfigError::Invalid(vec![config::ConfigIssue {
                location: Some(TLS_CA_FILE_ENV.into()),
                ..config::ConfigIssue::new(TLS_CA_FILE_ENV, message)
            }])
        })?;
        self.extra_roots.extend(certs);
        Ok(self)
    }

    /// From the environment: `NATS_*`, the embedded `CRYPTOFEED_PROXY_*` settings
    /// (overlaying the optional TOML `file`), `PROXYBUS_CLIENT_ID` (default
    /// `proxybus-{hostname}-{pid}`), `PROXYBUS_REGION`, `PROXYBUS_PROXY_CA_FILE` (a PEM bundle
    /// trusted for TLS to `https` proxies) and `PROXYBUS_TLS_CA_FILE` (a PEM bundle of extra
    /// roots trusted for TLS to targets and proxies).
    pub fn from_env(env: &EnvSource, file: Option<&Path>) -> Result<Self, ConfigError> {
        let nats = NatsSettings::from_env(env)?;
        let embedded: ProxySettings = config::load(file, env, PROXY_ENV_PREFIX)?;
        let client_id = env.non_empty("PROXYBUS_CLIENT_ID").map(str::to_owned).unwrap_or_else(default_client_id);
        let mut config = Self::new(nats, client_id);
        config.embedded = embedded;
        if let Some(region) = env.non_empty("PROXYBUS_REGION") {
            config.region = Some(region.parse().map_err(|err: proxybus_shared::SubjectError| {
                ConfigError::Invalid(vec![config::ConfigIssue {
                    location: Some("PROXYBUS_REGION".into()),
                    ..config::ConfigIssue::new("PROXYBUS_REGION", err.to_string())
                }])
            })?);
        }
        if let Some(path) = env.non_empty("PROXYBUS_PROXY_CA_FILE") {
            config.proxy_ca = read_pem_certificates(Path::new(path)).map_err(|message| {
                ConfigError::Invalid(vec![config::ConfigIssue {
                    location: Some("PROXYBUS_PROXY_CA_FILE".into()),
                    ..config::ConfigIssue::new("PROXYBUS_PROXY_CA_FILE", message)
                }])
            })?;
        }
        if let Some(path) = env.non_empty(TLS_CA_FILE_ENV) {
            config = config.with_ca_file(Path::new(path))?;
        }
        Ok(config)
    }
}

/// Every certificate of the PEM file at `path`.
///
/// # Errors
/// The file cannot be read, or holds no certificate.
pub fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    read_pem_certificates_from(&pem).map_err(|err| format!("{}: {err}", path.display()))
}

/// Every certificate of a PEM bundle.
///
/// # Errors
/// The text is not PEM, or holds no certificate.
pub fn read_pem_certificates_from(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|err| format!("not a PEM certificate bundle: {err}"))?;
    if certs.is_empty() {
        return Err("holds no certificate".into());
    }
    Ok(certs)
}

/// The variable naming a PEM bundle of extra trusted roots.
pub const TLS_CA_FILE_ENV: &str = "PROXYBUS_TLS_CA_FILE";

/// `proxybus-{hostname}-{pid}`.
pub(crate) fn default_client_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "host".into());
    format!("proxybus-{host}-{}", std::process::id())
}
