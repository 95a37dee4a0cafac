//! The HTTP client proxybus parts use to talk to proxy services: connection
//! pooling, HTTP/2 when the server offers it, rustls with certificate validation
//! on (only `external_service.insecure_skip_tls_verify = true` turns it off, with
//! a warning each time a client is built, i.e. at every start), optional extra
//! trusted roots and client certificate (mutual TLS), and the seed's
//! `ProxyServiceAuth` headers.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use secrecy::ExposeSecret;

use crate::config::{AuthMethod, ExternalProxyServiceConfig};

/// The proxy service's HTTP API (docs/contract.md, "Proxy service HTTP API"): the one
/// place its paths are written. The reference pool serves them; the resolver, the
/// aggregator, the lab and the benchmarks call them.
pub mod paths {
    /// `POST`: a `ProxyRequest` in, a `ProxyResponse` out (the resolver's upstream call).
    pub const REQUEST: &str = "/api/v1/proxy/request";
    /// `POST`: a `ProxyFeedback` in (feedback over HTTP, for parts without NATS).
    pub const FEEDBACK: &str = "/api/v1/proxy/feedback";
    /// `POST`: a `HealthBatch` in (the aggregator's push-back of changed health).
    pub const HEALTH: &str = "/api/v1/proxy/health";
    /// `GET`: the pool's proxies with their health (`?region=` filters), credentials redacted.
    pub const PROXIES: &str = "/api/v1/proxies";
    /// `GET`: Prometheus text exposition.
    pub const METRICS: &str = "/metrics";
    /// `GET`: liveness, `ok` with 200 while the process serves.
    pub const HEALTHZ: &str = "/healthz";
}

/// Header of the proxy service's HTTP API (schemas/openapi.yaml, `X-Request-Id`): the
/// request's id, sent by the resolver with a `ProxyRequest` and echoed by the pool on
/// its answer (HTTP header names are case-insensitive; written lower-case, as HTTP/2 sends them).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A certificate, key or credential is not usable.
    #[error("invalid {what}: {message}")]
    Invalid {
        /// What was invalid (`ca_file`, `client certificate`, `token` …).
        what: &'static str,
        /// Why; never contains the secret.
        message: String,
    },
}

/// TLS material beyond the system's trusted roots.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// PEM file of extra root certificates to trust (a private CA).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and its private key, for mutual TLS.
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    /// The TLS files an `ExternalProxyServiceConfig` names: `auth_credentials.ca_file`,
    /// and for `mutual_tls` `auth_credentials.cert_file` / `key_file`.
    pub fn from_service_config(config: &ExternalProxyServiceConfig) -> Self {
        let path = |name: &str| config.credential(name).map(|s| PathBuf::from(s.expose_secret()));
        let client_identity = match (config.auth_method, path("cert_file"), path("key_file")) {
            (AuthMethod::MutualTls, Some(cert), Some(key)) => Some((cert, key)),
            _ => None,
        };
        Self { ca_file: path("ca_file"), client_identity }
    }
}

/// Installs ring as the process's rustls crypto provider (once; later calls do nothing).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The authentication headers of `config`, marked sensitive so that they are
/// never printed by `Debug`.
pub fn auth_headers(config: &ExternalProxyServiceConfig) -> Result<HeaderMap, HttpClientError> {
    let mut headers = HeaderMap::new();
    let secret = |name: &'static str| -> Result<HeaderValue, HttpClientError> {
        let value = config
            .credential(name)
            .map(|s| s.expose_secret().to_owned())
            .ok_or(HttpClientError::Invalid { what: name, message: "missing".into() })?;
        let value = if name == "token" { format!("Bearer {value}") } else { value };
        let mut header = HeaderValue::from_str(&value)
            .map_err(|_| HttpClientError::Invalid { what: name, message: "not a valid header value".into() })?;
        header.set_sensitive(true);
        Ok(header)
    };
    match config.auth_method {
        AuthMethod::BearerToken => {
            headers.insert(reqwest::header::AUTHORIZATION, secret("token")?);
        }
        AuthMethod::ApiKey => {
            headers.insert("x-api-key", secret("api_key")?);
        }
        AuthMethod::MutualTls | AuthMethod::None => {}
    }
    Ok(headers)
}

/// A pooled client for the proxy services of `config`: its timeout, auth headers
/// as defaults, certificate validation on, and the extra TLS material of `tls`.
pub fn proxy_service_client(
    config: &ExternalProxyServiceConfig,
    tls: &TlsFiles,
) -> Result<reqwest::Client, HttpClientError> {
    install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(config.timeout_seconds))
        .connect_timeout(Duration::from_secs(config.timeout_seconds.min(5)))
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .no_proxy()
        .default_headers(auth_headers(config)?)
        .user_agent(concat!("proxybus/", env!("CARGO_PKG_VERSION")));
    let read =
        |path: &PathBuf| std::fs::read(path).map_err(|source| HttpClientError::Read { path: path.clone(), source });
    if let Some(ca) = &tls.ca_file {
        let certs = reqwest::Certificate::from_pem_bundle(&read(ca)?)
            .map_err(|err| HttpClientError::Invalid { what: "ca_file", message: err.to_string() })?;
        builder = builder.tls_certs_merge(certs);
    }
    if config.insecure_skip_tls_verify {
        tracing::warn!(
            setting = "external_service.insecure_skip_tls_verify",
            "TLS certificates of proxy services are NOT validated: anyone on the path can read the proxies and \
             their credentials; configure auth_credentials.ca_file instead"
        );
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    if let Some((cert, key)) = &tls.client_identity {
        let mut pem = read(cert)?;
        pem.push(b'\n');
        pem.extend(read(key)?);
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|err| HttpClientError::Invalid { what: "client certificate", message: err.to_string() })?;
        builder = builder.identity(identity);
    }
    builder.build().map_err(|err| HttpClientError::Invalid { what: "http client", message: err.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(method: AuthMethod, creds: &[(&str, &str)]) -> ExternalProxyServiceConfig {
        ExternalProxyServiceConfig {
            auth_method: method,
            auth_credentials: creds.iter().map(|(k, v)| (k.to_string(), v.to_string().into())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn auth_headers_follow_the_method_and_are_sensitive() {
        let bearer = auth_headers(&service(AuthMethod::BearerToken, &[("token", "tok")])).unwrap();
        assert_eq!(bearer["authorization"], "Bearer tok");
        assert!(bearer["authorization"].is_sensitive());
        assert!(!format!("{bearer:?}").contains("tok"), "{bearer:?}");
        let key = auth_headers(&service(AuthMethod::ApiKey, &[("api_key", "k1")])).unwrap();
        assert_eq!(key["x-api-key"], "k1");
        assert!(auth_headers(&service(AuthMethod::None, &[])).unwrap().is_empty());
        let err = auth_headers(&service(AuthMethod::BearerToken, &[])).unwrap_err();
        assert!(matches!(err, HttpClientError::Invalid { what: "token", .. }));
        let err = auth_headers(&service(AuthMethod::ApiKey, &[("api_key", "bad\nvalue")])).unwrap_err();
        assert!(!err.to_string().contains("bad"), "{err}");
    }

    #[test]
    fn a_missing_ca_file_is_reported_with_its_path() {
        let tls = TlsFiles { ca_file: Some("/nonexistent/ca.pem".into()), client_identity: None };
        let err = proxy_service_client(&service(AuthMethod::None, &[]), &tls).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
