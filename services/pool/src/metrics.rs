//! Metric names, and the gauges set just before `GET /metrics` renders the
//! process's one recorder (`proxybus_shared::telemetry`).
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

use crate::selector::Selector;

/// HTTP requests served.
pub(crate) const HTTP_REQUESTS: &str = "proxybus_pool_http_requests_total";
/// Proxies handed out.
pub(crate) const SELECTIONS: &str = "proxybus_pool_selections_total";
/// Answers from a fallback region.
pub(crate) const REGION_FALLBACKS: &str = "proxybus_pool_region_fallbacks_total";
/// Answers in panic mode.
pub(crate) const PANICS: &str = "proxybus_pool_panics_total";
/// `no_proxy_available` answers.
pub(crate) const NO_PROXY: &str = "proxybus_pool_no_proxy_total";
/// Feedback events folded.
pub(crate) const FEEDBACK: &str = "proxybus_pool_feedback_total";
/// Local ejections.
pub(crate) const EJECTIONS: &str = "proxybus_pool_ejections_total";
/// Health statistics received.
pub(crate) const HEALTH_UPDATES: &str = "proxybus_pool_health_updates_total";
/// Health statistics that could not be decoded.
pub(crate) const HEALTH_REJECTED: &str = "proxybus_pool_health_rejected_total";
/// Refused requests.
pub(crate) const AUTH_FAILURES: &str = "proxybus_pool_auth_failures_total";
/// Inventory reloads.
pub(crate) const RELOADS: &str = "proxybus_pool_inventory_reloads_total";
/// Active checks run.
pub(crate) const ACTIVE_CHECKS: &str = "proxybus_pool_active_checks_total";
/// Proxies per region and state (at scrape time).
pub(crate) const PROXIES: &str = "proxybus_pool_proxies";
/// Active leases per proxy (at scrape time).
pub(crate) const ACTIVE_LEASES: &str = "proxybus_pool_active_leases";
/// Counter: `session_key` sessions moved to another proxy because their rotation was due, by `exchange`.
pub(crate) const SESSION_ROTATIONS: &str = "proxybus_pool_session_rotations_total";

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

/// Sets the gauges that describe the current state, just before a scrape.
pub(crate) fn refresh_gauges(selector: &Selector) {
    let mut per_state: std::collections::BTreeMap<(String, &'static str), f64> = Default::default();
    for pool in selector.inventory().pools() {
        for state in proxybus_shared::HealthState::ALL {
            per_state.insert((pool.region().to_string(), state.as_str()), 0.0);
        }
    }
    for view in selector.proxies(None) {
        *per_state.entry((view.region.to_string(), view.state.as_str())).or_default() += 1.0;
        metrics::gauge!(ACTIVE_LEASES, "region" => view.region.to_string(), "proxy_id" => view.proxy_id.to_string())
            .set(f64::from(view.active_leases));
    }
    for ((region, state), count) in per_state {
        metrics::gauge!(PROXIES, "region" => region, "state" => state).set(count);
    }
}
