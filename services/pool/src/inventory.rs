//! The inventory: proxy pools per region, read from a TOML file.
//!
//! The file format (see `services/pool/inventory.sample.toml`):
//!
//! ```toml
//! default_region = "us-east"          # region of requests that name none
//!
//! [defaults]                          # optional, for every region that does not say otherwise
//! strategy = "p2c_ewma"               # round_robin | random | weighted | least_connections | p2c_ewma
//! ttl_seconds = 300
//! fallback_policy = "direct_connection"
//! when_all_ejected = "panic"          # panic | fail | direct
//! sticky = true
//!
//! [regions.us-east]
//! fallback_regions = ["eu-west"]      # nearest first
//!
//! [[regions.us-east.proxies]]
//! url = "http://user:secret@203.0.113.10:3128"
//! weight = 2.0
//! tags = ["datacenter"]
//! allowed_exchanges = []              # empty: every exchange
//! denied_exchanges = ["binance"]
//! connection_types = ["http", "websocket"]   # empty: both
//! max_leases = 50                     # concurrent leases; absent: unlimited
//! ```
//!
//! A proxy is identified by its full URL, credentials included (residential
//! gateways share `host:port` and differ by username); outside this process it is
//! only shown as its `proxy_id` and its redacted URL. Validation reports every
//! problem at once, each with its key, and never prints a password.
//!
//! # Examples
//! ```
//! use proxybus_pool::Inventory;
//! let inventory = Inventory::from_toml_str(r#"
//!     default_region = "us-east"
//!     [regions.us-east]
//!     [[regions.us-east.proxies]]
//!     url = "http://user:pw@203.0.113.10:3128"
//! "#).unwrap();
//! assert_eq!(inventory.len(), 1);
//! assert!(Inventory::from_toml_str("default_region = \"nowhere\"\n[regions]").is_err());
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use proxybus_shared::config::{self, ConfigError, Issues, Validate, key};
use proxybus_shared::{ConnectionType, ExchangeId, FallbackPolicy, ProxyId, ProxyUrl, Region, redact_url};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::strategy::Strategy;

/// Accepted `ttl_seconds`.
pub(crate) const TTL_RANGE: std::ops::RangeInclusive<u64> = 1..=86_400;
/// Default `ttl_seconds`.
pub(crate) const DEFAULT_TTL_SECONDS: u64 = 300;

/// What a pool answers when none of its proxies (nor any fallback region's) is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenAllEjected {
    /// Envoy's panic mode: the least-bad proxy, with `strategy: "panic"`.
    #[default]
    Panic,
    /// An error `no_proxy_available` (404).
    Fail,
    /// A direct connection (`proxy_url: null`, `strategy: "direct"`).
    Direct,
}

impl WhenAllEjected {
    /// The setting's name in the inventory file.
    pub fn as_str(self) -> &'static str {
        match self {
            WhenAllEjected::Panic => "panic",
            WhenAllEjected::Fail => "fail",
            WhenAllEjected::Direct => "direct",
        }
    }
}

/// The inventory file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryFile {
    /// Region of requests that name none (or name a region the inventory lacks).
    pub default_region: String,
    /// Pool settings every region inherits.
    #[serde(default)]
    pub defaults: PoolFile,
    /// The pools, keyed by region.
    #[serde(default)]
    pub regions: BTreeMap<String, RegionFile>,
}

/// Per-pool settings; each is optional, so a region inherits `[defaults]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    /// Selection strategy (default `p2c_ewma`).
    pub strategy: Option<Strategy>,
    /// `ttl_seconds` of answers, 1..=86 400 (default 300); also the lease and sticky lifetime.
    pub ttl_seconds: Option<u64>,
    /// `fallback_policy` of answers (default `direct_connection`).
    pub fallback_policy: Option<FallbackPolicy>,
    /// Panic behaviour (default `panic`).
    pub when_all_ejected: Option<WhenAllEjected>,
    /// Sticky sessions per client and exchange (default true).
    pub sticky: Option<bool>,
}

impl PoolFile {
    fn or(&self, defaults: &PoolFile) -> PoolFile {
        PoolFile {
            strategy: self.strategy.or(defaults.strategy),
            ttl_seconds: self.ttl_seconds.or(defaults.ttl_seconds),
            fallback_policy: self.fallback_policy.or(defaults.fallback_policy),
            when_all_ejected: self.when_all_ejected.or(defaults.when_all_ejected),
            sticky: self.sticky.or(defaults.sticky),
        }
    }
}

/// One region's pool as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionFile {
    /// Regions to answer from when this one has no healthy proxy, nearest first.
    #[serde(default)]
    pub fallback_regions: Vec<String>,
    /// Selection strategy (over `[defaults]`).
    pub strategy: Option<Strategy>,
    /// `ttl_seconds` of answers (over `[defaults]`).
    pub ttl_seconds: Option<u64>,
    /// `fallback_policy` of answers (over `[defaults]`).
    pub fallback_policy: Option<FallbackPolicy>,
    /// Panic behaviour (over `[defaults]`).
    pub when_all_ejected: Option<WhenAllEjected>,
    /// Sticky sessions (over `[defaults]`).
    pub sticky: Option<bool>,
    /// The proxies.
    #[serde(default)]
    pub proxies: Vec<ProxyFile>,
}

impl RegionFile {
    /// This region's own pool settings (without `[defaults]`).
    pub fn settings(&self) -> PoolFile {
        PoolFile {
            strategy: self.strategy,
            ttl_seconds: self.ttl_seconds,
            fallback_policy: self.fallback_policy,
            when_all_ejected: self.when_all_ejected,
            sticky: self.sticky,
        }
    }
}

/// One proxy as written. `Debug` redacts the URL.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    /// The proxy URL, credentials included.
    #[serde(deserialize_with = "secret_string")]
    pub url: SecretString,
    /// Relative weight (`weighted`, `least_connections`), > 0; default 1.
    #[serde(default = "one")]
    pub weight: f64,
    /// Free-form labels shown in `GET /api/v1/proxies` and response metadata.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Exchanges it may serve; empty means all.
    #[serde(default)]
    pub allowed_exchanges: Vec<String>,
    /// Exchanges it must not serve.
    #[serde(default)]
    pub denied_exchanges: Vec<String>,
    /// Connection types it serves; empty means both.
    #[serde(default)]
    pub connection_types: Vec<ConnectionType>,
    /// Concurrent leases it may carry; absent means unlimited.
    #[serde(default)]
    pub max_leases: Option<u32>,
    /// Whether it may be handed out at all (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl fmt::Debug for ProxyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyFile")
            .field("url", &redact_url(self.url.expose_secret()))
            .field("weight", &self.weight)
            .field("tags", &self.tags)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

fn secret_string<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<SecretString, D::Error> {
    String::deserialize(deserializer).map(SecretString::from)
}

fn check_exchanges(at: &str, list: &[String], issues: &mut Issues) {
    for (i, exchange) in list.iter().enumerate() {
        if exchange.parse::<ExchangeId>().is_err() {
            issues.push(format!("{at}[{i}]"), format!("{exchange:?} is not an exchange id ([a-z0-9_-]{{1,64}})"));
        }
    }
}

impl Validate for InventoryFile {
    fn validate(&self, prefix: &str, issues: &mut Issues) {
        if self.regions.is_empty() {
            issues.push(key(prefix, "regions"), "at least one region is needed");
        }
        if !self.regions.contains_key(&self.default_region) {
            issues.push(
                key(prefix, "default_region"),
                format!("{:?} is not one of the regions {:?}", self.default_region, self.regions.keys()),
            );
        }
        if let Some(ttl) = self.defaults.ttl_seconds {
            issues.check_range(key(prefix, "defaults.ttl_seconds"), ttl, TTL_RANGE);
        }
        let mut seen: HashMap<ProxyId, String> = HashMap::new();
        for (name, region) in &self.regions {
            let at = key(prefix, &format!("regions.{name}"));
            if name.parse::<Region>().is_err() {
                issues.push(at.clone(), "region name must be 1 to 64 characters of a-z, 0-9, '_' or '-'");
            }
            if let Some(ttl) = region.ttl_seconds {
                issues.check_range(key(&at, "ttl_seconds"), ttl, TTL_RANGE);
            }
            for (i, fallback) in region.fallback_regions.iter().enumerate() {
                let fat = format!("{at}.fallback_regions[{i}]");
                if fallback == name {
                    issues.push(fat, "a region cannot fall back to itself");
                } else if !self.regions.contains_key(fallback) {
                    issues.push(fat, format!("{fallback:?} is not one of the regions"));
                }
            }
            for (i, proxy) in region.proxies.iter().enumerate() {
                let pat = format!("{at}.proxies[{i}]");
                let url = proxy.url.expose_secret();
                match ProxyUrl::parse(url) {
                    Ok(parsed) => {
                        if let Some(first) = seen.insert(parsed.id(), pat.clone()) {
                            issues.push(
                                key(&pat, "url"),
                                format!("{} is listed twice (first at {first})", parsed.redacted()),
                            );
                        }
                    }
                    Err(err) => issues.push(key(&pat, "url"), format!("{err}: {}", redact_url(url))),
                }
                if !(proxy.weight.is_finite() && proxy.weight > 0.0 && proxy.weight <= 1e6) {
                    issues.push(key(&pat, "weight"), format!("{} must be a number in (0, 1e6]", proxy.weight));
                }
                check_exchanges(&key(&pat, "allowed_exchanges"), &proxy.allowed_exchanges, issues);
                check_exchanges(&key(&pat, "denied_exchanges"), &proxy.denied_exchanges, issues);
                for both in proxy.allowed_exchanges.iter().filter(|e| proxy.denied_exchanges.contains(e)) {
                    issues.push(key(&pat, "denied_exchanges"), format!("{both:?} is both allowed and denied"));
                }
                if proxy.max_leases == Some(0) {
                    issues.push(key(&pat, "max_leases"), "0 would never hand the proxy out; set enabled = false");
                }
            }
        }
    }
}

/// One proxy of the inventory, ready for selection.
pub struct Proxy {
    id: ProxyId,
    url: ProxyUrl,
    redacted: String,
    region: Region,
    weight: f64,
    tags: Vec<String>,
    allowed: BTreeSet<ExchangeId>,
    denied: BTreeSet<ExchangeId>,
    connection_types: Vec<ConnectionType>,
    max_leases: Option<u32>,
    enabled: bool,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("id", &self.id)
            .field("url", &self.redacted)
            .field("region", &self.region)
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Its identity.
    pub fn id(&self) -> &ProxyId {
        &self.id
    }

    /// Its URL (credentials included: hand [`ProxyUrl::expose`] only to the feed).
    pub fn url(&self) -> &ProxyUrl {
        &self.url
    }

    /// Its URL with the password redacted.
    pub fn redacted_url(&self) -> &str {
        &self.redacted
    }

    /// Its region.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Its relative weight.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// Its tags.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// How many concurrent leases it may carry (`None`: unlimited).
    pub fn max_leases(&self) -> Option<u32> {
        self.max_leases
    }

    /// Whether it may be handed out at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the inventory lets it serve `exchange` over `connection_type`
    /// (enabled, allowed, not denied); health is not considered here.
    pub fn serves(&self, exchange: &ExchangeId, connection_type: ConnectionType) -> bool {
        self.enabled
            && (self.allowed.is_empty() || self.allowed.contains(exchange))
            && !self.denied.contains(exchange)
            && (self.connection_types.is_empty() || self.connection_types.contains(&connection_type))
    }
}

/// One region's pool.
#[derive(Debug)]
pub struct Pool {
    region: Region,
    strategy: Strategy,
    ttl_seconds: u64,
    fallback_policy: FallbackPolicy,
    when_all_ejected: WhenAllEjected,
    sticky: bool,
    fallback_regions: Vec<Region>,
    proxies: Vec<Arc<Proxy>>,
}

impl Pool {
    /// Its region.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// How it picks a proxy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// `ttl_seconds` of its answers.
    pub fn ttl_seconds(&self) -> u64 {
        self.ttl_seconds
    }

    /// `fallback_policy` of its answers.
    pub fn fallback_policy(&self) -> FallbackPolicy {
        self.fallback_policy
    }

    /// What it answers when nothing is healthy.
    pub fn when_all_ejected(&self) -> WhenAllEjected {
        self.when_all_ejected
    }

    /// Whether clients keep their proxy per exchange.
    pub fn sticky(&self) -> bool {
        self.sticky
    }

    /// Regions to fall back to, nearest first.
    pub fn fallback_regions(&self) -> &[Region] {
        &self.fallback_regions
    }

    /// Its proxies, in file order.
    pub fn proxies(&self) -> &[Arc<Proxy>] {
        &self.proxies
    }
}

/// Every pool, ready for selection; immutable (a reload builds a new one).
#[derive(Debug)]
pub struct Inventory {
    default_region: Region,
    pools: BTreeMap<Region, Pool>,
    by_id: HashMap<ProxyId, Arc<Proxy>>,
}

/// Why an inventory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The file could not be read or parsed, or its settings are invalid (all are listed).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl InventoryError {
    /// The invalid settings, each with its key.
    pub fn issues(&self) -> &[config::ConfigIssue] {
        match self {
            InventoryError::Config(err) => err.issues(),
        }
    }
}

impl Inventory {
    /// Reads and validates an inventory file; every issue names its `FILE:LINE`.
    pub fn load(path: &Path) -> Result<Self, InventoryError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, Some(path))
    }

    /// Parses and validates inventory TOML; every issue names its `line N`.
    pub fn from_toml_str(text: &str) -> Result<Self, InventoryError> {
        Self::parse(text, None)
    }

    fn parse(text: &str, path: Option<&Path>) -> Result<Self, InventoryError> {
        // A TOML syntax error's full text quotes the offending line, which may hold a
        // proxy password: report only the parser's message and the line number.
        if let Err(err) = toml::from_str::<toml::Table>(text) {
            let line = err.span().map_or(0, |span| text[..span.start.min(text.len())].lines().count().max(1));
            return Err(ConfigError::Toml {
                path: path.map_or_else(|| std::path::PathBuf::from("<string>"), Path::to_owned),
                message: format!("{} (line {line})", err.message()),
            }
            .into());
        }
        let file: InventoryFile = config::from_toml_source(text, path)?;
        Ok(Self::from_file(&file))
    }

    /// Builds the inventory from an already validated file.
    ///
    /// # Panics
    /// If `file` did not pass [`Validate`] (an invalid URL or region name).
    pub fn from_file(file: &InventoryFile) -> Self {
        let mut pools = BTreeMap::new();
        let mut by_id = HashMap::new();
        for (name, region_file) in &file.regions {
            let region: Region = name.parse().expect("validated region name");
            let settings = region_file.settings().or(&file.defaults);
            let proxies: Vec<Arc<Proxy>> = region_file
                .proxies
                .iter()
                .map(|p| {
                    let url = ProxyUrl::parse(p.url.expose_secret()).expect("validated proxy url");
                    let exchanges = |list: &[String]| list.iter().filter_map(|e| e.parse().ok()).collect();
                    Arc::new(Proxy {
                        id: url.id(),
                        redacted: url.redacted(),
                        url,
                        region: region.clone(),
                        weight: p.weight,
                        tags: p.tags.clone(),
                        allowed: exchanges(&p.allowed_exchanges),
                        denied: exchanges(&p.denied_exchanges),
                        connection_types: p.connection_types.clone(),
                        max_leases: p.max_leases,
                        enabled: p.enabled,
                    })
                })
                .collect();
            for proxy in &proxies {
                by_id.insert(proxy.id, proxy.clone());
            }
            pools.insert(
                region.clone(),
                Pool {
                    region,
                    strategy: settings.strategy.unwrap_or_default(),
                    ttl_seconds: settings.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS),
                    fallback_policy: settings.fallback_policy.unwrap_or_default(),
                    when_all_ejected: settings.when_all_ejected.unwrap_or_default(),
                    sticky: settings.sticky.unwrap_or(true),
                    fallback_regions: region_file.fallback_regions.iter().filter_map(|r| r.parse().ok()).collect(),
                    proxies,
                },
            );
        }
        Self { default_region: file.default_region.parse().expect("validated default region"), pools, by_id }
    }

    /// The region of requests that name none.
    pub fn default_region(&self) -> &Region {
        &self.default_region
    }

    /// The pool of `region`.
    pub fn pool(&self, region: &Region) -> Option<&Pool> {
        self.pools.get(region)
    }

    /// Every pool, by region name.
    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values()
    }

    /// The proxy with this id.
    pub fn proxy(&self, id: &ProxyId) -> Option<&Arc<Proxy>> {
        self.by_id.get(id)
    }

    /// Every proxy, region by region in file order.
    pub fn proxies(&self) -> impl Iterator<Item = &Arc<Proxy>> {
        self.pools.values().flat_map(|p| p.proxies.iter())
    }

    /// Number of proxies.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there is no proxy at all.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The regions to try for a request for `region`: it (or the default region when
    /// the inventory lacks it), then its fallback regions, nearest first, each once.
    pub fn region_chain(&self, region: Option<&Region>) -> Vec<&Pool> {
        let start = region.and_then(|r| self.pools.get(r)).unwrap_or_else(|| &self.pools[&self.default_region]);
        let mut chain = vec![start];
        for next in &start.fallback_regions {
            if let Some(pool) = self.pools.get(next)
                && !chain.iter().any(|p| p.region == pool.region)
            {
                chain.push(pool);
            }
        }
        chain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_invalid_setting_is_reported_with_its_key_and_no_password() {
        let text = r#"
            default_region = "mars"
            [defaults]
            ttl_seconds = 0
            [regions.us-east]
            fallback_regions = ["us-east", "eu-nowhere"]
            [[regions.us-east.proxies]]
            url = "ftp://user:hunter2@203.0.113.1:21"
            weight = -1.0
            allowed_exchanges = ["binance", "Bin.ance"]
            denied_exchanges = ["binance"]
            max_leases = 0
            [[regions.us-east.proxies]]
            url = "http://user:hunter2@203.0.113.2:3128"
            [[regions.us-east.proxies]]
            url = "http://user:hunter2@203.0.113.2:3128"
        "#;
        let err = Inventory::from_toml_str(text).unwrap_err();
        let keys: Vec<&str> = err.issues().iter().map(|i| i.key.as_str()).collect();
        for expected in [
            "default_region",
            "defaults.ttl_seconds",
            "regions.us-east.fallback_regions[0]",
            "regions.us-east.fallback_regions[1]",
            "regions.us-east.proxies[0].url",
            "regions.us-east.proxies[0].weight",
            "regions.us-east.proxies[0].allowed_exchanges[1]",
            "regions.us-east.proxies[0].denied_exchanges",
            "regions.us-east.proxies[0].max_leases",
            "regions.us-east.proxies[2].url",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn proxy_urls_with_raw_reserved_characters_are_refused_with_file_line_and_no_password() {
        // Issue #12 (a), and the other raw reserved characters of the same kind.
        let dir = tempfile::tempdir().unwrap();
        for (password, secret) in
            [("12/34xyz", "34xyz"), ("pa#ss", "pa#ss"), ("pa?ss", "pa?ss"), ("p@ss", "p@ss"), ("pa:ss", "pa:ss")]
        {
            let text = format!(
                "default_region = \"us-east\"\n[regions.us-east]\n\n[[regions.us-east.proxies]]\nurl = \"http://10.0.0.1:3128\"\n\n[[regions.us-east.proxies]]\nurl = \"http://alice:{password}@203.0.113.10:3128\"\n"
            );
            let path = dir.path().join("inventory.toml");
            std::fs::write(&path, &text).unwrap();
            let err = Inventory::load(&path).unwrap_err();
            let issue = &err.issues()[0];
            assert_eq!(issue.key, "regions.us-east.proxies[1].url", "{err}");
            assert_eq!(issue.location.as_deref(), Some(format!("{}:8", path.display()).as_str()), "{err}");
            let shown = err.to_string();
            assert!(shown.contains("http://alice:***@203.0.113.10:3128"), "{shown}");
            assert!(!shown.contains(secret), "{secret} in {shown}");
            assert!(!format!("{err:?}").contains(secret), "{secret} in {err:?}");
        }
        let ok = Inventory::from_toml_str(
            "default_region = \"a\"\n[regions.a]\n[[regions.a.proxies]]\nurl = \"socks5h://alice:12%2F34xyz@[2001:db8::1]:1080\"\n",
        )
        .unwrap();
        let proxy = ok.proxies().next().unwrap();
        assert_eq!(proxy.url().credentials(), Some(("alice", "12/34xyz")));
        assert_eq!(proxy.redacted_url(), "socks5h://alice:***@[2001:db8::1]:1080");
    }

    #[test]
    fn syntax_errors_name_the_line_but_not_its_text() {
        let text =
            "default_region = \"a\"\n[regions.a]\n[[regions.a.proxies]]\nurl = \"http://u:hunter2@h:1\" weight = 1\n";
        let err = Inventory::from_toml_str(text).unwrap_err();
        assert!(err.to_string().contains("line 4"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = Inventory::from_toml_str("default_region = \"a\"\n[regions.a]\n[[regions.a.proxies]]\nurl = \"http://u:hunter2@h:1\"\nweight = \"http://u:hunter2@h:1\"\n").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_so_typos_do_not_pass_silently() {
        let text = "default_region = \"a\"\n[regions.a]\n[[regions.a.proxies]]\nurl = \"http://h:1\"\ndenied_exchange = [\"x\"]\n";
        let err = Inventory::from_toml_str(text).unwrap_err();
        assert!(err.to_string().contains("denied_exchange"), "{err}");
        let err = Inventory::from_toml_str("default_region = \"a\"\n[regions.a]\nstrategi = \"random\"\n").unwrap_err();
        assert!(err.to_string().contains("strategi"), "{err}");
        let err =
            Inventory::from_toml_str("default_region = \"a\"\n[regions.a]\nstrategy = \"fastest\"\n").unwrap_err();
        assert_eq!(err.issues()[0].key, "regions.a.strategy", "{err}");
    }

    #[test]
    fn regions_inherit_defaults_and_chain_their_fallbacks() {
        let inventory = Inventory::from_toml_str(
            r#"
            default_region = "a"
            [defaults]
            strategy = "round_robin"
            ttl_seconds = 60
            [regions.a]
            fallback_regions = ["b", "c"]
            [regions.b]
            strategy = "weighted"
            fallback_policy = "fail"
            [regions.c]
            "#,
        )
        .unwrap();
        let b = inventory.pool(&"b".parse().unwrap()).unwrap();
        assert_eq!(
            (b.strategy(), b.ttl_seconds(), b.fallback_policy()),
            (Strategy::Weighted, 60, FallbackPolicy::Fail)
        );
        let chain: Vec<&str> = inventory.region_chain(None).iter().map(|p| p.region().as_str()).collect();
        assert_eq!(chain, ["a", "b", "c"]);
        let unknown: Region = "zz".parse().unwrap();
        assert_eq!(inventory.region_chain(Some(&unknown))[0].region().as_str(), "a");
    }

    #[test]
    fn the_sample_inventory_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("inventory.sample.toml");
        let inventory = Inventory::load(&path).unwrap();
        assert_eq!(inventory.pools().count(), 3);
        assert!(inventory.len() >= 12);
    }
}
