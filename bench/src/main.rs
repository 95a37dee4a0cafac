//! `proxybus-bench <scenario> [--size tiny|full] [--rounds N] [--out FILE]`:
//! runs scenarios, prints the markdown table on stdout and writes JSON.
//! `proxybus-bench subject …` is the child side of a measured service process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use proxybus_bench::subject::{self, SubjectKind};
use proxybus_bench::{Bus, Options, Scenario, Size};

/// mimalloc, as the services' binaries use: the measured subjects and the bare baselines
/// both run in this binary (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// proxybus measured against bare NATS, baseline and subject alternately in one run.
#[derive(Debug, Parser)]
#[command(name = "proxybus-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Resolver answering from its cache (concurrency 1, 16, 64) vs a bare async-nats responder.
    ResolveHit(RunArgs),
    /// Cold keys through resolver → pool, and the same keys warm, vs POSTing to the pool.
    ResolveMiss(RunArgs),
    /// 1 000 concurrent requests on one cold key: exactly one upstream call.
    Singleflight(RunArgs),
    /// 10 000 feeds asking at once (cold, then cached) vs as many bare request/replies at once.
    ReconnectStorm(RunArgs),
    /// Aggregator folding the stream vs a bare durable pull consumer.
    Fold(RunArgs),
    /// Replay from the start vs a bare ordered consumer.
    Replay(RunArgs),
    /// ProxyClient::report vs bare JetStream publish.
    Publish(RunArgs),
    /// Resolver RSS with 100 000 cached keys.
    ResolverMemory(RunArgs),
    /// Aggregator RSS with 100 000 proxies.
    AggregatorMemory(RunArgs),
    /// Every scenario.
    All(RunArgs),
    /// M feeds for T seconds against the exchange lab: proxybus vs round robin vs one IP.
    Lab(LabArgs),
    /// The child side of a measured process (used by the bench itself).
    #[command(hide = true)]
    Subject {
        #[command(subcommand)]
        kind: SubjectKind,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// `tiny` runs every path once with small counts; `full` has the sizes.
    #[arg(long, value_enum, default_value = "full")]
    size: Size,
    /// Baseline/subject pairs (A B A B …) per scenario.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct LabArgs {
    /// Feeds per mode (the demo's feeds, repeated).
    #[arg(long, default_value_t = 12)]
    feeds: usize,
    /// Seconds per mode; the busiest proxy dies halfway.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

async fn run_lab(args: &LabArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=200).contains(&args.feeds), "--feeds must be 1..=200");
    anyhow::ensure!((2..=3600).contains(&args.seconds), "--seconds must be 2..=3600");
    let bus = Bus::start().await?;
    let report = proxybus_bench::lab::run(&bus, args.feeds, args.seconds).await?;
    println!("{} feeds, {} s per mode\n", report.feeds, report.seconds);
    println!("{}", report.markdown());
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("proxybus-bench: wrote {}", path.display());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (scenarios, args): (Vec<Scenario>, RunArgs) = match cli.command {
        Command::Lab(args) => {
            return match run_lab(&args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("proxybus-bench lab: {err:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Subject { kind } => {
            return match subject::serve(kind).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("proxybus-bench subject: {err:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::ResolveHit(a) => (vec![Scenario::ResolveHit], a),
        Command::ResolveMiss(a) => (vec![Scenario::ResolveMiss], a),
        Command::Singleflight(a) => (vec![Scenario::Singleflight], a),
        Command::ReconnectStorm(a) => (vec![Scenario::ReconnectStorm], a),
        Command::Fold(a) => (vec![Scenario::Fold], a),
        Command::Replay(a) => (vec![Scenario::Replay], a),
        Command::Publish(a) => (vec![Scenario::Publish], a),
        Command::ResolverMemory(a) => (vec![Scenario::ResolverMemory], a),
        Command::AggregatorMemory(a) => (vec![Scenario::AggregatorMemory], a),
        Command::All(a) => (Scenario::ALL.to_vec(), a),
    };
    match run(&scenarios, &args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("proxybus-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(scenarios: &[Scenario], args: &RunArgs) -> anyhow::Result<()> {
    let options = Options::new(args.size, args.rounds)?;
    let mut bus = Bus::start().await?;
    let report = proxybus_bench::run(&mut bus, scenarios, &options).await?;
    println!("{}\n", report.machine.line());
    println!("{}", report.markdown());
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("proxybus-bench: wrote {}", path.display());
    }
    Ok(())
}
