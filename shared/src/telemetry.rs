//! Tracing set-up, in one place: plain text for people, JSON for log shippers.
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

/// The subscriber of [`init_with`], writing to `writer` (tests pass a buffer).
pub fn subscriber<W>(
    format: LogFormat,
    filter: Option<&str>,
    wire_logs: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter.unwrap_or("info")).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_span_events(FmtSpan::NONE).with_writer(writer);
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
    let _ = tracing::subscriber::set_global_default(subscriber(format, filter, wire_logs, std::io::stderr));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_chosen_only_by_proxybus_log_format() {
        let json: EnvSource = [("PROXYBUS_LOG_FORMAT", "JSON")].into_iter().collect();
        assert_eq!(LogFormat::from_env(&json), LogFormat::Json);
        let plain: EnvSource = [("PROXYBUS_LOG_FORMAT", "text")].into_iter().collect();
        assert_eq!(LogFormat::from_env(&plain), LogFormat::Plain);
        assert_eq!(LogFormat::from_env(&EnvSource::default()), LogFormat::Plain);
    }

    /// Logs one event per level from `target` through the subscriber; what was written.
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn written(wire_logs: bool, format: LogFormat) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = subscriber(format, Some("trace"), wire_logs, move || writer.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: "async_nats::connection", payload = "PLANTED-TRACE", "got PLANTED-TRACE-MSG");
            tracing::trace!(target: "hyper_util::client", "PLANTED-HYPER-UTIL");
            tracing::trace!(target: "h2::codec", "PLANTED-H2");
            tracing::debug!(target: "async_nats::connection", "debug-kept");
            tracing::trace!(target: "proxybus_resolver::service", "own-trace-kept");
        });
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
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
