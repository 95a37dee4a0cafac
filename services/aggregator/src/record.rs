//! How a proxy's state is stored: the KV value of key `{proxy_id}` in bucket
//! `PROXY_HEALTH` is its [`HealthStats`] (MessagePack, named fields) with one more
//! field, `fold_state`, that readers of `HealthStats` ignore as an unknown field.

use bytes::Bytes;
use proxybus_shared::{Codec, DecodeError, Encoding, HealthStats};
use serde::Deserialize;

use crate::fold::{FoldState, ProxyHealth};

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
    encode_stored(record, out, &mut Vec::new()).map(|_| ())
}

/// Where, in a stored record, its public form is: the `HealthStats` alone, as
/// published on `proxy.v1.health.{region}` ([`PublicPart::payload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicPart {
    /// Entries of the public map (the stored map has one more, `fold_state`).
    entries: u32,
    /// The public map's entries, as offsets into the stored record.
    start: u32,
    end: u32,
}

impl PublicPart {
    /// The public form of `stored` (the record this part was returned with): the
    /// map header for its own entries and the stats' entries, copied.
    pub fn payload(&self, stored: &[u8]) -> Bytes {
        let fields = &stored[self.start as usize..self.end as usize];
        let mut payload = Vec::with_capacity(fields.len() + 5);
        // Writing to a Vec cannot fail.
        let _ = rmp::encode::write_map_len(&mut payload, self.entries);
        payload.extend_from_slice(fields);
        payload.into()
    }
}

/// Appends the stored form of `record` to `out` and says where its public form is
/// in it, encoding the stats once (into `scratch`, cleared first): the stored form
/// is the public map with one more entry, `fold_state`, last. Publishing used to
/// read each committed record back and encode its stats again, 7 % of the
/// aggregator's samples during `fold` (docs/benchmarks.md, round 6).
pub fn encode_stored(
    record: &ProxyHealth,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<PublicPart, RecordError> {
    let encode_err = |err: rmp_serde::encode::Error| RecordError::Encode(err.into());
    scratch.clear();
    rmp_serde::encode::write_named(scratch, &record.stats).map_err(encode_err)?;
    let mut fields = &scratch[..];
    let entries = rmp::decode::read_map_len(&mut fields)
        .map_err(|err| encode_err(rmp_serde::encode::Error::Syntax(format!("stats are not a map: {err}"))))?;
    let record_start = out.len();
    rmp::encode::write_map_len(out, entries + 1).map_err(|err| encode_err(err.into()))?;
    let start = out.len() - record_start;
    out.extend_from_slice(fields);
    let end = out.len() - record_start;
    rmp::encode::write_str(out, FOLD_STATE).map_err(|err| encode_err(err.into()))?;
    rmp_serde::encode::write_named(out, &record.fold).map_err(encode_err)?;
    let offset = |at: usize| {
        u32::try_from(at).map_err(|_| encode_err(rmp_serde::encode::Error::Syntax("record over 4 GiB".into())))
    };
    Ok(PublicPart { entries, start: offset(start)?, end: offset(end)? })
}

/// The stored record's field that holds the fold's own state.
const FOLD_STATE: &str = "fold_state";

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

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use proxybus_shared::ProxyId;
    use serde::Serialize;

    use super::*;
    use crate::fold::FoldState;

    /// The stored form as serde writes it with `flatten`: what `encode_both` must match.
    #[derive(Serialize)]
    struct Flattened<'a> {
        #[serde(flatten)]
        stats: &'a HealthStats,
        fold_state: &'a FoldState,
    }

    fn record(n: u64, region: Option<&str>) -> ProxyHealth {
        let id: ProxyId = format!("{n:016x}").parse().unwrap();
        let region = region.map(|r| r.parse().unwrap());
        let mut stats = HealthStats::new(id, format!("http://10.0.0.{n}:3128"), region, DateTime::UNIX_EPOCH);
        stats.total = n;
        stats.failures = n / 3;
        let mut fold = FoldState::default();
        for ms in 0..n {
            fold.latency.record(ms * 37);
        }
        ProxyHealth { stats, fold }
    }

    #[test]
    fn the_stored_form_is_the_public_stats_and_the_fold_state() {
        let codec = Codec::default();
        for record in [record(1, None), record(40, Some("eu-west")), record(700, Some("us-east"))] {
            let mut stored = vec![0xaa];
            let part = encode_stored(&record, &mut stored, &mut vec![0xbb]).unwrap();
            let stored = &stored[1..];
            let public = part.payload(stored);
            let flattened = Flattened { stats: &record.stats, fold_state: &record.fold };
            assert_eq!(stored, rmp_serde::to_vec_named(&flattened).unwrap(), "the bytes serde's flatten writes");
            assert_eq!(public, codec.encode(Encoding::MsgPack, &record.stats).unwrap(), "the stats as published");
            assert_eq!(decode(stored).unwrap(), record);
            assert_eq!(decode_stats(&public).unwrap(), record.stats);
            assert_eq!(decode_stats(stored).unwrap(), record.stats, "readers of HealthStats skip fold_state");
        }
    }
}
