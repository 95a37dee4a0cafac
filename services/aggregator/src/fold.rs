//! The fold: one feedback event at a time into the [`HealthStats`] of its proxy.
//!
//! The fold is a pure function of the events, their stream sequences and their
//! stream timestamps (the time JetStream stored them, not the feed's clock), so
//! the same events in the same order give the same stats, bit for bit, whether
//! folded live, after a crash, or by `replay`. It never reads a clock.
//!
//! # The health model
//! The rules are `proxybus_shared::health`'s (see `docs/health.md`); this module
//! applies them to a stream of events:
//! - Every event counts in `total`. Outcomes (`connected`, `failed`, `request`, and
//!   a `disconnected` that reports failure) also count in `successes`/`failures`.
//! - **Repeats**: an `event_id` already folded within the horizon is dropped
//!   ([`crate::event_ids`]), whatever its `Nats-Msg-Id` and however late it comes.
//! - A failure is about one party (`health::attribute`). A **proxy fault** counts
//!   against the proxy: `consecutive_failures` reaching the threshold, or the
//!   decayed success rate dropping below the ejection rate over the minimum
//!   volume, ejects it for `base_ejection_time × ejections` (capped), unless its
//!   region already has `max_ejection_percent` of its inventory ejected — and at
//!   least one proxy of a region can always be ejected (Envoy). A region's size is
//!   the larger of its inventory in `PROXY_INVENTORY` and the proxies heard of.
//! - An **exchange's verdict** (403, 418, 429, 451, refused handshake, close
//!   1008/1013) bars the proxy for that exchange only (`HealthPolicy::judge`) and
//!   leaves the proxy's own health alone; the **exchange's own trouble** (5xx,
//!   close 1001/1011/1012/1014) and inconclusive failures cost nothing.
//! - An ejection ends by time, or earlier when `probe_readmit_successes` probes
//!   (events with `probe: true`, from a pool service's active checks) pass in a row.
//!   The proxy is then `degraded` and on probation: one proxy fault ejects it again;
//!   `probation_successes` successes in a row (probes count) end the probation and,
//!   if nothing else is wrong, make it `healthy` again.
//! - An **operator event** (`proxybus ban|unban|drain|undrain|disable|enable`, subject
//!   `proxy.v1.feedback.operator.{action}.{proxy_id}`) changes the proxy's
//!   `operator_controls` (`health::apply_operator`) and nothing else; it is not an
//!   outcome and does not count in `total`.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use proxybus_shared::health::{self, Attribution, HealthPolicy, delta};
use proxybus_shared::{ExchangeHealth, HealthState, HealthStats, OperatorEvent, ProxyFeedback, ProxyId, redact_url};
use serde::{Deserialize, Serialize};

use crate::event_ids::EventIds;
use crate::sketch::LatencySketch;

/// Region key of proxies whose feedback names no region (the token of their health subject).
pub(crate) use proxybus_shared::subject::NO_REGION;

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
    /// Passing probes in a row while ejected (`HealthPolicy::probe_readmit_successes`).
    #[serde(default)]
    pub probe_passes: u32,
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
            probe_passes: 0,
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
    /// out is shown as over (`health::as_of`).
    pub fn view_at(&self, now: DateTime<Utc>) -> HealthStats {
        health::as_of(&self.stats, now)
    }

    /// Ends, in the stored record, an ejection or bar whose time has come by `now`
    /// (an ended ejection starts the probation); true when something ended.
    pub fn expire_at(&mut self, now: DateTime<Utc>) -> bool {
        expire(&mut self.stats, &mut self.fold, now)
    }
}

/// What folding one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FoldOutcome {
    /// The event's sequence was already folded into its proxy: nothing changed.
    pub skipped: bool,
    /// The event's `event_id` was already folded within the horizon: nothing changed.
    pub duplicate: bool,
    /// The proxy was ejected by this event.
    pub ejected: bool,
    /// The proxy should have been ejected but its region was at `max_ejection_percent`.
    pub ejection_suppressed: bool,
    /// The proxy was put in cool-down or banned for the event's exchange.
    pub exchange_barred: bool,
    /// Passing probes ended the proxy's ejection before its time (it is on probation).
    pub readmitted: bool,
}

/// Per-proxy health of every proxy feedback was folded for.
#[derive(Debug, Clone)]
pub struct FeedbackFolder {
    policy: HealthPolicy,
    proxies: BTreeMap<ProxyId, ProxyHealth>,
    regions: BTreeMap<String, BTreeSet<ProxyId>>,
    /// Proxies per region in the pools' inventories (`PROXY_INVENTORY`).
    inventory_sizes: BTreeMap<String, usize>,
    event_ids: EventIds,
}

/// How long event ids are kept by default: a day of stream time.
pub(crate) const DEFAULT_EVENT_ID_HORIZON: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Most event ids kept by default (about 64 bytes of memory each).
pub(crate) const DEFAULT_EVENT_IDS_MAX: usize = 2_000_000;

impl FeedbackFolder {
    /// An empty folder, keeping event ids for a day of stream time (at most 2 000 000).
    pub fn new(policy: HealthPolicy) -> Self {
        Self::with_event_ids(policy, EventIds::new(DEFAULT_EVENT_ID_HORIZON, DEFAULT_EVENT_IDS_MAX))
    }

    /// An empty folder that drops repeats by `event_ids`.
    pub(crate) fn with_event_ids(policy: HealthPolicy, event_ids: EventIds) -> Self {
        Self { policy, proxies: BTreeMap::new(), regions: BTreeMap::new(), inventory_sizes: BTreeMap::new(), event_ids }
    }

    /// The event ids folded within the horizon.
    pub(crate) fn event_ids(&mut self) -> &mut EventIds {
        &mut self.event_ids
    }

    /// Sets how many proxies each region's inventory holds (from `PROXY_INVENTORY`),
    /// the base of the ejection cap.
    pub fn set_inventory_sizes(&mut self, sizes: BTreeMap<String, usize>) {
        self.inventory_sizes = sizes;
    }

    /// Proxies of `region` the ejection cap counts: its inventory, or the proxies
    /// heard of when more.
    pub fn region_size(&self, region: &str) -> usize {
        let heard = self.regions.get(region).map_or(0, BTreeSet::len);
        heard.max(self.inventory_sizes.get(region).copied().unwrap_or(0)).max(1)
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
        let id = record.stats.proxy_id;
        let from = self.proxies.get(&id).map(ProxyHealth::region_key);
        reindex(&mut self.regions, id, from.as_deref(), record.region_key());
        self.proxies.insert(id, record);
    }

    /// The policy in force.
    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }

    /// Ends, in the record of `id`, an ejection or bar whose time has come by `now`,
    /// and stamps it `updated_at = now`; true when something ended.
    pub fn expire_at(&mut self, id: &ProxyId, now: DateTime<Utc>) -> bool {
        let Some(proxy) = self.proxies.get_mut(id) else { return false };
        let ended = proxy.expire_at(now);
        if ended {
            proxy.stats.updated_at = proxy.stats.updated_at.max(now);
            if proxy.stats.state != HealthState::Ejected {
                proxy.stats.state = classify(&self.policy, proxy);
            }
        }
        ended
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
    ///
    /// The proxy's record is found once (one `BTreeMap` search per event); the
    /// region's other members are read only when the event asks for an ejection.
    pub fn fold(&mut self, event: &ProxyFeedback, seq: u64, at: DateTime<Utc>) -> FoldOutcome {
        let id = event.proxy_id;
        let entry = self.proxies.entry(id);
        if let Entry::Occupied(known) = &entry
            && seq <= known.get().stats.last_seq
        {
            return FoldOutcome { skipped: true, ..FoldOutcome::default() };
        }
        if !self.event_ids.first_time(event.event_id, seq, at.timestamp_millis()) {
            return FoldOutcome { duplicate: true, ..FoldOutcome::default() };
        }
        let proxy = match entry {
            Entry::Occupied(known) => {
                let proxy = known.into_mut();
                refresh_identity(&mut self.regions, proxy, event);
                proxy
            }
            Entry::Vacant(new) => {
                let stats = HealthStats::new(id, redact_url(&event.proxy_url), event.region.clone(), at);
                let record = ProxyHealth {
                    stats,
                    fold: FoldState { decayed_at_ms: at.timestamp_millis(), ..FoldState::default() },
                };
                reindex(&mut self.regions, id, None, record.region_key());
                new.insert(record)
            }
        };
        let mut outcome = FoldOutcome::default();
        if !apply(&self.policy, proxy, event, seq, at, &mut outcome) {
            if proxy.stats.state != HealthState::Ejected {
                proxy.stats.state = classify(&self.policy, proxy);
            }
            return outcome;
        }
        // The event asks for an ejection: the region's cap decides (`max_ejection_percent`).
        let region = proxy.region_key();
        let members = self.region_size(&region);
        let ejected_now = self.regions.get(&region).map_or(0, |members| {
            members
                .iter()
                .filter(|m| **m != id)
                .filter(|m| self.proxies.get(*m).is_some_and(|p| is_ejected_at(&p.stats, at)))
                .count()
        });
        let policy = &self.policy;
        let proxy = self.proxies.get_mut(&id).expect("placed above");
        if policy.may_eject(members, ejected_now) {
            let stats = &mut proxy.stats;
            stats.ejections = stats.ejections.saturating_add(1);
            stats.state = HealthState::Ejected;
            stats.ejected_until = Some(at + delta(policy.ejection_time(stats.ejections)));
            proxy.fold.on_probation = false;
            proxy.fold.probation_successes = 0;
            proxy.fold.probe_passes = 0;
            outcome.ejected = true;
        } else {
            outcome.ejection_suppressed = true;
            if proxy.stats.state != HealthState::Ejected {
                proxy.stats.state = classify(policy, proxy);
            }
        }
        outcome
    }

    /// Folds one message of the stream, feedback or operator event.
    pub(crate) fn fold_event(
        &mut self,
        event: &crate::intake::StreamEvent,
        seq: u64,
        at: DateTime<Utc>,
    ) -> FoldOutcome {
        match event {
            crate::intake::StreamEvent::Feedback(event) => self.fold(event, seq, at),
            crate::intake::StreamEvent::Operator(event) => self.fold_operator(event, seq, at),
        }
    }

    /// Folds an operator's `event`, stored at stream sequence `seq` at stream time `at`
    /// (`health::apply_operator`). A proxy no feedback was heard of yet gets a record
    /// (without URL or region until its first feedback).
    pub fn fold_operator(&mut self, event: &OperatorEvent, seq: u64, at: DateTime<Utc>) -> FoldOutcome {
        let id = &event.proxy_id;
        if self.proxies.get(id).is_some_and(|p| seq <= p.stats.last_seq) {
            return FoldOutcome { skipped: true, ..FoldOutcome::default() };
        }
        if !self.event_ids.first_time(event.event_id, seq, at.timestamp_millis()) {
            return FoldOutcome { duplicate: true, ..FoldOutcome::default() };
        }
        if !self.proxies.contains_key(id) {
            let stats = HealthStats::new(*id, String::new(), None, at);
            self.insert(ProxyHealth {
                stats,
                fold: FoldState { decayed_at_ms: at.timestamp_millis(), ..FoldState::default() },
            });
        }
        let policy = self.policy.clone();
        let proxy = self.proxies.get_mut(id).expect("placed above");
        expire(&mut proxy.stats, &mut proxy.fold, at);
        health::apply_operator(&mut proxy.stats, event, seq, at);
        proxy.stats.last_seq = seq;
        proxy.stats.updated_at = at;
        if proxy.stats.state != HealthState::Ejected {
            proxy.stats.state = classify(&policy, proxy);
        }
        FoldOutcome::default()
    }
}

/// Keeps a known proxy's URL (redacted) and region as `event` names them, and its
/// entry in the region index (`regions`) with its region.
fn refresh_identity(regions: &mut BTreeMap<String, BTreeSet<ProxyId>>, proxy: &mut ProxyHealth, event: &ProxyFeedback) {
    // The stored URL is redacted and redaction is idempotent (`redact_url`'s property
    // test and fuzz target): an event repeating it leaves it as it is, without
    // redacting it again (nearly every event of a proxy does).
    if event.proxy_url != proxy.stats.proxy_url {
        proxy.stats.proxy_url = redact_url(&event.proxy_url);
    }
    if event.region.is_some() && event.region != proxy.stats.region {
        let from = proxy.region_key();
        proxy.stats.region = event.region.clone();
        reindex(regions, proxy.stats.proxy_id, Some(&from), proxy.region_key());
    }
}

/// Moves `id` in the region index from region key `from` (when it was indexed) to `to`.
fn reindex(regions: &mut BTreeMap<String, BTreeSet<ProxyId>>, id: ProxyId, from: Option<&str>, to: String) {
    if let Some(members) = from.and_then(|key| regions.get_mut(key)) {
        members.remove(&id);
    }
    regions.entry(to).or_default().insert(id);
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
    let attribution = health::attribute(event);
    if attribution == Attribution::NotAnOutcome {
        return false;
    }
    // Looked up before inserting, so that the id is cloned only for an exchange new to the proxy.
    if !stats.exchanges.contains_key(&event.exchange_id) {
        stats.exchanges.insert(event.exchange_id.clone(), ExchangeHealth::default());
    }
    let exchange = stats.exchanges.get_mut(&event.exchange_id).expect("inserted above");
    if attribution == Attribution::Success {
        stats.successes += 1;
        exchange.successes += 1;
        health::exchange_success(exchange);
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
        if event.probe && stats.state == HealthState::Ejected {
            fold.probe_passes = fold.probe_passes.saturating_add(1);
            if fold.probe_passes >= policy.probe_readmit_successes {
                // Passing probes end the ejection early (Envoy's
                // `successful_active_health_check_uneject_host`); the proxy serves on probation.
                stats.state = HealthState::Degraded;
                stats.ejected_until = None;
                fold.on_probation = true;
                fold.probation_successes = 0;
                fold.probe_passes = 0;
                outcome.readmitted = true;
            }
        } else if fold.on_probation {
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
    let kind = health::error_kind_of(event);
    *stats.error_counts.entry(kind).or_default() += 1;
    stats.last_error_kind = Some(kind);
    exchange.last_error_kind = Some(kind);
    match attribution {
        Attribution::ExchangeVerdict(verdict) => {
            if let Some(bar) = policy.judge(exchange, verdict, event.retry_after_seconds) {
                health::apply_bar(exchange, bar, at);
                outcome.exchange_barred = true;
            }
            false
        }
        Attribution::ProxyFault => {
            fold.probe_passes = 0;
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
        Attribution::ExchangeTrouble | Attribution::Inconclusive | Attribution::Success | Attribution::NotAnOutcome => {
            false
        }
    }
}

/// Ends ejections, cool-downs and bans whose time has come (`health::expire`); an
/// ended ejection starts the probation. True when something ended.
fn expire(stats: &mut HealthStats, fold: &mut FoldState, at: DateTime<Utc>) -> bool {
    let expired = health::expire(stats, at);
    if expired.ejection {
        fold.on_probation = true;
        fold.probation_successes = 0;
    }
    expired.any()
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
    health::is_ejected(stats, at)
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
