//! Where folded state lives, and how a batch of it is committed atomically.
//!
//! Bucket `PROXY_HEALTH` holds one key per `proxy_id` (see [`crate::record`]). A
//! batch usually changes several proxies, and KV has no multi-key transaction, so
//! a commit is a redo log of one entry:
//!
//! 1. put the **checkpoint** (key `checkpoint.{health bucket}` in bucket
//!    `PROXY_AGGREGATOR`): the stream sequence folded up to and every record the
//!    batch changed, in one value;
//! 2. put each of those records under its `proxy_id`;
//! 3. only then are the batch's messages acked (by the caller).
//!
//! A crash between 1 and 2 is repaired on start by putting the checkpoint's records
//! again; a crash before 1 leaves the previous checkpoint, and the messages, never
//! acked, are folded again from the same state. Either way every event is folded
//! exactly once and the proxies of a region stay consistent with each other
//! (which the region-wide ejection cap needs).

use std::collections::BTreeMap;

use async_nats::jetstream::{self, kv};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use proxybus_shared::ProxyId;
use proxybus_shared::kv::BucketConfig;

use crate::fold::ProxyHealth;
use crate::record::{self, RecordError};

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
}

/// State as loaded at start.
#[derive(Debug, Default)]
pub struct LoadedState {
    /// Every stored proxy, the checkpoint's records applied.
    pub records: Vec<ProxyHealth>,
    /// Stream sequence everything up to which is folded.
    pub position: u64,
}

/// The two buckets, opened.
#[derive(Debug, Clone)]
pub struct HealthStore {
    health: kv::Store,
    state: kv::Store,
    health_bucket: String,
    checkpoint_key: String,
}

/// Opens `bucket`, creating it (file storage, the latest value per key) when
/// missing; see `proxybus_shared::kv` for why buckets are not made with
/// async-nats' `create_key_value`.
pub async fn open_bucket(
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
        })
    }

    /// Name of the health bucket.
    pub fn health_bucket(&self) -> &str {
        &self.health_bucket
    }

    /// Loads every record and the checkpoint, repairing a commit a crash interrupted.
    pub async fn load(&self) -> Result<LoadedState, StoreError> {
        let mut records: BTreeMap<ProxyId, ProxyHealth> =
            self.read_all().await?.into_iter().map(|r| (r.stats.proxy_id.clone(), r)).collect();
        let mut position = records.values().map(|r| r.stats.last_seq).max().unwrap_or(0);
        if let Some(bytes) = self
            .state
            .get(&self.checkpoint_key)
            .await
            .map_err(|err| StoreError::Read { what: self.checkpoint_key.clone(), message: err.to_string() })?
        {
            let (last_seq, committed) =
                decode_checkpoint(&bytes).ok_or_else(|| StoreError::CorruptCheckpoint(self.checkpoint_key.clone()))?;
            for record in &committed {
                let stale =
                    records.get(&record.stats.proxy_id).is_none_or(|r| r.stats.last_seq < record.stats.last_seq);
                if stale {
                    tracing::info!(proxy_id = %record.stats.proxy_id, "repairing a commit that a crash interrupted");
                    self.put_record(record).await?;
                    records.insert(record.stats.proxy_id.clone(), record.clone());
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

    /// Commits a batch: the checkpoint with `records`, then each record (see the module doc).
    pub async fn commit(&self, last_seq: u64, records: &[ProxyHealth]) -> Result<(), StoreError> {
        let checkpoint = encode_checkpoint(last_seq, records)?;
        self.state
            .put(&self.checkpoint_key, checkpoint)
            .await
            .map_err(|err| StoreError::Write { what: self.checkpoint_key.clone(), message: err.to_string() })?;
        self.put_all(records).await
    }

    /// Writes `records` (every proxy of a replay) and then a checkpoint at `last_seq`
    /// that carries no records, so that a live aggregator continues after it.
    pub async fn replace_all(&self, last_seq: u64, records: &[ProxyHealth]) -> Result<(), StoreError> {
        self.put_all(records).await?;
        self.state
            .put(&self.checkpoint_key, encode_checkpoint(last_seq, &[])?)
            .await
            .map_err(|err| StoreError::Write { what: self.checkpoint_key.clone(), message: err.to_string() })?;
        Ok(())
    }

    /// Puts every record, up to 32 at a time.
    async fn put_all(&self, records: &[ProxyHealth]) -> Result<(), StoreError> {
        let mut owned = Vec::with_capacity(records.len());
        for record in records {
            let key = record.stats.proxy_id.to_string();
            let value = record::encode(record).map_err(|source| StoreError::Invalid { key: key.clone(), source })?;
            owned.push((key, value));
        }
        let mut in_flight = futures::stream::FuturesUnordered::new();
        for (key, value) in owned {
            let bucket = self.health.clone();
            let name = self.health_bucket.clone();
            in_flight.push(async move {
                bucket
                    .put(&key, value)
                    .await
                    .map(|_| ())
                    .map_err(|err| StoreError::Write { what: format!("{name}/{key}"), message: err.to_string() })
            });
            if in_flight.len() >= 32 {
                in_flight.next().await.transpose()?;
            }
        }
        while let Some(result) = in_flight.next().await {
            result?;
        }
        Ok(())
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

/// Every record of a health bucket.
pub async fn read_bucket(bucket: &kv::Store) -> Result<Vec<ProxyHealth>, StoreError> {
    let read_err =
        |err: &dyn std::fmt::Display| StoreError::Read { what: "health keys".into(), message: err.to_string() };
    let keys: Vec<String> = match bucket.keys().await {
        Ok(keys) => keys.try_collect().await.map_err(|err| read_err(&err))?,
        Err(err) => return Err(read_err(&err)),
    };
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

/// `last_seq` (u64), record count (u32), then each record as length (u32) and bytes.
fn encode_checkpoint(last_seq: u64, records: &[ProxyHealth]) -> Result<Bytes, StoreError> {
    let mut out = BytesMut::new();
    out.put_u64(last_seq);
    out.put_u32(records.len() as u32);
    for record in records {
        let bytes = record::encode(record)
            .map_err(|source| StoreError::Invalid { key: record.stats.proxy_id.to_string(), source })?;
        out.put_u32(bytes.len() as u32);
        out.put_slice(&bytes);
    }
    Ok(out.freeze())
}

fn decode_checkpoint(mut bytes: &[u8]) -> Option<(u64, Vec<ProxyHealth>)> {
    if bytes.remaining() < 12 {
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
    bytes.is_empty().then_some((last_seq, records))
}
