//! Opening the JetStream key-value buckets proxybus keeps (`PROXY_HEALTH`), with async-nats'
//! own key-value API, and reading health records out of them.
//!
//! A bucket made by any other NATS client (`nats kv add`, nats-py's `create_key_value`) is the
//! same stream shape and opens here unchanged (tested against nats-py in `shared/tests/kv.rs`).
//!
//! [`follow`] (and [`follow_health`]) load a bucket and then follow its changes
//! with a KV watch, so a reader starts from the stored state and misses nothing.

use std::collections::BTreeMap;
use std::time::Duration;

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
///
/// The keys come from the stream's own subject state ([`stored_keys`]), not from a KV
/// key listing, which skips keys rewritten while it reads; without the permission to
/// ask for the stream's state, from the listing.
pub async fn health_stats(bucket: &kv::Store) -> Result<BTreeMap<ProxyId, HealthStats>, BucketError> {
    let fail = |err: &dyn std::fmt::Display| BucketError { bucket: bucket.name.clone(), message: err.to_string() };
    let keys = current_keys(bucket).await?;
    let mut stats = BTreeMap::new();
    for key in keys {
        let Ok(id) = key.parse::<ProxyId>() else { continue };
        if let Some(bytes) = bucket.get(key.as_str()).await.map_err(|err| fail(&err))?
            && let Ok(value) = Codec::default().decode_as::<HealthStats>(Encoding::MsgPack, &bytes)
        {
            stats.insert(id, value);
        }
    }
    Ok(stats)
}

/// The keys of `bucket` that hold a message now: [`stored_keys`] (a snapshot of the
/// stream's index, which a writer cannot make skip a key), or, without the permission
/// for `$JS.API.STREAM.INFO`, a KV key listing (`Store::keys`, which may skip keys
/// rewritten while it reads). Keys holding a delete marker may be among them: read
/// each with [`kv::Store::get`], which gives none for those.
///
/// # Errors
/// [`BucketError`] when neither the stream's state nor the listing can be read.
pub async fn current_keys(bucket: &kv::Store) -> Result<Vec<String>, BucketError> {
    let fail = |err: &dyn std::fmt::Display| BucketError { bucket: bucket.name.clone(), message: err.to_string() };
    match stored_keys(bucket).await {
        Ok(keys) => Ok(keys),
        Err(err) => {
            tracing::debug!(bucket = %bucket.name, error = %err, "no stream state; listing the keys instead");
            let mut listed = bucket.keys().await.map_err(|err| fail(&err))?;
            let mut keys = Vec::new();
            while let Some(key) = listed.next().await {
                keys.push(key.map_err(|err| fail(&err))?);
            }
            Ok(keys)
        }
    }
}

/// The keys of `bucket` that hold a message now (a value, or a delete marker that
/// [`kv::Store::get`] reads as none), from one `STREAM.INFO` with a subjects filter: a
/// snapshot of the stream's index. A KV key listing (async-nats' `Store::keys`, an
/// ordered consumer delivering the last message of each subject) skips keys rewritten
/// while it delivers — 39 of 300 listings of 12 keys, two of them rewritten by four
/// writers, in one run of `shared/tests/kv.rs`'s loop counting `Store::keys` instead; `proxybus health` and the demo's tables showed 10 of
/// 12 proxies, missing the two whose records the REST polls rewrote most often.
///
/// # Errors
/// The stream's state cannot be read (no permission for `$JS.API.STREAM.INFO`, no server).
pub async fn stored_keys(bucket: &kv::Store) -> Result<Vec<String>, async_nats::Error> {
    let mut subjects = bucket.stream.info_with_subjects(format!("{}>", bucket.prefix)).await?;
    let mut keys = Vec::new();
    while let Some(entry) = subjects.next().await {
        let (subject, _) = entry?;
        if let Some(key) = subject.strip_prefix(bucket.prefix.as_str()) {
            keys.push(key.to_owned());
        }
    }
    Ok(keys)
}

/// One change of a bucket, as [`follow`] hands it over.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyChange<T> {
    /// `key` holds `value` (a stored value at start, or a new one).
    Put {
        /// The key.
        key: String,
        /// Its value, decoded.
        value: T,
    },
    /// `key` was deleted or purged.
    Deleted {
        /// The key.
        key: String,
    },
    /// Every value stored when the watch began has been handed over; what follows
    /// are changes. Sent again after each re-watch.
    Current,
}

/// Hands every value of `bucket` (MessagePack or JSON `T`), then every change, to
/// `on_change`, until `shutdown` completes. A watch that ends (server restart,
/// lost connection) is made again, with the stored values first, so no change is
/// missed; readers keep the newest of what they get twice (`health::is_newer`).
/// Values that do not decode as `T` are counted in the log and skipped.
///
/// The watch is a JetStream ordered consumer with `DeliverPolicy::LastPerSubject`
/// (async-nats' `watch_with_history`), the way `nats kv watch` follows a bucket.
pub async fn follow<T, F>(bucket: &kv::Store, shutdown: impl std::future::Future<Output = ()>, mut on_change: F)
where
    T: serde::de::DeserializeOwned,
    F: FnMut(KeyChange<T>),
{
    tokio::pin!(shutdown);
    let codec = Codec::new(usize::MAX);
    let mut pause = Duration::from_millis(100);
    loop {
        let watch = tokio::select! {
            biased;
            () = &mut shutdown => return,
            watch = bucket.watch_with_history(">") => watch,
        };
        let mut watch = match watch {
            Ok(watch) => watch,
            Err(err) => {
                tracing::warn!(bucket = %bucket.name, error = %err, "cannot watch the bucket; retrying");
                tokio::select! {
                    biased;
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        pause = Duration::from_millis(100);
        // An empty bucket delivers nothing: it is current at once.
        let mut current = bucket_is_empty(bucket).await;
        if current {
            on_change(KeyChange::Current);
        }
        loop {
            let entry = tokio::select! {
                biased;
                () = &mut shutdown => return,
                entry = watch.next() => entry,
            };
            let entry = match entry {
                Some(Ok(entry)) => entry,
                Some(Err(err)) => {
                    tracing::warn!(bucket = %bucket.name, error = %err, "bucket watch failed; watching again");
                    break;
                }
                None => break,
            };
            match entry.operation {
                kv::Operation::Put => match codec.decode_as::<T>(sniff(&entry.value), &entry.value) {
                    Ok(value) => on_change(KeyChange::Put { key: entry.key, value }),
                    Err(err) => {
                        tracing::warn!(bucket = %bucket.name, key = %entry.key, error = %err, "skipping an undecodable value")
                    }
                },
                kv::Operation::Delete | kv::Operation::Purge => on_change(KeyChange::Deleted { key: entry.key }),
            }
            if !current && entry.delta == 0 {
                current = true;
                on_change(KeyChange::Current);
            }
        }
    }
}

/// Whether a bucket holds no value at all (its stream has no message).
async fn bucket_is_empty(bucket: &kv::Store) -> bool {
    let mut stream = bucket.stream.clone();
    stream.info().await.map(|info| info.state.messages == 0).unwrap_or(false)
}

/// MessagePack unless the value is a JSON object or array.
fn sniff(value: &[u8]) -> Encoding {
    match value.first() {
        Some(b'{' | b'[') => Encoding::Json,
        _ => Encoding::MsgPack,
    }
}

/// Opens (creating when missing) the health bucket `PROXY_HEALTH` the way the
/// aggregator does, for readers that may start before it.
pub async fn open_health_bucket(js: &jetstream::Context) -> Result<kv::Store, BucketError> {
    open_or_create(js, &BucketConfig::new(crate::subject::HEALTH_BUCKET, "proxybus health stats, one key per proxy_id"))
        .await
}

/// Opens bucket `name` for reading only, waiting until it exists: a reader (resolver, pool)
/// never creates the buckets the aggregator owns, and may start before it. `on_missing` runs at
/// each look that finds no bucket (a reader can take that as "nothing stored yet"); the next
/// look follows after [`MISSING_BUCKET_RETRY`]. Race it against shutdown.
pub async fn wait_for_bucket(js: &jetstream::Context, name: &str, mut on_missing: impl FnMut()) -> kv::Store {
    loop {
        match js.get_key_value(name).await {
            Ok(bucket) => return bucket,
            Err(err) => {
                tracing::debug!(bucket = name, error = %err, "bucket not there yet");
                on_missing();
                tokio::time::sleep(MISSING_BUCKET_RETRY).await;
            }
        }
    }
}

/// How long [`wait_for_bucket`] waits between looks.
pub const MISSING_BUCKET_RETRY: Duration = Duration::from_secs(1);

/// Opens (creating when missing) bucket `PROXY_INVENTORY`, where pool services
/// publish their inventories (proxy ids and regions, never credentials).
pub async fn open_inventory_bucket(js: &jetstream::Context) -> Result<kv::Store, BucketError> {
    open_or_create(
        js,
        &BucketConfig::new(crate::subject::INVENTORY_BUCKET, "proxybus pool inventories: proxy ids and regions"),
    )
    .await
}

/// Follows bucket `PROXY_HEALTH` (see [`follow`]): `on_change` gets every stored
/// `HealthStats` at start and every change after, until `shutdown`. Keys that are
/// not proxy ids are skipped.
pub async fn follow_health(
    bucket: &kv::Store,
    shutdown: impl std::future::Future<Output = ()>,
    mut on_change: impl FnMut(KeyChange<HealthStats>),
) {
    follow::<HealthStats, _>(bucket, shutdown, |change| match &change {
        KeyChange::Put { key, .. } | KeyChange::Deleted { key } if key.parse::<ProxyId>().is_err() => {}
        _ => on_change(change),
    })
    .await;
}

/// Creates (when missing) region `region`'s mirror of `PROXY_HEALTH` — bucket
/// `PROXY_HEALTH_{REGION}` ([`regional_health_bucket`](crate::subject::regional_health_bucket)),
/// a JetStream mirror placed in the NATS cluster named `region`, with `replicas` replicas — and
/// opens it for local reads ([`open_health_mirror`]). The server keeps it in step with
/// `PROXY_HEALTH`; as a mirror with direct gets (`mirror_direct`) it also answers direct gets
/// of `PROXY_HEALTH` itself from its region. Make `PROXY_HEALTH` first (the aggregator does).
///
/// # Errors
/// [`BucketError`] with what the server said when the mirror neither exists nor can be made
/// (no cluster of that name, no JetStream).
pub async fn ensure_health_mirror(
    js: &jetstream::Context,
    region: &crate::Region,
    replicas: usize,
) -> Result<kv::Store, BucketError> {
    let bucket = crate::subject::regional_health_bucket(region);
    if js.get_key_value(bucket.as_str()).await.is_err() {
        let created = js
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                description: format!("read-only mirror of {} in region {region}", crate::subject::HEALTH_BUCKET),
                history: 1,
                num_replicas: replicas.max(1),
                mirror: Some(stream::Source { name: crate::subject::HEALTH_BUCKET.to_owned(), ..Default::default() }),
                placement: Some(stream::Placement { cluster: Some(region.to_string()), tags: Vec::new() }),
                ..Default::default()
            })
            .await;
        if let Err(err) = created
            && js.get_key_value(bucket.as_str()).await.is_err()
        {
            return Err(BucketError { bucket, message: err.to_string() });
        }
    }
    open_health_mirror(js, region).await
}

/// Opens region `region`'s mirror of `PROXY_HEALTH` as a bucket with `PROXY_HEALTH`'s keys,
/// read from the mirror's own servers: [`health_stats`], [`follow_health`] and `get` work on it
/// unchanged and keep working while the region holding `PROXY_HEALTH` is unreachable; a `put`
/// goes to `PROXY_HEALTH` (readers never write). async-nats opens a mirror bucket under its own
/// key prefix, where a mirror holds none, so the store is assembled here as nats.go opens one.
///
/// # Errors
/// [`BucketError`] when the mirror does not exist or is not reachable.
pub async fn open_health_mirror(js: &jetstream::Context, region: &crate::Region) -> Result<kv::Store, BucketError> {
    let bucket = crate::subject::regional_health_bucket(region);
    let stream_name = format!("KV_{bucket}");
    let stream =
        js.get_stream(stream_name.as_str()).await.map_err(|err| BucketError { bucket, message: err.to_string() })?;
    let prefix = format!("$KV.{}.", crate::subject::HEALTH_BUCKET);
    Ok(kv::Store {
        name: crate::subject::HEALTH_BUCKET.to_owned(),
        stream_name,
        prefix: prefix.clone(),
        put_prefix: Some(prefix),
        use_jetstream_prefix: false,
        stream,
    })
}
