//! The health model's thresholds: when a proxy is degraded, ejected, put on
//! probation and restored, and how long an exchange's cool-down or ban lasts.
//!
//! The rules follow Envoy's outlier detection (consecutive failures, success rate
//! over a minimum volume, ejection time growing with each ejection, a cap on the
//! share of a region that may be ejected) and Finagle/Linkerd failure accrual (a
//! proxy coming back from an ejection is on probation: one failure sends it back).

use std::time::Duration;

use proxybus_shared::config::{Issues, Validate, key};
use serde::Deserialize;

/// Thresholds of the health model; every one is configuration, with these defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthPolicy {
    /// Failures in a row that eject a proxy (default 5).
    pub consecutive_failures: u32,
    /// Failures in a row that make a proxy `degraded` (default 2).
    pub degraded_consecutive_failures: u32,
    /// A proxy whose time-decayed success rate falls below this is ejected, once the
    /// decayed volume reaches `success_rate_min_volume` (default 0.5).
    pub ejection_success_rate: f64,
    /// A proxy whose decayed success rate falls below this is `degraded` (default 0.9).
    pub degraded_success_rate: f64,
    /// Decayed number of outcomes before the success rate counts (default 20).
    pub success_rate_min_volume: f64,
    /// Half-life of an outcome's weight in the success rate, in milliseconds (default 60 000).
    pub success_rate_half_life_ms: u64,
    /// Ejection time of the first ejection; the n-th lasts n times as long (default 30 000 ms).
    pub base_ejection_time_ms: u64,
    /// Longest ejection (default 300 000 ms).
    pub max_ejection_time_ms: u64,
    /// Largest share of a region's proxies that may be ejected at once, in percent (default 50).
    pub max_ejection_percent: u32,
    /// Successes in a row that end the probation after an ejection (default 3).
    pub probation_successes: u32,
    /// Cool-down of an exchange after `http_429`/`http_418` without `retry_after_seconds`
    /// (default 60 000 ms).
    pub default_cooldown_ms: u64,
    /// Longest cool-down, whatever `retry_after_seconds` says (default 86 400 000 ms, a day).
    pub max_cooldown_ms: u64,
    /// How long `http_451` (restricted location) bans a proxy for that exchange
    /// (default 604 800 000 ms, a week).
    pub ban_451_ms: u64,
    /// Weight of a new latency sample in the latency EWMA (default 0.3).
    pub latency_ewma_alpha: f64,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            degraded_consecutive_failures: 2,
            ejection_success_rate: 0.5,
            degraded_success_rate: 0.9,
            success_rate_min_volume: 20.0,
            success_rate_half_life_ms: 60_000,
            base_ejection_time_ms: 30_000,
            max_ejection_time_ms: 300_000,
            max_ejection_percent: 50,
            probation_successes: 3,
            default_cooldown_ms: 60_000,
            max_cooldown_ms: 86_400_000,
            ban_451_ms: 7 * 86_400_000,
            latency_ewma_alpha: 0.3,
        }
    }
}

impl HealthPolicy {
    /// How long the `ejections`-th ejection lasts: `base × ejections`, capped.
    pub fn ejection_time(&self, ejections: u32) -> Duration {
        let millis = self.base_ejection_time_ms.saturating_mul(u64::from(ejections.max(1)));
        Duration::from_millis(millis.min(self.max_ejection_time_ms))
    }

    /// How many of `region_size` proxies may be ejected at once.
    pub fn max_ejected(&self, region_size: usize) -> usize {
        region_size.saturating_mul(self.max_ejection_percent as usize) / 100
    }
}

impl Validate for HealthPolicy {
    fn validate(&self, prefix: &str, issues: &mut Issues) {
        issues.check_range(key(prefix, "consecutive_failures"), self.consecutive_failures, 1..=1_000);
        issues.check_range(key(prefix, "degraded_consecutive_failures"), self.degraded_consecutive_failures, 1..=1_000);
        issues.check_range(key(prefix, "ejection_success_rate"), self.ejection_success_rate, 0.0..=1.0);
        issues.check_range(key(prefix, "degraded_success_rate"), self.degraded_success_rate, 0.0..=1.0);
        issues.check_range(key(prefix, "success_rate_min_volume"), self.success_rate_min_volume, 1.0..=1e9);
        issues.check_range(key(prefix, "success_rate_half_life_ms"), self.success_rate_half_life_ms, 1..=u64::MAX);
        issues.check_range(key(prefix, "base_ejection_time_ms"), self.base_ejection_time_ms, 1..=86_400_000);
        issues.check_range(
            key(prefix, "max_ejection_time_ms"),
            self.max_ejection_time_ms,
            self.base_ejection_time_ms..=86_400_000,
        );
        issues.check_range(key(prefix, "max_ejection_percent"), self.max_ejection_percent, 0..=100);
        issues.check_range(key(prefix, "probation_successes"), self.probation_successes, 1..=1_000);
        issues.check_range(
            key(prefix, "default_cooldown_ms"),
            self.default_cooldown_ms,
            1..=self.max_cooldown_ms.max(1),
        );
        issues.check_range(key(prefix, "ban_451_ms"), self.ban_451_ms, 1..=365 * 86_400_000);
        issues.check_range(key(prefix, "latency_ewma_alpha"), self.latency_ewma_alpha, 0.001..=1.0);
        if self.degraded_success_rate < self.ejection_success_rate {
            issues.push(key(prefix, "degraded_success_rate"), "must not be below ejection_success_rate");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_time_grows_with_each_ejection_and_is_capped() {
        let policy = HealthPolicy::default();
        assert_eq!(policy.ejection_time(1), Duration::from_secs(30));
        assert_eq!(policy.ejection_time(2), Duration::from_secs(60));
        assert_eq!(policy.ejection_time(10), Duration::from_secs(300));
        assert_eq!(policy.ejection_time(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn at_most_half_of_a_region_by_default() {
        let policy = HealthPolicy::default();
        assert_eq!(policy.max_ejected(1), 0, "a lone proxy is never ejected: 1 of 1 is over 50%");
        assert_eq!(policy.max_ejected(4), 2);
        assert_eq!(policy.max_ejected(5), 2);
    }

    #[test]
    fn every_invalid_threshold_is_reported() {
        let policy = HealthPolicy {
            consecutive_failures: 0,
            max_ejection_percent: 150,
            degraded_success_rate: 0.1,
            ..HealthPolicy::default()
        };
        let mut issues = Issues::default();
        policy.validate("health", &mut issues);
        let err = issues.into_result().unwrap_err();
        let keys: Vec<_> = err.issues().iter().map(|i| i.key.as_str()).collect();
        assert!(keys.contains(&"health.consecutive_failures"), "{keys:?}");
        assert!(keys.contains(&"health.max_ejection_percent"), "{keys:?}");
        assert!(keys.contains(&"health.degraded_success_rate"), "{keys:?}");
    }
}
