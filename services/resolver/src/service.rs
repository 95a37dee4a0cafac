//! The NATS side: one request in, one reply out, per the wire contract.
//!
//! A request is checked before anything else happens: payload size
//! (`payload_too_large`), `Content-Type`, decoding, subject tokens against body
//! fields, `client_id` and `request_id` shape (`bad_request`). Replies are in
//! the request's encoding with its `Content-Type`; error replies carry the
//! `Nats-Service-Error` / `Nats-Service-Error-Code` headers and an `ErrorReply` body.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::service::Request;
use bytes::Bytes;
use futures::FutureExt;
use proxybus_shared::codec::CONTENT_TYPE;
use proxybus_shared::{Codec, DecodeError, Encoding, ErrorCode, ErrorReply, ProxyRequest, subject};
use tokio::time::Instant;
use tracing::Instrument;

use crate::resolver::Resolver;
use crate::settings::MAX_CLIENT_ID;

/// Header carrying an error reply's message (micro-services convention).
pub const SERVICE_ERROR: &str = "Nats-Service-Error";
/// Header carrying an error reply's code.
pub const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";

/// Longest `request_id` accepted.
const MAX_REQUEST_ID: usize = 128;

/// A request refused before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Error class.
    pub code: ErrorCode,
    /// Explanation (no credentials: request bodies carry none).
    pub message: String,
    /// The request's id, when the body could be read.
    pub request_id: Option<String>,
}

impl Refusal {
    fn bad(message: impl Into<String>, request_id: Option<String>) -> Self {
        Self { code: ErrorCode::BadRequest, message: message.into(), request_id }
    }
}

/// Checks a request message and returns the request with its `request_id` set.
pub fn validate(
    codec: &Codec,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<ProxyRequest, Refusal> {
    if payload.len() > codec.max_payload() {
        return Err(Refusal {
            code: ErrorCode::PayloadTooLarge,
            message: format!(
                "request body of {} bytes is over the limit of {} bytes",
                payload.len(),
                codec.max_payload()
            ),
            request_id: None,
        });
    }
    let mut request: ProxyRequest = codec.decode(headers, payload).map_err(|err| {
        let message = match &err {
            DecodeError::UnsupportedContentType(_) => err.to_string(),
            _ => shorten(&format!("malformed request: {err}")),
        };
        Refusal::bad(message, None)
    })?;
    let request_id = request.request_id.clone();
    let (exchange, connection_type) =
        subject::parse_request(subject).map_err(|err| Refusal::bad(shorten(&err.to_string()), request_id.clone()))?;
    if exchange != request.exchange_id {
        return Err(Refusal::bad(
            format!("exchange_id {} does not match the subject's {exchange}", request.exchange_id),
            request_id,
        ));
    }
    if connection_type != request.connection_type {
        return Err(Refusal::bad(
            format!("connection_type {} does not match the subject's {connection_type}", request.connection_type),
            request_id,
        ));
    }
    if request.client_id.is_empty() || request.client_id.len() > MAX_CLIENT_ID {
        return Err(Refusal::bad(format!("client_id must be 1 to {MAX_CLIENT_ID} characters"), request_id));
    }
    match &request.request_id {
        Some(id) if id.is_empty() || id.len() > MAX_REQUEST_ID || id.chars().any(char::is_control) => {
            return Err(Refusal::bad(format!("request_id must be 1 to {MAX_REQUEST_ID} printable characters"), None));
        }
        Some(_) => {}
        None => request.request_id = Some(uuid::Uuid::new_v4().to_string()),
    }
    Ok(request)
}

fn shorten(text: &str) -> String {
    const MAX: usize = 300;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Handles one request end to end; never panics outward (a panic becomes an `internal` reply).
pub async fn handle(resolver: Arc<Resolver>, codec: Codec, request: Request) {
    let started = Instant::now();
    let message = &request.message;
    let encoding = Encoding::from_headers(message.headers.as_ref()).unwrap_or_default();
    let outcome = AssertUnwindSafe(answer(&resolver, &codec, message)).catch_unwind().await;
    let (reply, headers) = match outcome {
        Ok(Ok(response)) => {
            resolver.metrics().answered(response.source, started.elapsed());
            (codec.encode(encoding, &response), content_type(encoding))
        }
        Ok(Err(refusal)) => {
            resolver.metrics().failed(refusal.code, started.elapsed());
            error_reply(&codec, encoding, refusal)
        }
        Err(_) => {
            tracing::error!(subject = %message.subject, "request handler panicked");
            resolver.metrics().failed(ErrorCode::Internal, started.elapsed());
            error_reply(
                &codec,
                encoding,
                Refusal { code: ErrorCode::Internal, message: "internal error".into(), request_id: None },
            )
        }
    };
    let body = match reply {
        Ok(body) => body,
        Err(err) => {
            tracing::error!(error = %err, "cannot encode a reply");
            Bytes::new()
        }
    };
    if let Err(err) = request.respond_with_headers(Ok(body), headers).await {
        tracing::debug!(error = %err, "cannot send the reply (no reply subject, or the connection is gone)");
    }
}

async fn answer(
    resolver: &Resolver,
    codec: &Codec,
    message: &async_nats::Message,
) -> Result<proxybus_shared::ProxyResponse, Refusal> {
    let request = validate(codec, &message.subject, message.headers.as_ref(), &message.payload)?;
    let request_id = request.request_id.clone().unwrap_or_default();
    let span = tracing::info_span!(
        "resolve",
        request_id = %request_id,
        exchange = %request.exchange_id,
        connection_type = %request.connection_type,
    );
    resolver.resolve(&request).instrument(span).await.map_err(|err| Refusal {
        code: err.code(),
        message: err.to_string(),
        request_id: Some(request_id),
    })
}

fn content_type(encoding: Encoding) -> HeaderMap {
    encoding.headers()
}

fn error_reply(
    codec: &Codec,
    encoding: Encoding,
    refusal: Refusal,
) -> (Result<Bytes, proxybus_shared::codec::EncodeError>, HeaderMap) {
    let mut headers = content_type(encoding);
    // Header values cannot hold line breaks.
    let header_message: String = refusal.message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    headers.insert(SERVICE_ERROR, header_message.as_str());
    headers.insert(SERVICE_ERROR_CODE, refusal.code.status().to_string().as_str());
    headers.insert(CONTENT_TYPE, encoding.content_type());
    let body = ErrorReply::new(refusal.code, refusal.message, refusal.request_id);
    (codec.encode(encoding, &body), headers)
}

#[cfg(test)]
mod tests {
    use proxybus_shared::ConnectionType;

    use super::*;

    fn body(exchange: &str, connection_type: ConnectionType) -> Vec<u8> {
        let request = ProxyRequest::new(exchange.parse().unwrap(), connection_type, "feed-1");
        Codec::default().encode(Encoding::MsgPack, &request).unwrap().to_vec()
    }

    #[test]
    fn subject_and_body_must_agree() {
        let codec = Codec::default();
        let ok =
            validate(&codec, "proxy.v1.request.binance.http", None, &body("binance", ConnectionType::Http)).unwrap();
        assert!(ok.request_id.is_some(), "a request id is made when absent");
        let err =
            validate(&codec, "proxy.v1.request.kraken.http", None, &body("binance", ConnectionType::Http)).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("kraken"), "{}", err.message);
        let err = validate(&codec, "proxy.v1.request.binance.websocket", None, &body("binance", ConnectionType::Http))
            .unwrap_err();
        assert!(err.message.contains("connection_type"), "{}", err.message);
        let err =
            validate(&codec, "proxy.v1.request.binance.ftp", None, &body("binance", ConnectionType::Http)).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
    }

    #[test]
    fn size_is_checked_before_decoding() {
        let codec = Codec::new(1024);
        let err = validate(&codec, "proxy.v1.request.binance.http", None, &vec![0xc1; 2048]).unwrap_err();
        assert_eq!(err.code, ErrorCode::PayloadTooLarge);
        let err = validate(&codec, "proxy.v1.request.binance.http", None, &[0xc1]).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
    }
}
