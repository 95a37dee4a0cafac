//! Metric names and the Prometheus recorder behind `GET /metrics`.
//!
//! Labels carry regions, strategies, phases and `proxy_id`s, never a proxy URL.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `proxybus_pool_http_requests_total` | counter | `route`, `status` |
//! | `proxybus_pool_selections_total` | counter | `region`, `strategy` (incl. `sticky`, `panic`) |
//! | `proxybus_pool_region_fallbacks_total` | counter | `from`, `to` |
//! | `proxybus_pool_panics_total` | counter | `region`, `answer` (`least_bad`, `direct`) |
//! | `proxybus_pool_no_proxy_total` | counter | `region` |
//! | `proxybus_pool_feedback_total` | counter | `phase`, `outcome` |
//! | `proxybus_pool_ejections_total` | counter | `source` |
//! | `proxybus_pool_health_updates_total` | counter | `source` (`http`, `nats`), `outcome` (`applied`, `stale`) |
//! | `proxybus_pool_health_rejected_total` | counter | `source` |
//! | `proxybus_pool_auth_failures_total` | counter | `reason` (`credentials`, `ip`) |
//! | `proxybus_pool_inventory_reloads_total` | counter | `outcome` |
//! | `proxybus_pool_active_checks_total` | counter | `result` |
//! | `proxybus_pool_proxies` | gauge | `region`, `state` |
//! | `proxybus_pool_active_leases` | gauge | `region`, `proxy_id` |

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::selector::Selector;

/// HTTP requests served.
pub const HTTP_REQUESTS: &str = "proxybus_pool_http_requests_total";
/// Proxies handed out.
pub const SELECTIONS: &str = "proxybus_pool_selections_total";
/// Answers from a fallback region.
pub const REGION_FALLBACKS: &str = "proxybus_pool_region_fallbacks_total";
/// Answers in panic mode.
pub const PANICS: &str = "proxybus_pool_panics_total";
/// `no_proxy_available` answers.
pub const NO_PROXY: &str = "proxybus_pool_no_proxy_total";
/// Feedback events folded.
pub const FEEDBACK: &str = "proxybus_pool_feedback_total";
/// Local ejections.
pub const EJECTIONS: &str = "proxybus_pool_ejections_total";
/// Health statistics received.
pub const HEALTH_UPDATES: &str = "proxybus_pool_health_updates_total";
/// Health statistics that could not be decoded.
pub const HEALTH_REJECTED: &str = "proxybus_pool_health_rejected_total";
/// Refused requests.
pub const AUTH_FAILURES: &str = "proxybus_pool_auth_failures_total";
/// Inventory reloads.
pub const RELOADS: &str = "proxybus_pool_inventory_reloads_total";
/// Active checks run.
pub const ACTIVE_CHECKS: &str = "proxybus_pool_active_checks_total";
/// Proxies per region and state (at scrape time).
pub const PROXIES: &str = "proxybus_pool_proxies";
/// Active leases per proxy (at scrape time).
pub const ACTIVE_LEASES: &str = "proxybus_pool_active_leases";
/// Counter: `session_key` sessions moved to another proxy because their rotation was due, by `exchange`.
pub const SESSION_ROTATIONS: &str = "proxybus_pool_session_rotations_total";

/// Where health statistics came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthSource {
    /// `POST /api/v1/proxy/health`.
    Http,
    /// `proxy.v1.health.>`.
    Nats,
}

impl HealthSource {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthSource::Http => "http",
            HealthSource::Nats => "nats",
        }
    }
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus handle: installs the global recorder on first use.
/// `None` when another recorder was installed first (an embedding program then
/// passes its own handle to [`crate::AppState::with_metrics`]).
pub fn global_handle() -> Option<PrometheusHandle> {
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().ok()).clone()
}

/// Sets the gauges that describe the current state, just before a scrape.
pub fn refresh_gauges(selector: &Selector) {
    let mut per_state: std::collections::BTreeMap<(String, &'static str), f64> = Default::default();
    for pool in selector.inventory().pools() {
        for state in ["healthy", "degraded", "ejected"] {
            per_state.insert((pool.region().to_string(), state), 0.0);
        }
    }
    for view in selector.proxies(None) {
        let state = match view.state {
            proxybus_shared::HealthState::Healthy => "healthy",
            proxybus_shared::HealthState::Degraded => "degraded",
            proxybus_shared::HealthState::Ejected => "ejected",
        };
        *per_state.entry((view.region.to_string(), state)).or_default() += 1.0;
        metrics::gauge!(ACTIVE_LEASES, "region" => view.region.to_string(), "proxy_id" => view.proxy_id.to_string())
            .set(f64::from(view.active_leases));
    }
    for ((region, state), count) in per_state {
        metrics::gauge!(PROXIES, "region" => region, "state" => state).set(count);
    }
}
