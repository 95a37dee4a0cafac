//! Exactly once by `event_id`: the ids of the events folded within a horizon of
//! stream time, so that an event is folded once however it arrives — with a
//! missing or different `Nats-Msg-Id` (which stream `PROXY_FEEDBACK`'s duplicate
//! window cannot catch), republished after that window, or met again in a replay.
//!
//! [`EventIds`] is a pure function of the events folded (their ids, stream
//! sequences and stream times), so a live fold and a replay from the same start
//! drop the same repeats. Memory is bounded by `event_ids_max`; past it the
//! oldest ids are forgotten early and counted.
//!
//! # Persistence
//! Each commit first publishes the ids it added (32 bytes each: the UUID, the
//! stream sequence, the stream time in ms) on `proxybus.aggregator.event_ids.{health
//! bucket}` in stream `PROXY_AGGREGATOR_EVENT_IDS` (file storage, kept for the
//! horizon), then writes the checkpoint (see [`crate::store`]). On start the ids
//! with a sequence at or below the checkpoint's position are read back; ids of a
//! commit that a crash cut short lie above it and are ignored, since their events
//! are folded again.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use proxybus_shared::subject::AGGREGATOR_EVENT_IDS_PREFIX;
use uuid::Uuid;

/// Bytes of one persisted id: UUID (16), stream sequence (8), stream time ms (8).
const ENTRY_BYTES: usize = 32;
/// Ids per persisted message (under NATS' default 1 MiB payload limit).
const ENTRIES_PER_MESSAGE: usize = 30_000;

/// An id seen: the event's UUID, its stream sequence and stream time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SeenId {
    /// The `event_id`.
    pub id: u128,
    /// Stream sequence of its first delivery.
    pub seq: u64,
    /// Stream time of its first delivery, Unix milliseconds.
    pub at_ms: i64,
}

/// The ids of events folded within the horizon.
#[derive(Debug, Clone)]
pub(crate) struct EventIds {
    horizon_ms: i64,
    max: usize,
    /// Hashed with foldhash (randomly seeded per process, as the resolver's cache)
    /// rather than SipHash-1-3: every event folded inserts its id here.
    seen: HashSet<u128, foldhash::fast::RandomState>,
    order: VecDeque<SeenId>,
    /// Added since the last [`EventIds::take_new`].
    new: Vec<SeenId>,
    /// Ids forgotten before their horizon because of `max`.
    evicted_early: u64,
}

impl EventIds {
    /// Keeps ids for `horizon` of stream time, at most `max` of them.
    pub(crate) fn new(horizon: Duration, max: usize) -> Self {
        Self {
            horizon_ms: i64::try_from(horizon.as_millis()).unwrap_or(i64::MAX),
            max: max.max(1),
            seen: HashSet::default(),
            order: VecDeque::new(),
            new: Vec::new(),
            evicted_early: 0,
        }
    }

    /// Records `id` seen at stream sequence `seq` and stream time `at_ms`; false when
    /// it was seen already within the horizon (a repeat: do not fold it).
    pub(crate) fn first_time(&mut self, id: Uuid, seq: u64, at_ms: i64) -> bool {
        self.forget_before(at_ms.saturating_sub(self.horizon_ms));
        let id = id.as_u128();
        if !self.seen.insert(id) {
            return false;
        }
        let entry = SeenId { id, seq, at_ms };
        self.order.push_back(entry);
        self.new.push(entry);
        while self.order.len() > self.max {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old.id);
                self.evicted_early += 1;
            }
        }
        true
    }

    /// Loads a persisted id (in the order they were first seen).
    pub(crate) fn restore(&mut self, entry: SeenId) {
        if self.seen.insert(entry.id) {
            self.order.push_back(entry);
            while self.order.len() > self.max {
                if let Some(old) = self.order.pop_front() {
                    self.seen.remove(&old.id);
                }
            }
        }
    }

    fn forget_before(&mut self, cutoff_ms: i64) {
        while self.order.front().is_some_and(|oldest| oldest.at_ms < cutoff_ms) {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old.id);
            }
        }
    }

    /// Ids added since the last call (what the next commit persists).
    pub(crate) fn take_new(&mut self) -> Vec<SeenId> {
        std::mem::take(&mut self.new)
    }

    /// Ids held.
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    /// Ids forgotten before their horizon because the cap was reached.
    #[cfg(test)]
    pub(crate) fn evicted_early(&self) -> u64 {
        self.evicted_early
    }
}

/// Encodes ids as persisted messages (at most [`ENTRIES_PER_MESSAGE`] each).
pub(crate) fn encode(ids: &[SeenId]) -> Vec<Bytes> {
    ids.chunks(ENTRIES_PER_MESSAGE)
        .map(|chunk| {
            let mut out = BytesMut::with_capacity(chunk.len() * ENTRY_BYTES);
            for entry in chunk {
                out.put_u128(entry.id);
                out.put_u64(entry.seq);
                out.put_i64(entry.at_ms);
            }
            out.freeze()
        })
        .collect()
}

/// Decodes one persisted message; `None` when its length is not a multiple of 32.
pub(crate) fn decode(mut bytes: &[u8]) -> Option<Vec<SeenId>> {
    if !bytes.len().is_multiple_of(ENTRY_BYTES) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / ENTRY_BYTES);
    while bytes.has_remaining() {
        out.push(SeenId { id: bytes.get_u128(), seq: bytes.get_u64(), at_ms: bytes.get_i64() });
    }
    Some(out)
}

/// Where the ids of one health bucket are persisted.
#[derive(Debug, Clone)]
pub(crate) struct EventIdLog {
    jetstream: jetstream::Context,
    stream: String,
    subject: String,
}

impl EventIdLog {
    /// Opens (creating when missing) stream `stream`, keeping messages for `keep`.
    pub(crate) async fn open(
        jetstream: &jetstream::Context,
        stream: &str,
        health_bucket: &str,
        keep: Duration,
    ) -> Result<Self, String> {
        let config = stream::Config {
            name: stream.to_owned(),
            description: Some("proxybus-aggregator: event ids folded, for exactly once by event_id".into()),
            subjects: vec![format!("{AGGREGATOR_EVENT_IDS_PREFIX}.>")],
            storage: stream::StorageType::File,
            max_age: keep,
            ..Default::default()
        };
        jetstream.get_or_create_stream(config).await.map_err(|err| format!("stream {stream}: {err}"))?;
        Ok(Self {
            jetstream: jetstream.clone(),
            stream: stream.to_owned(),
            subject: format!("{AGGREGATOR_EVENT_IDS_PREFIX}.{health_bucket}"),
        })
    }

    /// Persists `ids` (waiting for the stream's acks).
    pub(crate) async fn append(&self, ids: &[SeenId]) -> Result<(), String> {
        for message in encode(ids) {
            let ack = self
                .jetstream
                .publish(self.subject.clone(), message)
                .await
                .map_err(|err| format!("publishing event ids: {err}"))?;
            ack.await.map_err(|err| format!("publishing event ids: {err}"))?;
        }
        Ok(())
    }

    /// Reads back every persisted id at or below stream sequence `position`, in order.
    pub(crate) async fn load(&self, position: u64) -> Result<Vec<SeenId>, String> {
        let fail = |err: &dyn std::fmt::Display| format!("reading event ids from {}: {err}", self.stream);
        let stream = self.jetstream.get_stream(&self.stream).await.map_err(|err| fail(&err))?;
        let ordered = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.subject.clone(),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|err| fail(&err))?;
        let mut pending = ordered.cached_info().num_pending;
        let mut out = Vec::new();
        if pending == 0 {
            return Ok(out);
        }
        let mut messages = ordered.messages().await.map_err(|err| fail(&err))?;
        while pending > 0 {
            let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
            let message = match next {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(err))) => return Err(fail(&err)),
                Ok(None) | Err(_) => return Err(fail(&"the stream stopped delivering")),
            };
            pending -= 1;
            match decode(&message.payload) {
                Some(ids) => out.extend(ids.into_iter().filter(|id| id.seq <= position)),
                None => tracing::warn!(stream = %self.stream, "skipping a malformed event-id record"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn an_id_is_new_once_within_the_horizon() {
        let mut ids = EventIds::new(Duration::from_secs(60), 100);
        assert!(ids.first_time(id(1), 1, 0));
        assert!(!ids.first_time(id(1), 2, 59_000), "a repeat within the horizon");
        assert!(ids.first_time(id(2), 3, 60_000));
        assert!(ids.first_time(id(1), 4, 60_001), "after the horizon it is new again");
        assert_eq!(ids.take_new().len(), 3);
        assert!(ids.take_new().is_empty());
    }

    #[test]
    fn memory_is_bounded_and_early_evictions_are_counted() {
        let mut ids = EventIds::new(Duration::from_secs(3600), 3);
        for n in 0..5 {
            assert!(ids.first_time(id(n), n as u64, 0));
        }
        assert_eq!(ids.len(), 3);
        assert_eq!(ids.evicted_early(), 2);
        assert!(!ids.first_time(id(4), 9, 0));
    }

    #[test]
    fn persisted_ids_read_back_the_same() {
        let entries: Vec<SeenId> =
            (0..70_000).map(|n| SeenId { id: n as u128 * 7, seq: n, at_ms: n as i64 * 3 }).collect();
        let messages = encode(&entries);
        assert_eq!(messages.len(), 3);
        let back: Vec<SeenId> = messages.iter().flat_map(|m| decode(m).unwrap()).collect();
        assert_eq!(back, entries);
        assert_eq!(decode(&[0; 31]), None);
    }
}
