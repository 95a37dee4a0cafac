//! Reading a feedback message off the stream, and what happens to one that cannot
//! be folded: it is republished on `proxy.v1.feedback_dead.{exchange}.{conn}` with
//! header `Proxybus-Dead-Reason`, counted, and acked like any other, so that it can
//! never block the consumer.

use async_nats::{Client, HeaderMap};
use proxybus_shared::{Codec, ProxyFeedback, subject};

/// Header that carries why a message was dead-lettered.
pub const DEAD_REASON_HEADER: &str = "Proxybus-Dead-Reason";
/// Header that carries the stream sequence of a dead-lettered message.
pub const DEAD_SEQ_HEADER: &str = "Proxybus-Stream-Seq";
/// Longest reason put in the header.
const MAX_REASON_LEN: usize = 256;

/// Decodes and checks one feedback message; the error is the reason to dead-letter it.
pub fn read_feedback(subject: &str, headers: Option<&HeaderMap>, payload: &[u8]) -> Result<ProxyFeedback, String> {
    let (exchange, connection_type) = subject::parse_feedback(subject).map_err(|err| format!("bad subject: {err}"))?;
    let event: ProxyFeedback = Codec::default().decode(headers, payload).map_err(|err| err.to_string())?;
    if event.exchange_id != exchange {
        return Err(format!(
            "exchange_id {:?} does not match the subject's {:?}",
            event.exchange_id.as_str(),
            exchange.as_str()
        ));
    }
    if event.connection_type != connection_type {
        return Err(format!(
            "connection_type {} does not match the subject's {}",
            event.connection_type, connection_type
        ));
    }
    Ok(event)
}

/// A reason fit for a header: URLs redacted, one line, at most 256 characters.
pub fn clean_reason(reason: &str) -> String {
    let one_line = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    proxybus_shared::redact_text(&one_line).chars().filter(|c| !c.is_control()).take(MAX_REASON_LEN).collect()
}

/// Republishes a message that cannot be folded on its dead-letter subject.
pub async fn dead_letter(
    client: &Client,
    original_subject: &str,
    stream_seq: u64,
    reason: &str,
    payload: bytes::Bytes,
) -> Result<(), async_nats::PublishError> {
    let mut headers = HeaderMap::new();
    headers.insert(DEAD_REASON_HEADER, clean_reason(reason).as_str());
    headers.insert(DEAD_SEQ_HEADER, stream_seq.to_string().as_str());
    client.publish_with_headers(subject::feedback_dead(original_subject), headers, payload).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_never_carry_credentials() {
        let reason = clean_reason("invalid value: string \"http://user:hunter2@10.0.0.1:8080\",\nexpected x");
        assert!(!reason.contains("hunter2"), "{reason}");
        assert!(!reason.contains('\n'));
        assert!(clean_reason(&"x".repeat(1000)).len() <= MAX_REASON_LEN);
    }

    #[test]
    fn a_subject_that_disagrees_with_the_payload_is_refused() {
        let err = read_feedback("proxy.v1.feedback.binance", None, b"").unwrap_err();
        assert!(err.contains("bad subject"), "{err}");
    }
}
