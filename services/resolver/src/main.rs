//! `proxybus-resolver`: reads its configuration, installs telemetry and signal
//! handling, then runs [`proxybus_resolver::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use proxybus_resolver::Config;
use proxybus_shared::config::EnvSource;

/// Answers proxy requests on the NATS bus.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML file with the seed's ProxySettings tree (the CRYPTOFEED_PROXY_* variables win over it).
    #[arg(long, env = "PROXYBUS_CONFIG")]
    config: Option<PathBuf>,
    /// TOML file with the resolver's own settings (the PROXYBUS_RESOLVER_* variables win over it).
    #[arg(long, env = "PROXYBUS_CONFIG_RESOLVER")]
    resolver_config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let env = EnvSource::from_process();
    proxybus_shared::telemetry::init_from_env(&env);
    let config = match Config::load(args.config.as_deref(), args.resolver_config.as_deref(), &env) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("proxybus-resolver: {err}");
            return ExitCode::from(2);
        }
    };
    match proxybus_resolver::run(config, proxybus_shared::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "resolver failed");
            eprintln!("proxybus-resolver: {err}");
            ExitCode::FAILURE
        }
    }
}
