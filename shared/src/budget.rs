//! Rate budgets per (proxy, exchange): how much of an exchange's per-IP limits a
//! proxy's egress IP has used, shared by every feed in every process through KV
//! bucket `PROXY_BUDGETS` (key `{proxy_id}.{exchange_id}`, value [`RateBudget`]).
//!
//! Feeds report what the exchange told them (`ProxyFeedback.usage_headers`, e.g.
//! Binance's `X-MBX-USED-WEIGHT-1M`) and their websocket connects
//! (`ProxyFeedback.connect_count`, or one per websocket `connect_start`); a keeper
//! (the pool service) folds those reports into the bucket with compare-and-set
//! ([`fold_into_bucket`]: a revision-checked update, retried on conflict), so
//! concurrent keepers never lose each other's counts; pools and resolvers follow
//! the bucket and skip proxies near their limit ([`RateBudget::has_room`]) before
//! the exchange answers 429.
//!
//! The rules live here and nowhere else: [`BudgetLimits::fold`] (what a report does
//! to a budget) and [`RateBudget::has_room`] (whether a proxy may take more).
//!
//! # Limits and their sources
//! The defaults are the exchanges' published per-IP limits:
//! - Binance spot REST: 6 000 request weight per minute per IP, reported in
//!   `X-MBX-USED-WEIGHT-1M` (<https://developers.binance.com/docs/binance-spot-api-docs/rest-api/limits>);
//! - Binance websocket streams: 300 connections per 5 minutes per IP
//!   (<https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams>).
//!
//! The exchange lab scales those down (`proxybus_lab::ExchangeRules::budget_limits`
//! gives the limits that match a lab).
//!
//! # Examples
//! ```
//! use proxybus_shared::budget::{BudgetLimits, RateBudget};
//! use chrono::{TimeZone, Utc};
//! let limits = BudgetLimits::binance();
//! let at = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 10).unwrap();
//! let mut budget = RateBudget::new(proxybus_shared::proxy_id("http://10.0.0.1:3128"), "binance".parse().unwrap());
//! limits.fold_weight(&mut budget, 5_000, at);
//! assert!(!budget.has_room(at, limits.headroom), "5 000 of 6 000 is past 80 %");
//! assert!(budget.has_room(at + chrono::Duration::seconds(60), limits.headroom), "a new minute");
//! ```

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::kv::{BucketConfig, BucketError};
use crate::{Codec, ConnectionType, Encoding, ExchangeId, FeedbackPhase, ProxyFeedback, ProxyId};

/// Binance's per-IP REST weight limit per minute (source in the module docs).
pub const BINANCE_REQUEST_WEIGHT_PER_MINUTE: u32 = 6_000;
/// Binance's per-IP websocket connection limit per 5 minutes (source in the module docs).
pub const BINANCE_WS_CONNECTS_PER_5_MINUTES: u32 = 300;
/// The header Binance reports an IP's used request weight of the current minute in.
pub const BINANCE_WEIGHT_HEADER: &str = "x-mbx-used-weight-1m";

/// The per-IP limits of one exchange that budgets are kept against. Every field is
/// a setting (`budgets.exchanges.{exchange}.{field}` of the pool service).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetLimits {
    /// Request weight one IP may use per window (0: not budgeted).
    pub request_weight_limit: u32,
    /// Length of the request-weight window, seconds (Binance: 60).
    pub request_window_seconds: u64,
    /// Response header carrying the IP's used weight in the current window
    /// (case-insensitive; Binance: `X-MBX-USED-WEIGHT-1M`).
    pub weight_header: String,
    /// Websocket connects one IP may make per connect window (0: not budgeted).
    pub ws_connect_limit: u32,
    /// Length of the connect window, seconds (Binance: 300).
    pub ws_connect_window_seconds: u64,
    /// Fraction of a limit past which a proxy counts as near it and is skipped
    /// while others have room, 0.1–1.0 (default 0.8: the last fifth is kept for
    /// requests already in flight and for feeds on the same IP outside proxybus).
    pub headroom: f64,
}

impl Default for BudgetLimits {
    fn default() -> Self {
        Self {
            request_weight_limit: 0,
            request_window_seconds: 60,
            weight_header: String::new(),
            ws_connect_limit: 0,
            ws_connect_window_seconds: 300,
            headroom: 0.8,
        }
    }
}

impl BudgetLimits {
    /// Binance spot's published limits (module docs): 6 000 weight per minute,
    /// 300 websocket connects per 5 minutes, per IP.
    pub fn binance() -> Self {
        Self {
            request_weight_limit: BINANCE_REQUEST_WEIGHT_PER_MINUTE,
            request_window_seconds: 60,
            weight_header: BINANCE_WEIGHT_HEADER.into(),
            ws_connect_limit: BINANCE_WS_CONNECTS_PER_5_MINUTES,
            ws_connect_window_seconds: 300,
            headroom: 0.8,
        }
    }

    /// Problems with these limits, each as `(field, message)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !(0.1..=1.0).contains(&self.headroom) {
            out.push(("headroom", format!("{} is not within 0.1..=1.0", self.headroom)));
        }
        if self.request_window_seconds == 0 || self.request_window_seconds > 86_400 {
            out.push(("request_window_seconds", "must be 1 to 86400".to_owned()));
        }
        if self.ws_connect_window_seconds == 0 || self.ws_connect_window_seconds > 86_400 {
            out.push(("ws_connect_window_seconds", "must be 1 to 86400".to_owned()));
        }
        if self.request_weight_limit > 0 && self.weight_header.trim().is_empty() {
            out.push(("weight_header", "a request weight limit needs the header the exchange reports it in".into()));
        }
        out
    }

    /// Folds one feedback event into `budget`: the used weight the exchange
    /// reported in [`weight_header`](Self::weight_header), and the event's websocket
    /// connects. Returns whether the budget changed. The event's own timestamp
    /// places it in a window, so replays and late events fold the same way.
    pub fn fold(&self, budget: &mut RateBudget, event: &ProxyFeedback) -> bool {
        let mut changed = false;
        if self.request_weight_limit > 0
            && let Some(used) = self.reported_weight(&event.usage_headers)
        {
            changed |= self.fold_weight(budget, used, event.timestamp);
        }
        let connects = connects_of(event);
        if self.ws_connect_limit > 0 && connects > 0 {
            changed |= self.fold_connects(budget, connects, event.timestamp);
        }
        changed
    }

    /// The used weight in `headers` (names compared case-insensitively), if reported.
    pub fn reported_weight(&self, headers: &BTreeMap<String, String>) -> Option<u32> {
        if self.weight_header.is_empty() {
            return None;
        }
        headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&self.weight_header))
            .and_then(|(_, value)| value.trim().parse().ok())
    }

    /// Whether `used` weight is past the headroom of the limit (a feed that sees it
    /// should move to another proxy now).
    pub fn weight_near_limit(&self, used: u32) -> bool {
        self.request_weight_limit > 0 && f64::from(used) >= self.headroom * f64::from(self.request_weight_limit)
    }

    /// The exchange reported `used` weight at `at`: a later window starts over at
    /// it; within the window the larger count wins (reports arrive out of order);
    /// an earlier window is ignored.
    pub fn fold_weight(&self, budget: &mut RateBudget, used: u32, at: DateTime<Utc>) -> bool {
        let window = window_start(at, self.request_window_seconds);
        budget.weight_limit = self.request_weight_limit;
        budget.weight_window_seconds = self.request_window_seconds;
        match budget.weight_window_start {
            Some(current) if window < current => false,
            Some(current) if window == current && used <= budget.weight_used => false,
            _ => {
                budget.weight_window_start = Some(window);
                budget.weight_used = used;
                budget.updated_at = budget.updated_at.max(at);
                true
            }
        }
    }

    /// `connects` websocket connects were made at `at`: counted in their window.
    pub fn fold_connects(&self, budget: &mut RateBudget, connects: u32, at: DateTime<Utc>) -> bool {
        let window = window_start(at, self.ws_connect_window_seconds);
        budget.connect_limit = self.ws_connect_limit;
        budget.connect_window_seconds = self.ws_connect_window_seconds;
        match budget.connect_window_start {
            Some(current) if window < current => return false,
            Some(current) if window == current => budget.connects_used = budget.connects_used.saturating_add(connects),
            _ => {
                budget.connect_window_start = Some(window);
                budget.connects_used = connects;
            }
        }
        budget.updated_at = budget.updated_at.max(at);
        true
    }
}

/// Websocket connects an event stands for: its `connect_count`, else one for a
/// websocket `connect_start`.
pub fn connects_of(event: &ProxyFeedback) -> u32 {
    match event.connect_count {
        Some(count) => count,
        None => {
            u32::from(event.connection_type == ConnectionType::Websocket && event.phase == FeedbackPhase::ConnectStart)
        }
    }
}

/// The start of the fixed window of `seconds` that `at` falls in (windows are
/// aligned to the Unix epoch, as Binance's per-minute weight is to the minute).
fn window_start(at: DateTime<Utc>, seconds: u64) -> DateTime<Utc> {
    let seconds = seconds.max(1) as i64;
    let start = at.timestamp().div_euclid(seconds) * seconds;
    DateTime::from_timestamp(start, 0).unwrap_or(at)
}

/// Response header name prefixes that carry an exchange's usage (compared
/// lowercase): Binance's `X-MBX-USED-WEIGHT-*`, `X-MBX-ORDER-COUNT-*` and
/// `X-SAPI-USED-*`, Bybit's `X-Bapi-Limit-*`, and the common `X-RateLimit-*` /
/// IETF `RateLimit-*` families (the Python client's list, plus `X-SAPI-USED-*`).
pub const USAGE_HEADER_PREFIXES: [&str; 6] =
    ["x-mbx-used-weight", "x-mbx-order-count", "x-sapi-used-", "x-bapi-limit", "x-ratelimit-", "ratelimit-"];

/// Most usage headers one feedback event carries (the rest are dropped).
pub const MAX_USAGE_HEADERS: usize = 16;

/// The usage headers among `headers` (name, value), as `ProxyFeedback.usage_headers`:
/// names lowercased, at most [`MAX_USAGE_HEADERS`], values of at most 64 characters.
pub fn usage_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> BTreeMap<String, String> {
    headers
        .into_iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value))
        .filter(|(name, _)| USAGE_HEADER_PREFIXES.iter().any(|prefix| name.starts_with(prefix)))
        .take(MAX_USAGE_HEADERS)
        .map(|(name, value)| (name, value.chars().take(64).collect()))
        .collect()
}

/// Budget settings: the limits of each budgeted exchange (an exchange without an
/// entry is not budgeted). Defaults: `binance` with [`BudgetLimits::binance`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetSettings {
    /// Keep and apply budgets at all.
    pub enabled: bool,
    /// Limits per exchange id.
    pub exchanges: BTreeMap<ExchangeId, BudgetLimits>,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        let binance: ExchangeId = "binance".parse().expect("a valid exchange id");
        Self { enabled: true, exchanges: [(binance, BudgetLimits::binance())].into_iter().collect() }
    }
}

impl BudgetSettings {
    /// The limits of `exchange`, when it is budgeted and budgets are on.
    pub fn limits(&self, exchange: &ExchangeId) -> Option<&BudgetLimits> {
        self.exchanges.get(exchange).filter(|_| self.enabled)
    }
}

/// How much of its limits one proxy's IP has used at one exchange (KV bucket
/// `PROXY_BUDGETS`, key `{proxy_id}.{exchange_id}`). An extension of contract v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RateBudget {
    /// Contract version; a missing one is 1.
    #[serde(default = "schema_version")]
    pub schema_version: u32,
    /// The proxy.
    pub proxy_id: ProxyId,
    /// The exchange.
    pub exchange_id: ExchangeId,
    /// Request weight used in the current window, as the exchange last reported it.
    #[serde(default)]
    pub weight_used: u32,
    /// The weight limit per window it is kept against (0: not budgeted).
    #[serde(default)]
    pub weight_limit: u32,
    /// Start of the weight window `weight_used` is about.
    #[serde(default)]
    pub weight_window_start: Option<DateTime<Utc>>,
    /// Length of the weight window, seconds.
    #[serde(default)]
    pub weight_window_seconds: u64,
    /// Websocket connects counted in the current connect window.
    #[serde(default)]
    pub connects_used: u32,
    /// The connect limit per window (0: not budgeted).
    #[serde(default)]
    pub connect_limit: u32,
    /// Start of the connect window `connects_used` is about.
    #[serde(default)]
    pub connect_window_start: Option<DateTime<Utc>>,
    /// Length of the connect window, seconds.
    #[serde(default)]
    pub connect_window_seconds: u64,
    /// Timestamp of the newest report folded.
    pub updated_at: DateTime<Utc>,
}

fn schema_version() -> u32 {
    crate::SCHEMA_VERSION
}

impl RateBudget {
    /// An empty budget.
    pub fn new(proxy_id: ProxyId, exchange_id: ExchangeId) -> Self {
        Self {
            schema_version: crate::SCHEMA_VERSION,
            proxy_id,
            exchange_id,
            weight_used: 0,
            weight_limit: 0,
            weight_window_start: None,
            weight_window_seconds: 0,
            connects_used: 0,
            connect_limit: 0,
            connect_window_start: None,
            connect_window_seconds: 0,
            updated_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    /// Its key in `PROXY_BUDGETS`: `{proxy_id}.{exchange_id}`.
    pub fn key(&self) -> String {
        budget_key(&self.proxy_id, &self.exchange_id)
    }

    /// Whether the proxy may take more work for this exchange at `now`: neither its
    /// weight nor its connects of a window that is still running are at `headroom`
    /// (a fraction) of their limit. A window that has ended leaves room.
    pub fn has_room(&self, now: DateTime<Utc>, headroom: f64) -> bool {
        let running = |start: Option<DateTime<Utc>>, seconds: u64| {
            start.is_some_and(|start| now < start + chrono::Duration::seconds(seconds as i64))
        };
        let near = |used: u32, limit: u32| limit > 0 && f64::from(used) >= headroom * f64::from(limit);
        let weight_full =
            running(self.weight_window_start, self.weight_window_seconds) && near(self.weight_used, self.weight_limit);
        let connects_full = running(self.connect_window_start, self.connect_window_seconds)
            && near(self.connects_used, self.connect_limit);
        !(weight_full || connects_full)
    }

    /// How full the budget is at `now`, 0..1 and more (the larger of weight and
    /// connects; a window that has ended counts 0): a proxy with less is preferred.
    pub fn load(&self, now: DateTime<Utc>) -> f64 {
        let share = |used: u32, limit: u32, start: Option<DateTime<Utc>>, seconds: u64| match start {
            Some(start) if limit > 0 && now < start + chrono::Duration::seconds(seconds as i64) => {
                f64::from(used) / f64::from(limit)
            }
            _ => 0.0,
        };
        share(self.weight_used, self.weight_limit, self.weight_window_start, self.weight_window_seconds).max(share(
            self.connects_used,
            self.connect_limit,
            self.connect_window_start,
            self.connect_window_seconds,
        ))
    }
}

/// The key of the budget of `proxy` at `exchange`: `{proxy_id}.{exchange_id}`.
pub fn budget_key(proxy: &ProxyId, exchange: &ExchangeId) -> String {
    format!("{proxy}.{exchange}")
}

/// The latest rate budget of each (proxy, exchange), as a follower of
/// `PROXY_BUDGETS` holds them (the resolver before serving a cached answer, the
/// pool before choosing a proxy).
///
/// Looked up by the pair itself: the bucket's key `{proxy_id}.{exchange_id}`
/// ([`budget_key`]) is only parsed when a key is deleted. A lookup runs for every
/// request a resolver answers from its cache, and building the key string there
/// (`format!`) was a measurable part of a cache hit (docs/benchmarks.md).
#[derive(Debug, Clone, Default)]
pub struct BudgetBook {
    by_proxy: HashMap<ProxyId, HashMap<ExchangeId, RateBudget>>,
}

impl BudgetBook {
    /// Holds `budget` unless the one held for its pair was updated later
    /// (`updated_at`); returns whether it is now held.
    pub fn record(&mut self, budget: RateBudget) -> bool {
        let of_proxy = self.by_proxy.entry(budget.proxy_id).or_default();
        if of_proxy.get(&budget.exchange_id).is_some_and(|held| held.updated_at > budget.updated_at) {
            return false;
        }
        of_proxy.insert(budget.exchange_id.clone(), budget);
        true
    }

    /// Forgets the budget under bucket key `key` (`{proxy_id}.{exchange_id}`, deleted
    /// or expired); a key of another shape names no budget and changes nothing.
    pub fn forget(&mut self, key: &str) {
        let Some((proxy, exchange)) = key.split_once('.') else { return };
        let Ok(proxy) = proxy.parse::<ProxyId>() else { return };
        if let Some(of_proxy) = self.by_proxy.get_mut(&proxy) {
            of_proxy.retain(|held, _| held.as_str() != exchange);
            if of_proxy.is_empty() {
                self.by_proxy.remove(&proxy);
            }
        }
    }

    /// The budget held for `proxy` at `exchange`.
    pub fn get(&self, proxy: &ProxyId, exchange: &ExchangeId) -> Option<&RateBudget> {
        self.by_proxy.get(proxy)?.get(exchange)
    }

    /// Number of budgets held.
    pub fn len(&self) -> usize {
        self.by_proxy.values().map(HashMap::len).sum()
    }

    /// Whether no budget is held.
    pub fn is_empty(&self) -> bool {
        self.by_proxy.is_empty()
    }
}

/// How long a budget stays in the bucket without a report (its windows are long over).
pub const BUDGET_MAX_AGE: Duration = Duration::from_secs(3_600);

/// Opens (creating when missing) bucket `PROXY_BUDGETS` (latest value per key,
/// values expire after [`BUDGET_MAX_AGE`]).
///
/// # Errors
/// [`BucketError`] when it neither opens nor can be made.
pub async fn open_budget_bucket(js: &jetstream::Context) -> Result<kv::Store, BucketError> {
    let mut config = BucketConfig::new(
        crate::subject::BUDGET_BUCKET,
        "proxybus rate budgets per proxy and exchange, key {proxy_id}.{exchange_id}",
    );
    config.max_age = BUDGET_MAX_AGE;
    crate::kv::open_or_create(js, &config).await
}

/// Why a report could not be folded into the bucket.
#[derive(Debug, thiserror::Error)]
#[error("cannot update budget {key}: {message}")]
pub struct BudgetError {
    /// The key.
    pub key: String,
    /// What went wrong.
    pub message: String,
}

/// Most compare-and-set attempts of one fold before it gives up.
pub const MAX_CAS_ATTEMPTS: usize = 32;

/// Upper bound of the random wait after the first conflict, in ms; the n-th
/// conflict waits up to n times this.
const CAS_BACKOFF_MS: u64 = 2;

/// Folds `event` into its budget in `bucket` with compare-and-set: read the value
/// and its revision, fold, write only if the revision is unchanged (`create` when
/// there is none), and start over when another writer came first. Returns the
/// stored budget when the event changed it, `None` when it did not (or the
/// exchange is not budgeted).
///
/// # Errors
/// [`BudgetError`] when the server fails or [`MAX_CAS_ATTEMPTS`] writers in a row came first.
pub async fn fold_into_bucket(
    bucket: &kv::Store,
    settings: &BudgetSettings,
    event: &ProxyFeedback,
) -> Result<Option<RateBudget>, BudgetError> {
    let Some(limits) = settings.limits(&event.exchange_id) else { return Ok(None) };
    let key = budget_key(&event.proxy_id, &event.exchange_id);
    let fail = |message: String| BudgetError { key: key.clone(), message };
    let codec = Codec::new(usize::MAX);
    for attempt in 0..MAX_CAS_ATTEMPTS {
        let entry = bucket.entry(key.as_str()).await.map_err(|err| fail(err.to_string()))?;
        let (mut budget, revision) = match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let budget = codec
                    .decode_as::<RateBudget>(Encoding::MsgPack, &entry.value)
                    .unwrap_or_else(|_| RateBudget::new(event.proxy_id, event.exchange_id.clone()));
                (budget, Some(entry.revision))
            }
            Some(entry) => (RateBudget::new(event.proxy_id, event.exchange_id.clone()), Some(entry.revision)),
            None => (RateBudget::new(event.proxy_id, event.exchange_id.clone()), None),
        };
        if !limits.fold(&mut budget, event) {
            return Ok(None);
        }
        let value = codec.encode(Encoding::MsgPack, &budget).map_err(|err| fail(err.to_string()))?;
        let written = match revision {
            Some(revision) => bucket.update(key.as_str(), value, revision).await.map(|_| ()).map_err(|e| e.to_string()),
            None => bucket.create(key.as_str(), value).await.map(|_| ()).map_err(|e| e.to_string()),
        };
        match written {
            Ok(()) => return Ok(Some(budget)),
            Err(err) => tracing::debug!(%key, error = %err, "budget changed under us; folding again"),
        }
        // Another writer came first: wait a little, at random, so writers that
        // collided do not collide again in lockstep.
        let most = CAS_BACKOFF_MS.saturating_mul(attempt as u64 + 1);
        let jitter = 1 + (uuid::Uuid::new_v4().as_u128() as u64) % most;
        tokio::time::sleep(Duration::from_millis(jitter)).await;
    }
    Err(fail(format!("{MAX_CAS_ATTEMPTS} concurrent updates in a row")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_budget_book_keeps_the_latest_budget_per_pair_and_forgets_by_bucket_key() {
        let at = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 1, 1, 12, 0, 0).unwrap();
        let proxy = crate::proxy_id("http://10.0.0.1:3128");
        let (binance, kraken): (ExchangeId, ExchangeId) = ("binance".parse().unwrap(), "kraken".parse().unwrap());
        let budget = |exchange: &ExchangeId, weight_used, seconds| RateBudget {
            weight_used,
            updated_at: at + chrono::Duration::seconds(seconds),
            ..RateBudget::new(proxy, exchange.clone())
        };
        let mut book = BudgetBook::default();
        assert!(book.record(budget(&binance, 10, 5)));
        assert!(book.record(budget(&kraken, 20, 5)));
        assert!(!book.record(budget(&binance, 99, 1)), "an older budget is ignored");
        assert_eq!(book.get(&proxy, &binance).map(|b| b.weight_used), Some(10));
        assert!(book.record(budget(&binance, 30, 5)), "as new as the held one: taken");
        assert_eq!(book.get(&proxy, &binance).map(|b| b.weight_used), Some(30));
        assert_eq!(book.len(), 2);
        for odd in ["", "binance", "not-an-id.binance", "0123.binance"] {
            book.forget(odd);
        }
        assert_eq!(book.len(), 2, "keys of another shape change nothing");
        book.forget(&budget_key(&proxy, &binance));
        assert!(book.get(&proxy, &binance).is_none());
        assert_eq!(book.get(&proxy, &kraken).map(|b| b.weight_used), Some(20));
        book.forget(&budget_key(&proxy, &kraken));
        assert!(book.is_empty());
    }

    use chrono::TimeZone;

    use super::*;

    fn budget() -> RateBudget {
        RateBudget::new(crate::proxy_id("http://10.0.0.1:1"), "binance".parse().unwrap())
    }

    #[test]
    fn weight_follows_the_exchange_within_a_window_and_starts_over_in_the_next() {
        let limits = BudgetLimits { request_weight_limit: 100, ..BudgetLimits::binance() };
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 5).unwrap();
        let mut b = budget();
        assert!(limits.fold_weight(&mut b, 40, t0));
        assert!(!limits.fold_weight(&mut b, 30, t0 + chrono::Duration::seconds(1)), "an older, smaller report");
        assert!(limits.fold_weight(&mut b, 85, t0 + chrono::Duration::seconds(2)));
        assert!(!b.has_room(t0 + chrono::Duration::seconds(3), 0.8));
        assert!((b.load(t0) - 0.85).abs() < 1e-9);
        let next = t0 + chrono::Duration::seconds(60);
        assert!(b.has_room(next, 0.8), "the window ended");
        assert!(limits.fold_weight(&mut b, 5, next));
        assert_eq!(b.weight_used, 5);
        assert!(!limits.fold_weight(&mut b, 99, t0), "a report of an earlier window is ignored");
    }

    #[test]
    fn connects_count_up_per_window() {
        let limits = BudgetLimits { ws_connect_limit: 10, ..BudgetLimits::binance() };
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut b = budget();
        for i in 0..8 {
            assert!(limits.fold_connects(&mut b, 1, t0 + chrono::Duration::seconds(i)));
        }
        assert_eq!(b.connects_used, 8);
        assert!(!b.has_room(t0 + chrono::Duration::seconds(10), 0.8));
        assert!(b.has_room(t0 + chrono::Duration::seconds(300), 0.8));
    }

    #[test]
    fn limits_report_their_problems_and_the_weight_header_is_case_insensitive() {
        assert!(BudgetLimits::binance().problems().is_empty());
        let bad = BudgetLimits { headroom: 1.5, weight_header: String::new(), ..BudgetLimits::binance() };
        let fields: Vec<&str> = bad.problems().into_iter().map(|(field, _)| field).collect();
        assert_eq!(fields, ["headroom", "weight_header"]);
        let headers = [("X-MBX-USED-WEIGHT-1M".to_owned(), " 42 ".to_owned())].into_iter().collect();
        assert_eq!(BudgetLimits::binance().reported_weight(&headers), Some(42));
        assert!(BudgetLimits::binance().weight_near_limit(4_800) && !BudgetLimits::binance().weight_near_limit(4_799));
    }
}
