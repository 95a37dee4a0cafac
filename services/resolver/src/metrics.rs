//! The seed's `ProxyServiceMetrics`, counted per resolver instance (they go into
//! the micro-service `$SRV.STATS` data), and the same facts plus latency
//! histograms on the process's Prometheus recorder
//! (`proxybus_shared::telemetry::prometheus`, served on `/metrics`).
//!
//! | Prometheus metric | type | labels |
//! | --- | --- | --- |
//! | `proxybus_resolver_requests_total` | counter | `source` (`service`, `cache`, `stale_cache`, `embedded`, `direct`, `error`) |
//! | `proxybus_resolver_errors_total` | counter | `error` (`bad_request`, `payload_too_large`, `upstream_unavailable`, …) |
//! | `proxybus_resolver_fallbacks_total` | counter | `step` (`stale_cache`, `embedded`, `direct`, `fail`) |
//! | `proxybus_resolver_request_duration_seconds` | histogram | `source` |
//! | `proxybus_resolver_upstream_duration_seconds` | histogram | `endpoint`, `outcome` (`ok`, `error`) |
//! | `proxybus_resolver_upstream_calls_total` | counter | `endpoint`, `outcome` |
//! | `proxybus_resolver_breaker_opens_total` | counter | `endpoint` |
//! | `proxybus_breaker_transitions_total` | counter | `breaker`, `to` (from `proxybus-shared`) |
//! | `proxybus_resolver_cache_entries` | gauge | |
//! | `proxybus_resolver_endpoints` | gauge | |

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Histogram};

use proxybus_shared::{ErrorCode, ResponseSource};
use serde::Serialize;

/// Counters of one resolver (the seed's `ProxyServiceMetrics`, plus a few).
#[derive(Debug, Default)]
pub struct ResolverMetrics {
    requests_total: AtomicU64,
    requests_success: AtomicU64,
    requests_failed: AtomicU64,
    requests_cached: AtomicU64,
    response_time_total_us: AtomicU64,
    upstream_calls: AtomicU64,
    upstream_failures: AtomicU64,
    circuit_breaker_open_count: AtomicU64,
    fallback_used_count: AtomicU64,
    bad_requests: AtomicU64,
    per_request: OnceLock<RequestSeries>,
}

/// The series every request updates, registered once: looking a labelled series
/// up in the recorder (hashing its name and labels) on every request cost as much
/// as the rest of answering a cache hit (docs/benchmarks.md, `resolve-hit`).
#[derive(Debug)]
struct RequestSeries {
    /// `proxybus_resolver_requests_total` by [`RequestSeries::slot`].
    requests: [Counter; RequestSeries::SLOTS],
    /// `proxybus_resolver_request_duration_seconds` by [`RequestSeries::slot`].
    durations: [Histogram; RequestSeries::SLOTS],
}

impl RequestSeries {
    /// One slot per `source` label: the five answer sources, then `error`.
    const SLOTS: usize = 6;
    const LABELS: [&'static str; Self::SLOTS] = ["service", "cache", "stale_cache", "embedded", "direct", "error"];
    const ERROR: usize = 5;

    /// Registers the series with the process's recorder
    /// ([`proxybus_shared::telemetry::prometheus`], installed here if nothing was yet).
    fn register() -> Self {
        proxybus_shared::telemetry::prometheus();
        Self {
            requests: Self::LABELS
                .map(|label| metrics::counter!("proxybus_resolver_requests_total", "source" => label)),
            durations: Self::LABELS
                .map(|label| metrics::histogram!("proxybus_resolver_request_duration_seconds", "source" => label)),
        }
    }

    fn slot(source: ResponseSource) -> usize {
        match source {
            ResponseSource::Service => 0,
            ResponseSource::Cache => 1,
            ResponseSource::StaleCache => 2,
            ResponseSource::Embedded => 3,
            ResponseSource::Direct => 4,
        }
    }
}

/// One upstream endpoint's call series: `proxybus_resolver_upstream_calls_total`
/// and `proxybus_resolver_upstream_duration_seconds` (seconds) with labels
/// `endpoint` (the redacted base URL) and `outcome`, `ok` at index 0 and `error`
/// at 1. Held by the endpoint: a `metrics::counter!` with an owned label per call
/// was 1.7 % of the resolver's samples on cold misses (docs/benchmarks.md, round 5).
#[derive(Debug)]
pub struct CallSeries {
    calls: [Counter; 2],
    durations: [Histogram; 2],
}

impl CallSeries {
    const OUTCOMES: [&'static str; 2] = ["ok", "error"];

    /// Registers the series of the endpoint named `endpoint` (redacted: it is a label).
    pub fn register(endpoint: &str) -> Self {
        proxybus_shared::telemetry::prometheus();
        Self {
            calls: Self::OUTCOMES.map(|outcome| {
                metrics::counter!("proxybus_resolver_upstream_calls_total", "endpoint" => endpoint.to_owned(), "outcome" => outcome)
            }),
            durations: Self::OUTCOMES.map(|outcome| {
                metrics::histogram!("proxybus_resolver_upstream_duration_seconds", "endpoint" => endpoint.to_owned(), "outcome" => outcome)
            }),
        }
    }
}

/// A snapshot of [`ResolverMetrics`], as published in `$SRV.STATS` `data`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct ProxyServiceMetrics {
    /// Requests answered (successfully or with an error reply).
    pub requests_total: u64,
    /// Requests answered with a proxy or a direct connection.
    pub requests_success: u64,
    /// Requests answered with an error reply.
    pub requests_failed: u64,
    /// Requests answered from a fresh cache entry.
    pub requests_cached: u64,
    /// Mean time to answer, in milliseconds.
    pub avg_response_time_ms: f64,
    /// Calls made to upstream proxy services.
    pub upstream_calls: u64,
    /// Upstream calls that failed.
    pub upstream_failures: u64,
    /// How many times an endpoint's breaker opened.
    pub circuit_breaker_open_count: u64,
    /// Answers that came from a fallback step (stale cache, embedded, direct, or `fail`).
    pub fallback_used_count: u64,
    /// Requests refused as malformed or too large (part of `requests_failed`).
    pub bad_requests: u64,
}

impl ResolverMetrics {
    /// Counts an answered request.
    pub fn answered(&self, source: ResponseSource, elapsed: Duration) {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        self.requests_success.fetch_add(1, Ordering::Relaxed);
        if source == ResponseSource::Cache {
            self.requests_cached.fetch_add(1, Ordering::Relaxed);
        }
        self.add_time(elapsed);
        let series = self.series();
        let slot = RequestSeries::slot(source);
        series.requests[slot].increment(1);
        series.durations[slot].record(elapsed.as_secs_f64());
    }

    fn series(&self) -> &RequestSeries {
        self.per_request.get_or_init(RequestSeries::register)
    }

    /// Counts a request answered with an error reply.
    pub fn failed(&self, error: ErrorCode, elapsed: Duration) {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        self.requests_failed.fetch_add(1, Ordering::Relaxed);
        if matches!(error, ErrorCode::BadRequest | ErrorCode::PayloadTooLarge) {
            self.bad_requests.fetch_add(1, Ordering::Relaxed);
        }
        self.add_time(elapsed);
        let series = self.series();
        series.requests[RequestSeries::ERROR].increment(1);
        series.durations[RequestSeries::ERROR].record(elapsed.as_secs_f64());
        metrics::counter!("proxybus_resolver_errors_total", "error" => error.as_str()).increment(1);
    }

    /// Counts one upstream call, into one endpoint's `series`.
    pub fn upstream_call(&self, series: &CallSeries, ok: bool, elapsed: Duration) {
        self.upstream_calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.upstream_failures.fetch_add(1, Ordering::Relaxed);
        }
        let slot = usize::from(!ok);
        series.calls[slot].increment(1);
        series.durations[slot].record(elapsed.as_secs_f64());
    }

    /// Counts a breaker opening.
    pub fn breaker_opened(&self, endpoint: &str) {
        self.circuit_breaker_open_count.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("proxybus_resolver_breaker_opens_total", "endpoint" => endpoint.to_owned()).increment(1);
    }

    /// Counts the use of a fallback step (`stale_cache`, `embedded`, `direct`, `fail`).
    pub fn fallback(&self, step: &'static str) {
        self.fallback_used_count.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("proxybus_resolver_fallbacks_total", "step" => step).increment(1);
    }

    /// A consistent-enough snapshot of the counters.
    pub fn snapshot(&self) -> ProxyServiceMetrics {
        let total = self.requests_total.load(Ordering::Relaxed);
        let time_us = self.response_time_total_us.load(Ordering::Relaxed);
        ProxyServiceMetrics {
            requests_total: total,
            requests_success: self.requests_success.load(Ordering::Relaxed),
            requests_failed: self.requests_failed.load(Ordering::Relaxed),
            requests_cached: self.requests_cached.load(Ordering::Relaxed),
            avg_response_time_ms: if total == 0 { 0.0 } else { time_us as f64 / total as f64 / 1000.0 },
            upstream_calls: self.upstream_calls.load(Ordering::Relaxed),
            upstream_failures: self.upstream_failures.load(Ordering::Relaxed),
            circuit_breaker_open_count: self.circuit_breaker_open_count.load(Ordering::Relaxed),
            fallback_used_count: self.fallback_used_count.load(Ordering::Relaxed),
            bad_requests: self.bad_requests.load(Ordering::Relaxed),
        }
    }

    fn add_time(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.response_time_total_us.fetch_add(micros, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_counts_like_the_seed() {
        let metrics = ResolverMetrics::default();
        metrics.answered(ResponseSource::Cache, Duration::from_millis(2));
        metrics.answered(ResponseSource::Service, Duration::from_millis(4));
        metrics.failed(ErrorCode::BadRequest, Duration::from_millis(0));
        metrics.fallback("embedded");
        metrics.breaker_opened("http://a:1");
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.requests_total, 3);
        assert_eq!(snapshot.requests_success, 2);
        assert_eq!(snapshot.requests_failed, 1);
        assert_eq!(snapshot.requests_cached, 1);
        assert_eq!(snapshot.bad_requests, 1);
        assert_eq!(snapshot.fallback_used_count, 1);
        assert_eq!(snapshot.circuit_breaker_open_count, 1);
        assert!((snapshot.avg_response_time_ms - 2.0).abs() < 1e-9, "{snapshot:?}");
    }

    #[test]
    fn every_source_has_its_own_series_labelled_as_on_the_wire() {
        for source in [
            ResponseSource::Service,
            ResponseSource::Cache,
            ResponseSource::StaleCache,
            ResponseSource::Embedded,
            ResponseSource::Direct,
        ] {
            assert_eq!(RequestSeries::LABELS[RequestSeries::slot(source)], source.as_str());
        }
        assert_eq!(RequestSeries::LABELS[RequestSeries::ERROR], "error");
    }

    #[test]
    fn requests_reach_the_prometheus_series() {
        let metrics = ResolverMetrics::default();
        metrics.answered(ResponseSource::StaleCache, Duration::from_millis(3));
        metrics.answered(ResponseSource::StaleCache, Duration::from_millis(3));
        metrics.failed(ErrorCode::NoProxyAvailable, Duration::from_millis(1));
        let text = proxybus_shared::telemetry::render_metrics();
        let value = |series: &str| {
            text.lines()
                .find(|line| line.starts_with(series))
                .and_then(|line| line.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // Other tests of this process may count too: at least ours.
        assert!(value(r#"proxybus_resolver_requests_total{source="stale_cache"}"#) >= 2.0, "{text}");
        assert!(value(r#"proxybus_resolver_requests_total{source="error"}"#) >= 1.0, "{text}");
        assert!(value(r#"proxybus_resolver_request_duration_seconds_count{source="stale_cache"}"#) >= 2.0, "{text}");
    }
}
