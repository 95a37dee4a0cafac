//! `proxybus-lab`: parses arguments, installs tracing, runs the lab.

use std::process::ExitCode;

use clap::Parser;
use proxybus_shared::config::EnvSource;

/// An exchange lab on loopback: simulator, proxies, inventory.
#[derive(Debug, Parser)]
#[command(name = "proxybus-lab", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    args: proxybus_lab::command::LabArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    proxybus_shared::telemetry::init(
        proxybus_shared::telemetry::LogFormat::from_env(&EnvSource::from_process()),
        Some(&std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())),
    );
    match proxybus_lab::command::run(&cli.args, "data/lab".into(), proxybus_shared::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
