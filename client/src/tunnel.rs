//! Opening a TCP stream to a target through a proxy: HTTP CONNECT for `http`
//! proxies, SOCKS5 and SOCKS4 (tokio-socks) with their authentication, or
//! directly; then TLS to the target when the URL asks for it. Every failure is
//! classified into the contract's `error_kind`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use proxybus_shared::{ErrorKind, ProxyUrl};
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

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Opens a stream to `target` through `proxy` (or directly), within `timeout`,
/// with TLS to the target when it asks for it.
pub async fn open(proxy: Option<&ProxyUrl>, target: &Target, timeout: Duration) -> Result<BoxedStream, ConnectError> {
    open_with_roots(proxy, target, timeout, &[]).await
}

/// [`open`], trusting `extra_roots` for TLS to the target besides the public web roots.
pub async fn open_with_roots(
    proxy: Option<&ProxyUrl>,
    target: &Target,
    timeout: Duration,
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<BoxedStream, ConnectError> {
    let connect = async {
        let tcp: BoxedStream = match proxy {
            None => Box::new(tcp_connect(&target.host, target.port, "target").await?),
            Some(proxy) => match proxy.scheme() {
                "http" => Box::new(http_connect(proxy, target).await?),
                "socks5" => Box::new(socks5(proxy, target).await?),
                "socks4" => Box::new(socks4(proxy, target).await?),
                other => {
                    return Err(ConnectError::new(
                        ErrorKind::Other,
                        format!("proxy scheme {other:?} is not supported for tunnels (use http, socks4 or socks5)"),
                    ));
                }
            },
        };
        if target.tls { tls(tcp, &target.host, extra_roots).await } else { Ok(tcp) }
    };
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| ConnectError::new(ErrorKind::Timeout, format!("no connection within {timeout:?}")))?
}

async fn tcp_connect(host: &str, port: u16, what: &str) -> Result<TcpStream, ConnectError> {
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|err| ConnectError::from_io(&format!("connect to {what}"), &err))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn proxy_endpoint(proxy: &ProxyUrl) -> Result<(String, u16), ConnectError> {
    let url = proxy.url();
    let host = url.host_str().ok_or_else(|| ConnectError::new(ErrorKind::Other, "proxy URL has no host"))?;
    let port = url.port_or_known_default().unwrap_or(match url.scheme() {
        "socks4" | "socks5" => 1080,
        _ => 8080,
    });
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
}

/// Username and password of a proxy URL, percent-decoded.
fn proxy_credentials(proxy: &ProxyUrl) -> Option<(String, String)> {
    let url = proxy.url();
    if url.username().is_empty() {
        return None;
    }
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    Some((decode(url.username()), decode(url.password().unwrap_or_default())))
}

async fn http_connect(proxy: &ProxyUrl, target: &Target) -> Result<TcpStream, ConnectError> {
    let (host, port) = proxy_endpoint(proxy)?;
    let mut stream = tcp_connect(&host, port, "proxy").await?;
    let authority = target.authority();
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some((user, password)) = proxy_credentials(proxy) {
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
        0 => Err(ConnectError::new(ErrorKind::Other, "proxy answered CONNECT with something that is not HTTP")),
        status => Err(ConnectError {
            status_code: Some(status),
            ..ConnectError::new(
                if status == 502 || status == 503 || status == 504 { ErrorKind::Refused } else { ErrorKind::Other },
                format!("proxy answered CONNECT with {status}"),
            )
        }),
    }
}

fn classify_socks(err: &tokio_socks::Error) -> ErrorKind {
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

async fn socks5(proxy: &ProxyUrl, target: &Target) -> Result<tokio_socks::tcp::Socks5Stream<TcpStream>, ConnectError> {
    let (host, port) = proxy_endpoint(proxy)?;
    let tcp = tcp_connect(&host, port, "proxy").await?;
    let dest = (target.host.as_str(), target.port);
    let result = match proxy_credentials(proxy) {
        Some((user, password)) => {
            tokio_socks::tcp::Socks5Stream::connect_with_password_and_socket(tcp, dest, &user, &password).await
        }
        None => tokio_socks::tcp::Socks5Stream::connect_with_socket(tcp, dest).await,
    };
    result.map_err(|err| ConnectError::new(classify_socks(&err), format!("socks5: {err}")))
}

async fn socks4(proxy: &ProxyUrl, target: &Target) -> Result<tokio_socks::tcp::Socks4Stream<TcpStream>, ConnectError> {
    let (host, port) = proxy_endpoint(proxy)?;
    let tcp = tcp_connect(&host, port, "proxy").await?;
    let dest = (target.host.as_str(), target.port);
    let result = match proxy_credentials(proxy) {
        Some((user, _)) => tokio_socks::tcp::Socks4Stream::connect_with_userid_and_socket(tcp, dest, &user).await,
        None => tokio_socks::tcp::Socks4Stream::connect_with_socket(tcp, dest).await,
    };
    result.map_err(|err| ConnectError::new(classify_socks(&err), format!("socks4: {err}")))
}

async fn tls(
    stream: BoxedStream,
    host: &str,
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<BoxedStream, ConnectError> {
    proxybus_shared::http::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots.add_parsable_certificates(extra_roots.iter().cloned());
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| ConnectError::new(ErrorKind::Tls, format!("{host:?} is not a valid TLS server name")))?;
    let stream = connector
        .connect(name, stream)
        .await
        .map_err(|err| ConnectError::new(ErrorKind::Tls, format!("tls: {err}")))?;
    Ok(Box::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn credentials_are_percent_decoded() {
        let proxy = ProxyUrl::parse("socks5://us%40er:p%3Ass@h:1080").unwrap();
        assert_eq!(proxy_credentials(&proxy), Some(("us@er".into(), "p:ss".into())));
        assert_eq!(proxy_credentials(&ProxyUrl::parse("http://h:1").unwrap()), None);
    }
}
