//! The upstream of the resolver: the reference `proxybus-pool` service in a child
//! process of its own (`proxybus-bench subject pool`) on 127.0.0.1, as
//! `proxybus_pool::PoolServer` runs it, with its telemetry. Upstream calls are
//! counted by the pool itself: its `proxybus_pool_http_requests_total` counter of
//! the request route, read from its `/metrics` (how `singleflight` and
//! `reconnect-storm` count upstream calls).
//!
//! A process of its own, not a task of the bench: the seed's direct call (a feed
//! POSTing to the pool) and the resolver's upstream call then both cross from one
//! process to another, as they do in production. In the bench's own process the
//! pool shared the requester's runtime, whose threads were already awake for the
//! direct call and not for the resolver's, and the two paths were not compared
//! alike (docs/benchmarks.md, round 8).

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use proxybus_pool::{AuthSettings, Inventory, PoolConfig, PoolServer, PoolSettings, Selector};
use proxybus_shared::http::paths;

use crate::Options;
use crate::subject::{ChildReport, SubjectProcess};

/// Bearer token the bench's pool accepts.
pub const POOL_TOKEN: &str = "proxybus-bench-token";
/// How long the pool child may take to start or stop.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);
/// The pool's counter of HTTP requests by route and status.
const REQUESTS_COUNTER: &str = "proxybus_pool_http_requests_total";

/// An inventory of `regions` × `per_region` proxies (documentation addresses, no lease caps).
pub fn inventory_toml(regions: usize, per_region: usize) -> String {
    let names = ["us-east", "eu-west", "ap-northeast", "us-west"];
    let mut text = String::from(
        "default_region = \"us-east\"\n[defaults]\nstrategy = \"p2c_ewma\"\nttl_seconds = 300\nsticky = true\n",
    );
    for (r, name) in names.iter().take(regions.clamp(1, names.len())).enumerate() {
        let _ = writeln!(text, "[regions.{name}]");
        for p in 0..per_region {
            let _ =
                writeln!(text, "[[regions.{name}.proxies]]\nurl = \"http://feed:secret@198.51.{r}.{}:3128\"", p + 1);
        }
    }
    text
}

/// A running pool child; killed on drop, stopped gracefully by [`finish`](Self::finish).
#[derive(Debug)]
pub struct CountingPool {
    process: SubjectProcess,
    addr: SocketAddr,
    http: reqwest::Client,
}

impl CountingPool {
    /// Spawns a pool of 2 regions × 16 proxies on a free port of 127.0.0.1 and waits
    /// until it listens.
    ///
    /// # Errors
    /// The child cannot be spawned, or does not say where it listens within a minute.
    pub async fn start(options: &Options) -> anyhow::Result<Self> {
        let mut process = SubjectProcess::spawn_plain(&options.exe, "pool", &["pool".to_owned()])?;
        let ready = process.next_line(PROCESS_TIMEOUT).await?;
        let addr: SocketAddr = ready
            .get("listening")
            .and_then(|a| a.as_str())
            .with_context(|| format!("the pool printed {ready}"))?
            .parse()?;
        proxybus_shared::http::install_crypto_provider();
        Ok(Self { process, addr, http: reqwest::Client::new() })
    }

    /// `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The child's pid.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Requests the pool's request route has answered so far, any status, read from
    /// its own `/metrics` (`proxybus_pool_http_requests_total{route="/api/v1/proxy/request"}`).
    ///
    /// # Errors
    /// `/metrics` unreachable or not Prometheus text.
    pub async fn requests(&self) -> anyhow::Result<u64> {
        let text =
            self.http.get(format!("{}{}", self.url(), paths::METRICS)).send().await?.error_for_status()?.text().await?;
        request_route_count(&text)
    }

    /// Stops the child gracefully and returns its report (peak RSS).
    ///
    /// # Errors
    /// The child does not stop cleanly within a minute.
    pub async fn finish(self) -> anyhow::Result<ChildReport> {
        self.process.finish(PROCESS_TIMEOUT).await
    }
}

/// The sum of `proxybus_pool_http_requests_total` over the request route's statuses,
/// in Prometheus text; 0 before the first request (no series yet).
fn request_route_count(text: &str) -> anyhow::Result<u64> {
    let route = format!("route=\"{}\"", paths::REQUEST);
    let mut total = 0_u64;
    let series = format!("{REQUESTS_COUNTER}{{");
    for line in text.lines().filter(|l| l.starts_with(&series) && l.contains(&route)) {
        let Some(value) = line.rsplit(' ').next() else { bail!("no value in {line:?}") };
        // Counters print as integers, or in exponent form past 2^53 (not reached here).
        let value: f64 = value.parse().with_context(|| format!("counter value in {line:?}"))?;
        total += value as u64;
    }
    Ok(total)
}

/// The child side: `PoolServer` (as `proxybus-pool` runs it, without NATS or active
/// checks) over [`inventory_toml`]`(2, 16)`, accepting [`POOL_TOKEN`], on a free port of
/// 127.0.0.1, until `shutdown`. Prints `{"listening":"127.0.0.1:port"}` once bound.
///
/// # Errors
/// The inventory or the settings are refused, or the server fails.
pub async fn serve_child(shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let inventory = Inventory::from_toml_str(&inventory_toml(2, 16)).context("bench inventory")?;
    let settings = PoolSettings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        auth: AuthSettings { tokens: vec![POOL_TOKEN.into()], ..AuthSettings::default() },
        ..PoolSettings::default()
    };
    let selector = Arc::new(Selector::new(inventory, settings.selector_options()));
    let server = PoolServer::bind_with_selector(PoolConfig { settings, nats: None }, selector).await?;
    println!("{{\"listening\":\"{}\"}}", server.local_addr());
    server.serve(shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_route_is_summed_over_statuses_and_other_routes_are_not_counted() {
        let text = "# TYPE proxybus_pool_http_requests_total counter\n\
            proxybus_pool_http_requests_total{route=\"/api/v1/proxy/request\",status=\"200\"} 2000\n\
            proxybus_pool_http_requests_total{route=\"/api/v1/proxy/request\",status=\"503\"} 3\n\
            proxybus_pool_http_requests_total{route=\"/metrics\",status=\"200\"} 7\n\
            proxybus_pool_http_request_duration_seconds_count{route=\"/api/v1/proxy/request\"} 2003\n";
        assert_eq!(request_route_count(text).unwrap(), 2003);
        assert_eq!(request_route_count("").unwrap(), 0);
        assert!(request_route_count("proxybus_pool_http_requests_total{route=\"/api/v1/proxy/request\"} x").is_err());
    }
}
