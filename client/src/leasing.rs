//! Leasing: [`ProxyClient::get_proxy`] and [`ProxyClient::get_proxy_with`] — the
//! local cache (each lease for its TTL), the breaker on the resolver, the request
//! over NATS, and the fallback chain (embedded settings, then a direct connection
//! unless the policy is `fail`); proxies near an exchange's limit are avoided.

use std::time::{Duration, Instant};

use moka::Expiry;
use proxybus_shared::{
    ConnectionType, ErrorReply, ExchangeId, FallbackPolicy, ProxyId, ProxyRequest, ProxyResponse, ProxyUrl, Region,
    ResponseSource, subject,
};

use crate::client::{ClientError, ProxyClient};
use crate::lease::ProxyLease;

/// What a lease is asked for beyond its exchange and connection type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseOptions {
    /// Preferred region; `None`: the client's `ClientConfig::region`, else the resolver's.
    pub region: Option<Region>,
    /// Proxies not to be given (`ProxyRequest.exclude_proxy_ids`): a retry through
    /// another proxy. Such a request skips the local cache; its answer replaces the
    /// cached lease. At most `ProxyRequest::MAX_EXCLUDED`.
    pub exclude_proxy_ids: Vec<ProxyId>,
    /// A logical session that keeps its proxy while it stays healthy, until the
    /// pool's rotation plan moves it (`ProxyRequest.session_key`); cached apart
    /// from the feed's other leases. 1 to 128 printable characters.
    pub session_key: Option<String>,
}

/// Which cached lease a request may reuse: one per exchange, connection type,
/// region and session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    exchange: ExchangeId,
    connection_type: ConnectionType,
    region: Option<Region>,
    session_key: Option<String>,
}

/// Each cached lease lives for its own TTL.
pub(crate) struct LeaseExpiry;

impl Expiry<CacheKey, ProxyLease> for LeaseExpiry {
    fn expire_after_create(&self, _: &CacheKey, lease: &ProxyLease, _: std::time::Instant) -> Option<Duration> {
        Some(lease.ttl)
    }
}

impl ProxyClient {
    /// A proxy for `exchange`: from the local cache within its TTL, else from the
    /// resolver, else (bus unreachable, silent or breaker open) from the embedded
    /// settings, else a direct connection unless the policy is `fail`.
    pub async fn get_proxy(
        &self,
        exchange: &ExchangeId,
        connection_type: ConnectionType,
        region: Option<&Region>,
    ) -> Result<ProxyLease, ClientError> {
        let options = LeaseOptions { region: region.cloned(), ..LeaseOptions::default() };
        self.get_proxy_with(exchange, connection_type, &options).await
    }

    /// As [`get_proxy`](Self::get_proxy), with [`LeaseOptions`]: a lease that is none
    /// of `options.exclude_proxy_ids` (from the resolver, never the local cache, or
    /// from the embedded settings without them), or the fallback policy's answer
    /// when none is left (a direct connection, or an error when the policy is `fail`
    /// or the resolver says `no_proxy_available`). A resolver older than
    /// `exclude_proxy_ids` may still answer an excluded proxy: that lease is
    /// returned uncached, and the retries of `connect_websocket` / `send_http` stop at it.
    ///
    /// # Errors
    /// [`ClientError::Resolver`] when the resolver refuses, [`ClientError::Unavailable`]
    /// when nothing is left and the policy forbids a direct connection.
    pub async fn get_proxy_with(
        &self,
        exchange: &ExchangeId,
        connection_type: ConnectionType,
        options: &LeaseOptions,
    ) -> Result<ProxyLease, ClientError> {
        let region = options.region.clone().or_else(|| self.inner.config.region.clone());
        let key = CacheKey {
            exchange: exchange.clone(),
            connection_type,
            region: region.clone(),
            session_key: options.session_key.clone(),
        };
        let near_limit = self.near_limit(exchange);
        if options.exclude_proxy_ids.is_empty()
            && let Some(mut lease) = self.inner.cache.get(&key).await
            && !lease.proxy_id.as_ref().is_some_and(|id| near_limit.contains(id))
        {
            lease.source = ResponseSource::Cache;
            metrics::counter!("proxybus_client_requests_total", "source" => "cache").increment(1);
            return Ok(lease);
        }
        // Proxies near the exchange's limit are excluded like refused ones; the
        // answer is cached all the same (it is an ordinary lease of this feed).
        let mut excluded = options.exclude_proxy_ids.clone();
        excluded.extend(near_limit.into_iter().filter(|id| !options.exclude_proxy_ids.contains(id)));
        let excluded = &excluded;
        let resolver_error = match self.inner.breaker.try_acquire() {
            Err(open) => open.to_string(),
            Ok(permit) => {
                match self.ask_resolver(exchange, connection_type, region.as_ref(), excluded, options).await {
                    Ok(Ok(lease)) => {
                        permit.success();
                        if lease.proxy_id.as_ref().is_some_and(|id| options.exclude_proxy_ids.contains(id)) {
                            // A resolver older than `exclude_proxy_ids` ignores it. Its answer
                            // is returned (the caller stops retrying) but not cached.
                            tracing::warn!(%exchange, proxy_id = ?lease.proxy_id, "the resolver answered an excluded proxy (older than exclude_proxy_ids?)");
                            return Ok(lease);
                        }
                        self.inner.cache.insert(key, lease.clone()).await;
                        metrics::counter!("proxybus_client_requests_total", "source" => "resolver").increment(1);
                        return Ok(lease);
                    }
                    Ok(Err(reply)) => {
                        // The resolver is up and said no: not a fault of the bus.
                        permit.success();
                        return Err(ClientError::Resolver(reply));
                    }
                    Err(reason) => {
                        permit.failure();
                        reason
                    }
                }
            }
        };
        tracing::warn!(exchange = %exchange, connection_type = %connection_type, reason = %resolver_error, "resolver unavailable; using fallback");
        self.fallback(exchange, connection_type, region, excluded, &resolver_error)
            .map(|lease| ProxyLease { session_key: options.session_key.clone(), ..lease })
    }

    /// Forgets the cached lease for this exchange, connection type and region,
    /// so that the next `get_proxy` asks again (after the proxy failed).
    pub async fn invalidate(&self, lease: &ProxyLease) {
        let key = CacheKey {
            exchange: lease.exchange.clone(),
            connection_type: lease.connection_type,
            region: lease.region.clone(),
            session_key: lease.session_key.clone(),
        };
        self.inner.cache.invalidate(&key).await;
        let requested = CacheKey {
            exchange: lease.exchange.clone(),
            connection_type: lease.connection_type,
            region: self.inner.config.region.clone(),
            session_key: lease.session_key.clone(),
        };
        self.inner.cache.invalidate(&requested).await;
    }

    /// The proxies of `exchange` whose IP a usage header put near the limit, in a
    /// window that still runs.
    fn near_limit(&self, exchange: &ExchangeId) -> Vec<ProxyId> {
        let mut near = self.inner.near_limit.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        near.retain(|_, until| *until > now);
        near.keys().filter(|(ex, _)| ex == exchange).map(|(_, id)| *id).collect()
    }

    /// Keeps `proxy` out of this feed's leases for `exchange` until `until` (a usage
    /// header put its IP near the exchange's limit for the rest of the window).
    pub(crate) fn avoid_until(&self, exchange: &ExchangeId, proxy: &ProxyId, until: Instant) {
        let mut near = self.inner.near_limit.lock().unwrap_or_else(|p| p.into_inner());
        near.insert((exchange.clone(), *proxy), until);
    }

    /// Ok(Ok) a lease, Ok(Err) the resolver's error reply, Err why the resolver could not be asked.
    async fn ask_resolver(
        &self,
        exchange: &ExchangeId,
        connection_type: ConnectionType,
        region: Option<&Region>,
        excluded: &[ProxyId],
        options: &LeaseOptions,
    ) -> Result<Result<ProxyLease, ErrorReply>, String> {
        let inner = &self.inner;
        let mut request = ProxyRequest::new(exchange.clone(), connection_type, inner.config.client_id.clone());
        request.region = region.cloned();
        request.request_id = Some(uuid::Uuid::new_v4().to_string());
        request.proxy_schemes = inner.config.proxy_schemes.clone();
        request.exclude_proxy_ids = excluded.to_vec();
        request.session_key = options.session_key.clone();
        let encoding = inner.config.encoding;
        let payload = inner.codec.encode(encoding, &request).map_err(|err| err.to_string())?;
        let subject = subject::request(exchange, connection_type);
        let reply = tokio::time::timeout(
            inner.config.request_timeout,
            inner.nats.request_with_headers(subject, encoding.headers(), payload),
        )
        .await
        .map_err(|_| format!("no answer within {:?}", inner.config.request_timeout))?
        .map_err(|err| match err.kind() {
            // The server says at once that no resolver listens (here, or in any region the
            // gateways reach): fall back now rather than wait out the timeout.
            async_nats::client::RequestErrorKind::NoResponders => "no resolver is running (no responders)".to_owned(),
            _ => err.to_string(),
        })?;
        let is_error = reply.headers.as_ref().is_some_and(|h| h.get(subject::SERVICE_ERROR_CODE_HEADER).is_some());
        if is_error {
            let reply: ErrorReply =
                inner.codec.decode(reply.headers.as_ref(), &reply.payload).map_err(|e| e.to_string())?;
            return Ok(Err(reply));
        }
        let response: ProxyResponse =
            inner.codec.decode(reply.headers.as_ref(), &reply.payload).map_err(|err| format!("bad reply: {err}"))?;
        let proxy = match &response.proxy_url {
            None => None,
            Some(url) => Some(ProxyUrl::parse(url).map_err(|err| {
                format!("resolver handed out an unusable proxy ({err}): {}", proxybus_shared::redact_url(url))
            })?),
        };

        Ok(Ok(ProxyLease {
            proxy_id: proxy.as_ref().map(ProxyUrl::id),
            proxy,
            exchange: exchange.clone(),
            connection_type,
            region: response.region,
            strategy: response.strategy,
            source: response.source,
            fallback_policy: response.fallback_policy,
            ttl: Duration::from_secs(response.ttl_seconds),
            request_id: Some(response.request_id),
            resolver_region: response.resolver_region,
            session_key: options.session_key.clone(),
        }))
    }

    fn fallback(
        &self,
        exchange: &ExchangeId,
        connection_type: ConnectionType,
        region: Option<Region>,
        excluded: &[ProxyId],
        reason: &str,
    ) -> Result<ProxyLease, ClientError> {
        let ttl = Duration::from_secs(30);
        let accepted = &self.inner.config.proxy_schemes;
        if let Some(choice) = self
            .inner
            .embedded
            .select_accepting(exchange.as_str(), connection_type, accepted, |id| !excluded.contains(id))
        {
            metrics::counter!("proxybus_client_requests_total", "source" => "embedded").increment(1);
            return Ok(ProxyLease {
                proxy_id: Some(choice.proxy.id()),
                proxy: Some(choice.proxy),
                exchange: exchange.clone(),
                connection_type,
                region,
                strategy: choice.strategy.to_owned(),
                source: ResponseSource::Embedded,
                fallback_policy: FallbackPolicy::DirectConnection,
                ttl,
                request_id: None,
                resolver_region: None,
                session_key: None,
            });
        }
        match self.inner.config.fallback_policy {
            FallbackPolicy::Fail => Err(ClientError::Unavailable {
                exchange: exchange.clone(),
                connection_type,
                reason: format!("resolver unavailable ({reason}) and no embedded proxy"),
            }),
            _ => {
                metrics::counter!("proxybus_client_requests_total", "source" => "direct").increment(1);
                Ok(ProxyLease {
                    proxy: None,
                    proxy_id: None,
                    exchange: exchange.clone(),
                    connection_type,
                    region,
                    strategy: "direct".into(),
                    source: ResponseSource::Direct,
                    fallback_policy: FallbackPolicy::DirectConnection,
                    ttl,
                    request_id: None,
                    resolver_region: None,
                    session_key: None,
                })
            }
        }
    }
}
