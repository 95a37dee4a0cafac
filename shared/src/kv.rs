//! Opening JetStream key-value buckets on every server proxybus supports.
//!
//! async-nats' `create_key_value` first asks for the account info and cannot
//! parse the answer of nats-server 2.9 (Debian bookworm's), which lacks
//! `reserved_memory`. A bucket is only a stream with a known shape, so we create
//! that stream ourselves (as `create_key_value` would) and open it with
//! `get_key_value`, which works on 2.9 and later alike.

use std::time::Duration;

use std::collections::BTreeMap;

use async_nats::jetstream::{self, kv, stream};
use futures::StreamExt;

use crate::{Codec, Encoding, HealthStats, ProxyId};

/// Shape of a bucket to create when it is missing.
#[derive(Debug, Clone)]
pub struct BucketConfig {
    /// Bucket name (`PROXY_HEALTH`).
    pub bucket: String,
    /// What it holds.
    pub description: String,
    /// Values kept per key (1 = latest only).
    pub history: i64,
    /// Replicas in a cluster.
    pub replicas: usize,
    /// File or memory storage.
    pub storage: stream::StorageType,
    /// Age after which values expire (zero: never).
    pub max_age: Duration,
}

impl BucketConfig {
    /// A file-backed bucket keeping the latest value of each key.
    pub fn new(bucket: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            description: description.into(),
            history: 1,
            replicas: 1,
            storage: stream::StorageType::File,
            max_age: Duration::ZERO,
        }
    }
}

/// Why a bucket could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open key-value bucket {bucket}: {message}")]
pub struct BucketError {
    /// The bucket.
    pub bucket: String,
    /// What the server or client said.
    pub message: String,
}

/// Opens `config.bucket`, creating it when it does not exist.
pub async fn open_or_create(js: &jetstream::Context, config: &BucketConfig) -> Result<kv::Store, BucketError> {
    let fail = |message: String| BucketError { bucket: config.bucket.clone(), message };
    if let Ok(store) = js.get_key_value(config.bucket.as_str()).await {
        return Ok(store);
    }
    let stream_config = stream::Config {
        name: format!("KV_{}", config.bucket),
        description: Some(config.description.clone()),
        subjects: vec![format!("$KV.{}.>", config.bucket)],
        max_messages_per_subject: config.history.max(1),
        max_message_size: -1,
        max_bytes: -1,
        max_age: config.max_age,
        storage: config.storage,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: config.replicas.max(1),
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    js.get_or_create_stream(stream_config).await.map_err(|err| fail(err.to_string()))?;
    js.get_key_value(config.bucket.as_str()).await.map_err(|err| fail(err.to_string()))
}

/// Every `HealthStats` in a health bucket, by proxy id. Keys that are not proxy
/// ids (checkpoints) and values that do not decode are skipped.
pub async fn health_stats(bucket: &kv::Store) -> Result<BTreeMap<ProxyId, HealthStats>, BucketError> {
    let fail = |err: &dyn std::fmt::Display| BucketError { bucket: bucket.name.clone(), message: err.to_string() };
    let mut keys = bucket.keys().await.map_err(|err| fail(&err))?;
    let mut stats = BTreeMap::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|err| fail(&err))?;
        let Ok(id) = key.parse::<ProxyId>() else { continue };
        if let Some(bytes) = bucket.get(key.as_str()).await.map_err(|err| fail(&err))?
            && let Ok(value) = Codec::default().decode_as::<HealthStats>(Encoding::MsgPack, &bytes)
        {
            stats.insert(id, value);
        }
    }
    Ok(stats)
}
