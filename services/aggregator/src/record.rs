//! How a proxy's state is stored: the KV value of key `{proxy_id}` in bucket
//! `PROXY_HEALTH` is its [`HealthStats`] (MessagePack, named fields) with one more
//! field, `fold_state`, that readers of `HealthStats` ignore as an unknown field.

use proxybus_shared::{Codec, DecodeError, Encoding, HealthStats};
use serde::{Deserialize, Serialize};

use crate::fold::{FoldState, ProxyHealth};

#[derive(Serialize)]
struct StoredRef<'a> {
    #[serde(flatten)]
    stats: &'a HealthStats,
    fold_state: &'a FoldState,
}

#[derive(Deserialize)]
struct FoldOnly {
    #[serde(default)]
    fold_state: Option<FoldState>,
}

/// Why a stored value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The value is not a `HealthStats` or its `fold_state` is invalid.
    #[error("invalid stored health record: {0}")]
    Decode(#[from] DecodeError),
    /// Encoding failed (never for well-formed state).
    #[error("cannot encode health record: {0}")]
    Encode(#[from] proxybus_shared::codec::EncodeError),
}

/// The stored form of `record`.
pub fn encode(record: &ProxyHealth) -> Result<bytes::Bytes, RecordError> {
    let mut out = Vec::new();
    encode_into(record, &mut out)?;
    Ok(out.into())
}

/// Appends the stored form of `record` to `out` (what [`encode`] returns), so that a
/// commit encodes each record once into one buffer and puts slices of it.
pub fn encode_into(record: &ProxyHealth, out: &mut Vec<u8>) -> Result<(), RecordError> {
    let stored = StoredRef { stats: &record.stats, fold_state: &record.fold };
    rmp_serde::encode::write_named(out, &stored).map_err(|err| RecordError::Encode(err.into()))
}

/// Reads a stored value; a value without `fold_state` (written by something else)
/// starts the fold's own state afresh.
pub fn decode(bytes: &[u8]) -> Result<ProxyHealth, RecordError> {
    let stats = decode_stats(bytes)?;
    let fold: FoldOnly = Codec::new(usize::MAX).decode_as(Encoding::MsgPack, bytes)?;
    Ok(ProxyHealth { stats, fold: fold.fold_state.unwrap_or_default() })
}

/// Reads only the [`HealthStats`] of a stored value (what is published: `fold_state`
/// is skipped as an unknown field).
pub fn decode_stats(bytes: &[u8]) -> Result<HealthStats, RecordError> {
    Ok(Codec::new(usize::MAX).decode_as(Encoding::MsgPack, bytes)?)
}

/// The stats as published and pushed: without the fold's own state.
pub fn public_json(stats: &[HealthStats]) -> Result<bytes::Bytes, RecordError> {
    Ok(Codec::default().encode(Encoding::Json, &stats)?)
}
