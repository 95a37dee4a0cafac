//! Tracing set-up, in one place: plain text for people, JSON for log shippers.
//!
//! `PROXYBUS_LOG_FORMAT=json` selects JSON; `RUST_LOG` filters (default `info`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

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

/// Installs the global tracing subscriber for a binary; `filter` is a `RUST_LOG`
/// directive (`None` means `info`). A second call does nothing.
pub fn init(format: LogFormat, filter: Option<&str>) {
    let filter = EnvFilter::try_new(filter.unwrap_or("info")).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_span_events(FmtSpan::NONE).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}

/// Installs tracing from the environment: `PROXYBUS_LOG_FORMAT` and `RUST_LOG`.
pub fn init_from_env(env: &EnvSource) {
    init(LogFormat::from_env(env), env.get("RUST_LOG"));
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
}
