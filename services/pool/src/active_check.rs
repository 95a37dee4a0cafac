//! Optional active checks: every `interval_seconds`, a TCP connect to each
//! enabled proxy and, for `http` proxies when a `connect_target` is configured,
//! an HTTP `CONNECT` through it (with the proxy's credentials) that must answer
//! 2xx. Results feed the same health state as feedback: `unhealthy_threshold`
//! failures in a row take a proxy out, `healthy_threshold` passes bring it back.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use proxybus_shared::ProxyScheme;
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
    let url = proxy.url();
    let mut stream = TcpStream::connect((url.host().to_string(), url.port())).await?;
    let Some(target) = connect_target.filter(|_| url.scheme() == ProxyScheme::Http) else {
        return Ok(());
    };
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, password)) = url.credentials() {
        head.push_str(&format!(
            "Proxy-Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        ));
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
