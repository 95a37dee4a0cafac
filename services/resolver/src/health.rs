//! What the resolver knows of proxy health: the latest `HealthStats` of each
//! proxy, from `proxy.v1.health.>`. The resolver never serves a cached or
//! embedded proxy that is ejected, or banned / cooling down for the exchange asked for.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::Utc;
use futures::StreamExt;
use proxybus_shared::{Codec, ExchangeId, HealthStats, ProxyId};
use tokio_util::sync::CancellationToken;

/// Subject pattern of health updates.
pub const HEALTH_SUBJECTS: &str = "proxy.v1.health.>";

/// The latest health of every proxy heard of.
#[derive(Debug, Default)]
pub struct HealthBook {
    stats: RwLock<HashMap<ProxyId, HealthStats>>,
}

impl HealthBook {
    /// Records an update; an older one (by `updated_at`) than what is known is ignored.
    pub fn record(&self, stats: HealthStats) {
        let mut book = self.stats.write().unwrap_or_else(|p| p.into_inner());
        match book.get(&stats.proxy_id) {
            Some(known) if known.updated_at > stats.updated_at => {}
            _ => {
                book.insert(stats.proxy_id.clone(), stats);
            }
        }
    }

    /// Whether `proxy` may be handed out for `exchange` now (unknown proxies may).
    pub fn usable(&self, proxy: &ProxyId, exchange: &ExchangeId) -> bool {
        let book = self.stats.read().unwrap_or_else(|p| p.into_inner());
        book.get(proxy).is_none_or(|stats| stats.usable_for(exchange, Utc::now()))
    }

    /// Number of proxies known.
    pub fn len(&self) -> usize {
        self.stats.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no proxy is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Subscribes to health updates and records them until `shutdown`.
pub async fn follow(
    client: async_nats::Client,
    book: Arc<HealthBook>,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut updates = client.subscribe(HEALTH_SUBJECTS).await?;
    let codec = Codec::default();
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                message = updates.next() => match message {
                    Some(message) => message,
                    None => break,
                },
            };
            match codec.decode::<HealthStats>(message.headers.as_ref(), &message.payload) {
                Ok(stats) => {
                    tracing::debug!(proxy_id = %stats.proxy_id, state = ?stats.state, "health update");
                    book.record(stats);
                }
                Err(err) => {
                    metrics::counter!("proxybus_resolver_health_updates_invalid_total").increment(1);
                    tracing::debug!(subject = %message.subject, error = %err, "ignoring undecodable health update");
                }
            }
        }
        let _ = updates.unsubscribe().await;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use proxybus_shared::{ExchangeHealth, ExchangeState, HealthState, proxy_id};

    use super::*;

    #[test]
    fn ejected_and_banned_proxies_are_not_usable() {
        let book = HealthBook::default();
        let binance: ExchangeId = "binance".parse().unwrap();
        let kraken: ExchangeId = "kraken".parse().unwrap();
        let id = proxy_id("http://p1:1");
        assert!(book.usable(&id, &binance), "unknown proxies are usable");
        let mut stats = HealthStats::new(id.clone(), "http://p1:1".into(), None, Utc::now());
        stats.exchanges.insert(
            binance.clone(),
            ExchangeHealth { state: ExchangeState::Banned, banned_until: None, ..Default::default() },
        );
        book.record(stats.clone());
        assert!(!book.usable(&id, &binance));
        assert!(book.usable(&id, &kraken));
        let mut ejected = stats.clone();
        ejected.state = HealthState::Ejected;
        ejected.updated_at = stats.updated_at + chrono::Duration::seconds(1);
        book.record(ejected);
        assert!(!book.usable(&id, &kraken));
        book.record(stats);
        assert!(!book.usable(&id, &kraken), "an older update does not undo a newer one");
    }
}
