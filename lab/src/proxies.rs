//! Real forward proxies on loopback: HTTP CONNECT (and plain `GET http://…`
//! forwarding) with Basic auth, HTTPS (the same over TLS to the proxy), SOCKS5
//! with username/password (RFC 1928/1929) and remote DNS, and SOCKS4/4a.
//!
//! Each proxy binds its outgoing connections to its own source address
//! (`127.0.0.x`; Linux routes all of 127.0.0.0/8 to `lo`), so a server behind it
//! sees a distinct client IP per proxy. Names are resolved by the proxy through
//! a [`HostMap`] (the exchanges' real host names → the simulator), then IP
//! literals and the system resolver, and only loopback addresses are ever
//! connected to. Faults ([`ProxyFault`]) can be set at start and changed while
//! it runs. Every tunnel opened or refused is logged ([`ProxyLog`]).
//!
//! The API is a superset of `proxybus_tests::TestProxy` (same constructors,
//! `addr`, `url`, `url_with`, `log`), so the test harness can re-export it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::LabError;

/// Username and password a proxy demands.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyCredentials {
    /// The username.
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for ProxyCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyCredentials").field("user", &self.user).field("password", &"***").finish()
    }
}

impl ProxyCredentials {
    /// Credentials `user`:`password`.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self { user: user.into(), password: password.into() }
    }
}

/// What a proxy saw: one line per tunnel it opened (`host:port`) or refused
/// (`refused host:port: reason`).
#[derive(Debug, Clone, Default)]
pub struct ProxyLog(Arc<Mutex<Vec<String>>>);

/// Lines a log keeps (the oldest are dropped beyond it).
const LOG_CAPACITY: usize = 10_000;

impl ProxyLog {
    fn push(&self, line: String) {
        let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() >= LOG_CAPACITY {
            lines.remove(0);
        }
        lines.push(line);
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

/// The protocol a proxy speaks to its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyKind {
    /// HTTP `CONNECT` (and plain `GET http://…`), `Proxy-Authorization: Basic`.
    Http,
    /// The same as `Http`, over TLS to the proxy.
    Https,
    /// SOCKS4/4a (a user id, no password).
    Socks4,
    /// SOCKS5 with username/password; names are resolved by the proxy.
    Socks5,
}

impl ProxyKind {
    /// The URL scheme (`http`, `https`, `socks4a`, `socks5h`): the lab's SOCKS proxies resolve
    /// the exchanges' names themselves (only they map them to the simulator), which is what the
    /// `socks4a` and `socks5h` schemes tell a client.
    pub fn scheme(self) -> &'static str {
        match self {
            ProxyKind::Http => "http",
            ProxyKind::Https => "https",
            ProxyKind::Socks4 => "socks4a",
            ProxyKind::Socks5 => "socks5h",
        }
    }
}

/// A fault a proxy plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ProxyFault {
    /// Works.
    #[default]
    None,
    /// Resets every connection at once and cuts the tunnels it carries.
    Dead,
    /// Waits this long before answering each handshake.
    Slow {
        /// Added delay, milliseconds.
        delay_ms: u64,
    },
    /// Alternately works for `up_seconds` and is dead for `down_seconds`, from its start.
    Flapping {
        /// Seconds up.
        up_seconds: u64,
        /// Seconds down.
        down_seconds: u64,
    },
    /// Refuses every login, right or wrong (407, or SOCKS authentication failure).
    RefuseCredentials,
}

/// What the proxy does, in words: `works`, `dead`, `slow (300 ms per handshake)`,
/// `flapping (20 s up, 10 s down)`, `refuses credentials` (the lab's banner).
impl std::fmt::Display for ProxyFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyFault::None => f.write_str("works"),
            ProxyFault::Dead => f.write_str("dead"),
            ProxyFault::Slow { delay_ms } => write!(f, "slow ({delay_ms} ms per handshake)"),
            ProxyFault::Flapping { up_seconds, down_seconds } => {
                write!(f, "flapping ({up_seconds} s up, {down_seconds} s down)")
            }
            ProxyFault::RefuseCredentials => f.write_str("refuses credentials"),
        }
    }
}

impl ProxyFault {
    /// Whether the fault makes the proxy dead `elapsed` after its start.
    fn is_down(self, elapsed: Duration) -> bool {
        match self {
            ProxyFault::Dead => true,
            ProxyFault::Flapping { up_seconds, down_seconds } => {
                let cycle = (up_seconds + down_seconds).max(1);
                elapsed.as_secs() % cycle >= up_seconds
            }
            _ => false,
        }
    }
}

/// Host names a proxy resolves itself: name → address (the port a client asks
/// for is ignored; every port of a mapped name goes to the mapped address).
#[derive(Debug, Clone, Default)]
pub struct HostMap(Arc<HashMap<String, SocketAddr>>);

impl HostMap {
    /// A map from `(name, address)` pairs.
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a str, SocketAddr)>) -> Self {
        Self(Arc::new(entries.into_iter().map(|(name, addr)| (name.to_ascii_lowercase(), addr)).collect()))
    }

    /// Where `host:port` goes: the mapped address, else the IP literal or the
    /// system resolver's first answer — loopback only.
    ///
    /// # Errors
    /// The name does not resolve, or only to addresses outside 127.0.0.0/8 and ::1.
    pub async fn resolve(&self, host: &str, port: u16) -> std::io::Result<SocketAddr> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Some(addr) = self.0.get(&host.to_ascii_lowercase()) {
            return Ok(*addr);
        }
        let candidates: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port)).await?.collect(),
        };
        candidates.into_iter().find(|a| a.ip().is_loopback()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::PermissionDenied, format!("{host}: the lab reaches loopback only"))
        })
    }
}

/// How to start a lab proxy.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    /// Protocol spoken to clients.
    pub kind: ProxyKind,
    /// Login demanded; `None`: anyone.
    pub credentials: Option<ProxyCredentials>,
    /// Source address of outgoing connections; `None`: the system's choice (127.0.0.1 on loopback).
    pub source_ip: Option<Ipv4Addr>,
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// Fault at start.
    pub fault: ProxyFault,
}

impl ProxySpec {
    /// A working proxy of `kind` on 127.0.0.1, any port.
    pub fn new(kind: ProxyKind, credentials: Option<ProxyCredentials>) -> Self {
        Self {
            kind,
            credentials,
            source_ip: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            fault: ProxyFault::None,
        }
    }
}

struct Shared {
    spec: ProxySpec,
    hosts: HostMap,
    tls: Option<tokio_rustls::TlsAcceptor>,
    log: ProxyLog,
    fault: watch::Sender<ProxyFault>,
    started: Instant,
}

impl Shared {
    fn down(&self) -> bool {
        let fault = *self.fault.borrow();
        fault.is_down(self.started.elapsed())
    }

    /// Connects to `host:port` from the proxy's own source address.
    async fn connect_out(&self, host: &str, port: u16) -> std::io::Result<TcpStream> {
        let target = self.hosts.resolve(host, port).await?;
        let socket = if target.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if let (Some(source), true) = (self.spec.source_ip, target.is_ipv4()) {
            socket.bind(SocketAddr::from((source, 0)))?;
        }
        let stream = socket.connect(target).await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    fn accepts(&self, user: &[u8], password: Option<&[u8]>) -> bool {
        let fault = *self.fault.borrow();
        if fault == ProxyFault::RefuseCredentials {
            return false;
        }
        match &self.spec.credentials {
            None => true,
            Some(expected) => {
                user == expected.user.as_bytes() && password.is_none_or(|p| p == expected.password.as_bytes())
            }
        }
    }

    /// Copies both ways until either side closes or the proxy goes down.
    async fn tunnel<C: AsyncRead + AsyncWrite + Unpin>(&self, mut client: C, mut upstream: TcpStream) -> Result<()> {
        let mut fault = self.fault.subscribe();
        let started = self.started;
        let went_down = async {
            loop {
                let now = *fault.borrow_and_update();
                if now.is_down(started.elapsed()) {
                    return;
                }
                // Flapping goes down without a change of setting: look again each second.
                let _ = tokio::time::timeout(Duration::from_secs(1), fault.changed()).await;
            }
        };
        tokio::select! {
            result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => { result?; }
            () = went_down => {}
        }
        Ok(())
    }
}

/// A running lab proxy; stops when dropped.
pub struct LabProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for LabProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabProxy")
            .field("kind", &self.shared.spec.kind)
            .field("addr", &self.addr)
            .field("source_ip", &self.shared.spec.source_ip)
            .field("fault", &*self.shared.fault.borrow())
            .finish_non_exhaustive()
    }
}

impl Drop for LabProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Cut the tunnels too.
        self.shared.fault.send_replace(ProxyFault::Dead);
    }
}

impl LabProxy {
    /// Starts a proxy as `spec` says, resolving names through `hosts`;
    /// `tls` is the server configuration an HTTPS proxy presents.
    ///
    /// # Errors
    /// The address cannot be bound, or an HTTPS proxy has no `tls`.
    pub async fn start(
        spec: ProxySpec,
        hosts: HostMap,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Self, LabError> {
        if spec.kind == ProxyKind::Https && tls.is_none() {
            return Err(LabError::Tls("an HTTPS proxy needs a server certificate".into()));
        }
        let listener = TcpListener::bind(spec.listen)
            .await
            .map_err(|source| LabError::Io { path: spec.listen.to_string().into(), source })?;
        let addr = listener.local_addr().map_err(|source| LabError::Io { path: "proxy".into(), source })?;
        let (fault, _) = watch::channel(spec.fault);
        let shared = Arc::new(Shared {
            tls: tls.map(tokio_rustls::TlsAcceptor::from),
            spec,
            hosts,
            log: ProxyLog::default(),
            fault,
            started: Instant::now(),
        });
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = serving.clone();
                tokio::spawn(async move {
                    if let Err(err) = serve(stream, &shared).await {
                        tracing::debug!(%err, "lab proxy connection ended");
                    }
                });
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// An HTTP proxy that supports `CONNECT` (and demands `Proxy-Authorization: Basic` when `credentials` is set).
    pub async fn http_connect(credentials: Option<ProxyCredentials>) -> Result<Self, LabError> {
        Self::start(ProxySpec::new(ProxyKind::Http, credentials), HostMap::default(), None).await
    }

    /// A SOCKS4/4a proxy; with `credentials`, only their user id is accepted (SOCKS4 has no password).
    pub async fn socks4(credentials: Option<ProxyCredentials>) -> Result<Self, LabError> {
        Self::start(ProxySpec::new(ProxyKind::Socks4, credentials), HostMap::default(), None).await
    }

    /// A SOCKS5 proxy (no authentication, or username/password when `credentials` is set).
    pub async fn socks5(credentials: Option<ProxyCredentials>) -> Result<Self, LabError> {
        Self::start(ProxySpec::new(ProxyKind::Socks5, credentials), HostMap::default(), None).await
    }

    /// Where the proxy listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its protocol.
    pub fn kind(&self) -> ProxyKind {
        self.shared.spec.kind
    }

    /// The source address of its outgoing connections, when it binds one.
    pub fn source_ip(&self) -> Option<Ipv4Addr> {
        self.shared.spec.source_ip
    }

    /// The proxy's URL, with its credentials when it has some.
    pub fn url(&self) -> String {
        match &self.shared.spec.credentials {
            Some(c) => self.url_with(&c.user, &c.password),
            None => format!("{}://{}", self.kind().scheme(), self.addr),
        }
    }

    /// The proxy's URL with other credentials (to test a rejected login).
    pub fn url_with(&self, user: &str, password: &str) -> String {
        format!("{}://{user}:{password}@{}", self.kind().scheme(), self.addr)
    }

    /// What the proxy saw.
    pub fn log(&self) -> &ProxyLog {
        &self.shared.log
    }

    /// The fault it plays now.
    pub fn fault(&self) -> ProxyFault {
        *self.shared.fault.borrow()
    }

    /// Plays `fault` from now on; `Dead` also cuts the tunnels it carries.
    pub fn set_fault(&self, fault: ProxyFault) {
        self.shared.fault.send_replace(fault);
    }
}

async fn serve(stream: TcpStream, shared: &Shared) -> Result<()> {
    if shared.down() {
        // Closed at once, as by a host whose proxy process died.
        drop(stream);
        return Ok(());
    }
    let fault = *shared.fault.borrow();
    if let ProxyFault::Slow { delay_ms } = fault {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    let _ = stream.set_nodelay(true);
    match shared.spec.kind {
        ProxyKind::Http => serve_http(stream, shared).await,
        ProxyKind::Https => {
            let acceptor = shared.tls.clone().context("no TLS configuration")?;
            serve_http(acceptor.accept(stream).await?, shared).await
        }
        ProxyKind::Socks5 => serve_socks5(stream, shared).await,
        ProxyKind::Socks4 => serve_socks4(stream, shared).await,
    }
}

fn basic_credentials(value: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    use base64::Engine;
    let token = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(token.trim()).ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

async fn serve_http<S: AsyncRead + AsyncWrite + Unpin>(stream: S, shared: &Shared) -> Result<()> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await?;
    let mut authorization = None;
    for _ in 0..100 {
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
    let (method, target) = (parts.next().unwrap_or_default().to_owned(), parts.next().unwrap_or_default().to_owned());
    let login = authorization.as_deref().and_then(basic_credentials);
    let allowed = match &login {
        Some((user, password)) => shared.accepts(user, Some(password)),
        None => shared.spec.credentials.is_none() && shared.accepts(b"", None),
    };
    let mut stream = reader.into_inner();
    if !allowed {
        shared.log.push(format!("refused {target}: bad credentials"));
        stream
            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nproxy-authenticate: Basic realm=\"lab\"\r\ncontent-length: 0\r\n\r\n")
            .await?;
        return Ok(());
    }
    if method != "CONNECT" {
        return forward_plain(stream, &method, &target, shared).await;
    }
    let (host, port) = split_authority(&target).with_context(|| format!("bad CONNECT target {target:?}"))?;
    let upstream = match shared.connect_out(&host, port).await {
        Ok(upstream) => upstream,
        Err(err) => {
            shared.log.push(format!("refused {target}: {err}"));
            stream.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await?;
            return Ok(());
        }
    };
    shared.log.push(target);
    stream.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await?;
    shared.tunnel(stream, upstream).await
}

fn split_authority(authority: &str) -> Option<(String, u16)> {
    let (host, port) = authority.rsplit_once(':')?;
    Some((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port.parse().ok()?))
}

/// A plain-HTTP proxy request (`GET http://host:port/path`): sent on to the
/// target in origin form, one request per connection, without a body.
async fn forward_plain<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    target: &str,
    shared: &Shared,
) -> Result<()> {
    let Some(rest) = target.strip_prefix("http://") else {
        shared.log.push(format!("refused {target}: method {method}"));
        stream.write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n").await?;
        return Ok(());
    };
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let (host, port) = split_authority(authority).unwrap_or((authority.to_owned(), 80));
    let mut upstream = match shared.connect_out(&host, port).await {
        Ok(upstream) => upstream,
        Err(err) => {
            shared.log.push(format!("refused {authority}: {err}"));
            stream.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await?;
            return Ok(());
        }
    };
    shared.log.push(authority.to_owned());
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    upstream.write_all(request.as_bytes()).await?;
    tokio::io::copy(&mut upstream, &mut stream).await?;
    Ok(())
}

async fn serve_socks5(mut stream: TcpStream, shared: &Shared) -> Result<()> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    if head[0] != 5 {
        bail!("not SOCKS5");
    }
    let mut methods = vec![0u8; head[1] as usize];
    stream.read_exact(&mut methods).await?;
    let wanted = if shared.spec.credentials.is_some() { 2 } else { 0 };
    if !methods.contains(&wanted) {
        stream.write_all(&[5, 0xff]).await?;
        shared.log.push("refused ?: no acceptable auth method".into());
        return Ok(());
    }
    stream.write_all(&[5, wanted]).await?;
    if wanted == 2 {
        let mut version_len = [0u8; 2];
        stream.read_exact(&mut version_len).await?;
        let mut user = vec![0u8; version_len[1] as usize];
        stream.read_exact(&mut user).await?;
        let mut len = [0u8; 1];
        stream.read_exact(&mut len).await?;
        let mut password = vec![0u8; len[0] as usize];
        stream.read_exact(&mut password).await?;
        if !shared.accepts(&user, Some(&password)) {
            stream.write_all(&[1, 1]).await?;
            shared.log.push("refused ?: bad credentials".into());
            return Ok(());
        }
        stream.write_all(&[1, 0]).await?;
    } else if !shared.accepts(b"", None) {
        stream.write_all(&[5, 0xff]).await?;
        return Ok(());
    }
    let mut request = [0u8; 4];
    stream.read_exact(&mut request).await?;
    let host = match request[3] {
        1 => {
            let mut ip = [0u8; 4];
            stream.read_exact(&mut ip).await?;
            Ipv4Addr::from(ip).to_string()
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
            std::net::Ipv6Addr::from(ip).to_string()
        }
        other => bail!("unknown address type {other}"),
    };
    let mut port = [0u8; 2];
    stream.read_exact(&mut port).await?;
    let port = u16::from_be_bytes(port);
    let target = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let reply = |code: u8| [5, code, 0, 1, 0, 0, 0, 0, 0, 0];
    match shared.connect_out(&host, port).await {
        Ok(upstream) => {
            shared.log.push(target);
            stream.write_all(&reply(0)).await?;
            shared.tunnel(stream, upstream).await
        }
        Err(err) => {
            shared.log.push(format!("refused {target}: {err}"));
            // 4: host unreachable (the name did not resolve to the lab); 5: refused.
            let code = if err.kind() == std::io::ErrorKind::ConnectionRefused { 5 } else { 4 };
            stream.write_all(&reply(code)).await?;
            Ok(())
        }
    }
}

async fn read_null_terminated(stream: &mut TcpStream) -> Result<Vec<u8>> {
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

async fn serve_socks4(mut stream: TcpStream, shared: &Shared) -> Result<()> {
    let mut head = [0u8; 8];
    stream.read_exact(&mut head).await?;
    if head[0] != 4 || head[1] != 1 {
        bail!("not a SOCKS4 CONNECT");
    }
    let port = u16::from_be_bytes([head[2], head[3]]);
    let ip = Ipv4Addr::new(head[4], head[5], head[6], head[7]);
    let user = read_null_terminated(&mut stream).await?;
    // SOCKS4a: 0.0.0.x means a host name follows the user id.
    let host = if head[4..7] == [0, 0, 0] && head[7] != 0 {
        String::from_utf8(read_null_terminated(&mut stream).await?).context("host name is not UTF-8")?
    } else {
        ip.to_string()
    };
    let target = format!("{host}:{port}");
    let reply = |code: u8| [0, code, 0, 0, 0, 0, 0, 0];
    if !shared.accepts(&user, None) {
        shared.log.push(format!("refused {target}: bad user id"));
        stream.write_all(&reply(0x5b)).await?;
        return Ok(());
    }
    match shared.connect_out(&host, port).await {
        Ok(upstream) => {
            shared.log.push(target);
            stream.write_all(&reply(0x5a)).await?;
            shared.tunnel(stream, upstream).await
        }
        Err(err) => {
            shared.log.push(format!("refused {target}: {err}"));
            stream.write_all(&reply(0x5b)).await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn faults_read_as_words_in_the_banner() {
        use super::ProxyFault;
        let said: Vec<String> = [
            ProxyFault::None,
            ProxyFault::Dead,
            ProxyFault::Slow { delay_ms: 300 },
            ProxyFault::Flapping { up_seconds: 20, down_seconds: 10 },
            ProxyFault::RefuseCredentials,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            said,
            ["works", "dead", "slow (300 ms per handshake)", "flapping (20 s up, 10 s down)", "refuses credentials"]
        );
    }

    use super::*;

    #[test]
    fn flapping_alternates_up_and_down() {
        let fault = ProxyFault::Flapping { up_seconds: 3, down_seconds: 2 };
        let down: Vec<bool> = (0..10).map(|s| fault.is_down(Duration::from_secs(s))).collect();
        assert_eq!(down, [false, false, false, true, true, false, false, false, true, true]);
        assert!(ProxyFault::Dead.is_down(Duration::ZERO));
        assert!(!ProxyFault::Slow { delay_ms: 5 }.is_down(Duration::from_secs(100)));
    }

    #[tokio::test]
    async fn the_host_map_wins_and_nothing_outside_loopback_is_reached() {
        let sim = SocketAddr::from(([127, 0, 0, 1], 4443));
        let hosts = HostMap::new([("api.binance.com", sim)]);
        assert_eq!(hosts.resolve("API.binance.com", 443).await.unwrap(), sim);
        assert_eq!(hosts.resolve("127.0.0.9", 80).await.unwrap(), SocketAddr::from(([127, 0, 0, 9], 80)));
        assert_eq!(hosts.resolve("[::1]", 80).await.unwrap().ip(), IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
        let err = hosts.resolve("203.0.113.5", 443).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn credentials_never_print_their_password() {
        let creds = ProxyCredentials::new("feed", "s3cret");
        assert!(!format!("{creds:?}").contains("s3cret"));
        assert_eq!(basic_credentials("Basic ZmVlZDpzM2NyZXQ="), Some((b"feed".to_vec(), b"s3cret".to_vec())));
        assert_eq!(basic_credentials("Bearer x"), None);
    }
}
