//! Latency percentiles that survive a restart: an HDR histogram (1 ms to one hour,
//! two significant digits) stored with the proxy's state as base64 of its
//! compressed V2 encoding, so that p50/p99 continue exactly where they were.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

/// Largest latency the sketch tells apart (one hour); longer ones count as this.
pub const MAX_LATENCY_MS: u64 = 3_600_000;
const SIGNIFICANT_DIGITS: u8 = 2;

/// Latency distribution of one proxy.
#[derive(Clone, PartialEq)]
pub struct LatencySketch {
    histogram: Histogram<u64>,
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

impl Default for LatencySketch {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a stored sketch could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("invalid stored latency sketch: {0}")]
pub struct SketchDecodeError(String);

impl LatencySketch {
    /// An empty sketch.
    pub fn new() -> Self {
        let histogram =
            Histogram::new_with_bounds(1, MAX_LATENCY_MS, SIGNIFICANT_DIGITS).expect("constant bounds are valid");
        Self { histogram }
    }

    /// Records one latency; values over [`MAX_LATENCY_MS`] count as that.
    pub fn record(&mut self, latency_ms: u64) {
        self.histogram.saturating_record(latency_ms.min(MAX_LATENCY_MS));
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The latency at `quantile` (0..=1), or `None` when nothing was recorded.
    pub fn quantile(&self, quantile: f64) -> Option<f64> {
        (!self.histogram.is_empty()).then(|| self.histogram.value_at_quantile(quantile) as f64)
    }

    /// The compressed V2 encoding, base64.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::new();
        V2DeflateSerializer::new().serialize(&self.histogram, &mut bytes).expect("serializing to memory cannot fail");
        STANDARD.encode(bytes)
    }

    /// Reads an encoding made by [`encode`](Self::encode).
    pub fn decode(text: &str) -> Result<Self, SketchDecodeError> {
        let bytes = STANDARD.decode(text).map_err(|err| SketchDecodeError(err.to_string()))?;
        let histogram: Histogram<u64> =
            Deserializer::new().deserialize(&mut &bytes[..]).map_err(|err| SketchDecodeError(format!("{err:?}")))?;
        let mut sketch = Self::new();
        sketch.histogram.add(&histogram).map_err(|err| SketchDecodeError(format!("{err:?}")))?;
        Ok(sketch)
    }
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
    use super::*;

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
    }
}
