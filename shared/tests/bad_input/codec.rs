//! The codec of every contract message: arbitrary and mangled bytes never panic
//! and fail with a typed `Malformed` error; valid messages round-trip in both
//! encodings; a message decodes the same whichever encoding carries it.

use std::collections::BTreeMap;
use std::fmt::Debug;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proxybus_shared::budget::RateBudget;
use proxybus_shared::codec::{CONTENT_TYPE, DecodeErrorKind};
use proxybus_shared::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

fn token() -> impl Strategy<Value = String> {
    "[a-z0-9_-]{1,64}"
}

fn exchange() -> impl Strategy<Value = ExchangeId> {
    token().prop_map(|t| t.parse().unwrap())
}

fn region() -> impl Strategy<Value = Region> {
    token().prop_map(|t| t.parse().unwrap())
}

fn proxy_id() -> impl Strategy<Value = ProxyId> {
    "[0-9a-f]{16}".prop_map(|t| t.parse().unwrap())
}

fn time() -> impl Strategy<Value = DateTime<Utc>> {
    // Years 1970 to 2100, to the nanosecond.
    (0i64..4_102_444_800, 0u32..1_000_000_000).prop_map(|(s, n)| DateTime::from_timestamp(s, n).unwrap())
}

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![any::<f64>().prop_filter("finite", |x| x.is_finite()), 0.0..1.0, 0.0..10_000.0]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        finite().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn metadata() -> impl Strategy<Value = Metadata> {
    prop::collection::btree_map(any::<String>(), json_value(), 0..3).prop_map(|m| m.into_iter().collect())
}

fn connection() -> impl Strategy<Value = ConnectionType> {
    prop::sample::select(ConnectionType::ALL.to_vec())
}

fn error_kind() -> impl Strategy<Value = ErrorKind> {
    use ErrorKind::*;
    prop::sample::select(vec![
        Timeout,
        Refused,
        Dns,
        Tls,
        ProxyAuth,
        Http403,
        Http418,
        Http429,
        Http451,
        Http5xx,
        WsClosed,
        WsHandshakeRefused,
        Other,
    ])
}

prop_compose! {
    fn request()(
        schema_version in any::<u32>(),
        exchange_id in exchange(),
        connection_type in connection(),
        region in prop::option::of(region()),
        client_id in any::<String>(),
        request_id in prop::option::of(any::<String>()),
        metadata in metadata(),
        proxy_schemes in prop::collection::vec(prop::sample::select(ProxyScheme::ALL.to_vec()), 0..4),
        exclude_proxy_ids in prop::collection::vec(proxy_id(), 0..4),
        session_key in prop::option::of(any::<String>()),
    ) -> ProxyRequest {
        ProxyRequest {
            schema_version, exchange_id, connection_type, region, client_id, request_id, metadata,
            proxy_schemes, exclude_proxy_ids, session_key,
        }
    }
}

prop_compose! {
    fn response()(
        schema_version in any::<u32>(),
        proxy_url in prop::option::of(any::<String>()),
        proxy_id in prop::option::of(proxy_id()),
        strategy in any::<String>(),
        ttl_seconds in any::<u64>(),
        fallback_policy in prop::sample::select(vec![
            FallbackPolicy::DirectConnection, FallbackPolicy::EmbeddedFallback, FallbackPolicy::Fail,
        ]),
        source in prop::sample::select(vec![
            ResponseSource::Service, ResponseSource::Cache, ResponseSource::StaleCache,
            ResponseSource::Embedded, ResponseSource::Direct,
        ]),
        region in prop::option::of(region()),
        request_id in any::<String>(),
        metadata in metadata(),
        resolver_region in prop::option::of(region()),
    ) -> ProxyResponse {
        ProxyResponse {
            schema_version, proxy_url, proxy_id, strategy, ttl_seconds, fallback_policy, source, region,
            request_id, metadata, resolver_region,
        }
    }
}

prop_compose! {
    fn error_reply()(
        schema_version in any::<u32>(),
        code in any::<u16>(),
        error in prop::sample::select(vec![
            ErrorCode::BadRequest, ErrorCode::NoProxyAvailable, ErrorCode::PayloadTooLarge,
            ErrorCode::UpstreamUnavailable, ErrorCode::Internal,
        ]),
        message in any::<String>(),
        request_id in prop::option::of(any::<String>()),
    ) -> ErrorReply {
        ErrorReply { schema_version, code, error, message, request_id }
    }
}

prop_compose! {
    fn feedback_head()(
        schema_version in any::<u32>(),
        event_id in any::<u128>().prop_map(Uuid::from_u128),
        proxy_id in proxy_id(),
        proxy_url in any::<String>(),
        exchange_id in exchange(),
        connection_type in connection(),
        region in prop::option::of(region()),
        phase in prop::sample::select(vec![
            FeedbackPhase::ConnectStart, FeedbackPhase::Connected, FeedbackPhase::Failed,
            FeedbackPhase::Disconnected, FeedbackPhase::Request,
        ]),
        success in any::<bool>(),
        timestamp in time(),
        client_id in any::<String>(),
        probe in any::<bool>(),
    ) -> ProxyFeedback {
        ProxyFeedback {
            schema_version, event_id, proxy_id, proxy_url, exchange_id, connection_type, region, phase,
            success, timestamp, client_id, probe, latency_ms: None, error_kind: None, status_code: None,
            retry_after_seconds: None, error_details: None, ws_close_code: None,
            usage_headers: BTreeMap::new(), connect_count: None,
        }
    }
}

prop_compose! {
    fn feedback()(
        head in feedback_head(),
        latency_ms in prop::option::of(any::<u64>()),
        error_kind in prop::option::of(error_kind()),
        status_code in prop::option::of(any::<u16>()),
        retry_after_seconds in prop::option::of(any::<u64>()),
        error_details in prop::option::of(any::<String>()),
        ws_close_code in prop::option::of(any::<u16>()),
        usage_headers in prop::collection::btree_map(any::<String>(), any::<String>(), 0..3),
        connect_count in prop::option::of(any::<u32>()),
    ) -> ProxyFeedback {
        ProxyFeedback {
            latency_ms, error_kind, status_code, retry_after_seconds, error_details, ws_close_code,
            usage_headers, connect_count, ..head
        }
    }
}

fn operator_action() -> impl Strategy<Value = OperatorAction> {
    prop::sample::select(OperatorAction::ALL.to_vec())
}

prop_compose! {
    fn operator_event()(
        schema_version in any::<u32>(),
        event_id in any::<u128>().prop_map(Uuid::from_u128),
        proxy_id in proxy_id(),
        action in operator_action(),
        exchange_id in prop::option::of(exchange()),
        duration_seconds in prop::option::of(any::<u64>()),
        reason in any::<String>(),
        operator in any::<String>(),
        timestamp in time(),
    ) -> OperatorEvent {
        OperatorEvent {
            schema_version, event_id, proxy_id, action, exchange_id, duration_seconds, reason, operator, timestamp,
        }
    }
}

prop_compose! {
    fn operator_control()(
        action in operator_action(),
        exchange_id in prop::option::of(exchange()),
        until in prop::option::of(time()),
        reason in any::<String>(),
        operator in any::<String>(),
        at in time(),
        seq in any::<u64>(),
    ) -> OperatorControl {
        OperatorControl { action, exchange_id, until, reason, operator, at, seq }
    }
}

prop_compose! {
    fn exchange_health()(
        successes in any::<u64>(),
        failures in any::<u64>(),
        state in prop::sample::select(vec![ExchangeState::Healthy, ExchangeState::Cooldown, ExchangeState::Banned]),
        banned_until in prop::option::of(time()),
        last_error_kind in prop::option::of(error_kind()),
        refusals_in_a_row in any::<u32>(),
        ip_bans in any::<u32>(),
    ) -> ExchangeHealth {
        ExchangeHealth { successes, failures, state, banned_until, last_error_kind, refusals_in_a_row, ip_bans }
    }
}

prop_compose! {
    fn health_head()(
        schema_version in any::<u32>(),
        proxy_id in proxy_id(),
        proxy_url in any::<String>(),
        region in prop::option::of(region()),
        state in prop::sample::select(vec![HealthState::Healthy, HealthState::Degraded, HealthState::Ejected]),
        counts in (any::<u64>(), any::<u64>(), any::<u64>()),
        success_rate in finite(),
        latencies in (prop::option::of(finite()), prop::option::of(finite()), prop::option::of(finite())),
        consecutive_failures in any::<u32>(),
        ejections in any::<u32>(),
        ejected_until in prop::option::of(time()),
        updated_at in time(),
    ) -> HealthStats {
        let mut stats = HealthStats::new(proxy_id, proxy_url, region, updated_at);
        stats.schema_version = schema_version;
        stats.state = state;
        (stats.total, stats.successes, stats.failures) = counts;
        stats.success_rate = success_rate;
        (stats.latency_ewma_ms, stats.latency_p50_ms, stats.latency_p99_ms) = latencies;
        stats.consecutive_failures = consecutive_failures;
        stats.ejections = ejections;
        stats.ejected_until = ejected_until;
        stats
    }
}

prop_compose! {
    fn health()(
        head in health_head(),
        last_error_kind in prop::option::of(error_kind()),
        error_counts in prop::collection::btree_map(error_kind(), any::<u64>(), 0..4),
        exchanges in prop::collection::btree_map(exchange(), exchange_health(), 0..3),
        last_seq in any::<u64>(),
        operator_controls in prop::collection::vec(operator_control(), 0..3),
        last_operator_action in prop::option::of(operator_control()),
    ) -> HealthStats {
        HealthStats {
            last_error_kind, error_counts, exchanges, last_seq, operator_controls, last_operator_action, ..head
        }
    }
}

prop_compose! {
    fn inventory()(
        schema_version in any::<u32>(),
        inventory_id in any::<String>(),
        proxies in prop::collection::vec(
            (proxy_id(), region()).prop_map(|(proxy_id, region)| InventoryProxy { proxy_id, region }), 0..4),
        updated_at in time(),
    ) -> ProxyInventory {
        ProxyInventory { schema_version, inventory_id, proxies, updated_at }
    }
}

prop_compose! {
    fn rate_budget()(
        schema_version in any::<u32>(),
        proxy_id in proxy_id(),
        exchange_id in exchange(),
        weight in (any::<u32>(), any::<u32>(), prop::option::of(time()), any::<u64>()),
        connects in (any::<u32>(), any::<u32>(), prop::option::of(time()), any::<u64>()),
        updated_at in time(),
    ) -> RateBudget {
        RateBudget {
            schema_version, proxy_id, exchange_id,
            weight_used: weight.0, weight_limit: weight.1, weight_window_start: weight.2, weight_window_seconds: weight.3,
            connects_used: connects.0, connect_limit: connects.1, connect_window_start: connects.2,
            connect_window_seconds: connects.3, updated_at,
        }
    }
}

const ENCODINGS: [Encoding; 2] = [Encoding::MsgPack, Encoding::Json];

/// `message` encoded in each encoding decodes back to itself.
fn round_trips<T: Serialize + DeserializeOwned + PartialEq + Debug>(message: &T) -> Result<(), TestCaseError> {
    let codec = Codec::default();
    for encoding in ENCODINGS {
        let bytes = codec.encode(encoding, message).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: T = codec
            .decode(Some(&encoding.headers()), &bytes)
            .map_err(|e| TestCaseError::fail(format!("{encoding:?}: {e}")))?;
        prop_assert_eq!(&back, message, "{:?}", encoding);
    }
    Ok(())
}

/// Decoding `payload` as a `T` in `encoding` does not panic; a failure is a typed
/// `Malformed` error; a success encodes again to bytes that decode to the same
/// bytes (what a decoder accepts, the encoder can carry on).
fn decodes_or_refuses<T>(encoding: Encoding, payload: &[u8]) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let codec = Codec::default();
    match codec.decode_as::<T>(encoding, payload) {
        Err(err) => prop_assert_eq!(err.kind(), DecodeErrorKind::Malformed, "{}", err),
        Ok(decoded) => {
            let once = codec.encode(encoding, &decoded).unwrap();
            let again: T = codec
                .decode_as(encoding, &once)
                .map_err(|e| TestCaseError::fail(format!("{decoded:?} re-encoded does not decode: {e}")))?;
            prop_assert_eq!(codec.encode(encoding, &again).unwrap(), once);
        }
    }
    Ok(())
}

/// Every message type's decoder, in both encodings, on `payload`.
fn every_decoder(payload: &[u8]) -> Result<(), TestCaseError> {
    for encoding in ENCODINGS {
        decodes_or_refuses::<ProxyRequest>(encoding, payload)?;
        decodes_or_refuses::<ProxyResponse>(encoding, payload)?;
        decodes_or_refuses::<ErrorReply>(encoding, payload)?;
        decodes_or_refuses::<ProxyFeedback>(encoding, payload)?;
        decodes_or_refuses::<HealthStats>(encoding, payload)?;
        decodes_or_refuses::<OperatorEvent>(encoding, payload)?;
        decodes_or_refuses::<ProxyInventory>(encoding, payload)?;
        decodes_or_refuses::<RateBudget>(encoding, payload)?;
    }
    Ok(())
}

fn tree<T: Serialize>(message: T) -> Value {
    serde_json::to_value(message).unwrap()
}

/// A valid message of any contract type, as its JSON tree.
fn any_message() -> impl Strategy<Value = Value> {
    prop_oneof![
        request().prop_map(tree),
        response().prop_map(tree),
        error_reply().prop_map(tree),
        feedback().prop_map(tree),
        health().prop_map(tree),
        operator_event().prop_map(tree),
        inventory().prop_map(tree),
        rate_budget().prop_map(tree),
    ]
}

/// A change to one field of a message's JSON tree: removed, or given another value.
fn mangle(mut message: Value, field: prop::sample::Index, replacement: Option<Value>) -> Value {
    if let Value::Object(map) = &mut message
        && !map.is_empty()
    {
        let key = map.keys().nth(field.index(map.len())).unwrap().clone();
        match replacement {
            Some(value) => map.insert(key, value),
            None => map.remove(&key),
        };
    }
    message
}

fn decode_json_then_msgpack<T>(tree: &Value) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let codec = Codec::default();
    let json = serde_json::to_vec(tree).unwrap();
    let packed = rmp_serde::to_vec_named(tree).unwrap();
    let from_json = codec.decode_as::<T>(Encoding::Json, &json);
    let from_msgpack = codec.decode_as::<T>(Encoding::MsgPack, &packed);
    match (from_json, from_msgpack) {
        (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
        (Err(a), Err(b)) => {
            prop_assert_eq!(a.kind(), DecodeErrorKind::Malformed);
            prop_assert_eq!(b.kind(), DecodeErrorKind::Malformed);
        }
        (a, b) => prop_assert!(false, "JSON gave {:?} but MessagePack {:?} for {}", a, b, tree),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every valid message of every contract type survives encode -> decode
    /// unchanged, in MessagePack and in JSON (fails on a field that one encoding
    /// loses or alters: a float, a date, a skipped default, a null list).
    #[test]
    fn every_message_round_trips(
        request in request(), response in response(), reply in error_reply(), feedback in feedback(),
        health in health(), event in operator_event(), inventory in inventory(), budget in rate_budget(),
    ) {
        round_trips(&request)?;
        round_trips(&response)?;
        round_trips(&reply)?;
        round_trips(&feedback)?;
        round_trips(&health)?;
        round_trips(&event)?;
        round_trips(&inventory)?;
        round_trips(&budget)?;
    }

    /// Arbitrary bytes, fed to every decoder in both encodings, never panic and
    /// either decode (and then re-encode stably) or fail with `Malformed`.
    #[test]
    fn arbitrary_bytes_decode_or_fail_typed(payload in prop::collection::vec(any::<u8>(), 0..256)) {
        every_decoder(&payload)?;
    }

    /// A valid message's bytes, truncated, with bytes overwritten or inserted,
    /// still never panic any decoder and decode or fail typed.
    #[test]
    fn mangled_messages_decode_or_fail_typed(
        message in any_message(),
        json in any::<bool>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut bytes = if json { serde_json::to_vec(&message).unwrap() } else { rmp_serde::to_vec_named(&message).unwrap() };
        for (at, byte, how) in edits {
            if bytes.is_empty() { break; }
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => bytes.truncate(i),
            }
        }
        every_decoder(&bytes)?;
    }

    /// A message with one field removed or replaced by any JSON value decodes the
    /// same way (the same message, or a `Malformed` error) from JSON and from
    /// MessagePack: the encoding never changes what is accepted.
    #[test]
    fn both_encodings_accept_the_same_messages(
        message in any_message(),
        field in any::<prop::sample::Index>(),
        replacement in prop::option::of(json_value()),
    ) {
        let tree = mangle(message, field, replacement);
        decode_json_then_msgpack::<ProxyRequest>(&tree)?;
        decode_json_then_msgpack::<ProxyResponse>(&tree)?;
        decode_json_then_msgpack::<ErrorReply>(&tree)?;
        decode_json_then_msgpack::<ProxyFeedback>(&tree)?;
        decode_json_then_msgpack::<HealthStats>(&tree)?;
        decode_json_then_msgpack::<OperatorEvent>(&tree)?;
        decode_json_then_msgpack::<ProxyInventory>(&tree)?;
        decode_json_then_msgpack::<RateBudget>(&tree)?;
    }

    /// Any `Content-Type` header value never panics the codec: the essences of
    /// MessagePack and JSON select their encoding, anything else is refused with
    /// `UnsupportedContentType` before the payload is read.
    #[test]
    fn any_content_type_selects_an_encoding_or_is_refused(
        value in prop_oneof![
            any::<String>(),
            "(application/(json|msgpack|x-msgpack|vnd\\.msgpack|xml)|text/plain|)( ?; ?charset=[a-z0-9-]{0,8})?",
            "[Aa][Pp][Pp][Ll][Ii][Cc][Aa][Tt][Ii][Oo][Nn]/[JjSsOoNn]{4}",
        ],
    ) {
        let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        let expected = match essence.as_str() {
            "" | "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => Some(Encoding::MsgPack),
            "application/json" => Some(Encoding::Json),
            _ => None,
        };
        prop_assert_eq!(Encoding::from_content_type(&value).ok(), expected);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(CONTENT_TYPE, value.as_str());
        let codec = Codec::default();
        let body = codec.encode(Encoding::Json, &ProxyRequest::new("binance".parse().unwrap(), ConnectionType::Http, "c")).unwrap();
        match codec.decode::<ProxyRequest>(Some(&headers), &body) {
            Err(err) if expected.is_none() => prop_assert_eq!(err.kind(), DecodeErrorKind::UnsupportedContentType),
            Err(err) => prop_assert_eq!(err.kind(), DecodeErrorKind::Malformed),
            Ok(_) => prop_assert_eq!(expected, Some(Encoding::Json)),
        }
    }
}

/// An enum given by its index instead of its name — `"error_kind": 0`, which MessagePack
/// can carry and serde's derive reads as the first variant — is refused by both
/// encodings, as is an integer map key naming an enum (`error_counts`). Found by
/// `both_encodings_accept_the_same_messages` on a fresh clone.
#[test]
fn an_enum_given_by_its_index_is_refused_by_both_encodings() {
    let feedback = ProxyFeedback {
        error_kind: Some(ErrorKind::Refused),
        ..ProxyFeedback::new(
            "http://127.0.0.1:3128",
            "binance".parse().unwrap(),
            ConnectionType::Http,
            FeedbackPhase::Failed,
            false,
            "feed-1",
        )
    };
    let codec = Codec::default();
    let mut tree = tree(&feedback);
    for (field, index) in [("error_kind", 0), ("connection_type", 1), ("phase", 2)] {
        let mut mangled = tree.clone();
        mangled[field] = Value::from(index);
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let bytes = match encoding {
                Encoding::Json => serde_json::to_vec(&mangled).unwrap(),
                Encoding::MsgPack => rmp_serde::to_vec_named(&mangled).unwrap(),
            };
            let err = codec.decode_as::<ProxyFeedback>(encoding, &bytes).unwrap_err();
            assert_eq!(err.kind(), DecodeErrorKind::Malformed, "{field} = {index} in {encoding:?}");
        }
    }
    // The names still decode, in both encodings, to the same message.
    tree["error_kind"] = Value::from("timeout");
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let bytes = match encoding {
            Encoding::Json => serde_json::to_vec(&tree).unwrap(),
            Encoding::MsgPack => rmp_serde::to_vec_named(&tree).unwrap(),
        };
        let decoded = codec.decode_as::<ProxyFeedback>(encoding, &bytes).unwrap();
        assert_eq!(decoded.error_kind, Some(ErrorKind::Timeout));
    }
    // One more of the kind, in another message: a proxy scheme given by its index in a
    // request's `proxy_schemes` is refused by both encodings too; its name is read.
    let request = ProxyRequest::new("binance".parse().unwrap(), ConnectionType::Http, "feed-1");
    let mut request_tree = serde_json::to_value(&request).unwrap();
    for (schemes, accepted) in
        [(Value::from(vec![0]), None), (Value::from(vec!["socks5h"]), Some(ProxyScheme::Socks5h))]
    {
        request_tree["proxy_schemes"] = schemes;
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let bytes = match encoding {
                Encoding::Json => serde_json::to_vec(&request_tree).unwrap(),
                Encoding::MsgPack => rmp_serde::to_vec_named(&request_tree).unwrap(),
            };
            let decoded = codec.decode_as::<ProxyRequest>(encoding, &bytes);
            match accepted {
                None => assert_eq!(decoded.unwrap_err().kind(), DecodeErrorKind::Malformed, "{encoding:?}"),
                Some(scheme) => assert_eq!(decoded.unwrap().proxy_schemes, [scheme], "{encoding:?}"),
            }
        }
    }
    // A map keyed by an enum: an integer key, which only MessagePack can carry, is refused
    // rather than read as the first variant (a JSON key is a string: "0" is an unknown
    // name, read as `other` like any unknown kind).
    let mut counts = BTreeMap::new();
    counts.insert(0_u8, 3_u64);
    let packed = rmp_serde::to_vec_named(&counts).unwrap();
    assert!(rmp_serde::from_slice::<BTreeMap<ErrorKind, u64>>(&packed).is_err());
    let from_json: BTreeMap<ErrorKind, u64> = serde_json::from_str(r#"{"0": 3}"#).unwrap();
    assert_eq!(from_json.into_iter().collect::<Vec<_>>(), [(ErrorKind::Other, 3)]);
}
