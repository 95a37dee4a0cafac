//! Opening the JetStream key-value buckets proxybus keeps (`PROXY_HEALTH`), with async-nats'
//! own key-value API, and reading health records out of them.
//!
//! A bucket made by any other NATS client (`nats kv add`, nats-py's `create_key_value`) is the
//! same stream shape and opens here unchanged (tested against nats-py in `shared/tests/kv.rs`).

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

/// Opens `config.bucket`, creating it with async-nats' `create_key_value` when it does not
/// exist. A bucket that exists is opened as it is, whatever its settings.
///
/// # Errors
/// [`BucketError`] with what the server said when the bucket neither opens nor can be made.
pub async fn open_or_create(js: &jetstream::Context, config: &BucketConfig) -> Result<kv::Store, BucketError> {
    let fail = |message: String| BucketError { bucket: config.bucket.clone(), message };
    if let Ok(store) = js.get_key_value(config.bucket.as_str()).await {
        return Ok(store);
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: config.bucket.clone(),
            description: config.description.clone(),
            history: config.history.max(1),
            max_age: config.max_age,
            storage: config.storage,
            num_replicas: config.replicas.max(1),
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another process may have made it between our look and our create.
        Err(err) => js.get_key_value(config.bucket.as_str()).await.map_err(|_| fail(err.to_string())),
    }
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
