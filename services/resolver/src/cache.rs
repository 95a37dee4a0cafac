//! The per-client answer cache and the single-flight gate in front of upstream.
//!
//! Keys are `client_id:exchange:connection_type:region`. The seed keyed its cache
//! by `exchange:connection_type:region` because it lived inside one feed; one
//! resolver serves many feeds, and a shared key would hand one proxy (one IP) to
//! every feed, the opposite of what a pool is for.
//!
//! Freshness is decided with `tokio::time::Instant` stored in each entry, so TTL
//! logic follows paused test time; the cache itself (quick_cache) only bounds the
//! size, and an entry too old even to be served stale is dropped when a lookup
//! meets it.
//!
//! Memory: one resolver holds an answer for every feed it serves (100 000 keys
//! is an ordinary load), while a pool hands out a few hundred distinct answers.
//! So an entry holds only its key, its times and an `Arc` of the answer, and
//! equal answers are stored once ([`SharedAnswers`]): a `ProxyResponse` with its
//! strings and `metadata` map is about a kibibyte, an entry its key, an `Arc`, an
//! instant and the cache's own slot.
//!
//! The cache is quick_cache's synchronous one (S3-FIFO eviction, sharded locks, no
//! background work): a lookup is a hash-map read under a shard's read lock that
//! never waits on I/O, so the service answers cache hits in place without a task.
//! It replaced moka, whose lookup (read log, frequency sketch, epoch-based
//! reclamation) was the largest single item in answering a cache hit, 3 % of the
//! resolver's samples (docs/benchmarks.md, round 5).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use proxybus_shared::{ConnectionType, ExchangeId, ProxyRequest, ProxyResponse, ProxyScheme, Region};
use quick_cache::UnitWeighter;
use quick_cache::sync::DefaultLifecycle;
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
        let mut key = String::new();
        write_base(&mut key, client_id, exchange, connection_type, region);
        Self(key.into())
    }

    /// The key of `request`'s answer in `region`: [`new`](Self::new) with the
    /// request's client, exchange and connection type, then
    /// [`accepting`](Self::accepting) its `proxy_schemes` and
    /// [`for_session`](Self::for_session) its `session_key`.
    pub fn for_request(request: &ProxyRequest, region: Option<&Region>) -> Self {
        let mut key = String::new();
        Self::write_for_request(&mut key, request, region);
        Self(key.into())
    }

    /// Writes the text of [`for_request`](Self::for_request)'s key into `out`
    /// (cleared first): a cache lookup by text ([`AnswerCache::get_for`]) allocates
    /// nothing, where a `CacheKey` is two allocations for every request, cache hits
    /// included.
    pub fn write_for_request(out: &mut String, request: &ProxyRequest, region: Option<&Region>) {
        out.clear();
        write_base(out, &request.client_id, &request.exchange_id, request.connection_type, region);
        write_schemes(out, &request.proxy_schemes);
        write_session(out, request.session_key.as_deref());
    }

    /// The key of an answer limited to the `accepted` proxy schemes
    /// (`ProxyRequest.proxy_schemes`): the key, then `:` and the schemes sorted,
    /// joined by `+`; unchanged when `accepted` is empty (every scheme). A feed
    /// that asks with and without a filter keeps two answers, never one for both.
    pub fn accepting(self, accepted: &[ProxyScheme]) -> Self {
        if accepted.is_empty() {
            return self;
        }
        let mut key = self.0.to_string();
        write_schemes(&mut key, accepted);
        Self(key.into())
    }

    /// The key of an answer for one logical session (`ProxyRequest.session_key`):
    /// the key, then `:session=` and the session key; unchanged without one. A
    /// feed's sessions each keep their own answer, as the pool keeps their proxies.
    pub fn for_session(self, session_key: Option<&str>) -> Self {
        if session_key.is_none() {
            return self;
        }
        let mut key = self.0.to_string();
        write_session(&mut key, session_key);
        Self(key.into())
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

/// A key and its text are equal and hash alike (the derived `Hash` hashes the
/// `str`), so the cache can be read with a `&str` ([`AnswerCache::get_for`]).
impl std::borrow::Borrow<str> for CacheKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// `client_id:exchange:connection_type:region`, pieces pushed rather than
/// `format!`ted: this runs for every request, cache hits included.
fn write_base(
    out: &mut String,
    client_id: &str,
    exchange: &ExchangeId,
    connection_type: ConnectionType,
    region: Option<&Region>,
) {
    let region = region.map_or("-", Region::as_str);
    let pieces = [client_id, exchange.as_str(), connection_type.as_str(), region];
    out.reserve(pieces.iter().map(|p| p.len() + 1).sum());
    for (i, piece) in pieces.into_iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(piece);
    }
}

/// `:` and the accepted schemes sorted, deduplicated, joined by `+`; nothing when none.
fn write_schemes(out: &mut String, accepted: &[ProxyScheme]) {
    if accepted.is_empty() {
        return;
    }
    let mut schemes: Vec<&str> = accepted.iter().map(|s| s.as_str()).collect();
    schemes.sort_unstable();
    schemes.dedup();
    out.push(':');
    out.push_str(&schemes.join("+"));
}

/// `:session=` and the session key; nothing without one.
fn write_session(out: &mut String, session_key: Option<&str>) {
    if let Some(session) = session_key {
        out.push_str(":session=");
        out.push_str(session);
    }
}

/// One cached answer.
#[derive(Debug, Clone)]
pub struct CachedAnswer {
    /// The answer as first given (source `service` or `embedded`), without a
    /// `request_id`; shared with every other key that got the same answer.
    pub response: Arc<ProxyResponse>,
    /// When it stops being fresh (stored + TTL). One instant rather than the time
    /// stored and the TTL: 16 bytes less in each of the 100 000 entries a busy
    /// resolver holds (docs/benchmarks.md, `resolver-memory`).
    pub expires_at: Instant,
}

impl CachedAnswer {
    /// Time left before the answer expires, `None` once it has.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.expires_at.checked_duration_since(now).filter(|d| !d.is_zero())
    }

    /// Whether the answer expired less than `max_staleness` ago (or is still fresh).
    pub fn servable_stale(&self, now: Instant, max_staleness: Duration) -> bool {
        now < self.expires_at + max_staleness
    }
}

/// The entries: at most `max_entries` of them (one unit of weight each).
type Entries = quick_cache::sync::Cache<
    CacheKey,
    CachedAnswer,
    UnitWeighter,
    foldhash::fast::RandomState,
    DefaultLifecycle<CacheKey, CachedAnswer>,
>;

/// The bounded answer cache.
#[derive(Clone)]
pub struct AnswerCache {
    /// Hashed with foldhash (randomly seeded per process) rather than SipHash-1-3:
    /// every request, cache hits included, hashes its key here.
    entries: Arc<Entries>,
    answers: Arc<SharedAnswers>,
    max_staleness: Duration,
}

impl fmt::Debug for AnswerCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnswerCache")
            .field("entries", &self.entries.len())
            .field("distinct_answers", &self.answers.len())
            .finish()
    }
}

impl AnswerCache {
    /// A cache of at most `max_entries` answers, each kept for its TTL plus `max_staleness`.
    pub fn new(max_entries: u64, max_staleness: Duration) -> Self {
        // Room for the bound up front: tables grown by doubling while requests
        // allocate around them leave holes that keep the peak RSS high. An entry
        // too old to serve even stale is dropped when a lookup meets it, and the
        // size bound evicts the rest.
        let entries = Arc::new(Entries::with(
            usize::try_from(max_entries.min(1 << 20)).unwrap_or(1 << 20),
            max_entries,
            UnitWeighter,
            foldhash::fast::RandomState::default(),
            DefaultLifecycle::default(),
        ));
        Self { entries, answers: Arc::default(), max_staleness }
    }

    /// The answer stored under `key`, fresh or not.
    pub fn get(&self, key: &CacheKey) -> Option<CachedAnswer> {
        self.get_text(key.as_str(), Instant::now())
    }

    /// The answer stored for `request` in `region` ([`CacheKey::for_request`]),
    /// fresh or not at `now`, looked up by the key's text written into a buffer
    /// of this thread: no allocation on a hit.
    pub fn get_for(&self, request: &ProxyRequest, region: Option<&Region>, now: Instant) -> Option<CachedAnswer> {
        thread_local! {
            static KEY_TEXT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        KEY_TEXT.with_borrow_mut(|text| {
            CacheKey::write_for_request(text, request, region);
            self.get_text(text, now)
        })
    }

    /// The answer stored under the key whose text is `key`; one too old even to
    /// be served stale at `now` is dropped.
    fn get_text(&self, key: &str, now: Instant) -> Option<CachedAnswer> {
        let answer = self.entries.get(key)?;
        if now > answer.expires_at + self.max_staleness {
            self.entries.remove(key);
            return None;
        }
        Some(answer)
    }

    /// Stores `response` under `key`, fresh for `ttl` from now. Its `request_id`
    /// is not kept (each request gets its own).
    pub fn insert(&self, key: CacheKey, mut response: ProxyResponse, ttl: Duration) {
        response.request_id = String::new();
        let response = self.answers.share(response);
        self.entries.insert(key, CachedAnswer { response, expires_at: Instant::now() + ttl });
    }

    /// Drops the answer under `key`.
    pub fn invalidate(&self, key: &CacheKey) {
        self.entries.remove(key);
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Whether the cache is (approximately) empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of distinct answers held for the entries (at most [`len`](Self::len)).
    pub fn distinct_answers(&self) -> usize {
        self.answers.len()
    }
}

/// Equal answers stored once: [`share`](Self::share) returns the `Arc` of an
/// equal answer still held by some entry, or stores this one. Holds only weak
/// references, so an answer is freed with the last entry holding it; dead
/// references are swept whenever the table has doubled since the last sweep.
#[derive(Debug, Default)]
pub(crate) struct SharedAnswers {
    table: Mutex<AnswerTable>,
}

#[derive(Debug, Default)]
struct AnswerTable {
    by_hash: HashMap<u64, Weak<ProxyResponse>>,
    hasher: std::collections::hash_map::RandomState,
    sweep_at: usize,
}

impl SharedAnswers {
    /// Smallest table size at which dead references are swept.
    const MIN_SWEEP: usize = 1024;

    /// The shared copy of `response`.
    pub(crate) fn share(&self, response: ProxyResponse) -> Arc<ProxyResponse> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let hash = {
            // Everything but `metadata` (no `Hash`); equality below compares it too.
            let mut h = table.hasher.build_hasher();
            (&response.proxy_url, &response.proxy_id, &response.strategy, &response.region).hash(&mut h);
            (response.schema_version, response.ttl_seconds, response.fallback_policy, response.source).hash(&mut h);
            h.finish()
        };
        if let Some(known) = table.by_hash.get(&hash).and_then(Weak::upgrade)
            && *known == response
        {
            return known;
        }
        let shared = Arc::new(response);
        table.by_hash.insert(hash, Arc::downgrade(&shared));
        if table.by_hash.len() >= table.sweep_at.max(Self::MIN_SWEEP) {
            table.by_hash.retain(|_, answer| answer.strong_count() > 0);
            table.sweep_at = table.by_hash.len() * 2;
        }
        shared
    }

    /// Number of answers in the table (live or not yet swept).
    pub(crate) fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).by_hash.len()
    }
}

/// Coalesces concurrent calls for one key into one: N callers of [`run`](Self::run)
/// with the same key while a call is in flight all get that call's result.
pub(crate) struct SingleFlight<T: Clone> {
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
    /// is awaited instead, or `settled()` gives what a call that already ended left
    /// (the answer cache, which a flight fills before it ends). `settled` is asked
    /// under the lock, so a flight that ended between the caller's own cache lookup and
    /// this call is not run again: the caller saw no cached answer, the flight then
    /// stored one and left the map, and without the check the caller led a second
    /// upstream call for the same key (seen once in a CI run of `singleflight`: two
    /// upstream calls for 1 000 requests). Returns the result and whether this caller
    /// led a call.
    pub(crate) async fn run<S, F, Fut>(&self, key: &CacheKey, settled: S, make: F) -> (T, bool)
    where
        S: FnOnce() -> Option<T>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (flight, leader) = {
            let mut in_flight = self.lock();
            match in_flight.get(key) {
                Some(flight) => (flight.clone(), false),
                None => {
                    if let Some(done) = settled() {
                        return (done, false);
                    }
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

    fn answer(url: &str) -> ProxyResponse {
        ProxyResponse {
            schema_version: 1,
            proxy_url: Some(url.into()),
            proxy_id: Some(proxybus_shared::proxy_id(url)),
            strategy: "round_robin".into(),
            ttl_seconds: 10,
            fallback_policy: FallbackPolicy::DirectConnection,
            source: proxybus_shared::ResponseSource::Service,
            region: None,
            request_id: "req-1".into(),
            metadata: Default::default(),
            resolver_region: None,
        }
    }

    #[test]
    fn keys_separate_clients() {
        let binance: ExchangeId = "binance".parse().unwrap();
        let plain = CacheKey::new("f", &binance, ConnectionType::Http, None);
        let http_only = plain.clone().accepting(&[ProxyScheme::Https, ProxyScheme::Http, ProxyScheme::Http]);
        assert_eq!(http_only.as_str(), "f:binance:http:-:http+https", "sorted and once each");
        assert_eq!(plain.clone().accepting(&[]), plain, "no filter, the key of every scheme");
        assert_eq!(plain.clone().for_session(Some("s-1")).as_str(), "f:binance:http:-:session=s-1");
        assert_eq!(plain.clone().for_session(None), plain);
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

    #[test]
    fn a_request_is_looked_up_by_the_text_of_its_key() {
        let binance: ExchangeId = "binance".parse().unwrap();
        let region: Region = "eu-west".parse().unwrap();
        let cache = AnswerCache::new(10, Duration::from_secs(60));
        let mut request = ProxyRequest::new(binance.clone(), ConnectionType::Http, "feed-1");
        let combos: [(&[ProxyScheme], Option<&str>); 4] = [
            (&[], None),
            (&[ProxyScheme::Socks5, ProxyScheme::Http], None),
            (&[], Some("s-1")),
            (&[ProxyScheme::Https], Some("s-2")),
        ];
        for (i, (schemes, session)) in combos.into_iter().enumerate() {
            request.proxy_schemes = schemes.to_vec();
            request.session_key = session.map(str::to_owned);
            let built = CacheKey::new("feed-1", &binance, ConnectionType::Http, Some(&region))
                .accepting(schemes)
                .for_session(session);
            assert_eq!(CacheKey::for_request(&request, Some(&region)), built, "{built}");
            assert!(cache.get_for(&request, Some(&region), Instant::now()).is_none(), "{built} not stored yet");
            let url = format!("http://p{i}:1");
            cache.insert(built.clone(), answer(&url), Duration::from_secs(10));
            let found = cache.get_for(&request, Some(&region), Instant::now()).expect("stored under the same text");
            assert_eq!(found.response.proxy_url.as_deref(), Some(url.as_str()), "{built}");
            assert!(cache.get_for(&request, None, Instant::now()).is_none(), "another region is another key");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn freshness_and_staleness_follow_tokio_time() {
        let cache = AnswerCache::new(10, Duration::from_secs(60));
        let key = CacheKey::new("f", &"kraken".parse().unwrap(), ConnectionType::Http, None);
        cache.insert(key.clone(), answer("http://p1:1"), Duration::from_secs(10));
        let entry = cache.get(&key).unwrap();
        assert_eq!(entry.remaining(Instant::now()), Some(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(entry.remaining(Instant::now()), None, "expired at its TTL");
        assert!(entry.servable_stale(Instant::now(), Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!entry.servable_stale(Instant::now(), Duration::from_secs(60)));
    }

    #[test]
    fn equal_answers_are_stored_once_and_freed_with_their_last_entry() {
        let cache = AnswerCache::new(100, Duration::from_secs(60));
        let binance: ExchangeId = "binance".parse().unwrap();
        let key = |client: &str| CacheKey::new(client, &binance, ConnectionType::Http, None);
        cache.insert(key("a"), answer("http://p1:1"), Duration::from_secs(10));
        let mut same = answer("http://p1:1");
        same.request_id = "req-2".into();
        cache.insert(key("b"), same, Duration::from_secs(10));
        let mut tagged = answer("http://p1:1");
        tagged.metadata.insert("tags".into(), "eu".into());
        cache.insert(key("c"), tagged, Duration::from_secs(10));
        let (a, b, c) = (cache.get(&key("a")).unwrap(), cache.get(&key("b")).unwrap(), cache.get(&key("c")).unwrap());
        assert!(Arc::ptr_eq(&a.response, &b.response), "equal answers share one copy");
        assert!(!Arc::ptr_eq(&a.response, &c.response), "different metadata, different answer");
        assert_eq!(a.response.request_id, "", "no request id is kept");
        assert_eq!(c.response.metadata["tags"], "eu");

        let weak = Arc::downgrade(&a.response);
        drop((a, b));
        cache.invalidate(&key("a"));
        cache.invalidate(&key("b"));
        assert!(weak.upgrade().is_none(), "freed with the last entry holding it");
    }

    #[test]
    fn the_size_bound_holds_and_recent_answers_stay() {
        let cache = AnswerCache::new(100, Duration::from_secs(60));
        let binance: ExchangeId = "binance".parse().unwrap();
        let key = |i: usize| CacheKey::new(&format!("feed-{i}"), &binance, ConnectionType::Http, None);
        for i in 0..1_000 {
            cache.insert(key(i), answer(&format!("http://p{}:1", i % 7)), Duration::from_secs(10));
            // Feed 0 keeps asking: a key in use is not the one evicted.
            assert!(cache.get(&key(0)).is_some(), "feed 0's answer evicted after {i} inserts");
        }
        assert!(cache.len() <= 100, "{} entries over a bound of 100", cache.len());
        assert!(cache.len() >= 50, "only {} of 100 slots used", cache.len());
        assert!(cache.distinct_answers() <= 7);
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
                    .run(
                        &key,
                        || None,
                        move || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            let _ = gate.wait_for(|open| *open).await;
                            7
                        },
                    )
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
        let (_, leader) = flights.run(&key, || None, || async { 8 }).await;
        assert!(leader, "a finished flight is forgotten");
    }

    #[tokio::test]
    async fn a_flight_that_ended_after_the_callers_own_lookup_is_not_run_again() {
        let flights = SingleFlight::<u32>::default();
        let key = CacheKey::new("f", &"kraken".parse().unwrap(), ConnectionType::Http, None);
        // The caller looked in the cache and found nothing; then a flight stored 7 and ended.
        let cache = Arc::new(Mutex::new(None::<u32>));
        let stored = cache.clone();
        let (value, leader) = flights
            .run(
                &key,
                || None,
                move || async move {
                    *stored.lock().unwrap() = Some(7);
                    7
                },
            )
            .await;
        assert_eq!((value, leader), (7, true));
        let calls = AtomicUsize::new(0);
        let (value, leader) = flights
            .run(
                &key,
                || *cache.lock().unwrap(),
                || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { 8 }
                },
            )
            .await;
        assert_eq!((value, leader, calls.load(Ordering::SeqCst)), (7, false, 0), "what the flight left is taken");
    }
}
