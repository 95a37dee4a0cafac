//! Connecting through a lease, and reporting how it went: websockets
//! ([`ProxyClient::connect_websocket`]), single HTTP requests over the client's own
//! tunnel ([`ProxyClient::send_http`]), a `reqwest::Client` through the proxy
//! ([`ProxyClient::http_client`]), and the reports of responses, failures and
//! closes; failures about the proxy are retried through another one.

use std::time::{Duration, Instant};

use proxybus_shared::health::{self, Attribution};
use proxybus_shared::{ConnectionType, ErrorKind, ExchangeId, FeedbackPhase, ProxyId, ProxyScheme, ProxyUrl};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;

use crate::client::{ClientError, ProxyClient};
use crate::lease::{ProxyLease, redact_details};
use crate::leasing::LeaseOptions;
use crate::tunnel::{self, BoxedStream, ConnectError, Target};

/// A websocket opened through a leased proxy.
#[derive(Debug)]
pub struct ProxiedWebSocket {
    /// The websocket.
    pub stream: WebSocketStream<BoxedStream>,
    /// The lease it went through (report `disconnected` with it when it closes).
    pub lease: ProxyLease,
}

impl ProxyClient {
    /// Opens a websocket to `url` through a proxy leased for `exchange`, and
    /// reports `connect_start`, then `connected` with the latency or `failed`
    /// with the classified `error_kind`. A lease the failure is about (the proxy's
    /// fault or the exchange's verdict on its IP, `proxybus_shared::health`) is also
    /// dropped from the cache and, up to `ClientConfig::verdict_retries` times, the
    /// connection is tried again through a different proxy (the failed ones sent as
    /// `exclude_proxy_ids`); the exchange's own trouble (a 5xx) keeps the lease and
    /// is not retried.
    ///
    /// # Errors
    /// The last attempt's [`ClientError::Connect`], or the lease's error when no
    /// further proxy could be had (nothing left and the policy forbids a direct
    /// connection).
    pub async fn connect_websocket(&self, url: &str, exchange: &ExchangeId) -> Result<ProxiedWebSocket, ClientError> {
        let target_url: url::Url = url.parse().map_err(|err| ClientError::InvalidUrl(format!("{err}")))?;
        let target = Target::from_url(&target_url)?;
        let mut options = LeaseOptions::default();
        let mut retries_left = self.inner.config.verdict_retries;
        let mut last_error = None;
        loop {
            let lease = self.get_proxy_with(exchange, ConnectionType::Websocket, &options).await?;
            if let Some(err) = last_error.take()
                && lease.proxy_id.as_ref().is_some_and(|id| options.exclude_proxy_ids.contains(id))
            {
                return Err(err);
            }
            match self.open_websocket(url, &target, lease).await {
                Ok(ws) => return Ok(ws),
                Err((err, failed)) => {
                    let Some(failed) = failed.filter(|_| retries_left > 0) else { return Err(err) };
                    retries_left -= 1;
                    tracing::info!(%exchange, proxy_id = %failed, error = %err, "retrying through another proxy");
                    metrics::counter!("proxybus_client_retries_total", "connection_type" => "websocket").increment(1);
                    options.exclude_proxy_ids.push(failed);
                    if let ClientError::Connect(failure) = &err {
                        self.note_retried(Some(failure.kind));
                    }
                    last_error = Some(err);
                }
            }
        }
    }

    /// One websocket attempt through `lease`. On failure: the error, and the
    /// lease's proxy when the failure is about it (worth another proxy).
    async fn open_websocket(
        &self,
        url: &str,
        target: &Target,
        lease: ProxyLease,
    ) -> Result<ProxiedWebSocket, (ClientError, Option<ProxyId>)> {
        let client_id = self.client_id().to_owned();
        if let Some(event) = lease.feedback(&client_id, FeedbackPhase::ConnectStart, true) {
            self.report(event);
        }
        let started = Instant::now();
        let result = async {
            let tls = self.inner.tls.as_ref().map_err(|err| ConnectError::new(ErrorKind::Tls, err.clone()))?;
            let stream = tunnel::open(lease.proxy.as_ref(), target, tls, self.inner.config.connect_timeout).await?;
            let handshake = tokio_tungstenite::client_async_with_config(url, stream, None);
            match tokio::time::timeout(self.inner.config.connect_timeout, handshake).await {
                Err(_) => Err(ConnectError::new(ErrorKind::Timeout, "websocket handshake timed out")),
                Ok(Ok((stream, _response))) => Ok(stream),
                Ok(Err(err)) => Err(classify_ws(err)),
            }
        }
        .await;
        let latency = started.elapsed();
        match result {
            Ok(stream) => {
                if let Some(mut event) = lease.feedback(&client_id, FeedbackPhase::Connected, true) {
                    event.latency_ms = Some(latency.as_millis() as u64);
                    self.report(event);
                }
                Ok(ProxiedWebSocket { stream, lease })
            }
            Err(err) => {
                if let Some(mut event) = lease.failure(&client_id, err.kind, &err.message, latency) {
                    event.status_code = err.status_code;
                    event.retry_after_seconds = err.retry_after_seconds;
                    self.report(event);
                }
                // Drop the lease when the failure is about it (docs/health.md): the
                // exchange's own trouble says nothing against this proxy.
                let about_the_lease = is_about_the_proxy(err.kind, err.status_code);
                if about_the_lease {
                    self.invalidate(&lease).await;
                }
                let failed = lease.proxy_id.filter(|_| about_the_lease);
                let err = ClientError::Connect(ConnectError {
                    message: redact_details(&err.message, lease.proxy.as_ref()),
                    ..err
                });
                Err((err, failed))
            }
        }
    }

    /// Reports that a connection made with `lease` closed (releases it for
    /// `least_connections` pools).
    pub fn report_disconnected(&self, lease: &ProxyLease) {
        if let Some(event) = lease.feedback(self.client_id(), FeedbackPhase::Disconnected, true) {
            self.report(event);
        }
    }

    /// Reports that the peer closed a websocket made with `lease`, with its close
    /// code (`None`: the connection dropped without a close frame, as 1006). A
    /// normal close (1000) is a clean `disconnected`; any other is a failed
    /// `disconnected` with `error_kind: ws_closed` and `ws_close_code`, which the
    /// health model attributes by code (`proxybus_shared::health::attribute_close`:
    /// 1008/1013 bar the proxy for this exchange, 1001/1011/1012/1014 cost it
    /// nothing, a dropped tunnel counts against it).
    pub fn report_closed(&self, lease: &ProxyLease, close_code: Option<u16>) {
        if close_code == Some(proxybus_shared::health::close_code::NORMAL) {
            return self.report_disconnected(lease);
        }
        if let Some(mut event) = lease.feedback(self.client_id(), FeedbackPhase::Disconnected, false) {
            event.error_kind = Some(ErrorKind::WsClosed);
            event.ws_close_code = Some(close_code.unwrap_or(proxybus_shared::health::close_code::ABNORMAL));
            self.report(event);
        }
    }

    /// A `reqwest::Client` that sends everything through a proxy leased for
    /// `exchange` (or directly when the lease says so), with the lease.
    ///
    /// Every scheme works as in websockets: `socks5` and `socks4` resolve the
    /// target here, `socks5h` and `socks4a` let the proxy resolve it, `https`
    /// speaks TLS to the proxy and trusts `ClientConfig::proxy_ca` (which this
    /// client then also trusts for targets: reqwest has one trust store).
    /// Credentials are decoded once by [`ProxyUrl`] and handed to reqwest as
    /// such. reqwest sends no SOCKS4 user id, so a `socks4`/`socks4a` proxy with
    /// one is refused here ([`ClientError::Http`]); [`send_http`](Self::send_http)
    /// and websockets carry it.
    pub async fn http_client(&self, exchange: &ExchangeId) -> Result<(reqwest::Client, ProxyLease), ClientError> {
        let lease = self.get_proxy(exchange, ConnectionType::Http, None).await?;
        proxybus_shared::http::install_crypto_provider();
        let mut builder = reqwest::Client::builder().connect_timeout(self.inner.config.connect_timeout);
        if !self.inner.config.extra_roots.is_empty() {
            let roots = self.inner.config.extra_roots.iter().filter_map(|der| reqwest::Certificate::from_der(der).ok());
            builder = builder.tls_certs_merge(roots);
        }
        builder = match &lease.proxy {
            None => builder.no_proxy(),
            Some(proxy) => builder.proxy(reqwest_proxy(proxy)?),
        };
        if !self.inner.config.proxy_ca.is_empty() {
            let certs = self
                .inner
                .config
                .proxy_ca
                .iter()
                .map(|der| reqwest::Certificate::from_der(der))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| ClientError::Http(format!("proxy CA certificate: {err}")))?;
            builder = builder.tls_certs_merge(certs);
        }
        let client =
            builder.build().map_err(|err| ClientError::Http(redact_details(&err.to_string(), lease.proxy.as_ref())))?;
        Ok((client, lease))
    }

    /// Sends one HTTP request to `exchange`'s REST API through a proxy leased for
    /// it, over the same tunnel as [`connect_websocket`](Self::connect_websocket):
    /// every scheme, a SOCKS4 user id included (which [`http_client`](Self::http_client)
    /// cannot send). `request` has an absolute `http://` or `https://` URI; it goes
    /// out as HTTP/1.1 on a connection of its own (`Connection: close`), and the
    /// whole body comes back. The outcome is reported (as by
    /// [`report_response`](Self::report_response), or a `failed` event when no
    /// response came), and a failed lease is dropped from the cache.
    ///
    /// An idempotent request (`GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE`; RFC 9110
    /// §9.2.2) that failed through the proxy's fault or got the exchange's verdict
    /// on the proxy's IP (403, 418, 429, 451) is sent again through a different
    /// proxy, up to `ClientConfig::verdict_retries` times; the last answer is
    /// returned. Other methods are sent once.
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`] for a URI that is not absolute http(s),
    /// [`ClientError::Connect`] when the tunnel or the exchange failed.
    pub async fn send_http(
        &self,
        exchange: &ExchangeId,
        request: http::Request<bytes::Bytes>,
    ) -> Result<(http::Response<bytes::Bytes>, ProxyLease), ClientError> {
        let target_url: url::Url =
            request.uri().to_string().parse().map_err(|err| ClientError::InvalidUrl(format!("{err}")))?;
        let target = Target::from_url(&target_url)?;
        if !matches!(target_url.scheme(), "http" | "https") {
            return Err(ClientError::InvalidUrl(format!("{} is not an http(s) URL", target_url.scheme())));
        }
        let origin_form = match target_url.query() {
            Some(query) => format!("{}?{query}", target_url.path()),
            None => target_url.path().to_owned(),
        };
        let host = request.uri().authority().map(|a| a.as_str().to_owned()).unwrap_or_else(|| target.host.clone());
        let (mut parts, body) = request.into_parts();
        parts.uri =
            origin_form.parse().map_err(|err: http::uri::InvalidUri| ClientError::InvalidUrl(err.to_string()))?;
        parts.headers.insert(http::header::HOST, host.parse().map_err(|_| ClientError::InvalidUrl("bad host".into()))?);
        parts.headers.insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        let idempotent = parts.method.is_idempotent();

        let mut options = LeaseOptions::default();
        let mut retries_left = if idempotent { self.inner.config.verdict_retries } else { 0 };
        let mut last_outcome = None;
        loop {
            let mut request = http::Request::new(body.clone());
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = parts.uri.clone();
            *request.version_mut() = parts.version;
            *request.headers_mut() = parts.headers.clone();
            let lease = self.get_proxy_with(exchange, ConnectionType::Http, &options).await?;
            if let Some(outcome) = last_outcome.take()
                && lease.proxy_id.as_ref().is_some_and(|id| options.exclude_proxy_ids.contains(id))
            {
                return outcome;
            }
            let (outcome, failed) = self.exchange_http(&target, request, lease).await;
            match failed.filter(|_| retries_left > 0) {
                None => return outcome,
                Some(failed) => {
                    self.note_retried(match &outcome {
                        Ok((response, _)) => ErrorKind::from_status(response.status().as_u16()),
                        Err(ClientError::Connect(failure)) => Some(failure.kind),
                        Err(_) => None,
                    });
                    last_outcome = Some(outcome);
                    retries_left -= 1;
                    tracing::info!(%exchange, proxy_id = %failed, "retrying the request through another proxy");
                    metrics::counter!("proxybus_client_retries_total", "connection_type" => "http").increment(1);
                    options.exclude_proxy_ids.push(failed);
                }
            }
        }
    }

    /// One HTTP exchange through `lease`, reported; with the lease's proxy when
    /// the outcome is about it (its fault or the exchange's verdict on its IP).
    async fn exchange_http(
        &self,
        target: &Target,
        request: http::Request<bytes::Bytes>,
        lease: ProxyLease,
    ) -> (Result<(http::Response<bytes::Bytes>, ProxyLease), ClientError>, Option<ProxyId>) {
        use http_body_util::BodyExt;
        let started = Instant::now();
        let timeout = self.inner.config.connect_timeout;
        let exchanged = async {
            let tls = self.inner.tls.as_ref().map_err(|err| ConnectError::new(ErrorKind::Tls, err.clone()))?;
            let stream = tunnel::open(lease.proxy.as_ref(), target, tls, timeout).await?;
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|err| ConnectError::new(ErrorKind::Other, format!("http handshake: {err}")))?;
            tokio::spawn(connection);
            let response = sender
                .send_request(request.map(http_body_util::Full::new))
                .await
                .map_err(|err| ConnectError::new(ErrorKind::Other, format!("http request: {err}")))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|err| ConnectError::new(ErrorKind::Other, format!("http body: {err}")))?
                .to_bytes();
            Ok::<_, ConnectError>(http::Response::from_parts(parts, body))
        };
        match tokio::time::timeout(timeout * 3, exchanged).await {
            Ok(Ok(response)) => {
                let status = response.status().as_u16();
                self.report_response(&lease, status, response.headers(), started.elapsed());
                let verdict = status >= 400 && is_about_the_proxy(ErrorKind::Other, Some(status));
                if verdict {
                    self.invalidate(&lease).await;
                }
                let failed = lease.proxy_id.filter(|_| verdict);
                (Ok((response, lease)), failed)
            }
            outcome => {
                let err = match outcome {
                    Ok(Err(err)) => err,
                    _ => ConnectError::new(ErrorKind::Timeout, "no response in time"),
                };
                if let Some(event) = lease.failure(self.client_id(), err.kind, &err.message, started.elapsed()) {
                    self.report(event);
                }
                self.invalidate(&lease).await;
                let failed = lease.proxy_id.filter(|_| is_about_the_proxy(err.kind, err.status_code));
                let err = ClientError::Connect(ConnectError {
                    message: redact_details(&err.message, lease.proxy.as_ref()),
                    ..err
                });
                (Err(err), failed)
            }
        }
    }

    /// Reports the outcome of an HTTP response received through `lease`:
    /// success below 400, else the status's `error_kind` and `Retry-After`; the
    /// exchange's usage headers (`X-MBX-USED-WEIGHT-1M` …) go along in
    /// `usage_headers`. A used weight past the headroom of the exchange's limit
    /// (`ClientConfig::budgets`) makes this feed's next leases avoid the proxy for
    /// the rest of the window.
    pub fn report_response(
        &self,
        lease: &ProxyLease,
        status: u16,
        headers: &reqwest::header::HeaderMap,
        latency: Duration,
    ) {
        let success = status < 400;
        let Some(mut event) = lease.feedback(self.client_id(), FeedbackPhase::Request, success) else { return };
        event.status_code = Some(status);
        event.latency_ms = Some(latency.as_millis() as u64);
        event.usage_headers = proxybus_shared::budget::usage_headers(
            headers.iter().filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))),
        );
        if let Some(limits) = self.inner.config.budgets.limits(&lease.exchange)
            && let Some(used) = limits.reported_weight(&event.usage_headers)
            && limits.weight_near_limit(used)
            && let Some(id) = &lease.proxy_id
        {
            // Move before the exchange answers 429: until the window ends, this
            // proxy is excluded from this feed's next leases (the pool learns it
            // from the feedback, for every other feed).
            let window = Duration::from_secs(limits.request_window_seconds);
            tracing::info!(exchange = %lease.exchange, proxy_id = %id, used, limit = limits.request_weight_limit, "proxy near the exchange's weight limit; moving to another");
            metrics::counter!("proxybus_client_budget_moves_total").increment(1);
            self.avoid_until(&lease.exchange, id, Instant::now() + window);
        }
        if !success {
            event.error_kind = ErrorKind::from_status(status);
            event.retry_after_seconds =
                headers.get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        }
        self.report(event);
    }

    /// Reports a request through `lease` that got no response at all.
    pub fn report_http_error(&self, lease: &ProxyLease, err: &reqwest::Error, latency: Duration) {
        let kind = http_error_kind(err);
        if let Some(event) = lease.failure(self.client_id(), kind, &err.to_string(), latency) {
            self.report(event);
        }
    }

    /// Failures that `connect_websocket` and `send_http` retried through another
    /// proxy (so the caller never saw them), by kind, since the client was made.
    pub fn retried_failures(&self) -> std::collections::BTreeMap<ErrorKind, u64> {
        self.inner.retried.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn note_retried(&self, kind: Option<ErrorKind>) {
        if let Some(kind) = kind {
            *self.inner.retried.lock().unwrap_or_else(|p| p.into_inner()).entry(kind).or_default() += 1;
        }
    }
}

/// The `error_kind` of a reqwest request that got no response: `timeout`; `proxy_auth`
/// when the proxy refused its login — a SOCKS login refused (hyper-util's
/// `SocksConnect(V5(Auth(Failed)))`, or tokio-socks' error) or a 407 to `CONNECT` ("Proxy
/// Authentication Required") — else `refused` for a failed connection, `other` for the rest.
/// A refused login used to be reported as `refused`, so the demo's credential-refusing SOCKS
/// proxy showed `proxy_auth=0` in the feeds' counts. Public so that a feed counting its own
/// failures names them as the feedback it reports does ([`ProxyClient::report_http_error`]).
pub fn http_error_kind(err: &reqwest::Error) -> ErrorKind {
    if err.is_timeout() {
        return ErrorKind::Timeout;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = cause {
        if let Some(socks) = current.downcast_ref::<tokio_socks::Error>() {
            return crate::tunnel::classify_socks(socks);
        }
        // hyper-util's proxy errors are private types: read by their text and their Debug
        // form (`SocksConnect(V5(Auth(Failed)))`, `TunnelProxyAuthRequired`).
        let text = format!("{current} {current:?}").to_ascii_lowercase();
        if text.contains("proxy authentication required")
            || text.contains("proxyauthrequired")
            || (text.contains("socks") && (text.contains("auth(") || text.contains("authentication")))
        {
            return ErrorKind::ProxyAuth;
        }
        cause = current.source();
    }
    if err.is_connect() { ErrorKind::Refused } else { ErrorKind::Other }
}

/// Whether a failure is about the proxy used (its fault, or the exchange's
/// verdict on its IP), by the one rule of `proxybus_shared::health`: then the
/// lease is dropped and another proxy is worth a try.
fn is_about_the_proxy(kind: ErrorKind, status_code: Option<u16>) -> bool {
    matches!(
        health::attribute_failure(Some(kind), status_code, None),
        Attribution::ProxyFault | Attribution::ExchangeVerdict(_)
    )
}

/// reqwest's proxy for `proxy`: the URL without credentials, which are given
/// decoded (reqwest would otherwise decode what it is given once more).
fn reqwest_proxy(proxy: &ProxyUrl) -> Result<reqwest::Proxy, ClientError> {
    let mut built = reqwest::Proxy::all(proxy.without_credentials())
        .map_err(|err| ClientError::Http(redact_details(&err.to_string(), Some(proxy))))?;
    if let Some((user, password)) = proxy.credentials() {
        if matches!(proxy.scheme(), ProxyScheme::Socks4 | ProxyScheme::Socks4a) {
            return Err(ClientError::Http(format!(
                "{}: reqwest sends no SOCKS4 user id; use ProxyClient::send_http for REST through this proxy",
                proxy.redacted()
            )));
        }
        built = built.basic_auth(user, password);
    }
    Ok(built)
}

/// `Retry-After` in seconds (the HTTP-date form is converted against now).
fn parse_retry_after(value: &str) -> Option<u64> {
    let value = value.trim();
    value.parse::<u64>().ok().or_else(|| {
        let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
        Some((at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds().max(0) as u64)
    })
}

/// The error kind of a websocket handshake the exchange answered with `status`:
/// 403/418/429/451 and 5xx as for any HTTP answer, any other refusal
/// `ws_handshake_refused` (an exchange's verdict, see `docs/health.md`).
fn handshake_error_kind(status: u16) -> ErrorKind {
    match ErrorKind::from_status(status) {
        Some(ErrorKind::Other) | None => ErrorKind::WsHandshakeRefused,
        Some(kind) => kind,
    }
}

fn classify_ws(err: tungstenite::Error) -> ConnectError {
    match err {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            let retry_after =
                response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
            ConnectError {
                kind: handshake_error_kind(status),
                message: format!("websocket handshake answered {status}"),
                status_code: Some(status),
                retry_after_seconds: retry_after,
            }
        }
        tungstenite::Error::Io(io) => ConnectError::from_io("websocket", &io),
        tungstenite::Error::Tls(tls) => ConnectError::new(ErrorKind::Tls, tls.to_string()),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            ConnectError::new(ErrorKind::WsClosed, "websocket closed during the handshake")
        }
        other => ConnectError::new(ErrorKind::Other, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// reqwest through real test proxies whose login is refused: the kind is `proxy_auth`,
    /// through a SOCKS5 proxy (a refused username/password) and through an HTTP proxy (a
    /// 407 to `CONNECT`, for an https target); a proxy that is not there is `refused`.
    #[tokio::test]
    async fn a_refused_proxy_login_through_reqwest_is_proxy_auth() {
        use proxybus_tests::{ProxyCredentials, TestProxy};
        proxybus_shared::http::install_crypto_provider();
        let login = Some(ProxyCredentials::new("feed", "right"));
        let socks = TestProxy::socks5(login.clone()).await.unwrap();
        let http = TestProxy::http_connect(login).await.unwrap();
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        for (proxy, expected) in [
            (socks.url_with("feed", "wrong"), ErrorKind::ProxyAuth),
            (socks.url_as("socks5h").replace("right", "wrong"), ErrorKind::ProxyAuth),
            (http.url_with("feed", "wrong"), ErrorKind::ProxyAuth),
            (format!("http://{closed}"), ErrorKind::Refused),
        ] {
            let client = reqwest::Client::builder().proxy(reqwest::Proxy::all(&proxy).unwrap()).build().unwrap();
            let err = client.get("https://127.0.0.1:9/api/v3/ping").send().await.unwrap_err();
            assert_eq!(http_error_kind(&err), expected, "{proxy}: {err:?}");
        }
    }

    #[test]
    fn a_refused_handshake_is_the_exchanges_verdict() {
        assert_eq!(handshake_error_kind(400), ErrorKind::WsHandshakeRefused);
        assert_eq!(handshake_error_kind(401), ErrorKind::WsHandshakeRefused);
        assert_eq!(handshake_error_kind(200), ErrorKind::WsHandshakeRefused, "no 101 is a refusal too");
        assert_eq!(handshake_error_kind(403), ErrorKind::Http403);
        assert_eq!(handshake_error_kind(429), ErrorKind::Http429);
        assert_eq!(handshake_error_kind(503), ErrorKind::Http5xx);
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(120));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(0), "a past date means now");
        assert_eq!(parse_retry_after("soon"), None);
    }
}
