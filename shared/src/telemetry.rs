//! Tracing and metrics set-up, in one place: plain text for people, JSON for log
//! shippers; one Prometheus recorder per process ([`prometheus`]) and one way to
//! serve it ([`metrics_router`], [`serve_metrics`]).
//!
//! `PROXYBUS_LOG_FORMAT=json` selects JSON; `RUST_LOG` filters (default `info`).
//! Dependencies that log raw payloads ([`WIRE_TARGETS`]) never log above
//! `debug`, even under `RUST_LOG=trace`, unless `PROXYBUS_LOG_WIRE=1` asks for it,
//! which logs a warning at start: their payloads carry proxy credentials.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::EnvSource;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The format `PROXYBUS_LOG_FORMAT` asks for (`json`, else plain).
    pub fn from_env(env: &EnvSource) -> Self {
        match env.get("PROXYBUS_LOG_FORMAT").map(|v| v.trim().to_ascii_lowercase()) {
            Some(v) if v == "json" => LogFormat::Json,
            _ => LogFormat::Plain,
        }
    }
}

/// Environment variable that lets dependencies log their wire traffic (`1` or `true`).
pub const WIRE_LOG_ENV: &str = "PROXYBUS_LOG_WIRE";

/// Crates that log raw payloads, headers or frames at `trace` (async-nats logs
/// every protocol message, hyper and h2 headers and bodies, rustls handshakes,
/// tungstenite frames): a `ProxyResponse` carries proxy credentials, so these are
/// capped at [`WIRE_CAP`] unless [`WIRE_LOG_ENV`] asks for wire logs. A target
/// matches its crate and every module in it (`hyper` also covers `hyper_util`).
pub const WIRE_TARGETS: [&str; 13] = [
    "async_nats",
    "hyper",
    "h2",
    "reqwest",
    "rustls",
    "tokio_rustls",
    "tungstenite",
    "tokio_tungstenite",
    "tokio_socks",
    "tower_http",
    "axum",
    "hickory_proto",
    "hickory_resolver",
];

/// The most a [`WIRE_TARGETS`] crate may log without [`WIRE_LOG_ENV`]: `debug`
/// (issue #12: payloads appear at `trace`).
pub const WIRE_CAP: LevelFilter = LevelFilter::DEBUG;

/// Whether `env` asks for wire logs ([`WIRE_LOG_ENV`] = `1`, `true` or `yes`).
pub fn wire_logs_from_env(env: &EnvSource) -> bool {
    env.get(WIRE_LOG_ENV).is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

/// The filter that keeps [`WIRE_TARGETS`] at or below [`WIRE_CAP`] (everything
/// else passes to the `RUST_LOG` filter); `None` when wire logs are asked for.
pub fn wire_cap(wire_logs: bool) -> Option<Targets> {
    (!wire_logs).then(|| {
        WIRE_TARGETS.iter().fold(Targets::new().with_default(LevelFilter::TRACE), |targets, crate_name| {
            targets.with_target(*crate_name, WIRE_CAP)
        })
    })
}

/// The subscriber of [`init_with`], writing to `writer` (tests pass a buffer), without
/// terminal colours.
pub fn subscriber<W>(
    format: LogFormat,
    filter: Option<&str>,
    wire_logs: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    subscriber_with_ansi(format, filter, wire_logs, writer, false)
}

/// As [`subscriber`], with terminal colours when `ansi` (plain format only).
fn subscriber_with_ansi<W>(
    format: LogFormat,
    filter: Option<&str>,
    wire_logs: bool,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter.unwrap_or("info")).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_span_events(FmtSpan::NONE).with_writer(writer).with_ansi(ansi);
    let fmt = match format {
        LogFormat::Plain => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(true).boxed(),
    };
    Box::new(tracing_subscriber::registry().with(filter).with(wire_cap(wire_logs)).with(fmt))
}

/// Installs the global tracing subscriber for a binary; `filter` is a `RUST_LOG`
/// directive (`None` means `info`); the [`WIRE_TARGETS`] stay capped. A second call does nothing.
pub fn init(format: LogFormat, filter: Option<&str>) {
    init_with(format, filter, false);
}

/// As [`init`]; with `wire_logs` the [`WIRE_TARGETS`] log at any level the filter
/// allows, and a warning says so (at every start).
pub fn init_with(format: LogFormat, filter: Option<&str>, wire_logs: bool) {
    // Colours only on a terminal (and not under `NO_COLOR`, https://no-color.org): a log
    // redirected to a file or a collector had its levels wrapped in escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let _ =
        tracing::subscriber::set_global_default(subscriber_with_ansi(format, filter, wire_logs, std::io::stderr, ansi));
    if wire_logs {
        tracing::warn!(
            setting = WIRE_LOG_ENV,
            "wire logs are on: dependencies may log raw payloads, proxy passwords included, at debug and trace"
        );
    }
}

/// Installs tracing from the environment: `PROXYBUS_LOG_FORMAT`, `RUST_LOG` and
/// `PROXYBUS_LOG_WIRE`.
pub fn init_from_env(env: &EnvSource) {
    init_with(LogFormat::from_env(env), env.get("RUST_LOG"), wire_logs_from_env(env));
}

/// Installs a test subscriber writing to the test's captured output when
/// `TEST_LOG` is set; otherwise does nothing.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into());
        let _ = tracing_subscriber::fmt().with_env_filter(EnvFilter::new(filter)).with_test_writer().try_init();
    }
}

/// Latency histogram buckets in seconds, 100 µs to 10 s, for every `*_seconds`
/// histogram of every part (a request answered from cache takes ~100 µs on the bus, an
/// upstream call up to the 10 s request timeout).
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0];

/// The process's Prometheus recorder, installed on first call with [`LATENCY_BUCKETS`].
///
/// The `metrics` facade has one global recorder per process, so every part running in
/// it (the three services, or all of them under `proxybus up`) records into this one
/// and one `/metrics` shows every part's series. `None` when another recorder was
/// installed first (an embedding program's own); `/metrics` is then empty and a
/// warning is logged once.
pub fn prometheus() -> Option<&'static metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&LATENCY_BUCKETS)
                .expect("LATENCY_BUCKETS is not empty");
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot install the Prometheus recorder; /metrics will be empty");
                    None
                }
            }
        })
        .as_ref()
}

/// The Prometheus text exposition of [`prometheus`] (empty without a recorder).
pub fn render_metrics() -> String {
    prometheus()
        .map(|handle| {
            handle.run_upkeep();
            handle.render()
        })
        .unwrap_or_default()
}

/// Routes `GET /metrics` (Prometheus text format 0.0.4, from [`render_metrics`]) and
/// `GET /healthz` (`ok`): what each service's metrics listener serves.
pub fn metrics_router() -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            crate::http::paths::METRICS,
            get(|| async { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], render_metrics()) }),
        )
        .route(crate::http::paths::HEALTHZ, get(|| async { "ok" }))
}

/// Binds `addr` and serves [`metrics_router`] until `stop` is cancelled.
///
/// Installs the recorder first, so series recorded from now on are kept. Returns the
/// bound address (port 0 picks a free one) and the serving task.
///
/// # Errors
/// The bind error when `addr` cannot be listened on.
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    prometheus();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "serving /metrics");
    let task = tokio::spawn(async move {
        let served =
            axum::serve(listener, metrics_router()).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        if let Err(err) = served {
            tracing::warn!(error = %err, "metrics endpoint stopped");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_recorder_serves_every_series_on_metrics() {
        crate::http::install_crypto_provider();
        let stop = tokio_util::sync::CancellationToken::new();
        let (addr, task) = serve_metrics("127.0.0.1:0".parse().unwrap(), stop.clone()).await.unwrap();
        metrics::counter!("proxybus_telemetry_test_total", "part" => "resolver").increment(2);
        metrics::histogram!("proxybus_telemetry_test_seconds").record(0.0003);
        let body = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
        assert!(body.contains(r#"proxybus_telemetry_test_total{part="resolver"} 2"#), "{body}");
        assert!(body.contains(r#"proxybus_telemetry_test_seconds_bucket{le="0.0005"} 1"#), "{body}");
        let healthz = reqwest::get(format!("http://{addr}/healthz")).await.unwrap();
        assert_eq!(healthz.text().await.unwrap(), "ok");
        assert!(std::ptr::eq(prometheus().unwrap(), prometheus().unwrap()), "one recorder per process");
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn json_is_chosen_only_by_proxybus_log_format() {
        let json: EnvSource = [("PROXYBUS_LOG_FORMAT", "JSON")].into_iter().collect();
        assert_eq!(LogFormat::from_env(&json), LogFormat::Json);
        let plain: EnvSource = [("PROXYBUS_LOG_FORMAT", "text")].into_iter().collect();
        assert_eq!(LogFormat::from_env(&plain), LogFormat::Plain);
        assert_eq!(LogFormat::from_env(&EnvSource::default()), LogFormat::Plain);
    }

    /// Logs one event per level from `target` through the subscriber; what was written.
    fn written(wire_logs: bool, format: LogFormat) -> String {
        let buffer = crate::testing::LogBuffer::default();
        let subscriber = subscriber(format, Some("trace"), wire_logs, buffer.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: "async_nats::connection", payload = "PLANTED-TRACE", "got PLANTED-TRACE-MSG");
            tracing::trace!(target: "hyper_util::client", "PLANTED-HYPER-UTIL");
            tracing::trace!(target: "h2::codec", "PLANTED-H2");
            tracing::debug!(target: "async_nats::connection", "debug-kept");
            tracing::trace!(target: "proxybus_resolver::service", "own-trace-kept");
        });
        buffer.text()
    }

    #[test]
    fn wire_crates_are_capped_at_debug_even_under_rust_log_trace() {
        for format in [LogFormat::Plain, LogFormat::Json] {
            let text = written(false, format);
            assert!(!text.contains("PLANTED"), "{text}");
            assert!(text.contains("debug-kept") && text.contains("own-trace-kept"), "{text}");
            let wire = written(true, format);
            for planted in ["PLANTED-TRACE-MSG", "PLANTED-HYPER-UTIL", "PLANTED-H2"] {
                assert!(wire.contains(planted), "PROXYBUS_LOG_WIRE lets {planted} through: {wire}");
            }
        }
    }

    #[test]
    fn wire_logs_need_an_explicit_setting() {
        assert!(!wire_logs_from_env(&EnvSource::default()));
        assert!(!wire_logs_from_env(&[(WIRE_LOG_ENV, "0")].into_iter().collect()));
        assert!(wire_logs_from_env(&[(WIRE_LOG_ENV, "1")].into_iter().collect()));
        assert!(wire_logs_from_env(&[(WIRE_LOG_ENV, "TRUE")].into_iter().collect()));
    }
}
