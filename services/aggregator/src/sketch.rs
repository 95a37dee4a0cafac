//! Latency percentiles that survive a restart: an HDR histogram (1 ms to one hour,
//! two significant digits) kept sparse — only the buckets that hold samples — and
//! stored with the proxy's state as base64 of its HDR V2 encoding, so that p50/p99
//! continue exactly where they were.
//!
//! The bucket layout and the quantile rule are those of `hdrhistogram`'s
//! `Histogram::<u64>::new_with_bounds(1, 3_600_000, 2)` and its `value_at_quantile`,
//! so percentiles are the ones the earlier dense histogram gave, to the millisecond
//! (tested against it). The dense form costs 2 048 counters (16 KiB) per proxy
//! whether it saw one latency or a million; a proxy's latencies usually fall in a
//! few dozen buckets, which is all this keeps (8 bytes each).
//!
//! The stored form is the standard V2 encoding without compression (any HDR
//! library reads it); records written before, whose sketch is the deflated V2
//! encoding, still load.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use serde::{Deserialize, Serialize};

/// Largest latency the sketch tells apart (one hour); longer ones count as this.
pub(crate) const MAX_LATENCY_MS: u64 = 3_600_000;
const SIGNIFICANT_DIGITS: u8 = 2;
/// log2 of half the sub-buckets of a bucket: two significant digits need 256 sub-buckets.
const SUB_BUCKET_HALF_COUNT_MAGNITUDE: u32 = 7;
const SUB_BUCKET_HALF_COUNT: u64 = 1 << SUB_BUCKET_HALF_COUNT_MAGNITUDE;
const SUB_BUCKET_MASK: u64 = 2 * SUB_BUCKET_HALF_COUNT - 1;
/// 64 − unit magnitude (0, for a lowest value of 1) − half-count magnitude − 1.
const LEADING_ZERO_COUNT_BASE: u32 = 64 - SUB_BUCKET_HALF_COUNT_MAGNITUDE - 1;
/// Number of counters of the dense layout (the index of `MAX_LATENCY_MS` is below it).
const COUNTS_LEN: u64 = 2048;
/// An entry packs the counter index above this many bits and its count below.
const COUNT_BITS: u32 = 52;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// Cookie of the uncompressed HDR V2 encoding.
const V2_COOKIE: u32 = 0x1c84_9313;
const V2_HEADER_SIZE: usize = 40;

/// Latency distribution of one proxy.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct LatencySketch {
    /// Non-empty counters, ascending by index: `index << COUNT_BITS | count`.
    entries: Vec<u64>,
    /// Samples recorded (saturating).
    total: u64,
}

impl fmt::Debug for LatencySketch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencySketch")
            .field("count", &self.count())
            .field("p50", &self.quantile(0.5))
            .field("p99", &self.quantile(0.99))
            .finish()
    }
}

/// Why a stored sketch could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("invalid stored latency sketch: {0}")]
pub struct SketchDecodeError(String);

/// The HDR bucket of `value`: `hdrhistogram`'s `bucket_for`.
fn bucket_of(value: u64) -> u32 {
    LEADING_ZERO_COUNT_BASE - (value | SUB_BUCKET_MASK).leading_zeros()
}

/// The counter index of `value` (at most [`MAX_LATENCY_MS`]): `hdrhistogram`'s `index_for`.
fn index_of(value: u64) -> u64 {
    let bucket = bucket_of(value);
    let sub_bucket = value >> bucket;
    ((u64::from(bucket) + 1) << SUB_BUCKET_HALF_COUNT_MAGNITUDE) + sub_bucket - SUB_BUCKET_HALF_COUNT
}

/// The lowest value of counter `index`: `hdrhistogram`'s `value_for`.
fn lowest_value_of(index: u64) -> u64 {
    let bucket = (index >> SUB_BUCKET_HALF_COUNT_MAGNITUDE) as i64 - 1;
    let sub_bucket = (index & (SUB_BUCKET_HALF_COUNT - 1)) + SUB_BUCKET_HALF_COUNT;
    if bucket < 0 { sub_bucket - SUB_BUCKET_HALF_COUNT } else { sub_bucket << bucket }
}

/// The highest value counted in counter `index`: `hdrhistogram`'s `highest_equivalent`.
fn highest_value_of(index: u64) -> u64 {
    let lowest = lowest_value_of(index);
    lowest + (1 << bucket_of(lowest)) - 1
}

impl LatencySketch {
    /// An empty sketch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one latency; values over [`MAX_LATENCY_MS`] count as that.
    pub fn record(&mut self, latency_ms: u64) {
        self.add(index_of(latency_ms.min(MAX_LATENCY_MS)), 1);
    }

    fn add(&mut self, index: u64, count: u64) {
        if count == 0 {
            return;
        }
        self.total = self.total.saturating_add(count);
        match self.entries.binary_search_by_key(&index, |entry| entry >> COUNT_BITS) {
            Ok(at) => {
                let entry = &mut self.entries[at];
                let sum = ((*entry & COUNT_MASK) + count.min(COUNT_MASK)).min(COUNT_MASK);
                *entry = (index << COUNT_BITS) | sum;
            }
            Err(at) => self.entries.insert(at, (index << COUNT_BITS) | count.min(COUNT_MASK)),
        }
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Non-empty buckets (what the sketch costs: 8 bytes each).
    pub fn buckets(&self) -> usize {
        self.entries.len()
    }

    /// The latency at `quantile` (0..=1), or `None` when nothing was recorded: the
    /// highest value of the first bucket where the running count reaches
    /// `ceil(quantile × count)` (at least 1), as `hdrhistogram` answers.
    pub fn quantile(&self, quantile: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let quantile = quantile.min(1.0);
        let target = ((quantile * self.total as f64).ceil() as u64).max(1);
        let mut running = 0_u64;
        for entry in &self.entries {
            running += entry & COUNT_MASK;
            if running >= target {
                let index = entry >> COUNT_BITS;
                let value = if quantile == 0.0 { lowest_value_of(index) } else { highest_value_of(index) };
                return Some(value as f64);
            }
        }
        // Only when bucket counts saturated below the total: the last bucket holds the top.
        self.entries.last().map(|entry| highest_value_of(entry >> COUNT_BITS) as f64)
    }

    /// The V2 encoding (uncompressed), base64.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(V2_HEADER_SIZE + 3 * self.entries.len() + 4);
        bytes.extend_from_slice(&V2_COOKIE.to_be_bytes());
        bytes.extend_from_slice(&0_u32.to_be_bytes()); // payload length, set below
        bytes.extend_from_slice(&0_u32.to_be_bytes()); // normalizing index offset
        bytes.extend_from_slice(&u32::from(SIGNIFICANT_DIGITS).to_be_bytes());
        bytes.extend_from_slice(&1_u64.to_be_bytes()); // lowest discernible value
        bytes.extend_from_slice(&MAX_LATENCY_MS.to_be_bytes());
        bytes.extend_from_slice(&1.0_f64.to_be_bytes()); // integer to double ratio
        // Counters up to the last non-empty one; a run of n > 1 empty counters is −n,
        // a single empty counter is 0 (as hdrhistogram writes them).
        let mut next = 0_u64;
        for entry in &self.entries {
            let index = entry >> COUNT_BITS;
            match index - next {
                0 => {}
                1 => write_varint(&mut bytes, 0),
                zeros => write_varint(&mut bytes, zig_zag(-(zeros as i64))),
            }
            write_varint(&mut bytes, zig_zag((entry & COUNT_MASK) as i64));
            next = index + 1;
        }
        if self.entries.is_empty() {
            write_varint(&mut bytes, 0);
        }
        let payload_len = (bytes.len() - V2_HEADER_SIZE) as u32;
        bytes[4..8].copy_from_slice(&payload_len.to_be_bytes());
        STANDARD.encode(bytes)
    }

    /// Reads an encoding made by [`encode`](Self::encode), or by the earlier dense
    /// sketch (deflated V2), or any V2 histogram: values over 1 h count as that, like [`record`](Self::record).
    pub fn decode(text: &str) -> Result<Self, SketchDecodeError> {
        let bytes = STANDARD.decode(text).map_err(|err| SketchDecodeError(err.to_string()))?;
        if let Some(sketch) = Self::decode_own_layout(&bytes) {
            return Ok(sketch);
        }
        let histogram: Histogram<u64> =
            Deserializer::new().deserialize(&mut &bytes[..]).map_err(|err| SketchDecodeError(format!("{err:?}")))?;
        let mut sketch = Self::new();
        for bucket in histogram.iter_recorded() {
            let value = bucket.value_iterated_to().min(MAX_LATENCY_MS);
            sketch.add(index_of(value), bucket.count_at_value());
        }
        Ok(sketch)
    }

    /// Fast path: an uncompressed V2 encoding with exactly this layout; `None`
    /// for anything else, which the general deserializer then reads (or refuses).
    fn decode_own_layout(bytes: &[u8]) -> Option<Self> {
        let header = bytes.get(..V2_HEADER_SIZE)?;
        let u32_at = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().expect("8 bytes"));
        let same_layout = u32_at(0) == V2_COOKIE
            && u32_at(8) == 0
            && u32_at(12) == u32::from(SIGNIFICANT_DIGITS)
            && u64_at(16) == 1
            && u64_at(24) == MAX_LATENCY_MS
            && f64::from_bits(u64_at(32)) == 1.0;
        if !same_layout || bytes.len() != V2_HEADER_SIZE + u32_at(4) as usize {
            return None;
        }
        let mut payload = &bytes[V2_HEADER_SIZE..];
        let mut sketch = Self::new();
        let mut index = 0_u64;
        while !payload.is_empty() {
            let value = zig_zag_decode(read_varint(&mut payload)?);
            if value < 0 {
                index = index.checked_add(value.unsigned_abs())?;
            } else {
                if index >= COUNTS_LEN {
                    return None;
                }
                sketch.add(index, value as u64);
                index += 1;
            }
        }
        Some(sketch)
    }
}

fn zig_zag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn zig_zag_decode(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// LEB128 as hdrhistogram writes it (values here stay below 2^56, so at most 8 bytes).
fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads hdrhistogram's LEB128 (whose ninth byte, if any, carries 8 bits).
fn read_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0_u64;
    for position in 0..9 {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        if position == 8 {
            return Some(value | (u64::from(byte) << 56));
        }
        value |= u64::from(byte & 0x7f) << (7 * position);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

impl Serialize for LatencySketch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.encode())
    }
}

impl<'de> Deserialize<'de> for LatencySketch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::decode(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use hdrhistogram::serialization::{Serializer, V2DeflateSerializer, V2Serializer};

    use super::*;

    fn dense() -> Histogram<u64> {
        Histogram::new_with_bounds(1, MAX_LATENCY_MS, SIGNIFICANT_DIGITS).unwrap()
    }

    /// A deterministic spread of latencies: small, large, beyond the bound, and repeats.
    fn samples(seed: u64, n: usize) -> Vec<u64> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match x % 10 {
                    0 => x % 5,
                    1..=6 => 20 + x % 480,
                    7 | 8 => x % 100_000,
                    _ => x % (2 * MAX_LATENCY_MS),
                }
            })
            .collect()
    }

    #[test]
    fn percentiles_survive_encoding() {
        let mut sketch = LatencySketch::new();
        assert_eq!(sketch.quantile(0.5), None);
        for ms in 1..=1000 {
            sketch.record(ms);
        }
        sketch.record(10 * MAX_LATENCY_MS);
        let p50 = sketch.quantile(0.5).unwrap();
        assert!((495.0..=510.0).contains(&p50), "{p50}");
        let back = LatencySketch::decode(&sketch.encode()).unwrap();
        assert_eq!(back, sketch);
        assert_eq!(back.count(), 1001);
        assert_eq!(back.quantile(0.99), sketch.quantile(0.99));
        assert_eq!(back.encode(), sketch.encode(), "encoding is deterministic");
        assert!(LatencySketch::decode("not base64!").is_err());
        assert!(LatencySketch::decode("AAAA").is_err());
        assert_eq!(LatencySketch::decode(&LatencySketch::new().encode()).unwrap(), LatencySketch::new());
    }

    #[test]
    fn quantiles_are_those_of_the_dense_hdr_histogram() {
        for (seed, n) in [(1, 1), (2, 2), (3, 17), (4, 500), (5, 20_000)] {
            let (mut sketch, mut histogram) = (LatencySketch::new(), dense());
            for ms in samples(seed, n) {
                sketch.record(ms);
                histogram.saturating_record(ms.min(MAX_LATENCY_MS));
            }
            assert_eq!(sketch.count(), histogram.len());
            for q in [0.0, 0.001, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0, 1.5] {
                assert_eq!(sketch.quantile(q), Some(histogram.value_at_quantile(q) as f64), "seed {seed} q {q}");
            }
        }
    }

    #[test]
    fn the_encoding_is_hdr_v2_and_old_deflated_sketches_still_load() {
        let (mut sketch, mut histogram) = (LatencySketch::new(), dense());
        for ms in samples(7, 3000) {
            sketch.record(ms);
            histogram.saturating_record(ms.min(MAX_LATENCY_MS));
        }
        // What this sketch writes is byte for byte what hdrhistogram's V2 serializer writes.
        let mut v2 = Vec::new();
        V2Serializer::new().serialize(&histogram, &mut v2).unwrap();
        assert_eq!(sketch.encode(), STANDARD.encode(&v2));
        let read: Histogram<u64> =
            Deserializer::new().deserialize(&mut &STANDARD.decode(sketch.encode()).unwrap()[..]).unwrap();
        assert_eq!(read, histogram);
        // A record stored by the dense sketch (deflated V2) loads into the same sketch.
        let mut deflated = Vec::new();
        V2DeflateSerializer::new().serialize(&histogram, &mut deflated).unwrap();
        assert_eq!(LatencySketch::decode(&STANDARD.encode(&deflated)).unwrap(), sketch);
        // So does the general path for a V2 encoding of another layout (values clamped).
        let mut other = Histogram::<u64>::new_with_bounds(1, 10 * MAX_LATENCY_MS, 3).unwrap();
        other.record(5 * MAX_LATENCY_MS).unwrap();
        other.record(42).unwrap();
        let mut bytes = Vec::new();
        V2Serializer::new().serialize(&other, &mut bytes).unwrap();
        let read = LatencySketch::decode(&STANDARD.encode(&bytes)).unwrap();
        let top = dense().highest_equivalent(MAX_LATENCY_MS) as f64;
        assert_eq!((read.count(), read.quantile(0.0), read.quantile(1.0)), (2, Some(42.0), Some(top)));
    }

    #[test]
    fn a_typical_proxy_costs_a_few_hundred_bytes() {
        let mut sketch = LatencySketch::new();
        for ms in samples(9, 100_000).into_iter().map(|ms| 20 + ms % 480) {
            sketch.record(ms);
        }
        assert!(sketch.buckets() <= 400, "{}", sketch.buckets());
        assert!(sketch.entries.capacity() * 8 <= 4096);
    }
}
