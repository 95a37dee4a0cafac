//! The decision, independent of NATS: cache → upstream (single-flight) → stale
//! cache → embedded settings → direct connection or an error, as the fallback
//! policy says (the seed's graceful degradation).
//!
//! Exchanges outside the `external_service` rollout (or every exchange, when
//! external services are off) use the embedded settings directly, and a direct
//! connection when those name nothing, as the seed's embedded mode did.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proxybus_shared::codec::EncodeError;
use proxybus_shared::config::ProxySettings;
use proxybus_shared::{
    Codec, Encoding, ErrorCode, ExchangeId, FallbackPolicy, Metadata, ProxyRequest, ProxyResponse, Region,
    ResponseSource,
};
use tokio::time::Instant;

use crate::cache::{AnswerCache, CacheKey, CachedAnswer, SingleFlight};
use crate::health::HealthBook;
use crate::metrics::ResolverMetrics;
use crate::scatter::{RegionScatter, rank};
use crate::settings::ResolverSettings;
use crate::upstream::{Upstream, UpstreamError};
use proxybus_shared::embedded::{EmbeddedChoice, EmbeddedSelector};

/// TTL given with an answer served from an expired cache entry: short, so the
/// client asks again soon, when upstream may be back.
pub(crate) const STALE_TTL_SECONDS: u64 = 30;

/// Why a request gets an error reply instead of an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Upstream failed, no fallback had a proxy, and the policy is `fail`.
    #[error("upstream proxy services are unavailable ({0}) and the fallback policy is fail")]
    UpstreamUnavailable(UpstreamError),
    /// No proxy could be found and the policy (`embedded_fallback`) forbids a direct connection.
    #[error("no proxy available and the fallback policy forbids a direct connection")]
    NoProxyAvailable,
}

impl ResolveError {
    /// The contract's error class.
    pub fn code(&self) -> ErrorCode {
        match self {
            ResolveError::UpstreamUnavailable(_) => ErrorCode::UpstreamUnavailable,
            ResolveError::NoProxyAvailable => ErrorCode::NoProxyAvailable,
        }
    }
}

/// The answer to one request, ready to encode.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// An answer made for this request (upstream, embedded, direct).
    Made(ProxyResponse),
    /// A cached answer: the copy shared with every client that got the same proxy,
    /// with this reply's own fields. Encoded straight from the shared copy
    /// ([`ProxyResponse::reply_view`]): a cache hit copies no part of the answer.
    Cached {
        /// The cached answer (its `source`, `ttl_seconds`, `request_id` are not this reply's).
        shared: Arc<ProxyResponse>,
        /// `cache` (fresh) or `stale_cache`.
        source: ResponseSource,
        /// Seconds the client may keep the proxy.
        ttl_seconds: u64,
        /// The request's id.
        request_id: String,
        /// This resolver's region.
        resolver_region: Option<Region>,
    },
}

impl Answer {
    /// Where the answer came from.
    pub fn source(&self) -> ResponseSource {
        match self {
            Answer::Made(response) => response.source,
            Answer::Cached { source, .. } => *source,
        }
    }

    /// The reply's body in `encoding` (the same bytes either way an answer is held).
    ///
    /// # Errors
    /// When the serializer fails (not expected for these types).
    pub fn encode(&self, codec: &Codec, encoding: Encoding) -> Result<Bytes, EncodeError> {
        match self {
            Answer::Made(response) => codec.encode(encoding, response),
            Answer::Cached { shared, source, ttl_seconds, request_id, resolver_region } => {
                codec.encode(encoding, &shared.reply_view(*source, *ttl_seconds, request_id, resolver_region.as_ref()))
            }
        }
    }

    /// The answer as a `ProxyResponse` of its own (a copy for a cached one).
    pub fn into_response(self) -> ProxyResponse {
        match self {
            Answer::Made(response) => response,
            Answer::Cached { shared, source, ttl_seconds, request_id, resolver_region } => {
                let mut response = Arc::unwrap_or_clone(shared);
                response.source = source;
                response.ttl_seconds = ttl_seconds;
                response.request_id = request_id;
                response.resolver_region = resolver_region;
                response
            }
        }
    }
}

/// Chooses the answer to a proxy request.
#[derive(Debug)]
pub struct Resolver {
    proxy: Arc<ProxySettings>,
    settings: ResolverSettings,
    cache: AnswerCache,
    flights: SingleFlight<Result<ProxyResponse, UpstreamError>>,
    upstream: Option<Arc<Upstream>>,
    scatter: Option<Arc<RegionScatter>>,
    embedded: EmbeddedSelector,
    health: Arc<HealthBook>,
    metrics: Arc<ResolverMetrics>,
}

impl Resolver {
    /// A resolver over `proxy` settings, asking `upstream` (when external services are used).
    pub fn new(
        proxy: Arc<ProxySettings>,
        settings: ResolverSettings,
        upstream: Option<Arc<Upstream>>,
        health: Arc<HealthBook>,
        metrics: Arc<ResolverMetrics>,
    ) -> Self {
        Self {
            cache: AnswerCache::new(settings.cache_max_entries, settings.max_staleness()),
            embedded: EmbeddedSelector::new((*proxy).clone()),
            flights: SingleFlight::default(),
            proxy,
            settings,
            upstream,
            scatter: None,
            health,
            metrics,
        }
    }

    /// This resolver answering requests for region `any` by scattering them with `scatter`
    /// and taking the best answer (`scatter.rs`). Without it, `any` means this
    /// resolver's own region.
    pub(crate) fn with_scatter(mut self, scatter: RegionScatter) -> Self {
        self.scatter = Some(Arc::new(scatter));
        self
    }

    /// The counters of this resolver.
    pub fn metrics(&self) -> &Arc<ResolverMetrics> {
        &self.metrics
    }

    /// The health book this resolver consults.
    pub fn health(&self) -> &Arc<HealthBook> {
        &self.health
    }

    /// The answer cache.
    pub fn cache(&self) -> &AnswerCache {
        &self.cache
    }

    /// The upstream services, if used.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        self.upstream.as_ref()
    }

    /// The answer to a validated request when it needs no upstream call: proxying
    /// off, a fresh and usable cache entry (never for a request with
    /// `exclude_proxy_ids`), or an exchange the upstream services do not handle
    /// (embedded settings). `None` when [`resolve`](Self::resolve) has to ask
    /// upstream or refuse. Never waits: the service calls it in place, without a task.
    /// Every answer names this resolver's region in `resolver_region`.
    pub fn resolve_now(&self, request: &ProxyRequest) -> Option<Answer> {
        self.decide_now(request).map(|answer| match answer {
            Answer::Made(response) => Answer::Made(self.signed(response)),
            cached @ Answer::Cached { .. } => cached,
        })
    }

    /// Answers a validated request (its `request_id` is set). The upstream proxy
    /// services are asked for the request's `region` (this resolver's own when null);
    /// a service that has no proxy there answers from its own regions, and the
    /// answer's `region` says which. Every answer names this resolver's region in
    /// `resolver_region`.
    pub async fn resolve(&self, request: &ProxyRequest) -> Result<ProxyResponse, ResolveError> {
        self.decide(request).await.map(|answer| self.signed(answer))
    }

    /// `answer` with `resolver_region` set to this resolver's region.
    fn signed(&self, mut answer: ProxyResponse) -> ProxyResponse {
        answer.resolver_region = self.settings.region.clone();
        answer
    }

    /// The region a request is answered for: its own, or this resolver's when it names none
    /// (or `any` while this resolver does not scatter).
    fn region_of<'a>(&'a self, request: &'a ProxyRequest) -> Option<&'a Region> {
        request
            .region
            .as_ref()
            .filter(|region| !region.is_any() || self.scatter.is_some())
            .or(self.settings.region.as_ref())
    }

    fn decide_now(&self, request: &ProxyRequest) -> Option<Answer> {
        let exchange = &request.exchange_id;
        let region = self.region_of(request);
        let scattered = region.is_some_and(Region::is_any);
        let request_id = || request.request_id.clone().unwrap_or_default();

        if !self.proxy.enabled {
            return Some(Answer::Made(self.direct(request_id(), region.filter(|r| !r.is_any()).cloned())));
        }
        // A retry through another proxy (`exclude_proxy_ids`) is answered afresh:
        // the cached answer is likely the very proxy it excludes.
        let now = Instant::now();
        let cached = if request.exclude_proxy_ids.is_empty() { self.cache.get_for(request, region, now) } else { None };
        if let Some(entry) = cached {
            if !self.keepable(&entry.response, exchange) {
                let key = CacheKey::for_request(request, region);
                tracing::info!(request_id = request.request_id.as_deref().unwrap_or_default(), cache_key = %key, "cached proxy is ejected or banned; resolving again");
                self.cache.invalidate(&key);
            } else if let Some(remaining) = entry.remaining(now) {
                return Some(Answer::Cached {
                    shared: entry.response,
                    source: ResponseSource::Cache,
                    ttl_seconds: remaining.as_secs().max(1),
                    request_id: request_id(),
                    resolver_region: self.settings.region.clone(),
                });
            }
        }
        let delegated = scattered || self.delegates(exchange);
        if !delegated {
            let key = CacheKey::for_request(request, region);
            return self.embedded_first(key, request, request_id(), region.cloned()).map(Answer::Made);
        }
        None
    }

    /// Whether upstream proxy services choose for `exchange`.
    fn delegates(&self, exchange: &ExchangeId) -> bool {
        self.upstream.is_some() && self.proxy.external_service.delegates(exchange.as_str())
    }

    async fn decide(&self, request: &ProxyRequest) -> Result<ProxyResponse, ResolveError> {
        if let Some(answer) = self.decide_now(request) {
            return Ok(answer.into_response());
        }
        let exchange = &request.exchange_id;
        let region = self.region_of(request).cloned();
        let scattered = region.as_ref().is_some_and(Region::is_any);
        if !scattered && !self.delegates(exchange) {
            // Only a retry whose exclusions left no embedded proxy gets here.
            self.metrics.fallback("fail");
            return Err(ResolveError::NoProxyAvailable);
        }
        let key = CacheKey::for_request(request, region.as_ref());
        let request_id = request.request_id.clone().unwrap_or_default();
        // `any` names no region an answer could be in.
        let region = region.filter(|region| !region.is_any());

        let answer = if scattered {
            self.ask_regions(&key, request).await
        } else {
            self.ask_upstream(&key, request, region.clone()).await
        };
        let upstream_error = match answer {
            Ok(mut response) => {
                response.source = ResponseSource::Service;
                response.request_id = request_id;
                if response.region.is_none() {
                    response.region = region;
                }
                return Ok(response);
            }
            Err(err) => err,
        };

        if let Some(entry) = self.cache.get(&key)
            && entry.servable_stale(Instant::now(), self.settings.max_staleness())
            && self.keepable(&entry.response, exchange)
            && !entry.response.proxy_id.as_ref().is_some_and(|id| request.excludes(id))
        {
            self.metrics.fallback("stale_cache");
            tracing::warn!(%request_id, %exchange, error = %upstream_error, "upstream unavailable; serving a stale cache entry");
            return Ok(self.cached_answer(&entry, ResponseSource::StaleCache, STALE_TTL_SECONDS, request_id));
        }
        if self.proxy.external_service.fallback_to_embedded
            && let Some(choice) = self.embedded.select_accepting(
                exchange.as_str(),
                request.connection_type,
                &request.proxy_schemes,
                |id| !request.excludes(id) && self.health.usable(id, exchange),
            )
        {
            self.metrics.fallback("embedded");
            tracing::warn!(%request_id, %exchange, proxy = %choice.proxy, error = %upstream_error, "upstream unavailable; using the embedded settings");
            return Ok(self.embedded_answer(choice, request_id));
        }
        match self.settings.fallback_policy {
            FallbackPolicy::DirectConnection => {
                self.metrics.fallback("direct");
                tracing::warn!(%request_id, %exchange, error = %upstream_error, "upstream unavailable and no embedded proxy; answering direct connection");
                Ok(self.direct(request_id, region))
            }
            FallbackPolicy::EmbeddedFallback => {
                self.metrics.fallback("fail");
                tracing::warn!(%request_id, %exchange, error = %upstream_error, "upstream unavailable and no embedded proxy; no proxy available");
                Err(ResolveError::NoProxyAvailable)
            }
            FallbackPolicy::Fail => {
                self.metrics.fallback("fail");
                tracing::warn!(%request_id, %exchange, error = %upstream_error, "upstream unavailable; fallback policy is fail");
                Err(ResolveError::UpstreamUnavailable(upstream_error))
            }
        }
    }

    /// Fetches the answers of the configured warm-up list into the cache.
    pub async fn warm_up(&self) {
        for warm in &self.settings.warm_up {
            let mut request = ProxyRequest::new(warm.exchange_id.clone(), warm.connection_type, warm.client_id.clone());
            request.region = warm.region.clone();
            request.request_id = Some(uuid::Uuid::new_v4().to_string());
            match self.resolve(&request).await {
                Ok(answer) => {
                    tracing::info!(exchange = %warm.exchange_id, client_id = %warm.client_id, source = ?answer.source, "warmed up")
                }
                Err(err) => tracing::warn!(exchange = %warm.exchange_id, error = %err, "warm-up failed"),
            }
        }
    }

    /// The fresh answer a finished flight left in the cache for `key`
    /// ([`SingleFlight::run`]'s `settled`).
    fn settled(&self, key: &CacheKey) -> Option<Result<ProxyResponse, UpstreamError>> {
        let entry = self.cache.get(key)?;
        entry.remaining(Instant::now()).map(|_| Ok(ProxyResponse::clone(&entry.response)))
    }

    /// One upstream call per key at a time; its answer goes into the cache.
    async fn ask_upstream(
        &self,
        key: &CacheKey,
        request: &ProxyRequest,
        region: Option<Region>,
    ) -> Result<ProxyResponse, UpstreamError> {
        let Some(upstream) = self.upstream.clone() else {
            return Err(UpstreamError::NoEndpoints);
        };
        let mut upstream_request = request.clone();
        upstream_request.region = region;
        let default_ttl = self.proxy.external_service.cache_ttl_seconds;
        if !request.exclude_proxy_ids.is_empty() {
            // Neither shared with nor cached for the feed's ordinary requests: the
            // answer holds for this retry only, and the cached one (if still
            // usable) keeps serving the others.
            let mut result = upstream.request(&upstream_request).await;
            if let Ok(response) = &mut result
                && response.ttl_seconds == 0
            {
                response.ttl_seconds = default_ttl;
            }
            return result;
        }
        let cache = self.cache.clone();
        let owned_key = key.clone();
        let (result, _leader) = self
            .flights
            .run(
                key,
                || self.settled(key),
                move || async move {
                    let mut result = upstream.request(&upstream_request).await;
                    if let Ok(response) = &mut result {
                        if response.ttl_seconds == 0 {
                            response.ttl_seconds = default_ttl;
                        }
                        cache.insert(owned_key, response.clone(), Duration::from_secs(response.ttl_seconds));
                    }
                    result
                },
            )
            .await;
        result
    }

    /// One scatter per key at a time ([`crate::scatter`]); the best usable answer goes into the
    /// cache.
    async fn ask_regions(&self, key: &CacheKey, request: &ProxyRequest) -> Result<ProxyResponse, UpstreamError> {
        let Some(scatter) = self.scatter.clone() else {
            return Err(UpstreamError::NoEndpoints);
        };
        let health = self.health.clone();
        let cache = self.cache.clone();
        let owned_key = key.clone();
        let request = request.clone();
        let default_ttl = self.proxy.external_service.cache_ttl_seconds;
        let (result, _leader) = self
            .flights
            .run(key, || self.settled(key), move || async move {
                let answers = scatter.gather(&request).await;
                let exchange = &request.exchange_id;
                let best = answers
                    .into_iter()
                    .filter(|answer| answer.response.proxy_id.as_ref().is_none_or(|id| health.usable(id, exchange)))
                    .min_by_key(|answer| rank(answer, answer.response.proxy_id.as_ref().and_then(|id| health.condition(id))));
                let Some(best) = best else {
                    return Err(UpstreamError::NoRegionAnswered {
                        deadline_ms: u64::try_from(scatter.deadline().as_millis()).unwrap_or(u64::MAX),
                    });
                };
                tracing::debug!(request_id = request.request_id.as_deref().unwrap_or_default(), region = %best.region, "best region for any");
                let mut response = best.response;
                if response.ttl_seconds == 0 {
                    response.ttl_seconds = default_ttl;
                }
                cache.insert(owned_key, response.clone(), Duration::from_secs(response.ttl_seconds));
                Ok(response)
            })
            .await;
        result
    }

    fn embedded_first(
        &self,
        key: CacheKey,
        request: &ProxyRequest,
        request_id: String,
        region: Option<Region>,
    ) -> Option<ProxyResponse> {
        match self.embedded.select_accepting(
            request.exchange_id.as_str(),
            request.connection_type,
            &request.proxy_schemes,
            |id| !request.excludes(id) && self.health.usable(id, &request.exchange_id),
        ) {
            Some(choice) => {
                let answer = self.embedded_answer(choice, request_id);
                if request.exclude_proxy_ids.is_empty() {
                    self.cache.insert(key, answer.clone(), Duration::from_secs(answer.ttl_seconds));
                }
                Some(answer)
            }
            // Nothing configured: a direct connection, as the seed's embedded mode did;
            // but a retry whose exclusions left nothing gets what the policy says.
            None if request.exclude_proxy_ids.is_empty()
                || self.settings.fallback_policy == FallbackPolicy::DirectConnection =>
            {
                Some(self.direct(request_id, region.filter(|r| !r.is_any())))
            }
            None => None,
        }
    }

    /// Whether a cached answer may be served again (a drained proxy's may: leases finish).
    fn keepable(&self, response: &ProxyResponse, exchange: &ExchangeId) -> bool {
        response.proxy_id.as_ref().is_none_or(|id| self.health.keepable(id, exchange))
    }

    fn cached_answer(
        &self,
        entry: &CachedAnswer,
        source: ResponseSource,
        ttl_seconds: u64,
        request_id: String,
    ) -> ProxyResponse {
        let mut response = ProxyResponse::clone(&entry.response);
        response.source = source;
        response.ttl_seconds = ttl_seconds;
        response.request_id = request_id;
        response
    }

    fn embedded_answer(&self, choice: EmbeddedChoice, request_id: String) -> ProxyResponse {
        ProxyResponse {
            schema_version: proxybus_shared::SCHEMA_VERSION,
            proxy_id: Some(choice.proxy.id()),
            proxy_url: Some(choice.proxy.expose().to_owned()),
            strategy: choice.strategy.to_owned(),
            ttl_seconds: self.proxy.external_service.cache_ttl_seconds,
            fallback_policy: self.settings.fallback_policy,
            source: ResponseSource::Embedded,
            region: None,
            request_id,
            metadata: Metadata::new(),
            resolver_region: None,
        }
    }

    fn direct(&self, request_id: String, region: Option<Region>) -> ProxyResponse {
        ProxyResponse {
            schema_version: proxybus_shared::SCHEMA_VERSION,
            proxy_url: None,
            proxy_id: None,
            strategy: "direct".into(),
            ttl_seconds: self.proxy.external_service.cache_ttl_seconds,
            fallback_policy: FallbackPolicy::DirectConnection,
            source: ResponseSource::Direct,
            region,
            request_id,
            metadata: Metadata::new(),
            resolver_region: None,
        }
    }
}
