//! Choosing a proxy from the embedded `ProxySettings` (the seed's tertiary
//! fallback): the exchange's own entry, else the default; a single `url`, or a
//! pool picked with `round_robin`, `random` (by weight) or `least_connections`.
//! Proxies the caller reports unusable (ejected, banned for the exchange) are
//! skipped.
//!
//! # Examples
//! ```
//! use proxybus_shared::config::{self, ProxySettings};
//! use proxybus_shared::embedded::EmbeddedSelector;
//! use proxybus_shared::ConnectionType;
//! let settings: ProxySettings = config::from_toml_str(r#"
//!     enabled = true
//!     [default.http.pool]
//!     proxies = [{ url = "http://10.0.0.1:3128" }, { url = "http://10.0.0.2:3128" }]
//! "#).unwrap();
//! let selector = EmbeddedSelector::new(settings);
//! let first = selector.select("binance", ConnectionType::Http, |_| true).unwrap();
//! let second = selector.select("binance", ConnectionType::Http, |_| true).unwrap();
//! assert_ne!(first.proxy.id(), second.proxy.id());
//! assert_eq!(first.strategy, "embedded_round_robin");
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{PoolStrategy, ProxyConfig, ProxySettings};
use crate::messages::{ConnectionType, ProxyId};
use crate::proxy_url::{ProxyScheme, ProxyUrl};

/// A proxy chosen from the embedded settings.
#[derive(Debug, Clone)]
pub struct EmbeddedChoice {
    /// The proxy.
    pub proxy: ProxyUrl,
    /// `embedded_static`, `embedded_round_robin`, `embedded_random` or `embedded_least_connections`.
    pub strategy: &'static str,
    /// Connect timeout configured for it.
    pub timeout_seconds: u64,
}

#[derive(Debug, Clone)]
struct Candidate {
    proxy: ProxyUrl,
    id: ProxyId,
    weight: f64,
}

/// Picks proxies from `ProxySettings`; share it behind an `Arc`.
#[derive(Debug)]
pub struct EmbeddedSelector {
    settings: ProxySettings,
    cursors: Mutex<HashMap<String, usize>>,
    leases: Mutex<HashMap<ProxyId, u64>>,
    seed: AtomicU64,
}

impl EmbeddedSelector {
    /// A selector over `settings`.
    pub fn new(settings: ProxySettings) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64);
        Self { settings, cursors: Mutex::default(), leases: Mutex::default(), seed: AtomicU64::new(seed | 1) }
    }

    /// The settings it selects from.
    pub fn settings(&self) -> &ProxySettings {
        &self.settings
    }

    /// Picks a proxy for `exchange`: from the exchange's own entry, else (when
    /// that names nothing usable) from the default. `usable(id)` says whether a
    /// proxy may be handed out now. `None` when proxying is disabled, nothing is
    /// configured, or nothing configured is usable.
    pub fn select(
        &self,
        exchange: &str,
        connection_type: ConnectionType,
        usable: impl Fn(&ProxyId) -> bool,
    ) -> Option<EmbeddedChoice> {
        self.select_accepting(exchange, connection_type, &[], usable)
    }

    /// As [`select`](Self::select), among the proxies whose scheme the caller
    /// accepts (`ProxyRequest.proxy_schemes`; empty accepts all, the rule of
    /// [`ProxyScheme::accepted_by`]).
    pub fn select_accepting(
        &self,
        exchange: &str,
        connection_type: ConnectionType,
        accepted: &[ProxyScheme],
        usable: impl Fn(&ProxyId) -> bool,
    ) -> Option<EmbeddedChoice> {
        if !self.settings.enabled {
            return None;
        }
        let usable = |candidate: &Candidate| candidate.proxy.scheme().accepted_by(accepted) && usable(&candidate.id);
        let own = self.settings.exchanges.get(exchange).and_then(|c| c.get(connection_type));
        let default = self.settings.default.as_ref().and_then(|c| c.get(connection_type));
        own.and_then(|config| self.select_from(format!("{exchange}:{connection_type}"), config, &usable)).or_else(
            || default.and_then(|config| self.select_from(format!("default:{connection_type}"), config, &usable)),
        )
    }

    fn select_from(
        &self,
        pool_key: String,
        config: &ProxyConfig,
        usable: &impl Fn(&Candidate) -> bool,
    ) -> Option<EmbeddedChoice> {
        let all = candidates(config);
        let usable: Vec<&Candidate> = all.iter().filter(|c| usable(c)).collect();
        if usable.is_empty() {
            return None;
        }
        let (chosen, strategy) =
            match config.pool.as_ref().filter(|p| p.proxies.iter().any(|e| e.enabled)).map(|p| p.strategy) {
                None => (usable[0], "embedded_static"),
                Some(PoolStrategy::RoundRobin) => {
                    let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
                    let cursor = cursors.entry(pool_key).or_insert(0);
                    let chosen = usable[*cursor % usable.len()];
                    *cursor = cursor.wrapping_add(1);
                    (chosen, "embedded_round_robin")
                }
                Some(PoolStrategy::Random) => {
                    let total: f64 = usable.iter().map(|c| c.weight).sum();
                    let mut point = self.next_unit() * total;
                    let mut chosen = usable[usable.len() - 1];
                    for candidate in &usable {
                        if point < candidate.weight {
                            chosen = candidate;
                            break;
                        }
                        point -= candidate.weight;
                    }
                    (chosen, "embedded_random")
                }
                Some(PoolStrategy::LeastConnections) => {
                    let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
                    let chosen = *usable
                        .iter()
                        .min_by_key(|c| leases.get(&c.id).copied().unwrap_or(0))
                        .expect("usable is not empty");
                    *leases.entry(chosen.id).or_insert(0) += 1;
                    (chosen, "embedded_least_connections")
                }
            };
        Some(EmbeddedChoice { proxy: chosen.proxy.clone(), strategy, timeout_seconds: config.timeout_seconds })
    }

    /// Gives back a lease taken by `least_connections` (the connection closed).
    pub fn release(&self, id: &ProxyId) {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = leases.get_mut(id) {
            *count = count.saturating_sub(1);
        }
    }

    /// Connections counted for a proxy by `least_connections`.
    pub fn active_leases(&self, id: &ProxyId) -> u64 {
        self.leases.lock().unwrap_or_else(|p| p.into_inner()).get(id).copied().unwrap_or(0)
    }

    /// A uniform number in [0, 1) from a xorshift generator; selection needs
    /// spread, not cryptographic randomness.
    fn next_unit(&self) -> f64 {
        let mut x = self.seed.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn candidates(config: &ProxyConfig) -> Vec<Candidate> {
    let mut out = Vec::new();
    if let Some(pool) = &config.pool {
        for entry in pool.proxies.iter().filter(|p| p.enabled) {
            if let Some(proxy) = entry.proxy_url() {
                out.push(Candidate { id: proxy.id(), proxy, weight: entry.weight });
            }
        }
    }
    if out.is_empty()
        && let Some(proxy) = config.proxy_url()
    {
        out.push(Candidate { id: proxy.id(), proxy, weight: 1.0 });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn selector(strategy: &str) -> EmbeddedSelector {
        let settings: ProxySettings = config::from_toml_str(&format!(
            r#"
            enabled = true
            [default.websocket]
            url = "socks5://u:p@10.9.9.9:1080"
            [exchanges.binance.http.pool]
            strategy = "{strategy}"
            proxies = [
                {{ url = "http://10.0.0.1:1", weight = 3.0 }},
                {{ url = "http://10.0.0.2:1", weight = 1.0 }},
                {{ url = "http://10.0.0.3:1", enabled = false }},
            ]
            "#
        ))
        .unwrap();
        EmbeddedSelector::new(settings)
    }

    fn host(choice: &EmbeddedChoice) -> String {
        choice.proxy.host().to_string()
    }

    #[test]
    fn round_robin_alternates_over_enabled_proxies() {
        let s = selector("round_robin");
        let picks: Vec<String> =
            (0..4).map(|_| host(&s.select("binance", ConnectionType::Http, |_| true).unwrap())).collect();
        assert_eq!(picks, ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn random_follows_the_weights() {
        let s = selector("random");
        let first = (0..4000)
            .filter(|_| host(&s.select("binance", ConnectionType::Http, |_| true).unwrap()) == "10.0.0.1")
            .count();
        assert!((2700..3300).contains(&first), "weight 3:1 gave {first} of 4000");
    }

    #[test]
    fn least_connections_balances_and_releases() {
        let s = selector("least_connections");
        let a = s.select("binance", ConnectionType::Http, |_| true).unwrap();
        let b = s.select("binance", ConnectionType::Http, |_| true).unwrap();
        assert_ne!(a.proxy.id(), b.proxy.id());
        s.release(&a.proxy.id());
        let c = s.select("binance", ConnectionType::Http, |_| true).unwrap();
        assert_eq!(c.proxy.id(), a.proxy.id(), "the released one has fewer connections");
        assert_eq!(s.active_leases(&a.proxy.id()), 1);
    }

    #[test]
    fn unusable_proxies_are_skipped_and_the_default_covers_other_exchanges() {
        let s = selector("round_robin");
        let banned = crate::proxy_id("http://10.0.0.1:1");
        for _ in 0..3 {
            assert_eq!(host(&s.select("binance", ConnectionType::Http, |id| *id != banned).unwrap()), "10.0.0.2");
        }
        assert!(s.select("binance", ConnectionType::Http, |_| false).is_none());
        let ws = s.select("kraken", ConnectionType::Websocket, |_| true).unwrap();
        assert_eq!((ws.strategy, host(&ws).as_str()), ("embedded_static", "10.9.9.9"));
        assert!(s.select("kraken", ConnectionType::Http, |_| true).is_none(), "nothing configured");
        let binance_ws = s.select("binance", ConnectionType::Websocket, |_| true).unwrap();
        assert_eq!(host(&binance_ws), "10.9.9.9", "an exchange without its own websocket entry uses the default");
    }

    #[test]
    fn the_default_covers_an_exchange_whose_own_proxies_are_all_unusable_and_disabled_means_none() {
        let settings: ProxySettings = config::from_toml_str(
            r#"
            enabled = true
            [default.http]
            url = "socks5://10.9.9.9:1080"
            [exchanges.binance.http]
            url = "http://10.0.0.1:1"
            "#,
        )
        .unwrap();
        let s = EmbeddedSelector::new(settings.clone());
        let own = crate::proxy_id("http://10.0.0.1:1");
        assert_eq!(host(&s.select("binance", ConnectionType::Http, |_| true).unwrap()), "10.0.0.1");
        assert_eq!(host(&s.select("binance", ConnectionType::Http, |id| *id != own).unwrap()), "10.9.9.9");
        let disabled = EmbeddedSelector::new(ProxySettings { enabled: false, ..settings });
        assert!(disabled.select("binance", ConnectionType::Http, |_| true).is_none());
    }

    #[test]
    fn only_accepted_schemes_are_chosen() {
        let settings: ProxySettings = config::from_toml_str(
            r#"
            enabled = true
            [default.http]
            url = "https://10.9.9.9:8443"
            [exchanges.binance.http.pool]
            proxies = [{ url = "socks5h://10.0.0.1:1080" }, { url = "socks4a://10.0.0.2:1080" }, { url = "http://10.0.0.3:3128" }]
            "#,
        )
        .unwrap();
        let s = EmbeddedSelector::new(settings);
        let http_only = [ProxyScheme::Http, ProxyScheme::Https];
        for _ in 0..3 {
            let choice = s.select_accepting("binance", ConnectionType::Http, &http_only, |_| true).unwrap();
            assert_eq!(host(&choice), "10.0.0.3");
        }
        let socks4a = s.select_accepting("binance", ConnectionType::Http, &[ProxyScheme::Socks4a], |_| true).unwrap();
        assert_eq!(host(&socks4a), "10.0.0.2");
        let https = s.select_accepting("kraken", ConnectionType::Http, &[ProxyScheme::Https], |_| true).unwrap();
        assert_eq!(host(&https), "10.9.9.9");
        assert!(s.select_accepting("kraken", ConnectionType::Http, &[ProxyScheme::Socks5], |_| true).is_none());
    }
}
