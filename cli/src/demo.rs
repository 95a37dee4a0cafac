//! The feeds of `proxybus up --demo`: real connections through the exchange lab
//! (`proxybus-lab`). Each feed — Binance and Coinbase trade streams over
//! websockets, REST polling of both — is a client-library `ProxyClient` of its
//! own that leases a lab proxy from the resolver, connects through it to the
//! simulator by the exchange's real host name, and reports what really happened
//! (connected, 429 with `Retry-After`, 418, 451, 403, refused, proxy_auth,
//! ws_closed). A live view shows the feeds, what the exchanges did, and the
//! proxies' health beside them.

use std::time::Duration;

use proxybus_client::ProxyClient;
use proxybus_lab::feeds::{self, FeedBoard, FeedSettings, FeedSpec, FeedStats, ProxyChoice};
use proxybus_lab::{Lab, LabExchange, SimulatorStats};
use tokio_util::sync::CancellationToken;

/// Regions the demo's feeds prefer, in turn, so that every region of the lab carries traffic.
const REGIONS: &[&str] = &["us-east", "eu-west", "ap-northeast"];

/// Starts the demo feeds until `stop`; `client(id, region)` makes a client
/// named `id` that prefers `region` and trusts the lab CA.
pub(crate) fn start(
    lab: &Lab,
    client: impl Fn(String, Option<&str>) -> ProxyClient,
    stop: CancellationToken,
) -> (FeedBoard, tokio::task::JoinHandle<()>) {
    let specs = FeedSpec::demo();
    let regions: std::collections::BTreeSet<&str> = lab.config().proxies.iter().map(|p| p.region.as_str()).collect();
    let choices = (0..specs.len())
        .map(|i| {
            let region = REGIONS.get(i % REGIONS.len()).copied().filter(|r| regions.contains(r));
            std::sync::Arc::new(ProxyChoice::Proxybus(client(format!("demo-feed-{i}"), region)))
        })
        .collect();
    feeds::start(specs, choices, FeedSettings::new(vec![lab.ca().der()]), stop)
}

/// The feeds' table: goodput, reconnects and refusals per feed.
pub(crate) fn render_feeds(feeds: &[FeedStats]) -> String {
    let mut table = crate::table(&[
        "feed",
        "conn",
        "flowing",
        "msgs/s",
        "messages",
        "reconnects",
        "429",
        "418",
        "451",
        "403",
        "other errors",
        "proxy",
    ]);
    for f in feeds {
        let count = |kind: &str| f.errors.get(kind).copied().unwrap_or(0).to_string();
        let other: u64 = f
            .errors
            .iter()
            .filter(|(k, _)| !["http_429", "http_418", "http_451", "http_403"].contains(&k.as_str()))
            .map(|(_, n)| n)
            .sum();
        let other_kinds: Vec<&str> = f
            .errors
            .keys()
            .map(String::as_str)
            .filter(|k| !["http_429", "http_418", "http_451", "http_403"].contains(k))
            .collect();
        table.add_row(vec![
            f.name.clone(),
            f.connection.clone(),
            if f.connected { "yes".into() } else { "no".into() },
            format!("{:.1}", f.messages_per_second),
            f.messages.to_string(),
            f.reconnects.to_string(),
            count("http_429"),
            count("http_418"),
            count("http_451"),
            count("http_403"),
            if other == 0 { String::new() } else { format!("{other} ({})", other_kinds.join(", ")) },
            f.proxy.clone().unwrap_or_default(),
        ]);
    }
    table.to_string()
}

/// What each exchange did, from the simulator's own counters.
pub(crate) fn render_exchanges(stats: &SimulatorStats) -> String {
    let mut table = crate::table(&[
        "exchange",
        "source IPs",
        "REST served",
        "trades sent",
        "ws connects",
        "429",
        "418",
        "451",
        "403",
        "closed 1008",
    ]);
    for exchange in [LabExchange::Binance, LabExchange::Coinbase] {
        let ips = stats.source_ips(exchange);
        let mut total = proxybus_lab::IpCounters::default();
        for ip in &ips {
            let c = stats.of(exchange, *ip);
            total.served += c.served;
            total.messages_sent += c.messages_sent;
            total.ws_connects += c.ws_connects;
            total.http_429 += c.http_429;
            total.http_418 += c.http_418;
            total.http_451 += c.http_451;
            total.http_403 += c.http_403;
            total.ws_closed_1008 += c.ws_closed_1008;
        }
        table.add_row(vec![
            exchange.as_str().to_owned(),
            ips.len().to_string(),
            total.served.to_string(),
            total.messages_sent.to_string(),
            total.ws_connects.to_string(),
            total.http_429.to_string(),
            total.http_418.to_string(),
            total.http_451.to_string(),
            total.http_403.to_string(),
            total.ws_closed_1008.to_string(),
        ]);
    }
    table.to_string()
}

/// One line a test (or a human) can read at the end: totals over every feed.
pub(crate) fn summary(feeds: &[FeedStats]) -> String {
    let messages: u64 = feeds.iter().map(|f| f.messages).sum();
    let ws: u64 = feeds.iter().filter(|f| f.connection == "websocket").map(|f| f.messages).sum();
    let reconnects: u64 = feeds.iter().map(|f| f.reconnects).sum();
    let errors = |kind: &str| feeds.iter().map(|f| f.errors.get(kind).copied().unwrap_or(0)).sum::<u64>();
    format!(
        "demo feeds: {messages} messages ({ws} over websockets, {} by REST), {reconnects} reconnects; \
         refusals seen: http_429={} http_418={} http_451={} http_403={} proxy_auth={} refused={}",
        messages - ws,
        errors("http_429"),
        errors("http_418"),
        errors("http_451"),
        errors("http_403"),
        errors("proxy_auth"),
        errors("refused"),
    )
}

/// Prints the feeds, the exchanges and the proxies' health every 3 s until `stop`.
pub(crate) async fn print_live(
    client: async_nats::Client,
    board: FeedBoard,
    exchange_stats: impl Fn() -> SimulatorStats,
    stop: CancellationToken,
) {
    let js = async_nats::jetstream::new(client);
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(3));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        println!("\n-- after {}s: feeds --", started.elapsed().as_secs());
        println!("{}", render_feeds(&board.snapshot()));
        println!("-- what the exchanges did (simulator counters) --");
        println!("{}", render_exchanges(&exchange_stats()));
        // Read before the heading is printed: a stop while reading (the run's end) then
        // leaves no heading without its table.
        let stats = match js.get_key_value(proxybus_shared::subject::HEALTH_BUCKET).await {
            Ok(bucket) => crate::health::load(&bucket).await.unwrap_or_default(),
            Err(_) => Default::default(),
        };
        println!("-- what proxybus did: proxy health --");
        if stats.is_empty() {
            // The first tick comes before the aggregator's first commit.
            println!("(nothing folded yet: the table starts with the first feedback the aggregator commits)");
            continue;
        }
        let mut shown: Vec<_> = stats.values().collect();
        shown.sort_by(|a, b| (&a.region, &a.proxy_id).cmp(&(&b.region, &b.proxy_id)));
        println!("{}", crate::health::render(&shown));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_adds_up_every_feed() {
        let mut a = FeedStats::default();
        (a.connection, a.messages, a.reconnects) = ("websocket".into(), 10, 1);
        a.errors.insert("http_451".into(), 2);
        let mut b = FeedStats::default();
        (b.connection, b.messages) = ("http".into(), 5);
        b.errors.insert("http_429".into(), 3);
        b.errors.insert("refused".into(), 1);
        let line = summary(&[a.clone(), b.clone()]);
        assert!(line.contains("15 messages (10 over websockets, 5 by REST), 1 reconnects"), "{line}");
        assert!(line.contains("http_429=3") && line.contains("http_451=2") && line.contains("refused=1"), "{line}");
        let table = render_feeds(&[a, b]);
        assert!(table.contains("1 (refused)"), "{table}");
    }
}
