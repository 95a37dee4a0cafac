//! The `proxybus-aggregator` binary: `run` (the default) folds feedback live;
//! `replay` rebuilds health stats from the stream. Configuration comes from the
//! environment (`PROXYBUS_AGGREGATOR_*`, `CRYPTOFEED_PROXY_*`, `NATS_*`) and an
//! optional TOML file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use proxybus_aggregator::AggregatorConfig;
use proxybus_aggregator::replay::ReplayArgs;
use proxybus_shared::config::EnvSource;
use proxybus_shared::telemetry;

#[derive(Debug, Parser)]
#[command(name = "proxybus-aggregator", version, about = "Folds proxy feedback into health stats, exactly once")]
struct Cli {
    /// TOML file with the aggregator's settings (the environment wins over it).
    #[arg(long, global = true, env = "PROXYBUS_AGGREGATOR_CONFIG")]
    config: Option<PathBuf>,
    /// TOML file with the proxy settings (`external_service` names the proxy services to push to).
    #[arg(long, global = true, env = "PROXYBUS_PROXY_CONFIG")]
    proxy_config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fold feedback live until SIGINT/SIGTERM (the default).
    Run,
    /// Rebuild health stats from stream PROXY_FEEDBACK.
    Replay(ReplayArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = EnvSource::from_process();
    telemetry::init_from_env(&env);
    let config = match AggregatorConfig::load(cli.config.as_deref(), cli.proxy_config.as_deref(), &env) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("proxybus-aggregator: {err}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            proxybus_aggregator::run(config, proxybus_shared::shutdown::signal()).await.map_err(anyhow::Error::from)
        }
        Command::Replay(args) => {
            proxybus_aggregator::replay::run_command(&config, &args).await.map(|_| ()).map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "proxybus-aggregator failed");
            eprintln!("proxybus-aggregator: {err:#}");
            ExitCode::FAILURE
        }
    }
}
