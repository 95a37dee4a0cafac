//! The part of proxybus that every other part links: the wire contract of
//! `shared/CONTRACT.md` as Rust types, the codec that puts them on the bus, the
//! subjects they travel on, proxy identity and credential redaction, the
//! configuration tree of the seed design, NATS connection options and telemetry.
//!
//! # Layout
//! - [`messages`]: `ProxyRequest`, `ProxyResponse`, `ErrorReply`, `ProxyFeedback`,
//!   `HealthStats` and their enums.
//! - [`codec`]: MessagePack (named fields) by default, JSON when the
//!   `Content-Type` header says so; typed decode errors and a payload limit.
//! - [`subject`]: validated subject tokens (`ExchangeId`, `Region`) and the
//!   builders and parsers of `proxy.v1.*` subjects.
//! - [`proxy_url`]: `ProxyUrl` (the one parser of proxy URLs), `ProxyScheme`,
//!   `proxy_id` (first 8 bytes of SHA-256, hex) and the one redactor of URLs and text.
//! - [`config`]: `ProxySettings` / `ExternalProxyServiceConfig` loaded from a TOML
//!   file and `CRYPTOFEED_PROXY_*` variables taken from an injected source.
//! - [`feedback`]: stream `PROXY_FEEDBACK` (create or update) and the feedback
//!   publish with `Nats-Msg-Id: {event_id}` that waits for the JetStream ack.
//! - [`health`]: the health model — who an outcome is about, how long an
//!   exchange's verdict bars a proxy, the ejection cap, what a record means now,
//!   which of two records is newer. Every part applies these rules; readers load
//!   and follow `PROXY_HEALTH` with `kv::follow_health` (a KV watch).
//! - [`breaker`]: the circuit breaker every upstream call goes through.
//! - [`budget`]: rate budgets per (proxy, exchange) in KV bucket `PROXY_BUDGETS`:
//!   limits and their sources, what a usage report does, whether a proxy has room.
//! - [`embedded`]: choosing a proxy from the embedded `ProxySettings` (fallback).
//! - [`http`]: the HTTP client for proxy services (auth headers, TLS, pooling).
//! - [`kv`]: opening key-value buckets, loading and following `PROXY_HEALTH` and
//!   `PROXY_INVENTORY`.
//! - [`nats`]: `NatsSettings` from `NATS_URL` and credentials, and `connect` (which refuses
//!   servers older than 2.11).
//! - [`nats_server`]: finding the `nats-server` binary, and the minimum server version.
//! - [`schema`]: JSON Schemas of the messages, generated from the types.
//! - [`shutdown`]: the SIGINT/SIGTERM every binary stops on.
//! - [`telemetry`]: tracing set-up, plain or JSON.
//! - `testing` (the crate's tests, and feature `testing`): test oracles shared with the fuzz
//!   targets, and a buffer that keeps what a test's code logged.

/// `Serialize`/`Deserialize` for unit-only contract enums derived with
/// `#[serde(remote = "Self")]`: serialized as derived (the variant's name), and read
/// from a **name only**. serde's derive also takes a variant's index (an integer) for
/// its name, which MessagePack can carry and JSON cannot: `"error_kind": 0` would be
/// read as `timeout` from MessagePack and refused from JSON. The contract's enums are
/// strings (shared/CONTRACT.md), so both encodings now refuse the integer alike
/// (`shared/tests/bad_input/codec.rs`, `both_encodings_accept_the_same_messages`).
macro_rules! by_name_only {
    ($($t:ty),* $(,)?) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                <$t>::serialize(self, serializer)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Name;
                impl serde::de::Visitor<'_> for Name {
                    type Value = $t;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str(concat!("the name of a ", stringify!($t)))
                    }
                    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<$t, E> {
                        <$t>::deserialize(serde::de::value::StrDeserializer::<E>::new(name))
                    }
                }
                deserializer.deserialize_str(Name)
            }
        }
    )*};
}
pub(crate) use by_name_only;

pub mod breaker;
pub mod budget;
pub mod codec;
pub mod config;
pub mod embedded;
pub mod feedback;
pub mod health;
pub mod http;
pub mod kv;
pub mod messages;
pub mod nats;
pub mod nats_server;
pub mod proxy_url;
pub mod schema;
pub mod shutdown;
pub mod subject;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use codec::{Codec, DecodeError, Encoding};
pub use messages::*;
pub use proxy_url::{ProxyHost, ProxyScheme, ProxyUrl, ProxyUrlError, proxy_id, redact_text, redact_url};
pub use subject::{ExchangeId, Region, SubjectError};

/// Version of the wire contract these types speak (`schema_version`).
pub const SCHEMA_VERSION: u32 = 1;
