//! [`Lab`]: the simulator, the proxies and the files that describe them.
//!
//! Files written into the lab's directory:
//! - `ca.pem`: the lab CA, the bundle a client trusts (e.g. the client library's
//!   `PROXYBUS_TLS_CA_FILE`);
//! - `inventory.toml`: a pool inventory (`docs/pool.md`) of the proxies, with
//!   their credentials, one region each as configured; tags name the proxy's
//!   kind, source address and fault;
//! - `lab.json`: the simulator's address, the host names it answers, the proxies
//!   (URLs redacted) and the paths above.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::proxies::{HostMap, LabProxy, ProxyCredentials, ProxyFault, ProxyKind, ProxySpec};
use crate::simulator::{EXCHANGE_HOSTS, Simulator, SimulatorSettings};
use crate::{LabCa, LabError};

/// One proxy of the lab (TOML `[[proxies]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabProxyConfig {
    /// Protocol (`http`, `https`, `socks5`, `socks4`).
    pub kind: ProxyKind,
    /// Pool region it is listed in.
    pub region: String,
    /// Source address of its outgoing connections, in 127.0.0.0/8 (x ≥ 2).
    pub source_ip: Ipv4Addr,
    /// Fault it plays from the start.
    #[serde(default)]
    pub fault: ProxyFault,
    /// Connection types the inventory lists it for (`http`, `websocket`); empty: both.
    #[serde(default)]
    pub connection_types: Vec<String>,
}

/// The whole lab's settings (a TOML file with `dir`, `[simulator]` and `[[proxies]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabConfig {
    /// Where the CA bundle, inventory and `lab.json` are written.
    pub dir: PathBuf,
    /// The simulator.
    #[serde(default)]
    pub simulator: SimulatorSettings,
    /// The proxies.
    pub proxies: Vec<LabProxyConfig>,
    /// The inventory's selection strategy (`docs/pool.md`); `round_robin` by
    /// default, so that in a short demo every proxy, good or bad, gets traffic.
    #[serde(default = "round_robin")]
    pub inventory_strategy: String,
}

fn round_robin() -> String {
    "round_robin".into()
}

impl LabConfig {
    /// The demo lab: twelve proxies, four in each of three regions, sending from
    /// `127.0.0.2` up. Binance refuses `127.0.0.3` and `127.0.0.11` (451, restricted locations);
    /// Coinbase's WAF blocks `127.0.0.6` (403); `127.0.0.5` refuses its
    /// credentials, `127.0.0.7` is slow, `127.0.0.10` is dead and `127.0.0.12`
    /// flaps; the HTTPS proxy (`127.0.0.4`) is listed for REST only (the client
    /// library tunnels websockets through `http`, `socks4` and `socks5` proxies).
    /// Four per region, so that the aggregator's `max_ejection_percent` (50 %)
    /// still lets it eject a second proxy of a region.
    pub fn demo(dir: &Path) -> Self {
        let proxy = |kind, region: &str, last: u8, fault| LabProxyConfig {
            kind,
            region: region.to_owned(),
            source_ip: Ipv4Addr::new(127, 0, 0, last),
            fault,
            connection_types: if kind == ProxyKind::Https { vec!["http".into()] } else { Vec::new() },
        };
        let mut simulator = SimulatorSettings::default();
        simulator.binance.geo_restricted_ips =
            vec![Ipv4Addr::new(127, 0, 0, 3).into(), Ipv4Addr::new(127, 0, 0, 11).into()];
        simulator.coinbase.waf_blocked_ips = vec![Ipv4Addr::new(127, 0, 0, 6).into()];
        let flapping = ProxyFault::Flapping { up_seconds: 20, down_seconds: 20 };
        Self {
            dir: dir.to_owned(),
            inventory_strategy: round_robin(),
            simulator,
            proxies: vec![
                proxy(ProxyKind::Http, "us-east", 2, ProxyFault::None),
                proxy(ProxyKind::Socks5, "us-east", 3, ProxyFault::None),
                proxy(ProxyKind::Https, "us-east", 4, ProxyFault::None),
                proxy(ProxyKind::Socks5, "us-east", 5, ProxyFault::RefuseCredentials),
                proxy(ProxyKind::Http, "eu-west", 6, ProxyFault::None),
                proxy(ProxyKind::Socks5, "eu-west", 7, ProxyFault::Slow { delay_ms: 300 }),
                proxy(ProxyKind::Http, "eu-west", 8, ProxyFault::None),
                proxy(ProxyKind::Socks5, "eu-west", 9, ProxyFault::None),
                proxy(ProxyKind::Http, "ap-northeast", 10, ProxyFault::Dead),
                proxy(ProxyKind::Socks5, "ap-northeast", 11, ProxyFault::None),
                proxy(ProxyKind::Http, "ap-northeast", 12, flapping),
                proxy(ProxyKind::Socks5, "ap-northeast", 13, ProxyFault::None),
            ],
        }
    }

    /// Reads a lab file (TOML).
    ///
    /// # Errors
    /// [`LabError::Io`] when it cannot be read, [`LabError::Config`] when it is not a valid lab.
    pub fn load(path: &Path) -> Result<Self, LabError> {
        let text = std::fs::read_to_string(path).map_err(|source| LabError::Io { path: path.to_owned(), source })?;
        let config: Self =
            toml::from_str(&text).map_err(|err| LabError::Config(format!("{}: {err}", path.display())))?;
        config.validate()?;
        Ok(config)
    }

    /// Every problem at once: source addresses outside 127.0.0.2–127.0.0.254 or
    /// repeated, a listen address off loopback, invalid region names or connection types.
    pub fn validate(&self) -> Result<(), LabError> {
        let mut problems = Vec::new();
        if !self.simulator.listen.ip().is_loopback() {
            problems.push(format!("simulator.listen {} is not a loopback address", self.simulator.listen));
        }
        if !(self.simulator.trades_per_second > 0.0 && self.simulator.trades_per_second <= 1000.0) {
            problems.push("simulator.trades_per_second must be in (0, 1000]".to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, proxy) in self.proxies.iter().enumerate() {
            let [a, _, _, d] = proxy.source_ip.octets();
            if a != 127 || d < 2 || d == 255 {
                problems.push(format!("proxies[{i}].source_ip {} is not in 127.0.0.2–127.0.0.254", proxy.source_ip));
            }
            if !seen.insert(proxy.source_ip) {
                problems.push(format!("proxies[{i}].source_ip {} is used twice", proxy.source_ip));
            }
            if proxy.region.parse::<proxybus_shared::Region>().is_err() {
                problems.push(format!("proxies[{i}].region {:?} is not a valid region", proxy.region));
            }
            if let Some(bad) = proxy.connection_types.iter().find(|c| !matches!(c.as_str(), "http" | "websocket")) {
                problems.push(format!("proxies[{i}].connection_types: {bad:?} is not http or websocket"));
            }
        }
        if serde_json::from_value::<proxybus_pool::Strategy>(self.inventory_strategy.clone().into()).is_err() {
            problems.push(format!("inventory_strategy {:?} is not a pool strategy", self.inventory_strategy));
        }
        if self.proxies.is_empty() {
            problems.push("proxies: at least one".to_owned());
        }
        if problems.is_empty() { Ok(()) } else { Err(LabError::Config(problems.join("; "))) }
    }
}

/// A running lab; everything stops when it is dropped.
#[derive(Debug)]
pub struct Lab {
    ca: LabCa,
    config: LabConfig,
    simulator: Simulator,
    proxies: Vec<LabProxy>,
    hosts: HostMap,
    ca_path: PathBuf,
    inventory_path: PathBuf,
    manifest_path: PathBuf,
}

/// A password for a lab proxy: random, hex.
fn password() -> String {
    use rand::Rng;
    format!("{:016x}", rand::rng().random::<u64>())
}

impl Lab {
    /// Makes the CA, starts the simulator and the proxies, and writes the files.
    ///
    /// # Errors
    /// An invalid `config`, an address that cannot be bound, a file that cannot be written.
    pub async fn start(config: LabConfig) -> Result<Self, LabError> {
        config.validate()?;
        std::fs::create_dir_all(&config.dir).map_err(|source| LabError::Io { path: config.dir.clone(), source })?;
        let ca = LabCa::generate()?;
        let exchange_names: Vec<&str> = EXCHANGE_HOSTS.iter().map(|(name, _)| *name).collect();
        let simulator = Simulator::start(config.simulator.clone(), &ca.server_identity(&exchange_names)?).await?;
        let hosts = HostMap::new(EXCHANGE_HOSTS.iter().map(|(name, _)| (*name, simulator.addr())));
        let proxy_tls = ca.server_identity(&["127.0.0.1", "localhost"])?.server_config()?;
        let mut proxies = Vec::with_capacity(config.proxies.len());
        for (i, proxy) in config.proxies.iter().enumerate() {
            // SOCKS4 has no password (its user id identifies, it does not authenticate): no login.
            let credentials =
                (proxy.kind != ProxyKind::Socks4).then(|| ProxyCredentials::new(format!("lab{}", i + 1), password()));
            let spec = ProxySpec {
                kind: proxy.kind,
                credentials,
                source_ip: Some(proxy.source_ip),
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                fault: proxy.fault,
            };
            proxies.push(LabProxy::start(spec, hosts.clone(), Some(proxy_tls.clone())).await?);
        }
        let lab = Self {
            ca_path: config.dir.join("ca.pem"),
            inventory_path: config.dir.join("inventory.toml"),
            manifest_path: config.dir.join("lab.json"),
            ca,
            config,
            simulator,
            proxies,
            hosts,
        };
        lab.ca.write_pem(&lab.ca_path)?;
        let write = |path: &Path, text: String| {
            // The inventory holds the lab proxies' passwords: owner-only, like any credentials file.
            proxybus_shared::config::write_private(path, text)
                .map_err(|source| LabError::Io { path: path.to_owned(), source })
        };
        write(&lab.inventory_path, lab.inventory_toml())?;
        write(&lab.manifest_path, serde_json::to_string_pretty(&lab.manifest()).unwrap_or_default())?;
        Ok(lab)
    }

    /// The simulator.
    pub fn simulator(&self) -> &Simulator {
        &self.simulator
    }

    /// The proxies, in the order of the configuration.
    pub fn proxies(&self) -> &[LabProxy] {
        &self.proxies
    }

    /// The configuration it runs.
    pub fn config(&self) -> &LabConfig {
        &self.config
    }

    /// The names the proxies resolve to the simulator.
    pub fn hosts(&self) -> &HostMap {
        &self.hosts
    }

    /// The CA.
    pub fn ca(&self) -> &LabCa {
        &self.ca
    }

    /// `ca.pem`: the CA bundle to trust.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// `inventory.toml`: the pool inventory of the proxies.
    pub fn inventory_path(&self) -> &Path {
        &self.inventory_path
    }

    /// `lab.json`: what runs where.
    pub fn manifest_path(&self) -> &Path {
        &self.manifest_path
    }

    /// The pool inventory (TOML) of the proxies, credentials included.
    pub fn inventory_toml(&self) -> String {
        let mut regions: BTreeMap<&str, Vec<toml::Value>> = BTreeMap::new();
        for (proxy, config) in self.proxies.iter().zip(&self.config.proxies) {
            let mut entry = toml::Table::new();
            entry.insert("url".into(), proxy.url().into());
            let fault = serde_json::to_value(config.fault).ok().and_then(|v| v["kind"].as_str().map(str::to_owned));
            let tags = vec![
                "lab".to_owned(),
                config.kind.scheme().to_owned(),
                format!("source={}", config.source_ip),
                format!("fault={}", fault.unwrap_or_default()),
            ];
            entry.insert("tags".into(), tags.into());
            if !config.connection_types.is_empty() {
                entry.insert("connection_types".into(), config.connection_types.clone().into());
            }
            regions.entry(config.region.as_str()).or_default().push(entry.into());
        }
        let names: Vec<&str> = regions.keys().copied().collect();
        let mut region_tables = toml::Table::new();
        for (name, proxies) in regions {
            let mut table = toml::Table::new();
            let fallback: Vec<String> = names.iter().filter(|n| **n != name).map(|n| (*n).to_owned()).collect();
            table.insert("fallback_regions".into(), fallback.into());
            table.insert("proxies".into(), proxies.into());
            region_tables.insert(name.to_owned(), table.into());
        }
        let mut defaults = toml::Table::new();
        defaults.insert("strategy".into(), self.config.inventory_strategy.clone().into());
        defaults.insert("ttl_seconds".into(), 60.into());
        defaults.insert("sticky".into(), true.into());
        let mut root = toml::Table::new();
        root.insert("default_region".into(), self.config.proxies[0].region.clone().into());
        root.insert("defaults".into(), defaults.into());
        root.insert("regions".into(), region_tables.into());
        format!(
            "# Written by proxybus-lab: its proxies on loopback, each sending from its own 127.0.0.x.\n\
             # Trust the lab CA for TLS to the exchanges and the HTTPS proxy: {}\n\n{}",
            self.ca_path.display(),
            toml::to_string(&root).unwrap_or_default()
        )
    }

    fn manifest(&self) -> serde_json::Value {
        serde_json::json!({
            "simulator": self.simulator.addr().to_string(),
            "hosts": EXCHANGE_HOSTS.iter().map(|(name, exchange)| serde_json::json!({"host": name, "exchange": exchange})).collect::<Vec<_>>(),
            "ca_bundle": self.ca_path,
            "inventory": self.inventory_path,
            "proxies": self.proxies.iter().zip(&self.config.proxies).map(|(proxy, config)| serde_json::json!({
                "url": proxybus_shared::redact_url(&proxy.url()),
                "kind": config.kind,
                "region": config.region,
                "source_ip": config.source_ip,
                "fault": config.fault,
            })).collect::<Vec<_>>(),
            "simulator_settings": self.config.simulator,
        })
    }

    /// Stops the simulator (closing its websockets) and the proxies.
    pub async fn stop(self) {
        let Self { simulator, proxies, .. } = self;
        drop(proxies);
        simulator.stop().await;
    }
}
