//! [`FaultyUpstream`]: a proxy service on 127.0.0.1 (a real axum server answering
//! `POST` [`paths::REQUEST`] and `GET` [`paths::HEALTHZ`]) whose [`Fault`] the test
//! switches while it runs, for tests of how the resolver survives its upstream.
//!
//! A switch to a fault of the connection (reset, TLS) closes the connections already
//! open, so the next call meets it on a fresh connection (a client's pooled keep-alive
//! connection would otherwise never see it); the other faults are answered on open
//! connections. Served plain ([`FaultyUpstream::start`])
//! or over TLS with a certificate from a CA made for it ([`FaultyUpstream::start_tls`],
//! whose [`ca_file`](FaultyUpstream::ca_file) the client must trust).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use proxybus_shared::http::paths;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy a healthy [`FaultyUpstream`] hands out.
pub const HEALTHY_PROXY: &str = "http://feed:pw@10.0.0.1:3128";

/// What a [`FaultyUpstream`] answers with `healthy`'s [`HEALTHY_PROXY`] turned into
/// something no client may be handed: `file:`, `javascript:` and `data:` URLs, an
/// unsupported scheme, URLs with no host, a path, a port 0, two `@`, a header
/// injection, a space before the scheme.
pub const HOSTILE_URLS: [&str; 12] = [
    "file:///etc/passwd",
    "javascript:alert(document.cookie)",
    "data:text/html,<script>alert(1)</script>",
    "gopher://10.0.0.1:70/_GET",
    "http://user:pass@",
    "http://user:pass@:3128",
    "http://user:pass@evil.example@10.0.0.1:3128",
    "http://10.0.0.1:3128/../../etc/passwd",
    "socks5://10.0.0.1:0",
    "http://10.0.0.1:3128\r\nX-Injected: 1",
    " http://10.0.0.1:3128",
    "http://[::1:3128",
];

/// How a TLS handshake goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFault {
    /// A handshake with a self-signed certificate no client trusts (on a plain
    /// endpoint: a TLS server where the client speaks plain HTTP).
    UntrustedCert,
    /// A plain HTTP answer (a valid `ProxyResponse`) where the client starts a handshake.
    PlainHttp,
}

/// How the upstream behaves; switch with [`FaultyUpstream::set`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 200 with a valid `ProxyResponse` naming [`HEALTHY_PROXY`].
    Healthy,
    /// As healthy, after this long.
    Slow(Duration),
    /// This HTTP status, with a JSON error body.
    Status(u16),
    /// 200, `Content-Type: application/json`, a body that is not JSON.
    Garbage,
    /// 200 with a well-formed `ProxyResponse` whose `proxy_url` is this (see [`HOSTILE_URLS`]).
    HostileUrl(String),
    /// The TLS layer fails.
    Tls(TlsFault),
    /// The connection is accepted, then reset (RST, SO_LINGER 0) before a byte is read.
    Reset,
    /// Healthy in even seconds since the switch, 500 in odd ones.
    Flap,
}

impl Fault {
    /// The fault's name in tables: `slow(2 s)`, `status(500)`, `hostile_url(file:///etc/passwd)` …
    pub fn name(&self) -> String {
        match self {
            Fault::Healthy => "healthy".into(),
            Fault::Slow(delay) => format!("slow({} ms)", delay.as_millis()),
            Fault::Status(status) => format!("status({status})"),
            Fault::Garbage => "garbage".into(),
            Fault::HostileUrl(url) => format!("hostile_url({})", url.escape_debug()),
            Fault::Tls(TlsFault::UntrustedCert) => "tls_fail(untrusted cert)".into(),
            Fault::Tls(TlsFault::PlainHttp) => "tls_fail(plain HTTP)".into(),
            Fault::Reset => "reset".into(),
            Fault::Flap => "flap(1 s)".into(),
        }
    }
}

#[derive(Debug)]
struct Shared {
    /// The fault and when it was set (flap counts from it).
    fault: Mutex<(Fault, Instant)>,
    /// Bumped by every switch; open connections close when it changes.
    generation: watch::Sender<u64>,
    calls: AtomicUsize,
    connections: AtomicUsize,
}

impl Shared {
    fn fault(&self) -> (Fault, Instant) {
        self.fault.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// TLS of a [`FaultyUpstream::start_tls`] endpoint: the trusted certificate and an untrusted one.
struct Tls {
    trusted: tokio_rustls::TlsAcceptor,
    untrusted: tokio_rustls::TlsAcceptor,
    _dir: tempfile::TempDir,
    ca_file: PathBuf,
}

/// A proxy service on 127.0.0.1 with switchable faults; stops when dropped.
pub struct FaultyUpstream {
    url: String,
    ca_file: Option<PathBuf>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FaultyUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyUpstream").field("url", &self.url).field("fault", &self.shared.fault().0).finish()
    }
}

impl Drop for FaultyUpstream {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

impl FaultyUpstream {
    /// A plain-HTTP upstream (`http://127.0.0.1:{port}`), healthy.
    ///
    /// # Panics
    /// When 127.0.0.1 cannot be bound.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// An HTTPS upstream (`https://127.0.0.1:{port}`), healthy, with a certificate
    /// signed by a CA made for it: the client must trust [`ca_file`](Self::ca_file).
    ///
    /// # Panics
    /// When 127.0.0.1 cannot be bound or the certificates cannot be made.
    pub async fn start_tls() -> Self {
        Self::start_with(Some(make_tls())).await
    }

    async fn start_with(tls: Option<Tls>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("a local address");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let ca_file = tls.as_ref().map(|tls| tls.ca_file.clone());
        let shared = Arc::new(Shared {
            fault: Mutex::new((Fault::Healthy, Instant::now())),
            generation: watch::channel(0).0,
            calls: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone(), tls.map(Arc::new)));
        Self { url: format!("{scheme}://127.0.0.1:{}", addr.port()), ca_file, shared, task }
    }

    /// The base URL, to configure as the resolver's endpoint.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The PEM file of the CA to trust (TLS upstreams only).
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Switches to `fault`. A fault of the connection ([`Fault::Reset`], [`Fault::Tls`])
    /// closes every open connection first, so that the next call meets it; the others
    /// are answered on the connections already open, as a real service's would be.
    pub fn set(&self, fault: Fault) {
        let closes = matches!(fault, Fault::Reset | Fault::Tls(_));
        *self.shared.fault.lock().unwrap_or_else(|p| p.into_inner()) = (fault, Instant::now());
        if closes {
            self.shared.generation.send_modify(|g| *g += 1);
        }
    }

    /// The current fault.
    pub fn fault(&self) -> Fault {
        self.shared.fault().0
    }

    /// Requests the `POST` handler served so far. A request that comes, after a switch to
    /// a connection fault, on a connection opened before it is refused (503,
    /// `Connection: close`) and not counted: that connection is being closed.
    pub fn calls(&self) -> usize {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tls: Option<Arc<Tls>>) {
    let router = axum::Router::new()
        .route(paths::REQUEST, post(answer))
        .route(paths::HEALTHZ, get(healthz))
        .with_state(shared.clone());
    loop {
        let Ok((tcp, _)) = listener.accept().await else { return };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let (shared, tls, router) = (shared.clone(), tls.clone(), router.clone());
        tokio::spawn(async move {
            let mut generation = shared.generation.subscribe();
            let router = router.layer(Extension(Opened(*generation.borrow_and_update())));
            let (fault, _) = shared.fault();
            tokio::select! {
                () = connection(tcp, fault, tls, router) => {}
                _ = generation.changed() => {}
            }
        });
    }
}

/// Serves one connection under `fault`.
async fn connection(mut tcp: TcpStream, fault: Fault, tls: Option<Arc<Tls>>, router: axum::Router) {
    match (fault, tls) {
        (Fault::Reset, _) => {
            let _ = tcp.set_zero_linger();
            drop(tcp);
        }
        (Fault::Tls(TlsFault::PlainHttp), _) => {
            let body = healthy_body(HEALTHY_PROXY);
            let head =
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
            let _ = tcp.write_all(head.as_bytes()).await;
            let _ = tcp.write_all(body.as_bytes()).await;
            let _ = tcp.shutdown().await;
        }
        (Fault::Tls(TlsFault::UntrustedCert), tls) => {
            let acceptor = tls.map_or_else(untrusted_acceptor, |tls| tls.untrusted.clone());
            if let Ok(stream) = acceptor.accept(tcp).await {
                serve(stream, router).await;
            }
        }
        (_, Some(tls)) => {
            if let Ok(stream) = tls.trusted.accept(tcp).await {
                serve(stream, router).await;
            }
        }
        (_, None) => serve(tcp, router).await,
    }
}

async fn serve<S>(stream: S, router: axum::Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let service = hyper_util::service::TowerToHyperService::new(router);
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn healthy_body(proxy_url: &str) -> String {
    serde_json::json!({
        "proxy_url": proxy_url,
        "strategy": "round_robin",
        "ttl_seconds": 300,
        "fallback_policy": "direct_connection",
    })
    .to_string()
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The switch generation a connection was accepted in.
#[derive(Debug, Clone, Copy)]
struct Opened(u64);

async fn answer(State(shared): State<Arc<Shared>>, Extension(Opened(opened)): Extension<Opened>) -> Response {
    if opened != *shared.generation.borrow() {
        // A request on a connection that a switch to a connection fault is closing (its task
        // has not seen the switch yet): it never meets the new fault, so it is not served and
        // not counted as a call made under it.
        return (StatusCode::SERVICE_UNAVAILABLE, [(axum::http::header::CONNECTION, "close")]).into_response();
    }
    shared.calls.fetch_add(1, Ordering::SeqCst);
    let (fault, since) = shared.fault();
    match fault {
        Fault::Slow(delay) => {
            tokio::time::sleep(delay).await;
            json(StatusCode::OK, healthy_body(HEALTHY_PROXY))
        }
        Fault::Status(status) => json(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            r#"{"code":500,"error":"internal","message":"injected fault"}"#.into(),
        ),
        Fault::Garbage => {
            json(StatusCode::OK, "{\"proxy_url\": \"http://10.0.0.1:3128\", \"strat\u{0}\u{fffd}<html>".into())
        }
        Fault::HostileUrl(url) => json(StatusCode::OK, healthy_body(&url)),
        Fault::Flap if since.elapsed().as_secs() % 2 == 1 => {
            json(StatusCode::INTERNAL_SERVER_ERROR, r#"{"error":"flapping"}"#.into())
        }
        Fault::Healthy | Fault::Flap | Fault::Tls(_) | Fault::Reset => {
            json(StatusCode::OK, healthy_body(HEALTHY_PROXY))
        }
    }
}

async fn healthz(State(shared): State<Arc<Shared>>) -> StatusCode {
    if shared.fault().0 == Fault::Healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

/// A CA, a certificate for 127.0.0.1 signed by it, and a self-signed one nobody trusts.
fn make_tls() -> Tls {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    ca_params.distinguished_name.push(DnType::CommonName, "proxybus faulty upstream CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("a key")).expect("the CA");
    let key = KeyPair::generate().expect("a key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("certificate parameters")
        .signed_by(&key, &ca)
        .expect("a certificate");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("ca.pem written");
    Tls { trusted: acceptor(cert.der().clone(), &key), untrusted: untrusted_acceptor(), _dir: dir, ca_file }
}

/// A TLS server with a self-signed certificate for 127.0.0.1.
fn untrusted_acceptor() -> tokio_rustls::TlsAcceptor {
    let key = KeyPair::generate().expect("a key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("certificate parameters")
        .self_signed(&key)
        .expect("a certificate");
    acceptor(cert.der().clone(), &key)
}

fn acceptor(cert: CertificateDer<'static>, key: &KeyPair) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("a server certificate");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
