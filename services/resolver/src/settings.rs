//! Resolver-specific settings (`PROXYBUS_RESOLVER_*`), loaded with the same
//! [`load`](proxybus_shared::config::load) as the seed's `ProxySettings`, and the
//! [`ResolverConfig`] that bundles everything [`run`](crate::run) needs.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use proxybus_shared::breaker::BreakerConfig;
use proxybus_shared::config::{self, ConfigError, EnvSource, Issues, PROXY_ENV_PREFIX, ProxySettings, Validate, key};
use proxybus_shared::nats::NatsSettings;
use proxybus_shared::{ConnectionType, ExchangeId, FallbackPolicy, Region};
use serde::Deserialize;

/// Prefix of the resolver's own environment variables.
pub(crate) const RESOLVER_ENV_PREFIX: &str = "PROXYBUS_RESOLVER_";

/// Settings of the resolver beyond the seed's `ProxySettings`.
///
/// Every field has a default; see `docs/resolver.md` for the table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResolverSettings {
    /// The resolver's own region, used for requests whose `region` is null; it also answers
    /// `proxy.v1.request_region.{region}.*.*` and names it in every answer's `resolver_region`.
    /// Its upstream proxy services are its region's (docs/scaling.md).
    pub region: Option<Region>,
    /// Every region of the deployment (this one included): a request for region `any` is
    /// scattered to their resolvers and the best answer taken. Empty: `any` means `region`.
    pub regions: Vec<Region>,
    /// How long a request for region `any` waits for the regions' answers, in milliseconds.
    pub any_region_deadline_ms: u64,
    /// Most cached answers kept (LRU-like eviction beyond it).
    pub cache_max_entries: u64,
    /// How long after its TTL an answer may still be served as `stale_cache` while upstream fails.
    pub max_staleness_seconds: u64,
    /// How long the healthiest endpoint may take before the same request also goes to the next one.
    pub hedge_delay_ms: u64,
    /// Consecutive failures that open an endpoint's breaker.
    pub failure_threshold: u32,
    /// How long an open breaker waits before a probe.
    pub recovery_timeout_seconds: u64,
    /// Probe calls allowed while half-open.
    pub half_open_probes: u32,
    /// Largest request body accepted, in bytes.
    pub max_payload_bytes: usize,
    /// What to answer when upstream, stale cache and embedded configuration all have nothing.
    pub fallback_policy: FallbackPolicy,
    /// Address of the Prometheus `/metrics` endpoint; none = no endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Answers fetched at start-up, so the first feeds find them cached.
    pub warm_up: Vec<WarmUp>,
    /// Scheme of endpoints found by SRV (`external_service.srv_name`) (`http` or `https`).
    pub srv_scheme: String,
    /// DNS servers (`ip:port`) for SRV lookups; empty = the system's (`/etc/resolv.conf`).
    pub dns_servers: Vec<SocketAddr>,
    /// How often SRV records are looked up again.
    pub discovery_refresh_seconds: u64,
    /// How often each endpoint's `GET /healthz` is probed; 0 = never.
    pub health_probe_interval_seconds: u64,
    /// How long a shutdown waits for requests in flight.
    pub shutdown_grace_seconds: u64,
    /// Requests handled at once; beyond it the subscription is not read.
    pub max_in_flight: usize,
    /// Rate budgets (`PROXY_BUDGETS`): which exchanges are budgeted and each one's
    /// headroom; a cached or embedded proxy near a limit is not served for that
    /// exchange. Keep equal to the pools' `budgets`.
    pub budgets: proxybus_shared::budget::BudgetSettings,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        Self {
            region: None,
            regions: Vec::new(),
            any_region_deadline_ms: 500,
            cache_max_entries: 100_000,
            max_staleness_seconds: 600,
            hedge_delay_ms: 150,
            failure_threshold: 5,
            recovery_timeout_seconds: 30,
            half_open_probes: 1,
            max_payload_bytes: proxybus_shared::codec::DEFAULT_MAX_PAYLOAD,
            fallback_policy: FallbackPolicy::DirectConnection,
            metrics_listen: None,
            warm_up: Vec::new(),
            srv_scheme: "http".into(),
            dns_servers: Vec::new(),
            discovery_refresh_seconds: 30,
            health_probe_interval_seconds: 10,
            shutdown_grace_seconds: 10,
            max_in_flight: 4096,
            budgets: proxybus_shared::budget::BudgetSettings::default(),
        }
    }
}

/// One answer to fetch at start-up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmUp {
    /// The feed the answer is for (the cache is per client).
    pub client_id: String,
    /// Exchange.
    pub exchange_id: ExchangeId,
    /// Connection type.
    pub connection_type: ConnectionType,
    /// Region, if not the resolver's own.
    #[serde(default)]
    pub region: Option<Region>,
}

impl ResolverSettings {
    /// Breaker thresholds for every endpoint.
    pub fn breaker(&self) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: self.failure_threshold,
            recovery_timeout: Duration::from_secs(self.recovery_timeout_seconds),
            half_open_probes: self.half_open_probes,
        }
    }

    /// The hedge delay.
    pub fn hedge_delay(&self) -> Duration {
        Duration::from_millis(self.hedge_delay_ms)
    }

    /// How long a request for region `any` waits for the regions' answers.
    pub fn any_region_deadline(&self) -> Duration {
        Duration::from_millis(self.any_region_deadline_ms)
    }

    /// The maximum staleness of a cached answer.
    pub fn max_staleness(&self) -> Duration {
        Duration::from_secs(self.max_staleness_seconds)
    }
}

impl Validate for ResolverSettings {
    fn validate(&self, prefix: &str, issues: &mut Issues) {
        issues.check_range(key(prefix, "cache_max_entries"), self.cache_max_entries, 1..=100_000_000);
        issues.check_range(key(prefix, "max_staleness_seconds"), self.max_staleness_seconds, 0..=86_400);
        issues.check_range(key(prefix, "hedge_delay_ms"), self.hedge_delay_ms, 1..=60_000);
        issues.check_range(key(prefix, "failure_threshold"), self.failure_threshold, 1..=1_000);
        issues.check_range(key(prefix, "recovery_timeout_seconds"), self.recovery_timeout_seconds, 1..=3_600);
        issues.check_range(key(prefix, "half_open_probes"), self.half_open_probes, 1..=100);
        // NATS's own max_payload is 1 MiB by default; a larger limit would never be reached.
        issues.check_range(key(prefix, "max_payload_bytes"), self.max_payload_bytes, 256..=64 * 1024 * 1024);
        issues.check_range(key(prefix, "discovery_refresh_seconds"), self.discovery_refresh_seconds, 1..=86_400);
        issues.check_range(key(prefix, "health_probe_interval_seconds"), self.health_probe_interval_seconds, 0..=3_600);
        issues.check_range(key(prefix, "shutdown_grace_seconds"), self.shutdown_grace_seconds, 0..=600);
        issues.check_range(key(prefix, "max_in_flight"), self.max_in_flight, 1..=1_000_000);
        issues.check_range(key(prefix, "any_region_deadline_ms"), self.any_region_deadline_ms, 10..=60_000);
        if self.region.as_ref().is_some_and(Region::is_any) {
            issues.push(key(prefix, "region"), "\"any\" asks for any region; it cannot be a resolver's region");
        }
        for (i, region) in self.regions.iter().enumerate() {
            if region.is_any() {
                issues.push(key(prefix, &format!("regions[{i}]")), "\"any\" is not a region");
            }
        }
        for (exchange, limits) in &self.budgets.exchanges {
            for (field, problem) in limits.problems() {
                issues.push(key(prefix, &format!("budgets.exchanges.{exchange}.{field}")), problem);
            }
        }
        if !matches!(self.srv_scheme.as_str(), "http" | "https") {
            issues.push(key(prefix, "srv_scheme"), format!("{:?} is not http or https", self.srv_scheme));
        }
        for (i, warm) in self.warm_up.iter().enumerate() {
            if warm.client_id.is_empty() || warm.client_id.len() > MAX_CLIENT_ID {
                issues.push(key(prefix, &format!("warm_up[{i}].client_id")), "must be 1 to 256 characters");
            }
        }
    }
}

/// Longest `client_id` accepted in a request.
pub(crate) const MAX_CLIENT_ID: usize = 256;

/// Everything the resolver runs with.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// The seed's proxy settings (`CRYPTOFEED_PROXY_*`).
    pub proxy: ProxySettings,
    /// The resolver's own settings (`PROXYBUS_RESOLVER_*`).
    pub resolver: ResolverSettings,
    /// How to reach NATS (`NATS_*`).
    pub nats: NatsSettings,
}

impl ResolverConfig {
    /// Loads the three parts: `ProxySettings` from the optional TOML `proxy_file`
    /// and `CRYPTOFEED_PROXY_*`, [`ResolverSettings`] from the optional TOML
    /// `resolver_file` and `PROXYBUS_RESOLVER_*`, and `NATS_*`. Every invalid
    /// setting of every part is reported at once.
    pub fn load(proxy_file: Option<&Path>, resolver_file: Option<&Path>, env: &EnvSource) -> Result<Self, ConfigError> {
        let mut issues = Vec::new();
        let proxy = config::load::<ProxySettings>(proxy_file, env, PROXY_ENV_PREFIX)
            .map_err(|err| collect(err, &mut issues))
            .ok();
        let resolver = config::load::<ResolverSettings>(resolver_file, env, RESOLVER_ENV_PREFIX)
            .map_err(|err| collect(err, &mut issues))
            .ok();
        let nats = NatsSettings::from_env(env).map_err(|err| collect(err, &mut issues)).ok();
        match (proxy, resolver, nats) {
            (Some(proxy), Some(resolver), Some(nats)) if issues.is_empty() => Ok(Self { proxy, resolver, nats }),
            _ => Err(ConfigError::Invalid(issues)),
        }
    }
}

fn collect(err: ConfigError, issues: &mut Vec<config::ConfigIssue>) {
    match err {
        ConfigError::Invalid(found) => issues.extend(found),
        other => issues.push(config::ConfigIssue::new("(file)", other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_invalid_setting_of_every_part_is_reported() {
        let env: EnvSource = [
            ("PROXYBUS_RESOLVER_HEDGE_DELAY_MS", "0"),
            ("PROXYBUS_RESOLVER_SRV_SCHEME", "ftp"),
            ("PROXYBUS_RESOLVER_NO_SUCH_SETTING", "1"),
            ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__TIMEOUT_SECONDS", "0"),
            ("NATS_URL", "nats://u:secret@[bad"),
        ]
        .into_iter()
        .collect();
        let err = ResolverConfig::load(None, None, &env).unwrap_err();
        let keys: Vec<&str> = err.issues().iter().map(|i| i.key.as_str()).collect();
        assert!(keys.contains(&"external_service.timeout_seconds"), "{keys:?}");
        assert!(keys.contains(&"NATS_URL[0]"), "{keys:?}");
        assert!(!err.to_string().contains("secret"), "{err}");
        // The unknown setting stops deserialization of the resolver part before validation.
        assert!(err.to_string().contains("no_such_setting"), "{err}");
        let env: EnvSource =
            [("PROXYBUS_RESOLVER_HEDGE_DELAY_MS", "0"), ("PROXYBUS_RESOLVER_SRV_SCHEME", "ftp")].into_iter().collect();
        let keys: Vec<String> =
            ResolverConfig::load(None, None, &env).unwrap_err().issues().iter().map(|i| i.key.clone()).collect();
        assert_eq!(keys, ["hedge_delay_ms", "srv_scheme"]);
    }

    #[test]
    fn defaults_and_json_lists_from_the_environment() {
        let env: EnvSource = [
            (
                "PROXYBUS_RESOLVER_WARM_UP",
                r#"[{"client_id":"feed-1","exchange_id":"binance","connection_type":"websocket"}]"#,
            ),
            ("PROXYBUS_RESOLVER_DNS_SERVERS", r#"["127.0.0.1:5353"]"#),
            ("PROXYBUS_RESOLVER_FALLBACK_POLICY", "fail"),
        ]
        .into_iter()
        .collect();
        let config = ResolverConfig::load(None, None, &env).unwrap();
        assert_eq!(config.resolver.warm_up[0].connection_type, ConnectionType::Websocket);
        assert_eq!(config.resolver.dns_servers[0].port(), 5353);
        assert_eq!(config.resolver.fallback_policy, FallbackPolicy::Fail);
        assert!(config.resolver.regions.is_empty() && config.resolver.any_region_deadline_ms == 500);
        let env: EnvSource = [
            ("PROXYBUS_RESOLVER_REGION", "eu-west"),
            ("PROXYBUS_RESOLVER_REGIONS", r#"["us-east","eu-west"]"#),
            ("PROXYBUS_RESOLVER_ANY_REGION_DEADLINE_MS", "300"),
        ]
        .into_iter()
        .collect();
        let config = ResolverConfig::load(None, None, &env).unwrap();
        assert_eq!(config.resolver.regions.len(), 2);
        assert_eq!(config.resolver.any_region_deadline(), Duration::from_millis(300));
        let env: EnvSource =
            [("PROXYBUS_RESOLVER_REGION", "any"), ("PROXYBUS_RESOLVER_REGIONS", r#"["us-east","any"]"#)]
                .into_iter()
                .collect();
        let keys: Vec<String> =
            ResolverConfig::load(None, None, &env).unwrap_err().issues().iter().map(|i| i.key.clone()).collect();
        assert_eq!(keys, ["region", "regions[1]"]);
        assert_eq!(config.resolver.max_payload_bytes, 64 * 1024);
        assert_eq!(config.resolver.breaker().failure_threshold, 5);
        assert_eq!(config.resolver.breaker().recovery_timeout, Duration::from_secs(30));
    }
}
