//! Configuration of the aggregator: its own settings (`PROXYBUS_AGGREGATOR_*`, or a
//! TOML file), the proxy services to push health to (the resolver's
//! `CRYPTOFEED_PROXY_EXTERNAL_SERVICE__*`, same endpoints and auth) and NATS
//! (`NATS_*`). Every invalid setting is reported at once.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use proxybus_shared::config::{
    self, ConfigError, EnvSource, ExternalProxyServiceConfig, Issues, PROXY_ENV_PREFIX, ProxySettings, Validate, key,
};
use proxybus_shared::feedback::{FeedbackStreamConfig, MIN_DUPLICATE_WINDOW};
use proxybus_shared::nats::NatsSettings;
use proxybus_shared::subject::{
    AGGREGATOR_EVENT_IDS_STREAM, AGGREGATOR_SERVICE, AGGREGATOR_STATE_BUCKET, HEALTH_BUCKET,
};
use serde::Deserialize;

use crate::policy::HealthPolicy;

/// Prefix of the aggregator's own environment variables.
pub(crate) const ENV_PREFIX: &str = "PROXYBUS_AGGREGATOR_";

/// The aggregator's own settings (`PROXYBUS_AGGREGATOR_{NAME}`, nested with `__`,
/// e.g. `PROXYBUS_AGGREGATOR_HEALTH__CONSECUTIVE_FAILURES=5`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AggregatorSettings {
    /// Thresholds of the health model.
    pub health: HealthPolicy,
    /// Stream `PROXY_FEEDBACK`: how long events are kept, in seconds (default 604 800, a week).
    pub stream_max_age_seconds: u64,
    /// Stream `PROXY_FEEDBACK`: largest size in bytes, -1 unlimited (default 1 GiB).
    pub stream_max_bytes: i64,
    /// Stream `PROXY_FEEDBACK`: duplicate window in seconds, at least 120 (default 120).
    pub duplicate_window_seconds: u64,
    /// KV bucket of the health stats (default `PROXY_HEALTH`).
    pub health_bucket: String,
    /// KV bucket of the aggregator's checkpoint (default `PROXY_AGGREGATOR`).
    pub state_bucket: String,
    /// How long, in seconds of stream time, an `event_id` folded once is remembered so
    /// that a repeat is dropped whatever its `Nats-Msg-Id` (default 86 400, a day;
    /// at least the stream's duplicate window).
    pub event_id_horizon_seconds: u64,
    /// Most event ids remembered (default 2 000 000, about 64 bytes each); past it
    /// the oldest are forgotten early.
    pub event_ids_max: usize,
    /// Stream the remembered event ids are persisted in with each commit (default
    /// `PROXY_AGGREGATOR_EVENT_IDS`).
    pub event_ids_stream: String,
    /// Messages per pull request (default 500).
    pub batch_size: usize,
    /// How long a pull request waits for messages, in milliseconds (default 1000).
    pub fetch_wait_ms: u64,
    /// Ack wait of the consumer, in seconds (default 60).
    pub ack_wait_seconds: u64,
    /// Most proxies in one checkpoint value (default 200; keeps each under 1 MiB). A
    /// commit with more is written as several values (see `crate::store`).
    pub max_commit_records: usize,
    /// While behind, longest time folded events wait for their commit, in
    /// milliseconds (default 1000). A caught-up aggregator commits after every fetch.
    pub commit_interval_ms: u64,
    /// While behind, most messages folded into one commit (default 100 000). A proxy
    /// touched several times in one commit is written once.
    pub commit_max_events: usize,
    /// While behind, most proxies changed in one commit (default 20 000). What a commit
    /// holds in memory — its records, encoded once for the checkpoint and the bucket — is
    /// proportional to this, whatever the fold's speed: with many proxies, a second of
    /// events on a fast machine changes more of them than on a slow one.
    pub commit_max_proxies: usize,
    /// How often expired ejections and bans are published, in milliseconds (default 1000).
    pub sweep_interval_ms: u64,
    /// How often the fold lag is measured, in milliseconds (default 5000).
    pub lag_interval_ms: u64,
    /// Address of the Prometheus `/metrics` listener; empty disables it (default `0.0.0.0:9464`).
    pub metrics_listen: String,
    /// Push-back of health to the proxy services.
    pub push: PushSettings,
    /// Leadership lease of the aggregators sharing a health bucket, in milliseconds
    /// (default 3000, at least 500): the active one renews it every third of this; a
    /// standby takes it over when it has not been renewed for this long (see `crate::lease`).
    pub lease_ttl_ms: u64,
}

impl Default for AggregatorSettings {
    fn default() -> Self {
        Self {
            health: HealthPolicy::default(),
            stream_max_age_seconds: 7 * 24 * 3600,
            stream_max_bytes: 1 << 30,
            duplicate_window_seconds: MIN_DUPLICATE_WINDOW.as_secs(),
            health_bucket: HEALTH_BUCKET.to_owned(),
            state_bucket: AGGREGATOR_STATE_BUCKET.to_owned(),
            event_id_horizon_seconds: 86_400,
            event_ids_max: crate::fold::DEFAULT_EVENT_IDS_MAX,
            event_ids_stream: AGGREGATOR_EVENT_IDS_STREAM.to_owned(),
            batch_size: 500,
            fetch_wait_ms: 1000,
            ack_wait_seconds: 60,
            max_commit_records: 200,
            commit_interval_ms: 1000,
            commit_max_events: 100_000,
            commit_max_proxies: 20_000,
            sweep_interval_ms: 1000,
            lag_interval_ms: 5000,
            metrics_listen: "0.0.0.0:9464".to_owned(),
            push: PushSettings::default(),
            lease_ttl_ms: 3000,
        }
    }
}

/// Push-back of changed health stats to `POST {endpoint}/api/v1/proxy/health`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushSettings {
    /// Whether to push at all (default true; nothing is pushed without endpoints).
    pub enabled: bool,
    /// Most stats in one POST (default 500).
    pub batch_max: usize,
    /// Attempts per batch before it is put back for later (default 3).
    pub attempts: u32,
    /// Pause before the first retry, doubled for each further one, in milliseconds (default 200).
    pub retry_backoff_ms: u64,
    /// Failures in a row that open an endpoint's breaker (default 5).
    pub breaker_failure_threshold: u32,
    /// How long a breaker stays open, in milliseconds (default 30 000).
    pub breaker_recovery_ms: u64,
}

impl Default for PushSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            batch_max: 500,
            attempts: 3,
            retry_backoff_ms: 200,
            breaker_failure_threshold: 5,
            breaker_recovery_ms: 30_000,
        }
    }
}

impl Validate for AggregatorSettings {
    fn validate(&self, prefix: &str, issues: &mut Issues) {
        self.health.validate(&key(prefix, "health"), issues);
        issues.check_range(key(prefix, "duplicate_window_seconds"), self.duplicate_window_seconds, 120..=86_400);
        if self.stream_max_bytes == 0 || self.stream_max_bytes < -1 {
            issues.push(key(prefix, "stream_max_bytes"), "must be positive or -1 (unlimited)");
        }
        for (name, bucket) in [("health_bucket", &self.health_bucket), ("state_bucket", &self.state_bucket)] {
            let valid =
                !bucket.is_empty() && bucket.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                issues.push(key(prefix, name), format!("{bucket:?} is not a bucket name (A-Z, a-z, 0-9, _ and -)"));
            }
        }
        issues.check_range(
            key(prefix, "event_id_horizon_seconds"),
            self.event_id_horizon_seconds,
            self.duplicate_window_seconds..=30 * 86_400,
        );
        issues.check_range(key(prefix, "event_ids_max"), self.event_ids_max, 1_000..=100_000_000);
        let stream_ok = !self.event_ids_stream.is_empty()
            && self.event_ids_stream.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !stream_ok {
            issues.push(key(prefix, "event_ids_stream"), format!("{:?} is not a stream name", self.event_ids_stream));
        }
        if self.health_bucket == self.state_bucket {
            issues.push(key(prefix, "state_bucket"), "must differ from health_bucket");
        }
        issues.check_range(key(prefix, "batch_size"), self.batch_size, 1..=10_000);
        issues.check_range(key(prefix, "fetch_wait_ms"), self.fetch_wait_ms, 10..=60_000);
        issues.check_range(key(prefix, "ack_wait_seconds"), self.ack_wait_seconds, 1..=3600);
        issues.check_range(key(prefix, "max_commit_records"), self.max_commit_records, 1..=1000);
        issues.check_range(key(prefix, "commit_interval_ms"), self.commit_interval_ms, 0..=30_000);
        issues.check_range(key(prefix, "commit_max_events"), self.commit_max_events, 1..=1_000_000);
        issues.check_range(key(prefix, "commit_max_proxies"), self.commit_max_proxies, 1..=1_000_000);
        if self.commit_interval_ms / 1000 >= self.ack_wait_seconds {
            issues.push(key(prefix, "commit_interval_ms"), "must be shorter than ack_wait_seconds");
        }
        issues.check_range(key(prefix, "sweep_interval_ms"), self.sweep_interval_ms, 10..=3_600_000);
        issues.check_range(key(prefix, "lag_interval_ms"), self.lag_interval_ms, 10..=3_600_000);
        if !self.metrics_listen.is_empty() && self.metrics_listen.parse::<SocketAddr>().is_err() {
            issues.push(
                key(prefix, "metrics_listen"),
                format!("{:?} is not an address like 0.0.0.0:9464", self.metrics_listen),
            );
        }
        issues.check_range(key(prefix, "lease_ttl_ms"), self.lease_ttl_ms, 500..=600_000);
        issues.check_range(key(prefix, "push.batch_max"), self.push.batch_max, 1..=10_000);
        issues.check_range(key(prefix, "push.attempts"), self.push.attempts, 1..=100);
        issues.check_range(
            key(prefix, "push.breaker_failure_threshold"),
            self.push.breaker_failure_threshold,
            1..=1000,
        );
    }
}

impl AggregatorSettings {
    /// The shape of stream `PROXY_FEEDBACK` these settings ask for.
    pub fn stream(&self) -> FeedbackStreamConfig {
        FeedbackStreamConfig {
            max_age: Duration::from_secs(self.stream_max_age_seconds),
            max_bytes: self.stream_max_bytes,
            duplicate_window: Duration::from_secs(self.duplicate_window_seconds),
            ..FeedbackStreamConfig::default()
        }
    }

    /// An empty set of remembered event ids with these settings' horizon and cap.
    pub(crate) fn event_ids(&self) -> crate::event_ids::EventIds {
        crate::event_ids::EventIds::new(Duration::from_secs(self.event_id_horizon_seconds), self.event_ids_max)
    }

    /// The leadership lease's time to live.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    /// The metrics listener address, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listen.parse().ok()
    }
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct AggregatorConfig {
    /// How to reach NATS.
    pub nats: NatsSettings,
    /// The aggregator's own settings.
    pub settings: AggregatorSettings,
    /// Proxy services to push health to, with the resolver's auth.
    pub proxy_services: ExternalProxyServiceConfig,
}

impl AggregatorConfig {
    /// Defaults for a NATS server at `url`, with no metrics listener and no proxy service.
    pub fn for_url(url: impl Into<String>) -> Self {
        Self {
            nats: NatsSettings::new(url).with_name(AGGREGATOR_SERVICE),
            settings: AggregatorSettings { metrics_listen: String::new(), ..AggregatorSettings::default() },
            proxy_services: ExternalProxyServiceConfig::default(),
        }
    }

    /// Reads the configuration: `file` (TOML, the aggregator's settings) overlaid by
    /// `PROXYBUS_AGGREGATOR_*`, `CRYPTOFEED_PROXY_*` (optionally from `proxy_file`) and `NATS_*`.
    pub fn load(file: Option<&Path>, proxy_file: Option<&Path>, env: &EnvSource) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let settings = config::load::<AggregatorSettings>(file, env, ENV_PREFIX)
            .map_err(|err| collect(&mut problems, err, "PROXYBUS_AGGREGATOR_"))
            .ok();
        let proxy = config::load::<ProxySettings>(proxy_file, env, PROXY_ENV_PREFIX)
            .map_err(|err| collect(&mut problems, err, "CRYPTOFEED_PROXY_"))
            .ok();
        let nats = NatsSettings::from_env(env).map_err(|err| collect(&mut problems, err, "")).ok();
        match (settings, proxy, nats) {
            (Some(settings), Some(proxy), Some(nats)) if problems.is_empty() => {
                Ok(Self { nats: nats.with_name(AGGREGATOR_SERVICE), settings, proxy_services: proxy.external_service })
            }
            _ => Err(ConfigError::Invalid(problems)),
        }
    }
}

fn collect(into: &mut Vec<config::ConfigIssue>, err: ConfigError, origin: &str) {
    match err {
        ConfigError::Invalid(issues) => into.extend(issues.into_iter().map(|mut issue| {
            if !origin.is_empty() {
                issue.key = format!("{origin}: {}", issue.key);
            }
            issue
        })),
        other => into.push(config::ConfigIssue::new(origin.trim_end_matches('_'), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_defaults_and_every_problem_is_reported() {
        let env: EnvSource = [
            ("PROXYBUS_AGGREGATOR_HEALTH__CONSECUTIVE_FAILURES", "7"),
            ("PROXYBUS_AGGREGATOR_BATCH_SIZE", "100"),
            ("NATS_URL", "nats://127.0.0.1:4333"),
            ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__ENDPOINTS", r#"["http://pool:8080"]"#),
            ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__AUTH_CREDENTIALS__TOKEN", "t0ken"),
        ]
        .into_iter()
        .collect();
        let config = AggregatorConfig::load(None, None, &env).unwrap();
        assert_eq!(config.settings.health.consecutive_failures, 7);
        assert_eq!(config.settings.batch_size, 100);
        assert_eq!(config.settings.lease_ttl(), Duration::from_secs(3), "the default lease");
        assert_eq!(config.nats.url, "nats://127.0.0.1:4333");
        assert_eq!(config.proxy_services.endpoints, vec!["http://pool:8080".to_owned()]);

        let env: EnvSource = [
            ("PROXYBUS_AGGREGATOR_HEALTH__MAX_EJECTION_PERCENT", "101"),
            ("PROXYBUS_AGGREGATOR_DUPLICATE_WINDOW_SECONDS", "30"),
            ("NATS_CONNECT_TIMEOUT_SECONDS", "0"),
            ("PROXYBUS_AGGREGATOR_LEASE_TTL_MS", "499"),
        ]
        .into_iter()
        .collect();
        let err = AggregatorConfig::load(None, None, &env).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("max_ejection_percent"), "{text}");
        assert!(text.contains("duplicate_window_seconds"), "{text}");
        assert!(text.contains("NATS_CONNECT_TIMEOUT_SECONDS"), "{text}");
        assert!(text.contains("lease_ttl_ms"), "{text}");
    }
}
