//! `proxybus-bench`: proxybus measured against bare NATS, side by side, in one
//! process run.
//!
//! Absolute times drift on shared machines, so every scenario runs a baseline
//! (what NATS, or the seed's direct HTTP call, does with no proxybus code in the
//! way) and the subject alternately, A B A B …, and reports the subject/baseline
//! ratio of the same run. The services under test run as child processes (this
//! binary re-executed as `proxybus-bench subject …`, calling the same library
//! `run`/`replay` functions as the service binaries), so their peak RSS is their
//! own. A `nats-server` is started with the `proxybus-tests` harness unless
//! `NATS_URL` names one; everything listens on 127.0.0.1.
//!
//! | scenario | subject | baseline |
//! | --- | --- | --- |
//! | `resolve-hit` | resolver answering from its cache, concurrency 1, 16, 64 | bare async-nats responder replying a real `ProxyResponse` |
//! | `resolve-miss` | cold keys: resolver → pool over HTTP; then the same keys warm | POST straight to the pool |
//! | `singleflight` | 1 000 concurrent requests on one cold key | — (upstream calls counted at the pool, must be 1) |
//! | `fold` | aggregator folding N events of the stream | bare durable pull consumer, fetch + ack, same batch size |
//! | `replay` | `proxybus_aggregator::replay` from the start | bare ordered consumer |
//! | `publish` | `ProxyClient::report` + `flush_feedback` | bare JetStream publish, acks awaited |
//! | `reconnect-storm` | 10 000 feeds asking at once, cold and cached | 10 000 bare request/replies at once |
//! | `resolver-memory` | resolver RSS with 100 000 cached keys | — |
//! | `aggregator-memory` | aggregator RSS with 100 000 proxies | — |
//!
//! # Layout
//! - [`bus`]: the NATS server (harness or `NATS_URL`) every scenario shares.
//! - [`subject`]: service processes: spawning, readiness, peak RSS; and the child side.
//! - [`pool`]: an in-process `proxybus-pool` that counts upstream requests.
//! - [`load`]: request/reply and HTTP load generators with latency histograms.
//! - [`cpu`]: the CPU time per process (`/proc/{pid}/task/*/schedstat`), so rows report CPU per request.
//! - [`resolve`]: `resolve-hit`, `resolve-miss`, `singleflight`, `resolver-memory`.
//! - [`storm`]: the `reconnect-storm` scenario.
//! - [`feedback`]: the feedback data set, `publish`, `fold`, `replay`, `aggregator-memory`.
//! - [`lab`]: `proxybus-bench lab`, effectiveness against the exchange lab's limits: the full
//!   proxybus loop vs round robin without feedback vs one IP (not a NATS baseline scenario).
//! - [`report`]: rows, ratios, targets, the markdown table and JSON.
//! - `main.rs`: arguments; `benches/`: criterion micro-benchmarks (codec, one fold step).

pub mod bus;
pub mod cpu;
pub mod feedback;
pub mod lab;
pub mod load;
pub mod pool;
pub mod report;
pub mod resolve;
pub mod storm;
pub mod subject;

use std::path::PathBuf;

pub use crate::bus::Bus;
pub use crate::report::{Report, Row, Stat};

/// One benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Resolver answering from a warm cache, concurrency 1, 16, 64, against a bare responder.
    ResolveHit,
    /// Cold keys through resolver → pool, and the same keys warm, against POSTing to the pool.
    ResolveMiss,
    /// 1 000 concurrent requests on one cold key; upstream calls must be exactly 1.
    Singleflight,
    /// Aggregator folding the stream, against a bare durable pull consumer.
    Fold,
    /// Replay from the start, against a bare ordered consumer.
    Replay,
    /// The client library's `report`, against bare JetStream publish.
    Publish,
    /// 10 000 feeds asking at once (cold, then cached), against as many bare request/replies.
    ReconnectStorm,
    /// Resolver RSS with 100 000 cached keys.
    ResolverMemory,
    /// Aggregator RSS with 100 000 proxies.
    AggregatorMemory,
}

impl Scenario {
    /// Every scenario, in the order `all` runs them.
    pub const ALL: [Scenario; 9] = [
        Scenario::ResolveHit,
        Scenario::ResolveMiss,
        Scenario::Singleflight,
        Scenario::ReconnectStorm,
        Scenario::ResolverMemory,
        Scenario::Publish,
        Scenario::Fold,
        Scenario::Replay,
        Scenario::AggregatorMemory,
    ];

    /// The scenario's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::ResolveHit => "resolve-hit",
            Scenario::ResolveMiss => "resolve-miss",
            Scenario::Singleflight => "singleflight",
            Scenario::Fold => "fold",
            Scenario::Replay => "replay",
            Scenario::Publish => "publish",
            Scenario::ReconnectStorm => "reconnect-storm",
            Scenario::ResolverMemory => "resolver-memory",
            Scenario::AggregatorMemory => "aggregator-memory",
        }
    }
}

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Size {
    /// A smoke run: every path once, small counts (CI).
    Tiny,
    /// The sizes.
    Full,
}

/// The counts of a run of one size.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Counts {
    /// Requests per round and concurrency of `resolve-hit`.
    pub hit_requests: usize,
    /// Cold keys per round of `resolve-miss`.
    pub miss_keys: usize,
    /// Concurrent requests of `singleflight`.
    pub singleflight_requests: usize,
    /// Feeds asking at once in `reconnect-storm`.
    pub storm_clients: usize,
    /// Events in the stream for `fold` and `replay`.
    pub fold_events: u64,
    /// Proxies those events are about.
    pub fold_proxies: usize,
    /// Events per round of `publish`.
    pub publish_events: usize,
    /// Cached keys of `resolver-memory`.
    pub memory_keys: usize,
    /// Proxies of `aggregator-memory`.
    pub memory_proxies: usize,
}

impl Size {
    /// The counts of this size.
    pub fn counts(self) -> Counts {
        match self {
            Size::Tiny => Counts {
                hit_requests: 128,
                miss_keys: 64,
                singleflight_requests: 1_000,
                storm_clients: 500,
                fold_events: 2_000,
                fold_proxies: 100,
                publish_events: 500,
                memory_keys: 500,
                memory_proxies: 500,
            },
            Size::Full => Counts {
                hit_requests: 20_000,
                miss_keys: 2_000,
                singleflight_requests: 1_000,
                storm_clients: 10_000,
                fold_events: 1_000_000,
                fold_proxies: 10_000,
                publish_events: 100_000,
                memory_keys: 100_000,
                memory_proxies: 100_000,
            },
        }
    }
}

/// What a run needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Size of the run.
    pub size: Size,
    /// Baseline/subject pairs per scenario.
    pub rounds: usize,
    /// The `proxybus-bench` executable, re-executed as the subject processes.
    pub exe: PathBuf,
}

impl Options {
    /// Options for `size` with `rounds` pairs, subject processes from this executable.
    pub fn new(size: Size, rounds: usize) -> anyhow::Result<Self> {
        Ok(Self { size, rounds: rounds.max(1), exe: std::env::current_exe()? })
    }

    /// The counts of the run's size.
    pub fn counts(&self) -> Counts {
        self.size.counts()
    }
}

/// Runs `scenarios` on `bus`, one after the other, and collects their rows.
pub async fn run(bus: &mut Bus, scenarios: &[Scenario], options: &Options) -> anyhow::Result<Report> {
    let mut report = Report::new(options);
    for &scenario in scenarios {
        eprintln!("proxybus-bench: {} ({:?}, {} rounds)", scenario.name(), options.size, options.rounds);
        let rows = match scenario {
            Scenario::ResolveHit => resolve::resolve_hit(bus, options).await?,
            Scenario::ResolveMiss => resolve::resolve_miss(bus, options).await?,
            Scenario::Singleflight => resolve::singleflight(bus, options).await?,
            Scenario::ReconnectStorm => storm::reconnect_storm(bus, options).await?,
            Scenario::ResolverMemory => resolve::resolver_memory(bus, options).await?,
            Scenario::Publish => feedback::publish(bus, options).await?,
            Scenario::Fold => feedback::fold(bus, options).await?,
            Scenario::Replay => feedback::replay(bus, options).await?,
            Scenario::AggregatorMemory => feedback::aggregator_memory(bus, options).await?,
        };
        for row in &rows {
            eprintln!("  {}", row.summary());
        }
        report.rows.extend(rows);
    }
    Ok(report)
}
