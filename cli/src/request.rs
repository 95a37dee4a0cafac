//! `proxybus request <exchange> <http|websocket>`.

use std::process::ExitCode;
use std::time::Duration;

use proxybus_shared::{
    Codec, ConnectionType, Encoding, ErrorReply, ExchangeId, ProxyRequest, ProxyResponse, Region, redact_url, subject,
};

/// Arguments of `proxybus request`.
#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    /// Exchange id (binance, coinbase, kraken …).
    pub exchange: ExchangeId,
    /// `http` or `websocket`.
    pub connection_type: ConnectionType,
    /// Preferred region.
    #[arg(long)]
    pub region: Option<Region>,
    /// Who asks (the resolver keeps one lease per client).
    #[arg(long, default_value = "proxybus-cli")]
    pub client_id: String,
    /// Print the reply as JSON, credentials included (it is what a feed receives).
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the resolver.
    #[arg(long, default_value = "5", value_name = "SECONDS")]
    pub timeout: u64,
}

pub(crate) async fn run(client: &async_nats::Client, args: RequestArgs) -> anyhow::Result<ExitCode> {
    let codec = Codec::default();
    let mut request = ProxyRequest::new(args.exchange.clone(), args.connection_type, args.client_id);
    request.region = args.region;
    request.request_id = Some(uuid::Uuid::new_v4().to_string());
    let subject = subject::request(&args.exchange, args.connection_type);
    let payload = codec.encode(Encoding::MsgPack, &request)?;
    let reply = tokio::time::timeout(
        Duration::from_secs(args.timeout),
        client.request_with_headers(subject.clone(), Encoding::MsgPack.headers(), payload),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no answer on {subject} within {}s: is proxybus up?", args.timeout))?
    .map_err(|err| anyhow::anyhow!("request on {subject} failed: {err} (is a resolver running?)"))?;
    if reply.headers.as_ref().is_some_and(|h| h.get(subject::SERVICE_ERROR_CODE_HEADER).is_some()) {
        let error: ErrorReply = codec.decode(reply.headers.as_ref(), &reply.payload)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&error)?);
        } else {
            eprintln!("resolver answered {} {}: {}", error.code, error.error, error.message);
        }
        return Ok(ExitCode::FAILURE);
    }
    let response: ProxyResponse = codec.decode(reply.headers.as_ref(), &reply.payload)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&response)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = crate::table(&["field", "value"]);
    let proxy = response.proxy_url.as_deref().map_or_else(|| "(direct connection)".to_owned(), redact_url);
    table.add_row(vec!["proxy".to_owned(), proxy]);
    table.add_row(vec!["proxy_id".to_owned(), response.proxy_id.map(|id| id.to_string()).unwrap_or_default()]);
    table.add_row(vec!["region".to_owned(), response.region.map(|r| r.to_string()).unwrap_or_default()]);
    if let Some(answered_in) = response.resolver_region {
        table.add_row(vec!["resolver_region".to_owned(), answered_in.to_string()]);
    }
    table.add_row(vec!["strategy".to_owned(), response.strategy]);
    table.add_row(vec!["source".to_owned(), serde_plain(&response.source)]);
    table.add_row(vec!["ttl_seconds".to_owned(), response.ttl_seconds.to_string()]);
    table.add_row(vec!["fallback_policy".to_owned(), serde_plain(&response.fallback_policy)]);
    table.add_row(vec!["request_id".to_owned(), response.request_id]);
    println!("{table}");
    Ok(ExitCode::SUCCESS)
}

/// The serde name of an enum value (`stale_cache`, `direct_connection` …).
pub(crate) fn serde_plain<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}
