//! What the resolver knows of proxy health: the latest `HealthStats` of each
//! proxy. At start it loads KV bucket `PROXY_HEALTH` and then follows it with a KV
//! watch (and `proxy.v1.health.>`, which the aggregator publishes at the same
//! time), so a restart, a reconnect or a missed message never lets it serve a
//! proxy that is ejected, or barred for the exchange asked for, from its cache or
//! its embedded settings. The rules are `proxybus_shared::health`'s: which of two
//! records is newer (`is_newer`) and whether a proxy is usable now (`usable_for`).
//! It also follows KV bucket `PROXY_BUDGETS`: a proxy near an exchange's per-IP
//! limit (`proxybus_shared::budget::RateBudget::has_room`) is not served for that
//! exchange from the cache or the embedded settings either.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use proxybus_shared::budget::{BudgetBook, BudgetSettings, RateBudget};
use proxybus_shared::kv::KeyChange;
use proxybus_shared::subject::{BUDGET_BUCKET, HEALTH_BUCKET, HEALTH_WILDCARD};
use proxybus_shared::{Codec, ExchangeId, HealthState, HealthStats, ProxyId, Region, health};
use tokio_util::sync::CancellationToken;

/// Longest wait at start for the stored health before answering anyway.
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// The latest health of every proxy heard of, and its rate budgets
/// (`PROXY_BUDGETS`, `proxybus_shared::budget`).
#[derive(Debug, Default)]
pub struct HealthBook {
    stats: RwLock<HashMap<ProxyId, HealthStats>>,
    budgets: RwLock<BudgetBook>,
    budget_settings: BudgetSettings,
}

impl HealthBook {
    /// A book that also holds proxies near an exchange's limit (`settings`: which
    /// exchanges are budgeted, and each one's headroom) as unusable for it.
    pub fn with_budgets(settings: BudgetSettings) -> Self {
        Self { budget_settings: settings, ..Self::default() }
    }

    /// Records a rate budget unless the one held is newer.
    pub fn record_budget(&self, budget: RateBudget) {
        self.budgets.write().unwrap_or_else(|p| p.into_inner()).record(budget);
    }

    /// Forgets the budget under `key` (`{proxy_id}.{exchange_id}`).
    pub fn forget_budget(&self, key: &str) {
        self.budgets.write().unwrap_or_else(|p| p.into_inner()).forget(key);
    }

    /// Whether `proxy`'s budget at `exchange` leaves room now (an unbudgeted
    /// exchange or an unknown budget does).
    pub fn has_budget_room(&self, proxy: &ProxyId, exchange: &ExchangeId) -> bool {
        let Some(limits) = self.budget_settings.limits(exchange) else { return true };
        let budgets = self.budgets.read().unwrap_or_else(|p| p.into_inner());
        budgets.get(proxy, exchange).is_none_or(|budget| budget.has_room(Utc::now(), limits.headroom))
    }

    /// Records an update unless what is known is newer (`health::is_newer`).
    pub fn record(&self, stats: HealthStats) {
        let mut book = self.stats.write().unwrap_or_else(|p| p.into_inner());
        if book.get(&stats.proxy_id).is_none_or(|known| health::is_newer(&stats, known)) {
            book.insert(stats.proxy_id, stats);
        }
    }

    /// Forgets a proxy whose record was deleted from the bucket.
    pub fn forget(&self, proxy: &ProxyId) {
        self.stats.write().unwrap_or_else(|p| p.into_inner()).remove(proxy);
    }

    /// Whether `proxy` may be handed out for `exchange` now (unknown proxies may):
    /// not ejected, not barred for the exchange, not near its rate budget there.
    pub fn usable(&self, proxy: &ProxyId, exchange: &ExchangeId) -> bool {
        let healthy = {
            let book = self.stats.read().unwrap_or_else(|p| p.into_inner());
            book.get(proxy).is_none_or(|stats| health::usable_for(stats, exchange, Utc::now()))
        };
        healthy && self.has_budget_room(proxy, exchange)
    }

    /// The health state and latency EWMA (ms) of `proxy`, when known.
    pub fn condition(&self, proxy: &ProxyId) -> Option<(HealthState, Option<f64>)> {
        let book = self.stats.read().unwrap_or_else(|p| p.into_inner());
        book.get(proxy).map(|stats| (stats.state, stats.latency_ewma_ms))
    }

    /// Whether a lease already given out on `proxy` for `exchange` (a cached answer)
    /// may be served again now: as [`usable`](Self::usable), but a drain does not end
    /// it (`health::may_keep`: a drained proxy gets no new leases, existing ones finish).
    /// A proxy near its rate budget at `exchange` is not kept either.
    pub fn keepable(&self, proxy: &ProxyId, exchange: &ExchangeId) -> bool {
        let healthy = {
            let book = self.stats.read().unwrap_or_else(|p| p.into_inner());
            book.get(proxy).is_none_or(|stats| health::may_keep(stats, exchange, Utc::now()))
        };
        healthy && self.has_budget_room(proxy, exchange)
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

/// Loads `PROXY_HEALTH` into `book` (waiting at most [`LOAD_TIMEOUT`] for it), then
/// follows the bucket and `proxy.v1.health.>` in the background until `shutdown`.
///
/// A resolver with a `region` whose mirror `PROXY_HEALTH_{REGION}` exists at start
/// (`proxybus_shared::kv::ensure_health_mirror`) reads the mirror instead: from its own
/// region's servers, and on while the region holding `PROXY_HEALTH` is unreachable.
pub(crate) async fn follow(
    client: async_nats::Client,
    book: Arc<HealthBook>,
    region: Option<Region>,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut updates = client.subscribe(HEALTH_WILDCARD).await?;
    let (loaded_tx, loaded) = tokio::sync::oneshot::channel::<()>();
    {
        let book = book.clone();
        let shutdown = shutdown.clone();
        let js = async_nats::jetstream::new(client.clone());
        tokio::spawn(async move {
            let mut loaded_tx = Some(loaded_tx);
            let mirror = match &region {
                Some(region) => proxybus_shared::kv::open_health_mirror(&js, region).await.ok(),
                None => None,
            };
            let bucket = match mirror {
                Some(mirror) => {
                    tracing::info!(stream = %mirror.stream_name, "reading health from this region's mirror");
                    mirror
                }
                None => {
                    // Nothing stored yet while the aggregator has not made the bucket: answer meanwhile.
                    let wait = proxybus_shared::kv::wait_for_bucket(&js, HEALTH_BUCKET, || {
                        if let Some(tx) = loaded_tx.take() {
                            let _ = tx.send(());
                        }
                    });
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        bucket = wait => bucket,
                    }
                }
            };
            proxybus_shared::kv::follow_health(&bucket, shutdown.cancelled_owned(), |change| match change {
                KeyChange::Put { value, .. } => book.record(value),
                KeyChange::Deleted { key } => {
                    if let Ok(id) = key.parse::<ProxyId>() {
                        book.forget(&id);
                    }
                }
                KeyChange::Current => {
                    if let Some(tx) = loaded_tx.take() {
                        tracing::info!(proxies = book.len(), "health loaded from the bucket");
                        let _ = tx.send(());
                    }
                }
            })
            .await;
        });
    }
    {
        // Rate budgets: followed as they come (no wait at start: a missing budget leaves room).
        let book = book.clone();
        let shutdown = shutdown.clone();
        let js = async_nats::jetstream::new(client.clone());
        tokio::spawn(async move {
            let wait = proxybus_shared::kv::wait_for_bucket(&js, BUDGET_BUCKET, || {});
            let bucket = tokio::select! {
                () = shutdown.cancelled() => return,
                bucket = wait => bucket,
            };
            proxybus_shared::kv::follow::<RateBudget, _>(&bucket, shutdown.cancelled_owned(), |change| match change {
                KeyChange::Put { value, .. } => book.record_budget(value),
                KeyChange::Deleted { key } => book.forget_budget(&key),
                KeyChange::Current => {}
            })
            .await;
        });
    }
    if tokio::time::timeout(LOAD_TIMEOUT, loaded).await.is_err() {
        tracing::warn!("the health bucket did not load in time; answering meanwhile");
    }
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
        let mut stats = HealthStats::new(id, "http://p1:1".into(), None, Utc::now());
        stats.exchanges.insert(
            binance.clone(),
            ExchangeHealth { state: ExchangeState::Banned, banned_until: None, ..Default::default() },
        );
        book.record(stats.clone());
        assert!(!book.usable(&id, &binance));
        assert!(book.usable(&id, &kraken));
        let mut ejected = stats.clone();
        ejected.state = HealthState::Ejected;
        ejected.last_seq = stats.last_seq + 1;
        ejected.updated_at = stats.updated_at + chrono::Duration::seconds(1);
        book.record(ejected);
        assert!(!book.usable(&id, &kraken));
        book.record(stats);
        assert!(!book.usable(&id, &kraken), "an older update does not undo a newer one");
    }

    #[test]
    fn a_drained_proxy_keeps_cached_answers_but_gets_no_new_ones() {
        let book = HealthBook::default();
        let binance: ExchangeId = "binance".parse().unwrap();
        let id = proxy_id("http://p2:1");
        let mut stats = HealthStats::new(id, "http://p2:1".into(), None, Utc::now());
        let control = |action| proxybus_shared::OperatorControl {
            action,
            exchange_id: None,
            until: None,
            reason: "maintenance".into(),
            operator: "alice".into(),
            at: Utc::now(),
            seq: 1,
        };
        stats.operator_controls.push(control(proxybus_shared::OperatorAction::Drain));
        stats.last_seq = 1;
        book.record(stats.clone());
        assert!(!book.usable(&id, &binance), "no new answer (embedded settings) with a drained proxy");
        assert!(book.keepable(&id, &binance), "a cached answer on it is served until it ends");
        stats.operator_controls = vec![control(proxybus_shared::OperatorAction::Ban)];
        stats.last_seq = 2;
        book.record(stats);
        assert!(!book.keepable(&id, &binance), "a ban ends cached answers too");
    }
}
