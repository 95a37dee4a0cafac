//! Real proxies and a websocket server on 127.0.0.1 for tests of code that
//! connects through proxies: an HTTP CONNECT proxy, the same behind TLS (an
//! `https://` proxy with its own CA), a SOCKS4/4a proxy, a SOCKS5/5h proxy (RFC 1928,
//! username/password per RFC 1929) and a websocket echo server that can refuse
//! its handshake with a chosen HTTP status. The HTTP proxy also forwards plain
//! `GET http://…` requests (without their bodies), as REST clients send them. Each proxy logs the targets it
//! tunnelled to, so a test can prove a connection really went through it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What a proxy URL's user info may hold raw: RFC 3986 `unreserved`; the rest is percent-encoded.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A client connection to a test proxy: TCP, or TLS over TCP.
trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientStream for T {}

type Serve = Arc<
    dyn Fn(Box<dyn ClientStream>, Option<ProxyCredentials>, ProxyLog) -> BoxFuture<'static, Result<()>> + Send + Sync,
>;

/// Username and password a proxy demands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyCredentials {
    /// The username.
    pub user: String,
    /// The password.
    pub password: String,
}

impl ProxyCredentials {
    /// Credentials `user`:`password`.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self { user: user.into(), password: password.into() }
    }
}

/// What a test proxy saw: one line per tunnel it opened (`host:port`) or refused
/// (`refused host:port: reason`).
#[derive(Debug, Clone, Default)]
pub struct ProxyLog(Arc<Mutex<Vec<String>>>);

impl ProxyLog {
    fn push(&self, line: String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Targets tunnelled to successfully.
    pub fn tunnels(&self) -> Vec<String> {
        self.lines().into_iter().filter(|l| !l.starts_with("refused")).collect()
    }
}

/// A running test proxy; stops when dropped.
#[derive(Debug)]
pub struct TestProxy {
    addr: SocketAddr,
    scheme: &'static str,
    credentials: Option<ProxyCredentials>,
    log: ProxyLog,
    ca_pem: Option<String>,
    task: JoinHandle<()>,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestProxy {
    /// An HTTP proxy that supports `CONNECT` (and demands `Proxy-Authorization: Basic` when `credentials` is set).
    pub async fn http_connect(credentials: Option<ProxyCredentials>) -> Result<Self> {
        Self::spawn("http", credentials, None, Arc::new(|s, c, l| Box::pin(serve_http_connect(s, c, l)))).await
    }

    /// The same HTTP `CONNECT` proxy behind TLS (an `https://` proxy), with a
    /// certificate for `127.0.0.1` and `localhost` issued by a CA made for it
    /// ([`ca_pem`](Self::ca_pem)), which no system trusts.
    pub async fn https_connect(credentials: Option<ProxyCredentials>) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "proxybus test proxy CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?
            .signed_by(&key, &ca)?;
        let der_key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], der_key)
            .context("test proxy TLS config")?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let serve: Serve = Arc::new(move |stream, credentials, log| {
            let acceptor = acceptor.clone();
            Box::pin(async move {
                let tls = acceptor.accept(stream).await.context("TLS handshake with the client")?;
                serve_http_connect(Box::new(tls), credentials, log).await
            })
        });
        Self::spawn("https", credentials, Some(ca.pem()), serve).await
    }

    /// A SOCKS4/4a proxy; with `credentials`, only their user id is accepted (SOCKS4 has no password).
    pub async fn socks4(credentials: Option<ProxyCredentials>) -> Result<Self> {
        Self::spawn("socks4", credentials, None, Arc::new(|s, c, l| Box::pin(serve_socks4(s, c, l)))).await
    }

    /// A SOCKS5 proxy (no authentication, or username/password when `credentials` is set);
    /// it takes addresses and host names alike (`socks5` and `socks5h`).
    pub async fn socks5(credentials: Option<ProxyCredentials>) -> Result<Self> {
        Self::spawn("socks5", credentials, None, Arc::new(|s, c, l| Box::pin(serve_socks5(s, c, l)))).await
    }

    async fn spawn(
        scheme: &'static str,
        credentials: Option<ProxyCredentials>,
        ca_pem: Option<String>,
        serve: Serve,
    ) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log = ProxyLog::default();
        let (creds, task_log) = (credentials.clone(), log.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (creds, log, serve) = (creds.clone(), task_log.clone(), serve.clone());
                tokio::spawn(async move {
                    if let Err(err) = serve(Box::new(stream), creds, log).await {
                        tracing::debug!(%err, "test proxy connection ended");
                    }
                });
            }
        });
        Ok(Self { addr, scheme, credentials, log, ca_pem, task })
    }

    /// PEM of the CA that issued an `https` proxy's certificate.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Where the proxy listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's URL, with its credentials (percent-encoded) when it has some.
    pub fn url(&self) -> String {
        self.url_as(self.scheme)
    }

    /// The proxy's URL under another scheme it speaks: `socks4a` for a SOCKS4
    /// proxy, `socks5h` for a SOCKS5 one. A SOCKS4 URL carries the user id only.
    pub fn url_as(&self, scheme: &str) -> String {
        match &self.credentials {
            Some(c) if scheme.starts_with("socks4") => format!("{scheme}://{}@{}", encode(&c.user), self.addr),
            Some(c) => self.url_with_as(scheme, &c.user, &c.password),
            None => format!("{scheme}://{}", self.addr),
        }
    }

    /// The proxy's URL with other credentials (to test a rejected login).
    pub fn url_with(&self, user: &str, password: &str) -> String {
        self.url_with_as(self.scheme, user, password)
    }

    fn url_with_as(&self, scheme: &str, user: &str, password: &str) -> String {
        format!("{scheme}://{}:{}@{}", encode(user), encode(password), self.addr)
    }

    /// What the proxy saw.
    pub fn log(&self) -> &ProxyLog {
        &self.log
    }
}

fn encode(text: &str) -> String {
    utf8_percent_encode(text, USERINFO).to_string()
}

async fn serve_http_connect(
    stream: Box<dyn ClientStream>,
    credentials: Option<ProxyCredentials>,
    log: ProxyLog,
) -> Result<()> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await?;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            bail!("client closed before the end of headers");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("proxy-authorization")
        {
            authorization = Some(value.trim().to_owned());
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default().to_owned());
    let forward = method != "CONNECT";
    let mut stream = reader.into_inner();
    if let Some(expected) = &credentials {
        use base64::Engine;
        let wanted = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", expected.user, expected.password))
        );
        if authorization.as_deref() != Some(wanted.as_str()) {
            log.push(format!("refused {target}: bad credentials"));
            stream
                .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nproxy-authenticate: Basic realm=\"test\"\r\ncontent-length: 0\r\n\r\n")
                .await?;
            return Ok(());
        }
    }
    if forward {
        return forward_plain(stream, method, &target, log).await;
    }
    let upstream = match TcpStream::connect(&target).await {
        Ok(upstream) => upstream,
        Err(err) => {
            log.push(format!("refused {target}: {err}"));
            stream.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await?;
            return Ok(());
        }
    };
    log.push(target);
    stream.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await?;
    tunnel(stream, upstream).await
}

/// A plain-HTTP proxy request (`GET http://host:port/path`): sent on to the
/// target in origin form, one request per connection.
async fn forward_plain(mut stream: Box<dyn ClientStream>, method: &str, target: &str, log: ProxyLog) -> Result<()> {
    let Some(rest) = target.strip_prefix("http://") else {
        log.push(format!("refused {target}: method {method}"));
        stream.write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n").await?;
        return Ok(());
    };
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let mut upstream = match TcpStream::connect(authority).await {
        Ok(upstream) => upstream,
        Err(err) => {
            log.push(format!("refused {authority}: {err}"));
            stream.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await?;
            return Ok(());
        }
    };
    log.push(authority.to_owned());
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    upstream.write_all(request.as_bytes()).await?;
    tokio::io::copy(&mut upstream, &mut stream).await?;
    Ok(())
}

async fn serve_socks5(
    mut stream: Box<dyn ClientStream>,
    credentials: Option<ProxyCredentials>,
    log: ProxyLog,
) -> Result<()> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    if head[0] != 5 {
        bail!("not SOCKS5");
    }
    let mut methods = vec![0u8; head[1] as usize];
    stream.read_exact(&mut methods).await?;
    let wanted = if credentials.is_some() { 2 } else { 0 };
    if !methods.contains(&wanted) {
        stream.write_all(&[5, 0xff]).await?;
        log.push("refused ?: no acceptable auth method".into());
        return Ok(());
    }
    stream.write_all(&[5, wanted]).await?;
    if let Some(expected) = &credentials {
        let mut version_len = [0u8; 2];
        stream.read_exact(&mut version_len).await?;
        let mut user = vec![0u8; version_len[1] as usize];
        stream.read_exact(&mut user).await?;
        let mut len = [0u8; 1];
        stream.read_exact(&mut len).await?;
        let mut password = vec![0u8; len[0] as usize];
        stream.read_exact(&mut password).await?;
        if user != expected.user.as_bytes() || password != expected.password.as_bytes() {
            stream.write_all(&[1, 1]).await?;
            log.push("refused ?: bad credentials".into());
            return Ok(());
        }
        stream.write_all(&[1, 0]).await?;
    }
    let mut request = [0u8; 4];
    stream.read_exact(&mut request).await?;
    let host = match request[3] {
        1 => {
            let mut ip = [0u8; 4];
            stream.read_exact(&mut ip).await?;
            std::net::Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            stream.read_exact(&mut len).await?;
            let mut name = vec![0u8; len[0] as usize];
            stream.read_exact(&mut name).await?;
            String::from_utf8(name).context("domain name is not UTF-8")?
        }
        4 => {
            let mut ip = [0u8; 16];
            stream.read_exact(&mut ip).await?;
            format!("[{}]", std::net::Ipv6Addr::from(ip))
        }
        other => bail!("unknown address type {other}"),
    };
    let mut port = [0u8; 2];
    stream.read_exact(&mut port).await?;
    let target = format!("{host}:{}", u16::from_be_bytes(port));
    let reply = |code: u8| [5, code, 0, 1, 0, 0, 0, 0, 0, 0];
    match TcpStream::connect(&target).await {
        Ok(upstream) => {
            log.push(target);
            stream.write_all(&reply(0)).await?;
            tunnel(stream, upstream).await
        }
        Err(err) => {
            log.push(format!("refused {target}: {err}"));
            stream.write_all(&reply(5)).await?;
            Ok(())
        }
    }
}

async fn read_null_terminated(stream: &mut Box<dyn ClientStream>) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await?;
        if byte[0] == 0 {
            return Ok(bytes);
        }
        if bytes.len() > 255 {
            bail!("SOCKS4 field too long");
        }
        bytes.push(byte[0]);
    }
}

async fn serve_socks4(
    mut stream: Box<dyn ClientStream>,
    credentials: Option<ProxyCredentials>,
    log: ProxyLog,
) -> Result<()> {
    let mut head = [0u8; 8];
    stream.read_exact(&mut head).await?;
    if head[0] != 4 || head[1] != 1 {
        bail!("not a SOCKS4 CONNECT");
    }
    let port = u16::from_be_bytes([head[2], head[3]]);
    let ip = std::net::Ipv4Addr::new(head[4], head[5], head[6], head[7]);
    let user = read_null_terminated(&mut stream).await?;
    // SOCKS4a: 0.0.0.x means a host name follows the user id.
    let host = if head[4..7] == [0, 0, 0] && head[7] != 0 {
        String::from_utf8(read_null_terminated(&mut stream).await?).context("host name is not UTF-8")?
    } else {
        ip.to_string()
    };
    let target = format!("{host}:{port}");
    let reply = |code: u8| [0, code, 0, 0, 0, 0, 0, 0];
    if credentials.as_ref().is_some_and(|c| c.user.as_bytes() != user.as_slice()) {
        log.push(format!("refused {target}: bad user id"));
        stream.write_all(&reply(0x5b)).await?;
        return Ok(());
    }
    match TcpStream::connect(&target).await {
        Ok(upstream) => {
            log.push(target);
            stream.write_all(&reply(0x5a)).await?;
            tunnel(stream, upstream).await
        }
        Err(err) => {
            log.push(format!("refused {target}: {err}"));
            stream.write_all(&reply(0x5b)).await?;
            Ok(())
        }
    }
}

async fn tunnel(mut a: Box<dyn ClientStream>, mut b: TcpStream) -> Result<()> {
    tokio::io::copy_bidirectional(&mut a, &mut b).await?;
    Ok(())
}

/// A websocket server on 127.0.0.1 that echoes text and binary messages, or
/// refuses every handshake with a chosen HTTP status (e.g. 451 as a restricted
/// exchange would). Stops when dropped.
#[derive(Debug)]
pub struct WsEchoServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for WsEchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsEchoServer {
    /// A server that accepts every handshake and echoes.
    pub async fn start() -> Result<Self> {
        Self::spawn(None, None).await
    }

    /// A server that answers every handshake with `status` (and `Retry-After` when given).
    pub async fn refusing(status: u16, retry_after: Option<u64>) -> Result<Self> {
        Self::spawn(Some(status), retry_after).await
    }

    async fn spawn(refuse: Option<u16>, retry_after: Option<u64>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = serve_ws(stream, refuse, retry_after).await;
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:PORT/ws`.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

// The handshake callback's error type is tungstenite's, large or not.
#[allow(clippy::result_large_err)]
async fn serve_ws(stream: TcpStream, refuse: Option<u16>, retry_after: Option<u64>) -> Result<()> {
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    use tokio_tungstenite::tungstenite::http;
    let callback = move |_: &Request, response: Response| -> std::result::Result<Response, ErrorResponse> {
        match refuse {
            None => Ok(response),
            Some(status) => {
                let mut builder = http::Response::builder().status(status);
                if let Some(secs) = retry_after {
                    builder = builder.header("Retry-After", secs.to_string());
                }
                Err(builder.body(Some(format!("refused with {status}"))).expect("a valid response"))
            }
        }
    };
    let mut ws = tokio_tungstenite::accept_hdr_async(stream, callback).await?;
    while let Some(message) = ws.next().await {
        let message = message?;
        if message.is_text() || message.is_binary() {
            ws.send(message).await?;
        } else if message.is_close() {
            break;
        }
    }
    Ok(())
}
