//! Where folded state lives, and how a commit of it is made atomic.
//!
//! Bucket `PROXY_HEALTH` holds one key per `proxy_id` (see [`crate::record`]). A
//! commit usually changes many proxies, and KV has no multi-key transaction, so a
//! commit is a redo log:
//!
//! 1. put the **checkpoint** (key `checkpoint.{health bucket}` in bucket
//!    `PROXY_AGGREGATOR`): the stream sequence folded up to and every record the
//!    commit changed. At most `max_commit_records` records go in one value; the
//!    rest go first into **parts** (`checkpoint.{health bucket}.part.{slot}.{n}`,
//!    same layout), and the checkpoint, written last, names how many parts it has
//!    and in which of two slots; commits alternate slots, so a commit that a crash
//!    cut short never overwrites the parts of the checkpoint in force;
//! 2. put each of those records under its `proxy_id`;
//! 3. only then are the commit's messages acked (by the caller).
//!
//! **Fencing.** The checkpoint is written with compare-and-set on the revision of the
//! checkpoint key this store last read ([`HealthStore::load`]) or wrote, so of two
//! aggregators that both believe they lead (see `crate::lease`) only one commits: the
//! other gets [`StoreError::Fenced`] and must step down without acking. A commit with
//! parts first writes, by compare-and-set, a checkpoint without records at the position
//! in force (a claim), so a fenced writer stops before it touches a part. A retried write whose first attempt
//! landed (its ack lost) is not fenced: on a revision mismatch the checkpoint is read,
//! and when it holds exactly the bytes being written its revision is adopted.
//!
//! A crash between 1 and 2 is repaired on start by putting the checkpoint's records
//! again; a crash before 1 leaves the previous checkpoint, and the messages, never
//! acked, are folded again from the same state. Either way every event is folded
//! exactly once and the proxies of a region stay consistent with each other
//! (which the region-wide ejection cap needs).
//!
//! Each record is encoded once per commit ([`EncodedCommit`]): the checkpoint
//! values and the per-proxy puts share the bytes, and a retried commit re-sends them.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

use async_nats::jetstream::kv::{Operation, UpdateErrorKind};
use async_nats::jetstream::{self, kv};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use proxybus_shared::kv::BucketConfig;
use proxybus_shared::{ProxyId, subject};

use crate::fold::ProxyHealth;
use crate::record::{self, PublicPart, RecordError};

/// Why state could not be loaded or committed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A bucket could not be opened or created.
    #[error("cannot open bucket {bucket}: {message}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// What went wrong.
        message: String,
    },
    /// Reading from KV failed.
    #[error("cannot read {what}: {message}")]
    Read {
        /// What was being read.
        what: String,
        /// What went wrong.
        message: String,
    },
    /// Writing to KV failed; the commit did not happen (or only partly, which the
    /// next start repairs).
    #[error("cannot write {what}: {message}")]
    Write {
        /// What was being written.
        what: String,
        /// What went wrong.
        message: String,
    },
    /// A stored value is not valid.
    #[error("stored value {key} is invalid: {source}")]
    Invalid {
        /// Its key.
        key: String,
        /// Why.
        source: RecordError,
    },
    /// The checkpoint is not valid.
    #[error("checkpoint {0} is corrupt")]
    CorruptCheckpoint(String),
    /// Another writer moved the checkpoint since this store last read or wrote it (another
    /// aggregator took over, or a `replay --into` the live bucket): nothing of this commit
    /// is in force, and its messages must not be acked.
    #[error("checkpoint {0} was moved by another writer")]
    Fenced(String),
}

/// State as loaded at start.
#[derive(Debug, Default)]
pub struct LoadedState {
    /// Every stored proxy, the checkpoint's records applied.
    pub records: Vec<ProxyHealth>,
    /// Stream sequence everything up to which is folded.
    pub position: u64,
}

/// Puts in flight at once when writing records.
const PUTS_IN_FLIGHT: usize = 256;
/// Largest checkpoint value (part) in bytes, whatever `max_commit_records` says; a
/// single record above it gets a value of its own. NATS' default payload limit is 1 MiB.
const MAX_PART_BYTES: usize = 768 * 1024;
/// Bytes before the records of a checkpoint value: `last_seq` and the record count.
const PART_HEADER: usize = 12;

/// The two buckets, opened.
#[derive(Debug, Clone)]
pub struct HealthStore {
    health: kv::Store,
    state: kv::Store,
    health_bucket: String,
    checkpoint_key: String,
    /// Records per checkpoint value.
    part_records: usize,
    /// Slot of the parts of the checkpoint in force; a commit writes its parts into the other.
    head_slot: Arc<AtomicU8>,
    /// The checkpoint as this store last read or wrote it: what the next commit
    /// compares-and-sets against (see the module doc, Fencing).
    head: Arc<Mutex<Head>>,
}

/// The checkpoint key's revision (0: no value) and bytes as last read or written.
#[derive(Debug, Default)]
struct Head {
    revision: u64,
    bytes: Option<Bytes>,
}

/// A commit, encoded: the checkpoint values and each record's bytes (slices of them).
#[derive(Debug, Clone)]
pub(crate) struct EncodedCommit {
    last_seq: u64,
    /// Checkpoint values: `last_seq` (u64), record count (u32), then each record as
    /// length (u32) and bytes. The first is the checkpoint itself, the others its parts.
    values: Vec<Bytes>,
    /// `(proxy_id, stored record)`; the record is a slice of one of `values`.
    records: Vec<(String, Bytes)>,
    /// Each record's health subject and where its public form is in it, in the
    /// order of `records`.
    published: Vec<(Arc<str>, PublicPart)>,
}

impl EncodedCommit {
    /// Encodes `records` (each once) as a commit up to `last_seq`, at most
    /// `part_records` records per checkpoint value.
    pub(crate) fn new<'a>(
        last_seq: u64,
        records: impl IntoIterator<Item = &'a ProxyHealth>,
        part_records: usize,
    ) -> Result<Self, StoreError> {
        let part_records = part_records.max(1);
        let mut commit = Self { last_seq, values: Vec::new(), records: Vec::new(), published: Vec::new() };
        // The value being filled, and (key, range) of its records.
        let mut buffer: Vec<u8> = Vec::new();
        let mut in_buffer: Vec<(String, Range<usize>)> = Vec::new();
        let mut scratch: Vec<u8> = Vec::new();
        // The health subject of each region, made once.
        let mut subjects: BTreeMap<Option<&str>, Arc<str>> = BTreeMap::new();
        for record in records {
            if buffer.is_empty() {
                buffer.resize(PART_HEADER, 0);
            }
            let start = buffer.len();
            buffer.extend_from_slice(&[0; 4]);
            let key = record.stats.proxy_id.to_string();
            let part = record::encode_stored(record, &mut buffer, &mut scratch)
                .map_err(|source| StoreError::Invalid { key: key.clone(), source })?;
            let region = record.stats.region.as_ref();
            let subject = subjects
                .entry(region.map(|r| r.as_str()))
                .or_insert_with(|| subject::health_or_no_region(region).into())
                .clone();
            commit.published.push((subject, part));
            let len = buffer.len() - start - 4;
            buffer[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
            in_buffer.push((key, start + 4..buffer.len()));
            if buffer.len() > MAX_PART_BYTES && in_buffer.len() > 1 {
                // The record that crossed the byte limit opens the next value.
                let (key, range) = in_buffer.pop().expect("more than one");
                let moved = buffer.split_off(start);
                commit.seal(&mut buffer, &mut in_buffer);
                buffer.resize(PART_HEADER, 0);
                buffer.extend_from_slice(&moved);
                let shift = start - PART_HEADER;
                in_buffer.push((key, range.start - shift..range.end - shift));
            }
            if in_buffer.len() >= part_records || buffer.len() >= MAX_PART_BYTES {
                commit.seal(&mut buffer, &mut in_buffer);
            }
        }
        if !in_buffer.is_empty() || commit.values.is_empty() {
            commit.seal(&mut buffer, &mut in_buffer);
        }
        Ok(commit)
    }

    /// `(subject, stats)` of each record as published on `proxy.v1.health.{region}`
    /// (its `HealthStats` alone, msgpack), in the order given; each payload is made
    /// when the iterator reaches it, so a commit of 100 000 records does not hold
    /// them all twice (`aggregator-memory`).
    pub(crate) fn published(&self) -> impl Iterator<Item = (Arc<str>, Bytes)> + '_ {
        self.records
            .iter()
            .zip(&self.published)
            .map(|((_, stored), (subject, part))| (subject.clone(), part.payload(stored)))
    }

    /// Closes the value in `buffer`: writes its header and hands out its records.
    fn seal(&mut self, buffer: &mut Vec<u8>, in_buffer: &mut Vec<(String, Range<usize>)>) {
        let mut value = std::mem::take(buffer);
        if value.is_empty() {
            value.resize(PART_HEADER, 0);
        }
        value[..8].copy_from_slice(&self.last_seq.to_be_bytes());
        value[8..12].copy_from_slice(&(in_buffer.len() as u32).to_be_bytes());
        let value = Bytes::from(value);
        for (key, range) in in_buffer.drain(..) {
            self.records.push((key, value.slice(range)));
        }
        self.values.push(value);
    }
}

/// Opens `bucket`, creating it (file storage, the latest value per key) when
/// missing; see `proxybus_shared::kv` for why buckets are not made with
/// async-nats' `create_key_value`.
pub(crate) async fn open_bucket(
    jetstream: &jetstream::Context,
    bucket: &str,
    description: &str,
) -> Result<kv::Store, StoreError> {
    proxybus_shared::kv::open_or_create(jetstream, &BucketConfig::new(bucket, description))
        .await
        .map_err(|err| StoreError::Bucket { bucket: bucket.to_owned(), message: err.message })
}

impl HealthStore {
    /// Opens (or creates) the health bucket and the state bucket.
    pub async fn open(
        jetstream: &jetstream::Context,
        health_bucket: &str,
        state_bucket: &str,
    ) -> Result<Self, StoreError> {
        let health = open_bucket(jetstream, health_bucket, "proxybus health stats, one key per proxy_id").await?;
        let state = open_bucket(jetstream, state_bucket, "proxybus-aggregator checkpoints").await?;
        Ok(Self {
            health,
            state,
            health_bucket: health_bucket.to_owned(),
            checkpoint_key: format!("checkpoint.{health_bucket}"),
            part_records: 200,
            head_slot: Arc::new(AtomicU8::new(0)),
            head: Arc::new(Mutex::new(Head::default())),
        })
    }

    /// Puts at most `records` proxies in one checkpoint value (default 200).
    pub fn with_part_records(mut self, records: usize) -> Self {
        self.part_records = records.max(1);
        self
    }

    fn part_key(&self, slot: u8, part: u32) -> String {
        format!("{}.part.{slot}.{part}", self.checkpoint_key)
    }

    /// The state bucket (`PROXY_AGGREGATOR`): the checkpoint, and the leadership lease.
    pub(crate) fn state_bucket(&self) -> &kv::Store {
        &self.state
    }

    /// Name of the health bucket.
    pub fn health_bucket(&self) -> &str {
        &self.health_bucket
    }

    /// Loads every record and the checkpoint, repairing a commit a crash interrupted.
    /// The checkpoint's revision becomes the one the next commit expects (fencing).
    pub async fn load(&self) -> Result<LoadedState, StoreError> {
        // The checkpoint first: a commit landing after this read fences this store.
        let entry = self
            .state
            .entry(&self.checkpoint_key)
            .await
            .map_err(|err| StoreError::Read { what: self.checkpoint_key.clone(), message: err.to_string() })?;
        let (revision, checkpoint) = match entry {
            Some(entry) if entry.operation == Operation::Put => (entry.revision, Some(entry.value)),
            Some(entry) => (entry.revision, None),
            None => (0, None),
        };
        self.set_head(revision, checkpoint.clone());
        let mut records: BTreeMap<ProxyId, ProxyHealth> =
            self.read_all().await?.into_iter().map(|r| (r.stats.proxy_id, r)).collect();
        let mut position = records.values().map(|r| r.stats.last_seq).max().unwrap_or(0);
        if let Some(bytes) = checkpoint {
            let corrupt = || StoreError::CorruptCheckpoint(self.checkpoint_key.clone());
            let (last_seq, mut committed, parts) = decode_checkpoint(&bytes).ok_or_else(corrupt)?;
            if let Some(Parts { slot, count }) = parts {
                for part in 1..=count {
                    let key = self.part_key(slot, part);
                    let value = self
                        .state
                        .get(&key)
                        .await
                        .map_err(|err| StoreError::Read { what: key.clone(), message: err.to_string() })?
                        .ok_or_else(|| StoreError::CorruptCheckpoint(key.clone()))?;
                    match decode_checkpoint(&value) {
                        Some((seq, records, None)) if seq == last_seq => committed.extend(records),
                        _ => return Err(StoreError::CorruptCheckpoint(key)),
                    }
                }
            }
            if let Some(parts) = parts {
                self.head_slot.store(parts.slot, Ordering::Relaxed);
            }
            for record in &committed {
                let stale =
                    records.get(&record.stats.proxy_id).is_none_or(|r| r.stats.last_seq < record.stats.last_seq);
                if stale {
                    tracing::info!(proxy_id = %record.stats.proxy_id, "repairing a commit that a crash interrupted");
                    self.put_record(record).await?;
                    records.insert(record.stats.proxy_id, record.clone());
                }
            }
            position = position.max(last_seq);
        }
        Ok(LoadedState { records: records.into_values().collect(), position })
    }

    /// Reads every record of the health bucket (keys that are not proxy ids are skipped).
    pub async fn read_all(&self) -> Result<Vec<ProxyHealth>, StoreError> {
        read_bucket(&self.health).await
    }

    /// Commits `records` up to `last_seq` (see the module doc).
    pub async fn commit(&self, last_seq: u64, records: &[ProxyHealth]) -> Result<(), StoreError> {
        self.commit_encoded(&EncodedCommit::new(last_seq, records, self.part_records)?).await
    }

    /// Commits an encoded commit: its checkpoint (parts first), then each record.
    /// Retrying after a failure is safe.
    pub(crate) async fn commit_encoded(&self, commit: &EncodedCommit) -> Result<(), StoreError> {
        self.put_checkpoint(commit).await?;
        self.put_all(&commit.records).await
    }

    /// Writes `records` (every proxy of a replay) and then a checkpoint at `last_seq`
    /// that carries no records, so that a live aggregator continues after it. The
    /// checkpoint is a plain put: it fences a live aggregator still writing, which then
    /// steps down and loads this checkpoint.
    pub async fn replace_all(&self, last_seq: u64, records: &[ProxyHealth]) -> Result<(), StoreError> {
        let encoded = EncodedCommit::new(last_seq, records, self.part_records)?;
        self.put_all(&encoded.records).await?;
        let value = EncodedCommit::new(last_seq, &[], 1)?.values.swap_remove(0);
        let revision = self
            .state
            .put(&self.checkpoint_key, value.clone())
            .await
            .map_err(|err| StoreError::Write { what: self.checkpoint_key.clone(), message: err.to_string() })?;
        self.set_head(revision, Some(value));
        Ok(())
    }

    fn set_head(&self, revision: u64, bytes: Option<Bytes>) {
        *self.head.lock().unwrap_or_else(|e| e.into_inner()) = Head { revision, bytes };
    }

    /// Writes `value` as the checkpoint if its revision is still the one this store
    /// last read or wrote; [`StoreError::Fenced`] if another writer moved it, unless
    /// `landed_is_ours` and the checkpoint holds `value` already (a retry whose first
    /// attempt landed; the same bytes are the same state, whoever wrote them).
    async fn swap_checkpoint(&self, value: Bytes, landed_is_ours: bool) -> Result<(), StoreError> {
        let expected = self.head.lock().unwrap_or_else(|e| e.into_inner()).revision;
        let write_err = |err: &dyn std::fmt::Display| StoreError::Write {
            what: self.checkpoint_key.clone(),
            message: err.to_string(),
        };
        match self.state.update(&self.checkpoint_key, value.clone(), expected).await {
            Ok(revision) => {
                self.set_head(revision, Some(value));
                Ok(())
            }
            Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => {
                let entry = self
                    .state
                    .entry(&self.checkpoint_key)
                    .await
                    .map_err(|err| StoreError::Read { what: self.checkpoint_key.clone(), message: err.to_string() })?;
                match entry {
                    Some(entry) if landed_is_ours && entry.operation == Operation::Put && entry.value == value => {
                        tracing::debug!(revision = entry.revision, "an earlier attempt of this checkpoint landed");
                        self.set_head(entry.revision, Some(value));
                        Ok(())
                    }
                    _ => Err(StoreError::Fenced(self.checkpoint_key.clone())),
                }
            }
            Err(err) => Err(write_err(&err)),
        }
    }

    /// Puts the checkpoint of `commit` (compare-and-set, see Fencing): one value when
    /// it fits, else a claim, its parts into the slot the checkpoint in force does not
    /// use, then a checkpoint naming them.
    async fn put_checkpoint(&self, commit: &EncodedCommit) -> Result<(), StoreError> {
        if let [value] = &commit.values[..] {
            return self.swap_checkpoint(value.clone(), true).await;
        }
        // The claim: a checkpoint without records at the position in force, so that a
        // fenced writer stops before touching a part. It drops no redo log: the records
        // of the checkpoint in force are all stored (`load` repaired them, or the commit
        // that wrote it stored them before returning). Its bytes never equal a checkpoint
        // with parts, so a head found in place is never mistaken for another writer's
        // claim; two writers' claims are the same bytes, so a claim that finds its bytes
        // in place is fenced all the same (a retried claim that landed costs a step-down).
        let in_force = self.head.lock().unwrap_or_else(|e| e.into_inner()).bytes.clone();
        let position = in_force.as_deref().and_then(|b| b.get(..8)).map_or(0, |b| {
            let mut seq = [0; 8];
            seq.copy_from_slice(b);
            u64::from_be_bytes(seq)
        });
        let claim = EncodedCommit::new(position, &[], 1)?.values.swap_remove(0);
        self.swap_checkpoint(claim, false).await?;
        let slot = self.head_slot.load(Ordering::Relaxed) ^ 1;
        let mut parts = Vec::with_capacity(commit.values.len());
        for (n, value) in commit.values.iter().enumerate() {
            parts.push((self.part_key(slot, n as u32 + 1), value.clone()));
        }
        put_many(&self.state, &self.checkpoint_key, &parts).await?;
        let mut head = BytesMut::with_capacity(PART_HEADER + PARTS_TRAILER);
        head.put_u64(commit.last_seq);
        head.put_u32(0);
        head.put_u8(PARTS_MAGIC);
        head.put_u8(slot);
        head.put_u32(commit.values.len() as u32);
        self.swap_checkpoint(head.freeze(), true).await?;
        self.head_slot.store(slot, Ordering::Relaxed);
        Ok(())
    }

    /// Puts every record, [`PUTS_IN_FLIGHT`] at a time.
    async fn put_all(&self, records: &[(String, Bytes)]) -> Result<(), StoreError> {
        put_many(&self.health, &self.health_bucket, records).await
    }

    async fn put_record(&self, record: &ProxyHealth) -> Result<(), StoreError> {
        let key = record.stats.proxy_id.to_string();
        let value = record::encode(record).map_err(|source| StoreError::Invalid { key: key.clone(), source })?;
        self.health.put(&key, value).await.map_err(|err| StoreError::Write {
            what: format!("{}/{key}", self.health_bucket),
            message: err.to_string(),
        })?;
        Ok(())
    }
}

/// Puts `(key, value)` pairs into `bucket` (named `name`), [`PUTS_IN_FLIGHT`] at a time.
async fn put_many(bucket: &kv::Store, name: &str, values: &[(String, Bytes)]) -> Result<(), StoreError> {
    let mut in_flight = FuturesUnordered::new();
    for (key, value) in values {
        in_flight.push(async move {
            bucket
                .put(key.as_str(), value.clone())
                .await
                .map(|_| ())
                .map_err(|err| StoreError::Write { what: format!("{name}/{key}"), message: err.to_string() })
        });
        if in_flight.len() >= PUTS_IN_FLIGHT {
            in_flight.next().await.transpose()?;
        }
    }
    while let Some(result) = in_flight.next().await {
        result?;
    }
    Ok(())
}

/// Every record of a health bucket, also while an aggregator rewrites it: the keys
/// come from the stream's index (`proxybus_shared::kv::current_keys`), not from a KV
/// key listing, which skips keys rewritten while it reads.
pub async fn read_bucket(bucket: &kv::Store) -> Result<Vec<ProxyHealth>, StoreError> {
    let read_err =
        |err: &dyn std::fmt::Display| StoreError::Read { what: "health keys".into(), message: err.to_string() };
    let keys = proxybus_shared::kv::current_keys(bucket).await.map_err(|err| read_err(&err))?;
    let mut records = Vec::with_capacity(keys.len());
    for key in keys {
        if key.parse::<ProxyId>().is_err() {
            tracing::warn!(key = %key, "skipping a key that is not a proxy_id");
            continue;
        }
        let Some(bytes) = bucket.get(&key).await.map_err(|err| read_err(&err))? else { continue };
        records.push(record::decode(&bytes).map_err(|source| StoreError::Invalid { key, source })?);
    }
    Ok(records)
}

/// Marks a checkpoint whose records are in parts: magic (u8), slot (u8), parts (u32).
const PARTS_MAGIC: u8 = b'P';
const PARTS_TRAILER: usize = 6;

/// Where the records of a checkpoint are, when not in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parts {
    slot: u8,
    count: u32,
}

/// Reads a checkpoint value: `last_seq` (u64), record count (u32), each record as
/// length (u32) and bytes, then optionally the [`Parts`] trailer.
fn decode_checkpoint(mut bytes: &[u8]) -> Option<(u64, Vec<ProxyHealth>, Option<Parts>)> {
    if bytes.remaining() < PART_HEADER {
        return None;
    }
    let last_seq = bytes.get_u64();
    let count = bytes.get_u32();
    let mut records = Vec::new();
    for _ in 0..count {
        if bytes.remaining() < 4 {
            return None;
        }
        let len = bytes.get_u32() as usize;
        if bytes.remaining() < len {
            return None;
        }
        records.push(record::decode(&bytes[..len]).ok()?);
        bytes.advance(len);
    }
    match bytes.len() {
        0 => Some((last_seq, records, None)),
        PARTS_TRAILER if bytes[0] == PARTS_MAGIC && bytes[1] <= 1 => {
            let parts = Parts { slot: bytes[1], count: u32::from_be_bytes(bytes[2..6].try_into().ok()?) };
            Some((last_seq, records, Some(parts)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use proxybus_shared::HealthStats;

    use super::*;
    use crate::fold::FoldState;

    fn record(n: u64) -> ProxyHealth {
        record_spread(n, n, 37)
    }

    /// A record whose sketch holds `samples` latencies `step` apart (wide spread: many buckets).
    fn record_spread(n: u64, samples: u64, step: u64) -> ProxyHealth {
        let id: ProxyId = format!("{n:016x}").parse().unwrap();
        let mut stats = HealthStats::new(id, format!("http://10.0.0.{n}:3128"), None, DateTime::UNIX_EPOCH);
        stats.total = n;
        stats.last_seq = n;
        let mut fold = FoldState::default();
        for ms in 0..samples {
            fold.latency.record(ms * step);
        }
        ProxyHealth { stats, fold }
    }

    #[test]
    fn a_commit_encodes_each_record_once_into_checkpoint_values() {
        let records: Vec<_> = (1..=7).map(record).collect();
        let commit = EncodedCommit::new(99, &records, 3).unwrap();
        assert_eq!(commit.values.len(), 3, "7 records, 3 per value");
        let mut read = Vec::new();
        for value in &commit.values {
            let (seq, records, parts) = decode_checkpoint(value).unwrap();
            assert_eq!((seq, parts), (99, None));
            read.extend(records);
        }
        assert_eq!(read, records);
        for ((key, bytes), record) in commit.records.iter().zip(&records) {
            assert_eq!(key, record.stats.proxy_id.as_str());
            assert_eq!(bytes, &record::encode(record).unwrap(), "the put is the checkpoint's bytes");
        }
        let published: Vec<_> = commit.published().collect();
        assert_eq!(published.len(), records.len(), "each record is published");
        for ((subject, bytes), record) in published.iter().zip(&records) {
            assert_eq!(&**subject, subject::health_or_no_region(record.stats.region.as_ref()));
            assert_eq!(record::decode_stats(bytes).unwrap(), record.stats, "the published stats are the record's");
        }
        let single = EncodedCommit::new(5, &records, 200).unwrap();
        assert_eq!(single.values.len(), 1);
        let empty = EncodedCommit::new(5, &[], 200).unwrap();
        assert_eq!((empty.values.len(), empty.records.is_empty()), (1, true));
        assert_eq!(decode_checkpoint(&empty.values[0]), Some((5, vec![], None)));
    }

    #[test]
    fn checkpoint_values_stay_under_the_byte_limit() {
        let big: Vec<_> = (1..=1000).map(|n| record_spread(n, 3000, 1200 + n)).collect();
        let total: usize = big.iter().map(|r| record::encode(r).unwrap().len() + 4).sum();
        assert!(total > MAX_PART_BYTES * 3 / 2, "{total}");
        let commit = EncodedCommit::new(1, &big, 1000).unwrap();
        assert!(commit.values.len() >= 2);
        assert!(commit.values.iter().all(|v| v.len() <= MAX_PART_BYTES), "{total}");
        let read: Vec<ProxyHealth> = commit.values.iter().flat_map(|v| decode_checkpoint(v).unwrap().1).collect();
        assert_eq!(read, big);
    }

    #[test]
    fn a_checkpoint_with_parts_names_them_and_old_checkpoints_still_read() {
        let mut head = BytesMut::new();
        head.put_u64(7);
        head.put_u32(0);
        head.put_slice(&[PARTS_MAGIC, 1, 0, 0, 0, 4]);
        assert_eq!(decode_checkpoint(&head), Some((7, vec![], Some(Parts { slot: 1, count: 4 }))));
        head.put_u8(0);
        assert_eq!(decode_checkpoint(&head), None, "trailing garbage is corrupt");
        // The format of the single-value checkpoint did not change.
        let r = record(3);
        let mut old = BytesMut::new();
        old.put_u64(3);
        old.put_u32(1);
        let bytes = record::encode(&r).unwrap();
        old.put_u32(bytes.len() as u32);
        old.put_slice(&bytes);
        assert_eq!(EncodedCommit::new(3, [&r], 200).unwrap().values[0], old.freeze());
    }
}
