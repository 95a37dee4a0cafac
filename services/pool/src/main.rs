//! `proxybus-pool`: parses arguments, installs tracing, and runs the service
//! until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use proxybus_pool::{Inventory, PoolConfig, PoolSettings};
use proxybus_shared::config::EnvSource;

/// mimalloc instead of the system allocator (without transparent huge pages, which
/// raised the resting RSS by ~13 MiB): the services allocate per message and
/// glibc malloc was a fifth of the aggregator's CPU (docs/benchmarks.md, round 4).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The reference proxy service of proxybus: proxy inventories per region with
/// health-aware selection, over HTTP.
#[derive(Debug, Parser)]
#[command(name = "proxybus-pool", version)]
struct Args {
    /// Settings file (TOML), else `PROXYBUS_POOL_CONFIG`; `PROXYBUS_POOL_*` variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Inventory file (overrides the `inventory` setting).
    #[arg(long)]
    inventory: Option<PathBuf>,
    /// Listen address (overrides the `listen` setting).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Validate the inventory file, print a summary and exit.
    #[arg(long)]
    check: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let env = EnvSource::from_process();
    proxybus_shared::telemetry::init_from_env(&env);
    if args.check {
        // Only the inventory is checked: no token or TLS files are needed for that.
        let inventory = env
            .file_path(args.inventory.clone(), "PROXYBUS_POOL_INVENTORY", &[])
            .unwrap_or_else(|| PoolSettings::default().inventory);
        return match Inventory::load(&inventory) {
            Ok(inventory) => {
                for pool in inventory.pools() {
                    println!(
                        "{}: {} proxies, strategy {}, ttl {}s, fallback regions {:?}",
                        pool.region(),
                        pool.proxies().len(),
                        pool.strategy(),
                        pool.ttl_seconds(),
                        pool.fallback_regions().iter().map(|r| r.as_str()).collect::<Vec<_>>()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("proxybus-pool: {err}");
                ExitCode::from(2)
            }
        };
    }
    // Read after telemetry is up, so a warning about the variable is logged.
    let config_file = PoolConfig::file(args.config, &env);
    let mut config = match PoolConfig::load(config_file.as_deref(), &env) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("proxybus-pool: {err}");
            return ExitCode::from(2);
        }
    };
    if let Some(inventory) = args.inventory {
        config.settings.inventory = inventory;
    }
    if let Some(listen) = args.listen {
        config.settings.listen = listen;
    }
    match proxybus_pool::run(config, proxybus_shared::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "proxybus-pool stopped");
            eprintln!("proxybus-pool: {err}");
            ExitCode::FAILURE
        }
    }
}
