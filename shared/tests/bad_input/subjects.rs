//! Subject parsers and subject tokens: arbitrary strings never panic; a parser
//! accepts a subject exactly when an independent oracle says it is well formed,
//! and what it accepts round-trips through the subject's builder.

use proptest::prelude::*;
use proxybus_shared::subject::{self, MAX_TOKEN_LEN};
use proxybus_shared::{ConnectionType, ExchangeId, OperatorAction, ProxyId, Region};

/// The contract's token rule, stated independently of `proxybus_shared`:
/// 1 to 64 characters of `a-z`, `0-9`, `_`, `-`.
fn valid_token(token: &str) -> bool {
    (1..=MAX_TOKEN_LEN).contains(&token.len())
        && token.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A token that is valid, or broken in one of the ways a subject must refuse:
/// wildcards, empty, whitespace, over-long, upper case, a dot, non-ASCII.
fn any_token() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9_-]{1,64}",
        1 => prop::sample::select(vec!["http", "websocket", "ban", "drain", "enable", "0011223344556677", "any"])
            .prop_map(str::to_owned),
        1 => "[0-9a-f]{16}",
        1 => Just("*".to_owned()),
        1 => Just(">".to_owned()),
        1 => "[a-z]{0,4}[*>][a-z]{0,4}",
        1 => Just(String::new()),
        1 => "[a-z]{0,4}[ \t\r\n\u{a0}\u{3000}][a-z]{0,4}",
        1 => "[a-z0-9_-]{65,80}",
        1 => "[a-zA-Z]{1,8}",
        1 => "[a-z]{1,4}\\.[a-z]{1,4}",
        1 => "\\PC{1,6}",
        1 => any::<String>(),
    ]
}

/// A subject under one of the contract's prefixes (or a near miss) with 0 to 5 tokens.
fn any_subject() -> impl Strategy<Value = String> {
    let prefix = prop::sample::select(vec![
        subject::REQUEST_PREFIX,
        subject::REGIONAL_REQUEST_PREFIX,
        subject::FEEDBACK_PREFIX,
        subject::HEALTH_PREFIX,
        subject::OPERATOR_PREFIX,
        subject::FEEDBACK_DEAD_PREFIX,
        "proxy.v1.requestx",
        "proxy.v2.request",
        "PROXY.V1.REQUEST",
        "",
    ]);
    (prefix, prop::collection::vec(any_token(), 0..6), any::<bool>()).prop_map(|(prefix, tokens, trailing_dot)| {
        let mut subject = std::iter::once(prefix.to_owned()).chain(tokens).collect::<Vec<_>>().join(".");
        if trailing_dot {
            subject.push('.');
        }
        subject
    })
}

/// The tokens after `prefix.` when `subject` has exactly `count` of them.
fn tokens_after<'a>(subject: &'a str, prefix: &str, count: usize) -> Option<Vec<&'a str>> {
    let tokens: Vec<&str> = subject.strip_prefix(prefix)?.strip_prefix('.')?.split('.').collect();
    (tokens.len() == count).then_some(tokens)
}

fn connection_ok(token: &str) -> bool {
    token == "http" || token == "websocket"
}

fn proxy_id_ok(token: &str) -> bool {
    token.len() == ProxyId::LEN && token.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// `ExchangeId` and `Region` accept exactly the contract's tokens (so never a
    /// `*`, `>`, `.`, whitespace, empty or over-long one), show themselves unchanged,
    /// and deserialize under the same rule.
    #[test]
    fn tokens_accept_exactly_the_contract_character_set(token in any_token()) {
        let ok = valid_token(&token);
        prop_assert_eq!(token.parse::<ExchangeId>().is_ok(), ok, "exchange {:?}", token);
        prop_assert_eq!(token.parse::<Region>().is_ok(), ok, "region {:?}", token);
        let json = serde_json::to_string(&token).unwrap();
        prop_assert_eq!(serde_json::from_str::<ExchangeId>(&json).is_ok(), ok);
        prop_assert_eq!(serde_json::from_str::<Region>(&json).is_ok(), ok);
        if let Ok(exchange) = token.parse::<ExchangeId>() {
            prop_assert_eq!(exchange.to_string(), token);
        }
    }

    /// Every parser, given any subject: accepts it exactly when the oracle above
    /// says each token is well formed (with the right count, connection type,
    /// action, proxy id), and then the builder gives back the very subject.
    #[test]
    fn parsers_accept_exactly_well_formed_subjects(s in prop_oneof![any_subject(), any::<String>()]) {
        let request = tokens_after(&s, subject::REQUEST_PREFIX, 2)
            .is_some_and(|t| valid_token(t[0]) && connection_ok(t[1]));
        match subject::parse_request(&s) {
            Ok((exchange, connection)) => {
                prop_assert!(request, "{:?} accepted", s);
                prop_assert_eq!(subject::request(&exchange, connection), s.as_str());
            }
            Err(_) => prop_assert!(!request, "{:?} refused", s),
        }

        let feedback = tokens_after(&s, subject::FEEDBACK_PREFIX, 2)
            .is_some_and(|t| valid_token(t[0]) && connection_ok(t[1]));
        match subject::parse_feedback(&s) {
            Ok((exchange, connection)) => {
                prop_assert!(feedback, "{:?} accepted", s);
                prop_assert_eq!(subject::feedback(&exchange, connection), s.as_str());
                prop_assert!(!subject::is_operator(&s), "{:?} is both feedback and operator", s);
            }
            Err(_) => prop_assert!(!feedback, "{:?} refused", s),
        }

        let regional = tokens_after(&s, subject::REGIONAL_REQUEST_PREFIX, 3)
            .is_some_and(|t| valid_token(t[0]) && valid_token(t[1]) && connection_ok(t[2]));
        match subject::parse_regional_request(&s) {
            Ok((region, exchange, connection)) => {
                prop_assert!(regional, "{:?} accepted", s);
                prop_assert_eq!(subject::regional_request(&region, &exchange, connection), s.as_str());
            }
            Err(_) => prop_assert!(!regional, "{:?} refused", s),
        }

        let health = tokens_after(&s, subject::HEALTH_PREFIX, 1).is_some_and(|t| valid_token(t[0]));
        match subject::parse_health(&s) {
            Ok(region) => {
                prop_assert!(health, "{:?} accepted", s);
                prop_assert_eq!(subject::health(&region), s.as_str());
            }
            Err(_) => prop_assert!(!health, "{:?} refused", s),
        }

        let operator = tokens_after(&s, subject::OPERATOR_PREFIX, 2)
            .is_some_and(|t| OperatorAction::ALL.iter().any(|a| a.as_str() == t[0]) && proxy_id_ok(t[1]));
        match subject::parse_operator(&s) {
            Ok((action, proxy)) => {
                prop_assert!(operator, "{:?} accepted", s);
                prop_assert_eq!(subject::operator(action, &proxy), s.as_str());
                prop_assert!(subject::is_operator(&s));
            }
            Err(_) => prop_assert!(!operator, "{:?} refused", s),
        }

        // Whatever the subject, its dead letter carries only valid tokens.
        let dead = subject::feedback_dead(&s);
        prop_assert!(tokens_after(&dead, subject::FEEDBACK_DEAD_PREFIX, 2)
            .or_else(|| tokens_after(&dead, subject::FEEDBACK_DEAD_PREFIX, 1))
            .is_some_and(|t| t.iter().all(|t| valid_token(t))), "{:?} -> {:?}", s, dead);
    }

    /// Every subject built from valid parts parses back to those parts.
    #[test]
    fn built_subjects_parse_back(
        exchange in "[a-z0-9_-]{1,64}",
        region in "[a-z0-9_-]{1,64}",
        connection in prop::sample::select(ConnectionType::ALL.to_vec()),
        action in prop::sample::select(OperatorAction::ALL.to_vec()),
        proxy in "[0-9a-f]{16}",
    ) {
        let exchange: ExchangeId = exchange.parse().unwrap();
        let region: Region = region.parse().unwrap();
        let proxy: ProxyId = proxy.parse().unwrap();
        prop_assert_eq!(subject::parse_request(&subject::request(&exchange, connection)).unwrap(), (exchange.clone(), connection));
        prop_assert_eq!(subject::parse_feedback(&subject::feedback(&exchange, connection)).unwrap(), (exchange.clone(), connection));
        prop_assert_eq!(
            subject::parse_regional_request(&subject::regional_request(&region, &exchange, connection)).unwrap(),
            (region.clone(), exchange.clone(), connection)
        );
        prop_assert_eq!(subject::parse_health(&subject::health(&region)).unwrap(), region);
        prop_assert_eq!(subject::parse_operator(&subject::operator(action, &proxy)).unwrap(), (action, proxy));
        let feedback = subject::feedback(&exchange, connection);
        prop_assert_eq!(subject::feedback_dead(&feedback), format!("{}.{exchange}.{connection}", subject::FEEDBACK_DEAD_PREFIX));
    }
}
