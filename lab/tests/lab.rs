//! The lab against real clients: every simulator rule, every proxy kind (the
//! simulator sees the proxy's own source address), the faults, and the files.
//! REST goes through reqwest as a feed's `http_client` does; websockets through
//! the client library's tunnels.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use proxybus_client::tunnel::{self, BoxedStream, Target};
use proxybus_lab::{Lab, LabConfig, LabExchange, LabProxy, LabProxyConfig, ProxyFault, ProxyKind};
use proxybus_shared::{ErrorKind, ProxyUrl};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn proxy(kind: ProxyKind, last: u8) -> LabProxyConfig {
    LabProxyConfig {
        kind,
        region: "us-east".into(),
        source_ip: ip(last),
        fault: ProxyFault::None,
        connection_types: vec![],
    }
}

/// A lab in a temporary directory with proxies http .2, socks5 .3, https .4, socks4 .5.
async fn start(tweak: impl FnOnce(&mut LabConfig)) -> (Lab, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LabConfig::demo(dir.path());
    config.simulator.binance.geo_restricted_ips.clear();
    config.simulator.coinbase.waf_blocked_ips.clear();
    config.simulator.trades_per_second = 50.0;
    config.proxies = vec![
        proxy(ProxyKind::Http, 2),
        proxy(ProxyKind::Socks5, 3),
        proxy(ProxyKind::Https, 4),
        proxy(ProxyKind::Socks4, 5),
    ];
    tweak(&mut config);
    (Lab::start(config).await.unwrap(), dir)
}

/// The URL reqwest is given for a lab proxy: its own (SOCKS ones say `socks5h`/`socks4a`, remote DNS).
fn reqwest_proxy_url(proxy: &LabProxy) -> String {
    proxy.url()
}

fn rest_client(lab: &Lab, proxy: &LabProxy) -> reqwest::Client {
    proxybus_shared::http::install_crypto_provider();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(lab.ca().pem().as_bytes()).unwrap())
        .proxy(reqwest::Proxy::all(reqwest_proxy_url(proxy)).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get(lab: &Lab, proxy: &LabProxy, url: &str) -> reqwest::Response {
    rest_client(lab, proxy).get(url).send().await.unwrap()
}

async fn open(lab: &Lab, proxy: &LabProxy, url: &str) -> Result<BoxedStream, tunnel::ConnectError> {
    let target = Target::from_url(&url.parse().unwrap()).unwrap();
    let proxy = ProxyUrl::parse(&proxy.url()).unwrap();
    let tls = tunnel::TunnelTls::new(&[lab.ca().der()], &[lab.ca().der()]).unwrap();
    tunnel::open(Some(&proxy), &target, &tls, Duration::from_secs(10)).await
}

async fn websocket(
    lab: &Lab,
    proxy: &LabProxy,
    url: &str,
) -> Result<WebSocketStream<BoxedStream>, tokio_tungstenite::tungstenite::Error> {
    let stream = open(lab, proxy, url).await.unwrap();
    tokio_tungstenite::client_async(url, stream).await.map(|(ws, _)| ws)
}

async fn next_text(ws: &mut WebSocketStream<BoxedStream>) -> serde_json::Value {
    loop {
        let message =
            tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a message").unwrap().unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test]
async fn request_weight_is_counted_per_ip_then_429_with_retry_after_then_418_for_continuing() {
    let (lab, _dir) = start(|c| {
        c.simulator.binance.request_weight_limit = 30;
        c.simulator.binance.ban_base_seconds = 5;
    })
    .await;
    let via = &lab.proxies()[0];
    let info = get(&lab, via, "https://api.binance.com/api/v3/exchangeInfo").await;
    assert_eq!(info.status(), 200);
    assert_eq!(info.headers()["x-mbx-used-weight-1m"], "20");
    let body: serde_json::Value = info.json().await.unwrap();
    assert_eq!(body["rateLimits"][0]["limit"], 30);
    assert_eq!(body["symbols"][0]["symbol"], "BTCUSDT");

    let over = get(&lab, via, "https://api.binance.com/api/v3/trades?symbol=BTCUSDT").await;
    assert_eq!(over.status(), 429, "20 + 25 > 30");
    assert_eq!(over.headers()["x-mbx-used-weight-1m"], "20");
    let retry_after: u64 = over.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let banned = get(&lab, via, "https://api.binance.com/api/v3/ping").await;
    assert_eq!(banned.status(), 418, "a request during the Retry-After is banned");
    assert_eq!(banned.headers()["retry-after"], "5");

    // Another source IP has its own weight; coinbase its own limits.
    let other = get(&lab, &lab.proxies()[2], "https://api.binance.com/api/v3/depth?symbol=BTCUSDT&limit=500").await;
    assert_eq!(other.status(), 200);
    assert_eq!(other.headers()["x-mbx-used-weight-1m"], "25");
    let depth: serde_json::Value = other.json().await.unwrap();
    assert!(depth["bids"][0][0].is_string() && depth["asks"].as_array().is_some_and(|a| !a.is_empty()));
    assert_eq!(get(&lab, via, "https://api.exchange.coinbase.com/time").await.status(), 200);

    let stats = lab.simulator().stats().of(LabExchange::Binance, IpAddr::V4(ip(2)));
    assert_eq!((stats.served, stats.http_429, stats.http_418), (1, 1, 1));
}

#[tokio::test]
async fn geo_restriction_is_451_at_binance_only_and_the_waf_403_at_coinbase_only() {
    let (lab, _dir) = start(|c| {
        c.simulator.binance.geo_restricted_ips = vec![IpAddr::V4(ip(3))];
        c.simulator.coinbase.waf_blocked_ips = vec![IpAddr::V4(ip(5))];
    })
    .await;
    let (socks5, socks4) = (&lab.proxies()[1], &lab.proxies()[3]);
    let restricted = get(&lab, socks5, "https://api.binance.com/api/v3/ping").await;
    assert_eq!(restricted.status(), 451);
    assert!(restricted.text().await.unwrap().contains("restricted location"));
    assert_eq!(get(&lab, socks5, "https://api.exchange.coinbase.com/time").await.status(), 200);
    assert_eq!(get(&lab, socks4, "https://api.exchange.coinbase.com/products/BTC-USD/trades").await.status(), 403);
    assert_eq!(get(&lab, socks4, "https://api.binance.com/api/v3/ping").await.status(), 200);
    // Handshakes too.
    let refused = websocket(&lab, socks5, "wss://stream.binance.com:9443/ws/btcusdt@trade").await.unwrap_err();
    assert!(matches!(&refused, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 451), "{refused}");
    let refused = websocket(&lab, socks4, "wss://ws-feed.exchange.coinbase.com").await.unwrap_err();
    assert!(matches!(&refused, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 403), "{refused}");
    let stats = lab.simulator().stats();
    assert_eq!(stats.of(LabExchange::Binance, IpAddr::V4(ip(3))).http_451, 2);
    assert_eq!(stats.of(LabExchange::Coinbase, IpAddr::V4(ip(5))).http_403, 2);
}

#[tokio::test]
async fn trade_streams_have_binance_shape_and_connects_per_window_are_limited() {
    let (lab, _dir) = start(|c| c.simulator.binance.ws_connect_limit = 2).await;
    let via = &lab.proxies()[0];
    let mut single = websocket(&lab, via, "wss://stream.binance.com:9443/ws/btcusdt@trade").await.unwrap();
    let trade = next_text(&mut single).await;
    assert_eq!(
        (trade["e"].as_str(), trade["s"].as_str(), trade["M"].as_bool()),
        (Some("trade"), Some("BTCUSDT"), Some(true))
    );
    assert!(trade["p"].as_str().unwrap().parse::<f64>().unwrap() > 0.0 && trade["t"].is_u64() && trade["T"].is_u64());

    let mut combined =
        websocket(&lab, via, "wss://stream.binance.com:9443/stream?streams=btcusdt@trade/ethusdt@trade").await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        let message = next_text(&mut combined).await;
        assert_eq!(message["data"]["e"], "trade");
        seen.insert(message["stream"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["btcusdt@trade", "ethusdt@trade"]);

    let third = websocket(&lab, via, "wss://stream.binance.com/ws/ethusdt@trade").await.unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = third else { panic!("{third}") };
    assert_eq!(response.status(), 429, "2 connects per window per IP");
    assert!(response.headers().contains_key("retry-after"));
    // Another IP may still connect.
    assert!(websocket(&lab, &lab.proxies()[1], "wss://stream.binance.com/ws/ethusdt@trade").await.is_ok());
    let unknown = websocket(&lab, &lab.proxies()[1], "wss://stream.binance.com/ws/dogeusdt@trade").await.unwrap_err();
    assert!(matches!(&unknown, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 400), "{unknown}");
}

#[tokio::test]
async fn too_many_client_messages_close_the_websocket_with_1008() {
    let (lab, _dir) = start(|c| c.simulator.trades_per_second = 1.0).await;
    let mut ws = websocket(&lab, &lab.proxies()[3], "wss://stream.binance.com:9443/ws/btcusdt@trade").await.unwrap();
    for i in 0..10 {
        if ws.send(Message::text(format!("{{\"method\":\"LIST_SUBSCRIPTIONS\",\"id\":{i}}}"))).await.is_err() {
            break;
        }
    }
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(frame)) => return frame,
                Ok(_) => continue,
                Err(err) => panic!("no close frame: {err}"),
            }
        }
        None
    })
    .await
    .expect("closed");
    assert_eq!(close.expect("a close frame").code, CloseCode::Policy);
    assert_eq!(lab.simulator().stats().of(LabExchange::Binance, IpAddr::V4(ip(5))).ws_closed_1008, 1);
}

#[tokio::test]
async fn coinbase_feed_sends_matches_after_a_subscribe() {
    let (lab, _dir) = start(|_| {}).await;
    let mut ws = websocket(&lab, &lab.proxies()[1], "wss://ws-feed.exchange.coinbase.com").await.unwrap();
    ws.send(Message::text(r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["matches"]}"#)).await.unwrap();
    let subscribed = next_text(&mut ws).await;
    assert_eq!(subscribed["type"], "subscriptions");
    let first = next_text(&mut ws).await;
    assert_eq!((first["type"].as_str(), first["product_id"].as_str()), (Some("match"), Some("BTC-USD")));
    assert!(first["price"].as_str().unwrap().parse::<f64>().is_ok() && first["sequence"].is_u64());
}

#[tokio::test]
async fn binance_exchange_info_lists_each_symbol_with_its_price_filter_first() {
    let (lab, _dir) = start(|_| {}).await;
    let info: serde_json::Value =
        get(&lab, &lab.proxies()[0], "https://api.binance.com/api/v3/exchangeInfo").await.json().await.unwrap();
    let symbols = info["symbols"].as_array().unwrap();
    assert_eq!(symbols.len(), 4);
    for symbol in symbols {
        // What cryptofeed 2.5.0 reads (Binance._parse_symbol_data): symbol, status, baseAsset, quoteAsset,
        // filters[0].tickSize.
        assert_eq!(symbol["status"], "TRADING");
        assert_eq!(
            format!("{}{}", symbol["baseAsset"].as_str().unwrap(), symbol["quoteAsset"].as_str().unwrap()),
            symbol["symbol"].as_str().unwrap()
        );
        assert_eq!(symbol["filters"][0]["filterType"], "PRICE_FILTER");
        assert_eq!(symbol["filters"][0]["tickSize"].as_str().unwrap().parse::<f64>().unwrap(), 0.01);
        assert_eq!(symbol["filters"][1]["filterType"], "LOT_SIZE");
        assert!(symbol["filters"][1]["stepSize"].as_str().unwrap().parse::<f64>().unwrap() > 0.0);
    }
}

#[tokio::test]
async fn binance_agg_trade_streams_have_binance_shape_and_combined_streams_are_always_wrapped() {
    let (lab, _dir) = start(|_| {}).await;
    let via = &lab.proxies()[0];
    // One stream on the combined endpoint (as cryptofeed asks): still {"stream", "data"}.
    let mut combined =
        websocket(&lab, via, "wss://stream.binance.com:9443/stream?streams=btcusdt@aggTrade").await.unwrap();
    let message = next_text(&mut combined).await;
    assert_eq!(message["stream"], "btcusdt@aggTrade");
    let trade = &message["data"];
    assert_eq!((trade["e"].as_str(), trade["s"].as_str()), (Some("aggTrade"), Some("BTCUSDT")));
    assert!(trade["a"].is_u64() && trade["f"].is_u64() && trade["l"].is_u64() && trade["T"].is_u64());
    assert!(trade["p"].as_str().unwrap().parse::<f64>().unwrap() > 0.0);
    assert!(trade["q"].as_str().unwrap().parse::<f64>().unwrap() > 0.0);
    assert!(trade["m"].is_boolean() && trade.get("t").is_none());
    // The raw endpoint sends the payload alone; trade and aggTrade mix on one combined stream.
    let mut raw = websocket(&lab, via, "wss://stream.binance.com:9443/ws/ethusdt@aggTrade").await.unwrap();
    let trade = next_text(&mut raw).await;
    assert_eq!((trade["e"].as_str(), trade["s"].as_str()), (Some("aggTrade"), Some("ETHUSDT")));
    let mut mixed =
        websocket(&lab, &lab.proxies()[1], "wss://stream.binance.com/stream?streams=solusdt@trade/solusdt@aggTrade")
            .await
            .unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    while kinds.len() < 2 {
        let message = next_text(&mut mixed).await;
        kinds.insert((
            message["stream"].as_str().unwrap().to_owned(),
            message["data"]["e"].as_str().unwrap().to_owned(),
        ));
    }
    let expected =
        [("solusdt@aggTrade", "aggTrade"), ("solusdt@trade", "trade")].map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), expected);
    let unknown =
        websocket(&lab, &lab.proxies()[1], "wss://stream.binance.com/ws/btcusdt@aggtrades").await.unwrap_err();
    assert!(matches!(&unknown, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 400), "{unknown}");
}

#[tokio::test]
async fn coinbase_advanced_trade_lists_products_under_coinbase_per_ip_limits() {
    let (lab, _dir) = start(|c| {
        c.simulator.coinbase.request_weight_limit = 3;
        c.simulator.coinbase.request_window_seconds = 60;
    })
    .await;
    let via = &lab.proxies()[2];
    for path in ["/api/v3/brokerage/products", "/api/v3/brokerage/market/products"] {
        let response = get(&lab, via, &format!("https://api.coinbase.com{path}")).await;
        assert_eq!(response.status(), 200, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        let products = body["products"].as_array().unwrap();
        assert_eq!(body["num_products"], products.len());
        let btc = products.iter().find(|p| p["product_id"] == "BTC-USD").expect("BTC-USD");
        // What cryptofeed 2.5.0 reads (Coinbase._parse_symbol_data).
        assert_eq!((btc["base_currency_id"].as_str(), btc["quote_currency_id"].as_str()), (Some("BTC"), Some("USD")));
        assert_eq!(btc["quote_increment"].as_str().unwrap().parse::<f64>().unwrap(), 0.01);
        assert_eq!((btc["product_type"].as_str(), btc["status"].as_str()), (Some("SPOT"), Some("online")));
    }
    let unknown = get(&lab, via, "https://api.coinbase.com/api/v3/brokerage/nothing").await;
    assert_eq!(unknown.status(), 404);
    // Both Coinbase APIs count against one limit per IP: 3 requests so far.
    let over = get(&lab, via, "https://api.exchange.coinbase.com/time").await;
    assert_eq!(over.status(), 429);
    assert!(over.headers().contains_key("retry-after"));
    assert_eq!(get(&lab, &lab.proxies()[0], "https://api.coinbase.com/api/v3/brokerage/products").await.status(), 200);
    let stats = lab.simulator().stats().of(LabExchange::Coinbase, IpAddr::V4(ip(4)));
    assert_eq!((stats.served, stats.http_429), (2, 1));
}

#[tokio::test]
async fn coinbase_advanced_trade_websocket_sends_market_trades_and_heartbeats_after_a_subscribe() {
    let (lab, _dir) = start(|c| c.simulator.coinbase.ws_connect_limit = 1).await;
    let via = &lab.proxies()[1];
    let mut ws = websocket(&lab, via, "wss://advanced-trade-ws.coinbase.com").await.unwrap();
    // cryptofeed 2.5.0's subscribe: market_trades, then "heartbeat" (singular: not a channel).
    ws.send(Message::text(r#"{"type":"subscribe","product_ids":["BTC-USD","ETH-USD"],"channel":"market_trades"}"#))
        .await
        .unwrap();
    let subscribed = next_text(&mut ws).await;
    assert_eq!(subscribed["channel"], "subscriptions");
    assert_eq!(subscribed["events"][0]["subscriptions"]["market_trades"], serde_json::json!(["BTC-USD", "ETH-USD"]));
    ws.send(Message::text(r#"{"type":"subscribe","product_ids":["BTC-USD"],"channel":"heartbeat"}"#)).await.unwrap();
    ws.send(Message::text(r#"{"type":"subscribe","product_ids":["BTC-USD"],"channel":"heartbeats"}"#)).await.unwrap();
    let (mut error, mut heartbeat, mut products) = (None, None, std::collections::BTreeSet::new());
    let mut last_sequence = subscribed["sequence_num"].as_u64().unwrap();
    while error.is_none() || heartbeat.is_none() || products.len() < 2 {
        let message = next_text(&mut ws).await;
        if message["type"] == "error" {
            error = Some(message);
            continue;
        }
        let sequence = message["sequence_num"].as_u64().unwrap();
        assert!(sequence > last_sequence, "sequence_num grows: {message}");
        last_sequence = sequence;
        match message["channel"].as_str().unwrap() {
            "market_trades" => {
                let event = &message["events"][0];
                assert_eq!(event["type"], "update");
                for trade in event["trades"].as_array().unwrap() {
                    assert!(["BUY", "SELL"].contains(&trade["side"].as_str().unwrap()), "{trade}");
                    assert!(trade["trade_id"].is_string() && trade["price"].as_str().unwrap().parse::<f64>().is_ok());
                    assert!(trade["size"].as_str().unwrap().parse::<f64>().is_ok());
                    let time = trade["time"].as_str().unwrap();
                    assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok() && time.ends_with('Z'), "{time}");
                    products.insert(trade["product_id"].as_str().unwrap().to_owned());
                }
            }
            "heartbeats" => heartbeat = Some(message),
            "subscriptions" => assert!(message["events"][0]["subscriptions"]["heartbeats"].is_array()),
            other => panic!("unexpected channel {other}"),
        }
    }
    assert!(error.unwrap()["message"].as_str().unwrap().contains("heartbeat"));
    assert!(heartbeat.unwrap()["events"][0]["heartbeat_counter"].is_u64());
    // Handshakes count against Coinbase's per-IP connect limit (1 here), as the Exchange feed's do.
    let refused = websocket(&lab, via, "wss://ws-feed.exchange.coinbase.com").await.unwrap_err();
    assert!(matches!(&refused, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 429), "{refused}");
}

#[tokio::test]
async fn every_proxy_kind_reaches_the_simulator_from_its_own_source_address() {
    let (lab, _dir) = start(|_| {}).await;
    for proxy in lab.proxies() {
        let response = get(&lab, proxy, "https://api.binance.com/api/v3/ping").await;
        assert_eq!(response.status(), 200, "{:?}", proxy.kind());
        assert_eq!(proxy.log().tunnels()[0], "api.binance.com:443", "{:?} resolved the name itself", proxy.kind());
        let url = "wss://data-stream.binance.vision/ws/solusdt@trade";
        // Websockets too, through every kind (TLS to an HTTPS proxy, then TLS to the exchange).
        let mut ws = websocket(&lab, proxy, url).await.unwrap();
        assert_eq!(next_text(&mut ws).await["s"], "SOLUSDT", "{:?}", proxy.kind());
    }
    let seen = lab.simulator().stats().source_ips(LabExchange::Binance);
    let expected: Vec<IpAddr> = [2, 3, 4, 5].into_iter().map(|x| IpAddr::V4(ip(x))).collect();
    assert_eq!(seen, expected, "one source address per proxy, none from 127.0.0.1");
}

#[tokio::test]
async fn faults_dead_refusing_credentials_and_dying_mid_stream() {
    let (lab, _dir) = start(|c| {
        c.proxies[1].fault = ProxyFault::RefuseCredentials;
        c.proxies[3].fault = ProxyFault::Dead;
    })
    .await;
    let url = "wss://stream.binance.com:9443/ws/btcusdt@trade";
    assert_eq!(open(&lab, &lab.proxies()[1], url).await.unwrap_err().kind, ErrorKind::ProxyAuth);
    assert_eq!(open(&lab, &lab.proxies()[3], url).await.unwrap_err().kind, ErrorKind::Refused);
    // REST through the refusing proxies, as the demo's REST feeds poll (reqwest): proxy_auth
    // too — a SOCKS5 login refused, and a 407 to CONNECT from the HTTP proxy refusing for a
    // while — the kind those feeds now count as well as report (they counted `refused`).
    lab.proxies()[0].set_fault(ProxyFault::RefuseCredentials);
    for (proxy, expected) in [
        (&lab.proxies()[1], ErrorKind::ProxyAuth),
        (&lab.proxies()[0], ErrorKind::ProxyAuth),
        (&lab.proxies()[3], ErrorKind::Refused),
    ] {
        let err = rest_client(&lab, proxy).get("https://api.binance.com/api/v3/ping").send().await.unwrap_err();
        assert_eq!(proxybus_client::http_error_kind(&err), expected, "{:?}: {err:?}", proxy.kind());
    }
    lab.proxies()[0].set_fault(ProxyFault::None);
    // Wrong credentials on a working proxy: 407 → proxy_auth.
    let wrong = ProxyUrl::parse(&lab.proxies()[0].url_with("lab1", "wrong")).unwrap();
    let target = Target::from_url(&url.parse().unwrap()).unwrap();
    let tls = tunnel::TunnelTls::new(&[], &[]).unwrap();
    let err = tunnel::open(Some(&wrong), &target, &tls, Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::ProxyAuth);
    // Names outside the lab are never reached.
    let outside = Target::from_url(&"https://example.com/".parse().unwrap()).unwrap();
    let proxy = ProxyUrl::parse(&lab.proxies()[0].url()).unwrap();
    assert!(tunnel::open(Some(&proxy), &outside, &tls, Duration::from_secs(5)).await.is_err());
    assert!(lab.proxies()[0].log().lines().iter().any(|l| l.starts_with("refused example.com:443")));

    // A proxy that dies cuts the websocket it carries.
    let mut ws = websocket(&lab, &lab.proxies()[0], url).await.unwrap();
    next_text(&mut ws).await;
    lab.proxies()[0].set_fault(ProxyFault::Dead);
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(_))) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ended when its proxy died");
    assert_eq!(open(&lab, &lab.proxies()[0], url).await.unwrap_err().kind, ErrorKind::Refused);
    lab.proxies()[0].set_fault(ProxyFault::None);
    assert!(open(&lab, &lab.proxies()[0], url).await.is_ok(), "back after revival");
}

#[tokio::test]
async fn the_inventory_lists_every_proxy_with_credentials_and_the_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::start(LabConfig::demo(dir.path())).await.unwrap();
    let text = std::fs::read_to_string(lab.inventory_path()).unwrap();
    let inventory = proxybus_pool::Inventory::from_toml_str(&text).unwrap();
    assert_eq!(inventory.len(), lab.proxies().len());
    for proxy in lab.proxies() {
        assert!(text.contains(&proxy.url()), "{} is in the inventory with its password", proxy.addr());
    }
    assert!(text.contains(&lab.ca_path().display().to_string()));
    let pem = std::fs::read_to_string(lab.ca_path()).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let manifest = std::fs::read_to_string(lab.manifest_path()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(json["proxies"].as_array().unwrap().len(), 12);
    for proxy in lab.proxies() {
        let password = proxy.url().split(':').nth(2).unwrap().split('@').next().unwrap().to_owned();
        assert!(!manifest.contains(&password), "no password in lab.json");
    }
    // An invalid lab is refused with every problem.
    let mut bad = LabConfig::demo(dir.path());
    bad.proxies[1].source_ip = Ipv4Addr::new(10, 0, 0, 1);
    bad.proxies[2].source_ip = bad.proxies[0].source_ip;
    let err = Lab::start(bad).await.unwrap_err().to_string();
    assert!(err.contains("proxies[1].source_ip") && err.contains("proxies[2].source_ip"), "{err}");
}

#[test]
fn the_lab_file_of_the_docs_is_a_valid_lab() {
    let doc = include_str!("../../docs/lab.md");
    let section = &doc[doc.find("## A lab file").expect("the section")..];
    let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let text = &section[start..start + section[start..].find("```").unwrap()];
    let config: LabConfig = toml::from_str(text).unwrap();
    config.validate().unwrap();
    assert_eq!(config.proxies.len(), 3);
    assert_eq!(config.simulator.binance.geo_restricted_ips, [IpAddr::V4(ip(3))]);
    assert_eq!(config.proxies[1].fault, ProxyFault::Flapping { up_seconds: 20, down_seconds: 20 });
    let broken = text.replace("source_ip = \"127.0.0.4\"", "source_ip = \"10.0.0.4\"");
    let config: LabConfig = toml::from_str(&broken).unwrap();
    assert!(config.validate().unwrap_err().to_string().contains("proxies[2].source_ip 10.0.0.4"));
}

#[tokio::test]
async fn a_client_trusts_the_lab_ca_from_its_file_and_refuses_files_without_certificates() {
    let (lab, dir) = start(|_| {}).await;
    let nats = proxybus_shared::nats::NatsSettings::default();
    let config = proxybus_client::ClientConfig::new(nats.clone(), "t").with_ca_file(lab.ca_path()).unwrap();
    assert_eq!(config.extra_roots, [lab.ca().der()]);
    let missing = proxybus_client::ClientConfig::new(nats.clone(), "t").with_ca_file(&dir.path().join("nope.pem"));
    assert!(missing.unwrap_err().to_string().contains(proxybus_client::TLS_CA_FILE_ENV));
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let err = proxybus_client::ClientConfig::new(nats, "t").with_ca_file(&empty).unwrap_err().to_string();
    assert!(err.contains("holds no certificate"), "{err}");
}
