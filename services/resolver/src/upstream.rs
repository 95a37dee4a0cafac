//! Upstream proxy services over HTTP: `POST {endpoint}/api/v1/proxy/request`
//! with the seed's auth headers, each endpoint behind its own
//! [`CircuitBreaker`], tried healthiest first and hedged: when the first has not
//! answered within the hedge delay, the same request also goes to the next, and
//! the first valid answer wins.
//!
//! An answer is valid when it is a `ProxyResponse` whose `proxy_url`, if any,
//! has scheme http/https/socks4/socks5 and a host; anything else counts as a
//! failure of that endpoint.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use proxybus_shared::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use proxybus_shared::http::paths;
use proxybus_shared::{ProxyId, ProxyRequest, ProxyResponse, ProxyScheme, ProxyUrl, redact_text, redact_url};
use tokio::time::Instant;

use crate::metrics::{CallSeries, ResolverMetrics};

/// Why no upstream answer could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// No endpoint is known (discovery found none).
    #[error("no upstream endpoint is known")]
    NoEndpoints,
    /// Every endpoint's breaker is open.
    #[error("every upstream endpoint's circuit breaker is open")]
    AllBreakersOpen,
    /// A request for region `any`: no region's resolvers answered with a usable proxy within
    /// the deadline.
    #[error("no region answered with a usable proxy within {deadline_ms} ms")]
    NoRegionAnswered {
        /// The deadline (`any_region_deadline_ms`).
        deadline_ms: u64,
    },
    /// Every endpoint tried failed; the reasons, redacted.
    #[error("every upstream endpoint failed: {}", .0.join("; "))]
    AllFailed(Vec<String>),
}

/// One proxy service endpoint.
#[derive(Debug)]
pub struct Endpoint {
    base: String,
    name: String,
    /// `{base}/api/v1/proxy/request`, parsed once: formatting and parsing it (IDNA
    /// included) for every call was 1.1 % of the resolver's samples on cold misses
    /// (docs/benchmarks.md, round 5). The parse error, redacted, when `base` is no URL.
    request_url: Result<reqwest::Url, String>,
    /// This endpoint's upstream call series, registered on its first call (the
    /// recorder may be installed after the endpoint is made).
    series: OnceLock<CallSeries>,
    breaker: CircuitBreaker,
    /// Latency EWMA in microseconds (0 = no sample yet).
    latency_ewma_us: AtomicU64,
    /// Result of the last `/healthz` probe (true until a probe fails).
    probe_ok: AtomicBool,
}

impl Endpoint {
    /// An endpoint at `base` (`https://proxy-service-1:8080`) with a closed breaker.
    pub fn new(base: &str, breaker: BreakerConfig, metrics: Arc<ResolverMetrics>) -> Self {
        let base = base.trim_end_matches('/').to_owned();
        let name = redact_url(&base);
        let breaker = CircuitBreaker::new(name.clone(), breaker).with_transition_hook(move |name, _from, to| {
            if to == BreakerState::Open {
                metrics.breaker_opened(name);
            }
        });
        let request_url = reqwest::Url::parse(&format!("{base}{}", paths::REQUEST))
            .map_err(|err| format!("invalid endpoint URL {name}: {err}"));
        Self {
            base,
            name,
            request_url,
            series: OnceLock::new(),
            breaker,
            latency_ewma_us: AtomicU64::new(0),
            probe_ok: AtomicBool::new(true),
        }
    }

    /// The endpoint's call series (`proxybus_resolver_upstream_calls_total` and
    /// `_duration_seconds` by outcome), looked up in the recorder once, not per call.
    fn series(&self) -> &CallSeries {
        self.series.get_or_init(|| CallSeries::register(&self.name))
    }

    /// The base URL as configured (may hold credentials: do not log it).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The redacted base URL, for logs and metrics.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The endpoint's breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Records the result of a `/healthz` probe; a success closes an open breaker.
    pub fn probed(&self, ok: bool) {
        self.probe_ok.store(ok, Ordering::Relaxed);
        if ok && self.breaker.state() != BreakerState::Closed {
            tracing::info!(endpoint = %self.name, "health probe succeeded; closing the breaker");
            self.breaker.record_recovery();
        }
    }

    /// Lower is healthier: breaker state first, then the last probe, then latency.
    fn rank(&self) -> (u8, u8, u64) {
        let state = match self.breaker.state() {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        };
        let probe = u8::from(!self.probe_ok.load(Ordering::Relaxed));
        (state, probe, self.latency_ewma_us.load(Ordering::Relaxed))
    }

    fn record_latency(&self, elapsed: Duration) {
        let sample = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let old = self.latency_ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { (old * 4 + sample) / 5 };
        self.latency_ewma_us.store(new.max(1), Ordering::Relaxed);
    }
}

/// The current endpoints; discovery replaces the list, keeping the state (breaker,
/// latency) of endpoints that stay.
#[derive(Debug)]
pub struct EndpointSet {
    endpoints: RwLock<Vec<Arc<Endpoint>>>,
    breaker: BreakerConfig,
    metrics: Arc<ResolverMetrics>,
}

impl EndpointSet {
    /// An empty set whose endpoints get breakers with `breaker` thresholds.
    pub fn new(breaker: BreakerConfig, metrics: Arc<ResolverMetrics>) -> Self {
        Self { endpoints: RwLock::default(), breaker, metrics }
    }

    /// Replaces the endpoints with `bases`, keeping the state of those that stay.
    /// Returns whether the list changed.
    pub fn replace(&self, bases: &[String]) -> bool {
        let mut endpoints = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        let wanted: Vec<String> = bases.iter().map(|b| b.trim_end_matches('/').to_owned()).collect();
        let current: Vec<&str> = endpoints.iter().map(|e| e.base()).collect();
        if current == wanted.iter().map(String::as_str).collect::<Vec<_>>() {
            return false;
        }
        let next: Vec<Arc<Endpoint>> = wanted
            .iter()
            .map(|base| {
                endpoints.iter().find(|e| e.base() == base).cloned().unwrap_or_else(|| {
                    tracing::info!(endpoint = %redact_url(base), "upstream endpoint added");
                    Arc::new(Endpoint::new(base, self.breaker, self.metrics.clone()))
                })
            })
            .collect();
        for gone in endpoints.iter().filter(|e| !wanted.iter().any(|w| w == e.base())) {
            tracing::info!(endpoint = %gone.name(), "upstream endpoint removed");
        }
        metrics::gauge!("proxybus_resolver_endpoints").set(next.len() as f64);
        *endpoints = next;
        true
    }

    /// The endpoints in configured (or discovered) order.
    pub fn all(&self) -> Vec<Arc<Endpoint>> {
        self.endpoints.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The endpoints, healthiest first (a stable sort: ties keep their order).
    pub fn ranked(&self) -> Vec<Arc<Endpoint>> {
        let mut endpoints = self.all();
        endpoints.sort_by_key(|e| e.rank());
        endpoints
    }

    /// Redacted names of the endpoints.
    pub fn names(&self) -> Vec<String> {
        self.all().iter().map(|e| e.name().to_owned()).collect()
    }
}

/// The upstream proxy services.
#[derive(Debug)]
pub struct Upstream {
    client: reqwest::Client,
    endpoints: Arc<EndpointSet>,
    hedge_delay: Duration,
    metrics: Arc<ResolverMetrics>,
}

impl Upstream {
    /// Upstream calls through `client` to `endpoints`, hedged after `hedge_delay`.
    pub fn new(
        client: reqwest::Client,
        endpoints: Arc<EndpointSet>,
        hedge_delay: Duration,
        metrics: Arc<ResolverMetrics>,
    ) -> Self {
        Self { client, endpoints, hedge_delay, metrics }
    }

    /// The endpoint set.
    pub fn endpoints(&self) -> &Arc<EndpointSet> {
        &self.endpoints
    }

    /// The HTTP client.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Asks the endpoints for a proxy, healthiest first, hedged.
    pub async fn request(&self, request: &ProxyRequest) -> Result<ProxyResponse, UpstreamError> {
        let ranked = self.endpoints.ranked();
        if ranked.is_empty() {
            return Err(UpstreamError::NoEndpoints);
        }
        let request_id = request.request_id.clone().unwrap_or_default();
        let mut waiting = ranked.into_iter();
        let mut in_flight = FuturesUnordered::new();
        let mut failures = Vec::new();
        let mut refused = 0_usize;
        loop {
            // Launch the next endpoint when nothing is in flight (the previous one
            // failed or was refused by its breaker) or when the hedge timer fired.
            if in_flight.is_empty() {
                match waiting.next() {
                    Some(endpoint) => in_flight.push(self.call(endpoint, request)),
                    None if failures.is_empty() && refused > 0 => return Err(UpstreamError::AllBreakersOpen),
                    None => return Err(UpstreamError::AllFailed(failures)),
                }
            }
            let hedge = tokio::time::sleep(self.hedge_delay);
            tokio::select! {
                Some(outcome) = in_flight.next() => {
                    match outcome {
                        CallOutcome::Answer(response) => return Ok(response),
                        CallOutcome::Refused => refused += 1,
                        CallOutcome::Failed(reason) => failures.push(reason),
                    }
                    // After a failure the next endpoint need not wait for the hedge timer.
                    if let Some(endpoint) = waiting.next() {
                        in_flight.push(self.call(endpoint, request));
                    }
                }
                () = hedge, if waiting.len() > 0 => {
                    if let Some(endpoint) = waiting.next() {
                        tracing::debug!(endpoint = %endpoint.name(), request_id, "hedging to the next endpoint");
                        metrics::counter!("proxybus_resolver_hedged_calls_total").increment(1);
                        in_flight.push(self.call(endpoint, request));
                    }
                }
            }
        }
    }

    /// One call to one endpoint through its breaker.
    async fn call(&self, endpoint: Arc<Endpoint>, request: &ProxyRequest) -> CallOutcome {
        let Ok(permit) = endpoint.breaker().try_acquire() else {
            return CallOutcome::Refused;
        };
        let started = Instant::now();
        let result = async {
            let url = endpoint.request_url.clone()?;
            let mut call = self.client.post(url).json(request);
            if let Some(id) = &request.request_id {
                call = call.header(proxybus_shared::http::REQUEST_ID_HEADER, id);
            }
            let response = call.send().await.map_err(|err| describe(&err))?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("HTTP {}", status.as_u16()));
            }
            let body = response.bytes().await.map_err(|err| describe(&err))?;
            validate(&body, &request.proxy_schemes, &request.exclude_proxy_ids)
        }
        .await;
        let elapsed = started.elapsed();
        match result {
            Ok(answer) => {
                permit.success();
                endpoint.record_latency(elapsed);
                self.metrics.upstream_call(endpoint.series(), true, elapsed);
                CallOutcome::Answer(answer)
            }
            Err(reason) => {
                permit.failure();
                self.metrics.upstream_call(endpoint.series(), false, elapsed);
                tracing::warn!(
                    endpoint = %endpoint.name(),
                    exchange = %request.exchange_id,
                    request_id = request.request_id.as_deref().unwrap_or_default(),
                    reason = %reason,
                    "upstream call failed"
                );
                CallOutcome::Failed(format!("{}: {reason}", endpoint.name()))
            }
        }
    }
}

enum CallOutcome {
    Answer(ProxyResponse),
    Refused,
    Failed(String),
}

/// A reqwest error without its URL (which could carry credentials).
fn describe(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect error"
    } else if err.is_decode() || err.is_body() {
        "bad body"
    } else {
        "request error"
    };
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&redact_text(&cause.to_string()));
        source = cause.source();
    }
    text
}

/// Parses and checks an upstream answer: a proxy of a scheme the request does
/// not `accept`, or one it `excluded` (`ProxyRequest.exclude_proxy_ids`), counts
/// as no answer (an upstream older than those fields ignores them).
pub(crate) fn validate(body: &[u8], accepted: &[ProxyScheme], excluded: &[ProxyId]) -> Result<ProxyResponse, String> {
    let mut response: ProxyResponse = serde_json::from_slice(body)
        .map_err(|err| format!("invalid ProxyResponse JSON: {}", redact_text(&err.to_string())))?;
    if let Some(url) = &response.proxy_url {
        let parsed = ProxyUrl::parse(url).map_err(|err| format!("unusable proxy_url ({err}): {}", redact_url(url)))?;
        if !parsed.scheme().accepted_by(accepted) {
            // An upstream that ignores `proxy_schemes` (older than the field): the
            // caller could not use this proxy, so it counts as no answer.
            return Err(format!("proxy_url {} has a scheme the request does not accept", parsed.redacted()));
        }
        let id = parsed.id();
        if excluded.contains(&id) {
            return Err(format!("proxy_url {} is one the request excludes", parsed.redacted()));
        }
        response.proxy_id = Some(id);
    } else {
        response.proxy_id = None;
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_with_bad_schemes_or_no_host_are_refused_without_leaking_credentials() {
        let ok = br#"{"proxy_url":"socks5://u:pw@h:1080","strategy":"p2c_ewma","ttl_seconds":60}"#;
        let answer = validate(ok, &[], &[]).unwrap();
        assert_eq!(answer.proxy_id, Some(proxybus_shared::proxy_id("socks5://u:pw@h:1080")));
        let ftp = br#"{"proxy_url":"ftp://u:hunter2@h:21","strategy":"x","ttl_seconds":60}"#;
        let err = validate(ftp, &[], &[]).unwrap_err();
        assert!(err.contains("ftp") && !err.contains("hunter2"), "{err}");
        let no_host = br#"{"proxy_url":"http://:8080","strategy":"x","ttl_seconds":60}"#;
        assert!(validate(no_host, &[], &[]).unwrap_err().contains("no host"));
        assert!(validate(br#"{"proxy_url":42}"#, &[], &[]).is_err());
        let direct = validate(br#"{"proxy_url":null,"strategy":"direct","ttl_seconds":5}"#, &[], &[]).unwrap();
        assert_eq!(direct.proxy_url, None);
        // The quoted inventory entry of issue #12, answered by a careless upstream.
        let slash = br#"{"proxy_url":"http://alice:12/34xyz@203.0.113.10:3128","strategy":"x","ttl_seconds":60}"#;
        let err = validate(slash, &[], &[]).unwrap_err();
        assert!(err.contains("http://alice:***@203.0.113.10:3128") && !err.contains("34xyz"), "{err}");
    }

    #[test]
    fn answers_with_a_scheme_the_request_does_not_accept_are_no_answer() {
        let socks = br#"{"proxy_url":"socks5h://u:pw@h:1080","strategy":"x","ttl_seconds":60}"#;
        let err = validate(socks, &[ProxyScheme::Http, ProxyScheme::Https], &[]).unwrap_err();
        assert!(err.contains("socks5h://u:***@h:1080") && !err.contains("pw"), "{err}");
        assert!(validate(socks, &[ProxyScheme::Socks5h], &[]).is_ok());
        assert!(validate(socks, &[], &[]).is_ok(), "no filter accepts every scheme");
        let excluded = [proxybus_shared::proxy_id("socks5h://u:pw@h:1080")];
        let err = validate(socks, &[], &excluded).unwrap_err();
        assert!(err.contains("excludes") && !err.contains("pw@"), "{err}");
    }

    #[test]
    fn replacing_endpoints_keeps_the_state_of_those_that_stay() {
        let set = EndpointSet::new(BreakerConfig { failure_threshold: 1, ..Default::default() }, Arc::default());
        assert!(set.replace(&["http://a:1".into(), "http://b:2/".into()]));
        set.all()[0].breaker().try_acquire().unwrap().failure();
        assert!(!set.replace(&["http://a:1".into(), "http://b:2".into()]), "same list");
        assert!(set.replace(&["http://c:3".into(), "http://a:1".into()]));
        let names = set.names();
        assert_eq!(names, ["http://c:3", "http://a:1"]);
        assert_eq!(set.all()[1].breaker().state(), BreakerState::Open, "a kept its open breaker");
        assert_eq!(set.ranked()[1].name(), "http://a:1", "open breakers rank last");
    }
}
