//! Subject and header parsers from arbitrary text (invalid UTF-8 is read lossily).
//!
//! Invariants (the same as `shared/tests/bad_input/subjects.rs`): no parser panics;
//! a subject a parser accepts is exactly what its builder makes of the parsed parts,
//! and each of its tokens after the prefix is 1 to 64 characters of `[a-z0-9_-]`
//! (so no `*`, `>`, whitespace, empty or over-long token is ever accepted);
//! `ExchangeId` and `Region` accept exactly that character set; a dead-letter
//! subject never carries a token of the input that is not valid; a `Content-Type`
//! is accepted exactly when its essence is a MessagePack or JSON type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxybus_shared::codec::DecodeErrorKind;
use proxybus_shared::subject::{self, MAX_TOKEN_LEN};
use proxybus_shared::{Encoding, ExchangeId, Region};

fn valid_token(token: &str) -> bool {
    (1..=MAX_TOKEN_LEN).contains(&token.len())
        && token.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

fn tokens_valid(subject: &str, prefix: &str) -> bool {
    subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|rest| rest.split('.').all(valid_token))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let s = text.as_ref();

    assert_eq!(s.parse::<ExchangeId>().is_ok(), valid_token(s), "{s:?}");
    assert_eq!(s.parse::<Region>().is_ok(), valid_token(s), "{s:?}");
    if let Ok(exchange) = s.parse::<ExchangeId>() {
        assert_eq!(exchange.as_str(), s);
    }

    if let Ok((exchange, connection)) = subject::parse_request(s) {
        assert_eq!(subject::request(&exchange, connection), s);
        assert!(tokens_valid(s, subject::REQUEST_PREFIX), "{s:?}");
    }
    if let Ok((exchange, connection)) = subject::parse_feedback(s) {
        assert_eq!(subject::feedback(&exchange, connection), s);
        assert!(tokens_valid(s, subject::FEEDBACK_PREFIX), "{s:?}");
    }
    if let Ok((region, exchange, connection)) = subject::parse_regional_request(s) {
        assert_eq!(subject::regional_request(&region, &exchange, connection), s);
        assert!(tokens_valid(s, subject::REGIONAL_REQUEST_PREFIX), "{s:?}");
    }
    if let Ok(region) = subject::parse_health(s) {
        assert_eq!(subject::health(&region), s);
        assert!(tokens_valid(s, subject::HEALTH_PREFIX), "{s:?}");
    }
    if let Ok((action, proxy)) = subject::parse_operator(s) {
        assert_eq!(subject::operator(action, &proxy), s);
        assert!(tokens_valid(s, subject::OPERATOR_PREFIX), "{s:?}");
        assert!(subject::is_operator(s));
    }
    if subject::is_operator(s) {
        assert!(s.starts_with(subject::OPERATOR_PREFIX));
    }
    let dead = subject::feedback_dead(s);
    assert!(tokens_valid(&dead, subject::FEEDBACK_DEAD_PREFIX), "{s:?} -> {dead:?}");

    match Encoding::from_content_type(s) {
        Ok(_) => {
            let essence = s.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
            assert!(
                matches!(
                    essence.as_str(),
                    "" | "application/msgpack"
                        | "application/x-msgpack"
                        | "application/vnd.msgpack"
                        | "application/json"
                ),
                "{s:?}"
            );
        }
        Err(err) => assert_eq!(err.kind(), DecodeErrorKind::UnsupportedContentType),
    }
});
