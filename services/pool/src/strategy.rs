//! Selection strategies and the peak-EWMA latency estimate `p2c_ewma` weighs.
//!
//! | strategy | picks | state |
//! | --- | --- | --- |
//! | `round_robin` | the healthy proxies in turn | a counter per region |
//! | `random` | uniformly at random | — |
//! | `weighted` | at random, in proportion to `weight` | — |
//! | `least_connections` | the fewest active leases per unit of `weight` (ties at random) | leases |
//! | `p2c_ewma` (default) | two at random, the one with the lower peak-EWMA latency × (leases + 1) | leases, latency |
//!
//! `p2c_ewma` is the balancer of tower and Linkerd: comparing two random choices
//! avoids the herd that "always the best" causes, and the peak EWMA reacts to a
//! slow-down at once while forgetting it gradually.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How a pool picks among its healthy proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// In turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// At random in proportion to `weight`.
    Weighted,
    /// Fewest active leases per unit of weight.
    LeastConnections,
    /// Power of two choices by peak-EWMA latency × (active leases + 1).
    #[default]
    P2cEwma,
}

impl Strategy {
    /// Every strategy.
    pub const ALL: [Strategy; 5] =
        [Strategy::RoundRobin, Strategy::Random, Strategy::Weighted, Strategy::LeastConnections, Strategy::P2cEwma];

    /// The strategy's name in the inventory and in `ProxyResponse.strategy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::Random => "random",
            Strategy::Weighted => "weighted",
            Strategy::LeastConnections => "least_connections",
            Strategy::P2cEwma => "p2c_ewma",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a strategy knows about one healthy proxy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    /// Relative weight, > 0.
    pub(crate) weight: f64,
    /// Active leases.
    pub(crate) leases: u32,
    /// Latency estimate in milliseconds.
    pub(crate) latency_ms: f64,
}

/// Picks the index of one of `candidates` (not empty); `turn` is the region's
/// round-robin counter.
pub(crate) fn pick(strategy: Strategy, candidates: &[Candidate], turn: &mut u64, rng: &mut impl Rng) -> usize {
    debug_assert!(!candidates.is_empty());
    let n = candidates.len();
    if n == 1 {
        return 0;
    }
    match strategy {
        Strategy::RoundRobin => {
            let index = (*turn % n as u64) as usize;
            *turn = turn.wrapping_add(1);
            index
        }
        Strategy::Random => rng.random_range(0..n),
        Strategy::Weighted => {
            let total: f64 = candidates.iter().map(|c| c.weight).sum();
            let mut point = rng.random::<f64>() * total;
            for (i, candidate) in candidates.iter().enumerate() {
                if point < candidate.weight {
                    return i;
                }
                point -= candidate.weight;
            }
            n - 1
        }
        Strategy::LeastConnections => {
            let load = |c: &Candidate| f64::from(c.leases) / c.weight;
            let least = candidates.iter().map(load).fold(f64::INFINITY, f64::min);
            let tied: Vec<usize> = (0..n).filter(|&i| load(&candidates[i]) <= least * (1.0 + 1e-9)).collect();
            tied[rng.random_range(0..tied.len())]
        }
        Strategy::P2cEwma => {
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let cost = |c: &Candidate| c.latency_ms.max(0.0) * f64::from(c.leases.saturating_add(1));
            if cost(&candidates[b]) < cost(&candidates[a]) { b } else { a }
        }
    }
}

/// Peak-EWMA latency estimate, as tower's `PeakEwma`: a sample above the estimate
/// replaces it at once; one below is averaged in with a weight that grows with
/// the time since the last sample; without samples the estimate decays towards
/// zero, so that an idle proxy is tried again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeakEwma {
    estimate_ms: f64,
    stamp: Instant,
    decay: Duration,
}

impl PeakEwma {
    /// An estimate starting at `sample_ms`.
    pub(crate) fn new(sample_ms: f64, decay: Duration, now: Instant) -> Self {
        Self { estimate_ms: sample_ms, stamp: now, decay }
    }

    fn decay_factor(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        let tau = self.decay.as_secs_f64().max(1e-3);
        (-elapsed / tau).exp()
    }

    /// Folds in one latency sample.
    pub(crate) fn observe(&mut self, sample_ms: f64, now: Instant) {
        if sample_ms > self.estimate_ms {
            self.estimate_ms = sample_ms;
        } else {
            let decay = self.decay_factor(now);
            self.estimate_ms = self.estimate_ms * decay + sample_ms * (1.0 - decay);
        }
        self.stamp = now;
    }

    /// The estimate at `now`.
    pub(crate) fn value(&self, now: Instant) -> f64 {
        self.estimate_ms * self.decay_factor(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn peak_ewma_jumps_to_peaks_and_forgets_slowly() {
        let start = Instant::now();
        let mut ewma = PeakEwma::new(10.0, Duration::from_secs(10), start);
        ewma.observe(100.0, start);
        assert_eq!(ewma.value(start), 100.0, "a peak is taken at once");
        ewma.observe(10.0, start);
        assert_eq!(ewma.value(start), 100.0, "a fast sample at the same instant has no weight");
        let later = start + Duration::from_secs(10);
        let decayed = ewma.value(later);
        assert!((decayed - 100.0 / std::f64::consts::E).abs() < 1e-6, "{decayed}");
        ewma.observe(10.0, later);
        let value = ewma.value(later);
        assert!(value > 10.0 && value < 100.0, "{value}");
    }

    #[test]
    fn p2c_never_compares_a_proxy_with_itself() {
        let mut rng = StdRng::seed_from_u64(7);
        let slow = Candidate { weight: 1.0, leases: 0, latency_ms: 500.0 };
        let fast = Candidate { weight: 1.0, leases: 0, latency_ms: 5.0 };
        let mut turn = 0;
        for _ in 0..1000 {
            assert_eq!(pick(Strategy::P2cEwma, &[slow, fast], &mut turn, &mut rng), 1);
        }
    }
}
