//! The feedback queue: `report` never blocks; a background task publishes to
//! JetStream with `Nats-Msg-Id: {event_id}` and awaits each ack, retrying what
//! failed (the stream's duplicate window makes a retry of an event whose ack was
//! lost fold once). Up to [`WINDOW`] events are published ahead of their acks, a
//! sliding window: each ack that comes in lets the next event go. (Batches of 64
//! whose acks were all awaited before the next batch left the connection idle
//! between batches: 0.75× a bare publisher with 256 acks in flight,
//! docs/benchmarks.md `publish`.) After a failure nothing new is published until
//! every ack is in; the failed events then go back to the front of the queue in
//! their order, so a feed's events reach the stream in the order they happened. When the queue is full the oldest events are dropped and
//! counted (`proxybus_client_feedback_dropped_total` and a warning), never silently.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use proxybus_shared::ProxyFeedback;
use proxybus_shared::feedback::{self, PublishFeedbackErrorKind};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Most events published whose acks are not yet in.
const WINDOW: usize = 256;
/// How long one publish and its ack may take before the event is retried.
const ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// Counters of the feedback queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeedbackStats {
    /// Events acknowledged by JetStream.
    pub published: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// Events waiting or in flight.
    pub pending: usize,
    /// Publish attempts that failed and were retried.
    pub retries: u64,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<VecDeque<ProxyFeedback>>,
    capacity: usize,
    wake: Notify,
    in_flight: AtomicUsize,
    published: AtomicU64,
    dropped: AtomicU64,
    retries: AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<ProxyFeedback>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the oldest events until the queue fits its capacity.
    fn trim(&self, queue: &mut VecDeque<ProxyFeedback>) {
        while queue.len() > self.capacity {
            queue.pop_front();
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            metrics::counter!("proxybus_client_feedback_dropped_total").increment(1);
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, capacity = self.capacity, "feedback queue full: dropped the oldest event");
            }
        }
    }
}

/// The queue and its publisher task.
#[derive(Debug)]
pub(crate) struct Reporter {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reporter {
    pub(crate) fn start(jetstream: jetstream::Context, capacity: usize) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity: capacity.max(1),
            wake: Notify::new(),
            in_flight: AtomicUsize::new(0),
            published: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        });
        let task = tokio::spawn(publish_loop(jetstream, shared.clone()));
        Self { shared, task }
    }

    /// Queues an event; never blocks.
    pub(crate) fn report(&self, event: ProxyFeedback) {
        let mut queue = self.shared.lock();
        queue.push_back(event);
        self.shared.trim(&mut queue);
        drop(queue);
        self.shared.wake.notify_one();
    }

    pub(crate) fn stats(&self) -> FeedbackStats {
        FeedbackStats {
            published: self.shared.published.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            pending: self.shared.lock().len() + self.shared.in_flight.load(Ordering::Relaxed),
            retries: self.shared.retries.load(Ordering::Relaxed),
        }
    }

    /// Waits until every queued event is acknowledged, or `timeout` passes;
    /// returns whether the queue drained.
    pub(crate) async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.stats().pending == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn publish_loop(jetstream: jetstream::Context, shared: Arc<Shared>) {
    let published_total = metrics::counter!("proxybus_client_feedback_published_total");
    let mut backoff = Duration::from_millis(50);
    let mut acks = FuturesUnordered::new();
    // Events whose publish or ack failed, by the order they were taken from the queue.
    let mut failed: Vec<(u64, ProxyFeedback)> = Vec::new();
    let mut taken: u64 = 0;
    loop {
        // Publish while the window has room and nothing has failed.
        while failed.is_empty() && acks.len() < WINDOW {
            let event = {
                // Counted in flight under the queue's lock, so `pending` never misses it.
                let mut queue = shared.lock();
                let Some(event) = queue.pop_front() else { break };
                shared.in_flight.store(acks.len() + 1, Ordering::Relaxed);
                event
            };
            let order = taken;
            taken += 1;
            tracing::trace!(event_id = %event.event_id, in_flight = acks.len(), "publishing a feedback event");
            match tokio::time::timeout(ACK_TIMEOUT, feedback::send_feedback(&jetstream, &event)).await {
                Ok(Ok(ack)) => acks.push(async move {
                    let result = tokio::time::timeout(ACK_TIMEOUT, ack.into_future()).await;
                    (order, event, result)
                }),
                Ok(Err(err)) if err.kind() == PublishFeedbackErrorKind::Encode => {
                    tracing::error!(%err, "cannot encode feedback; dropped");
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(err)) => set_aside(&mut failed, order, event, "publish", &err),
                Err(_) => set_aside(&mut failed, order, event, "publish", &"timed out"),
            }
            shared.in_flight.store(acks.len() + failed.len(), Ordering::Relaxed);
        }
        if acks.is_empty() {
            if failed.is_empty() {
                shared.wake.notified().await;
                continue;
            }
            // Every ack is in: the failed events go back to the front of the queue in
            // the order they were taken, and publishing resumes after a back-off.
            shared.retries.fetch_add(failed.len() as u64, Ordering::Relaxed);
            failed.sort_unstable_by_key(|(order, _)| *order);
            {
                let mut queue = shared.lock();
                for (_, event) in failed.drain(..).rev() {
                    queue.push_front(event);
                }
                shared.in_flight.store(0, Ordering::Relaxed);
                shared.trim(&mut queue);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        }
        // An ack, or new events while the window has room.
        tokio::select! {
            Some((order, event, result)) = acks.next() => {
                match result {
                    Ok(Ok(_)) => {
                        shared.published.fetch_add(1, Ordering::Relaxed);
                        published_total.increment(1);
                        if failed.is_empty() {
                            backoff = Duration::from_millis(50);
                        }
                    }
                    Ok(Err(err)) => set_aside(&mut failed, order, event, "ack", &err),
                    Err(_) => set_aside(&mut failed, order, event, "ack", &"timed out"),
                }
                shared.in_flight.store(acks.len() + failed.len(), Ordering::Relaxed);
            }
            () = shared.wake.notified(), if failed.is_empty() && acks.len() < WINDOW => {}
        }
    }
}

/// Sets `event` (taken `order`-th from the queue) aside for a retry, saying at debug
/// which `step` (`publish` or `ack`) failed and why.
fn set_aside(
    failed: &mut Vec<(u64, ProxyFeedback)>,
    order: u64,
    event: ProxyFeedback,
    step: &str,
    why: &dyn std::fmt::Display,
) {
    tracing::debug!(step, %why, "feedback not acknowledged; will retry");
    failed.push((order, event));
}
