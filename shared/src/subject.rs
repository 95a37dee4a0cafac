//! Subjects of the contract and the tokens that go into them.
//!
//! A token is only ever built from an [`ExchangeId`] or a [`Region`], both of which
//! accept `[a-z0-9_-]{1,64}` and nothing else, so no `.`, `*`, `>` or whitespace
//! can reach a subject.
//!
//! # Examples
//! ```
//! use proxybus_shared::{ConnectionType, ExchangeId, subject};
//! let binance: ExchangeId = "binance".parse().unwrap();
//! let s = subject::request(&binance, ConnectionType::Websocket);
//! assert_eq!(s, "proxy.v1.request.binance.websocket");
//! assert_eq!(subject::parse_request(&s).unwrap(), (binance, ConnectionType::Websocket));
//! assert!(subject::parse_request("proxy.v1.request.bin>.http").is_err());
//! ```

use std::borrow::Cow;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::messages::ConnectionType;

/// Prefix of request subjects.
pub const REQUEST_PREFIX: &str = "proxy.v1.request";
/// Prefix of the region-addressed request subjects
/// (`proxy.v1.request_region.{region}.{exchange_id}.{connection_type}`): each resolver with a
/// region also answers its own region's subject, so a request can be sent to one region's
/// resolvers wherever the sender is. A resolver asked for `region: "any"` scatters the request
/// to every region on these subjects and answers the best reply (docs/scaling.md).
pub const REGIONAL_REQUEST_PREFIX: &str = "proxy.v1.request_region";
/// The `region` of a [`ProxyRequest`](crate::ProxyRequest) that asks for the best proxy of
/// any region; never the name of a region.
pub const ANY_REGION: &str = "any";
/// Prefix of feedback subjects.
pub const FEEDBACK_PREFIX: &str = "proxy.v1.feedback";
/// Prefix of health subjects.
pub const HEALTH_PREFIX: &str = "proxy.v1.health";
/// Prefix of the dead-letter subjects of feedback the aggregator could not fold.
pub const FEEDBACK_DEAD_PREFIX: &str = "proxy.v1.feedback_dead";
/// Prefix of operator events (`proxy.v1.feedback.operator.{action}.{proxy_id}`): under the
/// feedback stream's subjects, so the stream keeps them with the feedback, but with three
/// tokens after `proxy.v1.feedback` where a feed's subjects have two, so NATS permissions can
/// allow feeds `proxy.v1.feedback.*.*` and keep this to operators (extension of the contract).
pub const OPERATOR_PREFIX: &str = "proxy.v1.feedback.operator";
/// Every operator event subject.
pub const OPERATOR_WILDCARD: &str = "proxy.v1.feedback.operator.>";
/// What feeds publish feedback on (exactly two tokens after `proxy.v1.feedback`): the
/// permission feeds are given, which never covers an operator subject.
pub const FEED_FEEDBACK_WILDCARD: &str = "proxy.v1.feedback.*.*";
/// What the resolver subscribes to.
pub const REQUEST_WILDCARD: &str = "proxy.v1.request.*.*";
/// What stream `PROXY_FEEDBACK` captures.
pub const FEEDBACK_WILDCARD: &str = "proxy.v1.feedback.>";
/// Every health subject.
pub const HEALTH_WILDCARD: &str = "proxy.v1.health.>";
/// Every dead-letter subject.
pub const FEEDBACK_DEAD_WILDCARD: &str = "proxy.v1.feedback_dead.>";
/// Where `proxybus up --demo` publishes its lab feeds' counters every few seconds (JSON array of
/// `proxybus_lab::feeds::FeedStats`; core NATS, not stored) for dashboards (extension of the
/// contract, docs/contract.md).
pub const LAB_FEEDS: &str = "proxy.v1.lab.feeds";

/// Name of the feedback stream.
pub const FEEDBACK_STREAM: &str = "PROXY_FEEDBACK";
/// Prefix of the subjects a region's feedback is mapped to in a multi-region deployment
/// (`proxy.v1.regional_feedback.{region}.{exchange_id}.{connection_type}`): nats-server's
/// cluster-scoped mappings rewrite each region's `proxy.v1.feedback.…` publishes to it, so each
/// region's stream captures its own feeds' events (see docs/scaling.md).
pub const REGIONAL_FEEDBACK_PREFIX: &str = "proxy.v1.regional_feedback";
/// Name of the aggregator's durable consumer.
pub const AGGREGATOR_CONSUMER: &str = "proxybus-aggregator";
/// Name of the health key-value bucket.
pub const HEALTH_BUCKET: &str = "PROXY_HEALTH";
/// Name of the key-value bucket where pool services publish their inventories
/// (key `{inventory_id}`, value `ProxyInventory`: proxy ids and regions only).
pub const INVENTORY_BUCKET: &str = "PROXY_INVENTORY";
/// Name of the key-value bucket of rate budgets (key `{proxy_id}.{exchange_id}`,
/// value `RateBudget`; `proxybus_shared::budget`), updated with compare-and-set.
pub const BUDGET_BUCKET: &str = "PROXY_BUDGETS";
/// Name of the durable consumer (on `PROXY_FEEDBACK`) through which pool services
/// share the folding of usage reports into `PROXY_BUDGETS`.
pub const BUDGET_CONSUMER: &str = "proxybus-pool-budgets";
/// Micro-service name (and queue group) of the resolver.
pub const RESOLVER_SERVICE: &str = "proxybus-resolver";
/// Micro-service name of the aggregator.
pub const AGGREGATOR_SERVICE: &str = "proxybus-aggregator";

/// Key-value bucket of the aggregator's checkpoint (last folded stream sequence and
/// the stats it produced; docs/aggregator.md). Default of `aggregator.state_bucket`.
pub const AGGREGATOR_STATE_BUCKET: &str = "PROXY_AGGREGATOR";
/// Key, in [`AGGREGATOR_STATE_BUCKET`], of the aggregators' leadership lease for the health
/// bucket `health_bucket`: `leader.{health_bucket}` (`leader.PROXY_HEALTH` by default). Value:
/// JSON `{ "instance", "host", "pid", "since", "renewed" }` (the active aggregator's
/// micro-service id, host name, process id, RFC 3339 times it took and last renewed the
/// lease; no credentials). Only the aggregator holding it folds; it renews it by
/// compare-and-set every third of `lease_ttl_ms`, and a standby that sees its revision
/// unchanged for `lease_ttl_ms` takes it the same way (docs/aggregator.md, "Fail-over").
pub fn aggregator_leader_key(health_bucket: &str) -> String {
    format!("leader.{health_bucket}")
}
/// Stream of the event ids the aggregator has folded (deduplication across redeliveries
/// and replays; docs/aggregator.md). Default of `aggregator.event_ids_stream`.
pub const AGGREGATOR_EVENT_IDS_STREAM: &str = "PROXY_AGGREGATOR_EVENT_IDS";
/// Key-value bucket `replay --what-if` writes its result to, beside `PROXY_HEALTH`.
pub const HEALTH_REPLAY_BUCKET: &str = "PROXY_HEALTH_REPLAY";
/// Subject of the aggregator micro-service's endpoint that answers with its counters
/// (JSON `StatsSnapshot`; docs/aggregator.md).
pub const AGGREGATOR_STATUS_SUBJECT: &str = "proxybus.aggregator.status";
/// Prefix of the subjects of [`AGGREGATOR_EVENT_IDS_STREAM`]
/// (`proxybus.aggregator.event_ids.{health_bucket}`; docs/aggregator.md).
pub const AGGREGATOR_EVENT_IDS_PREFIX: &str = "proxybus.aggregator.event_ids";
/// Header of a dead-lettered feedback message (`proxy.v1.feedback_dead.>`): why it could
/// not be folded (redacted, at most 256 characters; docs/aggregator.md).
pub const DEAD_REASON_HEADER: &str = "Proxybus-Dead-Reason";
/// Header of a dead-lettered feedback message: its sequence in `PROXY_FEEDBACK`.
pub const DEAD_SEQ_HEADER: &str = "Proxybus-Stream-Seq";
/// Region token of [`health_or_no_region`] for a proxy whose stats name no region
/// (`proxy.v1.health._none`).
pub const NO_REGION: &str = "_none";

/// Header a NATS micro-service error reply carries with its text (ADR-32); async-nats'
/// own constant, re-exported so no part spells it out.
pub use async_nats::service::NATS_SERVICE_ERROR as SERVICE_ERROR_HEADER;
/// Header a NATS micro-service error reply carries with its numeric code (ADR-32): a reply
/// with it is an error, whatever its body.
pub use async_nats::service::NATS_SERVICE_ERROR_CODE as SERVICE_ERROR_CODE_HEADER;

/// Longest token the contract allows.
pub const MAX_TOKEN_LEN: usize = 64;

/// Why a subject or token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// A token is empty, too long or has a character outside `[a-z0-9_-]`.
    #[error("invalid {what} {token:?}: expected 1 to 64 characters of a-z, 0-9, '_' or '-'")]
    InvalidToken {
        /// Which token (`exchange_id`, `region`).
        what: &'static str,
        /// The token, cut to 64 characters.
        token: String,
    },
    /// A connection type other than `http` or `websocket`.
    #[error("unknown connection type {0:?}: expected \"http\" or \"websocket\"")]
    UnknownConnectionType(String),
    /// The subject does not start with the expected prefix.
    #[error("subject {subject:?} does not start with {expected:?}")]
    WrongPrefix {
        /// The subject, cut to 128 characters.
        subject: String,
        /// The prefix that was expected.
        expected: &'static str,
    },
    /// The subject has too few or too many tokens.
    #[error("subject {subject:?} should have {expected} tokens after its prefix")]
    WrongTokenCount {
        /// The subject, cut to 128 characters.
        subject: String,
        /// How many tokens were expected after the prefix.
        expected: usize,
    },
}

fn check_token(what: &'static str, token: &str) -> Result<(), SubjectError> {
    let ok = !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SubjectError::InvalidToken { what, token: token.chars().take(MAX_TOKEN_LEN).collect() })
    }
}

fn shorten(subject: &str) -> String {
    subject.chars().take(128).collect()
}

macro_rules! subject_token {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The token as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = SubjectError;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                check_token($what, &value)?;
                Ok(Self(value))
            }
        }

        impl std::str::FromStr for $name {
            type Err = SubjectError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                check_token($what, s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl From<$name> for String {
            fn from(token: $name) -> Self {
                token.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "pattern": "^[a-z0-9_-]{1,64}$",
                })
            }
        }
    };
}

subject_token!(
    /// An exchange id (`binance`, `coinbase` …): lowercase `[a-z0-9_-]{1,64}`.
    ExchangeId,
    "exchange_id"
);

subject_token!(
    /// A region name (`us-east`, `eu-west` …): `[a-z0-9_-]{1,64}`.
    Region,
    "region"
);

impl Region {
    /// Whether this is [`ANY_REGION`] (`"any"`): the best proxy of any region is wanted.
    pub fn is_any(&self) -> bool {
        self.0 == ANY_REGION
    }
}

/// `proxy.v1.request_region.{region}.{exchange}.{connection_type}`: a request for `region`'s
/// resolvers only.
pub fn regional_request(region: &Region, exchange: &ExchangeId, connection_type: ConnectionType) -> String {
    format!("{REGIONAL_REQUEST_PREFIX}.{region}.{exchange}.{connection_type}")
}

/// `proxy.v1.request_region.{region}.*.*`: what a resolver of `region` answers besides
/// [`REQUEST_WILDCARD`].
pub fn regional_request_wildcard(region: &Region) -> String {
    format!("{REGIONAL_REQUEST_PREFIX}.{region}.*.*")
}

/// `proxy.v1.request.{exchange}.{connection_type}`.
pub fn request(exchange: &ExchangeId, connection_type: ConnectionType) -> String {
    format!("{REQUEST_PREFIX}.{exchange}.{connection_type}")
}

/// `proxy.v1.feedback.{exchange}.{connection_type}`.
pub fn feedback(exchange: &ExchangeId, connection_type: ConnectionType) -> String {
    format!("{FEEDBACK_PREFIX}.{exchange}.{connection_type}")
}

/// `proxy.v1.feedback.operator.{action}.{proxy_id}`: where an operator's event about `proxy` goes.
pub fn operator(action: crate::OperatorAction, proxy: &crate::ProxyId) -> String {
    format!("{OPERATOR_PREFIX}.{action}.{proxy}")
}

/// Parses `proxy.v1.feedback.operator.{action}.{proxy_id}`.
pub fn parse_operator(subject: &str) -> Result<(crate::OperatorAction, crate::ProxyId), SubjectError> {
    let tokens = tokens_after(subject, OPERATOR_PREFIX, 2)?;
    let proxy = tokens[1].parse().map_err(|_| SubjectError::InvalidToken {
        what: "proxy_id",
        token: tokens[1].chars().take(MAX_TOKEN_LEN).collect(),
    })?;
    Ok((tokens[0].parse()?, proxy))
}

/// Whether `subject` is an operator event's (`proxy.v1.feedback.operator.…` with
/// three tokens after `proxy.v1.feedback`), not a feed's feedback.
pub fn is_operator(subject: &str) -> bool {
    subject.strip_prefix(OPERATOR_PREFIX).is_some_and(|rest| rest.starts_with('.') && rest.matches('.').count() == 2)
}

/// `proxy.v1.regional_feedback.{region}.>`: what region `region`'s feedback stream holds.
pub fn regional_feedback_wildcard(region: &Region) -> String {
    format!("{REGIONAL_FEEDBACK_PREFIX}.{region}.>")
}

/// `PROXY_FEEDBACK_{REGION}` (upper case, `-` as `_`): region `region`'s own feedback stream,
/// which the global `PROXY_FEEDBACK` sources.
pub fn regional_feedback_stream(region: &Region) -> String {
    format!("{FEEDBACK_STREAM}_{}", region.as_str().to_ascii_uppercase().replace('-', "_"))
}

/// `PROXY_HEALTH_{REGION}` (upper case, `-` as `_`): region `region`'s read-only mirror of
/// `PROXY_HEALTH`, placed in its cluster so that its readers read locally.
pub fn regional_health_bucket(region: &Region) -> String {
    format!("{HEALTH_BUCKET}_{}", region.as_str().to_ascii_uppercase().replace('-', "_"))
}

/// `proxy.v1.health.{region}`.
pub fn health(region: &Region) -> String {
    format!("{HEALTH_PREFIX}.{region}")
}

/// Where the aggregator publishes a proxy's changed stats: [`health`] of its region, or
/// `proxy.v1.health._none` ([`NO_REGION`]) when it has none.
pub fn health_or_no_region(region: Option<&Region>) -> String {
    match region {
        Some(region) => health(region),
        None => format!("{HEALTH_PREFIX}.{NO_REGION}"),
    }
}

/// `proxy.v1.feedback_dead.{exchange}.{connection_type}` for feedback that could
/// not be folded; tokens that are not valid become `_invalid`.
pub fn feedback_dead(original_subject: &str) -> String {
    match parse_exchange_connection(original_subject, FEEDBACK_PREFIX) {
        Ok((exchange, connection_type)) => format!("{FEEDBACK_DEAD_PREFIX}.{exchange}.{connection_type}"),
        Err(_) if is_operator(original_subject) => format!("{FEEDBACK_DEAD_PREFIX}._operator"),
        Err(_) => format!("{FEEDBACK_DEAD_PREFIX}._invalid"),
    }
}

/// Parses `proxy.v1.request.{exchange}.{connection_type}`.
pub fn parse_request(subject: &str) -> Result<(ExchangeId, ConnectionType), SubjectError> {
    parse_exchange_connection(subject, REQUEST_PREFIX)
}

/// Whether `subject` is exactly `proxy.v1.request.{exchange}.{connection_type}`:
/// [`parse_request`]'s answer for a subject that names these, compared in place
/// (no token list, no owned [`ExchangeId`]). The resolver checks every request's
/// subject against its body this way and parses only a subject that differs, for
/// the error message.
pub fn is_request_for(subject: &str, exchange: &ExchangeId, connection_type: ConnectionType) -> bool {
    subject
        .strip_prefix(REQUEST_PREFIX)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.strip_prefix(exchange.as_str()))
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|rest| rest == connection_type.as_str())
}

/// Parses `proxy.v1.request_region.{region}.{exchange}.{connection_type}`.
pub fn parse_regional_request(subject: &str) -> Result<(Region, ExchangeId, ConnectionType), SubjectError> {
    let tokens = tokens_after(subject, REGIONAL_REQUEST_PREFIX, 3)?;
    Ok((tokens[0].parse()?, tokens[1].parse()?, tokens[2].parse()?))
}

/// Parses `proxy.v1.feedback.{exchange}.{connection_type}`.
pub fn parse_feedback(subject: &str) -> Result<(ExchangeId, ConnectionType), SubjectError> {
    parse_exchange_connection(subject, FEEDBACK_PREFIX)
}

/// Parses `proxy.v1.health.{region}`.
pub fn parse_health(subject: &str) -> Result<Region, SubjectError> {
    let tokens = tokens_after(subject, HEALTH_PREFIX, 1)?;
    tokens[0].parse()
}

fn parse_exchange_connection(
    subject: &str,
    prefix: &'static str,
) -> Result<(ExchangeId, ConnectionType), SubjectError> {
    let tokens = tokens_after(subject, prefix, 2)?;
    Ok((tokens[0].parse()?, tokens[1].parse()?))
}

fn tokens_after<'a>(subject: &'a str, prefix: &'static str, expected: usize) -> Result<Vec<&'a str>, SubjectError> {
    let rest = subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'))
        .ok_or_else(|| SubjectError::WrongPrefix { subject: shorten(subject), expected: prefix })?;
    let tokens: Vec<&str> = rest.split('.').collect();
    if tokens.len() != expected {
        return Err(SubjectError::WrongTokenCount { subject: shorten(subject), expected });
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    #[test]
    fn is_request_for_agrees_with_parse_request() {
        let binance: ExchangeId = "binance".parse().unwrap();
        for subject in [
            "proxy.v1.request.binance.http",
            "proxy.v1.request.binance.websocket",
            "proxy.v1.request.binance",
            "proxy.v1.request.binancex.http",
            "proxy.v1.request.binance.http.extra",
            "proxy.v1.request.binance.HTTP",
            "proxy.v1.requestx.binance.http",
            "proxy.v1.request..binance.http",
            "proxy.v1.feedback.binance.http",
            "",
        ] {
            for connection_type in [ConnectionType::Http, ConnectionType::Websocket] {
                let parsed = parse_request(subject).is_ok_and(|(e, c)| e == binance && c == connection_type);
                assert_eq!(is_request_for(subject, &binance, connection_type), parsed, "{subject} {connection_type}");
            }
        }
    }

    use super::*;

    #[test]
    fn builds_and_parses_every_subject() {
        let kraken: ExchangeId = "kraken".parse().unwrap();
        let region: Region = "eu-west".parse().unwrap();
        assert_eq!(request(&kraken, ConnectionType::Http), "proxy.v1.request.kraken.http");
        assert_eq!(feedback(&kraken, ConnectionType::Websocket), "proxy.v1.feedback.kraken.websocket");
        assert_eq!(health(&region), "proxy.v1.health.eu-west");
        assert_eq!(health_or_no_region(Some(&region)), "proxy.v1.health.eu-west");
        assert_eq!(health_or_no_region(None), "proxy.v1.health._none");
        assert_eq!(aggregator_leader_key(HEALTH_BUCKET), "leader.PROXY_HEALTH");
        assert_eq!(
            parse_feedback("proxy.v1.feedback.kraken.websocket").unwrap(),
            (kraken.clone(), ConnectionType::Websocket)
        );
        assert_eq!(parse_health("proxy.v1.health.eu-west").unwrap(), region);
        let regional = regional_request(&region, &kraken, ConnectionType::Http);
        assert_eq!(regional, "proxy.v1.request_region.eu-west.kraken.http");
        assert_eq!(parse_regional_request(&regional).unwrap(), (region.clone(), kraken, ConnectionType::Http));
        assert_eq!(regional_request_wildcard(&region), "proxy.v1.request_region.eu-west.*.*");
        assert!(parse_request(&regional).is_err(), "a regional subject is not a plain request subject");
        assert!(matches!(
            parse_regional_request("proxy.v1.request_region.eu-west.kraken"),
            Err(SubjectError::WrongTokenCount { .. })
        ));
        assert!(parse_regional_request("proxy.v1.request_region.eu.west.kraken.http").is_err());
        assert!(ANY_REGION.parse::<Region>().unwrap().is_any() && !region.is_any());
        assert_eq!(regional_health_bucket(&region), "PROXY_HEALTH_EU_WEST");
    }

    #[test]
    fn tokens_outside_the_character_set_are_refused() {
        for bad in
            ["", "bin.ance", "bin*", "bin>", ">", "*", "bin ance", "Binance", "bin\tance", "bïnance", &"a".repeat(65)]
        {
            let err = bad.parse::<ExchangeId>().unwrap_err();
            assert!(matches!(err, SubjectError::InvalidToken { what: "exchange_id", .. }), "{bad:?} gave {err:?}");
            assert!(bad.parse::<Region>().is_err(), "{bad:?} accepted as region");
        }
        assert!("a".repeat(64).parse::<ExchangeId>().is_ok());
        assert!("gate_io-2".parse::<ExchangeId>().is_ok());
    }

    #[test]
    fn a_wildcard_token_in_a_subject_is_a_typed_error() {
        let err = parse_request("proxy.v1.request.>.http").unwrap_err();
        assert!(matches!(err, SubjectError::InvalidToken { .. }), "{err:?}");
        let err = parse_request("proxy.v1.request.binance.*").unwrap_err();
        assert_eq!(err, SubjectError::UnknownConnectionType("*".into()));
        let err = parse_request("proxy.v1.request.binance.ftp").unwrap_err();
        assert_eq!(err, SubjectError::UnknownConnectionType("ftp".into()));
    }

    #[test]
    fn wrong_shapes_are_refused() {
        assert!(matches!(parse_request("proxy.v1.feedback.binance.http"), Err(SubjectError::WrongPrefix { .. })));
        assert!(matches!(parse_request("proxy.v1.requestx.binance.http"), Err(SubjectError::WrongPrefix { .. })));
        assert!(matches!(parse_request("proxy.v1.request.binance"), Err(SubjectError::WrongTokenCount { .. })));
        assert!(matches!(parse_request("proxy.v1.request.a.http.extra"), Err(SubjectError::WrongTokenCount { .. })));
        assert!(matches!(parse_request("proxy.v1.request"), Err(SubjectError::WrongPrefix { .. })));
        assert!(matches!(parse_health("proxy.v1.health.us.east"), Err(SubjectError::WrongTokenCount { .. })));
    }

    #[test]
    fn operator_subjects_have_one_token_more_than_feedback() {
        let id = crate::proxy_id("http://10.0.0.1:3128");
        let s = operator(crate::OperatorAction::Drain, &id);
        assert_eq!(s, format!("proxy.v1.feedback.operator.drain.{id}"));
        assert_eq!(parse_operator(&s).unwrap(), (crate::OperatorAction::Drain, id));
        assert!(is_operator(&s));
        assert!(!is_operator("proxy.v1.feedback.operator.http"), "a feed's feedback for an exchange named operator");
        assert!(parse_feedback(&s).is_err(), "never read as a feed's feedback");
        assert!(parse_operator("proxy.v1.feedback.operator.nuke.0011223344556677").is_err());
        assert!(parse_operator("proxy.v1.feedback.operator.ban.not-an-id").is_err());
    }

    #[test]
    fn dead_letter_subject_keeps_valid_tokens_only() {
        assert_eq!(feedback_dead("proxy.v1.feedback.binance.http"), "proxy.v1.feedback_dead.binance.http");
        assert_eq!(feedback_dead("proxy.v1.feedback.a.b.c"), "proxy.v1.feedback_dead._invalid");
        assert!(!feedback_dead("proxy.v1.feedback.x.http").starts_with("proxy.v1.feedback."));
    }

    #[test]
    fn tokens_deserialize_with_validation() {
        let ok: ExchangeId = serde_json::from_str("\"binance\"").unwrap();
        assert_eq!(ok.as_str(), "binance");
        let err = serde_json::from_str::<ExchangeId>("\"bin.ance\"").unwrap_err();
        assert!(err.to_string().contains("invalid exchange_id"), "{err}");
    }
}
