//! The exchange simulator: one HTTPS/WSS listener that answers the exchanges'
//! host names (told apart by `Host`), with a Binance-shaped REST API and trade
//! streams and a Coinbase-shaped websocket feed, enforcing [`ExchangeRules`]
//! per source IP and counting what it did to each IP.
//!
//! | exchange | REST | websocket |
//! | --- | --- | --- |
//! | binance (`api.binance.com`, `stream.binance.com` …) | `GET /api/v3/ping` (weight 1), `/api/v3/exchangeInfo` (20), `/api/v3/depth` (5–250 by `limit`), `/api/v3/trades` (25) | `/ws/{symbol}@trade`, `/ws/{symbol}@aggTrade`, `/stream?streams=a/b` (always wrapped as `{"stream","data"}`) |
//! | coinbase Exchange (`api.exchange.coinbase.com`, `ws-feed.exchange.coinbase.com`) | `GET /products/{id}/trades`, `/time` (1 each) | `/` after `{"type":"subscribe","product_ids":[…],"channels":["matches"]}` |
//! | coinbase Advanced Trade (`api.coinbase.com`, `advanced-trade-ws.coinbase.com`) | `GET /api/v3/brokerage/products`, `/api/v3/brokerage/market/products` (1 each) | `/` after `{"type":"subscribe","product_ids":[…],"channel":"market_trades"}` (and `"heartbeats"`) |
//!
//! Weights are Binance's published ones (`limits::BINANCE_LIMITS_DOC`). The
//! shapes are the exchanges' documented ones, as far as a client reads them:
//! Binance's <https://developers.binance.com/docs/binance-spot-api-docs/rest-api/general-endpoints>
//! (`exchangeInfo`, its `PRICE_FILTER`/`LOT_SIZE` filters) and
//! <https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams>
//! (`trade`, `aggTrade`, combined streams); Coinbase Advanced Trade's
//! <https://docs.cdp.coinbase.com/advanced-trade/reference/retailbrokerageapi_getpublicproducts>
//! and <https://docs.cdp.coinbase.com/advanced-trade/docs/ws-channels> (`market_trades`,
//! `heartbeats`). Both Coinbase APIs share one set of per-IP limits.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::LabError;
use crate::ca::ServerIdentity;
use crate::limits::{ExchangeRules, Limiter, MessageRate, Verdict};

/// Binance's header with the IP's request weight used in the current minute.
pub const USED_WEIGHT_HEADER: &str = proxybus_shared::budget::BINANCE_WEIGHT_HEADER;

/// An exchange the simulator plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabExchange {
    /// Binance spot: REST weight limits, 418 bans, trade streams.
    Binance,
    /// Coinbase Exchange: REST requests per second, the `matches` channel of the websocket feed.
    Coinbase,
}

/// The real host names the simulator answers, and whose they are.
pub const EXCHANGE_HOSTS: &[(&str, LabExchange)] = &[
    ("api.binance.com", LabExchange::Binance),
    ("api1.binance.com", LabExchange::Binance),
    ("api2.binance.com", LabExchange::Binance),
    ("api3.binance.com", LabExchange::Binance),
    ("api4.binance.com", LabExchange::Binance),
    ("data-api.binance.vision", LabExchange::Binance),
    ("stream.binance.com", LabExchange::Binance),
    ("data-stream.binance.vision", LabExchange::Binance),
    ("api.exchange.coinbase.com", LabExchange::Coinbase),
    ("ws-feed.exchange.coinbase.com", LabExchange::Coinbase),
    ("ws-direct.exchange.coinbase.com", LabExchange::Coinbase),
    ("api.coinbase.com", LabExchange::Coinbase),
    ("advanced-trade-ws.coinbase.com", LabExchange::Coinbase),
];

/// The host of Coinbase's Advanced Trade REST API (`/api/v3/brokerage/…`).
pub const COINBASE_ADVANCED_TRADE_REST_HOST: &str = "api.coinbase.com";

/// The host of Coinbase's Advanced Trade websocket (`market_trades`, `heartbeats`); the
/// Exchange feed (`ws-feed.exchange.coinbase.com`, `matches`) speaks another protocol.
pub const COINBASE_ADVANCED_TRADE_WS_HOST: &str = "advanced-trade-ws.coinbase.com";

/// Symbols of the Binance shape, and their starting prices.
const BINANCE_SYMBOLS: &[(&str, f64)] =
    &[("BTCUSDT", 97_000.0), ("ETHUSDT", 3_600.0), ("BNBUSDT", 650.0), ("SOLUSDT", 240.0)];
/// Products of the Coinbase shape, and their starting prices.
const COINBASE_PRODUCTS: &[(&str, f64)] = &[("BTC-USD", 97_000.0), ("ETH-USD", 3_600.0), ("SOL-USD", 240.0)];

impl LabExchange {
    /// The exchange's id on the bus (`binance`, `coinbase`).
    pub fn as_str(self) -> &'static str {
        match self {
            LabExchange::Binance => "binance",
            LabExchange::Coinbase => "coinbase",
        }
    }

    /// The exchange a `Host` header (port allowed) names.
    pub fn from_host(host: &str) -> Option<Self> {
        let name = host_name(host);
        EXCHANGE_HOSTS.iter().find(|(known, _)| known.eq_ignore_ascii_case(name)).map(|(_, exchange)| *exchange)
    }
}

/// A `Host` header's name, without its port.
fn host_name(host: &str) -> &str {
    host.rsplit_once(':')
        .map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host })
}

/// Settings of the simulator (TOML section `[simulator]` of a lab file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorSettings {
    /// Where to listen (loopback only; port 0: any free port).
    pub listen: SocketAddr,
    /// Synthetic trades per second on each subscribed stream.
    pub trades_per_second: f64,
    /// Binance's rules.
    pub binance: ExchangeRules,
    /// Coinbase's rules.
    pub coinbase: ExchangeRules,
}

impl SimulatorSettings {
    /// The rate-budget settings that match this simulator (for the pool's and
    /// the client's `budgets`): Binance's scaled-down limits with the header the
    /// simulator reports weight in ([`ExchangeRules::budget_limits`]). Coinbase is
    /// not budgeted: it reports no usage, and its one-second windows pass faster
    /// than a report travels.
    pub fn budget_settings(&self) -> proxybus_shared::budget::BudgetSettings {
        let binance: proxybus_shared::ExchangeId = "binance".parse().expect("a valid exchange id");
        proxybus_shared::budget::BudgetSettings {
            enabled: true,
            exchanges: [(binance, self.binance.budget_limits())].into_iter().collect(),
        }
    }
}

impl Default for SimulatorSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            trades_per_second: 5.0,
            binance: ExchangeRules::binance(),
            coinbase: ExchangeRules::coinbase(),
        }
    }
}

/// What the simulator did to one source IP of one exchange.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpCounters {
    /// REST requests served (2xx).
    pub served: u64,
    /// 429 answers (REST and handshakes).
    pub http_429: u64,
    /// 418 answers.
    pub http_418: u64,
    /// 451 answers.
    pub http_451: u64,
    /// 403 answers.
    pub http_403: u64,
    /// Websocket handshakes accepted.
    pub ws_connects: u64,
    /// Websockets closed with 1008 for sending too many messages.
    pub ws_closed_1008: u64,
    /// Trade messages sent.
    pub messages_sent: u64,
}

impl IpCounters {
    fn add(&mut self, other: &IpCounters) {
        self.served += other.served;
        self.http_429 += other.http_429;
        self.http_418 += other.http_418;
        self.http_451 += other.http_451;
        self.http_403 += other.http_403;
        self.ws_connects += other.ws_connects;
        self.ws_closed_1008 += other.ws_closed_1008;
        self.messages_sent += other.messages_sent;
    }

    fn count_status(&mut self, status: u16) {
        match status {
            429 => self.http_429 += 1,
            418 => self.http_418 += 1,
            451 => self.http_451 += 1,
            403 => self.http_403 += 1,
            _ => {}
        }
    }
}

/// Counters per exchange and source IP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulatorStats {
    /// exchange → source IP → counters.
    pub by_exchange: BTreeMap<LabExchange, BTreeMap<IpAddr, IpCounters>>,
}

impl SimulatorStats {
    /// One IP's counters at one exchange (zero when it never came).
    pub fn of(&self, exchange: LabExchange, ip: IpAddr) -> IpCounters {
        self.by_exchange.get(&exchange).and_then(|ips| ips.get(&ip)).copied().unwrap_or_default()
    }

    /// The sum over every exchange and IP.
    pub fn total(&self) -> IpCounters {
        let mut total = IpCounters::default();
        self.by_exchange.values().flat_map(|ips| ips.values()).for_each(|c| total.add(c));
        total
    }

    /// The source IPs an exchange has seen.
    pub fn source_ips(&self, exchange: LabExchange) -> Vec<IpAddr> {
        self.by_exchange.get(&exchange).map(|ips| ips.keys().copied().collect()).unwrap_or_default()
    }
}

struct SimState {
    settings: SimulatorSettings,
    binance: Limiter,
    coinbase: Limiter,
    stats: Mutex<SimulatorStats>,
    trade_ids: AtomicU64,
    stop: CancellationToken,
}

impl SimState {
    fn limiter(&self, exchange: LabExchange) -> &Limiter {
        match exchange {
            LabExchange::Binance => &self.binance,
            LabExchange::Coinbase => &self.coinbase,
        }
    }

    fn count(&self, exchange: LabExchange, ip: IpAddr, update: impl FnOnce(&mut IpCounters)) {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        update(stats.by_exchange.entry(exchange).or_default().entry(ip).or_default());
    }
}

/// Reads a simulator's counters; cheap to clone.
#[derive(Clone)]
pub struct StatsHandle(Arc<SimState>);

impl std::fmt::Debug for StatsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsHandle").finish_non_exhaustive()
    }
}

impl StatsHandle {
    /// What the simulator did so far, per exchange and source IP.
    pub fn stats(&self) -> SimulatorStats {
        self.0.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A running simulator; stops when [`Simulator::stop`] is called or it is dropped.
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<SimState>,
    handle: axum_server::Handle,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.state.stop.cancel();
        self.handle.shutdown();
        self.task.abort();
    }
}

impl Simulator {
    /// Starts listening on `settings.listen` with TLS from `identity`.
    ///
    /// # Errors
    /// [`LabError::Io`] when the address cannot be bound, [`LabError::Tls`] for an unusable identity.
    pub async fn start(settings: SimulatorSettings, identity: &ServerIdentity) -> Result<Self, LabError> {
        let tls = axum_server::tls_rustls::RustlsConfig::from_config(identity.server_config()?);
        let listener = std::net::TcpListener::bind(settings.listen)
            .map_err(|source| LabError::Io { path: settings.listen.to_string().into(), source })?;
        listener.set_nonblocking(true).map_err(|source| LabError::Io { path: "simulator".into(), source })?;
        let addr = listener.local_addr().map_err(|source| LabError::Io { path: "simulator".into(), source })?;
        let started = Instant::now();
        let state = Arc::new(SimState {
            binance: Limiter::new(settings.binance.clone(), started),
            coinbase: Limiter::new(settings.coinbase.clone(), started),
            settings,
            stats: Mutex::default(),
            trade_ids: AtomicU64::new(1),
            stop: CancellationToken::new(),
        });
        let app = axum::Router::new().fallback(serve).with_state(state.clone());
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(listener, tls).handle(handle.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = server.serve(app.into_make_service_with_connect_info::<SocketAddr>()).await {
                tracing::warn!(%err, "exchange simulator stopped");
            }
        });
        Ok(Self { addr, state, handle, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it did so far, per exchange and source IP.
    pub fn stats(&self) -> SimulatorStats {
        self.state.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A handle that reads the counters while the simulator runs (for a live view on another task).
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(self.state.clone())
    }

    /// The settings it enforces.
    pub fn settings(&self) -> &SimulatorSettings {
        &self.state.settings
    }

    /// Closes every websocket and stops listening.
    pub async fn stop(self) {
        self.state.stop.cancel();
        self.handle.graceful_shutdown(Some(Duration::from_secs(1)));
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The exchange's answer to a refused request or handshake, in its own words.
fn refusal(exchange: LabExchange, verdict: Verdict, ip: IpAddr) -> Response {
    let status = StatusCode::from_u16(verdict.status()).unwrap_or(StatusCode::FORBIDDEN);
    let mut response = match (exchange, verdict) {
        (_, Verdict::WafBlocked) => {
            (status, "403 Forbidden: request blocked by the web application firewall").into_response()
        }
        (LabExchange::Binance, Verdict::GeoRestricted) => json(
            status,
            serde_json::json!({
                "code": 0,
                "msg": "Service unavailable from a restricted location according to 'b. Eligibility' in https://www.binance.com/en/terms. Please contact customer service if you believe you received this message in error."
            }),
        ),
        (LabExchange::Binance, Verdict::Banned { retry_after_seconds }) => json(
            status,
            serde_json::json!({
                "code": -1003,
                "msg": format!("Way too many requests; IP({ip}) banned for {retry_after_seconds}s. Please use the websocket for live updates to avoid bans.")
            }),
        ),
        (LabExchange::Binance, _) => json(
            status,
            serde_json::json!({
                "code": -1003,
                "msg": format!("Too many requests; current limit of IP({ip}) is exceeded. Please use WebSocket Streams for live updates to avoid polling the API.")
            }),
        ),
        (LabExchange::Coinbase, Verdict::GeoRestricted) => {
            json(status, serde_json::json!({"message": "Unavailable For Legal Reasons"}))
        }
        (LabExchange::Coinbase, _) => json(status, serde_json::json!({"message": "Public rate limit exceeded"})),
    };
    if let Some(seconds) = verdict.retry_after_seconds() {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn with_used_weight(mut response: Response, exchange: LabExchange, verdict: Verdict) -> Response {
    let used = match verdict {
        Verdict::Allow { used_weight } | Verdict::RateLimited { used_weight, .. } => Some(used_weight),
        _ => None,
    };
    if let (LabExchange::Binance, Some(used)) = (exchange, used) {
        response.headers_mut().insert(USED_WEIGHT_HEADER, HeaderValue::from(used));
    }
    response
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// Binance's weight of a REST path (published per endpoint).
fn binance_weight(path: &str, query: Option<&str>) -> u32 {
    match path {
        "/api/v3/exchangeInfo" => 20,
        "/api/v3/trades" => 25,
        "/api/v3/depth" => match query_param(query, "limit").and_then(|l| l.parse::<u32>().ok()).unwrap_or(100) {
            0..=100 => 5,
            101..=500 => 25,
            501..=1000 => 50,
            _ => 250,
        },
        _ => 1,
    }
}

fn is_websocket_upgrade(request: &Request) -> bool {
    request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

async fn serve(
    State(state): State<Arc<SimState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().host().map(str::to_owned))
        .unwrap_or_default();
    let Some(exchange) = LabExchange::from_host(&host) else {
        return (StatusCode::MISDIRECTED_REQUEST, format!("the lab does not play {host:?}")).into_response();
    };
    let ip = peer.ip();
    if is_websocket_upgrade(&request) {
        return websocket(state, exchange, &host, ip, request);
    }
    let (path, query) = (request.uri().path().to_owned(), request.uri().query().map(str::to_owned));
    let weight = match exchange {
        LabExchange::Binance => binance_weight(&path, query.as_deref()),
        LabExchange::Coinbase => 1,
    };
    let verdict = state.limiter(exchange).check_request(ip, weight, Instant::now());
    if !matches!(verdict, Verdict::Allow { .. }) {
        state.count(exchange, ip, |c| c.count_status(verdict.status()));
        return with_used_weight(refusal(exchange, verdict, ip), exchange, verdict);
    }
    let response = match exchange {
        LabExchange::Binance => binance_rest(&state, &path, query.as_deref()),
        LabExchange::Coinbase if host_name(&host).eq_ignore_ascii_case(COINBASE_ADVANCED_TRADE_REST_HOST) => {
            coinbase_advanced_trade_rest(&path)
        }
        LabExchange::Coinbase => coinbase_rest(&state, &path),
    };
    if response.status().is_success() {
        state.count(exchange, ip, |c| c.served += 1);
    }
    with_used_weight(response, exchange, verdict)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The known symbol a query names, if any.
fn binance_symbol(query: Option<&str>) -> Option<(&'static str, f64)> {
    let wanted = query_param(query, "symbol").unwrap_or_default();
    BINANCE_SYMBOLS.iter().find(|(s, _)| s.eq_ignore_ascii_case(wanted)).copied()
}

fn invalid_symbol() -> Response {
    json(StatusCode::BAD_REQUEST, serde_json::json!({"code": -1121, "msg": "Invalid symbol."}))
}

/// One entry of `exchangeInfo`'s `symbols`, in Binance's shape: the `PRICE_FILTER`
/// first (clients such as cryptofeed read `filters[0].tickSize`), then `LOT_SIZE`.
fn binance_symbol_info(symbol: &str) -> serde_json::Value {
    serde_json::json!({
        "symbol": symbol, "status": "TRADING",
        "baseAsset": &symbol[..symbol.len() - 4], "baseAssetPrecision": 8,
        "quoteAsset": "USDT", "quotePrecision": 8, "quoteAssetPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "isSpotTradingAllowed": true, "isMarginTradingAllowed": false,
        "permissions": [], "permissionSets": [["SPOT"]],
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000", "tickSize": "0.01000000"},
            {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000", "stepSize": "0.00001000"}
        ]
    })
}

fn binance_rest(state: &SimState, path: &str, query: Option<&str>) -> Response {
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    let limit = query_param(query, "limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(100).clamp(1, 1000);
    match path {
        "/api/v3/ping" => json(StatusCode::OK, serde_json::json!({})),
        "/api/v3/time" => json(StatusCode::OK, serde_json::json!({"serverTime": now_ms()})),
        "/api/v3/exchangeInfo" => json(
            StatusCode::OK,
            serde_json::json!({
                "timezone": "UTC",
                "serverTime": now_ms(),
                "rateLimits": [{
                    "rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                    "limit": state.settings.binance.request_weight_limit
                }],
                "symbols": BINANCE_SYMBOLS.iter().map(|(s, _)| binance_symbol_info(s)).collect::<Vec<_>>()
            }),
        ),
        "/api/v3/depth" => match binance_symbol(query) {
            None => invalid_symbol(),
            Some((_, price)) => {
                let mut side = |sign: f64| {
                    (1..=limit.min(20))
                        .map(|i| {
                            [format!("{:.2}", price + sign * i as f64), format!("{:.5}", rng.random_range(0.01..2.0))]
                        })
                        .collect::<Vec<_>>()
                };
                let (bids, asks) = (side(-1.0), side(1.0));
                json(
                    StatusCode::OK,
                    serde_json::json!({"lastUpdateId": state.trade_ids.load(Ordering::Relaxed), "bids": bids, "asks": asks}),
                )
            }
        },
        "/api/v3/trades" => match binance_symbol(query) {
            None => invalid_symbol(),
            Some((_, price)) => {
                let trades: Vec<_> = (0..limit.min(50))
                    .map(|_| {
                        let (p, q) = (price * rng.random_range(0.999..1.001), rng.random_range(0.001..1.0));
                        serde_json::json!({
                            "id": state.trade_ids.fetch_add(1, Ordering::Relaxed),
                            "price": format!("{p:.2}"), "qty": format!("{q:.5}"), "quoteQty": format!("{:.2}", p * q),
                            "time": now_ms(), "isBuyerMaker": rng.random_bool(0.5), "isBestMatch": true
                        })
                    })
                    .collect();
                json(StatusCode::OK, serde_json::Value::Array(trades))
            }
        },
        _ => json(StatusCode::NOT_FOUND, serde_json::json!({"code": -1000, "msg": "Unknown endpoint."})),
    }
}

fn coinbase_rest(state: &SimState, path: &str) -> Response {
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    if path == "/time" {
        return json(
            StatusCode::OK,
            serde_json::json!({"iso": chrono::Utc::now().to_rfc3339(), "epoch": now_ms() as f64 / 1000.0}),
        );
    }
    let product = path.strip_prefix("/products/").and_then(|rest| rest.strip_suffix("/trades"));
    match product.and_then(|p| COINBASE_PRODUCTS.iter().find(|(id, _)| id.eq_ignore_ascii_case(p))) {
        Some((_, price)) => {
            let trades: Vec<_> = (0..20)
                .map(|_| {
                    serde_json::json!({
                        "time": chrono::Utc::now().to_rfc3339(),
                        "trade_id": state.trade_ids.fetch_add(1, Ordering::Relaxed),
                        "price": format!("{:.2}", price * rng.random_range(0.999..1.001)),
                        "size": format!("{:.8}", rng.random_range(0.0001..1.0)),
                        "side": if rng.random_bool(0.5) { "buy" } else { "sell" }
                    })
                })
                .collect();
            json(StatusCode::OK, serde_json::Value::Array(trades))
        }
        None => json(StatusCode::NOT_FOUND, serde_json::json!({"message": "NotFound"})),
    }
}

/// One Binance stream of a handshake: `{symbol}@trade` or `{symbol}@aggTrade`.
#[derive(Debug, Clone)]
struct BinanceStream {
    /// As the client named it (the `stream` of a combined stream's messages).
    name: String,
    /// The symbol, Binance's spelling (`BTCUSDT`).
    symbol: &'static str,
    /// The starting price.
    price: f64,
    /// `aggTrade` (aggregate trades, `a`/`f`/`l` ids) rather than `trade` (`t`).
    aggregate: bool,
}

/// Coinbase Advanced Trade's REST API: the product list (`/api/v3/brokerage/products`, and
/// the public `/api/v3/brokerage/market/products`; the lab asks for no API key on either).
fn coinbase_advanced_trade_rest(path: &str) -> Response {
    match path.trim_end_matches('/') {
        "/api/v3/brokerage/products" | "/api/v3/brokerage/market/products" => {
            let products: Vec<_> = COINBASE_PRODUCTS.iter().map(|(id, price)| coinbase_product(id, *price)).collect();
            json(StatusCode::OK, serde_json::json!({"products": products, "num_products": products.len()}))
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "NOT_FOUND", "message": "Not Found", "error_details": "", "details": []}),
        ),
    }
}

/// One product of Advanced Trade's product list, in its shape (`base_currency_id`,
/// `quote_currency_id`, `quote_increment` are what cryptofeed reads).
fn coinbase_product(id: &str, price: f64) -> serde_json::Value {
    let (base, quote) = id.split_once('-').unwrap_or((id, "USD"));
    serde_json::json!({
        "product_id": id, "price": format!("{price:.2}"),
        "price_percentage_change_24h": "0", "volume_24h": "1000", "volume_percentage_change_24h": "0",
        "base_increment": "0.00000001", "quote_increment": "0.01",
        "quote_min_size": "1", "quote_max_size": "150000000", "base_min_size": "0.00000001", "base_max_size": "3400",
        "base_name": base, "quote_name": quote, "watched": false, "is_disabled": false, "new": false,
        "status": "online", "cancel_only": false, "limit_only": false, "post_only": false,
        "trading_disabled": false, "auction_mode": false, "product_type": "SPOT",
        "quote_currency_id": quote, "base_currency_id": base,
        "base_display_symbol": base, "quote_display_symbol": quote,
        "display_name": id, "product_venue": "CBE"
    })
}

/// The Binance streams a handshake path names: `/ws/{stream}` or `/stream?streams=a/b`.
fn binance_streams(path: &str, query: Option<&str>) -> Result<Vec<BinanceStream>, String> {
    let names: Vec<&str> = if let Some(stream) = path.strip_prefix("/ws/") {
        vec![stream]
    } else if path == "/stream" {
        query_param(query, "streams").unwrap_or_default().split('/').filter(|s| !s.is_empty()).collect()
    } else {
        return Err(format!("unknown path {path}"));
    };
    if names.is_empty() {
        return Err("no streams".into());
    }
    names
        .into_iter()
        .map(|name| {
            let (symbol, kind) = name.split_once('@').ok_or_else(|| format!("invalid stream {name:?}"))?;
            let aggregate = match kind {
                "trade" => false,
                "aggTrade" => true,
                _ => return Err(format!("invalid stream {name:?}")),
            };
            let (known, price) = BINANCE_SYMBOLS
                .iter()
                .find(|(s, _)| s.eq_ignore_ascii_case(symbol))
                .ok_or_else(|| format!("invalid stream {name:?}"))?;
            Ok(BinanceStream { name: name.to_owned(), symbol: known, price: *price, aggregate })
        })
        .collect()
}

/// What a websocket speaks, by its host and path.
enum WsProtocol {
    /// Binance's trade streams.
    Binance { streams: Vec<BinanceStream>, combined: bool },
    /// Coinbase Exchange's feed: `matches`.
    CoinbaseExchange,
    /// Coinbase Advanced Trade: `market_trades`, `heartbeats`.
    CoinbaseAdvancedTrade,
}

fn websocket(state: Arc<SimState>, exchange: LabExchange, host: &str, ip: IpAddr, mut request: Request) -> Response {
    let protocol = match exchange {
        LabExchange::Binance => match binance_streams(request.uri().path(), request.uri().query()) {
            Ok(streams) => WsProtocol::Binance { streams, combined: request.uri().path() == "/stream" },
            Err(message) => return json(StatusCode::BAD_REQUEST, serde_json::json!({"code": -1121, "msg": message})),
        },
        LabExchange::Coinbase if host_name(host).eq_ignore_ascii_case(COINBASE_ADVANCED_TRADE_WS_HOST) => {
            WsProtocol::CoinbaseAdvancedTrade
        }
        LabExchange::Coinbase => WsProtocol::CoinbaseExchange,
    };
    let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY).map(|k| k.as_bytes().to_vec()) else {
        return (StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key").into_response();
    };
    let verdict = state.limiter(exchange).check_ws_connect(ip, Instant::now());
    if !matches!(verdict, Verdict::Allow { .. }) {
        state.count(exchange, ip, |c| c.count_status(verdict.status()));
        return refusal(exchange, verdict, ip);
    }
    state.count(exchange, ip, |c| c.ws_connects += 1);
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let session = Session { state: state.clone(), exchange, ip };
        match protocol {
            WsProtocol::Binance { streams, combined } => session.binance(ws, streams, combined).await,
            WsProtocol::CoinbaseExchange => session.coinbase(ws).await,
            WsProtocol::CoinbaseAdvancedTrade => session.coinbase_advanced_trade(ws).await,
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key))
        .body(Body::empty())
        .unwrap_or_default()
}

type ServerSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// One accepted websocket.
struct Session {
    state: Arc<SimState>,
    exchange: LabExchange,
    ip: IpAddr,
}

/// What a client's message did.
enum Inbound {
    /// Carry on; with a message's text when it was one.
    Text(Option<String>),
    /// The client closed or broke the connection.
    Gone,
    /// Over the inbound rate: closed with 1008.
    Closed1008,
}

impl Session {
    fn period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.state.settings.trades_per_second.max(0.01))
    }

    async fn inbound(
        &self,
        ws: &mut ServerSocket,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
        rate: &mut MessageRate,
    ) -> Inbound {
        match message {
            Some(Ok(Message::Close(_))) => {
                // Echo the close frame (tungstenite queued it) as an exchange's server does,
                // so the client sees a clean close rather than a dropped connection.
                let _ = ws.flush().await;
                Inbound::Gone
            }
            None | Some(Err(_)) => Inbound::Gone,
            Some(Ok(message)) => {
                if !rate.allow(Instant::now()) {
                    let frame = CloseFrame { code: CloseCode::Policy, reason: "Too many messages".into() };
                    let _ = ws.send(Message::Close(Some(frame))).await;
                    self.state.count(self.exchange, self.ip, |c| c.ws_closed_1008 += 1);
                    return Inbound::Closed1008;
                }
                Inbound::Text(message.into_text().ok().map(|t| t.to_string()))
            }
        }
    }

    async fn send_trades(&self, ws: &mut ServerSocket, messages: Vec<String>) -> bool {
        let n = messages.len() as u64;
        for message in messages {
            if ws.send(Message::text(message)).await.is_err() {
                return false;
            }
        }
        self.state.count(self.exchange, self.ip, |c| c.messages_sent += n);
        true
    }

    /// Trades of `streams`; a combined stream (`combined`: `/stream?streams=`) wraps each
    /// as `{"stream": name, "data": trade}`, even when it names one stream, as Binance does.
    async fn binance(self, mut ws: ServerSocket, streams: Vec<BinanceStream>, combined: bool) {
        let mut prices: Vec<f64> = streams.iter().map(|s| s.price).collect();
        let mut rng = rand::rngs::SmallRng::from_os_rng();
        let mut rate =
            MessageRate::new(self.state.limiter(self.exchange).rules().ws_inbound_messages_per_second, Instant::now());
        let mut tick = tokio::time::interval(self.period());
        loop {
            tokio::select! {
                () = self.state.stop.cancelled() => { let _ = ws.close(None).await; return }
                message = ws.next() => match self.inbound(&mut ws, message, &mut rate).await {
                    Inbound::Text(_) => {}
                    Inbound::Gone | Inbound::Closed1008 => return,
                },
                _ = tick.tick() => {
                    let now = now_ms();
                    let batch = streams.iter().zip(prices.iter_mut()).map(|(stream, price)| {
                        *price *= rng.random_range(0.9995..1.0005);
                        let id = self.state.trade_ids.fetch_add(1, Ordering::Relaxed);
                        let (p, q) = (format!("{price:.2}"), format!("{:.5}", rng.random_range(0.001..1.0)));
                        let maker = rng.random_bool(0.5);
                        let trade = if stream.aggregate {
                            serde_json::json!({
                                "e": "aggTrade", "E": now, "s": stream.symbol, "a": id, "p": p, "q": q,
                                "f": id, "l": id, "T": now, "m": maker, "M": true
                            })
                        } else {
                            serde_json::json!({
                                "e": "trade", "E": now, "s": stream.symbol, "t": id, "p": p, "q": q,
                                "T": now, "m": maker, "M": true
                            })
                        };
                        if combined { serde_json::json!({"stream": stream.name, "data": trade}).to_string() } else { trade.to_string() }
                    }).collect();
                    if !self.send_trades(&mut ws, batch).await { return }
                }
            }
        }
    }

    /// Coinbase Advanced Trade: `market_trades` `update` events at the trade rate and
    /// `heartbeats` once a second, for what the client subscribed to.
    async fn coinbase_advanced_trade(self, mut ws: ServerSocket) {
        let mut subscribed = AdvancedTradeSubscriptions::default();
        let mut sequence_num = 0u64;
        let mut rng = rand::rngs::SmallRng::from_os_rng();
        let mut rate =
            MessageRate::new(self.state.limiter(self.exchange).rules().ws_inbound_messages_per_second, Instant::now());
        let mut tick = tokio::time::interval(self.period());
        let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
        let mut heartbeat_counter = 0u64;
        loop {
            tokio::select! {
                () = self.state.stop.cancelled() => { let _ = ws.close(None).await; return }
                message = ws.next() => match self.inbound(&mut ws, message, &mut rate).await {
                    Inbound::Text(Some(text)) => {
                        let reply = subscribed.apply(&text, sequence_num);
                        sequence_num += 1;
                        if ws.send(Message::text(reply.to_string())).await.is_err() { return }
                    }
                    Inbound::Text(None) => {}
                    Inbound::Gone | Inbound::Closed1008 => return,
                },
                _ = tick.tick(), if !subscribed.market_trades.is_empty() => {
                    let time = coinbase_time();
                    let trades: Vec<_> = subscribed.market_trades.iter_mut().map(|(id, price)| {
                        *price *= rng.random_range(0.9995..1.0005);
                        serde_json::json!({
                            "trade_id": self.state.trade_ids.fetch_add(1, Ordering::Relaxed).to_string(),
                            "product_id": id, "price": format!("{price:.2}"),
                            "size": format!("{:.8}", rng.random_range(0.0001..1.0)),
                            "side": if rng.random_bool(0.5) { "BUY" } else { "SELL" }, "time": time
                        })
                    }).collect();
                    let n = trades.len() as u64;
                    let message = advanced_trade_message(
                        "market_trades", sequence_num, serde_json::json!([{"type": "update", "trades": trades}]),
                    );
                    sequence_num += 1;
                    if ws.send(Message::text(message.to_string())).await.is_err() { return }
                    self.state.count(self.exchange, self.ip, |c| c.messages_sent += n);
                }
                _ = heartbeat.tick(), if subscribed.heartbeats => {
                    heartbeat_counter += 1;
                    let message = advanced_trade_message(
                        "heartbeats", sequence_num,
                        serde_json::json!([{"current_time": coinbase_time(), "heartbeat_counter": heartbeat_counter}]),
                    );
                    sequence_num += 1;
                    if ws.send(Message::text(message.to_string())).await.is_err() { return }
                }
            }
        }
    }

    async fn coinbase(self, mut ws: ServerSocket) {
        let mut products: Vec<(&'static str, f64)> = Vec::new();
        let mut rng = rand::rngs::SmallRng::from_os_rng();
        let mut rate =
            MessageRate::new(self.state.limiter(self.exchange).rules().ws_inbound_messages_per_second, Instant::now());
        let mut tick = tokio::time::interval(self.period());
        loop {
            tokio::select! {
                () = self.state.stop.cancelled() => { let _ = ws.close(None).await; return }
                message = ws.next() => match self.inbound(&mut ws, message, &mut rate).await {
                    Inbound::Text(Some(text)) => {
                        let reply = coinbase_subscribe(&text, &mut products);
                        if ws.send(Message::text(reply.to_string())).await.is_err() { return }
                    }
                    Inbound::Text(None) => {}
                    Inbound::Gone | Inbound::Closed1008 => return,
                },
                _ = tick.tick(), if !products.is_empty() => {
                    let time = chrono::Utc::now().to_rfc3339();
                    let batch = products.iter_mut().map(|(id, price)| {
                        *price *= rng.random_range(0.9995..1.0005);
                        let sequence = self.state.trade_ids.fetch_add(1, Ordering::Relaxed);
                        serde_json::json!({
                            "type": "match", "trade_id": sequence, "sequence": sequence,
                            "maker_order_id": format!("{:032x}", rng.random::<u128>()),
                            "taker_order_id": format!("{:032x}", rng.random::<u128>()),
                            "time": time, "product_id": id,
                            "size": format!("{:.8}", rng.random_range(0.0001..1.0)),
                            "price": format!("{price:.2}"), "side": if rng.random_bool(0.5) { "buy" } else { "sell" }
                        }).to_string()
                    }).collect();
                    if !self.send_trades(&mut ws, batch).await { return }
                }
            }
        }
    }
}

/// What an Advanced Trade websocket is subscribed to.
#[derive(Debug, Default)]
struct AdvancedTradeSubscriptions {
    /// `market_trades` products, with their current prices.
    market_trades: Vec<(&'static str, f64)>,
    /// The `heartbeats` channel.
    heartbeats: bool,
}

impl AdvancedTradeSubscriptions {
    /// Applies one client message; the answer: the `subscriptions` message, or an `error`.
    /// `sequence_num` numbers every message of the connection.
    fn apply(&mut self, text: &str, sequence_num: u64) -> serde_json::Value {
        #[derive(Deserialize)]
        struct Subscribe {
            r#type: String,
            #[serde(default)]
            product_ids: Vec<String>,
            channel: Option<String>,
        }
        let error = |message: String| serde_json::json!({"type": "error", "message": message});
        let Ok(request) = serde_json::from_str::<Subscribe>(text) else { return error("malformed JSON".into()) };
        if request.r#type != "subscribe" {
            return error(format!("{} is not a valid message type", request.r#type));
        }
        match request.channel.as_deref() {
            Some("market_trades") => {
                for wanted in &request.product_ids {
                    match COINBASE_PRODUCTS.iter().find(|(id, _)| id.eq_ignore_ascii_case(wanted)) {
                        Some(known) if !self.market_trades.iter().any(|(id, _)| id == &known.0) => {
                            self.market_trades.push(*known)
                        }
                        Some(_) => {}
                        None => return error(format!("Failure to subscribe: {wanted} is not a valid product")),
                    }
                }
            }
            Some("heartbeats") => self.heartbeats = true,
            Some(other) => return error(format!("Failure to subscribe: {other} is not a simulated channel")),
            None => return error("Failure to subscribe: no channel".into()),
        }
        let mut subscriptions = serde_json::Map::new();
        if !self.market_trades.is_empty() {
            let ids: Vec<&str> = self.market_trades.iter().map(|(id, _)| *id).collect();
            subscriptions.insert("market_trades".into(), serde_json::json!(ids));
        }
        if self.heartbeats {
            subscriptions.insert("heartbeats".into(), serde_json::json!(["heartbeats"]));
        }
        advanced_trade_message("subscriptions", sequence_num, serde_json::json!([{"subscriptions": subscriptions}]))
    }
}

/// An Advanced Trade websocket message: `channel`, `client_id`, `timestamp`, `sequence_num`, `events`.
fn advanced_trade_message(channel: &str, sequence_num: u64, events: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "channel": channel, "client_id": "", "timestamp": coinbase_time(),
        "sequence_num": sequence_num, "events": events
    })
}

/// Now, as Coinbase writes times (RFC 3339, UTC, `Z`).
fn coinbase_time() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Coinbase Exchange's answer to a client message: `subscriptions` listing what is now
/// subscribed, or an `error` for anything else.
fn coinbase_subscribe(text: &str, products: &mut Vec<(&'static str, f64)>) -> serde_json::Value {
    #[derive(Deserialize)]
    struct Subscribe {
        r#type: String,
        #[serde(default)]
        product_ids: Vec<String>,
        #[serde(default)]
        channels: Vec<serde_json::Value>,
    }
    let error =
        |reason: String| serde_json::json!({"type": "error", "message": "Failed to subscribe", "reason": reason});
    let Ok(request) = serde_json::from_str::<Subscribe>(text) else { return error("malformed JSON".into()) };
    if request.r#type != "subscribe" {
        return error(format!("{} is not a valid message type", request.r#type));
    }
    let wants_matches = request
        .channels
        .iter()
        .any(|c| c.as_str() == Some("matches") || c.get("name").and_then(|n| n.as_str()) == Some("matches"));
    if !wants_matches {
        return error("only the matches channel is simulated".into());
    }
    for wanted in &request.product_ids {
        match COINBASE_PRODUCTS.iter().find(|(id, _)| id.eq_ignore_ascii_case(wanted)) {
            Some(known) if !products.iter().any(|(id, _)| id == &known.0) => products.push(*known),
            Some(_) => {}
            None => return error(format!("{wanted} is not a valid product")),
        }
    }
    let ids: Vec<&str> = products.iter().map(|(id, _)| *id).collect();
    serde_json::json!({"type": "subscriptions", "channels": [{"name": "matches", "product_ids": ids}]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_name_their_exchange_with_or_without_a_port() {
        assert_eq!(LabExchange::from_host("stream.binance.com:9443"), Some(LabExchange::Binance));
        assert_eq!(LabExchange::from_host("API.binance.com"), Some(LabExchange::Binance));
        assert_eq!(LabExchange::from_host("ws-feed.exchange.coinbase.com"), Some(LabExchange::Coinbase));
        assert_eq!(LabExchange::from_host("example.com"), None);
    }

    #[test]
    fn binance_weights_follow_the_published_table() {
        assert_eq!(binance_weight("/api/v3/ping", None), 1);
        assert_eq!(binance_weight("/api/v3/exchangeInfo", None), 20);
        assert_eq!(binance_weight("/api/v3/trades", Some("symbol=BTCUSDT")), 25);
        assert_eq!(binance_weight("/api/v3/depth", Some("symbol=BTCUSDT&limit=100")), 5);
        assert_eq!(binance_weight("/api/v3/depth", Some("symbol=BTCUSDT&limit=500")), 25);
        assert_eq!(binance_weight("/api/v3/depth", Some("limit=1000&symbol=BTCUSDT")), 50);
        assert_eq!(binance_weight("/api/v3/depth", Some("symbol=BTCUSDT&limit=5000")), 250);
    }

    #[test]
    fn stream_paths_name_known_trade_streams() {
        assert_eq!(binance_streams("/ws/btcusdt@trade", None).unwrap().len(), 1);
        let both = binance_streams("/stream", Some("streams=btcusdt@trade/ethusdt@trade")).unwrap();
        assert_eq!(both.iter().map(|s| s.symbol).collect::<Vec<_>>(), ["BTCUSDT", "ETHUSDT"]);
        let aggregate = binance_streams("/stream", Some("streams=btcusdt@aggTrade")).unwrap();
        assert!(aggregate[0].aggregate && aggregate[0].symbol == "BTCUSDT");
        assert!(binance_streams("/ws/btcusdt@aggtrade", None).is_err(), "stream kinds are case-sensitive");
        assert!(binance_streams("/ws/dogeusdt@trade", None).is_err());
        assert!(binance_streams("/ws/btcusdt@depth", None).is_err());
        assert!(binance_streams("/stream", Some("streams=")).is_err());
    }

    #[test]
    fn coinbase_subscribe_answers_subscriptions_or_an_error() {
        let mut products = Vec::new();
        let reply = coinbase_subscribe(
            r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["matches"]}"#,
            &mut products,
        );
        assert_eq!(reply["type"], "subscriptions");
        assert_eq!(reply["channels"][0]["product_ids"][0], "BTC-USD");
        let reply = coinbase_subscribe(
            r#"{"type":"subscribe","product_ids":["XXX-USD"],"channels":["matches"]}"#,
            &mut products,
        );
        assert_eq!(reply["type"], "error");
        assert_eq!(coinbase_subscribe("nope", &mut products)["type"], "error");
        assert_eq!(products.len(), 1);
    }

    #[test]
    fn advanced_trade_subscribe_answers_subscriptions_or_an_error() {
        let mut subscribed = AdvancedTradeSubscriptions::default();
        let reply = subscribed.apply(r#"{"type":"subscribe","product_ids":["BTC-USD"],"channel":"market_trades"}"#, 0);
        assert_eq!(reply["channel"], "subscriptions");
        assert_eq!(reply["events"][0]["subscriptions"]["market_trades"][0], "BTC-USD");
        let reply = subscribed.apply(r#"{"type":"subscribe","product_ids":["BTC-USD"],"channel":"heartbeats"}"#, 1);
        assert_eq!(reply["events"][0]["subscriptions"]["heartbeats"][0], "heartbeats");
        assert_eq!(reply["sequence_num"], 1);
        let reply = subscribed.apply(r#"{"type":"subscribe","product_ids":["XXX-USD"],"channel":"market_trades"}"#, 2);
        assert_eq!(reply["type"], "error");
        let reply = subscribed.apply(r#"{"type":"subscribe","product_ids":["BTC-USD"],"channels":["matches"]}"#, 3);
        assert_eq!(reply["type"], "error", "the Exchange feed's subscribe is not Advanced Trade's");
        assert!(subscribed.heartbeats && subscribed.market_trades.len() == 1);
    }
}
