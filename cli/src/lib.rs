//! The `proxybus` command.
//!
//! `proxybus request` asks the resolver for a proxy as a feed would;
//! `proxybus feedback` reports what a proxy did; `proxybus health` shows the
//! health the aggregator keeps in KV bucket `PROXY_HEALTH`; `proxybus services`
//! lists the micro-services that answer `$SRV.INFO` / `$SRV.STATS`.
//!
//! # Layout
//! - `lib.rs`: the argument tree ([`Cli`]) and [`run`].
//! - `request.rs`, `feedback.rs`, `health.rs`, `services.rs`: one subcommand each.

mod feedback;
mod health;
mod request;
mod services;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use proxybus_shared::config::EnvSource;
use proxybus_shared::nats::NatsSettings;

/// Proxy selection for crypto market-data feeds, as a service on a NATS bus.
#[derive(Debug, Parser)]
#[command(name = "proxybus", version, about, long_about = None)]
pub struct Cli {
    /// NATS server URL(s); credentials come from NATS_TOKEN, NATS_USER/NATS_PASSWORD, NATS_CREDS …
    #[arg(long, global = true, env = "NATS_URL", default_value = proxybus_shared::nats::DEFAULT_NATS_URL)]
    pub nats_url: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ask the resolver for a proxy, as a feed does.
    Request(request::RequestArgs),
    /// Report what a proxy did (into stream PROXY_FEEDBACK).
    Feedback(feedback::FeedbackArgs),
    /// Show proxy health from KV bucket PROXY_HEALTH.
    Health(health::HealthArgs),
    /// List the proxybus micro-services on the bus and their stats.
    Services(services::ServicesArgs),
}

/// Runs a parsed command line; the exit code says whether it succeeded.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let env = EnvSource::from_process();
    let mut nats = NatsSettings::from_env(&env)?;
    nats.url = cli.nats_url.clone();
    nats.connect_timeout = Duration::from_secs(3);
    let client = nats.with_name("proxybus-cli").connect().await.map_err(|err| {
        anyhow::anyhow!(
            "cannot connect to NATS at {}: {err} (is proxybus up? set NATS_URL)",
            proxybus_shared::redact_url(&cli.nats_url)
        )
    })?;
    let code = match cli.command {
        Command::Request(args) => request::run(&client, args).await?,
        Command::Feedback(args) => feedback::run(&client, args).await?,
        Command::Health(args) => health::run(&client, args).await?,
        Command::Services(args) => services::run(&client, args).await?,
    };
    client.flush().await.ok();
    Ok(code)
}

/// A table with the look every subcommand uses.
pub(crate) fn table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED).set_header(header.to_vec());
    table
}
