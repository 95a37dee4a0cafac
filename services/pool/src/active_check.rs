//! Active checks, also called probes: every `interval_seconds`, a connection to
//! each enabled proxy and, when a `connect_target` is configured, a tunnel through
//! it to that target in the proxy's own protocol, with the proxy's credentials —
//! HTTP `CONNECT` (inside TLS to the proxy for `https`), SOCKS5/5h or SOCKS4/4a —
//! opened by the client library's [`tunnel::open`], as a feed opens it; then,
//! optionally, `GET {ping_path}` over TLS to that target through the tunnel
//! (`/api/v3/ping` for Binance), which must answer 2xx.
//!
//! Results feed this service's own health state (`unhealthy_threshold` failures in
//! a row take a proxy out, `healthy_threshold` passes bring it back) and, when the
//! pool is on NATS and `publish` is on, go into stream `PROXY_FEEDBACK` as feedback
//! with `probe: true` for `exchange`, so the aggregator judges them by the one
//! health model: a proxy that carries no traffic still has health, and an ejected
//! proxy whose probes pass comes back through probation (docs/health.md, "Probes").
//!
//! Probes of one proxy for one exchange never run more often than
//! `max_per_minute` ([`ProbeBudget`]), whatever the interval says.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use proxybus_client::tunnel::{self, BoxedStream, ConnectError, Target, TunnelTls};
use proxybus_shared::health::{self, Attribution};
use proxybus_shared::{ConnectionType, ErrorKind, ExchangeId, FeedbackPhase, ProxyFeedback, ProxyId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
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
    /// Connect, tunnel or ping took longer than the timeout.
    #[error("timed out")]
    Timeout,
    /// The TCP connection to the proxy failed (a check without `connect_target`).
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    /// Sending the ping or reading its answer through the tunnel failed.
    #[error("ping failed: {0}")]
    Ping(std::io::Error),
    /// The tunnel through the proxy to the target, or TLS to the target, failed:
    /// refused credentials (`proxy_auth`: HTTP 407, a SOCKS login refused), a refused
    /// `CONNECT`, a SOCKS error, TLS. Its message never holds the proxy's password.
    #[error("tunnel: {0}")]
    Tunnel(#[from] ConnectError),
    /// The target URL made of `connect_target` is not one (`host:port` expected).
    #[error("connect_target {0:?} is not host:port")]
    BadTarget(String),
    /// The target answered the ping with a status other than 2xx.
    #[error("ping answered {status}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// Its `Retry-After` seconds, if any.
        retry_after_seconds: Option<u64>,
    },
}

impl CheckError {
    /// The contract's error kind and HTTP status of this failure, as a feedback event reports them.
    pub fn kind(&self) -> (ErrorKind, Option<u16>) {
        match self {
            CheckError::Timeout => (ErrorKind::Timeout, None),
            CheckError::Io(err) | CheckError::Ping(err) => (tunnel::classify_io(err), None),
            CheckError::Tunnel(err) => (err.kind, err.status_code),
            CheckError::BadTarget(_) => (ErrorKind::Other, None),
            CheckError::Status { status, .. } => {
                (ErrorKind::from_status(*status).unwrap_or(ErrorKind::Other), Some(*status))
            }
        }
    }

    /// The `Retry-After` seconds the target sent with a refusal, if any.
    pub fn retry_after_seconds(&self) -> Option<u64> {
        match self {
            CheckError::Status { retry_after_seconds, .. } => *retry_after_seconds,
            CheckError::Tunnel(err) => err.retry_after_seconds,
            _ => None,
        }
    }
}

/// Where a probe goes through the proxy, and how it asks.
#[derive(Debug, Clone, Default)]
pub struct ProbeTarget {
    /// `host:port` to open a tunnel to through every proxy; none: a TCP connect to the proxy only.
    pub connect_target: Option<String>,
    /// Path to `GET` over TLS through the tunnel; none: no ping.
    pub ping_path: Option<String>,
    /// Trust for TLS to the target and to `https` proxies ([`ProbeTarget::from_settings`]);
    /// none: the public web roots only.
    pub tls: Option<TunnelTls>,
}

impl ProbeTarget {
    /// The target these settings describe: TLS to the target trusts the public web roots
    /// and `ca_file`, TLS to `https` proxies those and `proxy_ca_file`. Errors name an
    /// unreadable CA file, a certificate rustls cannot use as a root, or a `connect_target`
    /// that is not `host:port`.
    pub fn from_settings(settings: &ActiveCheckSettings) -> Result<Self, String> {
        let read = |file: Option<&std::path::Path>| match file {
            Some(path) => proxybus_client::read_pem_certificates(path),
            None => Ok(Vec::new()),
        };
        let (extra_roots, proxy_ca) = (read(settings.ca_file.as_deref())?, read(settings.proxy_ca_file.as_deref())?);
        let tls = TunnelTls::new(&extra_roots, &proxy_ca).map_err(|err| err.message)?;
        if let Some(connect_target) = &settings.connect_target {
            target_of(connect_target, false).map_err(|err| err.to_string())?;
        }
        Ok(Self {
            connect_target: settings.connect_target.clone(),
            ping_path: settings.ping_path.clone(),
            tls: Some(tls),
        })
    }

    fn tls(&self) -> &TunnelTls {
        static PUBLIC_ROOTS: OnceLock<TunnelTls> = OnceLock::new();
        self.tls.as_ref().unwrap_or_else(|| {
            PUBLIC_ROOTS.get_or_init(|| TunnelTls::new(&[], &[]).expect("the public web roots are valid roots"))
        })
    }
}

/// Checks one proxy once (TCP connect, or tunnel and ping), within `timeout`.
pub async fn check(proxy: &Proxy, target: &ProbeTarget, timeout: Duration) -> Result<(), CheckError> {
    tokio::time::timeout(timeout, check_inner(proxy, target, timeout)).await.map_err(|_| CheckError::Timeout)?
}

async fn check_inner(proxy: &Proxy, target: &ProbeTarget, timeout: Duration) -> Result<(), CheckError> {
    let url = proxy.url();
    let Some(connect_target) = target.connect_target.as_deref() else {
        TcpStream::connect((url.host().to_string(), url.port())).await?;
        return Ok(());
    };
    let to = target_of(connect_target, target.ping_path.is_some())?;
    let stream = tunnel::open(Some(url), &to, target.tls(), timeout).await?;
    match &target.ping_path {
        Some(path) => ping(stream, &to, path).await,
        None => Ok(()),
    }
}

/// The tunnel's target: `connect_target` (`host:port`, `[v6]:port`), with TLS when pinged.
fn target_of(connect_target: &str, tls: bool) -> Result<Target, CheckError> {
    let bad = || CheckError::BadTarget(connect_target.to_owned());
    let port = connect_target.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).ok_or_else(bad)?;
    let url = url::Url::parse(&format!("https://{connect_target}/")).map_err(|_| bad())?;
    let mut to = Target::from_url(&url).map_err(|_| bad())?;
    (to.port, to.tls) = (port, tls);
    Ok(to)
}

/// `GET path` to `to` over the tunnel's TLS stream: 2xx passes. `Host` is the target's
/// (`Target::host_header`: bracketed when IPv6, with the port when not 443).
async fn ping(mut stream: BoxedStream, to: &Target, path: &str) -> Result<(), CheckError> {
    let host = to.host_header();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: proxybus-probe\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(CheckError::Ping)?;
    let head = read_head(&mut stream).await.map_err(CheckError::Ping)?;
    let mut lines = head.lines();
    let status: u16 = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    if (200..300).contains(&status) {
        return Ok(());
    }
    let retry_after_seconds = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, value)| value.trim().parse().ok());
    Err(CheckError::Status { status, retry_after_seconds })
}

/// Reads an HTTP answer's head (up to 4 KiB or the blank line).
async fn read_head(stream: &mut BoxedStream) -> std::io::Result<String> {
    let mut buffer = vec![0_u8; 4096];
    let mut read = 0;
    while read < buffer.len() {
        let n = stream.read(&mut buffer[read..]).await?;
        if n == 0 {
            break;
        }
        read += n;
        if buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buffer[..read]).into_owned())
}

/// At most `max_per_minute` probes per proxy and exchange: a probe is allowed when
/// `60 s / max_per_minute` have passed since the last allowed one of that pair.
#[derive(Debug)]
pub struct ProbeBudget {
    spacing: Duration,
    last: Mutex<HashMap<(ProxyId, ExchangeId), Instant>>,
}

impl ProbeBudget {
    /// A budget of `max_per_minute` probes (at least 1) per proxy and exchange.
    pub fn per_minute(max_per_minute: u32) -> Self {
        Self { spacing: Duration::from_secs(60) / max_per_minute.max(1), last: Mutex::new(HashMap::new()) }
    }

    /// Whether a probe of `proxy` for `exchange` may run at `now`; if so, it is counted.
    pub fn try_take(&self, proxy: &ProxyId, exchange: &ExchangeId, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (*proxy, exchange.clone());
        match last.get(&key) {
            Some(at) if now.saturating_duration_since(*at) < self.spacing => false,
            _ => {
                last.insert(key, now);
                true
            }
        }
    }
}

/// Where probe results go besides this service's own health.
#[derive(Debug, Clone)]
pub struct ProbePublisher {
    jetstream: async_nats::jetstream::Context,
    client_id: String,
}

impl ProbePublisher {
    /// Publishes into `PROXY_FEEDBACK` through `client`, as `proxybus-pool-probe-{inventory_id}`.
    pub fn new(client: async_nats::Client, inventory_id: &str) -> Self {
        Self { jetstream: async_nats::jetstream::new(client), client_id: format!("proxybus-pool-probe-{inventory_id}") }
    }
}

/// The feedback event of one probe of `proxy` for `exchange` (`probe: true`; `request`
/// phase, over `http`): a success with its latency, or the failure's kind and status.
pub fn probe_feedback(
    proxy: &Proxy,
    exchange: &ExchangeId,
    result: &Result<(), CheckError>,
    latency: Duration,
    client_id: &str,
) -> ProxyFeedback {
    let (error_kind, status_code, retry_after_seconds, error_details) = match result {
        Ok(()) => (None, None, None, None),
        Err(err) => {
            let (kind, status) = err.kind();
            let details = proxybus_shared::redact_text(&format!("probe: {err}"));
            (Some(kind), status, err.retry_after_seconds(), Some(details))
        }
    };
    ProxyFeedback {
        schema_version: proxybus_shared::SCHEMA_VERSION,
        event_id: uuid::Uuid::new_v4(),
        proxy_id: *proxy.id(),
        proxy_url: proxy.redacted_url().to_owned(),
        exchange_id: exchange.clone(),
        connection_type: ConnectionType::Http,
        region: Some(proxy.region().clone()),
        phase: if result.is_ok() { FeedbackPhase::Request } else { FeedbackPhase::Failed },
        success: result.is_ok(),
        latency_ms: result.is_ok().then(|| u64::try_from(latency.as_millis()).unwrap_or(u64::MAX)),
        error_kind,
        status_code,
        retry_after_seconds,
        error_details,
        ws_close_code: None,
        usage_headers: Default::default(),
        connect_count: None,
        timestamp: chrono::Utc::now(),
        client_id: client_id.to_owned(),
        probe: true,
    }
}

/// Checks every enabled proxy every `interval_seconds` until `shutdown`, within the
/// budget, publishing each result when `publisher` is given.
pub async fn run(
    selector: Arc<Selector>,
    settings: ActiveCheckSettings,
    publisher: Option<ProbePublisher>,
    shutdown: CancellationToken,
) {
    let interval = Duration::from_secs(settings.interval_seconds);
    let timeout = Duration::from_secs(settings.timeout_seconds);
    let target = match ProbeTarget::from_settings(&settings) {
        Ok(target) => target,
        Err(err) => {
            tracing::error!(error = %err, "active checks off: cannot build their target or TLS trust");
            return;
        }
    };
    let budget = ProbeBudget::per_minute(settings.max_per_minute);
    let publisher = publisher.filter(|_| settings.publish);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The tick's scheduled instant, not the clock: with `interval_seconds` equal to the
        // budget's spacing (30 s and 2 a minute), a round a few µs early would be skipped.
        let tick = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            tick = ticker.tick() => tick,
        };
        let round = probe_round(&selector, &target, &settings.exchange, &budget, publisher.as_ref(), timeout, tick);
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = round => {}
        }
    }
}

/// Checks every enabled proxy of the current inventory once, `CONNECT`ing to
/// `connect_target`, and records the results here (no budget, nothing published).
pub async fn check_round(selector: &Selector, connect_target: Option<&str>, timeout: Duration) {
    let target = ProbeTarget { connect_target: connect_target.map(str::to_owned), ..ProbeTarget::default() };
    let unlimited = ProbeBudget { spacing: Duration::ZERO, last: Mutex::new(HashMap::new()) };
    let exchange: ExchangeId = crate::settings::DEFAULT_PROBE_EXCHANGE.parse().expect("a valid exchange id");
    probe_round(selector, &target, &exchange, &unlimited, None, timeout, Instant::now()).await;
}

/// Whether a passing check went through the proxy's own protocol (a tunnel to
/// `target.connect_target`, whatever the proxy's scheme), not just a TCP connect:
/// only such a pass is published as the probe's success. A failure is published
/// whatever the check (a proxy that refuses TCP is down).
pub fn speaks_through(target: &ProbeTarget) -> bool {
    target.connect_target.is_some()
}

/// One round at `now` (for the budget): every enabled proxy the budget allows, checked,
/// recorded, and published (failures, and passes when [`speaks_through`] holds).
async fn probe_round(
    selector: &Selector,
    target: &ProbeTarget,
    exchange: &ExchangeId,
    budget: &ProbeBudget,
    publisher: Option<&ProbePublisher>,
    timeout: Duration,
    now: Instant,
) {
    let inventory = selector.inventory();
    // A proxy the exchange told to wait (a cool-down after 429, a ban) is not probed for it:
    // asking again would be what turns a 429 into a 418 ban.
    let proxies: Vec<Arc<Proxy>> = inventory
        .proxies()
        .filter(|p| p.enabled() && !selector.barred_for(p.id(), exchange) && budget.try_take(p.id(), exchange, now))
        .cloned()
        .collect();
    let results: Vec<(Arc<Proxy>, Result<(), CheckError>, Duration)> = futures::stream::iter(proxies)
        .map(|proxy| async move {
            let started = Instant::now();
            let result = check(&proxy, target, timeout).await;
            (proxy, result, started.elapsed())
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for (proxy, result, latency) in results {
        match &result {
            Ok(()) => metrics::counter!(m::ACTIVE_CHECKS, "result" => "pass").increment(1),
            Err(err) => {
                metrics::counter!(m::ACTIVE_CHECKS, "result" => "fail").increment(1);
                tracing::debug!(proxy_id = %proxy.id(), proxy_url = %proxy.redacted_url(), error = %err, "active check failed");
            }
        }
        // The local check says whether the proxy is up: an exchange's verdict on the ping (a
        // 451, a 429) or its own trouble came through a working tunnel, so only a proxy fault
        // counts as a failed check; the verdict itself is the aggregator's to judge.
        let proxy_fault = result.as_ref().err().is_some_and(|err| {
            let (kind, status) = err.kind();
            health::attribute_failure(Some(kind), status, None) == Attribution::ProxyFault
        });
        selector.record_check(proxy.id(), !proxy_fault);
        if result.is_ok() && !speaks_through(target) {
            // Without a target to tunnel to, a pass is a TCP accept, which says nothing of
            // the proxy's credentials or protocol: a SOCKS proxy that refuses every login
            // passes it. Published as a success, it would readmit that proxy after the
            // feeds' `proxy_auth` failures ejected it.
            continue;
        }
        if let Some(publisher) = publisher {
            let event = probe_feedback(&proxy, exchange, &result, latency, &publisher.client_id);
            if let Err(err) = proxybus_shared::feedback::publish_feedback(&publisher.jetstream, &event).await {
                tracing::warn!(proxy_id = %proxy.id(), error = %err, "probe result not stored");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn probes_never_exceed_their_rate_per_proxy_and_exchange() {
        let budget = ProbeBudget::per_minute(2);
        let (a, b) = (proxybus_shared::proxy_id("http://10.0.0.1:1"), proxybus_shared::proxy_id("http://10.0.0.2:1"));
        let (binance, coinbase): (ExchangeId, ExchangeId) = ("binance".parse().unwrap(), "coinbase".parse().unwrap());
        assert!(budget.try_take(&a, &binance, Instant::now()));
        assert!(!budget.try_take(&a, &binance, Instant::now()), "a second probe at once is refused");
        assert!(budget.try_take(&b, &binance, Instant::now()), "another proxy has its own budget");
        assert!(budget.try_take(&a, &coinbase, Instant::now()), "another exchange too");
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!budget.try_take(&a, &binance, Instant::now()), "two a minute: 30 s apart");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(budget.try_take(&a, &binance, Instant::now()));
        let mut allowed = 0;
        for _ in 0..600 {
            tokio::time::advance(Duration::from_secs(1)).await;
            allowed += u32::from(budget.try_take(&a, &binance, Instant::now()));
        }
        assert_eq!(allowed, 20, "ten minutes of one-second ticks allow twenty");
    }
}
