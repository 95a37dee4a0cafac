//! Opening a TCP stream to a target through a proxy of any [`ProxyScheme`]:
//! HTTP `CONNECT` for `http` proxies and, inside TLS to the proxy, for `https`
//! ones; SOCKS5/5h and SOCKS4/4a (tokio-socks) with their authentication; or
//! directly. Then TLS to the target when the URL asks for it. Every failure is
//! classified into the contract's `error_kind`; no message carries a password.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use proxybus_shared::{ErrorKind, ProxyScheme, ProxyUrl};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A byte stream to the target, whatever carries it.
pub trait TargetStream: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> TargetStream for T {}

/// A boxed [`TargetStream`].
pub type BoxedStream = Box<dyn TargetStream>;

/// A connection through a proxy failed; `kind` is what a feedback event reports.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ConnectError {
    /// The contract's classification.
    pub kind: ErrorKind,
    /// What happened; never contains proxy credentials.
    pub message: String,
    /// HTTP status seen, when the failure was one.
    pub status_code: Option<u16>,
    /// `Retry-After` seconds, when the target sent it.
    pub retry_after_seconds: Option<u64>,
}

impl ConnectError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), status_code: None, retry_after_seconds: None }
    }

    pub(crate) fn from_io(context: &str, err: &std::io::Error) -> Self {
        Self::new(classify_io(err), format!("{context}: {err}"))
    }
}

/// The error kind of an I/O error.
pub fn classify_io(err: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as Io;
    match err.kind() {
        Io::ConnectionRefused => ErrorKind::Refused,
        Io::TimedOut => ErrorKind::Timeout,
        Io::ConnectionReset | Io::ConnectionAborted | Io::UnexpectedEof | Io::BrokenPipe => ErrorKind::Refused,
        _ => {
            let text = err.to_string().to_ascii_lowercase();
            if text.contains("failed to lookup address") || text.contains("name or service not known") {
                ErrorKind::Dns
            } else if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
                ErrorKind::Tls
            } else {
                ErrorKind::Other
            }
        }
    }
}

/// Where to connect: host and port of the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or IP.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Whether to speak TLS to the target once the tunnel is up.
    pub tls: bool,
}

impl Target {
    /// The target of a `ws://`, `wss://`, `http://` or `https://` URL.
    pub fn from_url(url: &url::Url) -> Result<Self, ConnectError> {
        let tls = matches!(url.scheme(), "wss" | "https");
        if !matches!(url.scheme(), "ws" | "wss" | "http" | "https") {
            return Err(ConnectError::new(ErrorKind::Other, format!("unsupported target scheme {:?}", url.scheme())));
        }
        let host = url.host_str().ok_or_else(|| ConnectError::new(ErrorKind::Other, "target URL has no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = url.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self { host, port, tls })
    }

    /// `host:port`, an IPv6 address bracketed (`[2001:db8::1]:443`): the authority of a
    /// `CONNECT` request (RFC 9110, section 9.3.6; `IP-literal` of RFC 3986, section 3.2.2).
    pub fn authority(&self) -> String {
        format!("{}:{}", self.bracketed_host(), self.port)
    }

    /// The `Host` header of a request to the target: the host, an IPv6 address
    /// bracketed, with `:port` unless the port is the scheme's default (443 with TLS,
    /// 80 without) — RFC 9110, section 7.2.
    pub fn host_header(&self) -> String {
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port { self.bracketed_host() } else { self.authority() }
    }

    fn bracketed_host(&self) -> String {
        if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() }
    }
}

/// The TLS trust of tunnels: webpki's roots for targets; the same plus the
/// client's own proxy CA (`ClientConfig::proxy_ca`) for `https` proxies.
#[derive(Clone)]
pub struct TunnelTls {
    target: Arc<rustls::ClientConfig>,
    proxy: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TunnelTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelTls").finish_non_exhaustive()
    }
}

impl TunnelTls {
    /// Trust for targets (webpki roots and `extra_roots`) and for `https` proxies (webpki roots,
    /// `proxy_ca` and `extra_roots`). A proxy's private CA is never trusted for the targets: a
    /// proxy operator holding it could otherwise impersonate an exchange.
    ///
    /// # Errors
    /// A certificate that rustls cannot use as a root.
    pub fn new(
        extra_roots: &[rustls::pki_types::CertificateDer<'static>],
        proxy_ca: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<Self, ConnectError> {
        proxybus_shared::http::install_crypto_provider();
        let config = |extra: &[rustls::pki_types::CertificateDer<'static>]| {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            for cert in extra {
                roots
                    .add(cert.clone())
                    .map_err(|err| ConnectError::new(ErrorKind::Tls, format!("trusted root certificate: {err}")))?;
            }
            Ok::<_, ConnectError>(Arc::new(
                rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth(),
            ))
        };
        let proxy_roots: Vec<_> = proxy_ca.iter().chain(extra_roots).cloned().collect();
        Ok(Self { target: config(extra_roots)?, proxy: config(&proxy_roots)? })
    }
}

/// Opens a stream to `target` through `proxy` (or directly), within `timeout`,
/// with TLS to the target when it asks for it.
///
/// Per scheme: `http` sends `CONNECT host:port`; `https` does the same inside
/// TLS to the proxy (trusted through `tls`); `socks5h` and `socks4a` send the
/// target's host name for the proxy to resolve; `socks5` and `socks4` resolve it
/// here and send an address (SOCKS4: IPv4 only), trying each address in turn.
/// Credentials are the URL's, decoded once ([`ProxyUrl::credentials`]); SOCKS4
/// sends the user name as its user id.
pub async fn open(
    proxy: Option<&ProxyUrl>,
    target: &Target,
    tls: &TunnelTls,
    timeout: Duration,
) -> Result<BoxedStream, ConnectError> {
    let connect = async {
        let tcp: BoxedStream = match proxy {
            None => Box::new(tcp_connect(&target.host, target.port, "target").await?),
            Some(proxy) => match proxy.scheme() {
                ProxyScheme::Http => {
                    let tcp = tcp_connect(&proxy.host().to_string(), proxy.port(), "proxy").await?;
                    Box::new(http_connect(tcp, proxy, target).await?)
                }
                ProxyScheme::Https => {
                    let tcp = tcp_connect(&proxy.host().to_string(), proxy.port(), "proxy").await?;
                    let tls_to_proxy = tls_handshake(Box::new(tcp), &proxy.host().to_string(), &tls.proxy).await?;
                    Box::new(http_connect(tls_to_proxy, proxy, target).await?)
                }
                ProxyScheme::Socks5h => Box::new(socks5(proxy, (target.host.as_str(), target.port)).await?),
                ProxyScheme::Socks4a => Box::new(socks4(proxy, (target.host.as_str(), target.port)).await?),
                ProxyScheme::Socks5 | ProxyScheme::Socks4 => socks_resolving_locally(proxy, target).await?,
            },
        };
        if target.tls { tls_handshake(tcp, &target.host, &tls.target).await } else { Ok(tcp) }
    };
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| ConnectError::new(ErrorKind::Timeout, format!("no connection within {timeout:?}")))?
}

/// `socks5` / `socks4`: the target's addresses from the local resolver, each
/// tried through the proxy until one connects (SOCKS4 carries IPv4 only).
async fn socks_resolving_locally(proxy: &ProxyUrl, target: &Target) -> Result<BoxedStream, ConnectError> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|err| ConnectError::new(ErrorKind::Dns, format!("resolve {}: {err}", target.host)))?
        .filter(|addr| proxy.scheme() == ProxyScheme::Socks5 || addr.is_ipv4())
        .collect();
    let mut last =
        ConnectError::new(ErrorKind::Dns, format!("{} has no address {} can reach", target.host, proxy.scheme()));
    for address in addresses {
        let attempt: Result<BoxedStream, ConnectError> = match proxy.scheme() {
            ProxyScheme::Socks5 => socks5(proxy, address).await.map(|s| Box::new(s) as BoxedStream),
            _ => socks4(proxy, address).await.map(|s| Box::new(s) as BoxedStream),
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(err) if err.kind == ErrorKind::ProxyAuth => return Err(err),
            Err(err) => last = err,
        }
    }
    Err(last)
}

async fn tcp_connect(host: &str, port: u16, what: &str) -> Result<TcpStream, ConnectError> {
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|err| ConnectError::from_io(&format!("connect to {what}"), &err))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// HTTP `CONNECT` over `stream` (TCP, or TLS to an `https` proxy), with
/// `Proxy-Authorization: Basic` when the URL has credentials.
async fn http_connect<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    proxy: &ProxyUrl,
    target: &Target,
) -> Result<S, ConnectError> {
    let authority = target.authority();
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some((user, password)) = proxy.credentials() {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|err| ConnectError::from_io("send CONNECT", &err))?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).await.map_err(|err| ConnectError::from_io("read CONNECT reply", &err))?;
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).await.map_err(|err| ConnectError::from_io("read CONNECT reply", &err))?;
        if n == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    match status {
        200..=299 => {
            if !reader.buffer().is_empty() {
                return Err(ConnectError::new(ErrorKind::Other, "proxy sent data before the tunnel was up"));
            }
            Ok(reader.into_inner())
        }
        407 => Err(ConnectError {
            status_code: Some(407),
            ..ConnectError::new(ErrorKind::ProxyAuth, "proxy refused the credentials (407)")
        }),
        0 if status_line.is_empty() => {
            Err(ConnectError::new(ErrorKind::Refused, "proxy closed the connection before answering CONNECT"))
        }
        0 => Err(ConnectError::new(ErrorKind::Other, "proxy answered CONNECT with something that is not HTTP")),
        // The proxy's own refusal, whatever the code: a 403, 429 or 451 here is the proxy's
        // policy, not the exchange's verdict, so no `status_code` is reported for the
        // exchange to be judged by (docs/health.md: a failed tunnel is a proxy fault).
        status => Err(ConnectError::new(ErrorKind::Refused, format!("proxy answered CONNECT with {status}"))),
    }
}

/// The error kind of a tokio-socks error: a refused login is `proxy_auth`.
pub(crate) fn classify_socks(err: &tokio_socks::Error) -> ErrorKind {
    use tokio_socks::Error as S;
    match err {
        S::Io(io) => classify_io(io),
        S::PasswordAuthFailure(_) | S::NoAcceptableAuthMethods | S::AuthorizationRequired => ErrorKind::ProxyAuth,
        S::ConnectionRefused | S::HostUnreachable | S::NetworkUnreachable | S::GeneralSocksServerFailure => {
            ErrorKind::Refused
        }
        S::TtlExpired => ErrorKind::Timeout,
        _ => ErrorKind::Other,
    }
}

async fn socks5<'t>(
    proxy: &ProxyUrl,
    dest: impl tokio_socks::IntoTargetAddr<'t>,
) -> Result<tokio_socks::tcp::Socks5Stream<TcpStream>, ConnectError> {
    let tcp = tcp_connect(&proxy.host().to_string(), proxy.port(), "proxy").await?;
    let result = match proxy.credentials() {
        Some((user, password)) => {
            tokio_socks::tcp::Socks5Stream::connect_with_password_and_socket(tcp, dest, user, password).await
        }
        None => tokio_socks::tcp::Socks5Stream::connect_with_socket(tcp, dest).await,
    };
    result.map_err(|err| ConnectError::new(classify_socks(&err), proxy.scrub(&format!("socks5: {err}"))))
}

async fn socks4<'t>(
    proxy: &ProxyUrl,
    dest: impl tokio_socks::IntoTargetAddr<'t>,
) -> Result<tokio_socks::tcp::Socks4Stream<TcpStream>, ConnectError> {
    let tcp = tcp_connect(&proxy.host().to_string(), proxy.port(), "proxy").await?;
    let result = match proxy.credentials() {
        Some((user, _)) => tokio_socks::tcp::Socks4Stream::connect_with_userid_and_socket(tcp, dest, user).await,
        None => tokio_socks::tcp::Socks4Stream::connect_with_socket(tcp, dest).await,
    };
    result.map_err(|err| ConnectError::new(classify_socks(&err), proxy.scrub(&format!("socks4: {err}"))))
}

async fn tls_handshake(
    stream: BoxedStream,
    host: &str,
    config: &Arc<rustls::ClientConfig>,
) -> Result<BoxedStream, ConnectError> {
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| ConnectError::new(ErrorKind::Tls, format!("{host:?} is not a valid TLS server name")))?;
    let stream = connector
        .connect(name, stream)
        .await
        .map_err(|err| ConnectError::new(ErrorKind::Tls, format!("tls to {host}: {err}")))?;
    Ok(Box::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authority_always_has_the_port_and_the_host_header_only_when_not_the_default() {
        let target = |host: &str, port, tls| Target { host: host.to_owned(), port, tls };
        assert_eq!(target("api.binance.com", 443, true).authority(), "api.binance.com:443");
        assert_eq!(target("api.binance.com", 443, true).host_header(), "api.binance.com");
        assert_eq!(target("api.binance.com", 8443, true).host_header(), "api.binance.com:8443");
        assert_eq!(target("example.com", 80, false).host_header(), "example.com");
        assert_eq!(target("example.com", 443, false).host_header(), "example.com:443", "443 is not http's default");
        assert_eq!(target("2001:db8::1", 443, true).authority(), "[2001:db8::1]:443");
        assert_eq!(target("2001:db8::1", 443, true).host_header(), "[2001:db8::1]");
        assert_eq!(target("2001:db8::1", 9443, true).host_header(), "[2001:db8::1]:9443");
        // From a URL: brackets are taken off the host and put back where they belong.
        let from_url = Target::from_url(&url::Url::parse("wss://[2001:db8::1]:9443/ws").unwrap()).unwrap();
        assert_eq!((from_url.host.as_str(), from_url.host_header()), ("2001:db8::1", "[2001:db8::1]:9443".to_owned()));
    }

    /// A proxy on 127.0.0.1 that reads a CONNECT head and answers `answer` (nothing:
    /// closes the connection), then `open` through it.
    async fn connect_answered(answer: &str) -> ConnectError {
        let answer = answer.to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).await.unwrap_or(0) > 0 && !line.ends_with("\r\n\r\n") {}
            let _ = reader.get_mut().write_all(answer.as_bytes()).await;
        });
        let proxy = ProxyUrl::parse(&format!("http://feed:s3cret@{addr}")).unwrap();
        let target = Target { host: "api.binance.com".into(), port: 443, tls: false };
        let tls = TunnelTls::new(&[], &[]).unwrap();
        open(Some(&proxy), &target, &tls, Duration::from_secs(5)).await.unwrap_err()
    }

    #[tokio::test]
    async fn a_proxys_refusal_of_connect_is_a_proxy_fault_whatever_its_code() {
        // Squid denies CONNECT to ports outside `SSL_ports` with 403; a proxy's own 451 or 429
        // must not be taken for the exchange's verdict on the proxy.
        for status in ["403 Forbidden", "451 Unavailable For Legal Reasons", "429 Too Many Requests", "502 Bad Gateway"]
        {
            let err = connect_answered(&format!("HTTP/1.1 {status}\r\n\r\n")).await;
            assert_eq!((err.kind, err.status_code), (ErrorKind::Refused, None), "{status}: {err}");
            assert!(err.message.contains(&status[..3]) && !err.message.contains("s3cret"), "{err}");
        }
        let err = connect_answered("HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").await;
        assert_eq!((err.kind, err.status_code), (ErrorKind::ProxyAuth, Some(407)));
        let err = connect_answered("").await;
        assert_eq!(err.kind, ErrorKind::Refused, "closed before answering: {err}");
        let err = connect_answered("SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
        assert_eq!(err.kind, ErrorKind::Other, "not HTTP: {err}");
    }

    #[test]
    fn io_errors_are_classified() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify_io(&refused), ErrorKind::Refused);
        assert_eq!(classify_io(&std::io::Error::from(std::io::ErrorKind::TimedOut)), ErrorKind::Timeout);
        let dns = std::io::Error::other("failed to lookup address information: Name or service not known");
        assert_eq!(classify_io(&dns), ErrorKind::Dns);
    }

    #[test]
    fn targets_come_from_ws_and_http_urls() {
        let t = Target::from_url(&"wss://stream.binance.com:9443/ws".parse().unwrap()).unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls), ("stream.binance.com", 9443, true));
        let t = Target::from_url(&"ws://127.0.0.1/x".parse().unwrap()).unwrap();
        assert_eq!((t.port, t.tls), (80, false));
        assert!(Target::from_url(&"ftp://h/x".parse().unwrap()).is_err());
    }

    #[test]
    fn only_socks5_and_socks4_resolve_locally() {
        let local: Vec<ProxyScheme> = ProxyScheme::ALL.into_iter().filter(|s| !s.proxy_resolves_names()).collect();
        assert_eq!(local, [ProxyScheme::Socks4, ProxyScheme::Socks5]);
    }
}
