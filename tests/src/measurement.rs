//! What a load or fault test measures: resident memory of a process over a run
//! ([`MemorySampler`], [`MemorySamples`]) and request latencies ([`Latencies`]).

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Resident memory (`VmRSS` of `/proc/<pid>/status`) of a process in KiB; `None` when the
/// process is gone or the system has no such file.
pub fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples the resident memory of one process at a fixed interval in a background task.
#[derive(Debug)]
pub struct MemorySampler {
    task: JoinHandle<MemorySamples>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl MemorySampler {
    /// Starts sampling `pid` every `interval` (a first sample at once).
    pub fn start(pid: u32, interval: Duration) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut samples = Vec::new();
            let mut ticks = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {
                        if let Some(kib) = resident_kib(pid) {
                            samples.push((started.elapsed(), kib));
                        }
                    }
                    _ = stopped.changed() => break,
                }
            }
            MemorySamples { samples }
        });
        Self { task, stop }
    }

    /// Stops sampling and returns what was sampled.
    ///
    /// # Panics
    /// When the sampling task panicked.
    pub async fn finish(self) -> MemorySamples {
        let _ = self.stop.send(true);
        self.task.await.expect("the memory sampler ran")
    }
}

/// Resident memory of one process over a run: (time since the sampler started, KiB).
#[derive(Debug, Clone, Default)]
pub struct MemorySamples {
    /// The samples in the order taken.
    pub samples: Vec<(Duration, u64)>,
}

impl MemorySamples {
    /// The resident memory at the end of the warm-up (the last sample taken within the first
    /// `warm_up` of the run), and the highest one after it, in KiB; `None` without a sample on
    /// each side.
    pub fn after_warm_up(&self, warm_up: Duration) -> Option<(u64, u64)> {
        let baseline = self.samples.iter().rev().find(|(at, _)| *at <= warm_up)?.1;
        let peak = self.samples.iter().filter(|(at, _)| *at > warm_up).map(|(_, kib)| *kib).max()?;
        Some((baseline, peak))
    }

    /// Growth after the warm-up in percent: (highest after it − value at its end) / value at its
    /// end × 100; negative when memory shrank. `None` as for [`after_warm_up`](Self::after_warm_up).
    pub fn growth_percent(&self, warm_up: Duration) -> Option<f64> {
        let (baseline, peak) = self.after_warm_up(warm_up)?;
        Some((peak as f64 - baseline as f64) / baseline.max(1) as f64 * 100.0)
    }
}

/// Request latencies of a run, for percentiles.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    micros: Vec<u64>,
}

impl Latencies {
    /// Records one request's latency.
    pub fn record(&mut self, took: Duration) {
        self.micros.push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    /// Adds every latency of `other`.
    pub fn merge(&mut self, other: Latencies) {
        self.micros.extend(other.micros);
    }

    /// How many latencies were recorded.
    pub fn len(&self) -> usize {
        self.micros.len()
    }

    /// Whether none was recorded.
    pub fn is_empty(&self) -> bool {
        self.micros.is_empty()
    }

    /// The `q`-quantile (0.5 for p50, 0.99 for p99) in microseconds, nearest rank; 0 when empty.
    pub fn quantile_micros(&self, q: f64) -> u64 {
        if self.micros.is_empty() {
            return 0;
        }
        let mut sorted = self.micros.clone();
        sorted.sort_unstable();
        let rank = ((q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_measured_from_the_end_of_the_warm_up() {
        let s = |secs: u64, kib: u64| (Duration::from_secs(secs), kib);
        let samples = MemorySamples { samples: vec![s(0, 50), s(1, 90), s(2, 100), s(3, 104), s(4, 108), s(5, 102)] };
        assert_eq!(samples.after_warm_up(Duration::from_secs(2)), Some((100, 108)));
        assert!((samples.growth_percent(Duration::from_secs(2)).unwrap() - 8.0).abs() < 1e-9);
        assert_eq!(samples.after_warm_up(Duration::from_secs(9)), None);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut latencies = Latencies::default();
        assert_eq!(latencies.quantile_micros(0.5), 0);
        for micros in 1..=100 {
            latencies.record(Duration::from_micros(micros));
        }
        assert_eq!((latencies.quantile_micros(0.5), latencies.quantile_micros(0.99)), (50, 99));
        assert_eq!(latencies.quantile_micros(1.0), 100);
    }

    #[test]
    fn resident_memory_of_this_process_is_read() {
        assert!(resident_kib(std::process::id()).is_some_and(|kib| kib > 0));
        assert_eq!(resident_kib(u32::MAX), None);
    }
}
