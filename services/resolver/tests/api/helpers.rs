//! What every test needs: a real nats-server, a fake upstream proxy service (a
//! small axum app on 127.0.0.1, plain or TLS), a DNS server answering SRV
//! queries, and the resolver running in-process with a shutdown the test holds.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap as HttpHeaders, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use proxybus_resolver::ResolverConfig;
use proxybus_shared::config::EnvSource;
use proxybus_shared::{Codec, ConnectionType, Encoding, ErrorReply, ProxyRequest, ProxyResponse};
use proxybus_tests::NatsServer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound of any single wait in these tests.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// How the fake upstream behaves; tests change it while it runs.
#[derive(Debug, Clone)]
pub(crate) struct Behaviour {
    /// Proxies handed out in turn.
    pub(crate) proxies: Vec<String>,
    /// Delay before answering.
    pub(crate) delay: Duration,
    /// Status of the answer; non-200 answers have no body.
    pub(crate) status: u16,
    /// `ttl_seconds` of answers.
    pub(crate) ttl_seconds: u64,
    /// Whether `/healthz` answers 200.
    pub(crate) healthy: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            proxies: vec!["http://user:pw@10.0.0.1:3128".into()],
            delay: Duration::ZERO,
            status: 200,
            ttl_seconds: 300,
            healthy: true,
        }
    }
}

/// A request the fake upstream received.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// The body.
    pub(crate) request: ProxyRequest,
    /// `X-Request-Id`.
    pub(crate) request_id_header: Option<String>,
    /// `Authorization`.
    pub(crate) authorization: Option<String>,
}

#[derive(Debug, Default)]
struct UpstreamState {
    behaviour: Mutex<Behaviour>,
    next: AtomicUsize,
    calls: AtomicUsize,
    seen: Mutex<VecDeque<Seen>>,
    client_cert_seen: AtomicBool,
}

/// A fake proxy service on 127.0.0.1.
#[derive(Debug, Clone)]
pub(crate) struct FakeUpstream {
    /// Its base URL.
    pub(crate) url: String,
    state: Arc<UpstreamState>,
}

impl FakeUpstream {
    /// Starts a plain-HTTP fake with `behaviour`.
    pub(crate) async fn start(behaviour: Behaviour) -> Self {
        let state = Arc::new(UpstreamState { behaviour: Mutex::new(behaviour), ..Default::default() });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = app(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url: format!("http://{addr}"), state }
    }

    /// Starts an HTTPS fake with `tls` (which may ask for client certificates).
    pub(crate) async fn start_tls(behaviour: Behaviour, tls: rustls::ServerConfig) -> Self {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let state = Arc::new(UpstreamState { behaviour: Mutex::new(behaviour), ..Default::default() });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let router = app(state.clone());
        let seen = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, router, seen) = (acceptor.clone(), router.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    if tls.get_ref().1.peer_certificates().is_some_and(|certs| !certs.is_empty()) {
                        seen.client_cert_seen.store(true, Ordering::SeqCst);
                    }
                    let service = hyper_util::service::TowerToHyperService::new(router);
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { url: format!("https://127.0.0.1:{}", addr.port()), state }
    }

    /// Calls of `POST /api/v1/proxy/request` so far.
    pub(crate) fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Changes the behaviour.
    pub(crate) fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.state.behaviour.lock().unwrap());
    }

    /// The requests received, oldest first.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().iter().cloned().collect()
    }

    /// Whether a TLS client presented a certificate.
    pub(crate) fn client_cert_seen(&self) -> bool {
        self.state.client_cert_seen.load(Ordering::SeqCst)
    }
}

fn app(state: Arc<UpstreamState>) -> axum::Router {
    axum::Router::new().route("/api/v1/proxy/request", post(answer)).route("/healthz", get(healthz)).with_state(state)
}

async fn answer(
    State(state): State<Arc<UpstreamState>>,
    headers: HttpHeaders,
    Json(request): Json<ProxyRequest>,
) -> Response {
    state.calls.fetch_add(1, Ordering::SeqCst);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    state.seen.lock().unwrap().push_back(Seen {
        request: request.clone(),
        request_id_header: header("x-request-id"),
        authorization: header("authorization"),
    });
    let behaviour = state.behaviour.lock().unwrap().clone();
    tokio::time::sleep(behaviour.delay).await;
    if behaviour.status != 200 {
        return StatusCode::from_u16(behaviour.status).unwrap().into_response();
    }
    let index = state.next.fetch_add(1, Ordering::SeqCst) % behaviour.proxies.len();
    Json(serde_json::json!({
        "proxy_url": behaviour.proxies[index],
        "strategy": "round_robin",
        "ttl_seconds": behaviour.ttl_seconds,
        "fallback_policy": "direct_connection",
        "region": "us-east",
    }))
    .into_response()
}

async fn healthz(State(state): State<Arc<UpstreamState>>) -> StatusCode {
    if state.behaviour.lock().unwrap().healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

/// A resolver running in-process against its own nats-server.
pub(crate) struct TestApp {
    /// The server, alive as long as the app.
    _nats: NatsServer,
    /// A client for the test's requests.
    pub(crate) client: async_nats::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), proxybus_resolver::ResolverError>>>,
}

/// Configuration from `vars` (as environment variables) plus `NATS_URL`.
pub(crate) fn config(nats: &NatsServer, vars: &[(&str, &str)]) -> ResolverConfig {
    let url = nats.client_url();
    let env: EnvSource =
        vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).chain([("NATS_URL".to_owned(), url)]).collect();
    ResolverConfig::load(None, None, &env).expect("valid test configuration")
}

/// Settings every test wants: no periodic probes, a short hedge delay.
pub(crate) const QUIET: [(&str, &str); 2] =
    [("PROXYBUS_RESOLVER_HEALTH_PROBE_INTERVAL_SECONDS", "0"), ("PROXYBUS_RESOLVER_HEDGE_DELAY_MS", "100")];

/// Upstream `url` (bearer token `test-token`) with proxying enabled.
pub(crate) fn upstream_vars(endpoints: &[&FakeUpstream]) -> Vec<(&'static str, String)> {
    let list = serde_json::to_string(&endpoints.iter().map(|e| e.url.clone()).collect::<Vec<_>>()).unwrap();
    vec![
        ("CRYPTOFEED_PROXY_ENABLED", "true".into()),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__ENABLED", "true".into()),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__ENDPOINTS", list),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__AUTH_CREDENTIALS__TOKEN", "test-token".into()),
        ("CRYPTOFEED_PROXY_EXTERNAL_SERVICE__TIMEOUT_SECONDS", "5".into()),
    ]
}

impl TestApp {
    /// Starts nats-server and a resolver configured by `vars`; returns once it serves (`$SRV.INFO`).
    pub(crate) async fn spawn(vars: &[(&str, &str)]) -> Self {
        let nats = NatsServer::start().await.expect("nats-server starts");
        Self::spawn_on(nats, vars).await
    }

    /// Starts a resolver configured by `vars` on a running `nats`; returns once it serves (`$SRV.INFO`).
    pub(crate) async fn spawn_on(nats: NatsServer, vars: &[(&str, &str)]) -> Self {
        proxybus_shared::telemetry::init_for_tests();
        let mut all: Vec<(&str, &str)> = QUIET.to_vec();
        all.extend_from_slice(vars);
        let config = config(&nats, &all);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(proxybus_resolver::run(config, async move {
            let _ = rx.await;
        }));
        let client = nats.connect().await.unwrap();
        let app = Self { _nats: nats, client, shutdown: Some(tx), task: Some(task) };
        app.wait_for_instances(1).await;
        app
    }

    /// Waits until `n` resolvers serve their request endpoints (`$SRV.INFO.proxybus-resolver`).
    pub(crate) async fn wait_for_instances(&self, n: usize) {
        wait_for_instances(&self.client, n).await;
    }

    /// Asks for a proxy (msgpack) and expects an answer.
    pub(crate) async fn ask(&self, exchange: &str, connection_type: ConnectionType, client_id: &str) -> ProxyResponse {
        let reply = self.ask_raw(exchange, connection_type, client_id).await;
        assert!(
            reply.headers.as_ref().is_none_or(|h| h.get("Nats-Service-Error").is_none()),
            "error reply: {:?}",
            reply.headers
        );
        Codec::default().decode(reply.headers.as_ref(), &reply.payload).expect("a ProxyResponse")
    }

    /// Asks for a proxy and returns the reply message as is.
    pub(crate) async fn ask_raw(
        &self,
        exchange: &str,
        connection_type: ConnectionType,
        client_id: &str,
    ) -> async_nats::Message {
        let request = ProxyRequest::new(exchange.parse().unwrap(), connection_type, client_id);
        let body = Codec::default().encode(Encoding::MsgPack, &request).unwrap();
        self.request(&format!("proxy.v1.request.{exchange}.{connection_type}"), None, body).await
    }

    /// A raw request with a bound on the wait.
    pub(crate) async fn request(&self, subject: &str, headers: Option<HeaderMap>, body: Bytes) -> async_nats::Message {
        let call = async {
            match headers {
                Some(headers) => self.client.request_with_headers(subject.to_owned(), headers, body).await,
                None => self.client.request(subject.to_owned(), body).await,
            }
        };
        tokio::time::timeout(WAIT, call).await.expect("a reply in time").expect("a reply")
    }

    /// The `data` of `$SRV.STATS` (the seed's metrics).
    pub(crate) async fn stats(&self) -> serde_json::Value {
        let reply = self.request("$SRV.STATS.proxybus-resolver", None, Bytes::new()).await;
        let stats: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        stats["endpoints"][0]["data"].clone()
    }

    /// Signals shutdown and waits for `run` to return.
    pub(crate) async fn shutdown(&mut self) -> Result<(), proxybus_resolver::ResolverError> {
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task.take().unwrap()).await.expect("run returns in time").unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Waits until `n` resolvers serve their request endpoints (`$SRV.INFO.proxybus-resolver`).
pub(crate) async fn wait_for_instances(client: &async_nats::Client, n: usize) {
    use futures::StreamExt;
    // `$SRV.INFO`, not `$SRV.PING`: a resolver answers PING as soon as its service
    // starts, before its request endpoints subscribe (a request sent then finds no
    // responder). INFO lists an endpoint only once its subscription was sent, on the
    // connection the INFO reply then follows.
    let ready = |info: &serde_json::Value| {
        let endpoints: Vec<&str> = info["endpoints"]
            .as_array()
            .map(|all| all.iter().filter_map(|e| e["name"].as_str()).collect())
            .unwrap_or_default();
        let regional = info["metadata"]["region"].is_string();
        endpoints.contains(&"request") && (!regional || endpoints.contains(&"request_region"))
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await.unwrap();
        client.publish_with_reply("$SRV.INFO.proxybus-resolver", inbox, Bytes::new()).await.unwrap();
        let mut seen = 0;
        while let Ok(Some(reply)) = tokio::time::timeout(Duration::from_millis(200), replies.next()).await {
            if reply.status.is_some() {
                continue; // "no responders": nothing has started yet
            }
            let info: serde_json::Value = serde_json::from_slice(&reply.payload).expect("$SRV.INFO is JSON");
            seen += usize::from(ready(&info));
        }
        if seen >= n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {seen} of {n} resolvers serve (per $SRV.INFO)");
    }
}

/// Decodes an error reply and checks its headers agree with its body.
pub(crate) fn error_reply(reply: &async_nats::Message) -> ErrorReply {
    let headers = reply.headers.as_ref().expect("an error reply has headers");
    let body: ErrorReply = Codec::default().decode(Some(headers), &reply.payload).expect("an ErrorReply body");
    assert_eq!(headers.get("Nats-Service-Error-Code").map(|v| v.as_str()), Some(body.code.to_string().as_str()));
    assert!(headers.get("Nats-Service-Error").is_some_and(|v| !v.as_str().is_empty()));
    body
}

/// A free port on 127.0.0.1 (bound and released).
pub(crate) fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Polls `check` until it is true, failing after [`WAIT`].
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A resolver built directly (no NATS), for tests of the decision itself, with
/// the configuration `vars` describe (plus [`QUIET`]).
pub(crate) fn resolver(vars: &[(&str, &str)]) -> proxybus_resolver::Resolver {
    use proxybus_resolver::ResolverMetrics;
    use proxybus_resolver::{EndpointSet, Upstream};
    use proxybus_shared::http::{TlsFiles, proxy_service_client};
    proxybus_shared::telemetry::init_for_tests();
    let env: EnvSource = QUIET.iter().chain(vars.iter()).map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let config = ResolverConfig::load(None, None, &env).expect("valid test configuration");
    let metrics = Arc::new(ResolverMetrics::default());
    let external = &config.proxy.external_service;
    let upstream = external.enabled.then(|| {
        let client = proxy_service_client(external, &TlsFiles::from_service_config(external)).unwrap();
        let endpoints = Arc::new(EndpointSet::new(config.resolver.breaker(), metrics.clone()));
        endpoints.replace(&external.endpoints);
        Arc::new(Upstream::new(client, endpoints, config.resolver.hedge_delay(), metrics.clone()))
    });
    proxybus_resolver::Resolver::new(Arc::new(config.proxy), config.resolver, upstream, Arc::default(), metrics)
}

/// A request as the service hands it to the resolver (with a request id).
pub(crate) fn request(exchange: &str, connection_type: ConnectionType, client_id: &str) -> ProxyRequest {
    let mut request = ProxyRequest::new(exchange.parse().unwrap(), connection_type, client_id);
    request.request_id = Some(uuid::Uuid::new_v4().to_string());
    request
}

/// `(name, value)` pairs borrowed from owned ones.
pub(crate) fn borrow<'a>(vars: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    vars.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Moves paused tokio time forward by `by` and lets it run again.
pub(crate) async fn skip(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}
