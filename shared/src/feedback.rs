//! Feedback into stream `PROXY_FEEDBACK`, the way every client and the aggregator
//! agree on: the stream's shape ([`ensure_feedback_stream`]) and a publish that
//! carries `Nats-Msg-Id: {event_id}` and waits for the JetStream ack
//! ([`publish_feedback`]).
//!
//! Because the stream de-duplicates on `Nats-Msg-Id` within its duplicate window
//! (at least two minutes), a publisher whose ack timed out may simply publish the
//! same event again: it is stored once, and so folded once.
//!
//! # Examples
//! ```no_run
//! # async fn demo(client: async_nats::Client, event: proxybus_shared::ProxyFeedback)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use proxybus_shared::feedback::{FeedbackStreamConfig, ensure_feedback_stream, publish_feedback};
//! let jetstream = async_nats::jetstream::new(client);
//! ensure_feedback_stream(&jetstream, &FeedbackStreamConfig::default()).await?;
//! let ack = publish_feedback(&jetstream, &event).await?;
//! assert_eq!(ack.stream, "PROXY_FEEDBACK");
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, StorageType};
use async_nats::jetstream::{self, context};

use crate::codec::{CONTENT_TYPE, Codec, EncodeError, Encoding};
use crate::messages::ProxyFeedback;
use crate::subject::{self, FEEDBACK_STREAM, FEEDBACK_WILDCARD, Region};

/// Name of the de-duplication header JetStream honours.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Shortest duplicate window the contract allows (2 minutes).
pub const MIN_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Default maximum age of a feedback event in the stream (7 days).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default maximum size of the stream (1 GiB).
pub const DEFAULT_MAX_BYTES: i64 = 1 << 30;

/// Shape of stream `PROXY_FEEDBACK` beyond what the contract fixes (name,
/// subjects `proxy.v1.feedback.>`, file storage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackStreamConfig {
    /// How long events are kept; zero keeps them until `max_bytes` is reached (default 7 days).
    pub max_age: Duration,
    /// Largest size of the stream in bytes; `-1` is unlimited (default 1 GiB). The
    /// oldest events are discarded first.
    pub max_bytes: i64,
    /// Window in which a repeated `Nats-Msg-Id` is dropped; at least 2 minutes (default 2 minutes).
    pub duplicate_window: Duration,
    /// Replicas in a clustered deployment (default 1).
    pub replicas: usize,
}

impl Default for FeedbackStreamConfig {
    fn default() -> Self {
        Self {
            max_age: DEFAULT_MAX_AGE,
            max_bytes: DEFAULT_MAX_BYTES,
            duplicate_window: MIN_DUPLICATE_WINDOW,
            replicas: 1,
        }
    }
}

impl FeedbackStreamConfig {
    /// The JetStream configuration of the stream.
    pub fn stream_config(&self) -> StreamConfig {
        StreamConfig {
            name: FEEDBACK_STREAM.to_owned(),
            description: Some("proxybus feedback: what each proxy did, folded by proxybus-aggregator".to_owned()),
            subjects: vec![FEEDBACK_WILDCARD.to_owned()],
            storage: StorageType::File,
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            duplicate_window: self.duplicate_window,
            num_replicas: self.replicas.max(1),
            discard: DiscardPolicy::Old,
            ..Default::default()
        }
    }
}

/// Why the feedback stream could not be created or updated.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackStreamError {
    /// The requested configuration breaks the contract (duplicate window under 2 minutes,
    /// `max_bytes` of 0 or below -1).
    #[error("invalid feedback stream configuration: {0}")]
    InvalidConfig(String),
    /// The stream could not be looked up.
    #[error("cannot look up stream {FEEDBACK_STREAM}: {0}")]
    Lookup(String),
    /// The stream could not be created.
    #[error("cannot create stream {FEEDBACK_STREAM}: {0}")]
    Create(String),
    /// The stream could not be updated.
    #[error("cannot update stream {FEEDBACK_STREAM}: {0}")]
    Update(String),
}

/// Creates stream `PROXY_FEEDBACK`, or updates it to `config` when it exists with a
/// different max age, max bytes, duplicate window or subjects; returns its info.
pub async fn ensure_feedback_stream(
    jetstream: &jetstream::Context,
    config: &FeedbackStreamConfig,
) -> Result<jetstream::stream::Info, FeedbackStreamError> {
    if config.duplicate_window < MIN_DUPLICATE_WINDOW {
        return Err(FeedbackStreamError::InvalidConfig(format!(
            "duplicate window {:?} is shorter than the contract's {:?}",
            config.duplicate_window, MIN_DUPLICATE_WINDOW
        )));
    }
    if config.max_bytes == 0 || config.max_bytes < -1 {
        return Err(FeedbackStreamError::InvalidConfig(format!(
            "max_bytes {} must be positive or -1 (unlimited)",
            config.max_bytes
        )));
    }
    let wanted = config.stream_config();
    match jetstream.get_stream(FEEDBACK_STREAM).await {
        Ok(mut stream) => {
            let current =
                stream.info().await.map_err(|err| FeedbackStreamError::Lookup(err.to_string()))?.config.clone();
            // A fan-in stream (multi-region, see [`ensure_fan_in`]) sources the regional streams and
            // binds no subjects of its own: keep it so.
            let fan_in = current.sources.as_ref().is_some_and(|sources| !sources.is_empty());
            let wanted = if fan_in { StreamConfig { subjects: current.subjects.clone(), ..wanted } } else { wanted };
            let differs = current.max_age != wanted.max_age
                || current.max_bytes != wanted.max_bytes
                || current.duplicate_window != wanted.duplicate_window
                || current.subjects != wanted.subjects;
            if !differs {
                return stream.info().await.cloned().map_err(|err| FeedbackStreamError::Lookup(err.to_string()));
            }
            // Keep what the contract does not fix (replicas, placement …) as the operator set it.
            let updated = StreamConfig {
                subjects: wanted.subjects,
                max_age: wanted.max_age,
                max_bytes: wanted.max_bytes,
                duplicate_window: wanted.duplicate_window,
                ..current
            };
            jetstream.update_stream(updated).await.map_err(|err| FeedbackStreamError::Update(err.to_string()))
        }
        Err(err)
            if matches!(err.kind(), context::GetStreamErrorKind::JetStream(js)
                if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            let mut stream =
                jetstream.create_stream(wanted).await.map_err(|err| FeedbackStreamError::Create(err.to_string()))?;
            stream.info().await.cloned().map_err(|err| FeedbackStreamError::Create(err.to_string()))
        }
        Err(err) => Err(FeedbackStreamError::Lookup(err.to_string())),
    }
}

/// Feedback fan-in for a deployment over several regions (NATS clusters joined by gateways):
/// each region keeps its own stream `PROXY_FEEDBACK_{REGION}` near its feeds, placed in that
/// region's cluster, and the global `PROXY_FEEDBACK`, placed in `home`, **sources** every
/// regional stream with a subject transform back to `proxy.v1.feedback.>` — JetStream copies
/// the events, with their `Nats-Msg-Id`, and the aggregator folds the global stream as in a
/// one-region deployment.
///
/// Feeds keep publishing to `proxy.v1.feedback.{exchange}.{conn}`; the server configuration
/// maps those publishes to `proxy.v1.regional_feedback.{region}.…` per cluster
/// ([`fan_in_mappings`]). Creates what is missing and leaves what exists.
///
/// # Errors
/// [`FeedbackStreamError`] when a stream cannot be looked up or created.
pub async fn ensure_fan_in(
    jetstream: &jetstream::Context,
    config: &FeedbackStreamConfig,
    regions: &[Region],
    home: &Region,
) -> Result<(), FeedbackStreamError> {
    use async_nats::jetstream::stream::{Placement, Source, SubjectTransform};
    let placed = |region: &Region| Some(Placement { cluster: Some(region.to_string()), tags: Vec::new() });
    let mut sources = Vec::with_capacity(regions.len());
    for region in regions {
        let name = subject::regional_feedback_stream(region);
        let regional = StreamConfig {
            name: name.clone(),
            description: Some(format!("proxybus feedback of region {region}, sourced by {FEEDBACK_STREAM}")),
            subjects: vec![subject::regional_feedback_wildcard(region)],
            placement: placed(region),
            ..config.stream_config()
        };
        jetstream.get_or_create_stream(regional).await.map_err(|err| FeedbackStreamError::Create(err.to_string()))?;
        sources.push(Source {
            name,
            subject_transforms: vec![SubjectTransform {
                source: subject::regional_feedback_wildcard(region),
                destination: FEEDBACK_WILDCARD.to_owned(),
            }],
            ..Default::default()
        });
    }
    let global = StreamConfig {
        subjects: Vec::new(),
        sources: Some(sources),
        placement: placed(home),
        ..config.stream_config()
    };
    jetstream.get_or_create_stream(global).await.map_err(|err| FeedbackStreamError::Create(err.to_string()))?;
    Ok(())
}

/// The `mappings` block (nats-server configuration, inside the account the feeds use) that sends
/// each region's feedback publishes to its regional subject: cluster-scoped mappings, so a feed
/// publishes `proxy.v1.feedback.{exchange}.{conn}` wherever it runs (nats-server docs,
/// "Configuring Subject Mapping", cluster-scoped destinations, 2.10+).
pub fn fan_in_mappings(regions: &[Region]) -> String {
    let destinations: Vec<String> = regions
        .iter()
        .map(|region| {
            format!(
                "    {{ destination: \"{}.{region}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}\", weight: 100%, cluster: \"{region}\" }}",
                subject::REGIONAL_FEEDBACK_PREFIX
            )
        })
        .collect();
    // Operator events (three tokens after `proxy.v1.feedback`) travel the same way.
    let operator: Vec<String> = regions
        .iter()
        .map(|region| {
            format!(
                "    {{ destination: \"{}.{region}.operator.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}\", weight: 100%, cluster: \"{region}\" }}",
                subject::REGIONAL_FEEDBACK_PREFIX
            )
        })
        .collect();
    format!(
        "mappings {{\n  \"{}.*.*\": [\n{}\n  ]\n  \"{}.*.*\": [\n{}\n  ]\n}}\n",
        subject::FEEDBACK_PREFIX,
        destinations.join("\n"),
        subject::OPERATOR_PREFIX,
        operator.join("\n")
    )
}

/// Broad class of a failed feedback publish, for matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishFeedbackErrorKind {
    /// The event could not be encoded (never for a well-formed `ProxyFeedback`).
    Encode,
    /// The message could not be sent, or JetStream refused it; publishing the same
    /// event again is safe.
    Publish,
    /// No JetStream ack came in time (no stream, or the server is away); publishing
    /// the same event again is safe.
    Ack,
}

/// Why feedback could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishFeedbackError {
    /// Encoding failed.
    #[error("cannot encode feedback: {0}")]
    Encode(#[from] EncodeError),
    /// Sending failed.
    #[error("cannot publish feedback: {0}")]
    Publish(PublishError),
    /// The ack did not come.
    #[error("feedback was not acknowledged: {0}")]
    Ack(PublishError),
}

impl PublishFeedbackError {
    /// The class of this error.
    pub fn kind(&self) -> PublishFeedbackErrorKind {
        match self {
            PublishFeedbackError::Encode(_) => PublishFeedbackErrorKind::Encode,
            PublishFeedbackError::Publish(_) => PublishFeedbackErrorKind::Publish,
            PublishFeedbackError::Ack(_) => PublishFeedbackErrorKind::Ack,
        }
    }
}

/// The headers a feedback message carries: `Nats-Msg-Id: {event_id}` and the
/// MessagePack `Content-Type`.
pub fn feedback_headers(feedback: &ProxyFeedback) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID_HEADER, feedback.event_id.hyphenated().to_string().as_str());
    headers.insert(CONTENT_TYPE, Encoding::MsgPack.content_type());
    headers
}

/// `feedback` as it may travel: `proxy_url` through [`redact_url`] and
/// `error_details` through [`redact_text`] (the contract: "credentials redacted",
/// "free text, redacted"), whatever the caller put there; borrowed when already so.
///
/// [`redact_url`]: crate::redact_url
/// [`redact_text`]: crate::redact_text
pub fn redacted(feedback: &ProxyFeedback) -> std::borrow::Cow<'_, ProxyFeedback> {
    let proxy_url = crate::redact_url(&feedback.proxy_url);
    let details = feedback.error_details.as_deref().map(crate::redact_text);
    if proxy_url == feedback.proxy_url && details.as_deref() == feedback.error_details.as_deref() {
        return std::borrow::Cow::Borrowed(feedback);
    }
    let mut shown = feedback.clone();
    shown.proxy_url = proxy_url;
    shown.error_details = details;
    std::borrow::Cow::Owned(shown)
}

/// Publishes `feedback` on `proxy.v1.feedback.{exchange}.{connection_type}`
/// (MessagePack, `Nats-Msg-Id: {event_id}`) and returns the future of its JetStream
/// ack without waiting for it, so that many events can be in flight at once.
/// The event is [`redacted`] first: no password reaches the stream.
pub async fn send_feedback(
    jetstream: &jetstream::Context,
    feedback: &ProxyFeedback,
) -> Result<PublishAckFuture, PublishFeedbackError> {
    let feedback = redacted(feedback);
    let feedback = feedback.as_ref();
    let payload = Codec::default().encode(Encoding::MsgPack, feedback)?;
    let subject = subject::feedback(&feedback.exchange_id, feedback.connection_type);
    jetstream
        .publish_with_headers(subject, feedback_headers(feedback), payload)
        .await
        .map_err(PublishFeedbackError::Publish)
}

/// Publishes `feedback` like [`send_feedback`] and waits for the JetStream ack.
/// `ack.duplicate` is true when the stream already held this `event_id`.
pub async fn publish_feedback(
    jetstream: &jetstream::Context,
    feedback: &ProxyFeedback,
) -> Result<PublishAck, PublishFeedbackError> {
    send_feedback(jetstream, feedback).await?.await.map_err(PublishFeedbackError::Ack)
}

/// Why an operator event could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishOperatorError {
    /// The event breaks a rule (no reason, an exchange on `disable` …); nothing was sent.
    #[error(transparent)]
    Invalid(#[from] crate::health::OperatorEventError),
    /// Encoding, sending or the JetStream ack failed; publishing the same event again is safe.
    #[error(transparent)]
    Publish(#[from] PublishFeedbackError),
}

/// Publishes an operator's `event` on `proxy.v1.feedback.operator.{action}.{proxy_id}`
/// (MessagePack, `Nats-Msg-Id: {event_id}`) into stream `PROXY_FEEDBACK` and waits for
/// the JetStream ack. The event is checked first
/// ([`validate_operator_event`](crate::health::validate_operator_event)); its reason is redacted.
pub async fn publish_operator_event(
    jetstream: &jetstream::Context,
    event: &crate::OperatorEvent,
) -> Result<PublishAck, PublishOperatorError> {
    crate::health::validate_operator_event(event)?;
    let mut event = event.clone();
    event.reason = crate::redact_text(&event.reason);
    let payload = Codec::default().encode(Encoding::MsgPack, &event).map_err(PublishFeedbackError::from)?;
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID_HEADER, event.event_id.hyphenated().to_string().as_str());
    headers.insert(CONTENT_TYPE, Encoding::MsgPack.content_type());
    let ack = jetstream
        .publish_with_headers(subject::operator(event.action, &event.proxy_id), headers, payload)
        .await
        .map_err(PublishFeedbackError::Publish)?;
    Ok(ack.await.map_err(PublishFeedbackError::Ack)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_config_follows_the_contract() {
        let config = FeedbackStreamConfig::default().stream_config();
        assert_eq!(config.name, "PROXY_FEEDBACK");
        assert_eq!(config.subjects, vec!["proxy.v1.feedback.>".to_owned()]);
        assert_eq!(config.storage, StorageType::File);
        assert!(config.duplicate_window >= MIN_DUPLICATE_WINDOW);
    }
}
