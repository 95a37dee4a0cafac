//! The embedded `ProxySettings` as a proxy source: the exchange's own entry,
//! then the default; a pool is drawn from with its strategy (`round_robin`,
//! `random` weighted by `weight`, `least_connections`), skipping disabled
//! proxies and proxies the health book says are ejected or banned for the exchange.
//!
//! The resolver never sees a connection close, so `least_connections` counts
//! hand-outs: the proxy handed out least often so far is chosen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use proxybus_shared::config::{PoolStrategy, ProxyConfig, ProxySettings};
use proxybus_shared::{ConnectionType, ExchangeId, ProxyId, ProxyUrl};
use rand::Rng;

use crate::health::HealthBook;

/// A proxy chosen from the embedded settings.
#[derive(Debug, Clone)]
pub struct EmbeddedChoice {
    /// The proxy.
    pub url: ProxyUrl,
    /// How it was chosen (`embedded_round_robin`, `embedded_random`,
    /// `embedded_least_connections`, `embedded_static`).
    pub strategy: &'static str,
}

/// Picks proxies from the embedded settings.
#[derive(Debug)]
pub struct EmbeddedSelector {
    settings: Arc<ProxySettings>,
    state: Mutex<SelectorState>,
}

#[derive(Debug, Default)]
struct SelectorState {
    /// Next round-robin position per pool (`exchange:connection_type` or `default:connection_type`).
    cursors: HashMap<String, usize>,
    /// Hand-outs per proxy, for `least_connections`.
    handed_out: HashMap<ProxyId, u64>,
}

impl EmbeddedSelector {
    /// A selector over `settings`.
    pub fn new(settings: Arc<ProxySettings>) -> Self {
        Self { settings, state: Mutex::default() }
    }

    /// A usable proxy for `exchange` and `connection_type`: from the exchange's own
    /// entry, else from the default; `None` when proxying is disabled or nothing usable is configured.
    pub fn pick(
        &self,
        exchange: &ExchangeId,
        connection_type: ConnectionType,
        health: &HealthBook,
    ) -> Option<EmbeddedChoice> {
        if !self.settings.enabled {
            return None;
        }
        let own = self.settings.exchanges.get(exchange.as_str()).and_then(|c| c.get(connection_type));
        let default = self.settings.default.as_ref().and_then(|c| c.get(connection_type));
        own.and_then(|config| self.pick_from(&format!("{exchange}:{connection_type}"), config, exchange, health))
            .or_else(|| {
                default
                    .and_then(|config| self.pick_from(&format!("default:{connection_type}"), config, exchange, health))
            })
    }

    fn pick_from(
        &self,
        pool_key: &str,
        config: &ProxyConfig,
        exchange: &ExchangeId,
        health: &HealthBook,
    ) -> Option<EmbeddedChoice> {
        if let Some(pool) = &config.pool {
            let candidates: Vec<(ProxyUrl, f64)> = pool
                .proxies
                .iter()
                .filter(|p| p.enabled)
                .filter_map(|p| Some((p.proxy_url()?, p.weight)))
                .filter(|(url, _)| health.usable(&url.id(), exchange))
                .collect();
            if !candidates.is_empty() {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let index = match pool.strategy {
                    PoolStrategy::RoundRobin => {
                        let cursor = state.cursors.entry(pool_key.to_owned()).or_insert(0);
                        let index = *cursor % candidates.len();
                        *cursor = cursor.wrapping_add(1);
                        index
                    }
                    PoolStrategy::Random => weighted_index(&candidates),
                    PoolStrategy::LeastConnections => candidates
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, (url, _))| state.handed_out.get(&url.id()).copied().unwrap_or(0))
                        .map_or(0, |(i, _)| i),
                };
                let url = candidates[index].0.clone();
                *state.handed_out.entry(url.id()).or_insert(0) += 1;
                let strategy = match pool.strategy {
                    PoolStrategy::RoundRobin => "embedded_round_robin",
                    PoolStrategy::Random => "embedded_random",
                    PoolStrategy::LeastConnections => "embedded_least_connections",
                };
                return Some(EmbeddedChoice { url, strategy });
            }
        }
        let url = config.proxy_url()?;
        health.usable(&url.id(), exchange).then_some(EmbeddedChoice { url, strategy: "embedded_static" })
    }
}

fn weighted_index(candidates: &[(ProxyUrl, f64)]) -> usize {
    let total: f64 = candidates.iter().map(|(_, w)| w).sum();
    let mut point = rand::rng().random_range(0.0..total);
    for (i, (_, weight)) in candidates.iter().enumerate() {
        if point < *weight {
            return i;
        }
        point -= weight;
    }
    candidates.len() - 1
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use chrono::Utc;
    use proxybus_shared::config::{EnvSource, PROXY_ENV_PREFIX, load};
    use proxybus_shared::{HealthState, HealthStats};

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Arc<ProxySettings> {
        let env: EnvSource = vars.iter().copied().collect();
        Arc::new(load(None, &env, PROXY_ENV_PREFIX).unwrap())
    }

    const POOL: &str = r#"[{"url":"http://u:pw1@p1:1"},{"url":"http://u:pw2@p2:2"},{"url":"http://u:pw3@p3:3"}]"#;

    #[test]
    fn override_then_default_and_nothing_when_disabled() {
        let binance: ExchangeId = "binance".parse().unwrap();
        let kraken: ExchangeId = "kraken".parse().unwrap();
        let health = HealthBook::default();
        let vars = [
            ("CRYPTOFEED_PROXY_ENABLED", "true"),
            ("CRYPTOFEED_PROXY_DEFAULT__HTTP__URL", "socks5://d:1080"),
            ("CRYPTOFEED_PROXY_EXCHANGES__BINANCE__HTTP__URL", "http://b:3128"),
        ];
        let selector = EmbeddedSelector::new(settings(&vars));
        assert_eq!(selector.pick(&binance, ConnectionType::Http, &health).unwrap().url.expose(), "http://b:3128");
        assert_eq!(selector.pick(&kraken, ConnectionType::Http, &health).unwrap().url.expose(), "socks5://d:1080");
        assert!(selector.pick(&kraken, ConnectionType::Websocket, &health).is_none());
        let disabled = EmbeddedSelector::new(settings(&vars[1..]));
        assert!(disabled.pick(&binance, ConnectionType::Http, &health).is_none());
    }

    #[test]
    fn round_robin_and_least_connections_spread_and_skip_ejected() {
        let binance: ExchangeId = "binance".parse().unwrap();
        let health = HealthBook::default();
        for strategy in ["round_robin", "least_connections", "random"] {
            let selector = EmbeddedSelector::new(settings(&[
                ("CRYPTOFEED_PROXY_ENABLED", "true"),
                ("CRYPTOFEED_PROXY_DEFAULT__HTTP__POOL__PROXIES", POOL),
                ("CRYPTOFEED_PROXY_DEFAULT__HTTP__POOL__STRATEGY", strategy),
            ]));
            let seen: HashSet<String> = (0..60)
                .map(|_| selector.pick(&binance, ConnectionType::Http, &health).unwrap().url.expose().to_owned())
                .collect();
            assert_eq!(seen.len(), 3, "{strategy} used {seen:?}");
        }
        let selector = EmbeddedSelector::new(settings(&[
            ("CRYPTOFEED_PROXY_ENABLED", "true"),
            ("CRYPTOFEED_PROXY_DEFAULT__HTTP__POOL__PROXIES", POOL),
        ]));
        let mut stats = HealthStats::new(
            proxybus_shared::proxy_id("http://u:pw2@p2:2"),
            "http://u:***@p2:2".into(),
            None,
            Utc::now(),
        );
        stats.state = HealthState::Ejected;
        health.record(stats);
        for _ in 0..10 {
            let choice = selector.pick(&binance, ConnectionType::Http, &health).unwrap();
            assert_ne!(choice.url.expose(), "http://u:pw2@p2:2");
            assert_eq!(choice.strategy, "embedded_round_robin");
        }
    }
}
