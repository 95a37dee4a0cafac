//! The live aggregator: pulls feedback in batches from the durable consumer,
//! folds it, commits the result (see [`crate::store`]), acks, and pushes changed
//! health out.
//!
//! # Exactly once
//! The stored checkpoint, not the consumer, says how far the stream is folded. On
//! start, and whenever delivery is in doubt (a gap in the consumer sequence, a
//! fetch error, a NATS server restart), the durable consumer is re-created to
//! start right after the checkpoint, so events are always folded in stream order
//! and none is skipped. A redelivered message at or below the checkpoint is acked
//! and skipped. Messages are acked only after the commit that includes them.
//!
//! # Commits
//! Folded events wait in a **window** for their commit. A caught-up aggregator (a
//! fetch that returned less than a full batch, or whose last message had nothing
//! pending after it) commits after every fetch, so a change is stored and published
//! within one fetch; one that is behind commits
//! every `commit_interval_ms`, `commit_max_events` messages or `commit_max_proxies`
//! proxies changed (which bounds what a commit holds in memory), so a proxy touched
//! many times in the window is encoded and written once, not once per batch. The
//! consumer acks with `AckPolicy::All`: one ack, after the commit, for every
//! message of the window.
//!
//! A commit is **pipelined** with the fold of the next window: the window's changed
//! records are encoded when it closes (the bytes are its state, whatever the fold
//! does next), and a task stores them — event ids, checkpoint, records —, then acks
//! and publishes, while the next window is folded. At most one commit is in flight;
//! the next waits for it, so commits land and are acked in stream order. The consumer
//! lets two windows be unacked, and the batches fetched ahead (`max_ack_pending`). A
//! commit that fails ends the session as before (its window and the one being folded
//! are never acked); when the session ends the commit in flight is awaited, or stopped
//! when the lease is lost, so nothing of a term is written after it.
//!
//! # Fetching ahead
//! Fetching and decoding are pipelined with the fold too: for each session (one
//! consumer) a task pulls batches and hands each on at once, so its next pull request
//! is out while the batch is decoded; a second task decodes them and queues them, at
//! most [`FETCHED_AHEAD`], for the fold loop, which folds them in delivery order
//! exactly as if it had fetched them itself; a short batch still means "caught up". A fetch
//! error is queued after the batches before it; the fold commits what it has folded
//! and resets, as before. Batches still queued when a session ends are never acked,
//! whatever the end:
//! - acks happen only in a commit, for its window's last message (`AckPolicy::All`:
//!   every message up to it), and a queued batch was delivered after every message
//!   folded, so no commit's ack reaches it;
//! - **Reset** (fetch error, delivery gap, a message without metadata, a failed dead
//!   letter) and **Cancelled** (shutdown) store and ack what is folded, if they can,
//!   then the queue is dropped; **StepDown** (lease lost, commit fenced) acks nothing
//!   more;
//! - the next session, or the next leader, deletes the consumer and creates it again
//!   after the checkpoint, so the dropped batches are delivered again and folded then.
//!
//! The fetch task stops when the term's stop token fires (lease lost or shutdown),
//! before it sends another pull request, and the session stops both tasks and waits
//! for them before it returns, so a consumer is never re-created while a fetch of the previous one runs
//! and no fetch outlives the lease.
//!
//! # Who folds
//! Only the aggregator holding the leadership lease ([`crate::lease`]).
//! [`Live::fold_until_cancelled`] waits as a standby until it wins the lease, then
//! loads its state from the checkpoint ([`HealthStore::load`], which repairs an
//! interrupted commit, and the event ids up to it) and only then (re-)creates the
//! durable consumer `proxybus-aggregator` ([`AGGREGATOR_CONSUMER`]) after the
//! checkpoint. While folding it checks the lease before each (re-)creation, while
//! waiting for a batch and before every commit; the checkpoint itself is written
//! with compare-and-set (`crate::store`, Fencing). When the lease is lost or a commit
//! is fenced it stops at once — no commit, no ack of the window —, drops its state
//! and is a standby again; the un-acked messages are folded by the next leader.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, Message};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use proxybus_shared::ProxyId;
use proxybus_shared::subject::{AGGREGATOR_CONSUMER, FEEDBACK_STREAM};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::AggregatorError;
use crate::config::AggregatorSettings;
use crate::event_ids::{EventIdLog, SeenId};
use crate::fold::FeedbackFolder;
use crate::intake::{self, offset_to_chrono};
use crate::inventory::RegionSizes;
use crate::lease::{Lease, Term, TermWatch};
use crate::push::HealthPublisher;
use crate::stats::AggregatorStats;
use crate::store::{EncodedCommit, HealthStore, LoadedState, StoreError};

/// Changed stats published (cloned) at a time after a commit.
const PUBLISH_CHUNK: usize = 512;

/// Retries `attempt` with backoff until it succeeds (`Some`) or `cancel` fires (`None`).
pub(crate) async fn retry_until_cancelled<T, F, Fut>(
    cancel: &CancellationToken,
    what: &str,
    mut attempt: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut pause = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(err) => tracing::warn!(error = %err, "{what} failed; retrying"),
        }
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Why a session of the consumer ended.
pub(crate) enum SessionEnd {
    /// Shutdown.
    Cancelled,
    /// The consumer must be re-created from the checkpoint.
    Reset(String),
    /// The lease was lost or a commit fenced: stop folding, ack nothing, drop the state.
    StepDown(String),
}

/// How a term of leadership ended.
enum TermEnd {
    /// Shutdown.
    Cancelled,
    /// Stepped down; `release` when the lease may still be this instance's.
    SteppedDown { release: bool },
}

/// Messages folded since the last commit.
#[derive(Default)]
pub(crate) struct Window {
    /// Proxies changed by them.
    changed: BTreeSet<ProxyId>,
    /// The last message delivered; acking it acks the window (`AckPolicy::All`).
    last: Option<Message>,
    /// Messages delivered (folded, skipped or dead-lettered).
    messages: usize,
    /// When the first of them was folded.
    opened: Option<Instant>,
    folded: u64,
    skipped: u64,
    deduplicated: u64,
    dead: u64,
    ejected: u64,
    suppressed: u64,
    /// Stream sequences after the position that were gone when delivery reached them.
    lost: u64,
}

impl Window {
    fn is_empty(&self) -> bool {
        self.messages == 0 && self.changed.is_empty()
    }
}

/// The live fold: what it folds from, into and with, and what is not yet committed.
pub(crate) struct Live {
    pub(crate) settings: AggregatorSettings,
    pub(crate) jetstream: jetstream::Context,
    pub(crate) store: HealthStore,
    pub(crate) folder: FeedbackFolder,
    /// Stream sequence folded up to (committed, or about to be with the pending batch).
    pub(crate) position: u64,
    pub(crate) last_published: Option<DateTime<Utc>>,
    pub(crate) stats: Arc<AggregatorStats>,
    pub(crate) publisher: Arc<HealthPublisher>,
    pub(crate) client: async_nats::Client,
    pub(crate) cancel: CancellationToken,
    /// Where the event ids of each commit are persisted.
    pub(crate) id_log: EventIdLog,
    /// Region sizes from `PROXY_INVENTORY`.
    pub(crate) sizes: tokio::sync::watch::Receiver<RegionSizes>,
    /// What is folded but not yet committed.
    pub(crate) window: Window,
    /// The previous window's commit, stored (then acked and published) by a task
    /// while this window is folded; at most one at a time.
    pub(crate) in_flight: Option<JoinHandle<Result<(), SessionEnd>>>,
    /// The leadership lease; only its holder folds.
    pub(crate) lease: Lease,
}

impl Live {
    /// The live loop: waits as a standby until it holds the lease, loads the state
    /// from the checkpoint, (re-)creates the durable consumer after it and folds its
    /// batches, committing before every ack, until the lease is lost (then standby
    /// again) or shutdown.
    pub(crate) async fn fold_until_cancelled(&mut self) -> Result<(), AggregatorError> {
        loop {
            self.stats.set_standby();
            let Some(term) = self.lease.acquire(&self.cancel).await else {
                return Ok(());
            };
            self.stats.set_active(term.since);
            let end = self.lead(&term).await;
            self.drop_state();
            match end {
                Ok(TermEnd::SteppedDown { release }) => term.end(release).await,
                Ok(TermEnd::Cancelled) => {
                    term.end(true).await;
                    self.stats.set_standby();
                    return Ok(());
                }
                Err(err) => {
                    term.end(true).await;
                    self.stats.set_standby();
                    return Err(err);
                }
            }
        }
    }

    /// One term of leadership: state from the checkpoint, then consumer sessions.
    async fn lead(&mut self, term: &Term) -> Result<TermEnd, AggregatorError> {
        let stop = term.stop_token().clone();
        let Some(loaded) = retry_until_cancelled(&stop, "loading the checkpoint", || async {
            match self.store.load().await {
                Ok(loaded) => Ok(Ok(loaded)),
                Err(err @ StoreError::Read { .. }) => Err(err.to_string()),
                Err(err) => Ok(Err(err)),
            }
        })
        .await
        else {
            return Ok(self.stopped(term));
        };
        self.restore(loaded?).await?;
        let mut first = true;
        loop {
            if !first {
                self.stats.add_consumer_resets(1);
            }
            first = false;
            if !term.held() {
                tracing::warn!("leadership lease lost before the consumer was created");
                return Ok(TermEnd::SteppedDown { release: false });
            }
            let Some(consumer) = retry_until_cancelled(&stop, "creating the consumer", || {
                recreate_consumer(&self.jetstream, self.position, &self.settings)
            })
            .await
            else {
                return Ok(self.stopped(term));
            };
            let end = self.session(consumer, term).await;
            // A commit still in flight belongs to this session: nothing of it may land
            // after the session (a lost lease) or be left unwaited for.
            self.abandon_commit().await;
            match end? {
                SessionEnd::Cancelled => return Ok(TermEnd::Cancelled),
                SessionEnd::StepDown(reason) => {
                    tracing::warn!(reason = %reason, position = self.position, "stepping down: standby");
                    return Ok(TermEnd::SteppedDown { release: term.held() });
                }
                SessionEnd::Reset(reason) => {
                    tracing::info!(reason = %reason, position = self.position, "re-creating the consumer from the checkpoint");
                    tokio::select! {
                        () = stop.cancelled() => return Ok(self.stopped(term)),
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            }
        }
    }

    /// How a term ends when its stop token fired: shutdown, or the lease lost.
    fn stopped(&self, term: &Term) -> TermEnd {
        if self.cancel.is_cancelled() { TermEnd::Cancelled } else { TermEnd::SteppedDown { release: term.held() } }
    }

    /// Takes over the state as of the checkpoint: its records and the event ids folded up to it.
    async fn restore(&mut self, loaded: LoadedState) -> Result<(), AggregatorError> {
        let mut event_ids = self.settings.event_ids();
        let restored = self.id_log.load(loaded.position).await.map_err(AggregatorError::Replay)?;
        for id in restored {
            event_ids.restore(id);
        }
        tracing::info!(
            proxies = loaded.records.len(),
            position = loaded.position,
            event_ids = event_ids.len(),
            "state loaded from the checkpoint"
        );
        let mut folder = FeedbackFolder::with_event_ids(self.settings.health.clone(), event_ids);
        for record in loaded.records {
            folder.insert(record);
        }
        folder.set_inventory_sizes(self.sizes.borrow_and_update().clone());
        self.folder = folder;
        self.position = loaded.position;
        self.last_published = None;
        self.window = Window::default();
        self.stats.set_last_seq(loaded.position);
        Ok(())
    }

    /// Forgets everything folded (a standby holds no state; the next term loads it).
    fn drop_state(&mut self) {
        self.folder = FeedbackFolder::with_event_ids(self.settings.health.clone(), self.settings.event_ids());
        self.position = 0;
        self.last_published = None;
        self.window = Window::default();
    }

    /// Folds batches from one consumer until it must be re-created, the lease is lost
    /// or shutdown comes. A task fetches and decodes them ahead of the fold
    /// ([`FetchAhead`]); it is stopped, and waited for, before the session ends.
    async fn session(&mut self, consumer: PullConsumer, term: &Term) -> Result<SessionEnd, AggregatorError> {
        let mut ahead = FetchAhead::start(consumer.clone(), &self.settings, term.stop_token().clone());
        let end = self.fold_session(&consumer, &mut ahead, term).await;
        ahead.stop().await;
        end
    }

    /// The fold loop of [`Live::session`]: takes the batches fetched `ahead`, folds
    /// them and commits, until the session ends.
    async fn fold_session(
        &mut self,
        consumer: &PullConsumer,
        ahead: &mut FetchAhead,
        term: &Term,
    ) -> Result<SessionEnd, AggregatorError> {
        let mut expected_cseq = 1_u64;
        let sweep_every = Duration::from_millis(self.settings.sweep_interval_ms);
        let lag_every = Duration::from_millis(self.settings.lag_interval_ms);
        let commit_every = Duration::from_millis(self.settings.commit_interval_ms);
        let (mut next_sweep, mut next_lag) = (Instant::now() + sweep_every, Instant::now());
        loop {
            let fetched = tokio::select! {
                biased;
                () = term.lost() => return Ok(SessionEnd::StepDown("leadership lease lost".into())),
                () = self.cancel.cancelled() => None,
                fetched = ahead.next() => Some(fetched),
            };
            let batch = match fetched {
                // Shutdown: store what is folded (one attempt), then stop.
                None => {
                    return Ok(match self.commit(term).await {
                        Err(SessionEnd::StepDown(reason)) => SessionEnd::StepDown(reason),
                        _ => SessionEnd::Cancelled,
                    });
                }
                Some(Ok(batch)) => batch,
                Some(Err(err)) => {
                    if let Err(end) = self.commit(term).await {
                        return Ok(end);
                    }
                    return Ok(SessionEnd::Reset(format!("fetch failed: {err}")));
                }
            };
            if self.in_flight.as_ref().is_some_and(JoinHandle::is_finished)
                && let Err(end) = self.finish_commit().await
            {
                return Ok(end);
            }
            // Caught up: a short batch (one decoded message per message fetched), or one
            // whose last message had nothing pending after it — then the window is
            // committed now, not after the next fetch has waited `fetch_wait_ms` for
            // nothing (the last events of a burst would wait that long for their commit).
            let caught_up = batch.len() < self.settings.batch_size
                || batch.last().and_then(|last| last.meta.as_ref()).is_some_and(|meta| meta.pending == 0);
            let end = self.fold_batch(batch, &mut expected_cseq).await;
            if let Some(end) = end {
                // Store what is folded before the session ends.
                if let Err(end) = self.commit(term).await {
                    return Ok(end);
                }
                return Ok(end);
            }
            let due = caught_up
                || self.window.messages + self.settings.batch_size > max_window(&self.settings)
                || self.window.changed.len() >= self.settings.commit_max_proxies
                || self.window.opened.is_some_and(|opened| opened.elapsed() >= commit_every);
            if due && let Err(end) = self.start_commit(term).await {
                return Ok(end);
            }
            let now = Instant::now();
            if now >= next_sweep {
                next_sweep = now + sweep_every;
                // Ended ejections and bars are written into the stored records now; a
                // sweep that ended nothing leaves the window to its own commit rules (a
                // commit per sweep would split a window that is behind into small ones,
                // each waiting for the commit before it).
                if self.expire_records()
                    && let Err(end) = self.start_commit(term).await
                {
                    return Ok(end);
                }
            }
            if now >= next_lag {
                next_lag = now + lag_every;
                self.measure_lag(consumer, expected_cseq - 1).await;
            }
        }
    }

    /// Folds one batch into the window; `Some` ends the session (after a commit).
    async fn fold_batch(&mut self, batch: Vec<Delivered>, expected_cseq: &mut u64) -> Option<SessionEnd> {
        if self.sizes.has_changed().unwrap_or(false) {
            let sizes = self.sizes.borrow_and_update().clone();
            self.folder.set_inventory_sizes(sizes);
        }
        for Delivered { message, meta, event } in batch {
            let Some(Meta { consumer_seq, seq, published, .. }) = meta else {
                return Some(SessionEnd::Reset("a message without JetStream metadata".into()));
            };
            if consumer_seq != *expected_cseq {
                return Some(SessionEnd::Reset(format!(
                    "delivery gap: consumer sequence {consumer_seq} where {expected_cseq} was expected"
                )));
            }
            *expected_cseq += 1;
            let window = &mut self.window;
            window.opened.get_or_insert_with(Instant::now);
            window.messages += 1;
            if seq > self.position + 1 {
                // The stream's sequences are dense: a hole between the position and the
                // next delivered message is events the stream removed (max_bytes or
                // max_age of `discard: old`, or an operator's delete) before they were
                // folded. They cannot be folded any more; count them so the loss shows.
                let lost = seq - self.position - 1;
                window.lost += lost;
                tracing::error!(
                    from = self.position + 1,
                    to = seq - 1,
                    lost,
                    "feedback events removed from the stream before they were folded (stream limits reached while the aggregator was down or behind)"
                );
            }
            if seq <= self.position {
                window.skipped += 1;
                window.last = Some(message);
                continue;
            }
            match event {
                Ok(event) => {
                    let outcome = self.folder.fold_event(&event, seq, published);
                    if outcome.skipped {
                        window.skipped += 1;
                    } else if outcome.duplicate {
                        window.deduplicated += 1;
                        tracing::info!(
                            event_id = %event.event_id(),
                            seq,
                            proxy_id = %event.proxy_id(),
                            "dropped a repeat of an event already folded"
                        );
                    } else {
                        window.folded += 1;
                        if let intake::StreamEvent::Operator(op) = &event {
                            tracing::info!(
                                seq,
                                proxy_id = %op.proxy_id,
                                action = %op.action,
                                exchange = ?op.exchange_id.as_ref().map(|e| e.as_str()),
                                operator = %op.operator,
                                reason = %proxybus_shared::redact_text(&op.reason),
                                "operator event folded"
                            );
                        }
                        window.changed.insert(*event.proxy_id());
                    }
                    window.ejected += u64::from(outcome.ejected);
                    window.suppressed += u64::from(outcome.ejection_suppressed);
                }
                Err(reason) => {
                    let sent = intake::dead_letter(
                        &self.client,
                        message.subject.as_str(),
                        seq,
                        &reason,
                        message.payload.clone(),
                    )
                    .await;
                    if let Err(err) = sent {
                        window.messages -= 1;
                        return Some(SessionEnd::Reset(format!("cannot dead-letter: {err}")));
                    }
                    tracing::warn!(seq, reason = %intake::clean_reason(&reason), "feedback dead-lettered");
                    window.dead += 1;
                }
            }
            self.position = seq;
            self.last_published = Some(published);
            self.window.last = Some(message);
        }
        None
    }

    /// Commits the window (see [`Live::start_commit`]) and waits until it is stored
    /// and acked. `Err` (nothing of the window acked) as [`Live::start_commit`] and
    /// [`Live::finish_commit`].
    async fn commit(&mut self, term: &Term) -> Result<(), SessionEnd> {
        self.start_commit(term).await?;
        self.finish_commit().await
    }

    /// Starts the commit of the window: waits for the commit in flight (commits are
    /// stored and acked in order), encodes the window's changed proxies — the bytes
    /// are the state as of the window's last message, so the fold may go on — and
    /// hands them to a task ([`CommitJob::run`]) that stores them with the position,
    /// then acks and publishes, while the next window is folded. `Err` (nothing of
    /// this window acked) when the previous commit failed, the lease is lost
    /// ([`SessionEnd::StepDown`]) or a record cannot be encoded ([`SessionEnd::Cancelled`]).
    async fn start_commit(&mut self, term: &Term) -> Result<(), SessionEnd> {
        self.finish_commit().await?;
        if self.window.is_empty() {
            self.window = Window::default();
            return Ok(());
        }
        let watch = term.watch();
        if !watch.held() {
            return Err(ended(&watch));
        }
        let position = self.position;
        let changed = &self.window.changed;
        let records = changed.iter().filter_map(|id| self.folder.get(id));
        let commit = match EncodedCommit::new(position, records, self.settings.max_commit_records) {
            Ok(commit) => commit,
            Err(err) => {
                // Only a record serde cannot express; nothing is acked, the next start folds again.
                tracing::error!(error = %err, "cannot encode a commit");
                self.stats.add_commit_failures(1);
                return Err(SessionEnd::Cancelled);
            }
        };
        let job = CommitJob {
            watch,
            store: self.store.clone(),
            id_log: self.id_log.clone(),
            client: self.client.clone(),
            stats: self.stats.clone(),
            publisher: self.publisher.clone(),
            new_ids: self.folder.event_ids().take_new(),
            commit,
            position,
            window: std::mem::take(&mut self.window),
        };
        self.in_flight = Some(tokio::spawn(job.run()));
        Ok(())
    }

    /// Waits for the commit in flight, if any. `Err` (nothing of it acked) when
    /// shutdown came first ([`SessionEnd::Cancelled`]), the lease was lost or the
    /// checkpoint fenced ([`SessionEnd::StepDown`]).
    async fn finish_commit(&mut self) -> Result<(), SessionEnd> {
        let Some(task) = self.in_flight.take() else { return Ok(()) };
        match task.await {
            Ok(result) => result,
            Err(err) => Err(SessionEnd::StepDown(format!("the commit task failed: {err}"))),
        }
    }

    /// Stops the commit in flight, if any, and waits until it has stopped (what it
    /// stored is a commit a crash cut short: `crate::store` repairs or ignores it).
    async fn abandon_commit(&mut self) {
        if let Some(task) = self.in_flight.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Ends, in the folder, every ejection and bar whose time has come, and puts
    /// the proxies in the window, so that the next commit stores and publishes
    /// them: `PROXY_HEALTH` never holds an expired ejection or bar for longer than
    /// `sweep_interval_ms`. True when something ended.
    fn expire_records(&mut self) -> bool {
        let now = Utc::now();
        let ids: Vec<ProxyId> = self
            .folder
            .proxies()
            .filter(|proxy| proxybus_shared::health::has_expired(&proxy.stats, now))
            .map(|proxy| proxy.stats.proxy_id)
            .collect();
        if ids.is_empty() {
            return false;
        }
        tracing::info!(proxies = ids.len(), "ejections, cool-downs or bans ended");
        let mut ended = false;
        for id in ids {
            if self.folder.expire_at(&id, now) {
                self.window.changed.insert(id);
                ended = true;
            }
        }
        ended
    }

    /// Records the fold lag: the messages not yet folded — those the consumer has not
    /// delivered and those delivered after consumer sequence `folded_cseq`, the last
    /// folded (fetched ahead, waiting for the fold) — and, while behind, the age of the
    /// last folded event.
    async fn measure_lag(&self, consumer: &PullConsumer, folded_cseq: u64) {
        let mut consumer = consumer.clone();
        if let Ok(info) = consumer.info().await {
            let fetched_ahead = info.delivered.consumer_sequence.saturating_sub(folded_cseq);
            let pending = info.num_pending + fetched_ahead;
            let millis = match (pending, self.last_published) {
                (0, _) | (_, None) => 0,
                (_, Some(at)) => (Utc::now() - at).num_milliseconds().max(0),
            };
            self.stats.set_lag(pending, millis);
        }
    }
}

/// Why a commit was not stored: the lease lost, else shutdown.
fn ended(watch: &TermWatch) -> SessionEnd {
    if watch.held() { SessionEnd::Cancelled } else { SessionEnd::StepDown("leadership lease lost".into()) }
}

/// One window's commit, encoded, and what storing, acking and publishing it needs.
struct CommitJob {
    watch: TermWatch,
    store: HealthStore,
    id_log: EventIdLog,
    client: async_nats::Client,
    stats: Arc<AggregatorStats>,
    publisher: Arc<HealthPublisher>,
    /// Event ids folded in the window.
    new_ids: Vec<SeenId>,
    commit: EncodedCommit,
    /// Stream sequence of the window's last message.
    position: u64,
    window: Window,
}

impl CommitJob {
    /// Stores the window's event ids, then its records and position (retried until
    /// stored), then acks its messages and publishes its changed stats. `Err` (nothing
    /// acked) when shutdown came first ([`SessionEnd::Cancelled`]) or the lease was
    /// lost or the checkpoint fenced ([`SessionEnd::StepDown`]).
    async fn run(self) -> Result<(), SessionEnd> {
        let Self { watch, store, id_log, client, stats, publisher, new_ids, commit, position, window } = self;
        let stop = watch.stop_token().clone();
        if window.dead > 0 {
            // Dead letters go out before their messages are acked (at least once).
            let _ = client.flush().await;
        }
        if !new_ids.is_empty() {
            // Ids first: the checkpoint written after them makes them count (see `event_ids`).
            let stored = retry_until_cancelled(&stop, "persisting event ids", || {
                let (log, ids) = (&id_log, &new_ids);
                async move { log.append(ids).await }
            })
            .await;
            if stored.is_none() {
                return Err(ended(&watch));
            }
        }
        let mut pause = Duration::from_millis(100);
        loop {
            // The lease is checked before every attempt; the checkpoint's
            // compare-and-set catches what the check cannot (see `crate::store`).
            if !watch.held() {
                return Err(ended(&watch));
            }
            match store.commit_encoded(&commit).await {
                Ok(()) => break,
                Err(StoreError::Fenced(key)) => {
                    stats.add_commit_failures(1);
                    return Err(SessionEnd::StepDown(format!("checkpoint {key} moved by another writer (fenced)")));
                }
                Err(err) => {
                    stats.add_commit_failures(1);
                    tracing::warn!(error = %err, "committing health stats failed; retrying");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return Err(ended(&watch)),
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
        // Counters first, then the position: whoever sees `last_seq` sees its events counted.
        stats.add_folded(window.folded);
        stats.add_duplicates(window.skipped);
        stats.add_deduplicated(window.deduplicated);
        stats.add_dead_lettered(window.dead);
        stats.add_ejections(window.ejected);
        stats.add_ejections_suppressed(window.suppressed);
        stats.add_lost(window.lost);
        stats.add_commits(1);
        stats.set_last_seq(position);
        if let Some(last) = window.last
            && let Err(err) = last.ack().await
        {
            tracing::debug!(error = %err, "ack failed; the messages will be redelivered and skipped");
        }
        // The stats as stored (the public part of each record), a chunk at a time.
        let mut published = commit.published();
        loop {
            let chunk: Vec<_> = published.by_ref().take(PUBLISH_CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            publisher.publish(&chunk).await;
        }
        Ok(())
    }
}

/// A message's JetStream metadata.
pub(crate) struct Meta {
    consumer_seq: u64,
    /// Messages of the stream after this one not yet delivered to the consumer when
    /// it was (JetStream's `num_pending`, the last token of the ack subject).
    pending: u64,
    /// Stream sequence.
    seq: u64,
    /// Stream time.
    published: DateTime<Utc>,
}

/// A message as fetched: its metadata (`None`: it has none) and its event, or why it
/// cannot be folded.
pub(crate) struct Delivered {
    message: Message,
    meta: Option<Meta>,
    event: Result<intake::StreamEvent, String>,
}

/// Reads the metadata and the event of each message of `batch`.
fn decode_batch(batch: Vec<Message>) -> Vec<Delivered> {
    batch
        .into_iter()
        .map(|message| {
            let meta = message.info().ok().map(|info| Meta {
                consumer_seq: info.consumer_sequence,
                pending: info.pending,
                seq: info.stream_sequence,
                published: offset_to_chrono(info.published),
            });
            let event = intake::read_event(message.subject.as_str(), message.headers.as_ref(), &message.payload);
            Delivered { message, meta, event }
        })
        .collect()
}

/// One pull request's worth of messages: up to `batch_size`, or what came within `wait`.
async fn fetch_batch(consumer: &PullConsumer, batch_size: usize, wait: Duration) -> Result<Vec<Message>, String> {
    let mut messages =
        consumer.fetch().max_messages(batch_size).expires(wait).messages().await.map_err(|err| err.to_string())?;
    let mut batch = Vec::with_capacity(batch_size);
    while let Some(message) = messages.next().await {
        batch.push(message.map_err(|err| err.to_string())?);
    }
    Ok(batch)
}

/// Decoded batches queued between the decode task and the fold (the decode task holds
/// one more while this queue is full).
const FETCHED_AHEAD: usize = 2;
/// Fetched batches queued between the fetch task and the decode task (the fetch task
/// holds one more while this queue is full).
const FETCHED_RAW: usize = 1;

/// A batch as the fetch task hands it to the fold: its messages decoded, one for each
/// message fetched and in delivery order (so its length says whether the fetch was a
/// full batch), or why the fetch failed.
type FetchedBatch = Result<Vec<Delivered>, String>;

/// The fetch of one session, two tasks ahead of the fold: one pulls batches
/// ([`fetch_batch`]) and hands them on at once, so that the next pull request is out
/// while the last batch is decoded; the other decodes them ([`decode_batch`]) and
/// queues them, at most [`FETCHED_AHEAD`], so the fold waits neither for the network
/// nor for the decoding. It acks nothing: a batch still queued when the session ends
/// is dropped, un-acked.
struct FetchAhead {
    /// The fetch task and the decode task; empty once they have been waited for.
    tasks: Vec<AbortOnDropHandle<()>>,
    batches: mpsc::Receiver<FetchedBatch>,
}

impl FetchAhead {
    /// Starts fetching from `consumer`; the fetch task stops by itself when `stop` fires
    /// (lease lost or shutdown: no pull request is sent after it) or after a fetch
    /// error, and the decode task when the fetch task has stopped and its batches are
    /// queued.
    fn start(consumer: PullConsumer, settings: &AggregatorSettings, stop: CancellationToken) -> Self {
        let (raw_out, raw) = mpsc::channel(FETCHED_RAW);
        let (out, batches) = mpsc::channel(FETCHED_AHEAD);
        let (batch_size, wait) = (settings.batch_size, Duration::from_millis(settings.fetch_wait_ms));
        let fetch = AbortOnDropHandle::new(tokio::spawn(fetch_batches(consumer, batch_size, wait, stop, raw_out)));
        let decode = AbortOnDropHandle::new(tokio::spawn(decode_batches(raw, out)));
        Self { tasks: vec![fetch, decode], batches }
    }

    /// The next batch in delivery order; `Err` when the fetch failed (the tasks have
    /// stopped: nothing comes after it). A panic of a task is raised here, as it was
    /// when the fold fetched and decoded itself.
    async fn next(&mut self) -> FetchedBatch {
        if let Some(batch) = self.batches.recv().await {
            return batch;
        }
        // The fetch task queues its error before it stops, and `stop` fires only after
        // the lease is lost or shutdown comes, which the fold's `select!` sees first: a
        // task that ended without a word panicked.
        for task in std::mem::take(&mut self.tasks) {
            if let Err(err) = task.await
                && err.is_panic()
            {
                std::panic::resume_unwind(err.into_panic());
            }
        }
        Err("the fetch task stopped".into())
    }

    /// Stops the tasks and waits until they have stopped, so that no fetch of this
    /// session runs once the consumer is re-created or the lease is another's. The
    /// batches queued are dropped: never acked, they are delivered again by the
    /// consumer the next session or leader creates from the checkpoint.
    async fn stop(self) {
        let Self { tasks, batches } = self;
        drop(batches);
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// The loop of a [`FetchAhead`] fetch task: fetch and hand on, until `stop`, a fetch
/// error (handed on last) or the decode task is gone.
async fn fetch_batches(
    consumer: PullConsumer,
    batch_size: usize,
    wait: Duration,
    stop: CancellationToken,
    out: mpsc::Sender<Result<Vec<Message>, String>>,
) {
    loop {
        let fetched = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            fetched = fetch_batch(&consumer, batch_size, wait) => fetched,
        };
        let failed = fetched.is_err();
        // An empty batch (nothing came within `wait`) is handed on too: it tells the
        // fold it is caught up and wakes it for its commit, sweep and lag timers.
        if out.send(fetched).await.is_err() || failed {
            return;
        }
    }
}

/// The loop of a [`FetchAhead`] decode task: decode each fetched batch and queue it
/// for the fold, in order, until the fetch task has stopped or the fold is gone.
async fn decode_batches(mut fetched: mpsc::Receiver<Result<Vec<Message>, String>>, out: mpsc::Sender<FetchedBatch>) {
    while let Some(batch) = fetched.recv().await {
        if out.send(batch.map(decode_batch)).await.is_err() {
            return;
        }
    }
}

/// Most messages in one window: `commit_max_events` and the batch that closes it.
fn max_window(settings: &AggregatorSettings) -> usize {
    settings.commit_max_events.max(settings.batch_size) + settings.batch_size
}

/// Unacked messages the consumer may have out: a window being stored, the next being
/// folded (the batch in the fold's hands included), and what the fetch ahead holds —
/// [`FETCHED_AHEAD`] decoded batches queued, one the decode task holds, [`FETCHED_RAW`]
/// fetched batches queued and the one the fetch task is fetching or waiting to queue.
/// Were there less room, the server would stop delivering to the fetch ahead; it
/// would come back short after `fetch_wait_ms`, be taken for "caught up", and the
/// fold would stall and commit after every batch.
fn max_ack_pending(settings: &AggregatorSettings) -> usize {
    2 * max_window(settings) + (FETCHED_AHEAD + 1 + FETCHED_RAW + 1) * settings.batch_size
}

/// Deletes the durable consumer and creates it again, starting after `position`.
async fn recreate_consumer(
    jetstream: &jetstream::Context,
    position: u64,
    settings: &AggregatorSettings,
) -> Result<PullConsumer, String> {
    let stream = jetstream.get_stream(FEEDBACK_STREAM).await.map_err(|err| err.to_string())?;
    let _ = stream.delete_consumer(AGGREGATOR_CONSUMER).await;
    let deliver_policy = match position {
        0 => DeliverPolicy::All,
        _ => DeliverPolicy::ByStartSequence { start_sequence: position + 1 },
    };
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(AGGREGATOR_CONSUMER.to_owned()),
            description: Some("proxybus-aggregator: folds feedback into PROXY_HEALTH".to_owned()),
            ack_policy: AckPolicy::All,
            deliver_policy,
            ack_wait: Duration::from_secs(settings.ack_wait_seconds),
            max_ack_pending: max_ack_pending(settings) as i64,
            max_batch: settings.batch_size as i64,
            ..Default::default()
        })
        .await
        .map_err(|err| err.to_string())
}
