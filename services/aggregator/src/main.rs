//! The `proxybus-aggregator` binary: `run` (the default) folds feedback live;
//! `replay` rebuilds health stats from the stream. Configuration comes from the
//! environment (`PROXYBUS_AGGREGATOR_*`, `CRYPTOFEED_PROXY_*`, `NATS_*`) and an
//! optional TOML file.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use proxybus_aggregator::replay::DEFAULT_REPLAY_BUCKET;
use proxybus_aggregator::{AggregatorConfig, ReplayOptions, ReplayStart};
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
    Replay {
        /// Start with the first event stored at or after this time (RFC 3339).
        #[arg(long, conflicts_with = "from_seq")]
        since: Option<DateTime<Utc>>,
        /// Start at this stream sequence.
        #[arg(long)]
        from_seq: Option<u64>,
        /// Bucket to write into; PROXY_HEALTH replaces live state (stop the aggregator first).
        #[arg(long, default_value = DEFAULT_REPLAY_BUCKET)]
        into: String,
    },
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
        Command::Run => proxybus_aggregator::run(config, shutdown_signal()).await.map_err(anyhow::Error::from),
        Command::Replay { since, from_seq, into } => replay(config, since, from_seq, into).await,
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

async fn replay(
    config: AggregatorConfig,
    since: Option<DateTime<Utc>>,
    from_seq: Option<u64>,
    into: String,
) -> anyhow::Result<()> {
    let start = match (since, from_seq) {
        (Some(at), _) => ReplayStart::Since(at),
        (None, Some(seq)) => ReplayStart::FromSeq(seq),
        (None, None) => ReplayStart::Beginning,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let options = ReplayOptions { start, into };
    let report = proxybus_aggregator::replay(&config, &options, |done, total| {
        if bar.length() != Some(total) {
            bar.set_length(total);
        }
        bar.set_position(done);
    })
    .await?;
    bar.finish_and_clear();
    println!(
        "replayed {} events ({} unfoldable) up to sequence {} into {}: {} proxies",
        report.events, report.dead, report.last_seq, options.into, report.proxies
    );
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
