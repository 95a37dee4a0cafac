//! Reading a feedback message off the stream, and what happens to one that cannot
//! be folded: it is republished on `proxy.v1.feedback_dead.{exchange}.{conn}` with
//! header `Proxybus-Dead-Reason`, counted, and acked like any other, so that it can
//! never block the consumer.

use async_nats::{Client, HeaderMap};
use chrono::{DateTime, Utc};
use proxybus_shared::{Codec, OperatorEvent, ProxyFeedback, subject};

/// One message of stream `PROXY_FEEDBACK`: a feed's (or a probe's) feedback, or an operator's event.
#[derive(Debug, Clone)]
pub(crate) enum StreamEvent {
    /// `proxy.v1.feedback.{exchange}.{conn}`.
    Feedback(ProxyFeedback),
    /// `proxy.v1.feedback.operator.{action}.{proxy_id}`.
    Operator(OperatorEvent),
}

impl StreamEvent {
    /// The event's id (its `Nats-Msg-Id`).
    pub(crate) fn event_id(&self) -> uuid::Uuid {
        match self {
            StreamEvent::Feedback(event) => event.event_id,
            StreamEvent::Operator(event) => event.event_id,
        }
    }

    /// The proxy it is about.
    pub(crate) fn proxy_id(&self) -> &proxybus_shared::ProxyId {
        match self {
            StreamEvent::Feedback(event) => &event.proxy_id,
            StreamEvent::Operator(event) => &event.proxy_id,
        }
    }
}

/// Decodes and checks one message of the stream, feedback or operator event by its
/// subject; the error is the reason to dead-letter it.
pub(crate) fn read_event(subject: &str, headers: Option<&HeaderMap>, payload: &[u8]) -> Result<StreamEvent, String> {
    if subject::is_operator(subject) {
        read_operator(subject, headers, payload).map(StreamEvent::Operator)
    } else {
        read_feedback(subject, headers, payload).map(StreamEvent::Feedback)
    }
}

/// Decodes and checks one operator event: its action and proxy must be the subject's,
/// and it must pass `health::validate_operator_event`.
pub(crate) fn read_operator(
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<OperatorEvent, String> {
    let (action, proxy) = subject::parse_operator(subject).map_err(|err| format!("bad subject: {err}"))?;
    let event: OperatorEvent = Codec::default().decode(headers, payload).map_err(|err| err.to_string())?;
    if event.action != action || event.proxy_id != proxy {
        return Err(format!("action {} / proxy_id {} do not match the subject", event.action, event.proxy_id));
    }
    proxybus_shared::health::validate_operator_event(&event).map_err(|err| err.to_string())?;
    Ok(event)
}

/// Longest reason put in the header.
const MAX_REASON_LEN: usize = 256;

/// Decodes and checks one feedback message (subject, and `ProxyFeedback::problem`); the
/// error is the reason to dead-letter it.
pub(crate) fn read_feedback(
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<ProxyFeedback, String> {
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
    if let Some(problem) = event.problem() {
        return Err(problem);
    }
    Ok(event)
}

/// A reason fit for a header: URLs redacted, one line, at most 256 characters.
pub(crate) fn clean_reason(reason: &str) -> String {
    let one_line = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    proxybus_shared::redact_text(&one_line).chars().filter(|c| !c.is_control()).take(MAX_REASON_LEN).collect()
}

/// Republishes a message that cannot be folded on its dead-letter subject.
pub(crate) async fn dead_letter(
    client: &Client,
    original_subject: &str,
    stream_seq: u64,
    reason: &str,
    payload: bytes::Bytes,
) -> Result<(), async_nats::PublishError> {
    let mut headers = HeaderMap::new();
    headers.insert(subject::DEAD_REASON_HEADER, clean_reason(reason).as_str());
    headers.insert(subject::DEAD_SEQ_HEADER, stream_seq.to_string().as_str());
    client.publish_with_headers(subject::feedback_dead(original_subject), headers, payload).await
}

/// A JetStream timestamp as chrono, whichever type async-nats was built with.
pub(crate) fn offset_to_chrono<T: StreamTime>(at: T) -> DateTime<Utc> {
    at.to_chrono()
}

/// The two types async-nats' `DateTime` can be (its `chrono` feature switches it).
pub(crate) trait StreamTime {
    fn to_chrono(self) -> DateTime<Utc>;
}

impl StreamTime for time::OffsetDateTime {
    fn to_chrono(self) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(i64::try_from(self.unix_timestamp_nanos()).unwrap_or(i64::MAX))
    }
}

impl StreamTime for DateTime<Utc> {
    fn to_chrono(self) -> DateTime<Utc> {
        self
    }
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
