//! `proxybus`: parses arguments, installs tracing, runs the command.

use std::process::ExitCode;

use clap::Parser;
use proxybus_cli::Cli;
use proxybus_shared::config::EnvSource;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    proxybus_shared::telemetry::init(
        proxybus_shared::telemetry::LogFormat::from_env(&EnvSource::from_process()),
        Some(&std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())),
    );
    match proxybus_cli::run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
