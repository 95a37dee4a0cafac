//! Simulated feeds for `proxybus up --demo`: several exchanges, http and
//! websocket, asking for proxies through the client library and reporting
//! made-up outcomes in which some proxies time out, one is rate-limited by
//! binance (429 with `Retry-After`), one is refused by binance (451) and one
//! recovers after a bad start, so that the health table shows ejections, bans
//! and recoveries converging.
//!
//! Outcomes depend on the proxy's host (the sample inventory's addresses); any
//! other proxy simply works, with a latency that depends on its region.

use std::time::Duration;

use proxybus_client::{ProxyClient, ProxyLease};
use proxybus_shared::{ConnectionType, ErrorKind, ExchangeId, FeedbackPhase, Region};
use tokio_util::sync::CancellationToken;

/// What happens when a feed uses a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It works, with this latency.
    Ok(u64),
    /// It fails with this kind; `Retry-After` when the exchange sent one.
    Fail(ErrorKind, Option<u64>),
}

/// The simulated fate of a proxy `host` for `exchange`, `elapsed` into the demo, at draw `n`.
pub(crate) fn fate(host: &str, exchange: &str, elapsed: Duration, n: u64) -> Outcome {
    match (host, exchange) {
        // Dead for the first 40 s, then fine: ejected, then back through probation.
        ("203.0.113.11", _) if elapsed < Duration::from_secs(40) => Outcome::Fail(ErrorKind::Timeout, None),
        // Binance rate-limits this one; other exchanges are fine.
        ("203.0.113.31", "binance") => Outcome::Fail(ErrorKind::Http429, Some(20)),
        // A restricted location for binance only.
        ("203.0.113.12", "binance") => Outcome::Fail(ErrorKind::Http451, None),
        // Flaky: one attempt in four times out.
        ("203.0.113.30", _) if n.is_multiple_of(4) => Outcome::Fail(ErrorKind::Timeout, None),
        // Always down.
        ("192.0.2.41", _) => Outcome::Fail(ErrorKind::Refused, None),
        (host, _) if host.starts_with("203.0.113.") => Outcome::Ok(40 + n % 30),
        (host, _) if host.starts_with("198.51.100.") => Outcome::Ok(150 + n % 50),
        _ => Outcome::Ok(90 + n % 40),
    }
}

/// One simulated feed.
#[derive(Debug, Clone)]
struct Feed {
    exchange: ExchangeId,
    connection_type: ConnectionType,
    region: Option<Region>,
}

fn feeds() -> Vec<Feed> {
    let feed = |exchange: &str, connection_type, region: Option<&str>| Feed {
        exchange: exchange.parse().expect("a valid exchange id"),
        connection_type,
        region: region.map(|r| r.parse().expect("a valid region")),
    };
    vec![
        feed("binance", ConnectionType::Websocket, None),
        feed("binance", ConnectionType::Http, None),
        feed("binance", ConnectionType::Websocket, Some("eu-west")),
        feed("coinbase", ConnectionType::Websocket, None),
        feed("coinbase", ConnectionType::Http, Some("eu-west")),
        feed("kraken", ConnectionType::Websocket, Some("eu-west")),
        feed("bybit", ConnectionType::Http, Some("ap-northeast")),
        feed("okx", ConnectionType::Websocket, Some("ap-northeast")),
    ]
}

/// Client processes per simulated feed: each has its own `client_id`, so the
/// pool's sticky sessions spread a feed's connections over several proxies.
const CLIENTS_PER_FEED: usize = 3;
/// Ticks (of 250 ms) after which a feed's client processes "restart" with new
/// ids, as deployments do; new clients are how recovered proxies get traffic again.
const RESTART_EVERY: u64 = 40;

/// Runs the simulated feeds until `stop`; `client(id)` makes a client named `id`.
pub(crate) async fn run(client: impl Fn(String) -> ProxyClient + Send + Sync + 'static, stop: CancellationToken) {
    let started = tokio::time::Instant::now();
    let client = std::sync::Arc::new(client);
    let mut tasks = tokio::task::JoinSet::new();
    for (index, feed) in feeds().into_iter().enumerate() {
        let stop = stop.clone();
        let client = client.clone();
        tasks.spawn(async move {
            let generation = |g: u64| -> Vec<ProxyClient> {
                (0..CLIENTS_PER_FEED).map(|k| client(format!("demo-feed{index}-gen{g}-{k}"))).collect()
            };
            let mut own = generation(0);
            let mut n = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            while !stop.is_cancelled() {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                n += 1;
                if n.is_multiple_of(RESTART_EVERY) {
                    let retired = std::mem::replace(&mut own, generation(n / RESTART_EVERY));
                    tokio::spawn(async move {
                        for old in retired {
                            old.flush_feedback(Duration::from_secs(5)).await;
                        }
                    });
                }
                let client = &own[n as usize % own.len()];
                let Ok(lease) = client.get_proxy(&feed.exchange, feed.connection_type, feed.region.as_ref()).await
                else {
                    continue;
                };
                simulate(client, &lease, started.elapsed(), n).await;
            }
            for client in &own {
                client.flush_feedback(Duration::from_secs(2)).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Prints the health table every 3 s until `stop`.
pub(crate) async fn print_health(client: async_nats::Client, stop: CancellationToken) {
    let js = async_nats::jetstream::new(client);
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(3));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(bucket) = js.get_key_value(proxybus_shared::subject::HEALTH_BUCKET).await else { continue };
        let Ok(stats) = crate::health::load(&bucket).await else { continue };
        if stats.is_empty() {
            continue;
        }
        let mut shown: Vec<_> = stats.values().collect();
        shown.sort_by(|a, b| (&a.region, &a.proxy_id).cmp(&(&b.region, &b.proxy_id)));
        println!("\n-- proxy health after {}s --", started.elapsed().as_secs());
        println!("{}", crate::health::render(&shown));
    }
}

/// Reports one simulated use of `lease`; a failed proxy is dropped from the
/// client's cache so the next attempt asks again.
async fn simulate(client: &ProxyClient, lease: &ProxyLease, elapsed: Duration, n: u64) {
    let Some(proxy) = &lease.proxy else { return };
    let host = proxy.host().to_string();
    let phase = match lease.connection_type {
        ConnectionType::Http => FeedbackPhase::Request,
        ConnectionType::Websocket => FeedbackPhase::Connected,
    };
    match fate(&host, lease.exchange.as_str(), elapsed, n) {
        Outcome::Ok(latency) => {
            if let Some(mut event) = lease.feedback(client.client_id(), phase, true) {
                event.latency_ms = Some(latency);
                event.status_code = (lease.connection_type == ConnectionType::Http).then_some(200);
                client.report(event);
            }
        }
        Outcome::Fail(kind, retry_after) => {
            if let Some(mut event) = lease.feedback(client.client_id(), FeedbackPhase::Failed, false) {
                event.error_kind = Some(kind);
                event.retry_after_seconds = retry_after;
                event.status_code = match kind {
                    ErrorKind::Http429 => Some(429),
                    ErrorKind::Http451 => Some(451),
                    _ => None,
                };
                event.latency_ms = Some(if kind == ErrorKind::Timeout { 10_000 } else { 30 });
                event.error_details = Some(format!("simulated {kind}"));
                client.report(event);
            }
            client.invalidate(lease).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripted_fates_cover_ejection_bans_and_recovery() {
        let early = Duration::from_secs(5);
        let late = Duration::from_secs(60);
        assert_eq!(fate("203.0.113.11", "kraken", early, 1), Outcome::Fail(ErrorKind::Timeout, None));
        assert!(matches!(fate("203.0.113.11", "kraken", late, 1), Outcome::Ok(_)), "recovers");
        assert_eq!(fate("203.0.113.12", "binance", early, 1), Outcome::Fail(ErrorKind::Http451, None));
        assert!(matches!(fate("203.0.113.12", "coinbase", early, 1), Outcome::Ok(_)), "451 is for binance only");
        assert_eq!(fate("203.0.113.31", "binance", early, 1), Outcome::Fail(ErrorKind::Http429, Some(20)));
        assert!(matches!(fate("10.9.9.9", "binance", early, 1), Outcome::Ok(_)));
    }
}
