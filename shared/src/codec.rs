//! Encoding of messages on the bus.
//!
//! MessagePack with named fields (`rmp_serde::to_vec_named`) by default, so any
//! msgpack library decodes a message into a map; JSON when the message carries
//! `Content-Type: application/json`. Decoding never panics: every failure is a
//! [`DecodeError`] whose [`kind`](DecodeError::kind) a caller can match.
//!
//! # Examples
//! ```
//! use proxybus_shared::{Codec, ConnectionType, Encoding, ProxyRequest};
//! let codec = Codec::default();
//! let request = ProxyRequest::new("binance".parse().unwrap(), ConnectionType::Http, "feed-1");
//! let bytes = codec.encode(Encoding::MsgPack, &request).unwrap();
//! let back: ProxyRequest = codec.decode_as(Encoding::MsgPack, &bytes).unwrap();
//! assert_eq!(back, request);
//! ```

use async_nats::HeaderMap;
use async_nats::header::HeaderName;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The `Content-Type` header name.
pub const CONTENT_TYPE: &str = "Content-Type";
/// [`CONTENT_TYPE`] as a NATS header name, made once: looking a header up or
/// inserting it by `&str` checks the name character by character and allocates a
/// custom name each time, which was 3 % of the resolver's samples answering cache
/// hits (docs/benchmarks.md, round 5).
const CONTENT_TYPE_HEADER: HeaderName = HeaderName::from_static(CONTENT_TYPE);
/// Content type of MessagePack payloads.
pub const MSGPACK_CONTENT_TYPE: &str = "application/msgpack";
/// Content type of JSON payloads.
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// Deepest nesting of arrays and maps a MessagePack payload may have: serde_json's
/// recursion limit, so both encodings refuse the same messages.
pub const MAX_DEPTH: usize = 128;
/// Bytes reserved for an encoded message before encoding: a `ProxyResponse` is about
/// 300 bytes in MessagePack and 450 in JSON; larger messages grow the buffer as usual.
pub const ENCODE_CAPACITY: usize = 512;
/// Default limit of a payload the codec decodes (64 KiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;

/// How a payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// MessagePack with named fields (the default).
    #[default]
    MsgPack,
    /// JSON.
    Json,
}

impl Encoding {
    /// The encoding a message's headers announce; no `Content-Type` means MessagePack.
    ///
    /// NATS header names are case-sensitive (ADR-4), but HTTP's are not and clients
    /// built on HTTP habits send `content-type` or `CONTENT-TYPE`: when `Content-Type`
    /// itself is absent, a name equal to it ignoring ASCII case is read instead, so a
    /// JSON request is never taken for MessagePack because of how its header is spelled.
    pub fn from_headers(headers: Option<&HeaderMap>) -> Result<Self, DecodeError> {
        let Some(headers) = headers else { return Ok(Encoding::MsgPack) };
        // One pass over the (one or two) headers rather than a lookup: a lookup
        // hashes the name with SipHash, 380 instructions a request under callgrind,
        // more than reading the header (docs/benchmarks.md, round 6).
        let mut loose = None;
        for (name, values) in headers.iter() {
            let name: &str = name.as_ref();
            if name == CONTENT_TYPE {
                loose = values.first();
                break;
            }
            if loose.is_none() && name.eq_ignore_ascii_case(CONTENT_TYPE) {
                loose = values.first();
            }
        }
        match loose {
            None => Ok(Encoding::MsgPack),
            Some(value) => Self::from_content_type(value.as_str()),
        }
    }

    /// The encoding named by a `Content-Type` value (parameters such as `charset` are ignored).
    pub fn from_content_type(value: &str) -> Result<Self, DecodeError> {
        // The values proxybus's own clients send, compared first as they are.
        match value {
            MSGPACK_CONTENT_TYPE => return Ok(Encoding::MsgPack),
            JSON_CONTENT_TYPE => return Ok(Encoding::Json),
            _ => {}
        }
        // Compared without lower-casing into a new string: this runs for every request.
        let essence = value.split(';').next().unwrap_or_default().trim();
        let is = |name: &str| essence.eq_ignore_ascii_case(name);
        if essence.is_empty()
            || is(MSGPACK_CONTENT_TYPE)
            || is("application/x-msgpack")
            || is("application/vnd.msgpack")
        {
            Ok(Encoding::MsgPack)
        } else if is(JSON_CONTENT_TYPE) {
            Ok(Encoding::Json)
        } else {
            Err(DecodeError::UnsupportedContentType(value.chars().take(64).collect()))
        }
    }

    /// The `Content-Type` value of this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::MsgPack => MSGPACK_CONTENT_TYPE,
            Encoding::Json => JSON_CONTENT_TYPE,
        }
    }

    /// Headers that carry this encoding's `Content-Type`: a copy of a map built
    /// once, which skips hashing the name into a new map for every reply.
    pub fn headers(self) -> HeaderMap {
        static MAPS: std::sync::LazyLock<[HeaderMap; 2]> = std::sync::LazyLock::new(|| {
            [Encoding::MsgPack, Encoding::Json].map(|encoding| {
                let mut headers = HeaderMap::new();
                headers.insert(CONTENT_TYPE_HEADER, encoding.content_type());
                headers
            })
        });
        match self {
            Encoding::MsgPack => MAPS[0].clone(),
            Encoding::Json => MAPS[1].clone(),
        }
    }
}

/// Broad class of a decode failure, for matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// The payload is over the limit.
    TooLarge,
    /// The `Content-Type` is neither MessagePack nor JSON.
    UnsupportedContentType,
    /// The bytes are not a valid message of the expected type.
    Malformed,
}

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The payload is over the codec's limit.
    #[error("payload of {size} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// Size of the payload.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The `Content-Type` header names an encoding proxybus does not speak.
    #[error("unsupported content type {0:?}: expected application/msgpack or application/json")]
    UnsupportedContentType(String),
    /// Invalid MessagePack, or MessagePack of the wrong shape.
    #[error("malformed msgpack: {0}")]
    MsgPack(#[from] rmp_serde::decode::Error),
    /// Invalid JSON, or JSON of the wrong shape.
    #[error("malformed json: {0}")]
    Json(#[from] serde_json::Error),
}

impl DecodeError {
    /// The class of this error.
    pub fn kind(&self) -> DecodeErrorKind {
        match self {
            DecodeError::TooLarge { .. } => DecodeErrorKind::TooLarge,
            DecodeError::UnsupportedContentType(_) => DecodeErrorKind::UnsupportedContentType,
            DecodeError::MsgPack(_) | DecodeError::Json(_) => DecodeErrorKind::Malformed,
        }
    }
}

/// Why a message could not be encoded (only types that serde cannot express fail).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// MessagePack encoding failed.
    #[error("msgpack encoding failed: {0}")]
    MsgPack(#[from] rmp_serde::encode::Error),
    /// JSON encoding failed.
    #[error("json encoding failed: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encoder and decoder of contract messages with a payload limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    max_payload: usize,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl Codec {
    /// A codec that refuses payloads over `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        Self { max_payload }
    }

    /// The payload limit in bytes.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Decodes a payload in the encoding its headers announce.
    pub fn decode<T: DeserializeOwned>(&self, headers: Option<&HeaderMap>, payload: &[u8]) -> Result<T, DecodeError> {
        self.check_size(payload)?;
        self.decode_as(Encoding::from_headers(headers)?, payload)
    }

    /// Decodes a payload in the given encoding.
    pub fn decode_as<T: DeserializeOwned>(&self, encoding: Encoding, payload: &[u8]) -> Result<T, DecodeError> {
        self.check_size(payload)?;
        match encoding {
            Encoding::MsgPack => {
                // rmp-serde's own limit (1 024) still overflows a 2 MiB task stack when the
                // nesting is decoded into `serde_json::Value` (`metadata`): a request nested
                // 10 000 deep aborted the resolver's process (tests/tests/bad_input.rs).
                let mut decoder = rmp_serde::Deserializer::from_read_ref(payload);
                decoder.set_max_depth(MAX_DEPTH);
                Ok(T::deserialize(&mut decoder)?)
            }
            Encoding::Json => Ok(serde_json::from_slice(payload)?),
        }
    }

    /// Encodes a message (MessagePack with named fields, or JSON).
    pub fn encode<T: Serialize>(&self, encoding: Encoding, message: &T) -> Result<Bytes, EncodeError> {
        // Room for a whole answer up front: growing from empty reallocated four or
        // five times per reply (`perf` of `resolve-hit`, docs/benchmarks.md).
        let mut buffer = Vec::with_capacity(ENCODE_CAPACITY);
        self.encode_into(encoding, &mut buffer, message)?;
        Ok(buffer.into())
    }

    /// Appends `message` in `encoding` to `buffer` (what [`encode`](Self::encode)
    /// returns, written where the caller wants it: after bytes it already holds).
    ///
    /// # Errors
    /// As [`encode`](Self::encode); `buffer` may then hold part of the message.
    pub fn encode_into<T: Serialize>(
        &self,
        encoding: Encoding,
        buffer: &mut Vec<u8>,
        message: &T,
    ) -> Result<(), EncodeError> {
        match encoding {
            Encoding::MsgPack => rmp_serde::encode::write_named(buffer, message)?,
            Encoding::Json => serde_json::to_writer(buffer, message)?,
        }
        Ok(())
    }

    fn check_size(&self, payload: &[u8]) -> Result<(), DecodeError> {
        if payload.len() > self.max_payload {
            return Err(DecodeError::TooLarge { size: payload.len(), max: self.max_payload });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;

    fn request() -> ProxyRequest {
        ProxyRequest::new("binance".parse().unwrap(), ConnectionType::Websocket, "cryptofeed-host-1")
    }

    #[test]
    fn msgpack_uses_named_fields_and_round_trips() {
        let codec = Codec::default();
        let bytes = codec.encode(Encoding::MsgPack, &request()).unwrap();
        let value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        let map = value.as_map().expect("a msgpack map, not an array");
        let keys: Vec<_> = map.iter().filter_map(|(k, _)| k.as_str()).collect();
        assert!(keys.contains(&"exchange_id") && keys.contains(&"connection_type"), "{keys:?}");
        let conn = map.iter().find(|(k, _)| k.as_str() == Some("connection_type")).unwrap();
        assert_eq!(conn.1.as_str(), Some("websocket"), "enums travel as their names");
        assert_eq!(codec.decode::<ProxyRequest>(None, &bytes).unwrap(), request());
    }

    #[test]
    fn a_reply_view_encodes_to_the_bytes_of_the_response_it_stands_for() {
        let mut metadata = Metadata::new();
        metadata.insert("pool".into(), serde_json::json!({"strategy": "p2c_ewma", "weights": [1, 2.5]}));
        let shared = ProxyResponse {
            schema_version: 1,
            proxy_url: Some("http://user:pw@198.51.100.7:3128".into()),
            proxy_id: Some("0123456789abcdef".parse().unwrap()),
            strategy: "p2c_ewma".into(),
            ttl_seconds: 300,
            fallback_policy: FallbackPolicy::EmbeddedFallback,
            source: ResponseSource::Service,
            region: Some("eu-west".parse().unwrap()),
            request_id: String::new(),
            metadata,
            resolver_region: None,
        };
        let region: crate::Region = "us-east".parse().unwrap();
        for resolver_region in [None, Some(&region)] {
            let mut full = shared.clone();
            full.source = ResponseSource::Cache;
            full.ttl_seconds = 17;
            full.request_id = "req-1".into();
            full.resolver_region = resolver_region.cloned();
            let view = shared.reply_view(ResponseSource::Cache, 17, "req-1", resolver_region);
            let codec = Codec::default();
            for encoding in [Encoding::MsgPack, Encoding::Json] {
                let from_view = codec.encode(encoding, &view).unwrap();
                assert_eq!(from_view, codec.encode(encoding, &full).unwrap(), "{encoding:?}, {resolver_region:?}");
                assert_eq!(codec.decode_as::<ProxyResponse>(encoding, &from_view).unwrap(), full);
            }
        }
    }

    #[test]
    fn json_content_type_selects_json() {
        let codec = Codec::default();
        let headers = Encoding::Json.headers();
        let body = br#"{"exchange_id":"kraken","connection_type":"http","client_id":"c","extra":"ignored"}"#;
        let decoded: ProxyRequest = codec.decode(Some(&headers), body).unwrap();
        assert_eq!(decoded.exchange_id.as_str(), "kraken");
        assert_eq!(decoded.schema_version, 1, "missing schema_version decodes as 1");
        let mut with_charset = HeaderMap::new();
        with_charset.insert(CONTENT_TYPE, "Application/JSON; charset=utf-8");
        assert_eq!(Encoding::from_headers(Some(&with_charset)).unwrap(), Encoding::Json);
    }

    #[test]
    fn the_content_type_header_is_found_however_its_name_is_spelled() {
        // As nats-py sends a dict written with HTTP habits: {"content-type": "application/json"}.
        for name in ["content-type", "CONTENT-TYPE", "content-Type"] {
            let mut headers = HeaderMap::new();
            headers.insert(name, "application/json");
            assert_eq!(Encoding::from_headers(Some(&headers)).unwrap(), Encoding::Json, "{name}");
            let mut unknown = HeaderMap::new();
            unknown.insert(name, "text/plain");
            assert!(Encoding::from_headers(Some(&unknown)).is_err(), "{name}: an unknown type is refused, not ignored");
        }
        // The exact name wins over another spelling; other headers are not read as it.
        let mut both = HeaderMap::new();
        both.insert("content-type", "application/json");
        both.insert(CONTENT_TYPE, "application/msgpack");
        assert_eq!(Encoding::from_headers(Some(&both)).unwrap(), Encoding::MsgPack);
        let mut other = HeaderMap::new();
        other.insert("Content-Types", "application/json");
        other.insert("Nats-Msg-Id", "application/json");
        assert_eq!(Encoding::from_headers(Some(&other)).unwrap(), Encoding::MsgPack);
        assert_eq!(Encoding::from_headers(Some(&HeaderMap::new())).unwrap(), Encoding::MsgPack);
    }

    #[test]
    fn truncated_msgpack_is_a_typed_error() {
        let codec = Codec::default();
        let bytes = codec.encode(Encoding::MsgPack, &request()).unwrap();
        for cut in 0..bytes.len() {
            let err = codec.decode::<ProxyRequest>(None, &bytes[..cut]).unwrap_err();
            assert_eq!(err.kind(), DecodeErrorKind::Malformed, "cut at {cut}: {err}");
        }
    }

    #[test]
    fn json_with_wrong_types_is_a_typed_error() {
        let codec = Codec::default();
        let body = br#"{"exchange_id":42,"connection_type":"http","client_id":"c"}"#;
        let err = codec.decode_as::<ProxyRequest>(Encoding::Json, body).unwrap_err();
        assert!(matches!(err, DecodeError::Json(_)), "{err:?}");
        let body = br#"{"exchange_id":"binance","connection_type":"ftp","client_id":"c"}"#;
        let err = codec.decode_as::<ProxyRequest>(Encoding::Json, body).unwrap_err();
        assert!(err.to_string().contains("ftp"), "{err}");
        let body = br#"{"exchange_id":"bin.ance","connection_type":"http","client_id":"c"}"#;
        assert_eq!(
            codec.decode_as::<ProxyRequest>(Encoding::Json, body).unwrap_err().kind(),
            DecodeErrorKind::Malformed
        );
    }

    #[test]
    fn a_10_mib_payload_is_refused_before_parsing() {
        let codec = Codec::default();
        let payload = vec![0x90_u8; 10 * 1024 * 1024];
        let err = codec.decode::<ProxyRequest>(None, &payload).unwrap_err();
        assert!(
            matches!(err, DecodeError::TooLarge { size, max } if size == 10 * 1024 * 1024 && max == DEFAULT_MAX_PAYLOAD)
        );
        assert_eq!(err.kind(), DecodeErrorKind::TooLarge);
        let roomy = Codec::new(20 * 1024 * 1024);
        assert_eq!(roomy.decode::<ProxyRequest>(None, &payload).unwrap_err().kind(), DecodeErrorKind::Malformed);
    }

    #[test]
    fn unknown_content_type_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, "text/xml");
        let err = Codec::default().decode::<ProxyRequest>(Some(&headers), b"<x/>").unwrap_err();
        assert_eq!(err.kind(), DecodeErrorKind::UnsupportedContentType);
    }

    #[test]
    fn negative_latency_and_bad_proxy_id_are_refused() {
        let codec = Codec::default();
        let event = r#"{"event_id":"6f1c9a4e-2b0d-4b8e-9a53-0c7f5d7a1e11","proxy_id":"0011223344556677",
            "proxy_url":"http://h:1","exchange_id":"binance","connection_type":"http","phase":"failed",
            "success":false,"latency_ms":-5,"timestamp":"2026-01-01T00:00:00Z","client_id":"c"}"#;
        assert!(codec.decode_as::<ProxyFeedback>(Encoding::Json, event.as_bytes()).is_err());
        let fixed = event.replace("-5", "5");
        assert!(codec.decode_as::<ProxyFeedback>(Encoding::Json, fixed.as_bytes()).is_ok());
        let bad_id = fixed.replace("0011223344556677", "../../etc/passwd");
        assert!(codec.decode_as::<ProxyFeedback>(Encoding::Json, bad_id.as_bytes()).is_err());
    }

    #[test]
    fn msgpack_nested_deeper_than_json_allows_is_refused_not_a_stack_overflow() {
        // {"exchange_id":"binance","connection_type":"http","client_id":"f","metadata":{"x":[[[…]]]}}
        let request = ProxyRequest::new("binance".parse().unwrap(), ConnectionType::Http, "f");
        let shallow = |depth: usize| {
            let mut body = rmp_serde::to_vec_named(&serde_json::json!({
                "exchange_id": request.exchange_id, "connection_type": "http", "client_id": "f"
            }))
            .unwrap();
            body[0] = 0x84;
            body.extend(rmp_serde::to_vec(&"metadata").unwrap());
            body.push(0x81);
            body.extend(rmp_serde::to_vec(&"x").unwrap());
            body.extend(std::iter::repeat_n(0x91, depth));
            body.push(0xc0);
            body
        };
        let codec = Codec::default();
        assert!(codec.decode_as::<ProxyRequest>(Encoding::MsgPack, &shallow(100)).is_ok());
        let err = codec.decode_as::<ProxyRequest>(Encoding::MsgPack, &shallow(10_000)).unwrap_err();
        assert_eq!(err.kind(), DecodeErrorKind::Malformed);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let codec = Codec::default();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..512 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            assert!(codec.decode_as::<ProxyFeedback>(Encoding::MsgPack, &bytes).is_err());
            assert!(codec.decode_as::<HealthStats>(Encoding::Json, &bytes).is_err());
        }
    }
}
