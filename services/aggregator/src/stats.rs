//! Counters of the aggregator, shown by `$SRV.STATS` (NATS micro-services) and as
//! Prometheus metrics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Whether an aggregator folds (holds the leadership lease) or waits for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Waits for the lease; folds nothing (the default, until the lease is won).
    #[default]
    Standby,
    /// Holds the lease and folds.
    Active,
}

/// Live counters; share with `Arc`.
#[derive(Debug, Default)]
pub struct AggregatorStats {
    events_folded: AtomicU64,
    duplicates_skipped: AtomicU64,
    events_deduplicated: AtomicU64,
    dead_lettered: AtomicU64,
    ejections: AtomicU64,
    ejections_suppressed: AtomicU64,
    commits: AtomicU64,
    commit_failures: AtomicU64,
    consumer_resets: AtomicU64,
    events_lost: AtomicU64,
    last_seq: AtomicU64,
    fold_lag_messages: AtomicU64,
    fold_lag_ms: AtomicI64,
    pushes: AtomicU64,
    push_failures: AtomicU64,
    leader_changes: AtomicU64,
    /// `Some(since)` while active.
    leader_since: Mutex<Option<DateTime<Utc>>>,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Events folded into health stats.
    pub events_folded: u64,
    /// Redelivered messages skipped because their sequence was already folded.
    pub duplicates_skipped: u64,
    /// Events dropped because their `event_id` was already folded within the horizon
    /// (republished with another or no `Nats-Msg-Id`, or after the duplicate window).
    pub events_deduplicated: u64,
    /// Messages republished on `proxy.v1.feedback_dead.>`.
    pub dead_lettered: u64,
    /// Proxies ejected.
    pub ejections: u64,
    /// Ejections not done because the region was at `max_ejection_percent`.
    pub ejections_suppressed: u64,
    /// Batches committed to KV.
    pub commits: u64,
    /// Commit attempts that failed (and were retried).
    pub commit_failures: u64,
    /// Times the consumer was re-created from the checkpoint (gap, error, server restart).
    pub consumer_resets: u64,
    /// Events the stream removed (its `max_bytes` / `max_age` limits, `discard: old`) after
    /// the checkpoint and before they were folded: stream sequences missing between the
    /// position and the next delivered message. Zero while the aggregator keeps up; see
    /// docs/reliability.md ("Faults") for sizing the stream so it stays zero.
    pub events_lost: u64,
    /// Stream sequence folded up to.
    pub last_seq: u64,
    /// Messages in the stream not yet delivered to the aggregator.
    pub fold_lag_messages: u64,
    /// Age of the last folded event when it was folded, in milliseconds.
    pub fold_lag_ms: i64,
    /// Health batches POSTed to proxy services.
    pub pushes: u64,
    /// Health batches that could not be POSTed (kept and retried).
    pub push_failures: u64,
    /// `active` (holds the leadership lease and folds) or `standby`.
    pub role: Role,
    /// When this instance took the lease it holds; `None` while standby.
    pub leader_since: Option<DateTime<Utc>>,
    /// Times this instance took the lease (a fresh process that becomes active counts 1).
    pub leader_changes: u64,
}

macro_rules! counter {
    ($name:ident, $field:ident, $metric:literal) => {
        #[doc = concat!("Adds `n` to `", stringify!($field), "`.")]
        pub fn $name(&self, n: u64) {
            if n > 0 {
                self.$field.fetch_add(n, Ordering::Relaxed);
                metrics::counter!($metric).increment(n);
            }
        }
    };
}

impl AggregatorStats {
    counter!(add_folded, events_folded, "proxybus_aggregator_events_folded_total");
    counter!(add_duplicates, duplicates_skipped, "proxybus_aggregator_duplicates_skipped_total");
    counter!(add_deduplicated, events_deduplicated, "proxybus_aggregator_events_deduplicated_total");
    counter!(add_dead_lettered, dead_lettered, "proxybus_aggregator_dead_lettered_total");
    counter!(add_ejections, ejections, "proxybus_aggregator_ejections_total");
    counter!(add_ejections_suppressed, ejections_suppressed, "proxybus_aggregator_ejections_suppressed_total");
    counter!(add_commits, commits, "proxybus_aggregator_commits_total");
    counter!(add_commit_failures, commit_failures, "proxybus_aggregator_commit_failures_total");
    counter!(add_consumer_resets, consumer_resets, "proxybus_aggregator_consumer_resets_total");
    counter!(add_lost, events_lost, "proxybus_aggregator_events_lost_total");
    counter!(add_pushes, pushes, "proxybus_aggregator_push_batches_total");
    counter!(add_push_failures, push_failures, "proxybus_aggregator_push_failures_total");

    /// Records that this instance took the lease at `since` (role `active`).
    pub fn set_active(&self, since: DateTime<Utc>) {
        *self.leader_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(since);
        self.leader_changes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("proxybus_aggregator_leader_changes_total").increment(1);
        metrics::gauge!("proxybus_aggregator_active").set(1.0);
    }

    /// Records that this instance does not hold the lease (role `standby`).
    pub fn set_standby(&self) {
        *self.leader_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
        metrics::gauge!("proxybus_aggregator_active").set(0.0);
    }

    /// Records the sequence folded up to.
    pub fn set_last_seq(&self, seq: u64) {
        self.last_seq.store(seq, Ordering::Relaxed);
        metrics::gauge!("proxybus_aggregator_last_seq").set(seq as f64);
    }

    /// Records the fold lag.
    pub fn set_lag(&self, messages: u64, millis: i64) {
        self.fold_lag_messages.store(messages, Ordering::Relaxed);
        self.fold_lag_ms.store(millis, Ordering::Relaxed);
        metrics::gauge!("proxybus_aggregator_fold_lag_messages").set(messages as f64);
        metrics::gauge!("proxybus_aggregator_fold_lag_seconds").set(millis as f64 / 1000.0);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let leader_since = *self.leader_since.lock().unwrap_or_else(|e| e.into_inner());
        StatsSnapshot {
            events_folded: get(&self.events_folded),
            duplicates_skipped: get(&self.duplicates_skipped),
            events_deduplicated: get(&self.events_deduplicated),
            dead_lettered: get(&self.dead_lettered),
            ejections: get(&self.ejections),
            ejections_suppressed: get(&self.ejections_suppressed),
            commits: get(&self.commits),
            commit_failures: get(&self.commit_failures),
            consumer_resets: get(&self.consumer_resets),
            events_lost: get(&self.events_lost),
            last_seq: get(&self.last_seq),
            fold_lag_messages: get(&self.fold_lag_messages),
            fold_lag_ms: self.fold_lag_ms.load(Ordering::Relaxed),
            pushes: get(&self.pushes),
            push_failures: get(&self.push_failures),
            role: if leader_since.is_some() { Role::Active } else { Role::Standby },
            leader_since,
            leader_changes: get(&self.leader_changes),
        }
    }
}
