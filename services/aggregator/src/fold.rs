//! The fold: one feedback event at a time into the [`HealthStats`] of its proxy.
//!
//! The fold is a pure function of the events, their stream sequences and their
//! stream timestamps (the time JetStream stored them, not the feed's clock), so
//! the same events in the same order give the same stats, bit for bit, whether
//! folded live, after a crash, or by `replay`. It never reads a clock.
//!
//! # The health model
//! - Every event counts in `total`. Outcomes (`connected`, `failed`, `request`, and
//!   a `disconnected` that reports failure) also count in `successes`/`failures`,
//!   the time-decayed success rate and, for successes with a latency, the latency
//!   EWMA and percentiles. `connect_start` and a clean `disconnected` count only in
//!   `total`.
//! - `http_429`/`http_418` put the exchange in `cooldown` until `retry_after_seconds`
//!   (or the default cool-down) has passed; `http_451` bans the proxy for that
//!   exchange only. Neither counts against the proxy's own health: the exchange
//!   refused the IP, the proxy worked.
//! - Any other failure counts against the proxy. `consecutive_failures` reaching the
//!   threshold, or the decayed success rate dropping below the ejection rate over
//!   the minimum volume, ejects it for `base_ejection_time × ejections` (capped),
//!   unless that would eject more than `max_ejection_percent` of its region.
//! - An ejection ends by time. The proxy is then `degraded` and on probation: one
//!   proxy failure ejects it again; `probation_successes` successes in a row end the
//!   probation and, if nothing else is wrong, make it `healthy` again.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use proxybus_shared::{
    ErrorKind, ExchangeHealth, ExchangeState, FeedbackPhase, HealthState, HealthStats, ProxyFeedback, ProxyId,
    redact_url,
};
use serde::{Deserialize, Serialize};

use crate::policy::HealthPolicy;
use crate::sketch::LatencySketch;

/// Region key of proxies whose feedback names no region.
pub const NO_REGION: &str = "_none";

/// The part of a proxy's state that is not in [`HealthStats`] but that the fold
/// needs to continue exactly: decayed counters, probation and the latency sketch.
/// It is stored with the stats (field `fold_state` of the KV value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldState {
    /// Time-decayed weight of successful outcomes.
    pub decayed_successes: f64,
    /// Time-decayed weight of all outcomes.
    pub decayed_outcomes: f64,
    /// Stream time (Unix milliseconds) the decayed weights refer to.
    pub decayed_at_ms: i64,
    /// Whether the proxy is on probation after an ejection.
    pub on_probation: bool,
    /// Successes in a row during the probation.
    pub probation_successes: u32,
    /// Latency distribution of successful outcomes.
    pub latency: LatencySketch,
}

impl Default for FoldState {
    fn default() -> Self {
        Self {
            decayed_successes: 0.0,
            decayed_outcomes: 0.0,
            decayed_at_ms: 0,
            on_probation: false,
            probation_successes: 0,
            latency: LatencySketch::new(),
        }
    }
}

/// Everything stored about one proxy: its stats and the fold's own state.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyHealth {
    /// What everyone reads.
    pub stats: HealthStats,
    /// What the fold needs besides.
    pub fold: FoldState,
}

impl ProxyHealth {
    /// The region key of this proxy (its region, or [`NO_REGION`]).
    pub fn region_key(&self) -> String {
        self.stats.region.as_ref().map_or_else(|| NO_REGION.to_owned(), |r| r.as_str().to_owned())
    }

    /// The stats as they stand at `now`: an ejection, cool-down or ban that has run
    /// out is shown as over. The fold applies the same rule when the next event of
    /// the proxy arrives; this is for showing state between events.
    pub fn view_at(&self, now: DateTime<Utc>) -> HealthStats {
        let mut copy = self.clone();
        expire(&mut copy.stats, &mut copy.fold, now);
        copy.stats
    }
}

/// What folding one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FoldOutcome {
    /// The event's sequence was already folded into its proxy: nothing changed.
    pub skipped: bool,
    /// The proxy was ejected by this event.
    pub ejected: bool,
    /// The proxy should have been ejected but its region was at `max_ejection_percent`.
    pub ejection_suppressed: bool,
    /// The proxy was put in cool-down or banned for the event's exchange.
    pub exchange_barred: bool,
}

/// Per-proxy health of every proxy feedback was folded for.
#[derive(Debug, Clone)]
pub struct FeedbackFolder {
    policy: HealthPolicy,
    proxies: BTreeMap<ProxyId, ProxyHealth>,
    regions: BTreeMap<String, BTreeSet<ProxyId>>,
}

impl FeedbackFolder {
    /// An empty folder.
    pub fn new(policy: HealthPolicy) -> Self {
        Self { policy, proxies: BTreeMap::new(), regions: BTreeMap::new() }
    }

    /// A folder that continues from stored state.
    pub fn with_state(policy: HealthPolicy, records: impl IntoIterator<Item = ProxyHealth>) -> Self {
        let mut folder = Self::new(policy);
        for record in records {
            folder.insert(record);
        }
        folder
    }

    /// Puts a stored record in place of what the folder holds for its proxy.
    pub fn insert(&mut self, record: ProxyHealth) {
        let id = record.stats.proxy_id.clone();
        if let Some(old) = self.proxies.get(&id) {
            let old_key = old.region_key();
            if let Some(members) = self.regions.get_mut(&old_key) {
                members.remove(&id);
            }
        }
        self.regions.entry(record.region_key()).or_default().insert(id.clone());
        self.proxies.insert(id, record);
    }

    /// The policy in force.
    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }

    /// The state of one proxy.
    pub fn get(&self, id: &ProxyId) -> Option<&ProxyHealth> {
        self.proxies.get(id)
    }

    /// Every proxy, ordered by id.
    pub fn proxies(&self) -> impl Iterator<Item = &ProxyHealth> {
        self.proxies.values()
    }

    /// How many proxies the folder knows.
    pub fn len(&self) -> usize {
        self.proxies.len()
    }

    /// Whether the folder knows no proxy.
    pub fn is_empty(&self) -> bool {
        self.proxies.is_empty()
    }

    /// Folds `event`, stored at stream sequence `seq` at stream time `at`.
    pub fn fold(&mut self, event: &ProxyFeedback, seq: u64, at: DateTime<Utc>) -> FoldOutcome {
        let id = &event.proxy_id;
        if self.proxies.get(id).is_some_and(|p| seq <= p.stats.last_seq) {
            return FoldOutcome { skipped: true, ..FoldOutcome::default() };
        }
        self.place(event, at);
        let policy = self.policy.clone();
        let mut outcome = FoldOutcome::default();
        let wants_ejection = {
            let proxy = self.proxies.get_mut(id).expect("placed above");
            apply(&policy, proxy, event, seq, at, &mut outcome)
        };
        if wants_ejection {
            let region = self.proxies[id].region_key();
            let members = self.regions.get(&region).map(BTreeSet::len).unwrap_or(1);
            let ejected_now = self.regions.get(&region).map_or(0, |members| {
                members
                    .iter()
                    .filter(|m| *m != id)
                    .filter(|m| self.proxies.get(*m).is_some_and(|p| is_ejected_at(&p.stats, at)))
                    .count()
            });
            let proxy = self.proxies.get_mut(id).expect("placed above");
            if ejected_now < policy.max_ejected(members) {
                let stats = &mut proxy.stats;
                stats.ejections = stats.ejections.saturating_add(1);
                stats.state = HealthState::Ejected;
                stats.ejected_until = Some(at + delta(policy.ejection_time(stats.ejections).as_millis() as u64));
                proxy.fold.on_probation = false;
                proxy.fold.probation_successes = 0;
                outcome.ejected = true;
            } else {
                outcome.ejection_suppressed = true;
            }
        }
        let proxy = self.proxies.get_mut(id).expect("placed above");
        if proxy.stats.state != HealthState::Ejected {
            proxy.stats.state = classify(&policy, proxy);
        }
        outcome
    }

    /// Makes sure the proxy of `event` exists, with its region, URL (redacted) and region index.
    fn place(&mut self, event: &ProxyFeedback, at: DateTime<Utc>) {
        let id = &event.proxy_id;
        match self.proxies.get_mut(id) {
            None => {
                let stats = HealthStats::new(id.clone(), redact_url(&event.proxy_url), event.region.clone(), at);
                self.insert(ProxyHealth {
                    stats,
                    fold: FoldState { decayed_at_ms: at.timestamp_millis(), ..FoldState::default() },
                });
            }
            Some(proxy) => {
                proxy.stats.proxy_url = redact_url(&event.proxy_url);
                if event.region.is_some() && event.region != proxy.stats.region {
                    let mut record = proxy.clone();
                    record.stats.region = event.region.clone();
                    self.insert(record);
                }
            }
        }
    }
}

/// Applies `event` to one proxy's counters; true when it asks for an ejection.
fn apply(
    policy: &HealthPolicy,
    proxy: &mut ProxyHealth,
    event: &ProxyFeedback,
    seq: u64,
    at: DateTime<Utc>,
    outcome: &mut FoldOutcome,
) -> bool {
    let ProxyHealth { stats, fold } = proxy;
    expire(stats, fold, at);
    stats.total += 1;
    stats.last_seq = seq;
    stats.updated_at = at;
    let is_outcome = match event.phase {
        FeedbackPhase::Connected | FeedbackPhase::Failed | FeedbackPhase::Request => true,
        FeedbackPhase::Disconnected => !event.success,
        FeedbackPhase::ConnectStart => false,
    };
    if !is_outcome {
        return false;
    }
    let exchange = stats.exchanges.entry(event.exchange_id.clone()).or_default();
    if event.success {
        stats.successes += 1;
        exchange.successes += 1;
        stats.consecutive_failures = 0;
        decay(policy, fold, at, true);
        if let Some(latency) = event.latency_ms {
            let sample = latency as f64;
            let alpha = policy.latency_ewma_alpha;
            stats.latency_ewma_ms =
                Some(stats.latency_ewma_ms.map_or(sample, |ewma| alpha * sample + (1.0 - alpha) * ewma));
            fold.latency.record(latency);
            stats.latency_p50_ms = fold.latency.quantile(0.5);
            stats.latency_p99_ms = fold.latency.quantile(0.99);
        }
        if fold.on_probation {
            fold.probation_successes += 1;
            if fold.probation_successes >= policy.probation_successes {
                fold.on_probation = false;
                fold.probation_successes = 0;
            }
        }
        stats.success_rate = success_rate(fold);
        return false;
    }
    stats.failures += 1;
    exchange.failures += 1;
    let kind =
        event.error_kind.or_else(|| event.status_code.and_then(ErrorKind::from_status)).unwrap_or(ErrorKind::Other);
    *stats.error_counts.entry(kind).or_default() += 1;
    stats.last_error_kind = Some(kind);
    exchange.last_error_kind = Some(kind);
    match kind {
        ErrorKind::Http429 | ErrorKind::Http418 => {
            let millis = event
                .retry_after_seconds
                .map_or(policy.default_cooldown_ms, |secs| secs.saturating_mul(1000))
                .min(policy.max_cooldown_ms);
            bar(exchange, ExchangeState::Cooldown, at + delta(millis));
            outcome.exchange_barred = true;
            false
        }
        ErrorKind::Http451 => {
            bar(exchange, ExchangeState::Banned, at + delta(policy.ban_451_ms));
            outcome.exchange_barred = true;
            false
        }
        _ => {
            stats.consecutive_failures = stats.consecutive_failures.saturating_add(1);
            decay(policy, fold, at, false);
            stats.success_rate = success_rate(fold);
            let was_on_probation = fold.on_probation;
            fold.probation_successes = 0;
            stats.state != HealthState::Ejected
                && (stats.consecutive_failures >= policy.consecutive_failures
                    || was_on_probation
                    || (fold.decayed_outcomes >= policy.success_rate_min_volume
                        && stats.success_rate < policy.ejection_success_rate))
        }
    }
}

/// Puts an exchange in cool-down or ban until `until`; a ban outranks a cool-down and
/// neither is ever shortened.
fn bar(exchange: &mut ExchangeHealth, state: ExchangeState, until: DateTime<Utc>) {
    let keep_ban = exchange.state == ExchangeState::Banned && state == ExchangeState::Cooldown;
    if !keep_ban {
        exchange.state = state;
    }
    exchange.banned_until = Some(exchange.banned_until.map_or(until, |current| current.max(until)));
}

/// Ends ejections, cool-downs and bans whose time has come.
fn expire(stats: &mut HealthStats, fold: &mut FoldState, at: DateTime<Utc>) {
    if stats.state == HealthState::Ejected && stats.ejected_until.is_some_and(|until| until <= at) {
        stats.state = HealthState::Degraded;
        stats.ejected_until = None;
        fold.on_probation = true;
        fold.probation_successes = 0;
    }
    for exchange in stats.exchanges.values_mut() {
        if exchange.state != ExchangeState::Healthy && exchange.banned_until.is_some_and(|until| until <= at) {
            exchange.state = ExchangeState::Healthy;
            exchange.banned_until = None;
        }
    }
}

/// State of a proxy that is not ejected.
fn classify(policy: &HealthPolicy, proxy: &ProxyHealth) -> HealthState {
    let stats = &proxy.stats;
    let low_rate = proxy.fold.decayed_outcomes >= policy.success_rate_min_volume
        && stats.success_rate < policy.degraded_success_rate;
    if proxy.fold.on_probation || stats.consecutive_failures >= policy.degraded_consecutive_failures || low_rate {
        HealthState::Degraded
    } else {
        HealthState::Healthy
    }
}

fn is_ejected_at(stats: &HealthStats, at: DateTime<Utc>) -> bool {
    stats.state == HealthState::Ejected && stats.ejected_until.is_some_and(|until| until > at)
}

/// Decays the weights to `at` and adds one outcome.
fn decay(policy: &HealthPolicy, fold: &mut FoldState, at: DateTime<Utc>, success: bool) {
    let now_ms = at.timestamp_millis();
    let elapsed = now_ms.saturating_sub(fold.decayed_at_ms).max(0) as f64;
    let factor = 0.5_f64.powf(elapsed / policy.success_rate_half_life_ms as f64);
    fold.decayed_successes = fold.decayed_successes * factor + if success { 1.0 } else { 0.0 };
    fold.decayed_outcomes = fold.decayed_outcomes * factor + 1.0;
    fold.decayed_at_ms = fold.decayed_at_ms.max(now_ms);
}

fn success_rate(fold: &FoldState) -> f64 {
    if fold.decayed_outcomes > 0.0 { (fold.decayed_successes / fold.decayed_outcomes).clamp(0.0, 1.0) } else { 1.0 }
}

fn delta(millis: u64) -> TimeDelta {
    TimeDelta::milliseconds(i64::try_from(millis).unwrap_or(i64::MAX / 2))
}
