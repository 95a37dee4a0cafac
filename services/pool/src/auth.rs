//! Who may call the API: bearer tokens or API keys compared in constant time, an
//! optional client IP allowlist, and mutual TLS (enforced by the TLS handshake,
//! see [`crate::tls`]).
//!
//! A refused request learns nothing about which part was wrong: a missing
//! header, an unknown scheme and a wrong token all get the same 401 body.
//! Tokens are compared as SHA-256 digests with `subtle`, so neither their
//! content nor their length shows in the time a comparison takes.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::{ApiError, AppState};
use crate::metrics as m;
use crate::settings::PoolSettings;

/// The API's access rules.
#[derive(Clone)]
pub struct Auth {
    token_digests: Vec<[u8; 32]>,
    tokens_required: bool,
    allowlist: Vec<IpNet>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.token_digests.len())
            .field("tokens_required", &self.tokens_required)
            .field("allowlist", &self.allowlist)
            .finish()
    }
}

/// An IP (`127.0.0.1`, a /32 or /128) or a CIDR (`10.0.0.0/8`).
pub(crate) fn parse_net(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>().ok().or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

impl Auth {
    /// The rules of `settings` (validated).
    pub fn from_settings(settings: &PoolSettings) -> Self {
        Self {
            token_digests: settings.auth.tokens.iter().map(|t| digest(t.expose_secret().trim().as_bytes())).collect(),
            tokens_required: settings.tokens_required(),
            allowlist: settings.auth.allowlist.iter().filter_map(|s| parse_net(s)).collect(),
        }
    }

    /// Open to anyone (tests, an in-process demo).
    pub fn open() -> Self {
        Self { token_digests: Vec::new(), tokens_required: false, allowlist: Vec::new() }
    }

    /// Requires one of `tokens`.
    pub fn with_tokens<S: AsRef<str>>(tokens: impl IntoIterator<Item = S>) -> Self {
        Self {
            token_digests: tokens.into_iter().map(|t| digest(t.as_ref().trim().as_bytes())).collect(),
            tokens_required: true,
            allowlist: Vec::new(),
        }
    }

    /// Whether the headers carry an accepted token (`Authorization: Bearer …` or `X-API-Key`).
    pub fn credentials_ok(&self, headers: &HeaderMap) -> bool {
        if !self.tokens_required {
            return true;
        }
        let bearer = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim);
        let mut accepted = subtle::Choice::from(0);
        for presented in [bearer, api_key].into_iter().flatten() {
            let presented = digest(presented.as_bytes());
            for known in &self.token_digests {
                accepted |= presented.ct_eq(known);
            }
        }
        accepted.into()
    }

    /// Whether a client at `ip` may call at all.
    pub fn ip_allowed(&self, ip: Option<IpAddr>) -> bool {
        if self.allowlist.is_empty() {
            return true;
        }
        let Some(ip) = ip else { return false };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        self.allowlist.iter().any(|net| net.contains(&ip))
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn peer_ip(request: &Request) -> Option<IpAddr> {
    request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip())
}

/// Refuses clients outside the allowlist (403).
pub(crate) async fn require_allowed_ip(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !state.auth.ip_allowed(peer_ip(&request)) {
        metrics::counter!(m::AUTH_FAILURES, "reason" => "ip").increment(1);
        return ApiError::forbidden().into_response();
    }
    next.run(request).await
}

/// Refuses requests without an accepted token (401, the same for every cause).
pub(crate) async fn require_credentials(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !state.auth.credentials_ok(request.headers()) {
        metrics::counter!(m::AUTH_FAILURES, "reason" => "credentials").increment(1);
        return ApiError::unauthorized().into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (axum::http::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    #[test]
    fn bearer_or_api_key_with_a_known_token_passes() {
        let auth = Auth::with_tokens(["token-one-123", "token-two-456"]);
        assert!(auth.credentials_ok(&headers(&[("authorization", "Bearer token-two-456")])));
        assert!(auth.credentials_ok(&headers(&[("authorization", "bearer  token-one-123 ")])));
        assert!(auth.credentials_ok(&headers(&[("x-api-key", "token-one-123")])));
        assert!(!auth.credentials_ok(&headers(&[])));
        assert!(!auth.credentials_ok(&headers(&[("authorization", "Basic token-one-123")])));
        assert!(!auth.credentials_ok(&headers(&[("authorization", "Bearer token-one-12")])));
        assert!(!auth.credentials_ok(&headers(&[("x-api-key", "")])));
        assert!(Auth::open().credentials_ok(&headers(&[])));
    }

    #[test]
    fn the_allowlist_takes_ips_and_cidrs_and_mapped_ipv6() {
        let mut auth = Auth::open();
        auth.allowlist = ["10.0.0.0/8", "127.0.0.1"].iter().filter_map(|s| parse_net(s)).collect();
        assert!(auth.ip_allowed(Some("10.1.2.3".parse().unwrap())));
        assert!(auth.ip_allowed(Some("::ffff:127.0.0.1".parse().unwrap())));
        assert!(!auth.ip_allowed(Some("127.0.0.2".parse().unwrap())));
        assert!(!auth.ip_allowed(None), "an unknown peer is not on the list");
    }
}
