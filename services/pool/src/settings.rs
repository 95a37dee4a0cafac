//! What the service runs with: [`PoolConfig`], its [`PoolSettings`] (a TOML file,
//! `--config` or `PROXYBUS_POOL_CONFIG`, overlaid by `PROXYBUS_POOL_*` variables,
//! `__` between nesting levels, read from an injected [`EnvSource`]) and NATS (`NATS_*`).
//!
//! | setting | variable | default | meaning |
//! | --- | --- | --- | --- |
//! | `listen` | `PROXYBUS_POOL_LISTEN` | `127.0.0.1:8080` | address of the HTTP API |
//! | `inventory` | `PROXYBUS_POOL_INVENTORY` | `inventory.toml` | inventory file |
//! | `watch_inventory` | `PROXYBUS_POOL_WATCH_INVENTORY` | `true` | reload when the file changes (SIGHUP always reloads) |
//! | `request_timeout_seconds` | `…_REQUEST_TIMEOUT_SECONDS` | `10` | per-request timeout, 1–300 |
//! | `max_body_bytes` | `…_MAX_BODY_BYTES` | `65536` | request body limit (413 above), 1 KiB–16 MiB |
//! | `auth.tokens` | `…_AUTH__TOKENS` (JSON list) | `[]` | accepted bearer tokens / API keys |
//! | `auth.disabled` | `…_AUTH__DISABLED` | `false` | no credentials needed (a demo on 127.0.0.1) |
//! | `auth.allowlist` | `…_AUTH__ALLOWLIST` (JSON list) | `[]` | client IPs / CIDRs allowed; empty: any |
//! | `tls.cert_file`, `tls.key_file` | `…_TLS__CERT_FILE`, `…_TLS__KEY_FILE` | — | serve HTTPS with this PEM chain and key |
//! | `tls.client_ca_file` | `…_TLS__CLIENT_CA_FILE` | — | PEM roots client certificates are verified against |
//! | `tls.client_auth` | `…_TLS__CLIENT_AUTH` | `none` | `none`, `optional` (verified if presented), `required` (mutual TLS; then no token is needed) |
//! | `health.listen_nats` | `…_HEALTH__LISTEN_NATS` | `true` | apply `proxy.v1.health.>` (NATS from `NATS_*`) |
//! | `health.rules.*` | `…_HEALTH__RULES__{NAME}` | as in [docs/health.md](../../../docs/health.md) | the health model's thresholds and durations, the aggregator's `health.*` |
//! | `health.consecutive_failures` | `…_HEALTH__CONSECUTIVE_FAILURES` | `5` | proxy faults in a row that eject a proxy (`rules.consecutive_failures`); 0 disables local ejection |
//! | `health.ejection_seconds` | `…_HEALTH__EJECTION_SECONDS` | — | when set, `rules.base_ejection_time_ms` in seconds |
//! | `health.ban_seconds` | `…_HEALTH__BAN_SECONDS` | — | when set, `rules.ban_403_ms` in seconds: the bar after `rules.refusals_to_bar` 403s in a row |
//! | `health.cooldown_seconds` | `…_HEALTH__COOLDOWN_SECONDS` | — | when set, `rules.default_cooldown_ms` in seconds: the 429 cool-down without `Retry-After` |
//! | `health.default_latency_ms` | `…_HEALTH__DEFAULT_LATENCY_MS` | `100` | latency of an unmeasured proxy (`p2c_ewma`) |
//! | `health.ewma_decay_seconds` | `…_HEALTH__EWMA_DECAY_SECONDS` | `60` | peak-EWMA time constant |
//! | `active_checks.enabled` | `…_ACTIVE_CHECKS__ENABLED` | `false` | probes: a tunnel through every proxy to `connect_target` (or a TCP connect) |
//! | `active_checks.interval_seconds` | `…__INTERVAL_SECONDS` | `15` | between rounds |
//! | `active_checks.timeout_seconds` | `…__TIMEOUT_SECONDS` | `3` | per check |
//! | `active_checks.connect_target` | `…__CONNECT_TARGET` | — | `host:port` every proxy opens a tunnel to (HTTP CONNECT, SOCKS); none: TCP connect only |
//! | `active_checks.unhealthy_threshold` / `healthy_threshold` | … | `2` / `1` | checks in a row that take a proxy out / bring it back |
//! | `active_checks.ca_file` / `proxy_ca_file` | `…__CA_FILE` / `…__PROXY_CA_FILE` | — | extra CAs for the ping and `https` proxies / for `https` proxies only |
//! | `sessions.idle_seconds` | `…_SESSIONS__IDLE_SECONDS` | `3600` | a `session_key` session unused this long is forgotten |
//! | `sessions.exchanges.{id}.rotate_after_uses` | `…_SESSIONS__EXCHANGES__BINANCE__ROTATE_AFTER_USES` | `0` | answers after which a session moves to another proxy (0: never) |
//! | `sessions.exchanges.{id}.rotate_after_seconds` | `…__ROTATE_AFTER_SECONDS` | binance `82800` (23 h) | seconds after which a session moves (0: never), before Binance's 24 h websocket cut |
//! | `sessions.exchanges.{id}.jitter` | `…__JITTER` | `0.1` | a session moves up to this fraction of `rotate_after_seconds` earlier, drawn per session, 0–0.5 |
//! | `sessions.default.*` | `…_SESSIONS__DEFAULT__…` | no rotation | the plan of exchanges without their own |
//! | `budgets.enabled` | `…_BUDGETS__ENABLED` | `true` | keep rate budgets per (proxy, exchange) in `PROXY_BUDGETS` and skip proxies near a limit |
//! | `budgets.exchanges.{id}.request_weight_limit` | `…_BUDGETS__EXCHANGES__BINANCE__REQUEST_WEIGHT_LIMIT` | binance `6000` | request weight per IP and window (0: not budgeted) |
//! | `budgets.exchanges.{id}.request_window_seconds` | … | binance `60` | the weight window |
//! | `budgets.exchanges.{id}.weight_header` | … | binance `x-mbx-used-weight-1m` | response header with the IP's used weight |
//! | `budgets.exchanges.{id}.ws_connect_limit` | … | binance `300` | websocket connects per IP and window (0: not budgeted) |
//! | `budgets.exchanges.{id}.ws_connect_window_seconds` | … | binance `300` | the connect window |
//! | `budgets.exchanges.{id}.headroom` | … | `0.8` | fraction of a limit past which a proxy is skipped while others have room |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proxybus_shared::ExchangeId;
use proxybus_shared::config::{self, ConfigError, EnvSource, Issues, Validate, key};
use proxybus_shared::nats::NatsSettings;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use proxybus_shared::health::HealthPolicy;

use crate::health::HealthOptions;
use crate::selector::SelectorOptions;

/// Prefix of the service's variables.
pub(crate) const ENV_PREFIX: &str = "PROXYBUS_POOL_";

/// The proxy-pool service's own settings: the `--config` file's keys, each overridable by a
/// `PROXYBUS_POOL_*` variable (the table in the module documentation).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolSettings {
    /// Address of the HTTP API (port 0: any free port).
    pub listen: SocketAddr,
    /// Inventory file.
    pub inventory: PathBuf,
    /// Reload the inventory when its file changes.
    pub watch_inventory: bool,
    /// Per-request timeout.
    pub request_timeout_seconds: u64,
    /// Request body limit in bytes.
    pub max_body_bytes: usize,
    /// Who may call the API.
    pub auth: AuthSettings,
    /// HTTPS.
    pub tls: Option<TlsSettings>,
    /// Health sources and thresholds.
    pub health: HealthSettings,
    /// Active checks.
    pub active_checks: ActiveCheckSettings,
    /// Rate budgets per (proxy, exchange): the exchanges' per-IP limits.
    pub budgets: proxybus_shared::budget::BudgetSettings,
    /// Sessions of `session_key` and their rotation plans.
    pub sessions: crate::sessions::SessionSettings,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            inventory: PathBuf::from("inventory.toml"),
            watch_inventory: true,
            request_timeout_seconds: 10,
            max_body_bytes: 64 * 1024,
            auth: AuthSettings::default(),
            tls: None,
            health: HealthSettings::default(),
            active_checks: ActiveCheckSettings::default(),
            budgets: proxybus_shared::budget::BudgetSettings::default(),
            sessions: crate::sessions::SessionSettings::default(),
        }
    }
}

/// What [`crate::run`] takes: the service's settings and how to reach NATS.
#[derive(Debug, Clone, Default)]
pub struct PoolConfig {
    /// The service's own settings.
    pub settings: PoolSettings,
    /// NATS, from `NATS_*` (not from the file): health from `proxy.v1.health.>`, rate
    /// budgets, the published inventory and probe results. `None`: HTTP only.
    pub nats: Option<NatsSettings>,
}

impl PoolConfig {
    /// Loads [`PoolSettings`] from the optional TOML `file` and the `PROXYBUS_POOL_*`
    /// variables of `env` (which win), plus `NATS_*` when `health.listen_nats` is on.
    ///
    /// # Errors
    /// Every invalid setting, in one [`ConfigError`].
    pub fn load(file: Option<&Path>, env: &EnvSource) -> Result<Self, ConfigError> {
        let settings: PoolSettings = config::load(file, env, ENV_PREFIX)?;
        let nats = if settings.health.listen_nats {
            Some(NatsSettings::from_env(env)?.with_name("proxybus-pool"))
        } else {
            None
        };
        Ok(Self { settings, nats })
    }

    /// The settings file to read: the `--config` flag, else `PROXYBUS_POOL_CONFIG`
    /// ([`config::POOL_CONFIG_VAR`]); `None`: defaults and variables only.
    pub fn file(flag: Option<PathBuf>, env: &EnvSource) -> Option<PathBuf> {
        env.file_path(flag, config::POOL_CONFIG_VAR, &[])
    }
}

impl PoolSettings {
    /// The per-request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_seconds)
    }

    /// The selector's options these settings describe.
    pub fn selector_options(&self) -> SelectorOptions {
        let h = &self.health;
        SelectorOptions {
            health: HealthOptions {
                rules: h.rules(),
                local_ejection: h.consecutive_failures > 0,
                unhealthy_checks: self.active_checks.unhealthy_threshold,
                healthy_checks: self.active_checks.healthy_threshold,
            },
            default_latency_ms: h.default_latency_ms,
            ewma_decay: Duration::from_secs(h.ewma_decay_seconds),
            seed: None,
            budgets: self.budgets.clone(),
            sessions: self.sessions.clone(),
        }
    }

    /// Whether requests need a token: not when auth is disabled or mutual TLS is required.
    pub fn tokens_required(&self) -> bool {
        !self.auth.disabled && !self.tls.as_ref().is_some_and(|tls| tls.client_auth == ClientAuth::Required)
    }
}

impl Validate for PoolSettings {
    fn validate(&self, prefix: &str, issues: &mut Issues) {
        issues.check_range(key(prefix, "request_timeout_seconds"), self.request_timeout_seconds, 1..=300);
        issues.check_range(key(prefix, "max_body_bytes"), self.max_body_bytes, 1024..=16 * 1024 * 1024);
        self.auth.validate(&key(prefix, "auth"), issues);
        if self.tokens_required() && self.auth.tokens.is_empty() {
            issues.push(
                key(prefix, "auth.tokens"),
                "no token is configured: set auth.tokens, or tls.client_auth = \"required\", or auth.disabled = true",
            );
        }
        if let Some(tls) = &self.tls {
            tls.validate(&key(prefix, "tls"), issues);
        }
        self.health.validate(&key(prefix, "health"), issues);
        self.active_checks.validate(&key(prefix, "active_checks"), issues);
        for (name, problem) in self.sessions.problems() {
            issues.push(key(prefix, &format!("sessions.{name}")), problem);
        }
        for (exchange, limits) in &self.budgets.exchanges {
            for (field, problem) in limits.problems() {
                issues.push(key(prefix, &format!("budgets.exchanges.{exchange}.{field}")), problem);
            }
        }
    }
}

/// Who may call the API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Accepted tokens, as `Authorization: Bearer {token}` or `X-API-Key: {token}`.
    #[serde(deserialize_with = "secrets")]
    pub tokens: Vec<SecretString>,
    /// No credentials needed.
    pub disabled: bool,
    /// Client IPs or CIDRs allowed (`10.0.0.0/8`, `127.0.0.1`); empty: any.
    pub allowlist: Vec<String>,
}

impl Validate for AuthSettings {
    fn validate(&self, prefix: &str, issues: &mut Issues) {
        for (i, token) in self.tokens.iter().enumerate() {
            if token.expose_secret().trim().len() < 8 {
                issues.push(format!("{}[{i}]", key(prefix, "tokens")), "a token needs at least 8 characters");
            }
        }
        for (i, entry) in self.allowlist.iter().enumerate() {
            if crate::auth::parse_net(entry).is_none() {
                issues.push(format!("{}[{i}]", key(prefix, "allowlist")), format!("{entry:?} is not an IP or CIDR"));
            }
        }
    }
}

fn secrets<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<SecretString>, D::Error> {
    let raw = Vec::<serde_json::Value>::deserialize(deserializer)?;
    raw.into_iter()
        .map(|value| match value {
            serde_json::Value::String(s) => Ok(SecretString::from(s)),
            serde_json::Value::Number(n) => Ok(SecretString::from(n.to_string())),
            _ => Err(serde::de::Error::custom("a token must be a string")),
        })
        .collect()
}

/// Whether clients present certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No client certificates.
    #[default]
    None,
    /// Verified against `client_ca_file` when presented; tokens still required.
    Optional,
    /// Required and verified: mutual TLS authenticates the client.
    Required,
}

/// HTTPS settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM roots for client certificates.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Whether clients present certificates.
    #[serde(default)]
    pub client_auth: ClientAuth,
}

impl Validate for TlsSettings {
    fn validate(&self, prefix: &str, issues: &mut Issues) {
        for (name, path) in [("cert_file", &self.cert_file), ("key_file", &self.key_file)] {
            if !path.is_file() {
                issues.push(key(prefix, name), format!("{} is not a readable file", path.display()));
            }
        }
        match (&self.client_ca_file, self.client_auth) {
            (None, ClientAuth::Optional | ClientAuth::Required) => {
                issues.push(key(prefix, "client_ca_file"), "client certificates need a client_ca_file to verify them")
            }
            (Some(path), _) if !path.is_file() => {
                issues.push(key(prefix, "client_ca_file"), format!("{} is not a readable file", path.display()))
            }
            _ => {}
        }
    }
}

/// Health sources and thresholds.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSettings {
    /// Apply `PROXY_HEALTH` and `proxy.v1.health.>` from NATS, and publish the
    /// inventory into `PROXY_INVENTORY`.
    pub listen_nats: bool,
    /// Key of this service's inventory in `PROXY_INVENTORY` (default `default`):
    /// pools with different inventories need different ids; replicas of one pool share it.
    pub inventory_id: String,
    /// The health model's rules, shared with the aggregator (`docs/health.md`).
    pub rules: HealthPolicy,
    /// Proxy faults in a row that eject a proxy (overrides `rules.consecutive_failures`); 0 disables.
    pub consecutive_failures: u32,
    /// When set: `rules.base_ejection_time_ms`, in seconds.
    pub ejection_seconds: Option<u64>,
    /// When set: `rules.ban_403_ms`, in seconds.
    pub ban_seconds: Option<u64>,
    /// When set: `rules.default_cooldown_ms`, in seconds.
    pub cooldown_seconds: Option<u64>,
    /// Latency of an unmeasured proxy.
    pub default_latency_ms: f64,
    /// Peak-EWMA time constant.
    pub ewma_decay_seconds: u64,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            listen_nats: true,
            inventory_id: "default".to_owned(),
            rules: HealthPolicy::default(),
            consecutive_failures: 5,
            ejection_seconds: None,
            ban_seconds: None,
            cooldown_seconds: None,
            default_latency_ms: 100.0,
            ewma_decay_seconds: 60,
        }
    }
}

impl HealthSettings {
    /// The rules in force: `rules` with the older single settings applied over it.
    pub fn rules(&self) -> HealthPolicy {
        let mut rules = self.rules.clone();
        if self.consecutive_failures > 0 {
            rules.consecutive_failures = self.consecutive_failures;
        }
        if let Some(seconds) = self.ejection_seconds {
            rules.base_ejection_time_ms = seconds.saturating_mul(1000);
            rules.max_ejection_time_ms = rules.max_ejection_time_ms.max(rules.base_ejection_time_ms);
        }
        if let Some(seconds) = self.ban_seconds {
            rules.ban_403_ms = seconds.saturating_mul(1000);
        }
        if let Some(seconds) = self.cooldown_seconds {
            rules.default_cooldown_ms = seconds.saturating_mul(1000);
        }
        rules
    }
}

impl Validate for HealthSettings {
    fn validate(&self, prefix: &str, issues: &mut Issues) {
        let ok = !self.inventory_id.is_empty()
            && self.inventory_id.len() <= 64
            && self.inventory_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            issues.push(key(prefix, "inventory_id"), "expected 1 to 64 of A-Z, a-z, 0-9, '_' and '-'");
        }
        if let Some(seconds) = self.ejection_seconds {
            issues.check_range(key(prefix, "ejection_seconds"), seconds, 1..=86_400);
        }
        if let Some(seconds) = self.ban_seconds {
            issues.check_range(key(prefix, "ban_seconds"), seconds, 1..=7 * 86_400);
        }
        if let Some(seconds) = self.cooldown_seconds {
            issues.check_range(key(prefix, "cooldown_seconds"), seconds, 1..=86_400);
        }
        self.rules().validate(&key(prefix, "rules"), issues);
        issues.check_range(key(prefix, "ewma_decay_seconds"), self.ewma_decay_seconds, 1..=3_600);
        if !(self.default_latency_ms.is_finite() && self.default_latency_ms > 0.0) {
            issues.push(key(prefix, "default_latency_ms"), "must be a positive number");
        }
    }
}

/// Active checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActiveCheckSettings {
    /// Run them.
    pub enabled: bool,
    /// Between rounds.
    pub interval_seconds: u64,
    /// Per check.
    pub timeout_seconds: u64,
    /// `host:port` every proxy is asked to open a tunnel to, in its own protocol (HTTP
    /// `CONNECT`, inside TLS for `https` proxies; SOCKS5/4); none: a TCP connect only.
    pub connect_target: Option<String>,
    /// Failed checks in a row that take a proxy out.
    pub unhealthy_threshold: u32,
    /// Passed checks in a row that bring it back.
    pub healthy_threshold: u32,
    /// Publish each result into `PROXY_FEEDBACK` as feedback with `probe: true` when the
    /// pool is on NATS (default true), so the aggregator's health model judges it.
    pub publish: bool,
    /// The exchange the probes' feedback is about, the owner of `connect_target` (default `binance`).
    pub exchange: ExchangeId,
    /// Path to `GET` over TLS through the tunnel to `connect_target`, e.g. `/api/v3/ping`
    /// (Binance's "Test connectivity", weight 1); none: no ping (default).
    pub ping_path: Option<String>,
    /// PEM file of extra CAs trusted besides the public web roots, by the ping and by TLS
    /// to `https` proxies (e.g. the lab's `ca.pem`).
    pub ca_file: Option<PathBuf>,
    /// PEM file of CAs trusted for TLS to `https` proxies only (a proxy provider's private
    /// CA), never for the ping to the exchange: a proxy operator holding it could otherwise
    /// impersonate the exchange. The client library's `proxy_ca` is the same for feeds.
    pub proxy_ca_file: Option<PathBuf>,
    /// Most probes per proxy and exchange per minute, whatever `interval_seconds` says
    /// (default 2: two pings a minute cost 2 of Binance's 6 000 request weight a minute per IP).
    pub max_per_minute: u32,
}

/// The exchange probes are about when none is configured.
pub(crate) const DEFAULT_PROBE_EXCHANGE: &str = "binance";

impl Default for ActiveCheckSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            interval_seconds: 15,
            timeout_seconds: 3,
            connect_target: None,
            unhealthy_threshold: 2,
            healthy_threshold: 1,
            publish: true,
            exchange: DEFAULT_PROBE_EXCHANGE.parse().expect("a valid exchange id"),
            ping_path: None,
            ca_file: None,
            proxy_ca_file: None,
            max_per_minute: 2,
        }
    }
}

impl Validate for ActiveCheckSettings {
    fn validate(&self, prefix: &str, issues: &mut Issues) {
        issues.check_range(key(prefix, "interval_seconds"), self.interval_seconds, 1..=3_600);
        issues.check_range(key(prefix, "timeout_seconds"), self.timeout_seconds, 1..=60);
        issues.check_range(key(prefix, "unhealthy_threshold"), self.unhealthy_threshold, 1..=100);
        issues.check_range(key(prefix, "healthy_threshold"), self.healthy_threshold, 1..=100);
        issues.check_range(key(prefix, "max_per_minute"), self.max_per_minute, 1..=600);
        if let Some(path) = &self.ping_path {
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                issues.push(key(prefix, "ping_path"), format!("{path:?} is not a path starting with '/'"));
            }
            if self.connect_target.is_none() {
                issues.push(key(prefix, "ping_path"), "needs connect_target (the host the ping goes to)");
            }
        }
        if let Some(target) = &self.connect_target
            && target.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            issues.push(key(prefix, "connect_target"), format!("{target:?} is not host:port"));
        }
        // Read at start-up when the checks run, so that a bad file stops the service with
        // its name rather than leaving it running without checks.
        for (name, path) in [("ca_file", &self.ca_file), ("proxy_ca_file", &self.proxy_ca_file)] {
            if let (true, Some(path)) = (self.enabled, path)
                && let Err(err) = proxybus_client::read_pem_certificates(path)
            {
                issues.push(key(prefix, name), err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_and_every_invalid_setting_is_reported() {
        let env: EnvSource = [
            ("PROXYBUS_POOL_LISTEN", "0.0.0.0:9000"),
            ("PROXYBUS_POOL_AUTH__TOKENS", r#"["0123456789abcdef"]"#),
            ("PROXYBUS_POOL_AUTH__ALLOWLIST", r#"["10.0.0.0/8", "127.0.0.1"]"#),
            ("PROXYBUS_POOL_HEALTH__LISTEN_NATS", "false"),
        ]
        .into_iter()
        .collect();
        let config = PoolConfig::load(None, &env).unwrap();
        let settings = &config.settings;
        assert_eq!(settings.listen.port(), 9000);
        assert_eq!(settings.auth.allowlist.len(), 2);
        assert!(config.nats.is_none());
        assert!(!format!("{settings:?}").contains("0123456789abcdef"), "tokens never print");

        let bad: EnvSource = [
            ("PROXYBUS_POOL_REQUEST_TIMEOUT_SECONDS", "0"),
            ("PROXYBUS_POOL_AUTH__ALLOWLIST", r#"["10.0.0.0/33"]"#),
            ("PROXYBUS_POOL_ACTIVE_CHECKS__CONNECT_TARGET", "nohost"),
            ("PROXYBUS_POOL_HEALTH__LISTEN_NATS", "false"),
        ]
        .into_iter()
        .collect();
        let err = PoolConfig::load(None, &bad).unwrap_err();
        let keys: Vec<&str> = err.issues().iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            ["request_timeout_seconds", "auth.allowlist[0]", "auth.tokens", "active_checks.connect_target"]
        );
    }

    #[test]
    fn running_checks_need_readable_ca_files_and_idle_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let missing = dir.path().join("missing.pem");
        let checks = |enabled| ActiveCheckSettings {
            enabled,
            ca_file: Some(empty.clone()),
            proxy_ca_file: Some(missing.clone()),
            ..Default::default()
        };
        let mut issues = Issues::default();
        checks(true).validate("active_checks", &mut issues);
        let err = issues.into_result().unwrap_err();
        let found: Vec<(&str, &str)> = err.issues().iter().map(|i| (i.key.as_str(), i.message.as_str())).collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].0, "active_checks.ca_file");
        assert!(found[0].1.contains("empty.pem") && found[0].1.contains("no certificate"), "{found:?}");
        assert_eq!(found[1].0, "active_checks.proxy_ca_file");
        assert!(found[1].1.contains("missing.pem"), "{found:?}");
        let mut idle = Issues::default();
        checks(false).validate("active_checks", &mut idle);
        assert!(idle.into_result().is_ok(), "checks that do not run read no file");
    }

    #[test]
    fn the_config_flag_wins_over_the_variable() {
        let env: EnvSource = [("PROXYBUS_POOL_CONFIG", "from-env.toml")].into_iter().collect();
        assert_eq!(PoolConfig::file(Some("flag.toml".into()), &env), Some(PathBuf::from("flag.toml")));
        assert_eq!(PoolConfig::file(None, &env), Some(PathBuf::from("from-env.toml")));
        assert_eq!(PoolConfig::file(None, &EnvSource::default()), None);
    }
}
