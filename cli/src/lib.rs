//! The `proxybus` command.
//!
//! `proxybus request` asks the resolver for a proxy as a feed would;
//! `proxybus feedback` reports what a proxy did; `proxybus health` shows the
//! health the aggregator keeps in KV bucket `PROXY_HEALTH`; `proxybus services`
//! lists the micro-services that answer `$SRV.INFO` / `$SRV.STATS`;
//! `proxybus up` runs the whole pipeline in one process; `proxybus replay`
//! rebuilds health from the stream (or, with `--what-if`, compares a candidate
//! policy with the live one); `proxybus ban|unban|drain|undrain|disable|enable`
//! are an operator's controls; `proxybus lab` runs the exchange lab
//! (`proxybus-lab`) on its own; `proxybus dashboard` serves a live web page
//! of proxy health (`docs/dashboard.md`).
//!
//! # Layout
//! - `lib.rs`: the argument tree ([`Cli`]) and [`run`].
//! - `local_nats.rs`: the nats-server child `proxybus up` starts.
//! - `request.rs`, `feedback.rs`, `health.rs`, `services.rs`, `up.rs`: one subcommand each.
//! - `dashboard/`: the web dashboard (`proxybus dashboard`, also started by `proxybus up`).
//! - `operator.rs`: the operator's controls (`ban`, `unban`, `drain`, `undrain`, `disable`, `enable`).
//! - `demo.rs`: the feeds and live view of `proxybus up --demo`, through the exchange lab.

mod dashboard;
mod demo;
mod feedback;
mod health;
mod local_nats;
mod operator;
mod request;
mod services;
mod up;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use proxybus_shared::OperatorAction;
use proxybus_shared::config::EnvSource;
use proxybus_shared::nats::NatsSettings;

/// Proxy selection for crypto market-data feeds, as a service on a NATS bus.
#[derive(Debug, Parser)]
#[command(name = "proxybus", version, about, long_about = None)]
pub struct Cli {
    /// NATS server URL(s) (default: the server a running `proxybus up` started, else
    /// nats://127.0.0.1:4222); credentials come from NATS_TOKEN, NATS_USER/NATS_PASSWORD, NATS_CREDS …
    #[arg(long, global = true, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// Where `proxybus up` keeps its nats-server store and state.
    #[arg(long, global = true, env = "PROXYBUS_DATA_DIR", default_value = "data")]
    pub data_dir: std::path::PathBuf,
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
    /// Run the whole pipeline (pool, resolver, aggregator) on a local nats-server.
    Up(up::UpArgs),
    /// Rebuild health stats from stream PROXY_FEEDBACK, with a progress bar.
    Replay(proxybus_aggregator::replay::ReplayArgs),
    /// Run the exchange lab alone: simulator, proxies on 127.0.0.x, inventory and CA bundle.
    Lab(proxybus_lab::command::LabArgs),
    /// Serve a live web page of proxy health (KV PROXY_HEALTH, health subjects, feedback stream).
    Dashboard(dashboard::DashboardArgs),
    /// Bar a proxy (for one exchange or all), until lifted or `--for` a while.
    Ban(operator::ControlArgs),
    /// Lift an operator's bans of a proxy (of one exchange, or all).
    Unban(operator::ControlArgs),
    /// No new leases on a proxy (for one exchange or all); existing leases finish.
    Drain(operator::ControlArgs),
    /// Lift an operator's drains of a proxy (of one exchange, or all).
    Undrain(operator::ControlArgs),
    /// Take a proxy out everywhere until enabled.
    Disable(operator::ToggleArgs),
    /// Lift a disable.
    Enable(operator::ToggleArgs),
}

/// Runs a parsed command line; the exit code says whether it succeeded.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let env = EnvSource::from_process();
    let cli = match cli {
        Cli { command: Command::Up(args), nats_url, data_dir } => return up::run(nats_url, &data_dir, args).await,
        Cli { command: Command::Lab(args), data_dir, .. } => {
            proxybus_lab::command::run(&args, data_dir.join("lab"), proxybus_shared::shutdown::signal()).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Cli { command: Command::Replay(args), nats_url, data_dir } => {
            let mut config = proxybus_aggregator::AggregatorConfig::load(None, None, &env)?;
            if let Some(url) = nats_url.or_else(|| local_nats::running_url(&data_dir)) {
                config.nats.url = url;
            }
            proxybus_aggregator::replay::run_command(&config, &args).await?;
            return Ok(ExitCode::SUCCESS);
        }
        other => other,
    };
    let mut nats = NatsSettings::from_env(&env)?;
    nats.url = cli
        .nats_url
        .clone()
        .or_else(|| local_nats::running_url(&cli.data_dir))
        .unwrap_or_else(|| proxybus_shared::nats::DEFAULT_NATS_URL.to_owned());
    nats.connect_timeout = Duration::from_secs(3);
    let url = nats.url.clone();
    let client = nats.with_name("proxybus-cli").connect().await.map_err(|err| {
        anyhow::anyhow!(
            "cannot connect to NATS at {}: {err} (is proxybus up? set NATS_URL)",
            proxybus_shared::redact_url(&url)
        )
    })?;
    let code = match cli.command {
        Command::Request(args) => request::run(&client, args).await?,
        Command::Feedback(args) => feedback::run(&client, args).await?,
        Command::Health(args) => health::run(&client, args).await?,
        Command::Services(args) => services::run(&client, args).await?,
        Command::Dashboard(args) => dashboard::run(&client, args).await?,
        Command::Ban(args) => operator::run(&client, args.event(OperatorAction::Ban, &env)).await?,
        Command::Unban(args) => operator::run(&client, args.event(OperatorAction::Unban, &env)).await?,
        Command::Drain(args) => operator::run(&client, args.event(OperatorAction::Drain, &env)).await?,
        Command::Undrain(args) => operator::run(&client, args.event(OperatorAction::Undrain, &env)).await?,
        Command::Disable(args) => operator::run(&client, args.event(OperatorAction::Disable, &env)).await?,
        Command::Enable(args) => operator::run(&client, args.event(OperatorAction::Enable, &env)).await?,
        Command::Up(_) | Command::Replay(_) | Command::Lab(_) => unreachable!("handled before connecting"),
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
