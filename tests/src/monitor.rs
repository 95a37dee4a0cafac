//! Readiness probes: the client port's `INFO` greeting and the HTTP monitoring endpoint
//! (`/healthz`, `/jsz`), read with a plain HTTP/1.0 GET so no HTTP client is needed.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long one probe may take before it counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the client port accepts a connection and greets it with `INFO`.
pub(crate) async fn client_port_ready(port: u16) -> bool {
    timeout(PROBE_TIMEOUT, read_greeting(port))
        .await
        .is_ok_and(|greeting| greeting.is_ok_and(|line| line.starts_with("INFO ")))
}

async fn read_greeting(port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut greeting = Vec::new();
    let mut buffer = [0_u8; 1024];
    while !greeting.ends_with(b"\r\n") {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        greeting.extend_from_slice(&buffer[..read]);
    }
    Ok(String::from_utf8_lossy(&greeting).into_owned())
}

/// Why `/healthz` is not yet OK, or `Ok` once it answers 200.
pub(crate) async fn healthz(port: u16) -> Result<()> {
    let (status, body) = get(port, "/healthz").await?;
    if status != 200 {
        bail!("/healthz answered {status}: {}", body.trim());
    }
    Ok(())
}

/// The JSON document `/jsz` serves (JetStream state, including `meta_cluster`).
pub(crate) async fn jsz(port: u16) -> Result<serde_json::Value> {
    let (status, body) = get(port, "/jsz").await?;
    if status != 200 {
        bail!("/jsz answered {status}: {}", body.trim());
    }
    serde_json::from_str(&body).context("parsing /jsz")
}

/// Any JSON document of the monitoring endpoint (`/varz`, `/gatewayz`, `/leafz` …).
pub(crate) async fn json(port: u16, path: &str) -> Result<serde_json::Value> {
    let (status, body) = get(port, path).await?;
    if status != 200 {
        bail!("{path} answered {status}: {}", body.trim());
    }
    serde_json::from_str(&body).with_context(|| format!("parsing {path}"))
}

/// `GET path` on the monitoring port; the status code and body.
async fn get(port: u16, path: &str) -> Result<(u16, String)> {
    timeout(PROBE_TIMEOUT, get_unbounded(port, path)).await.with_context(|| format!("GET {path} timed out"))?
}

async fn get_unbounded(port: u16, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("connecting to monitoring port {port}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    // HTTP/1.0 without keep-alive: the server closes the connection after the response.
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) =
        response.split_once("\r\n\r\n").context("HTTP response without a blank line after the headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("HTTP response without a status code: {head}"))?;
    Ok((status, body.to_owned()))
}
