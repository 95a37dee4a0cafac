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
//!
//! Every part records into the process's one Prometheus recorder
//! (`proxybus_shared::telemetry`), served on one `/metrics`: at `[resolver]
//! metrics_listen` when set, else 127.0.0.1:9464, or any free port when that is
//! taken. The resolver's and the aggregator's own metrics listeners are off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use proxybus_aggregator::{AggregatorConfig, AggregatorSettings};
use proxybus_client::{ClientConfig, ProxyClient};
use proxybus_resolver::ResolverSettings;
use proxybus_shared::config::{self, AuthMethod, ExternalProxyServiceConfig, ProxySettings, Validate};
use proxybus_shared::http::paths;
use proxybus_shared::nats::NatsSettings;
use proxybus_shared::subject;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::local_nats::LocalNats;

/// The port of `/metrics` when the config file names none and it is free (the
/// resolver's and the aggregator's default port).
const DEFAULT_METRICS_PORT: u16 = 9464;

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
    let parts = read_settings(args.config.as_deref())?;
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
    let result = run_parts(&url, data_dir, &args, &parts).await;
    if let Some(local) = local {
        local.stop().await?;
        println!("nats-server stopped");
    }
    result
}

/// The parts of the pipeline once they run: each part's task, with what the banner
/// and the demo need to know of them.
struct Running {
    /// The pool's base URL, `http://{addr}`.
    pool_url: String,
    /// The pool's proxy selection (for the banner's count of proxies and regions).
    selector: std::sync::Arc<proxybus_pool::Selector>,
    /// The pool's active checks, when on (for the banner).
    probes: Option<proxybus_pool::ActiveCheckSettings>,
    /// The file the pool's API token was written to.
    token_file: PathBuf,
    /// Where every part's series are served.
    metrics_addr: SocketAddr,
    /// The dashboard's address.
    dashboard_addr: SocketAddr,
    /// A NATS connection of `up` itself (dashboard, demo feeds).
    client: async_nats::Client,
    /// The three services, named, in the order they are stopped and reported.
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
    /// The `/metrics` listener.
    metrics_task: JoinHandle<()>,
}

impl Running {
    /// The task of the part named `part` (`pool`, `resolver`, `aggregator`).
    fn task(&self, part: &str) -> &JoinHandle<anyhow::Result<()>> {
        let (_, task) = self.tasks.iter().find(|(name, _)| *name == part).expect("a part up starts");
        task
    }
}

/// The demo's feeds and their live view, while they run.
struct DemoFeeds {
    board: proxybus_lab::feeds::FeedBoard,
    feeds: JoinHandle<()>,
    live: JoinHandle<()>,
}

/// Starts every part on the bus at `url`, prints where each runs, and stops them all
/// on Ctrl-C, SIGTERM or `--duration`.
async fn run_parts(url: &str, data_dir: &Path, args: &UpArgs, parts: &PartSettings) -> anyhow::Result<ExitCode> {
    let stop = CancellationToken::new();
    let nats = NatsSettings::new(url);
    let lab = match args.demo {
        false => None,
        true => Some(start_lab(data_dir, args).await?),
    };
    let inventory = inventory_path(data_dir, args, parts, lab.as_ref())?;
    let (metrics_addr, metrics_task) = serve_metrics(parts.resolver.metrics_listen, &stop).await?;
    let token = uuid::Uuid::new_v4().simple().to_string();
    let token_file = data_dir.join("pool.token");
    proxybus_shared::config::write_private(&token_file, &token)?;
    let (pool_url, selector, probes, pool_task) =
        start_pool(&nats, inventory.clone(), &token, args, parts, lab.as_ref(), &stop).await?;
    let proxy_services = ExternalProxyServiceConfig {
        enabled: true,
        endpoints: vec![pool_url.clone()],
        auth_method: AuthMethod::BearerToken,
        auth_credentials: [("token".to_owned(), token.into())].into_iter().collect(),
        ..Default::default()
    };
    // Aggregator first: it creates stream PROXY_FEEDBACK that feeds publish into.
    let aggregator_task = start_aggregator(&nats, parts, proxy_services.clone(), &stop);
    let resolver_task = start_resolver(&nats, parts, proxy_services, &stop);
    let client = wait_for_services(&nats).await?;
    let dashboard_addr = start_dashboard(&client, args.dashboard_listen, &stop).await?;
    let running = Running {
        pool_url,
        selector,
        probes,
        token_file,
        metrics_addr,
        dashboard_addr,
        client,
        tasks: vec![("pool", pool_task), ("resolver", resolver_task), ("aggregator", aggregator_task)],
        metrics_task,
    };

    print_banner(url, &inventory, lab.as_ref(), &running);
    let demo = lab.as_ref().map(|lab| start_demo_feeds(lab, &nats, &running.client, &stop));
    wait_for_stop(args.duration.map(Duration::from_secs), running.task("resolver")).await?;
    shut_down(stop, demo, lab, running).await;
    Ok(ExitCode::SUCCESS)
}

/// Starts the exchange lab of `--demo` (`--lab FILE`, else the demo lab) under `data_dir/lab`.
async fn start_lab(data_dir: &Path, args: &UpArgs) -> anyhow::Result<proxybus_lab::Lab> {
    let lab_args = proxybus_lab::command::LabArgs { config: args.lab.clone(), dir: None, duration: None };
    let mut config = lab_args.config(data_dir.join("lab"))?;
    if args.lab.is_some() && config.dir.is_relative() {
        config.dir = data_dir.join("lab");
    }
    proxybus_lab::Lab::start(config).await.context("cannot start the exchange lab")
}

/// The pool's inventory: `--inventory`, else the config file's `inventory`, else the
/// lab's (with `--demo`), else the bundled sample written to `data_dir`.
fn inventory_path(
    data_dir: &Path,
    args: &UpArgs,
    parts: &PartSettings,
    lab: Option<&proxybus_lab::Lab>,
) -> anyhow::Result<PathBuf> {
    if let Some(path) = args.inventory.clone().or(parts.inventory.clone()) {
        return Ok(path);
    }
    if let Some(lab) = lab {
        return Ok(lab.inventory_path().to_owned());
    }
    let path = data_dir.join("inventory.sample.toml");
    std::fs::write(&path, SAMPLE_INVENTORY)?;
    Ok(path)
}

/// Serves the process's one Prometheus recorder, where every part records, on one
/// `/metrics` (`proxybus_shared::telemetry::serve_metrics`): at `configured` (the
/// config file's `[resolver] metrics_listen`) when given, else on 127.0.0.1:9464, or
/// any free port when that is taken. Stops when `stop` is cancelled.
async fn serve_metrics(
    configured: Option<SocketAddr>,
    stop: &CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    use proxybus_shared::telemetry;
    if let Some(addr) = configured {
        return telemetry::serve_metrics(addr, stop.clone())
            .await
            .with_context(|| format!("cannot serve /metrics on {addr}"));
    }
    match telemetry::serve_metrics(SocketAddr::from(([127, 0, 0, 1], DEFAULT_METRICS_PORT)), stop.clone()).await {
        Ok(served) => Ok(served),
        Err(_) => telemetry::serve_metrics(SocketAddr::from(([127, 0, 0, 1], 0)), stop.clone())
            .await
            .context("cannot serve /metrics"),
    }
}

/// Starts the pool service on `--pool-listen` (unless the config file sets `[pool]
/// listen`) with `inventory`, accepting `token`: the upstream the resolver asks over
/// HTTP. Its URL, its selector and its task.
async fn start_pool(
    nats: &NatsSettings,
    inventory: PathBuf,
    token: &str,
    args: &UpArgs,
    parts: &PartSettings,
    lab: Option<&proxybus_lab::Lab>,
    stop: &CancellationToken,
) -> anyhow::Result<(
    String,
    std::sync::Arc<proxybus_pool::Selector>,
    Option<proxybus_pool::ActiveCheckSettings>,
    JoinHandle<anyhow::Result<()>>,
)> {
    let mut settings = parts.pool.clone();
    settings.inventory = inventory;
    if settings.listen == proxybus_pool::PoolSettings::default().listen {
        settings.listen = args.pool_listen;
    }
    if let Some(lab) = lab
        && !settings.active_checks.enabled
    {
        demo_probes(&mut settings.active_checks, lab);
    }
    settings.auth.tokens.push(token.to_owned().into());
    let probes = settings.active_checks.enabled.then(|| settings.active_checks.clone());
    let config = proxybus_pool::PoolConfig { settings, nats: Some(nats.clone()) };
    let pool = proxybus_pool::PoolServer::bind(config).await?;
    let url = format!("http://{}", pool.local_addr());
    let selector = pool.selector();
    let task = spawn_part(pool.serve(stop.clone().cancelled_owned()));
    Ok((url, selector, probes, task))
}

/// The demo's probes (`--demo`, unless the config file turns `[pool.active_checks]` on
/// itself): every lab proxy, every [`DEMO_PROBE_INTERVAL_SECONDS`], opens a tunnel to the
/// lab's Binance (`api.binance.com:443`, which the lab's proxies send to its simulator)
/// and pings it (`GET /api/v3/ping`, weight 1) over TLS trusting the lab's CA — so a
/// proxy no feed was given still has health, and an ejected one can come back on its
/// probes (docs/health.md, "Probes"). The pool's default of 2 probes a minute per proxy holds.
fn demo_probes(checks: &mut proxybus_pool::ActiveCheckSettings, lab: &proxybus_lab::Lab) {
    checks.enabled = true;
    checks.interval_seconds = DEMO_PROBE_INTERVAL_SECONDS;
    checks.connect_target = Some("api.binance.com:443".into());
    checks.ping_path = Some("/api/v3/ping".into());
    checks.ca_file = Some(lab.ca_path().to_owned());
    checks.exchange = "binance".parse().expect("a valid exchange id");
}

/// Seconds between the demo's probe rounds: 30, as the pool's `max_per_minute` default
/// (2) allows, so that a 90-second demo shows three rounds.
const DEMO_PROBE_INTERVAL_SECONDS: u64 = 30;

/// Starts the aggregator, folding feedback into health and pushing it to `proxy_services`.
/// Its own metrics listener is off: `up` serves every part's series on one `/metrics`.
fn start_aggregator(
    nats: &NatsSettings,
    parts: &PartSettings,
    proxy_services: ExternalProxyServiceConfig,
    stop: &CancellationToken,
) -> JoinHandle<anyhow::Result<()>> {
    let mut settings = parts.aggregator.clone();
    settings.metrics_listen.clear();
    let config =
        AggregatorConfig { nats: nats.clone().with_name(subject::AGGREGATOR_SERVICE), settings, proxy_services };
    spawn_part(proxybus_aggregator::run(config, stop.clone().cancelled_owned()))
}

/// Starts the resolver, asking `proxy_services` upstream. Its own metrics listener is
/// off: `up` serves every part's series on one `/metrics`.
fn start_resolver(
    nats: &NatsSettings,
    parts: &PartSettings,
    proxy_services: ExternalProxyServiceConfig,
    stop: &CancellationToken,
) -> JoinHandle<anyhow::Result<()>> {
    let config = proxybus_resolver::ResolverConfig {
        proxy: ProxySettings { enabled: true, external_service: proxy_services, ..Default::default() },
        resolver: ResolverSettings { metrics_listen: None, ..parts.resolver.clone() },
        nats: nats.clone(),
    };
    spawn_part(proxybus_resolver::run(config, stop.clone().cancelled_owned()))
}

/// Runs a part's future as a task whose error, whatever the part's error type, is an
/// `anyhow::Error`.
fn spawn_part<E>(part: impl Future<Output = Result<(), E>> + Send + 'static) -> JoinHandle<anyhow::Result<()>>
where
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::spawn(async move { part.await.map_err(anyhow::Error::from) })
}

/// Connects `up`'s own client and waits until the resolver and the aggregator serve
/// (their `$SRV.INFO` lists an endpoint; 20 s each at most).
async fn wait_for_services(nats: &NatsSettings) -> anyhow::Result<async_nats::Client> {
    let client = nats.connect().await.context("cannot connect to NATS")?;
    for service in [subject::RESOLVER_SERVICE, subject::AGGREGATOR_SERVICE] {
        proxybus_shared::nats::wait_for_service(&client, service, Duration::from_secs(20)).await?;
    }
    Ok(client)
}

/// Serves the web dashboard on `preferred` (loopback; any free port when taken); its address.
async fn start_dashboard(
    client: &async_nats::Client,
    preferred: SocketAddr,
    stop: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let dashboard = crate::dashboard::bind_loopback_or_any(preferred)
        .await
        .with_context(|| format!("cannot serve the dashboard on {preferred}"))?;
    let addr = dashboard.local_addr()?;
    tokio::spawn(crate::dashboard::serve(client.clone(), dashboard, None, stop.clone()));
    Ok(addr)
}

/// Prints what runs where (the lab's banner first with `--demo`), and what to try.
fn print_banner(nats_url: &str, inventory: &Path, lab: Option<&proxybus_lab::Lab>, running: &Running) {
    let proxies = running.selector.proxies(None);
    let regions: std::collections::BTreeSet<String> = proxies.iter().map(|p| p.region.to_string()).collect();
    if let Some(lab) = lab {
        print!("{}", proxybus_lab::command::banner(lab));
    }
    println!("proxybus is up");
    println!("  nats        {nats_url}");
    println!(
        "  pool        {}  ({} proxies in {} regions from {}; API token in {})",
        running.pool_url,
        proxies.len(),
        regions.len(),
        inventory.display(),
        running.token_file.display()
    );
    if let Some(probes) = &running.probes {
        let target = probes.connect_target.as_deref().unwrap_or("none: a TCP connect");
        let ping = probes.ping_path.as_deref().map(|path| format!(", GET {path}")).unwrap_or_default();
        println!(
            "  probes      every {} s, through each proxy to {target}{ping} (published for {}, probe: true)",
            probes.interval_seconds, probes.exchange
        );
    }
    println!(
        "  resolver    {}.{{exchange}}.{{http|websocket}} (queue group {})",
        subject::REQUEST_PREFIX,
        subject::RESOLVER_SERVICE
    );
    println!(
        "  aggregator  stream {} -> KV bucket {}, {}.{{region}}",
        subject::FEEDBACK_STREAM,
        subject::HEALTH_BUCKET,
        subject::HEALTH_PREFIX
    );
    println!("  metrics     http://{}{}", running.metrics_addr, paths::METRICS);
    println!("  dashboard   http://{}/", running.dashboard_addr);
    let me = command_name();
    println!("try, in another terminal:");
    for command in ["request binance websocket", "health --watch", "services"] {
        println!("  {me} {command}");
    }
    println!("Ctrl-C stops everything.");
}

/// Starts the demo's feeds through `lab` (each a `ProxyClient` on `up`'s connection) and
/// their live view, on the terminal and the dashboard.
fn start_demo_feeds(
    lab: &proxybus_lab::Lab,
    nats: &NatsSettings,
    client: &async_nats::Client,
    stop: &CancellationToken,
) -> DemoFeeds {
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
    DemoFeeds { board, feeds, live }
}

/// Waits for Ctrl-C, SIGTERM or the end of `duration`.
///
/// # Errors
/// When the resolver's task ends first.
async fn wait_for_stop(duration: Option<Duration>, resolver: &JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::select! {
        () = proxybus_shared::shutdown::signal() => println!("\nshutting down"),
        () = async { match duration { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => {
            println!("ran for {}s; shutting down", duration.unwrap_or_default().as_secs());
        }
        result = watch(resolver) => return Err(result),
    }
    Ok(())
}

/// Stops everything: the demo's feeds (printing their summary), the lab, then the
/// three services within a 15 s grace each (reporting how each stopped), the
/// `/metrics` listener and `up`'s own connection.
async fn shut_down(stop: CancellationToken, demo: Option<DemoFeeds>, lab: Option<proxybus_lab::Lab>, running: Running) {
    stop.cancel();
    if let Some(DemoFeeds { board, feeds, live }) = demo {
        let _ = tokio::time::timeout(Duration::from_secs(5), feeds).await;
        live.abort();
        println!("{}", crate::demo::summary(&board.snapshot()));
    }
    if let Some(lab) = lab {
        lab.stop().await;
        println!("exchange lab stopped");
    }
    let grace = Duration::from_secs(15);
    let (names, tasks): (Vec<_>, Vec<_>) = running.tasks.into_iter().unzip();
    let joined = futures::future::join_all(tasks.into_iter().map(|task| tokio::time::timeout(grace, task))).await;
    for (part, joined) in names.into_iter().zip(joined) {
        report_stop(part, joined);
    }
    let _ = tokio::time::timeout(grace, running.metrics_task).await;
    let _ = running.client.drain().await;
}

/// Resolves with an error when the resolver task ends before shutdown.
async fn watch<T>(task: &JoinHandle<T>) -> anyhow::Error {
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
