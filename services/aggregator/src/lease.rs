//! The leadership lease: of the aggregators sharing a health bucket, the one holding key
//! `leader.{health bucket}` (bucket `PROXY_AGGREGATOR`,
//! [`aggregator_leader_key`](proxybus_shared::subject::aggregator_leader_key)) folds;
//! the others are standbys.
//!
//! - A **standby** polls the key every [`Lease::poll_interval`]. When it is absent,
//!   deleted or purged it `create`s it (or updates the delete marker's revision); when
//!   its revision has not changed for `lease_ttl` — measured on the standby's own
//!   monotonic clock from when it last saw the revision change, never by comparing the
//!   clocks of two machines — it takes it with `update(key, value, seen_revision)`. Both
//!   are compare-and-set: of two standbys one wins.
//! - The **active** one renews it with `update(…, its revision)` every third of
//!   `lease_ttl` ([`Term`]). A wrong-revision answer means another took it: the term is
//!   lost at once. A renewal that does not succeed within [`Term::held`]'s horizon
//!   (five sixths of `lease_ttl` after the last renewal that succeeded was sent) also
//!   loses it, so an active aggregator cut off from NATS stops folding before a standby
//!   can take over.
//!
//! The lease only says who should fold; the checkpoint's compare-and-set
//! (`crate::store`, Fencing) is what keeps two aggregators that believe they lead for a
//! moment from both committing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The lease's value (JSON). No credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseValue {
    /// The holder's micro-service instance id (as `$SRV.INFO` shows it).
    pub(crate) instance: String,
    /// The holder's host name.
    pub(crate) host: String,
    /// The holder's process id.
    pub(crate) pid: u32,
    /// When the holder took the lease (RFC 3339).
    pub(crate) since: String,
    /// When the holder last renewed it (RFC 3339; informative only, never compared).
    pub(crate) renewed: String,
}

/// One aggregator's side of the lease.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    kv: kv::Store,
    key: String,
    instance: String,
    host: String,
    ttl: Duration,
}

/// Why a lease operation failed.
#[derive(Debug)]
enum Swap {
    /// Another wrote the key first.
    Lost,
    /// NATS did not answer (or answered an error): unknown.
    Failed(String),
}

impl Lease {
    /// The lease on `key` in `kv`, for the instance with micro-service id `instance`.
    pub(crate) fn new(kv: kv::Store, key: String, instance: String, ttl: Duration) -> Self {
        Self { kv, key, instance, host: host_name(), ttl }
    }

    /// How often a standby looks at the key: a tenth of the ttl, 50–500 ms.
    pub(crate) fn poll_interval(&self) -> Duration {
        (self.ttl / 10).clamp(Duration::from_millis(50), Duration::from_millis(500))
    }

    fn value(&self, since: DateTime<Utc>) -> Bytes {
        let value = LeaseValue {
            instance: self.instance.clone(),
            host: self.host.clone(),
            pid: std::process::id(),
            since: since.to_rfc3339_opts(SecondsFormat::Millis, true),
            renewed: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        };
        serde_json::to_vec(&value).unwrap_or_default().into()
    }

    /// Waits as a standby until this instance holds the lease; `None` when `cancel`
    /// fires first.
    pub(crate) async fn acquire(&self, cancel: &CancellationToken) -> Option<Term> {
        // The revision last seen and when (this process's clock) it was first seen.
        let mut seen: Option<(u64, Instant)> = None;
        loop {
            let since = Utc::now();
            let sent = Instant::now();
            let attempt = match self.kv.entry(&self.key).await {
                Err(err) => {
                    tracing::debug!(error = %err, "cannot read the leadership lease");
                    None
                }
                Ok(None) => Some(self.kv.create(&self.key, self.value(since)).await.map_err(|e| e.to_string())),
                Ok(Some(entry)) if entry.operation != Operation::Put => Some(self.swap(entry.revision, since).await),
                Ok(Some(entry)) => {
                    let holder = serde_json::from_slice::<LeaseValue>(&entry.value).ok();
                    match seen {
                        // Ours (left by this process after a step-down): take it back at once.
                        _ if holder.as_ref().is_some_and(|h| h.instance == self.instance) => {
                            Some(self.swap(entry.revision, since).await)
                        }
                        Some((revision, at)) if revision == entry.revision && at.elapsed() >= self.ttl => {
                            tracing::info!(holder = ?holder, "the leadership lease was not renewed in time; taking it");
                            Some(self.swap(entry.revision, since).await)
                        }
                        Some((revision, _)) if revision == entry.revision => None,
                        _ => {
                            seen = Some((entry.revision, Instant::now()));
                            None
                        }
                    }
                }
            };
            if let Some(Ok(revision)) = attempt {
                tracing::info!(instance = %self.instance, revision, "took the leadership lease: active");
                return Some(Term::start(self.clone(), revision, since, sent, cancel));
            }
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep(self.poll_interval()) => {}
            }
        }
    }

    /// `update(key, value, revision)`, as a `String` error for [`Lease::acquire`].
    async fn swap(&self, revision: u64, since: DateTime<Utc>) -> Result<u64, String> {
        self.kv.update(&self.key, self.value(since), revision).await.map_err(|err| err.to_string())
    }

    /// One renewal: compare-and-set on `revision`; a wrong revision whose value is the
    /// one sent (an earlier attempt landed, its answer lost) counts as renewed.
    async fn renew(&self, revision: u64, since: DateTime<Utc>) -> Result<u64, Swap> {
        let value = self.value(since);
        match self.kv.update(&self.key, value.clone(), revision).await {
            Ok(revision) => Ok(revision),
            Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => match self.kv.entry(&self.key).await {
                Ok(Some(entry)) if entry.operation == Operation::Put && entry.value == value => Ok(entry.revision),
                Ok(_) => Err(Swap::Lost),
                Err(err) => Err(Swap::Failed(err.to_string())),
            },
            Err(err) => Err(Swap::Failed(err.to_string())),
        }
    }
}

/// One term of leadership: a task renews the lease until it is lost, released or
/// shutdown comes.
#[derive(Debug)]
pub(crate) struct Term {
    /// When the lease was taken.
    pub(crate) since: DateTime<Utc>,
    /// Cancelled when the lease is lost (or could not be renewed in time).
    lost: CancellationToken,
    /// Cancelled when the lease is lost or shutdown comes: what the fold's retries stop on.
    stop: CancellationToken,
    /// Until when the lease is surely ours (this process's clock).
    valid_until: Arc<Mutex<Instant>>,
    /// The lease's revision as last written.
    revision: Arc<Mutex<u64>>,
    lease: Lease,
    renewer: tokio::task::JoinHandle<()>,
}

impl Term {
    fn start(lease: Lease, revision: u64, since: DateTime<Utc>, sent: Instant, cancel: &CancellationToken) -> Self {
        let lost = CancellationToken::new();
        let stop = cancel.child_token();
        let valid_until = Arc::new(Mutex::new(sent + horizon(lease.ttl)));
        let revision = Arc::new(Mutex::new(revision));
        let renewer = tokio::spawn(renew_until_lost(
            lease.clone(),
            since,
            revision.clone(),
            valid_until.clone(),
            lost.clone(),
            stop.clone(),
        ));
        Self { since, lost, stop, valid_until, revision, lease, renewer }
    }

    /// Whether the lease is still surely held: not lost, and renewed recently enough
    /// that no standby can have taken it.
    pub(crate) fn held(&self) -> bool {
        self.watch().held()
    }

    /// A handle that tells whether this term still holds the lease, for a task that
    /// stores a commit while the fold goes on (`crate::live`).
    pub(crate) fn watch(&self) -> TermWatch {
        TermWatch { lost: self.lost.clone(), stop: self.stop.clone(), valid_until: self.valid_until.clone() }
    }

    /// Completes when the lease is lost.
    pub(crate) async fn lost(&self) {
        self.lost.cancelled().await;
    }

    /// Cancelled when the lease is lost or shutdown comes.
    pub(crate) fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// Ends the term: stops renewing and, when `release`, deletes the lease (if it is
    /// still this term's revision) so that a standby takes over at its next look rather
    /// than after `lease_ttl`.
    pub(crate) async fn end(self, release: bool) {
        self.renewer.abort();
        let _ = self.renewer.await;
        if release && !self.lost.is_cancelled() {
            let revision = *self.revision.lock().unwrap_or_else(|e| e.into_inner());
            let deleted = tokio::time::timeout(
                self.lease.poll_interval().max(Duration::from_millis(500)),
                self.lease.kv.delete_expect_revision(&self.lease.key, Some(revision)),
            )
            .await;
            match deleted {
                Ok(Ok(())) => tracing::info!("leadership lease released"),
                Ok(Err(err)) => tracing::debug!(error = %err, "could not release the leadership lease"),
                Err(_) => tracing::debug!("releasing the leadership lease timed out"),
            }
        }
    }
}

/// What a commit task needs of its [`Term`]: whether the lease is still held, and the
/// token its retries stop on (lease lost or shutdown).
#[derive(Debug, Clone)]
pub(crate) struct TermWatch {
    lost: CancellationToken,
    stop: CancellationToken,
    valid_until: Arc<Mutex<Instant>>,
}

impl TermWatch {
    /// As [`Term::held`].
    pub(crate) fn held(&self) -> bool {
        !self.lost.is_cancelled() && Instant::now() < *self.valid_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// As [`Term::stop_token`].
    pub(crate) fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }
}

/// How long after sending a renewal that succeeded the lease is surely held: five sixths
/// of the ttl, so the holder stops before a standby (which waits the whole ttl from when
/// it saw that renewal, later than it was sent) can take over.
fn horizon(ttl: Duration) -> Duration {
    ttl * 5 / 6
}

/// The renewer of a [`Term`]: every third of the ttl, until lost or `stop`.
async fn renew_until_lost(
    lease: Lease,
    since: DateTime<Utc>,
    revision: Arc<Mutex<u64>>,
    valid_until: Arc<Mutex<Instant>>,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let every = lease.ttl / 3;
    let lose = |why: &str| {
        tracing::warn!(reason = why, "leadership lease lost: standby");
        lost.cancel();
        stop.cancel();
    };
    loop {
        let until = *valid_until.lock().unwrap_or_else(|e| e.into_inner());
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
            () = tokio::time::sleep_until(until) => {
                lose("not renewed within the lease's time");
                return;
            }
        }
        let sent = Instant::now();
        let current = *revision.lock().unwrap_or_else(|e| e.into_inner());
        let until = *valid_until.lock().unwrap_or_else(|e| e.into_inner());
        let attempt = tokio::select! {
            () = stop.cancelled() => return,
            attempt = tokio::time::timeout(until.saturating_duration_since(sent), lease.renew(current, since)) => attempt,
        };
        match attempt {
            Ok(Ok(new)) => {
                *revision.lock().unwrap_or_else(|e| e.into_inner()) = new;
                *valid_until.lock().unwrap_or_else(|e| e.into_inner()) = sent + horizon(lease.ttl);
            }
            Ok(Err(Swap::Lost)) => {
                lose("another aggregator holds the lease");
                return;
            }
            Ok(Err(Swap::Failed(err))) => tracing::warn!(error = %err, "cannot renew the leadership lease; retrying"),
            Err(_) => tracing::warn!("renewing the leadership lease timed out; retrying"),
        }
        if Instant::now() >= *valid_until.lock().unwrap_or_else(|e| e.into_inner()) {
            lose("not renewed within the lease's time");
            return;
        }
    }
}

/// This machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`), or `unknown`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_stops_before_a_standby_may_take_over() {
        let ttl = Duration::from_secs(3);
        assert!(horizon(ttl) < ttl);
        assert!(horizon(ttl) > ttl / 3 * 2, "one renewal may fail without a step-down: {:?}", horizon(ttl));
    }
}
