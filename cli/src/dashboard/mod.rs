//! `proxybus dashboard [--listen 127.0.0.1:8088] [--token T]`: a live web page of proxy health,
//! served by proxybus itself (`docs/dashboard.md`).
//!
//! It follows KV bucket `PROXY_HEALTH` (a watch), the health subjects `proxy.v1.health.>`, stream
//! `PROXY_FEEDBACK` (an ordered consumer from an hour ago: never a durable, nothing is left on the
//! server) and, when `proxybus up --demo` runs, the lab feeds' counters on `proxy.v1.lab.feeds`,
//! and pushes each change to the browsers as server-sent events. The page and its charting
//! library (uPlot, `cli/assets/vendor/uplot/README.md`) are embedded in the binary: it works
//! offline.
//!
//! # Layout
//! - `mod.rs`: the command, the followers of the bus, the HTTP server and its bearer token.
//! - `model.rs`: what the page shows and how each change becomes an update.
//!
//! # Security
//! Only redacted proxy URLs reach the page (`model.rs`). The server binds to loopback by
//! default and refuses any other address unless a token is set; with a token, `/events` and
//! `/api/snapshot` want `Authorization: Bearer T` (or `?token=T`, which the page passes on from
//! its own address, as `EventSource` cannot send headers), compared in constant time.

mod model;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use proxybus_shared::kv::KeyChange;
use proxybus_shared::{Codec, HealthStats, ProxyFeedback, ProxyId, subject};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use model::{Model, Update};

/// Default address of the dashboard: loopback only.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8088";

/// Arguments of `proxybus dashboard`.
#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// Address to serve the page on. Anything but loopback needs --token.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Bearer token the page's data needs (open http://ADDR/?token=T in the browser).
    #[arg(long, env = "PROXYBUS_DASHBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<SecretString>,
}

/// Why the dashboard cannot serve.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DashboardError {
    /// Bound elsewhere than loopback without a token.
    #[error(
        "refusing to serve the dashboard on {0} without a token: it is not a loopback address; \
         set --token (or PROXYBUS_DASHBOARD_TOKEN), or listen on 127.0.0.1"
    )]
    NoToken(SocketAddr),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// `proxybus dashboard`: serves until Ctrl-C or SIGTERM.
pub(crate) async fn run(client: &async_nats::Client, args: DashboardArgs) -> anyhow::Result<ExitCode> {
    let listener = bind(args.listen, args.token.is_some()).await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let served = tokio::spawn(serve(client.clone(), listener, args.token, stop.clone()));
    println!("dashboard   http://{addr}/");
    println!("Ctrl-C stops it.");
    proxybus_shared::shutdown::signal().await;
    stop.cancel();
    match tokio::time::timeout(Duration::from_secs(10), served).await {
        Ok(served) => served??,
        Err(_) => eprintln!("the dashboard did not stop within 10 s"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Binds `addr`, refusing anything but loopback when there is no token.
pub(crate) async fn bind(addr: SocketAddr, has_token: bool) -> Result<tokio::net::TcpListener, DashboardError> {
    if !addr.ip().is_loopback() && !has_token {
        return Err(DashboardError::NoToken(addr));
    }
    tokio::net::TcpListener::bind(addr).await.map_err(|source| DashboardError::Bind { addr, source })
}

/// Binds `preferred`, a loopback address, else any free port of it (for `proxybus up`, which has
/// no token and must not fail because 8088 is taken).
pub(crate) async fn bind_loopback_or_any(preferred: SocketAddr) -> Result<tokio::net::TcpListener, DashboardError> {
    match bind(preferred, false).await {
        Err(DashboardError::Bind { .. }) => bind(SocketAddr::new(preferred.ip(), 0), false).await,
        other => other,
    }
}

/// Shared between the followers and the HTTP handlers.
struct Hub {
    model: Mutex<Model>,
    updates: broadcast::Sender<Update>,
    token: Option<[u8; 32]>,
    /// Ends the event streams too, so that a graceful shutdown does not wait for browsers.
    stop: CancellationToken,
}

impl Hub {
    /// Applies a change to the model and sends its updates, under one lock so that a browser
    /// that connects gets a snapshot and then exactly the updates after it.
    fn apply(&self, change: impl FnOnce(&mut Model) -> Vec<Update>) {
        let mut model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        for update in change(&mut model) {
            let _ = self.updates.send(update);
        }
    }

    fn subscribe(&self) -> (model::Snapshot, broadcast::Receiver<Update>) {
        let model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        (model.snapshot(chrono::Utc::now()), self.updates.subscribe())
    }

    fn allows(&self, headers: &HeaderMap, query: &TokenQuery) -> bool {
        let Some(want) = &self.token else { return true };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let Some(given) = bearer.or_else(|| query.token.clone()) else { return false };
        // Digests have one length, so the comparison takes one time whatever was sent.
        bool::from(Sha256::digest(given.as_bytes()).as_slice().ct_eq(want))
    }
}

/// Serves the page on `listener` and follows the bus through `client` until `stop`.
pub(crate) async fn serve(
    client: async_nats::Client,
    listener: tokio::net::TcpListener,
    token: Option<SecretString>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let hub = Arc::new(Hub {
        model: Mutex::new(Model::default()),
        updates: broadcast::channel(1024).0,
        token: token.map(|t| Sha256::digest(t.expose_secret().as_bytes()).into()),
        stop: stop.clone(),
    });
    let followers = [
        tokio::spawn(follow_bucket(client.clone(), hub.clone(), stop.clone())),
        tokio::spawn(follow_health_subjects(client.clone(), hub.clone(), stop.clone())),
        tokio::spawn(follow_feedback(client.clone(), hub.clone(), stop.clone())),
        tokio::spawn(follow_feeds(client.clone(), hub.clone(), stop.clone())),
        tokio::spawn(tick(hub.clone(), stop.clone())),
    ];
    let app = axum::Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/assets/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/assets/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/assets/uPlot.iife.min.js", get(|| async { asset("text/javascript; charset=utf-8", UPLOT_JS) }))
        .route("/assets/uPlot.min.css", get(|| async { asset("text/css; charset=utf-8", UPLOT_CSS) }))
        .route("/events", get(events))
        .route("/api/snapshot", get(snapshot))
        .with_state(hub);
    let result = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned()).await;
    stop.cancel();
    for follower in followers {
        let _ = follower.await;
    }
    result
}

const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
const APP_CSS: &str = include_str!("../../assets/dashboard/app.css");
const UPLOT_JS: &str = include_str!("../../assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../assets/vendor/uplot/uPlot.min.css");

/// Only the page's own scripts and styles, only its own origin for data: the page fetches
/// nothing from elsewhere.
const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        body,
    )
        .into_response()
}

#[derive(Debug, serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "a bearer token is needed\n").into_response()
}

async fn snapshot(State(hub): State<Arc<Hub>>, headers: HeaderMap, Query(query): Query<TokenQuery>) -> Response {
    if !hub.allows(&headers, &query) {
        return unauthorized();
    }
    axum::Json(hub.subscribe().0).into_response()
}

/// `GET /events`: a `snapshot` event, then one event per change (`proxy`, `removed`,
/// `timeline`, `feedback`, `feeds`); a browser that falls behind gets a new snapshot.
async fn events(State(hub): State<Arc<Hub>>, headers: HeaderMap, Query(query): Query<TokenQuery>) -> Response {
    if !hub.allows(&headers, &query) {
        return unauthorized();
    }
    let (first, updates) = hub.subscribe();
    let stop = hub.stop.clone().cancelled_owned();
    let snapshot_event = |snapshot: &model::Snapshot| {
        Event::default().event("snapshot").data(serde_json::to_string(snapshot).unwrap_or_default())
    };
    let start = futures::stream::once(std::future::ready(Ok::<_, Infallible>(snapshot_event(&first))));
    let rest = futures::stream::unfold((hub, updates), move |(hub, mut updates)| async move {
        let event = match updates.recv().await {
            Ok(update) => Event::default().event(update.event).data(update.data),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let (snapshot, fresh) = hub.subscribe();
                updates = fresh;
                snapshot_event(&snapshot)
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), (hub, updates)))
    });
    let mut response = Sse::new(start.chain(rest).take_until(stop)).keep_alive(KeepAlive::default()).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Follows bucket `PROXY_HEALTH`, waiting for the aggregator to make it.
async fn follow_bucket(client: async_nats::Client, hub: Arc<Hub>, stop: CancellationToken) {
    let js = jetstream::new(client);
    let bucket = tokio::select! {
        () = stop.cancelled() => return,
        bucket = proxybus_shared::kv::wait_for_bucket(&js, subject::HEALTH_BUCKET, || {}) => bucket,
    };
    proxybus_shared::kv::follow_health(&bucket, stop.cancelled(), |change| match change {
        KeyChange::Put { value, .. } => hub.apply(|m| m.put(value, chrono::Utc::now())),
        KeyChange::Deleted { key } => {
            if let Ok(id) = key.parse::<ProxyId>() {
                hub.apply(|m| m.remove(&id));
            }
        }
        KeyChange::Current => {}
    })
    .await;
}

/// Follows `proxy.v1.health.>`: the aggregator publishes each change there as it stores it.
async fn follow_health_subjects(client: async_nats::Client, hub: Arc<Hub>, stop: CancellationToken) {
    let Ok(mut messages) = client.subscribe(subject::HEALTH_WILDCARD).await else { return };
    let codec = Codec::default();
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return,
            message = messages.next() => match message { Some(m) => m, None => return },
        };
        if let Ok(stats) = codec.decode::<HealthStats>(message.headers.as_ref(), &message.payload) {
            hub.apply(|m| m.put(stats, chrono::Utc::now()));
        }
    }
}

/// Follows stream `PROXY_FEEDBACK` from an hour ago with an ordered consumer (ephemeral; made
/// again when it fails), waiting for the stream to exist.
async fn follow_feedback(client: async_nats::Client, hub: Arc<Hub>, stop: CancellationToken) {
    let js = jetstream::new(client);
    let codec = Codec::default();
    // From an hour ago at first; after a failure, from the sequence after the last one seen.
    let from = chrono::Utc::now() - model::WINDOW;
    let start_time =
        time::OffsetDateTime::from_unix_timestamp(from.timestamp()).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let mut next_sequence: Option<u64> = None;
    while !stop.is_cancelled() {
        let deliver_policy = match next_sequence {
            Some(start_sequence) => consumer::DeliverPolicy::ByStartSequence { start_sequence },
            None => consumer::DeliverPolicy::ByStartTime { start_time },
        };
        let messages = async {
            let stream = js.get_stream(subject::FEEDBACK_STREAM).await.map_err(|e| e.to_string())?;
            let ordered = stream
                .create_consumer(consumer::pull::OrderedConfig { deliver_policy, ..Default::default() })
                .await
                .map_err(|e| e.to_string())?;
            ordered.messages().await.map_err(|e| e.to_string())
        };
        let mut messages = match messages.await {
            Ok(messages) => messages,
            Err(err) => {
                tracing::debug!(error = %err, "cannot follow the feedback stream yet");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(proxybus_shared::kv::MISSING_BUCKET_RETRY) => continue,
                }
            }
        };
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = messages.next() => message,
            };
            let Some(Ok(message)) = message else { break };
            if let Ok(info) = message.info() {
                next_sequence = Some(info.stream_sequence + 1);
            }
            if let Ok(event) = codec.decode::<ProxyFeedback>(message.headers.as_ref(), &message.payload) {
                hub.apply(|m| m.feedback(&event, chrono::Utc::now()));
            }
        }
    }
}

/// Follows the lab feeds' counters that `proxybus up --demo` publishes.
async fn follow_feeds(client: async_nats::Client, hub: Arc<Hub>, stop: CancellationToken) {
    let Ok(mut messages) = client.subscribe(subject::LAB_FEEDS).await else { return };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            message = messages.next() => match message {
                Some(message) => hub.apply(|m| m.feeds(&message.payload)),
                None => return,
            },
        }
    }
}

/// Once a second: ends what ran out (ejections, bars) and drops what left the hour.
async fn tick(hub: Arc<Hub>, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => hub.apply(|m| m.tick(chrono::Utc::now())),
        }
    }
}

/// Publishes the demo feeds' counters on [`subject::LAB_FEEDS`] every two seconds until `stop`.
pub(crate) async fn publish_feeds(
    client: async_nats::Client,
    board: proxybus_lab::feeds::FeedBoard,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Ok(json) = serde_json::to_vec(&board.snapshot()) {
            let _ = client.publish(subject::LAB_FEEDS, json.into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn anything_but_loopback_without_a_token_is_refused() {
        let err = bind("0.0.0.0:0".parse().unwrap(), false).await.unwrap_err();
        assert!(err.to_string().contains("without a token"), "{err}");
        assert!(bind("127.0.0.1:0".parse().unwrap(), false).await.is_ok());
    }

    #[test]
    fn the_vendored_chart_library_is_the_one_its_readme_names() {
        let readme = include_str!("../../assets/vendor/uplot/README.md");
        for (name, body) in [("uPlot.iife.min.js", UPLOT_JS), ("uPlot.min.css", UPLOT_CSS)] {
            let sum = hex::encode(Sha256::digest(body.as_bytes()));
            assert!(readme.contains(&format!("`{name}` | `dist/{name}` | `{sum}`")), "{name}: {sum} not in the README");
        }
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for (name, text) in [("index.html", INDEX_HTML), ("app.js", APP_JS), ("app.css", APP_CSS)] {
            assert!(!text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"), "{name}");
        }
    }
}
