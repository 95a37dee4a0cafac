//! The lab as a command: `proxybus lab [--config FILE] [--dir DIR] [--duration S]`
//! (or `proxybus-lab …`) starts the simulator and the proxies, writes the
//! inventory and the CA bundle, prints where everything is and runs until
//! Ctrl-C, SIGTERM or `--duration`.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::{Lab, LabConfig, LabError};

/// Arguments of `proxybus lab`.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// Lab file (TOML: `dir`, `[simulator]` with `[simulator.binance]` / `[simulator.coinbase]` rules,
    /// `[[proxies]]`); default: the demo lab (`docs/lab.md`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where to write `ca.pem`, `inventory.toml` and `lab.json` (over the file's `dir`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<u64>,
}

impl LabArgs {
    /// The configuration the arguments name; `default_dir` when neither `--dir` nor the file says.
    pub fn config(&self, default_dir: PathBuf) -> Result<LabConfig, LabError> {
        let mut config = match &self.config {
            Some(path) => LabConfig::load(path)?,
            None => LabConfig::demo(&default_dir),
        };
        if let Some(dir) = &self.dir {
            config.dir = dir.clone();
        }
        Ok(config)
    }
}

/// A few lines that say what runs where (no passwords).
pub fn banner(lab: &Lab) -> String {
    let mut text = format!("proxybus lab is up\n  simulator   https://{}  (", lab.simulator().addr());
    let names: Vec<&str> = crate::simulator::EXCHANGE_HOSTS.iter().map(|(n, _)| *n).collect();
    text.push_str(&names.join(", "));
    text.push_str(")\n");
    let simulator = &lab.config().simulator;
    for (proxy, config) in lab.proxies().iter().zip(&lab.config().proxies) {
        text.push_str(&format!(
            "  proxy       {:<40} {:<13} from {:<11} {}{}\n",
            proxybus_shared::redact_url(&proxy.url()),
            config.region,
            config.source_ip.to_string(),
            config.fault,
            exchange_verdicts(simulator, config.source_ip.into())
        ));
    }
    text.push_str(&format!(
        "  inventory   {}\n  CA bundle   {}\n  manifest    {}\n",
        lab.inventory_path().display(),
        lab.ca_path().display(),
        lab.manifest_path().display()
    ));
    text
}

/// What the simulated exchanges answer every request from `ip`, whatever its rate:
/// `, but binance answers 451 (restricted location)` and the like, or nothing. A proxy
/// that works still gets these verdicts on its exit address, as a real one would.
fn exchange_verdicts(simulator: &crate::simulator::SimulatorSettings, ip: std::net::IpAddr) -> String {
    let mut verdicts = Vec::new();
    for (name, rules) in [("binance", &simulator.binance), ("coinbase", &simulator.coinbase)] {
        if rules.waf_blocked_ips.contains(&ip) {
            verdicts.push(format!("{name} answers 403 (WAF)"));
        }
        if rules.geo_restricted_ips.contains(&ip) {
            verdicts.push(format!("{name} answers 451 (restricted location)"));
        }
    }
    match verdicts.is_empty() {
        true => String::new(),
        false => format!(", but {}", verdicts.join(", ")),
    }
}

/// Runs the lab of `args` until `shutdown` resolves or `--duration` passes.
///
/// # Errors
/// The lab could not start (see [`Lab::start`]).
pub async fn run(args: &LabArgs, default_dir: PathBuf, shutdown: impl Future<Output = ()>) -> Result<(), LabError> {
    let lab = Lab::start(args.config(default_dir)?).await?;
    println!("{}", banner(&lab));
    println!("try: proxybus up --inventory {}    Ctrl-C stops the lab.", lab.inventory_path().display());
    let duration = args.duration.map(Duration::from_secs);
    tokio::select! {
        () = shutdown => {}
        () = async { match duration { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => {}
    }
    let stats = lab.simulator().stats().total();
    println!(
        "lab stopped: {} requests served, {} trades sent, 429×{} 418×{} 451×{} 403×{}, {} closed with 1008",
        stats.served,
        stats.messages_sent,
        stats.http_429,
        stats.http_418,
        stats.http_451,
        stats.http_403,
        stats.ws_closed_1008
    );
    lab.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::simulator::SimulatorSettings;

    #[test]
    fn the_banner_names_what_an_exchange_answers_a_proxys_exit_address() {
        let ip = |last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
        let mut simulator = SimulatorSettings::default();
        simulator.binance.geo_restricted_ips = vec![ip(3)];
        simulator.coinbase.waf_blocked_ips = vec![ip(6), ip(3)];
        assert_eq!(exchange_verdicts(&simulator, ip(2)), "", "an address every exchange serves");
        assert_eq!(exchange_verdicts(&simulator, ip(6)), ", but coinbase answers 403 (WAF)");
        assert_eq!(
            exchange_verdicts(&simulator, ip(3)),
            ", but binance answers 451 (restricted location), coinbase answers 403 (WAF)"
        );
    }
}
