//! `ProxyUrl::parse`, `redact_url` and `redact_text` from arbitrary text (invalid
//! UTF-8 is read lossily).
//!
//! Invariants (the same as the property tests of `shared/src/proxy_url.rs`):
//! nothing panics; a URL that parses is shown by `redact_url`, `Display` and
//! `Debug` exactly as `scheme://user:***@host:port` (no password, written or
//! decoded), and `scrub` hides its decoded password anywhere in a text; a parse
//! error quotes nothing of the input but a well-formed scheme; for any text of the
//! shape `…://user:password@rest` (or `user:password@rest`), neither
//! `redact_url` nor `redact_text` shows the password, unless the text holds it
//! outside the user info too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxybus_shared::proxy_url::{REDACTED, redact_text};
use proxybus_shared::testing::{kept_anyway, userinfo_parts};
use proxybus_shared::{ProxyUrl, ProxyUrlError, redact_url};
use secrecy::ExposeSecret;

/// Whether `password` may show after redaction: it is a part of the text kept on purpose
/// ([`kept_anyway`], the property tests' oracle), or it is made of little but `*`,
/// delimiters and whitespace, and so matches what redaction writes (a looser rule than the
/// property tests', for the arbitrary bytes a fuzzer finds).
fn may_show(text: &str, password: &str) -> bool {
    let substance = password.chars().filter(|c| !c.is_whitespace() && !"*@:/?#".contains(*c)).count();
    substance < 3 || kept_anyway(text, password)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let s = text.as_ref();

    match ProxyUrl::parse(s) {
        Ok(url) => {
            let (scheme, rest) = s.split_once("://").expect("a parsed URL has a scheme");
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            let expected = match rest.split_once('@') {
                Some((userinfo, authority)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{scheme}://{user}:{REDACTED}@{authority}"),
                    None => format!("{scheme}://{userinfo}@{authority}"),
                },
                None => format!("{scheme}://{rest}"),
            };
            assert_eq!(redact_url(s), expected);
            assert_eq!(url.to_string(), expected);
            assert_eq!(format!("{url:?}"), format!("ProxyUrl({expected:?})"));
            if let Some(password) = url.password().map(|p| p.expose_secret()).filter(|p| !p.is_empty()) {
                let scrubbed = url.scrub(&format!("failed {s} with {password}"));
                let kept = format!("failed {expected} with ").replace(REDACTED, "");
                if !kept.contains(password) && !REDACTED.contains(password) {
                    assert!(!scrubbed.contains(password), "{password:?} in {scrubbed:?}");
                }
            }
        }
        Err(ProxyUrlError::UnsupportedScheme(shown)) => {
            assert!(
                shown == REDACTED
                    || (shown.len() <= 32 && shown.bytes().all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))),
                "{shown:?}"
            );
        }
        Err(_) => {}
    }

    let redacted = redact_url(s);
    // Idempotent: the aggregator keeps a stored (redacted) URL that an event repeats as it is.
    assert_eq!(redact_url(&redacted), redacted, "redacting {s:?} twice");
    if let Some((_, _, password, _)) = userinfo_parts(s)
        && !may_show(s, password)
    {
        assert!(!redacted.contains(password), "{password:?} in {redacted:?}");
    }

    let shown = redact_text(s);
    for word in s.split(char::is_whitespace) {
        let word = word.trim_matches(['"', '`', '\'', ',', '(', ')', ';']);
        if let Some((_, _, password, _)) = userinfo_parts(word)
            && !may_show(word, password)
            && s.matches(password).count() == 1
            && (word.contains("://") || word.contains('@'))
        {
            assert!(!shown.contains(password), "{password:?} of {word:?} in {shown:?}");
        }
    }
});
