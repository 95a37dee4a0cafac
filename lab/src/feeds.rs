//! Market-data feeds against the lab, as a collector runs them: websocket
//! trade streams (Binance `/ws/…@trade` and `/stream?streams=…`, Coinbase
//! `matches` after a subscribe) and REST polling, each reconnecting or
//! retrying on its own, with what really happened counted in a [`FeedBoard`].
//!
//! How a feed picks its proxy is a [`ProxyChoice`]:
//! - [`ProxyChoice::Proxybus`]: the client library — a lease from the resolver,
//!   `connect_websocket` / `http_client`, feedback on every outcome, a failed
//!   lease dropped so that the next attempt asks again (the full proxybus loop);
//! - [`ProxyChoice::RoundRobin`]: the next proxy of a fixed list on every
//!   attempt, with no feedback (what an embedded proxy pool does);
//! - [`ProxyChoice::Fixed`]: always the same proxy (one IP), honouring `Retry-After`.
//!
//! Feeds name the exchanges' real host names; only the lab's proxies (or
//! proxybus' leases of them) know where those are.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use proxybus_client::tunnel::{self, BoxedStream, ConnectError, Target};
use proxybus_client::{ClientError, ProxyClient, ProxyLease};
use proxybus_shared::{ConnectionType, ErrorKind, ExchangeId, FeedbackPhase, ProxyUrl};
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::simulator::LabExchange;

/// What a feed does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedKind {
    /// A websocket of trades; `subscribe` is sent once it is open (Coinbase).
    Trades {
        /// `wss://…` with the exchange's real host name.
        url: String,
        /// First message to send, if the exchange wants one.
        subscribe: Option<String>,
    },
    /// A REST endpoint polled at a fixed interval; each 2xx answer is one message.
    Poll {
        /// `https://…` with the exchange's real host name.
        url: String,
        /// Time between polls.
        every: Duration,
    },
}

/// One feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedSpec {
    /// Shown in tables (`binance btcusdt@trade`).
    pub name: String,
    /// Whose data it is.
    pub exchange: LabExchange,
    /// What it does.
    pub kind: FeedKind,
}

impl FeedSpec {
    /// A Binance trade stream of `symbol` (lowercase, e.g. `btcusdt`).
    pub fn binance_trades(symbol: &str) -> Self {
        Self {
            name: format!("binance {symbol}@trade"),
            exchange: LabExchange::Binance,
            kind: FeedKind::Trades { url: format!("wss://stream.binance.com:9443/ws/{symbol}@trade"), subscribe: None },
        }
    }

    /// A Binance combined stream of the trades of `symbols`.
    pub fn binance_combined(symbols: &[&str]) -> Self {
        let streams: Vec<String> = symbols.iter().map(|s| format!("{s}@trade")).collect();
        Self {
            name: format!("binance {}", streams.join("+")),
            exchange: LabExchange::Binance,
            kind: FeedKind::Trades {
                url: format!("wss://stream.binance.com:9443/stream?streams={}", streams.join("/")),
                subscribe: None,
            },
        }
    }

    /// Coinbase's `matches` channel for `product` (e.g. `BTC-USD`).
    pub fn coinbase_matches(product: &str) -> Self {
        Self {
            name: format!("coinbase {product} matches"),
            exchange: LabExchange::Coinbase,
            kind: FeedKind::Trades {
                url: "wss://ws-feed.exchange.coinbase.com".into(),
                subscribe: Some(
                    serde_json::json!({"type": "subscribe", "product_ids": [product], "channels": ["matches"]})
                        .to_string(),
                ),
            },
        }
    }

    /// Binance's order book of `symbol` (upper case) polled every `every` (weight 5 with `limit=100`).
    pub fn binance_depth_poll(symbol: &str, every: Duration) -> Self {
        Self {
            name: format!("binance {symbol} depth poll"),
            exchange: LabExchange::Binance,
            kind: FeedKind::Poll {
                url: format!("https://api.binance.com/api/v3/depth?symbol={symbol}&limit=100"),
                every,
            },
        }
    }

    /// Coinbase's trades of `product` polled every `every`.
    pub fn coinbase_trades_poll(product: &str, every: Duration) -> Self {
        Self {
            name: format!("coinbase {product} trades poll"),
            exchange: LabExchange::Coinbase,
            kind: FeedKind::Poll { url: format!("https://api.exchange.coinbase.com/products/{product}/trades"), every },
        }
    }

    /// The demo's feeds: trade streams and REST polling of Binance and Coinbase.
    pub fn demo() -> Vec<Self> {
        vec![
            Self::binance_trades("btcusdt"),
            Self::binance_trades("ethusdt"),
            Self::binance_combined(&["bnbusdt", "solusdt"]),
            Self::coinbase_matches("BTC-USD"),
            Self::coinbase_matches("ETH-USD"),
            Self::binance_depth_poll("BTCUSDT", Duration::from_millis(1000)),
            Self::binance_depth_poll("ETHUSDT", Duration::from_millis(1000)),
            Self::coinbase_trades_poll("BTC-USD", Duration::from_millis(500)),
        ]
    }

    fn connection(&self) -> &'static str {
        match self.kind {
            FeedKind::Trades { .. } => "websocket",
            FeedKind::Poll { .. } => "http",
        }
    }
}

/// Where a feed's connections go.
#[derive(Debug)]
pub enum ProxyChoice {
    /// Leases from proxybus through the client library, with feedback.
    Proxybus(ProxyClient),
    /// The next proxy of the list on every attempt, no feedback.
    RoundRobin {
        /// The proxies.
        proxies: Vec<ProxyUrl>,
        /// Next index (shared by every feed that shares the choice).
        next: AtomicUsize,
    },
    /// Always this proxy; `Retry-After` is honoured.
    Fixed(ProxyUrl),
}

impl ProxyChoice {
    /// Round robin over `proxies`.
    pub fn round_robin(proxies: Vec<ProxyUrl>) -> Self {
        Self::RoundRobin { proxies, next: AtomicUsize::new(0) }
    }

    fn pick(&self) -> Option<ProxyUrl> {
        match self {
            ProxyChoice::Proxybus(_) => None,
            ProxyChoice::RoundRobin { proxies, next } => {
                (!proxies.is_empty()).then(|| proxies[next.fetch_add(1, Ordering::Relaxed) % proxies.len()].clone())
            }
            ProxyChoice::Fixed(proxy) => Some(proxy.clone()),
        }
    }
}

/// What one feed did so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FeedStats {
    /// The feed's name.
    pub name: String,
    /// Exchange id.
    pub exchange: String,
    /// `websocket` or `http`.
    pub connection: String,
    /// Data flows now (the websocket's last message came after its last failure, or the last poll answered 2xx).
    pub connected: bool,
    /// Seconds spent connected.
    pub connected_seconds: f64,
    /// Seconds the feed has run.
    pub running_seconds: f64,
    /// Trade messages (websocket) or 2xx answers (REST).
    pub messages: u64,
    /// Messages in the last completed second window of the sampler.
    pub messages_per_second: f64,
    /// Times data flowed again after it had stopped (a new websocket, a poll answered again).
    pub reconnects: u64,
    /// Failures by `error_kind` (`http_429`, `http_418`, `http_451`, `http_403`, `refused`, `proxy_auth`, `ws_closed` …).
    pub errors: BTreeMap<String, u64>,
    /// Proxy of the current or last attempt (id, or the redacted URL's host).
    pub proxy: Option<String>,
    /// Seconds from each proxy death (see [`FeedBoard::mark_outage`]) to the next message, per outage that hit this feed.
    pub recoveries_seconds: Vec<f64>,
    #[serde(skip)]
    messages_at_last_sample: u64,
    #[serde(skip)]
    down_since: Option<Instant>,
}

/// The live counters of a set of feeds; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct FeedBoard(Arc<Mutex<Vec<FeedStats>>>);

impl FeedBoard {
    fn with<R>(&self, index: usize, update: impl FnOnce(&mut FeedStats) -> R) -> R {
        let mut feeds = self.0.lock().unwrap_or_else(|p| p.into_inner());
        update(&mut feeds[index])
    }

    /// A copy of every feed's counters.
    pub fn snapshot(&self) -> Vec<FeedStats> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Adds `elapsed` to the running (and, when connected, connected) time of
    /// every feed, and sets messages/s from the messages since the last sample.
    pub fn sample(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for feed in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
            feed.running_seconds += seconds;
            if feed.connected {
                feed.connected_seconds += seconds;
            }
            feed.messages_per_second = (feed.messages - feed.messages_at_last_sample) as f64 / seconds.max(1e-3);
            feed.messages_at_last_sample = feed.messages;
        }
    }

    /// Feeds whose proxy (shown as `proxy`) is `proxy` are timed from now until
    /// data flows again after they failed (a proxy died under them); returns how many.
    pub fn mark_outage(&self, proxy: &str) -> usize {
        let now = Instant::now();
        let mut marked = 0;
        for feed in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
            if feed.proxy.as_deref() == Some(proxy) {
                feed.down_since = Some(now);
                marked += 1;
            }
        }
        marked
    }

    fn message(&self, index: usize) {
        self.with(index, |f| {
            if !f.connected && f.messages > 0 {
                f.reconnects += 1;
                // Recovered from an outage only once data flows again after the feed saw it fail.
                if let Some(since) = f.down_since.take() {
                    f.recoveries_seconds.push(since.elapsed().as_secs_f64());
                }
            }
            f.messages += 1;
            f.connected = true;
        });
    }

    fn failure(&self, index: usize, kind: &str) {
        self.with(index, |f| {
            *f.errors.entry(kind.to_owned()).or_default() += 1;
            f.connected = false;
        });
    }
}

/// How feeds connect: the lab CA to trust and the timeouts.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// Extra trusted roots (the lab CA).
    pub roots: Vec<CertificateDer<'static>>,
    /// Connect timeout through a proxy.
    pub connect_timeout: Duration,
    /// Pause after a failure before the next attempt (`Fixed` waits for `Retry-After` instead, up to 60 s).
    pub retry_pause: Duration,
}

impl FeedSettings {
    /// Trusting `roots`, 5 s connect timeout, 500 ms pause after a failure.
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Self {
        Self { roots, connect_timeout: Duration::from_secs(5), retry_pause: Duration::from_millis(500) }
    }
}

/// Starts `feeds`, the i-th choosing proxies with `choices[i]`, until `stop`;
/// returns their board and the task that ends when every feed has stopped.
pub fn start(
    feeds: Vec<FeedSpec>,
    choices: Vec<Arc<ProxyChoice>>,
    settings: FeedSettings,
    stop: CancellationToken,
) -> (FeedBoard, tokio::task::JoinHandle<()>) {
    let board = FeedBoard(Arc::new(Mutex::new(
        feeds
            .iter()
            .map(|f| FeedStats {
                name: f.name.clone(),
                exchange: f.exchange.as_str().into(),
                connection: f.connection().into(),
                ..FeedStats::default()
            })
            .collect(),
    )));
    let settings = Arc::new(settings);
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (spec, choice)) in feeds.into_iter().zip(choices).enumerate() {
        let feed = Feed { index, spec, choice, board: board.clone(), settings: settings.clone(), stop: stop.clone() };
        tasks.spawn(feed.run());
    }
    let sampler_board = board.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    sampler_board.sample(last.elapsed());
                    last = Instant::now();
                }
                next = tasks.join_next() => if next.is_none() { return },
            }
        }
    });
    (board, task)
}

/// A failed attempt: its kind and `Retry-After`.
struct Failure {
    kind: ErrorKind,
    retry_after: Option<u64>,
}

impl From<ConnectError> for Failure {
    fn from(err: ConnectError) -> Self {
        Self { kind: err.kind, retry_after: err.retry_after_seconds }
    }
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Self {
        match err {
            ClientError::Connect(err) => err.into(),
            _ => Self { kind: ErrorKind::Other, retry_after: None },
        }
    }
}

fn ws_failure(err: tokio_tungstenite::tungstenite::Error) -> Failure {
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => Failure {
            kind: ErrorKind::from_status(response.status().as_u16()).unwrap_or(ErrorKind::Other),
            retry_after: response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()),
        },
        _ => Failure { kind: ErrorKind::WsClosed, retry_after: None },
    }
}

struct Feed {
    index: usize,
    spec: FeedSpec,
    choice: Arc<ProxyChoice>,
    board: FeedBoard,
    settings: Arc<FeedSettings>,
    stop: CancellationToken,
}

fn shown(proxy: Option<&ProxyUrl>, lease: Option<&ProxyLease>) -> Option<String> {
    match (lease.and_then(|l| l.proxy_id.as_ref()), proxy) {
        (Some(id), _) => Some(id.to_string()),
        (None, Some(proxy)) => Some(proxy.id().to_string()),
        (None, None) => None,
    }
}

impl Feed {
    fn exchange_id(&self) -> ExchangeId {
        self.spec.exchange.as_str().parse().expect("lab exchange ids are valid")
    }

    async fn run(self) {
        while !self.stop.is_cancelled() {
            let outcome = match &self.spec.kind {
                FeedKind::Trades { url, subscribe } => self.stream(url, subscribe.as_deref()).await,
                FeedKind::Poll { url, every } => self.poll(url, *every).await,
            };
            let pause = match outcome {
                Ok(()) => self.settings.retry_pause,
                Err(failure) => {
                    self.board.failure(self.index, failure.kind.as_str());
                    match (&*self.choice, failure.retry_after) {
                        (ProxyChoice::Fixed(_), Some(seconds)) => Duration::from_secs(seconds.min(60)),
                        _ => self.settings.retry_pause,
                    }
                }
            };
            tokio::select! {
                () = self.stop.cancelled() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
        if let ProxyChoice::Proxybus(client) = &*self.choice {
            client.flush_feedback(Duration::from_secs(2)).await;
        }
    }

    /// One websocket from connect to close; Ok when it ended after being open.
    async fn stream(&self, url: &str, subscribe: Option<&str>) -> Result<(), Failure> {
        let (mut ws, lease) = self.open_websocket(url).await?;
        if let Some(text) = subscribe
            && ws.send(Message::text(text)).await.is_err()
        {
            return Err(Failure { kind: ErrorKind::WsClosed, retry_after: None });
        }
        let ended = loop {
            tokio::select! {
                () = self.stop.cancelled() => { let _ = ws.close(None).await; break None }
                message = ws.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if !text.contains("\"subscriptions\"") {
                            self.board.message(self.index);
                        }
                    }
                    Some(Ok(Message::Close(frame))) => break Some(frame.map(|f| format!("closed {}", u16::from(f.code)))),
                    Some(Ok(_)) => {}
                    Some(Err(err)) => break Some(Some(err.to_string())),
                    None => break Some(None),
                },
            }
        };
        self.board.with(self.index, |f| f.connected = false);
        if let (Some(details), ProxyChoice::Proxybus(client), Some(lease)) = (ended, &*self.choice, lease) {
            if let Some(mut event) = lease.feedback(client.client_id(), FeedbackPhase::Disconnected, false) {
                event.error_kind = Some(ErrorKind::WsClosed);
                event.error_details = details;
                client.report(event);
            }
            client.invalidate(&lease).await;
            return Err(Failure { kind: ErrorKind::WsClosed, retry_after: None });
        }
        Ok(())
    }

    async fn open_websocket(&self, url: &str) -> Result<(WebSocketStream<BoxedStream>, Option<ProxyLease>), Failure> {
        if let ProxyChoice::Proxybus(client) = &*self.choice {
            // The lease connect_websocket will use (from the client's cache), to show it even when the connect fails.
            if let Ok(lease) = client.get_proxy(&self.exchange_id(), ConnectionType::Websocket, None).await {
                self.board.with(self.index, |f| f.proxy = shown(None, Some(&lease)));
            }
            let retried_before = client.retried_failures();
            let result = client.connect_websocket(url, &self.exchange_id()).await;
            // Refusals the client retried through another proxy were seen too.
            for (kind, count) in client.retried_failures() {
                for _ in retried_before.get(&kind).copied().unwrap_or(0)..count {
                    self.board.failure(self.index, kind.as_str());
                }
            }
            return match result {
                Ok(ws) => {
                    self.board.with(self.index, |f| f.proxy = shown(None, Some(&ws.lease)));
                    Ok((ws.stream, Some(ws.lease)))
                }
                Err(err) => Err(err.into()),
            };
        }
        let proxy = self.choice.pick();
        self.board.with(self.index, |f| f.proxy = shown(proxy.as_ref(), None));
        let target =
            Target::from_url(&url.parse().map_err(|_| Failure { kind: ErrorKind::Other, retry_after: None })?)?;
        // The lab CA signs both the simulator and the HTTPS proxies.
        let tls = tunnel::TunnelTls::new(&self.settings.roots, &self.settings.roots)?;
        let stream = tunnel::open(proxy.as_ref(), &target, &tls, self.settings.connect_timeout).await?;
        let handshake = tokio_tungstenite::client_async(url, stream);
        match tokio::time::timeout(self.settings.connect_timeout, handshake).await {
            Err(_) => Err(Failure { kind: ErrorKind::Timeout, retry_after: None }),
            Ok(Err(err)) => Err(ws_failure(err)),
            Ok(Ok((ws, _))) => Ok((ws, None)),
        }
    }

    /// Polls until a poll fails; Err with that failure.
    async fn poll(&self, url: &str, every: Duration) -> Result<(), Failure> {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut cached: Option<(reqwest::Client, Option<ProxyLease>, Option<ProxyUrl>)> = None;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            if cached.is_none() {
                cached = Some(self.http_client().await?);
            }
            let Some((http, lease, proxy)) = &cached else { continue };
            self.board.with(self.index, |f| f.proxy = shown(proxy.as_ref(), lease.as_ref()));
            let started = Instant::now();
            let result = http.get(url).timeout(self.settings.connect_timeout * 2).send().await;
            let latency = started.elapsed();
            let client = match &*self.choice {
                ProxyChoice::Proxybus(client) => lease.as_ref().map(|lease| (client, lease)),
                _ => None,
            };
            match result {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if let Some((client, lease)) = client {
                        client.report_response(lease, status, response.headers(), latency);
                    }
                    if response.status().is_success() {
                        let _ = response.bytes().await;
                        self.board.message(self.index);
                        continue;
                    }
                    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
                    if let Some((client, lease)) = client {
                        client.invalidate(lease).await;
                    }
                    return Err(Failure {
                        kind: ErrorKind::from_status(status).unwrap_or(ErrorKind::Other),
                        retry_after,
                    });
                }
                Err(err) => {
                    if let Some((client, lease)) = client {
                        client.report_http_error(lease, &err, latency);
                        client.invalidate(lease).await;
                    }
                    // Counted as the feedback above names it (a refused proxy login is
                    // `proxy_auth`, not `refused`), so the feeds' table agrees with the health.
                    return Err(Failure { kind: proxybus_client::http_error_kind(&err), retry_after: None });
                }
            }
        }
    }

    async fn http_client(&self) -> Result<(reqwest::Client, Option<ProxyLease>, Option<ProxyUrl>), Failure> {
        if let ProxyChoice::Proxybus(client) = &*self.choice {
            let (http, lease) = client.http_client(&self.exchange_id()).await?;
            return Ok((http, Some(lease), None));
        }
        let proxy = self.choice.pick();
        proxybus_shared::http::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(self.settings.connect_timeout)
            .tls_certs_merge(self.settings.roots.iter().filter_map(|der| reqwest::Certificate::from_der(der).ok()));
        builder = match &proxy {
            None => builder.no_proxy(),
            Some(proxy) => {
                let url = proxy.expose();
                builder
                    .proxy(reqwest::Proxy::all(url).map_err(|_| Failure { kind: ErrorKind::Other, retry_after: None })?)
            }
        };
        let http = builder.build().map_err(|_| Failure { kind: ErrorKind::Other, retry_after: None })?;
        Ok((http, None, proxy))
    }
}
