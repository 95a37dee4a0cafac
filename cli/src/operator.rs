//! `proxybus ban|unban|drain|undrain <proxy_id> [--exchange E] [--for 2h] --reason TEXT`
//! and `proxybus disable|enable <proxy_id> --reason TEXT`: an operator's event into
//! stream `PROXY_FEEDBACK` on `proxy.v1.feedback.operator.{action}.{proxy_id}`, which
//! the aggregator folds into the proxy's health (docs/health.md, "Operator controls").

use std::process::ExitCode;

use async_nats::jetstream;
use proxybus_shared::config::EnvSource;
use proxybus_shared::{ExchangeId, OperatorAction, OperatorEvent, ProxyId, SCHEMA_VERSION, subject};

/// Arguments of `proxybus ban|unban|drain|undrain`.
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// The proxy (as `proxybus health` or `proxybus request` printed it).
    pub proxy_id: ProxyId,
    /// Only this exchange (default: every exchange).
    #[arg(long)]
    pub exchange: Option<ExchangeId>,
    /// How long a ban or drain lasts (`90s`, `15m`, `2h`, `1d`); default: until lifted.
    /// Not for unban/undrain.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Why (required; kept in the stream as the audit trail, shown by `proxybus health`).
    #[arg(long)]
    pub reason: String,
    /// Who (default: $PROXYBUS_OPERATOR, else $USER, else the NATS user).
    #[arg(long)]
    pub by: Option<String>,
}

/// Arguments of `proxybus disable|enable`.
#[derive(Debug, clap::Args)]
pub struct ToggleArgs {
    /// The proxy.
    pub proxy_id: ProxyId,
    /// Why (required).
    #[arg(long)]
    pub reason: String,
    /// Who (default: $PROXYBUS_OPERATOR, else $USER, else the NATS user).
    #[arg(long)]
    pub by: Option<String>,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|err| format!("{err} (e.g. 90s, 15m, 2h, 1d)"))?;
    if duration.as_secs() == 0 {
        return Err("a duration must be at least one second".into());
    }
    Ok(duration)
}

/// The operator's name: `--by`, else `$PROXYBUS_OPERATOR`, else `$USER`, else `$NATS_USER`.
fn operator_name(by: Option<String>, env: &EnvSource) -> String {
    by.or_else(|| {
        ["PROXYBUS_OPERATOR", "USER", "NATS_USER"]
            .into_iter()
            .find_map(|name| env.get(name).filter(|v| !v.trim().is_empty()).map(str::to_owned))
    })
    .unwrap_or_else(|| "unknown".to_owned())
}

impl ControlArgs {
    /// The event these arguments ask for.
    pub(crate) fn event(self, action: OperatorAction, env: &EnvSource) -> OperatorEvent {
        OperatorEvent {
            schema_version: SCHEMA_VERSION,
            event_id: uuid::Uuid::new_v4(),
            proxy_id: self.proxy_id,
            action,
            exchange_id: self.exchange,
            duration_seconds: self.duration.map(|d| d.as_secs()),
            reason: self.reason,
            operator: operator_name(self.by, env),
            timestamp: chrono::Utc::now(),
        }
    }
}

impl ToggleArgs {
    /// The event these arguments ask for.
    pub(crate) fn event(self, action: OperatorAction, env: &EnvSource) -> OperatorEvent {
        ControlArgs { proxy_id: self.proxy_id, exchange: None, duration: None, reason: self.reason, by: self.by }
            .event(action, env)
    }
}

/// Publishes `event` and prints where the stream stored it; a refused event changes nothing.
pub(crate) async fn run(client: &async_nats::Client, event: OperatorEvent) -> anyhow::Result<ExitCode> {
    proxybus_shared::health::validate_operator_event(&event).map_err(|err| anyhow::anyhow!("{err}"))?;
    let js = jetstream::new(client.clone());
    let ack = proxybus_shared::feedback::publish_operator_event(&js, &event).await.map_err(|err| {
        anyhow::anyhow!(
            "stream {} did not store the {} of {}: {err} (is the aggregator up, and may this NATS user publish {}?)",
            subject::FEEDBACK_STREAM,
            event.action,
            event.proxy_id,
            subject::OPERATOR_WILDCARD
        )
    })?;
    let scope = event.exchange_id.as_ref().map_or_else(|| "every exchange".to_owned(), |e| e.to_string());
    let lasting = event.duration_seconds.map_or_else(String::new, |s| {
        format!(" for {}", humantime::format_duration(std::time::Duration::from_secs(s)))
    });
    println!(
        "{} {} ({scope}){lasting} by {}: stored in {} at sequence {}",
        event.action, event.proxy_id, event.operator, ack.stream, ack.sequence
    );
    Ok(ExitCode::SUCCESS)
}
