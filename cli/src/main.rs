//! `proxybus`: parses arguments, installs tracing, runs the command.

use std::process::ExitCode;

use clap::Parser;
use proxybus_cli::Cli;
use proxybus_shared::config::EnvSource;

/// mimalloc instead of the system allocator (without transparent huge pages, which
/// raised the resting RSS by ~13 MiB): the services allocate per message and
/// glibc malloc was a fifth of the aggregator's CPU (docs/benchmarks.md, round 4).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = EnvSource::from_process();
    proxybus_shared::telemetry::init_with(
        proxybus_shared::telemetry::LogFormat::from_env(&env),
        Some(env.get("RUST_LOG").unwrap_or("warn")),
        proxybus_shared::telemetry::wire_logs_from_env(&env),
    );
    match proxybus_cli::run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
