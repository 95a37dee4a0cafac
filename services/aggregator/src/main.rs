//! The `proxybus-aggregator` binary: `run` (the default) folds feedback live;
//! `replay` rebuilds health stats from the stream. Configuration comes from the
//! environment (`PROXYBUS_AGGREGATOR_*`, `CRYPTOFEED_PROXY_*`, `NATS_*`) and optional
//! TOML files: `--config` / `PROXYBUS_AGGREGATOR_CONFIG` (the aggregator's settings) and
//! `--proxy-config` / `PROXYBUS_PROXY_CONFIG` (the seed's proxy settings).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use proxybus_aggregator::AggregatorConfig;
use proxybus_aggregator::replay::ReplayArgs;
use proxybus_shared::config::{AGGREGATOR_CONFIG_VAR, DEPRECATED_PROXY_CONFIG_VARS, EnvSource, PROXY_CONFIG_VAR};
use proxybus_shared::telemetry;

/// mimalloc instead of the system allocator (without transparent huge pages, which
/// raised the resting RSS by ~13 MiB): the services allocate per message and
/// glibc malloc was a fifth of the aggregator's CPU (docs/benchmarks.md, round 4).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "proxybus-aggregator", version, about = "Folds proxy feedback into health stats, exactly once")]
struct Cli {
    /// TOML file with the aggregator's settings (the environment wins over it); default
    /// `$PROXYBUS_AGGREGATOR_CONFIG`.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// TOML file with the proxy settings (`external_service` names the proxy services to
    /// push to); default `$PROXYBUS_PROXY_CONFIG`.
    #[arg(long, global = true)]
    proxy_config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

impl Cli {
    /// Fills a file not given on the command line from its variable, the same way in
    /// every service ([`EnvSource::file_path`]): the seed's ProxySettings file is
    /// `PROXYBUS_PROXY_CONFIG`, as for the resolver, whose old name `PROXYBUS_CONFIG` still
    /// works with a deprecation warning.
    /// Called after telemetry is set up, so that a deprecation would be logged.
    fn fill_from(&mut self, env: &EnvSource) {
        self.config = env.file_path(self.config.take(), AGGREGATOR_CONFIG_VAR, &[]);
        self.proxy_config = env.file_path(self.proxy_config.take(), PROXY_CONFIG_VAR, DEPRECATED_PROXY_CONFIG_VARS);
    }
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
    let mut cli = Cli::parse();
    let env = EnvSource::from_process();
    telemetry::init_from_env(&env);
    cli.fill_from(&env);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_come_from_the_flags_else_from_their_variables() {
        let env: EnvSource =
            [(AGGREGATOR_CONFIG_VAR, "aggregator.toml"), (PROXY_CONFIG_VAR, "proxy.toml")].into_iter().collect();
        let mut cli = Cli::parse_from(["proxybus-aggregator"]);
        cli.fill_from(&env);
        assert_eq!(cli.config, Some(PathBuf::from("aggregator.toml")));
        assert_eq!(cli.proxy_config, Some(PathBuf::from("proxy.toml")));

        let mut cli = Cli::parse_from(["proxybus-aggregator", "--config", "flag.toml", "replay"]);
        cli.fill_from(&env);
        assert_eq!(cli.config, Some(PathBuf::from("flag.toml")));
        assert_eq!(cli.proxy_config, Some(PathBuf::from("proxy.toml")));

        let mut cli = Cli::parse_from(["proxybus-aggregator"]);
        cli.fill_from(&EnvSource::default());
        assert_eq!((cli.config, cli.proxy_config), (None, None));

        let old: EnvSource = [("PROXYBUS_CONFIG", "old-proxy.toml")].into_iter().collect();
        let mut cli = Cli::parse_from(["proxybus-aggregator"]);
        cli.fill_from(&old);
        assert_eq!(cli.proxy_config, Some(PathBuf::from("old-proxy.toml")), "the deprecated name still works");
    }
}
