//! Rows of a run: throughput per round, latency percentiles, subject/baseline
//! ratios, peak RSS and the target; rendered as a markdown table and JSON.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cpu::Spent;
use crate::{Counts, Options, Size};

/// One timed round: `ops` operations in `seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Round {
    /// Operations done.
    pub ops: u64,
    /// Wall-clock seconds they took.
    pub seconds: f64,
}

impl Round {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 { self.ops as f64 / self.seconds } else { 0.0 }
    }
}

/// Latency histogram in microseconds (1 µs to 120 s, 3 significant digits).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("constant bounds are valid")
}

/// The rounds of one side (subject or baseline) and their merged latencies.
#[derive(Debug, Clone)]
pub struct Series {
    rounds: Vec<Round>,
    latency: Option<Histogram<u64>>,
    cpu: [CpuSum; 3],
}

/// CPU time and times on a CPU summed over the rounds that measured them, and their operations.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSum {
    spent: Duration,
    runs: u64,
    ops: u64,
}

impl CpuSum {
    fn per_op_us(&self) -> Option<f64> {
        (self.ops > 0).then(|| self.spent.as_secs_f64() * 1e6 / self.ops as f64)
    }

    fn runs_per_op(&self) -> Option<f64> {
        (self.ops > 0).then(|| self.runs as f64 / self.ops as f64)
    }
}

/// Whose CPU time [`Series::push_cpu`] is given, in its order.
pub const CPU_PROCESSES: [&str; 3] = ["measured process", "nats-server", "requester (this process)"];

impl Default for Series {
    fn default() -> Self {
        Self::new()
    }
}

impl Series {
    /// No rounds yet.
    pub fn new() -> Self {
        Self { rounds: Vec::new(), latency: None, cpu: [CpuSum::default(); 3] }
    }

    /// Adds what the processes of [`CPU_PROCESSES`] spent, in that order, during a round
    /// of `ops` operations (a `None` is not counted: unknown, not zero).
    pub fn push_cpu(&mut self, ops: u64, spent: &[Option<Spent>]) {
        for (sum, spent) in self.cpu.iter_mut().zip(spent) {
            if let Some(spent) = spent {
                sum.spent += spent.on_cpu;
                sum.runs += spent.runs;
                sum.ops += ops;
            }
        }
    }

    /// Adds a round and, when measured, its latencies.
    pub fn push(&mut self, round: Round, latency: Option<&Histogram<u64>>) {
        self.rounds.push(round);
        if let Some(latency) = latency {
            match &mut self.latency {
                Some(all) => all.add(latency).expect("same bounds"),
                None => self.latency = Some(latency.clone()),
            }
        }
    }

    /// The summary of the rounds so far.
    pub fn stat(&self) -> Stat {
        let mut rates: Vec<f64> = self.rounds.iter().map(Round::rate).collect();
        rates.sort_by(f64::total_cmp);
        let median = match rates.len() {
            0 => 0.0,
            n if n % 2 == 1 => rates[n / 2],
            n => (rates[n / 2 - 1] + rates[n / 2]) / 2.0,
        };
        let at = |q: f64| self.latency.as_ref().filter(|h| !h.is_empty()).map(|h| h.value_at_quantile(q) as f64);
        Stat {
            ops_per_sec: median,
            rounds: self.rounds.clone(),
            p50_us: at(0.5),
            p99_us: at(0.99),
            p999_us: at(0.999),
            cpu_us_per_op: self.cpu[0].per_op_us(),
            server_cpu_us_per_op: self.cpu[1].per_op_us(),
            requester_cpu_us_per_op: self.cpu[2].per_op_us(),
            runs_per_op: self.cpu[0].runs_per_op(),
            server_runs_per_op: self.cpu[1].runs_per_op(),
            requester_runs_per_op: self.cpu[2].runs_per_op(),
        }
    }
}

/// One side of a row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stat {
    /// Median throughput over the rounds, operations per second.
    pub ops_per_sec: f64,
    /// Each round.
    pub rounds: Vec<Round>,
    /// Median latency over every operation of every round, µs.
    pub p50_us: Option<f64>,
    /// 99th percentile latency, µs.
    pub p99_us: Option<f64>,
    /// 99.9th percentile latency, µs.
    pub p999_us: Option<f64>,
    /// CPU time of the measured process (the service, or the bare responder) per
    /// operation, µs, over the rounds that measured it ([`crate::cpu`]).
    pub cpu_us_per_op: Option<f64>,
    /// CPU time of the nats-server per operation, µs.
    pub server_cpu_us_per_op: Option<f64>,
    /// CPU time of the requesting process (the load generator) per operation, µs.
    pub requester_cpu_us_per_op: Option<f64>,
    /// Times a thread of the measured process was switched onto a CPU, per operation:
    /// mostly its wake-ups, so about the hand-offs a request costs it ([`crate::cpu::Spent::runs`]).
    pub runs_per_op: Option<f64>,
    /// The same for the nats-server.
    pub server_runs_per_op: Option<f64>,
    /// The same for the requesting process.
    pub requester_runs_per_op: Option<f64>,
}

/// A target of the issue and whether this row meets it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    /// The target in words (`throughput ≥ 0.9× baseline, p99 ≤ 1.25×`).
    pub text: String,
    /// Whether it is met.
    pub met: bool,
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Scenario name (`resolve-hit` …).
    pub scenario: String,
    /// Which case of it (`concurrency 16`, `cold keys` …).
    pub case: String,
    /// What the subject is.
    pub subject_name: String,
    /// The subject's numbers.
    pub subject: Stat,
    /// What the baseline is, if there is one.
    pub baseline_name: Option<String>,
    /// The baseline's numbers.
    pub baseline: Option<Stat>,
    /// Subject throughput / baseline throughput.
    pub throughput_ratio: Option<f64>,
    /// Subject p99 / baseline p99.
    pub p99_ratio: Option<f64>,
    /// Lowest and highest throughput ratio of one round of the subject to the
    /// baseline round measured beside it (round *i* against round *i*), when both
    /// sides have the same rounds: how far the machine's noise moves the ratio.
    pub round_ratio_range: Option<[f64; 2]>,
    /// Peak RSS (VmHWM) of the subject process, bytes (largest over the rounds).
    pub peak_rss_bytes: Option<u64>,
    /// Upstream calls per round (`singleflight`).
    pub upstream_calls: Option<Vec<u64>>,
    /// The target for this row.
    pub target: Option<Target>,
    /// What else to know about the row.
    pub note: String,
}

impl Row {
    /// A row of `subject` alone.
    pub fn new(scenario: &str, case: impl Into<String>, subject_name: impl Into<String>, subject: &Series) -> Self {
        Self {
            scenario: scenario.to_owned(),
            case: case.into(),
            subject_name: subject_name.into(),
            subject: subject.stat(),
            baseline_name: None,
            baseline: None,
            throughput_ratio: None,
            p99_ratio: None,
            round_ratio_range: None,
            peak_rss_bytes: None,
            upstream_calls: None,
            target: None,
            note: String::new(),
        }
    }

    /// Adds the baseline and the ratios against it.
    pub fn against(mut self, baseline_name: impl Into<String>, baseline: &Series) -> Self {
        let baseline = baseline.stat();
        self.throughput_ratio = (baseline.ops_per_sec > 0.0).then(|| self.subject.ops_per_sec / baseline.ops_per_sec);
        self.p99_ratio = match (self.subject.p99_us, baseline.p99_us) {
            (Some(s), Some(b)) if b > 0.0 => Some(s / b),
            _ => None,
        };
        self.round_ratio_range = round_ratio_range(&self.subject.rounds, &baseline.rounds);
        self.baseline_name = Some(baseline_name.into());
        self.baseline = Some(baseline);
        self
    }

    /// Sets the peak RSS of the subject process.
    pub fn rss(mut self, bytes: Option<u64>) -> Self {
        self.peak_rss_bytes = bytes;
        self
    }

    /// Sets the target.
    pub fn target(mut self, text: impl Into<String>, met: bool) -> Self {
        self.target = Some(Target { text: text.into(), met });
        self
    }

    /// Sets a target of a minimum throughput ratio.
    pub fn min_ratio(self, min: f64) -> Self {
        let met = self.throughput_ratio.is_some_and(|r| r >= min);
        self.target(format!("≥ {min}× baseline"), met)
    }

    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    /// The note, with the per-round ratio range when there is one.
    fn full_note(&self) -> Option<String> {
        let range = self.round_ratio_range.map(|[low, high]| format!("per-round ratios {low:.2}–{high:.2}"));
        match (self.note.is_empty(), range) {
            (true, None) => None,
            (true, Some(range)) => Some(range),
            (false, None) => Some(self.note.clone()),
            (false, Some(range)) => Some(format!("{range}; {}", self.note)),
        }
    }

    /// One line for the progress log.
    pub fn summary(&self) -> String {
        let mut line = format!("{} {}: {:.0} ops/s", self.scenario, self.case, self.subject.ops_per_sec);
        if let Some(b) = &self.baseline {
            let _ = write!(line, " vs {:.0} ops/s", b.ops_per_sec);
        }
        if let Some(r) = self.throughput_ratio {
            let _ = write!(line, " ({r:.2}×)");
        }
        if let Some(r) = self.p99_ratio {
            let _ = write!(line, " p99 {r:.2}×");
        }
        if let Some(cpu) = self.subject.cpu_us_per_op {
            let _ = write!(line, " cpu {cpu:.1} µs/op");
            if let Some(b) = self.baseline.as_ref().and_then(|b| b.cpu_us_per_op) {
                let _ = write!(line, " vs {b:.1}");
            }
        }
        if let Some(rss) = self.peak_rss_bytes {
            let _ = write!(line, " rss {}", mib(rss));
        }
        if let Some(calls) = &self.upstream_calls {
            let _ = write!(line, " upstream {calls:?}");
        }
        if let Some(t) = &self.target {
            let _ = write!(line, " [{}: {}]", t.text, if t.met { "met" } else { "MISSED" });
        }
        line
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Size of the run.
    pub size: Size,
    /// Rounds per scenario.
    pub rounds: usize,
    /// The counts used.
    pub counts: Counts,
    /// The machine.
    pub machine: Machine,
    /// The rows.
    pub rows: Vec<Row>,
}

impl Report {
    /// An empty report for `options`.
    pub fn new(options: &Options) -> Self {
        Self {
            size: options.size,
            rounds: options.rounds,
            counts: options.counts(),
            machine: Machine::probe(),
            rows: Vec::new(),
        }
    }

    /// The markdown table.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "| scenario | case | subject ops/s | baseline ops/s | ratio | p50 µs (subject / baseline) | p99 µs | p99.9 µs | p99 ratio | CPU µs/op (subject / baseline) | peak RSS (subject) | target |\n",
        );
        out.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n");
        for row in &self.rows {
            let b = row.baseline.as_ref();
            let pair = |s: Option<f64>, b: Option<f64>| match (s, b) {
                (None, None) => "—".to_owned(),
                (Some(s), None) => format!("{s:.0}"),
                (None, Some(b)) => format!("— / {b:.0}"),
                (Some(s), Some(b)) => format!("{s:.0} / {b:.0}"),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.scenario,
                row.case,
                row.subject.ops_per_sec,
                b.map_or("—".to_owned(), |b| format!("{:.0}", b.ops_per_sec)),
                row.throughput_ratio.map_or("—".to_owned(), |r| format!("{r:.2}")),
                pair(row.subject.p50_us, b.and_then(|b| b.p50_us)),
                pair(row.subject.p99_us, b.and_then(|b| b.p99_us)),
                pair(row.subject.p999_us, b.and_then(|b| b.p999_us)),
                row.p99_ratio.map_or("—".to_owned(), |r| format!("{r:.2}")),
                cpu_pair(row.subject.cpu_us_per_op, b.and_then(|b| b.cpu_us_per_op)),
                row.peak_rss_bytes.map_or("—".to_owned(), mib),
                row.target.as_ref().map_or("—".to_owned(), |t| format!(
                    "{} — **{}**",
                    t.text,
                    if t.met { "met" } else { "missed" }
                )),
            );
        }
        let notes: Vec<(&Row, String)> = self.rows.iter().filter_map(|r| r.full_note().map(|n| (r, n))).collect();
        if !notes.is_empty() {
            out.push('\n');
            for (row, note) in notes {
                let _ = writeln!(out, "- {} {}: {note}", row.scenario, row.case);
            }
        }
        out
    }
}

/// The lowest and highest of subject round *i* / baseline round *i* (throughput),
/// `None` unless both have the same number (two or more) of rounds, all measured.
fn round_ratio_range(subject: &[Round], baseline: &[Round]) -> Option<[f64; 2]> {
    if subject.len() != baseline.len() || subject.len() < 2 {
        return None;
    }
    let ratios: Vec<f64> = subject
        .iter()
        .zip(baseline)
        .map(|(s, b)| (b.rate() > 0.0).then(|| s.rate() / b.rate()))
        .collect::<Option<_>>()?;
    let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some([low, high])
}

/// `12.3 / 9.8` (µs with one decimal), `—` where unmeasured.
fn cpu_pair(subject: Option<f64>, baseline: Option<f64>) -> String {
    let one = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.1}"));
    match (subject, baseline) {
        (None, None) => "—".to_owned(),
        (s, None) => one(s),
        (s, b) => format!("{} / {}", one(s), one(b)),
    }
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The machine a run was made on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub nproc: usize,
    /// CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// Total memory (`/proc/meminfo`).
    pub memory: String,
    /// Kernel release.
    pub kernel: String,
    /// `nats-server --version`.
    pub nats_server: String,
    /// `rustc --version`.
    pub rustc: String,
}

impl Machine {
    /// Reads what it can; unknown parts say `unknown`.
    pub fn probe() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let field = |text: &str, name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_else(|| "unknown".to_owned())
        };
        let command = |program: &str, arg: &str| {
            std::process::Command::new(program)
                .arg(arg)
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "unknown".to_owned())
        };
        // The same server the harness starts (one locator for every part).
        let nats = match proxybus_shared::nats_server::locate() {
            Ok(found) => match found.version {
                Some(version) => format!("nats-server v{version}"),
                None => format!("nats-server of unknown version ({})", found.binary.display()),
            },
            Err(err) => format!("nats-server not found ({err})"),
        };
        Self {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu: field(&read("/proc/cpuinfo"), "model name"),
            memory: field(&read("/proc/meminfo"), "MemTotal"),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            nats_server: nats,
            rustc: command("rustc", "--version"),
        }
    }

    /// One line: `2 × Intel …, 24 GiB, Linux 6.18, nats-server v2.15.1, rustc 1.95.0`.
    pub fn line(&self) -> String {
        format!(
            "nproc {} · {} · MemTotal {} · Linux {} · {} · {}",
            self.nproc, self.cpu, self.memory, self.kernel, self.nats_server, self.rustc
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_subject_over_baseline_medians() {
        let mut subject = Series::new();
        let mut baseline = Series::new();
        for (s, b) in [(90.0, 100.0), (80.0, 100.0), (100.0, 100.0)] {
            subject.push(Round { ops: s as u64, seconds: 1.0 }, None);
            baseline.push(Round { ops: b as u64, seconds: 1.0 }, None);
        }
        let row = Row::new("x", "y", "s", &subject).against("b", &baseline).min_ratio(0.9);
        assert_eq!(row.throughput_ratio, Some(0.9));
        assert_eq!(row.round_ratio_range, Some([0.8, 1.0]), "round i against round i");
        assert_eq!(row.full_note().as_deref(), Some("per-round ratios 0.80–1.00"));
        assert!(row.target.unwrap().met);
        let mut one_round = Series::new();
        one_round.push(Round { ops: 5, seconds: 1.0 }, None);
        assert_eq!(Row::new("x", "y", "s", &one_round).against("b", &baseline).round_ratio_range, None);
    }

    #[test]
    fn cpu_per_operation_sums_only_the_rounds_that_measured_it() {
        let mut series = Series::new();
        let ms = |n: u64| Some(Spent { on_cpu: Duration::from_millis(n), runs: n * 100 });
        series.push_cpu(1_000, &[ms(10), None, ms(4)]);
        series.push_cpu(3_000, &[ms(30), ms(6), None]);
        let stat = series.stat();
        // 40 ms over 4 000 ops; 6 ms over the 3 000 ops that measured it; 4 ms over 1 000.
        assert_eq!(stat.cpu_us_per_op.map(|v| (v * 1000.0).round()), Some(10_000.0));
        // 4 000 runs over 4 000 ops; 600 over 3 000.
        assert_eq!((stat.runs_per_op, stat.server_runs_per_op), (Some(1.0), Some(0.2)));
        assert_eq!(stat.requester_runs_per_op, Some(0.4));
        assert_eq!(stat.server_cpu_us_per_op.map(|v| (v * 1000.0).round()), Some(2_000.0));
        assert_eq!(stat.requester_cpu_us_per_op.map(|v| (v * 1000.0).round()), Some(4_000.0));
        assert_eq!(Series::new().stat().cpu_us_per_op, None, "nothing measured is unknown, not zero");
        assert_eq!(cpu_pair(Some(10.0), Some(8.24)), "10.0 / 8.2");
        assert_eq!(cpu_pair(None, Some(8.0)), "— / 8.0");
    }
}
