//! Optional active checks: every `interval_seconds`, a TCP connect to each
//! enabled proxy and, for `http` proxies when a `connect_target` is configured,
//! an HTTP `CONNECT` through it (with the proxy's credentials) that must answer
//! 2xx. Results feed the same health state as feedback: `unhealthy_threshold`
//! failures in a row take a proxy out, `healthy_threshold` passes bring it back.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::inventory::Proxy;
use crate::metrics as m;
use crate::selector::Selector;
use crate::settings::ActiveCheckSettings;

/// Checks run at once.
const CONCURRENCY: usize = 16;

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The proxy URL names no port and its scheme has no default.
    #[error("no port")]
    NoPort,
    /// Connect or CONNECT took longer than the timeout.
    #[error("timed out")]
    Timeout,
    /// The TCP connection failed.
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    /// The proxy answered CONNECT with something other than 2xx.
    #[error("CONNECT answered {0:?}")]
    Refused(String),
}

/// Checks one proxy once.
pub async fn check(proxy: &Proxy, connect_target: Option<&str>, timeout: Duration) -> Result<(), CheckError> {
    tokio::time::timeout(timeout, check_inner(proxy, connect_target)).await.map_err(|_| CheckError::Timeout)?
}

async fn check_inner(proxy: &Proxy, connect_target: Option<&str>) -> Result<(), CheckError> {
    let url = proxy.url().url();
    let host = url.host_str().ok_or(CheckError::NoPort)?.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_or_known_default().or(match url.scheme() {
        "socks4" | "socks5" => Some(1080),
        _ => None,
    });
    let port = port.ok_or(CheckError::NoPort)?;
    let mut stream = TcpStream::connect((host, port)).await?;
    let Some(target) = connect_target.filter(|_| url.scheme() == "http") else {
        return Ok(());
    };
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if !url.username().is_empty() {
        let user = percent_decode(url.username());
        let password = percent_decode(url.password().unwrap_or_default());
        head.push_str(&format!("Proxy-Authorization: Basic {}\r\n", base64(format!("{user}:{password}").as_bytes())));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut buffer = [0_u8; 256];
    let mut read = 0;
    while read < buffer.len() {
        let n = stream.read(&mut buffer[read..]).await?;
        if n == 0 {
            break;
        }
        read += n;
        if buffer[..read].contains(&b'\n') {
            break;
        }
    }
    let status_line = String::from_utf8_lossy(&buffer[..read]).lines().next().unwrap_or_default().to_owned();
    let ok = status_line.split_whitespace().nth(1).is_some_and(|code| code.starts_with('2'));
    if ok { Ok(()) } else { Err(CheckError::Refused(status_line.chars().take(64).collect())) }
}

/// Checks every enabled proxy every `interval_seconds` until `shutdown`.
pub async fn run(selector: Arc<Selector>, settings: ActiveCheckSettings, shutdown: CancellationToken) {
    let interval = Duration::from_secs(settings.interval_seconds);
    let timeout = Duration::from_secs(settings.timeout_seconds);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let round = check_round(&selector, settings.connect_target.as_deref(), timeout);
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = round => {}
        }
    }
}

/// Checks every enabled proxy of the current inventory once and records the results.
pub async fn check_round(selector: &Selector, connect_target: Option<&str>, timeout: Duration) {
    let inventory = selector.inventory();
    let proxies: Vec<Arc<Proxy>> = inventory.proxies().filter(|p| p.enabled()).cloned().collect();
    futures::stream::iter(proxies)
        .map(|proxy| async move {
            let result = check(&proxy, connect_target, timeout).await;
            (proxy, result)
        })
        .buffer_unordered(CONCURRENCY)
        .for_each(|(proxy, result)| {
            match &result {
                Ok(()) => metrics::counter!(m::ACTIVE_CHECKS, "result" => "pass").increment(1),
                Err(err) => {
                    metrics::counter!(m::ACTIVE_CHECKS, "result" => "fail").increment(1);
                    tracing::debug!(proxy_id = %proxy.id(), proxy_url = %proxy.redacted_url(), error = %err, "active check failed");
                }
            }
            selector.record_check(proxy.id(), result.is_ok());
            async {}
        })
        .await;
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_encoded_like_rfc_4648() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(percent_decode("p%40ss%3Aw"), "p@ss:w");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
