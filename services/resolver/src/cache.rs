//! The per-client answer cache and the single-flight gate in front of upstream.
//!
//! Keys are `client_id:exchange:connection_type:region`. The seed keyed its cache
//! by `exchange:connection_type:region` because it lived inside one feed; one
//! resolver serves many feeds, and a shared key would hand one proxy (one IP) to
//! every feed, the opposite of what a pool is for.
//!
//! Freshness is decided with `tokio::time::Instant` stored in each entry, so TTL
//! logic follows paused test time; moka (whose clock is its own) only bounds the
//! size and drops entries once they are too old even to be served stale.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use moka::Expiry;
use proxybus_shared::{ConnectionType, ExchangeId, ProxyResponse, Region};
use tokio::time::Instant;

/// Cache key: `client_id:exchange:connection_type:region` (`-` for no region).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(Arc<str>);

impl CacheKey {
    /// The key of one client's answer for one exchange, connection type and region.
    pub fn new(
        client_id: &str,
        exchange: &ExchangeId,
        connection_type: ConnectionType,
        region: Option<&Region>,
    ) -> Self {
        let region = region.map_or("-", Region::as_str);
        Self(format!("{client_id}:{exchange}:{connection_type}:{region}").into())
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One cached answer.
#[derive(Debug, Clone)]
pub struct CachedAnswer {
    /// The answer as first given (source `service` or `embedded`).
    pub response: ProxyResponse,
    /// When it was stored.
    pub stored_at: Instant,
    /// How long it is fresh.
    pub ttl: Duration,
}

impl CachedAnswer {
    /// Time left before the answer expires, `None` once it has.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        (self.stored_at + self.ttl).checked_duration_since(now).filter(|d| !d.is_zero())
    }

    /// Whether the answer expired less than `max_staleness` ago (or is still fresh).
    pub fn servable_stale(&self, now: Instant, max_staleness: Duration) -> bool {
        now < self.stored_at + self.ttl + max_staleness
    }
}

struct KeepWhileServable {
    max_staleness: Duration,
}

impl Expiry<CacheKey, Arc<CachedAnswer>> for KeepWhileServable {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<CachedAnswer>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl + self.max_staleness)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<CachedAnswer>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl + self.max_staleness)
    }
}

/// The bounded answer cache.
#[derive(Clone)]
pub struct AnswerCache {
    entries: moka::future::Cache<CacheKey, Arc<CachedAnswer>>,
}

impl fmt::Debug for AnswerCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnswerCache").field("entries", &self.entries.entry_count()).finish()
    }
}

impl AnswerCache {
    /// A cache of at most `max_entries` answers, each kept for its TTL plus `max_staleness`.
    pub fn new(max_entries: u64, max_staleness: Duration) -> Self {
        let entries = moka::future::Cache::builder()
            .max_capacity(max_entries)
            .expire_after(KeepWhileServable { max_staleness })
            .build();
        Self { entries }
    }

    /// The answer stored under `key`, fresh or not.
    pub async fn get(&self, key: &CacheKey) -> Option<Arc<CachedAnswer>> {
        self.entries.get(key).await
    }

    /// Stores an answer.
    pub async fn insert(&self, key: CacheKey, answer: CachedAnswer) {
        self.entries.insert(key, Arc::new(answer)).await;
    }

    /// Drops the answer under `key`.
    pub async fn invalidate(&self, key: &CacheKey) {
        self.entries.invalidate(key).await;
    }

    /// Approximate number of entries.
    pub fn len(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Whether the cache is (approximately) empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Coalesces concurrent calls for one key into one: N callers of [`run`](Self::run)
/// with the same key while a call is in flight all get that call's result.
pub struct SingleFlight<T: Clone> {
    in_flight: Arc<Mutex<HashMap<CacheKey, Shared<BoxFuture<'static, T>>>>>,
}

impl<T: Clone> fmt::Debug for SingleFlight<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let in_flight = self.in_flight.lock().map_or(0, |map| map.len());
        f.debug_struct("SingleFlight").field("in_flight", &in_flight).finish()
    }
}

impl<T: Clone> Default for SingleFlight<T> {
    fn default() -> Self {
        Self { in_flight: Arc::default() }
    }
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    /// Runs `make()` unless a call for `key` is in flight, in which case its result
    /// is awaited instead. Returns the result and whether this caller led the call.
    pub async fn run<F, Fut>(&self, key: &CacheKey, make: F) -> (T, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (flight, leader) = {
            let mut in_flight = self.lock();
            match in_flight.get(key) {
                Some(flight) => (flight.clone(), false),
                None => {
                    let map = self.in_flight.clone();
                    let owned_key = key.clone();
                    let call = make();
                    let flight = async move {
                        let result = call.await;
                        map.lock().unwrap_or_else(|p| p.into_inner()).remove(&owned_key);
                        result
                    }
                    .boxed()
                    .shared();
                    in_flight.insert(key.clone(), flight.clone());
                    (flight, true)
                }
            }
        };
        (flight.await, leader)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Shared<BoxFuture<'static, T>>>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use proxybus_shared::FallbackPolicy;

    use super::*;

    fn answer(url: &str, ttl: u64) -> CachedAnswer {
        CachedAnswer {
            response: ProxyResponse {
                schema_version: 1,
                proxy_url: Some(url.into()),
                proxy_id: Some(proxybus_shared::proxy_id(url)),
                strategy: "round_robin".into(),
                ttl_seconds: ttl,
                fallback_policy: FallbackPolicy::DirectConnection,
                source: proxybus_shared::ResponseSource::Service,
                region: None,
                request_id: String::new(),
                metadata: Default::default(),
            },
            stored_at: Instant::now(),
            ttl: Duration::from_secs(ttl),
        }
    }

    #[test]
    fn keys_separate_clients() {
        let binance: ExchangeId = "binance".parse().unwrap();
        let a = CacheKey::new("feed-a", &binance, ConnectionType::Http, None);
        let b = CacheKey::new("feed-b", &binance, ConnectionType::Http, None);
        assert_ne!(a, b);
        assert_eq!(a.as_str(), "feed-a:binance:http:-");
        let region: Region = "eu-west".parse().unwrap();
        assert_eq!(
            CacheKey::new("f", &binance, ConnectionType::Websocket, Some(&region)).as_str(),
            "f:binance:websocket:eu-west"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn freshness_and_staleness_follow_tokio_time() {
        let cache = AnswerCache::new(10, Duration::from_secs(60));
        let key = CacheKey::new("f", &"kraken".parse().unwrap(), ConnectionType::Http, None);
        cache.insert(key.clone(), answer("http://p1:1", 10)).await;
        let entry = cache.get(&key).await.unwrap();
        assert_eq!(entry.remaining(Instant::now()), Some(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(entry.remaining(Instant::now()), None, "expired at its TTL");
        assert!(entry.servable_stale(Instant::now(), Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!entry.servable_stale(Instant::now(), Duration::from_secs(60)));
    }

    #[tokio::test]
    async fn single_flight_runs_once_for_concurrent_callers_and_again_afterwards() {
        let flights = Arc::new(SingleFlight::<u32>::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let key = CacheKey::new("f", &"kraken".parse().unwrap(), ConnectionType::Http, None);
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (flights, calls, key, mut gate) = (flights.clone(), calls.clone(), key.clone(), gate_rx.clone());
            tasks.push(tokio::spawn(async move {
                flights
                    .run(&key, move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let _ = gate.wait_for(|open| *open).await;
                        7
                    })
                    .await
            }));
        }
        tokio::task::yield_now().await;
        gate_tx.send(true).unwrap();
        let mut leaders = 0;
        for task in tasks {
            let (value, leader) = task.await.unwrap();
            assert_eq!(value, 7);
            leaders += usize::from(leader);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        let (_, leader) = flights.run(&key, || async { 8 }).await;
        assert!(leader, "a finished flight is forgotten");
    }
}
