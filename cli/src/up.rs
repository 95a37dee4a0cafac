//! `proxybus up [--config FILE] [--inventory FILE] [--demo [--lab FILE]]`: the
//! whole pipeline in one process — pool service, resolver and aggregator — on a
//! local nats-server it starts itself (unless `NATS_URL` names one), with the
//! bundled sample inventory (three regions, a dozen proxies) unless told
//! otherwise. `--demo` also starts the exchange lab (`proxybus-lab`: simulator
//! and proxies on loopback), serves the lab's inventory, and runs real feeds
//! through it with a live view (`demo.rs`).
//!
//! The optional config file has one section per part, each in that part's own
//! format (`docs/pool.md`, `docs/resolver.md`, `docs/aggregator.md`):
//!
//! ```toml
//! inventory = "my-inventory.toml"
//! [pool]
//! listen = "127.0.0.1:8080"
//! [resolver]
//! hedge_delay_ms = 100
//! [aggregator.health]
//! consecutive_failures = 3
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use proxybus_aggregator::{AggregatorConfig, AggregatorSettings};
use proxybus_client::{ClientConfig, ProxyClient};
use proxybus_resolver::ResolverSettings;
use proxybus_shared::config::{self, AuthMethod, ExternalProxyServiceConfig, ProxySettings, Validate};
use proxybus_shared::nats::NatsSettings;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::local_nats::LocalNats;

/// The sample inventory bundled into the binary.
pub(crate) const SAMPLE_INVENTORY: &str = include_str!("../../services/pool/inventory.sample.toml");

/// Arguments of `proxybus up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// TOML file with optional sections [pool], [resolver], [aggregator] and an `inventory` path.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Inventory of the pool service (default: the bundled sample, three regions and a dozen proxies).
    #[arg(long)]
    pub inventory: Option<PathBuf>,
    /// Start the exchange lab, serve its proxies, run real feeds through them and show a live view.
    #[arg(long)]
    pub demo: bool,
    /// Lab file for `--demo` (default: the demo lab, `docs/lab.md`).
    #[arg(long, requires = "demo")]
    pub lab: Option<PathBuf>,
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<u64>,
    /// Address of the pool's HTTP API (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub pool_listen: SocketAddr,
    /// Address of the web dashboard (`docs/dashboard.md`), loopback only; when taken, any free
    /// port.
    #[arg(long, default_value = crate::dashboard::DEFAULT_LISTEN)]
    pub dashboard_listen: SocketAddr,
}

/// Settings of the three parts, from `--config` or defaults.
#[derive(Debug, Default)]
struct PartSettings {
    inventory: Option<PathBuf>,
    pool: proxybus_pool::PoolSettings,
    resolver: ResolverSettings,
    aggregator: AggregatorSettings,
}

fn section<T: DeserializeOwned + Validate + Default>(table: &toml::Table, name: &str) -> anyhow::Result<T> {
    match table.get(name) {
        None => Ok(T::default()),
        Some(value) => {
            let text = toml::to_string(value)?;
            config::from_toml_str(&text).map_err(|err| anyhow::anyhow!("[{name}] of the config file: {err}"))
        }
    }
}

fn read_settings(path: Option<&Path>) -> anyhow::Result<PartSettings> {
    let Some(path) = path else { return Ok(PartSettings::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    if let Some(unknown) = table.keys().find(|k| !["inventory", "pool", "resolver", "aggregator"].contains(&k.as_str()))
    {
        anyhow::bail!(
            "{}: unknown section {unknown:?} (expected inventory, [pool], [resolver], [aggregator])",
            path.display()
        );
    }
    Ok(PartSettings {
        inventory: table.get("inventory").and_then(|v| v.as_str()).map(PathBuf::from),
        pool: section(&table, "pool")?,
        resolver: section(&table, "resolver")?,
        aggregator: section(&table, "aggregator")?,
    })
}

/// Runs the pipeline until Ctrl-C, SIGTERM or `--duration`.
pub(crate) async fn run(nats_url: Option<String>, data_dir: &Path, args: UpArgs) -> anyhow::Result<ExitCode> {
    let mut parts = read_settings(args.config.as_deref())?;
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;

    let (local, url) = match nats_url {
        Some(url) => (None, url),
        None => {
            if args.demo {
                // The lab's proxies get new ports, so new proxy ids, each run: a demo starts from an
                // empty store rather than showing the last run's proxies beside this run's.
                let store = data_dir.join("nats");
                if store.exists() {
                    std::fs::remove_dir_all(&store).with_context(|| format!("cannot empty {}", store.display()))?;
                    println!("demo: starting from an empty store ({} removed)", store.display());
                }
            }
            let local = LocalNats::start(data_dir).await?;
            let url = local.url().to_owned();
            (Some(local), url)
        }
    };
    let result = run_parts(&url, data_dir, &args, &mut parts).await;
    if let Some(local) = local {
        local.stop().await?;
        println!("nats-server stopped");
    }
    result
}

async fn run_parts(url: &str, data_dir: &Path, args: &UpArgs, parts: &mut PartSettings) -> anyhow::Result<ExitCode> {
    let stop = CancellationToken::new();
    let nats = NatsSettings::new(url);
    let lab = match args.demo {
        false => None,
        true => {
            let lab_args = proxybus_lab::command::LabArgs { config: args.lab.clone(), dir: None, duration: None };
            let mut config = lab_args.config(data_dir.join("lab"))?;
            if args.lab.is_some() && config.dir.is_relative() {
                config.dir = data_dir.join("lab");
            }
            Some(proxybus_lab::Lab::start(config).await.context("cannot start the exchange lab")?)
        }
    };
    let inventory = match args.inventory.clone().or(parts.inventory.clone()) {
        Some(path) => path,
        None if lab.is_some() => lab.as_ref().map(|lab| lab.inventory_path().to_owned()).unwrap_or_default(),
        None => {
            let path = data_dir.join("inventory.sample.toml");
            std::fs::write(&path, SAMPLE_INVENTORY)?;
            path
        }
    };
    let token = uuid::Uuid::new_v4().simple().to_string();
    let token_file = data_dir.join("pool.token");
    std::fs::write(&token_file, &token)?;

    // Pool service: the upstream the resolver asks over HTTP.
    let mut pool_settings = parts.pool.clone();
    pool_settings.inventory = inventory.clone();
    if pool_settings.listen == proxybus_pool::PoolSettings::default().listen {
        pool_settings.listen = args.pool_listen;
    }
    pool_settings.auth.tokens.push(token.clone().into());
    let pool_config = proxybus_pool::PoolConfig { settings: pool_settings, nats: Some(nats.clone()) };
    let pool = proxybus_pool::PoolServer::bind(pool_config).await?;
    let pool_addr = pool.local_addr();
    let selector = pool.selector();
    let pool_task = tokio::spawn(pool.serve(stop.clone().cancelled_owned()));
    let pool_url = format!("http://{pool_addr}");

    let proxy_services = ExternalProxyServiceConfig {
        enabled: true,
        endpoints: vec![pool_url.clone()],
        auth_method: AuthMethod::BearerToken,
        auth_credentials: [("token".to_owned(), token.clone().into())].into_iter().collect(),
        ..Default::default()
    };

    // Aggregator first: it creates stream PROXY_FEEDBACK that feeds publish into.
    // One process has one metrics recorder: the resolver's /metrics serves every part's series.
    let mut aggregator_settings = parts.aggregator.clone();
    aggregator_settings.metrics_listen.clear();
    let aggregator = AggregatorConfig {
        nats: nats.clone().with_name("proxybus-aggregator"),
        settings: aggregator_settings,
        proxy_services: proxy_services.clone(),
    };
    let aggregator_task = tokio::spawn(proxybus_aggregator::run(aggregator, stop.clone().cancelled_owned()));

    let mut resolver_settings = parts.resolver.clone();
    if resolver_settings.metrics_listen.is_none() {
        resolver_settings.metrics_listen = free_addr(9464);
    }
    let metrics_addr = resolver_settings.metrics_listen;
    let resolver = proxybus_resolver::ResolverConfig {
        proxy: ProxySettings { enabled: true, external_service: proxy_services, ..Default::default() },
        resolver: resolver_settings,
        nats: nats.clone(),
    };
    let resolver_task = tokio::spawn(proxybus_resolver::run(resolver, stop.clone().cancelled_owned()));

    let client = nats.connect().await.context("cannot connect to NATS")?;
    for service in ["proxybus-resolver", "proxybus-aggregator"] {
        proxybus_shared::nats::wait_for_service(&client, service, Duration::from_secs(20)).await?;
    }

    let dashboard = crate::dashboard::bind_loopback_or_any(args.dashboard_listen)
        .await
        .with_context(|| format!("cannot serve the dashboard on {}", args.dashboard_listen))?;
    let dashboard_addr = dashboard.local_addr()?;
    tokio::spawn(crate::dashboard::serve(client.clone(), dashboard, None, stop.clone()));

    let proxies = selector.proxies(None);
    let regions: std::collections::BTreeSet<String> = proxies.iter().map(|p| p.region.to_string()).collect();
    if let Some(lab) = &lab {
        print!("{}", proxybus_lab::command::banner(lab));
    }
    println!("proxybus is up");
    println!("  nats        {url}");
    println!(
        "  pool        {pool_url}  ({} proxies in {} regions from {}; API token in {})",
        proxies.len(),
        regions.len(),
        inventory.display(),
        token_file.display()
    );
    println!("  resolver    proxy.v1.request.{{exchange}}.{{http|websocket}} (queue group proxybus-resolver)");
    println!("  aggregator  stream PROXY_FEEDBACK -> KV bucket PROXY_HEALTH, proxy.v1.health.{{region}}");
    if let Some(addr) = metrics_addr {
        println!("  metrics     http://{addr}/metrics");
    }
    println!("  dashboard   http://{dashboard_addr}/");
    let me = command_name();
    println!("try: {me} request binance websocket | {me} health --watch | {me} services");
    println!("Ctrl-C stops everything.");

    let demo = lab.as_ref().map(|lab| {
        let (settings, shared, roots) = (nats.clone(), client.clone(), vec![lab.ca().der()]);
        let make_client = move |id: String, region: Option<&str>| {
            let mut config = ClientConfig::new(settings.clone(), id);
            config.request_timeout = Duration::from_secs(3);
            config.connect_timeout = Duration::from_secs(5);
            config.region = region.and_then(|r| r.parse().ok());
            config.extra_roots = roots.clone();
            ProxyClient::with_nats(config, shared.clone())
        };
        let (board, feeds) = crate::demo::start(lab, make_client, stop.clone());
        let simulator_stats = {
            let lab_stats = lab.simulator().stats_handle();
            move || lab_stats.stats()
        };
        tokio::spawn(crate::dashboard::publish_feeds(client.clone(), board.clone(), stop.clone()));
        let live = tokio::spawn(crate::demo::print_live(client.clone(), board.clone(), simulator_stats, stop.clone()));
        (board, feeds, live)
    });

    let duration = args.duration.map(Duration::from_secs);
    tokio::select! {
        () = proxybus_shared::shutdown::signal() => println!("\nshutting down"),
        () = async { match duration { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => {
            println!("ran for {}s; shutting down", duration.unwrap_or_default().as_secs());
        }
        result = watch(&resolver_task) => return Err(result),
    }
    stop.cancel();
    if let Some((board, feeds, live)) = demo {
        let _ = tokio::time::timeout(Duration::from_secs(5), feeds).await;
        live.abort();
        println!("{}", crate::demo::summary(&board.snapshot()));
    }
    if let Some(lab) = lab {
        lab.stop().await;
        println!("exchange lab stopped");
    }
    let grace = Duration::from_secs(15);
    let (pool, resolver, aggregator) = tokio::join!(
        tokio::time::timeout(grace, pool_task),
        tokio::time::timeout(grace, resolver_task),
        tokio::time::timeout(grace, aggregator_task),
    );
    report_stop("pool", pool.map(|r| r.map(|r| r.map_err(anyhow::Error::from))));
    report_stop("resolver", resolver.map(|r| r.map(|r| r.map_err(anyhow::Error::from))));
    report_stop("aggregator", aggregator.map(|r| r.map(|r| r.map_err(anyhow::Error::from))));
    let _ = client.drain().await;
    Ok(ExitCode::SUCCESS)
}

/// Resolves with an error when the resolver task ends before shutdown.
async fn watch<T>(task: &tokio::task::JoinHandle<T>) -> anyhow::Error {
    while !task.is_finished() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::anyhow!("the resolver stopped unexpectedly (see the log above)")
}

type Joined = Result<Result<anyhow::Result<()>, tokio::task::JoinError>, tokio::time::error::Elapsed>;

fn report_stop(part: &str, joined: Joined) {
    match joined {
        Ok(Ok(Ok(()))) => println!("{part} stopped"),
        Ok(Ok(Err(err))) => eprintln!("{part} stopped with an error: {err:#}"),
        Ok(Err(err)) => eprintln!("{part} task failed: {err}"),
        Err(_) => eprintln!("{part} did not stop within the grace period"),
    }
}

fn free_addr(preferred: u16) -> Option<SocketAddr> {
    let addr = SocketAddr::from(([127, 0, 0, 1], preferred));
    if std::net::TcpListener::bind(addr).is_ok() {
        return Some(addr);
    }
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).ok()
}

/// How to call this binary from the working directory: `proxybus` when that is what the
/// shell finds on `PATH`, else its path relative to the working directory (the README's
/// `./target/release/proxybus`), else its absolute path.
fn command_name() -> String {
    let Ok(exe) = std::env::current_exe().and_then(|exe| exe.canonicalize()) else {
        return "proxybus".to_owned();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("proxybus").canonicalize().is_ok_and(|found| found == exe))
    });
    if on_path {
        return "proxybus".to_owned();
    }
    match std::env::current_dir().ok().and_then(|cwd| exe.strip_prefix(cwd).ok().map(std::path::Path::to_path_buf)) {
        Some(relative) => format!("./{}", relative.display()),
        None => exe.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_inventory_has_three_regions_and_a_dozen_proxies() {
        let inventory = proxybus_pool::Inventory::from_toml_str(SAMPLE_INVENTORY).unwrap();
        let selector = proxybus_pool::Selector::new(inventory, Default::default());
        let proxies = selector.proxies(None);
        assert_eq!(proxies.len(), 12);
        let regions: std::collections::BTreeSet<_> = proxies.iter().map(|p| p.region.to_string()).collect();
        assert_eq!(regions.len(), 3);
    }

    #[test]
    fn a_config_file_sets_each_part_and_refuses_unknown_sections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up.toml");
        std::fs::write(
            &path,
            "inventory = \"inv.toml\"\n[resolver]\nhedge_delay_ms = 123\n[aggregator]\nbatch_size = 7\n",
        )
        .unwrap();
        let parts = read_settings(Some(&path)).unwrap();
        assert_eq!(parts.inventory, Some(PathBuf::from("inv.toml")));
        assert_eq!(parts.resolver.hedge_delay_ms, 123);
        assert_eq!(parts.aggregator.batch_size, 7);
        std::fs::write(&path, "[resolvr]\nhedge_delay_ms = 1\n").unwrap();
        assert!(read_settings(Some(&path)).unwrap_err().to_string().contains("resolvr"));
        std::fs::write(&path, "[resolver]\nhedge_delay_msx = 1\n").unwrap();
        assert!(read_settings(Some(&path)).is_err(), "unknown keys of a part are refused");
    }
}
