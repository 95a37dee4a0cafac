//! `proxybus-bench lab`: what proxybus is for, measured. M market-data feeds
//! run for T seconds against the exchange lab's per-IP limits three ways, each
//! on a fresh lab (same proxies, same faults, same rules):
//!
//! - **proxybus**: the full loop — leases from the resolver (pool inventory of
//!   the lab's proxies), feedback from every outcome, the aggregator's
//!   ejections, cool-downs and bans flowing back into selection;
//! - **round robin**: the next proxy of the same list on every attempt, with no
//!   feedback — what an embedded proxy pool (cryptofeed's) does;
//! - **one IP**: every feed through one faultless forwarder, so the exchanges see
//!   a single source address, as a collector without proxies would.
//!
//! Halfway through, the proxy carrying the most feeds dies (for one IP: the one
//! path). Reported side by side: the share of feed-seconds with data flowing,
//! messages received, the 429/418/451/403 answers the simulator gave
//! (its own counters), reconnects, and the time from the death to each hit
//! feed's next message.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use proxybus_client::{ClientConfig, ProxyClient};
use proxybus_lab::feeds::{self, FeedSettings, FeedSpec, FeedStats, ProxyChoice};
use proxybus_lab::{Lab, LabConfig, LabProxyConfig, ProxyFault, ProxyKind};
use proxybus_shared::ProxyUrl;
use proxybus_shared::nats::NatsSettings;
use proxybus_shared::subject;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::Bus;

/// How feeds choose proxies in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The full proxybus loop.
    Proxybus,
    /// Round robin over the same proxies, no feedback.
    RoundRobin,
    /// One source IP.
    OneIp,
}

impl Mode {
    /// Every mode, in the table's order.
    pub const ALL: [Mode; 3] = [Mode::Proxybus, Mode::RoundRobin, Mode::OneIp];

    fn title(self) -> &'static str {
        match self {
            Mode::Proxybus => "proxybus (resolver + feedback + aggregator)",
            Mode::RoundRobin => "round robin, no feedback",
            Mode::OneIp => "one IP, no proxies",
        }
    }
}

/// What one mode achieved.
#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    /// The mode.
    pub mode: Mode,
    /// Feed-seconds with data flowing / feed-seconds run, 0..1.
    pub connected_share: f64,
    /// Messages received over every feed.
    pub messages: u64,
    /// Answers the simulator gave, by status (`429`, `418`, `451`, `403`).
    pub refusals: BTreeMap<String, u64>,
    /// Websockets the simulator closed with 1008.
    pub closed_1008: u64,
    /// Times data flowed again after it had stopped, over every feed.
    pub reconnects: u64,
    /// Feeds the proxy death cut.
    pub feeds_hit: usize,
    /// Seconds from the death to each hit feed's next message (feeds that recovered).
    pub recoveries_seconds: Vec<f64>,
    /// Every feed's counters at the end.
    pub feeds: Vec<FeedStats>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct LabReport {
    /// Feeds per mode.
    pub feeds: usize,
    /// Seconds per mode.
    pub seconds: u64,
    /// One result per mode.
    pub results: Vec<ModeResult>,
}

/// The lab every mode runs on: the demo lab, plus (for one IP) a faultless forwarder from 127.0.0.14.
fn lab_config(dir: &std::path::Path, mode: Mode) -> LabConfig {
    let mut config = LabConfig::demo(dir);
    if mode == Mode::OneIp {
        config.proxies.push(LabProxyConfig {
            kind: ProxyKind::Http,
            region: "us-east".into(),
            source_ip: Ipv4Addr::new(127, 0, 0, 14),
            fault: ProxyFault::None,
            connection_types: Vec::new(),
        });
    }
    config
}

/// Runs M `feeds` for `seconds` in every mode, one after the other.
///
/// # Errors
/// The lab or the proxybus services could not start.
pub async fn run(bus: &Bus, feeds: usize, seconds: u64) -> anyhow::Result<LabReport> {
    let mut results = Vec::new();
    for mode in Mode::ALL {
        eprintln!("proxybus-bench lab: {} for {seconds}s with {feeds} feeds", mode.title());
        results.push(run_mode(bus, mode, feeds, seconds).await?);
    }
    Ok(LabReport { feeds, seconds, results })
}

/// The feeds of a run: the demo's feeds, repeated up to `count`.
fn specs(count: usize) -> Vec<FeedSpec> {
    FeedSpec::demo().into_iter().cycle().take(count).collect()
}

async fn run_mode(bus: &Bus, mode: Mode, count: usize, seconds: u64) -> anyhow::Result<ModeResult> {
    let dir = tempfile::tempdir()?;
    let lab = Lab::start(lab_config(dir.path(), mode)).await.context("starting the lab")?;
    let stop = CancellationToken::new();
    let specs = specs(count);
    let urls: Vec<(ProxyUrl, &LabProxyConfig)> = lab
        .proxies()
        .iter()
        .zip(&lab.config().proxies)
        .map(|(p, c)| Ok((ProxyUrl::parse(&p.url())?, c)))
        .collect::<anyhow::Result<_>>()?;
    let services = match mode {
        Mode::Proxybus => Some(Services::start(bus, &lab, stop.clone()).await?),
        _ => None,
    };
    let choices: Vec<Arc<ProxyChoice>> = match mode {
        Mode::Proxybus => {
            let services = services.as_ref().expect("started above");
            let regions = ["us-east", "eu-west", "ap-northeast"];
            (0..count)
                .map(|i| {
                    let mut config = ClientConfig::new(NatsSettings::new(bus.url()), format!("bench-feed-{i}"));
                    config.request_timeout = Duration::from_secs(3);
                    config.connect_timeout = Duration::from_secs(5);
                    config.region = regions[i % regions.len()].parse().ok();
                    config.extra_roots = vec![lab.ca().der()];
                    Arc::new(ProxyChoice::Proxybus(ProxyClient::with_nats(config, services.nats.clone())))
                })
                .collect()
        }
        Mode::RoundRobin => {
            // One embedded pool per connection type, as the inventory lists the proxies.
            let for_type = |conn: &str| {
                let proxies = urls
                    .iter()
                    .filter(|(_, c)| c.connection_types.is_empty() || c.connection_types.iter().any(|t| t == conn))
                    .map(|(u, _)| u.clone())
                    .collect();
                Arc::new(ProxyChoice::round_robin(proxies))
            };
            let (ws, http) = (for_type("websocket"), for_type("http"));
            specs
                .iter()
                .map(|s| match s.kind {
                    feeds::FeedKind::Trades { .. } => ws.clone(),
                    feeds::FeedKind::Poll { .. } => http.clone(),
                })
                .collect()
        }
        Mode::OneIp => {
            let only = Arc::new(ProxyChoice::Fixed(urls.last().expect("the forwarder").0.clone()));
            (0..count).map(|_| only.clone()).collect()
        }
    };
    let (board, task) = feeds::start(specs, choices, FeedSettings::new(vec![lab.ca().der()]), stop.clone());

    tokio::time::sleep(Duration::from_secs(seconds / 2)).await;
    // The proxy carrying the most feeds dies.
    let mut carried: BTreeMap<String, usize> = BTreeMap::new();
    for feed in board.snapshot().iter().filter(|f| f.connected) {
        if let Some(proxy) = &feed.proxy {
            *carried.entry(proxy.clone()).or_default() += 1;
        }
    }
    let victim = carried.into_iter().max_by_key(|(_, n)| *n).map(|(id, _)| id);
    let feeds_hit = match &victim {
        Some(id) => {
            let hit = board.mark_outage(id);
            if let Some(index) = urls.iter().position(|(u, _)| u.id().as_str() == id) {
                lab.proxies()[index].set_fault(ProxyFault::Dead);
            }
            hit
        }
        None => 0,
    };
    tokio::time::sleep(Duration::from_secs(seconds - seconds / 2)).await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    let stats = board.snapshot();
    let simulated = lab.simulator().stats().total();
    if let Some(services) = services {
        services.stop().await;
    }
    lab.stop().await;

    let running: f64 = stats.iter().map(|f| f.running_seconds).sum();
    let connected: f64 = stats.iter().map(|f| f.connected_seconds).sum();
    Ok(ModeResult {
        mode,
        connected_share: if running > 0.0 { connected / running } else { 0.0 },
        messages: stats.iter().map(|f| f.messages).sum(),
        refusals: [
            ("429", simulated.http_429),
            ("418", simulated.http_418),
            ("451", simulated.http_451),
            ("403", simulated.http_403),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        closed_1008: simulated.ws_closed_1008,
        reconnects: stats.iter().map(|f| f.reconnects).sum(),
        feeds_hit,
        recoveries_seconds: stats.iter().flat_map(|f| f.recoveries_seconds.iter().copied()).collect(),
        feeds: stats,
    })
}

/// Pool, resolver and aggregator in this process, on the bench's NATS server.
struct Services {
    nats: async_nats::Client,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Services {
    async fn start(bus: &Bus, lab: &Lab, stop: CancellationToken) -> anyhow::Result<Self> {
        let services_stop = stop.child_token();
        let nats_settings = NatsSettings::new(bus.url());
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut pool_settings = proxybus_pool::PoolSettings {
            inventory: lab.inventory_path().to_owned(),
            listen: "127.0.0.1:0".parse()?,
            ..Default::default()
        };
        pool_settings.auth.tokens.push(token.clone().into());
        let pool = proxybus_pool::PoolServer::bind(proxybus_pool::PoolConfig {
            settings: pool_settings,
            nats: Some(nats_settings.clone()),
        })
        .await?;
        let pool_url = format!("http://{}", pool.local_addr());
        let mut tasks = vec![tokio::spawn({
            let stop = services_stop.clone();
            async move {
                let _ = pool.serve(stop.cancelled_owned()).await;
            }
        })];
        let mut aggregator_settings = proxybus_aggregator::AggregatorSettings::default();
        aggregator_settings.metrics_listen.clear();
        let aggregator = proxybus_aggregator::AggregatorConfig {
            nats: nats_settings.clone().with_name(subject::AGGREGATOR_SERVICE),
            settings: aggregator_settings,
            proxy_services: crate::subject::external_service(&pool_url, &token),
        };
        tasks.push(tokio::spawn({
            let stop = services_stop.clone();
            async move {
                let _ = proxybus_aggregator::run(aggregator, stop.cancelled_owned()).await;
            }
        }));
        let resolver = proxybus_resolver::ResolverConfig {
            proxy: crate::subject::resolver_proxy_settings(&pool_url, &token),
            resolver: proxybus_resolver::ResolverSettings { metrics_listen: None, ..Default::default() },
            nats: nats_settings.clone(),
        };
        tasks.push(tokio::spawn({
            let stop = services_stop.clone();
            async move {
                let _ = proxybus_resolver::run(resolver, stop.cancelled_owned()).await;
            }
        }));
        let nats = bus.connect().await?;
        for service in [subject::RESOLVER_SERVICE, subject::AGGREGATOR_SERVICE] {
            proxybus_shared::nats::wait_for_service(&nats, service, Duration::from_secs(20)).await?;
        }
        Ok(Self { nats, tasks, stop: services_stop })
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }
}

fn recovery(result: &ModeResult, seconds: u64) -> String {
    if result.feeds_hit == 0 {
        return "no feed hit".into();
    }
    let recovered = result.recoveries_seconds.len();
    if recovered == 0 {
        return format!("0 of {} feeds within {}s", result.feeds_hit, seconds - seconds / 2);
    }
    let mut sorted = result.recoveries_seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    format!(
        "{recovered} of {} feeds; median {median:.1}s, max {:.1}s",
        result.feeds_hit,
        sorted.last().copied().unwrap_or_default()
    )
}

impl LabReport {
    /// The side-by-side table (markdown), one column per mode.
    pub fn markdown(&self) -> String {
        let mut text = String::from("| | ");
        text.push_str(&self.results.iter().map(|r| r.mode.title()).collect::<Vec<_>>().join(" | "));
        text.push_str(" |\n|---|");
        text.push_str(&"---|".repeat(self.results.len()));
        text.push('\n');
        let mut row = |name: &str, cell: &dyn Fn(&ModeResult) -> String| {
            text.push_str(&format!("| {name} | {} |\n", self.results.iter().map(cell).collect::<Vec<_>>().join(" | ")));
        };
        row("feed-seconds with data flowing", &|r| format!("{:.1}%", r.connected_share * 100.0));
        row("messages received", &|r| r.messages.to_string());
        for status in ["429", "418", "451", "403"] {
            row(&format!("{status} answers incurred"), &|r| r.refusals.get(status).copied().unwrap_or(0).to_string());
        }
        row("websockets closed 1008", &|r| r.closed_1008.to_string());
        row("reconnects", &|r| r.reconnects.to_string());
        row("recovery after the busiest proxy died", &|r| recovery(r, self.seconds));
        text
    }
}
