//! `proxybus feedback <proxy_id> --exchange E --conn C --ok|--fail KIND`.

use std::process::ExitCode;

use async_nats::jetstream;
use proxybus_shared::{
    Codec, ConnectionType, Encoding, ErrorKind, ExchangeId, FeedbackPhase, HealthStats, ProxyFeedback, ProxyId, Region,
    SCHEMA_VERSION, redact_url, subject,
};

/// Arguments of `proxybus feedback`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("outcome").required(true).args(["ok", "fail"])))]
pub struct FeedbackArgs {
    /// The proxy (as `proxybus request` printed it).
    pub proxy_id: ProxyId,
    /// Exchange the connection went to.
    #[arg(long)]
    pub exchange: ExchangeId,
    /// `http` or `websocket`.
    #[arg(long = "conn")]
    pub connection_type: ConnectionType,
    /// The connection worked.
    #[arg(long)]
    pub ok: bool,
    /// It failed, with this kind: timeout, refused, dns, tls, proxy_auth, http_403, http_418, http_429, http_451, http_5xx, ws_closed, ws_handshake_refused, other (who each is about: docs/health.md).
    #[arg(long, value_name = "KIND", value_parser = parse_error_kind)]
    pub fail: Option<ErrorKind>,
    /// Latency in milliseconds.
    #[arg(long)]
    pub latency_ms: Option<u64>,
    /// HTTP status seen through the proxy.
    #[arg(long)]
    pub status: Option<u16>,
    /// Retry-After seconds the exchange sent.
    #[arg(long)]
    pub retry_after: Option<u64>,
    /// Websocket close code the peer sent (with `--fail ws_closed`), e.g. 1008 or 1013.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1000..=4999))]
    pub close_code: Option<u16>,
    /// Region of the proxy (default: as stored in PROXY_HEALTH).
    #[arg(long)]
    pub region: Option<Region>,
    /// The proxy's URL (shown only redacted; default: as stored in PROXY_HEALTH).
    #[arg(long)]
    pub proxy_url: Option<String>,
    /// Who reports.
    #[arg(long, default_value = "proxybus-cli")]
    pub client_id: String,
}

fn parse_error_kind(text: &str) -> Result<ErrorKind, String> {
    let kind: ErrorKind =
        serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|e| e.to_string())?;
    if kind == ErrorKind::Other && text != "other" {
        return Err(format!("unknown error kind {text:?}"));
    }
    Ok(kind)
}

pub(crate) async fn run(client: &async_nats::Client, args: FeedbackArgs) -> anyhow::Result<ExitCode> {
    let js = jetstream::new(client.clone());
    // What the aggregator already knows of the proxy fills in its URL and region.
    let known: Option<HealthStats> = match js.get_key_value(subject::HEALTH_BUCKET).await {
        Ok(bucket) => match bucket.get(args.proxy_id.as_str()).await {
            Ok(Some(bytes)) => Codec::default().decode_as(Encoding::MsgPack, &bytes).ok(),
            _ => None,
        },
        Err(_) => None,
    };
    let proxy_url = args
        .proxy_url
        .as_deref()
        .map(redact_url)
        .or_else(|| known.as_ref().map(|k| k.proxy_url.clone()))
        .unwrap_or_else(|| format!("unknown://{}", args.proxy_id));
    let success = args.ok;
    let event = ProxyFeedback {
        schema_version: SCHEMA_VERSION,
        event_id: uuid::Uuid::new_v4(),
        proxy_id: args.proxy_id,
        proxy_url,
        exchange_id: args.exchange.clone(),
        connection_type: args.connection_type,
        region: args.region.or_else(|| known.and_then(|k| k.region)),
        phase: if success { FeedbackPhase::Connected } else { FeedbackPhase::Failed },
        success,
        latency_ms: args.latency_ms,
        error_kind: args.fail,
        status_code: args.status,
        retry_after_seconds: args.retry_after,
        error_details: Some("reported with proxybus feedback".into()),
        ws_close_code: args.close_code,
        usage_headers: Default::default(),
        connect_count: None,
        timestamp: chrono::Utc::now(),
        client_id: args.client_id,
        probe: false,
    };
    let ack = proxybus_shared::feedback::publish_feedback(&js, &event).await.map_err(|err| {
        anyhow::anyhow!("stream {} did not store the event: {err} (is the aggregator up?)", subject::FEEDBACK_STREAM)
    })?;
    println!("event {} stored in {} at sequence {}", event.event_id, ack.stream, ack.sequence);
    Ok(ExitCode::SUCCESS)
}
