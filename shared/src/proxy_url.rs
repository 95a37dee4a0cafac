//! Proxy identity and credential redaction.
//!
//! A proxy is identified by its full URL, credentials included: residential
//! gateways share one `host:port` and differ only by username. Outside the
//! process that uses it, a proxy is only ever shown as its [`proxy_id`] and its
//! [`redact_url`] form, which keeps the username and replaces the password.
//!
//! # Examples
//! ```
//! use proxybus_shared::{ProxyUrl, redact_url};
//! assert_eq!(redact_url("socks5://alice:s3cret@10.0.0.7:1080"), "socks5://alice:***@10.0.0.7:1080");
//! let url = ProxyUrl::parse("http://bob:pw@proxy.example:3128").unwrap();
//! assert_eq!(format!("{url}"), "http://bob:***@proxy.example:3128");
//! assert!(ProxyUrl::parse("ftp://proxy.example:21").is_err());
//! ```

use std::fmt;

use sha2::{Digest, Sha256};
use url::Url;

use crate::messages::ProxyId;

/// What replaces a password (and any query string) in redacted URLs.
pub const REDACTED: &str = "***";

/// Schemes a proxy URL may have.
pub const PROXY_SCHEMES: [&str; 4] = ["http", "https", "socks4", "socks5"];

/// Identity of the proxy at `url`: lowercase hex of the first 8 bytes of SHA-256
/// of the URL exactly as given.
pub fn proxy_id(url: &str) -> ProxyId {
    ProxyId::from_digest_prefix(&Sha256::digest(url.as_bytes()))
}

/// `url` with its password (and query string) replaced by `***`, the username kept.
///
/// A string that does not parse as a URL keeps only its scheme, so that nothing
/// after `://` can leak.
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(parsed) if parsed.has_host() => redact_parsed(&parsed),
        // `user:secret@host` parses as scheme `user` with an opaque path: show nothing.
        Ok(_) => REDACTED.to_owned(),
        Err(_) => match url.split_once("://") {
            Some((scheme, _)) if scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+') => {
                format!("{scheme}://{REDACTED}")
            }
            _ => REDACTED.to_owned(),
        },
    }
}

fn redact_parsed(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        // Setting a password cannot fail on a URL that already has one.
        let _ = shown.set_password(Some(REDACTED));
    }
    if shown.query().is_some() {
        shown.set_query(Some(REDACTED));
    }
    shown.set_fragment(None);
    let mut text = shown.to_string();
    // `Url` gives http(s) URLs a `/` path; proxy URLs have none, so do not show one.
    if shown.path() == "/" && shown.query().is_none() {
        text.pop();
    }
    text
}

/// Free text (an error message, a log line) with every word that looks like a
/// URL redacted as by [`redact_url`] (quotes around it are dropped).
pub fn redact_text(text: &str) -> String {
    text.split(' ')
        .map(
            |word| if word.contains("://") { redact_url(word.trim_matches(['"', '`', '\''])) } else { word.to_owned() },
        )
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a string is not a usable proxy URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyUrlError {
    /// The string is not a URL at all.
    #[error("not a valid URL")]
    Invalid,
    /// The scheme is not one of http, https, socks4, socks5.
    #[error("unsupported proxy scheme {0:?}: expected http, https, socks4 or socks5")]
    UnsupportedScheme(String),
    /// The URL names no host.
    #[error("proxy URL has no host")]
    MissingHost,
}

/// A validated proxy URL (scheme http/https/socks4/socks5, with a host) whose
/// `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ProxyUrl {
    url: Url,
    original: String,
}

impl ProxyUrl {
    /// Parses and validates a proxy URL.
    pub fn parse(text: &str) -> Result<Self, ProxyUrlError> {
        let url = Url::parse(text).map_err(|err| match err {
            url::ParseError::EmptyHost => ProxyUrlError::MissingHost,
            _ => ProxyUrlError::Invalid,
        })?;
        if !PROXY_SCHEMES.contains(&url.scheme()) {
            return Err(ProxyUrlError::UnsupportedScheme(url.scheme().to_owned()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(ProxyUrlError::MissingHost);
        }
        Ok(Self { url, original: text.to_owned() })
    }

    /// The URL exactly as given, credentials included: hand it only to the code
    /// that connects through the proxy.
    pub fn expose(&self) -> &str {
        &self.original
    }

    /// The parsed URL, credentials included.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The proxy's identity.
    pub fn id(&self) -> ProxyId {
        proxy_id(&self.original)
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_parsed(&self.url)
    }

    /// The scheme (`http`, `https`, `socks4`, `socks5`).
    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ProxyUrl").field(&self.redacted()).finish()
    }
}

impl std::str::FromStr for ProxyUrl {
    type Err = ProxyUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_no_secret(redacted: &str, secrets: &[&str]) {
        for secret in secrets {
            assert!(!redacted.contains(secret), "{secret:?} survived in {redacted:?}");
        }
    }

    #[test]
    fn proxy_id_is_first_8_bytes_of_sha256_in_lowercase_hex() {
        // sha256("http://10.0.0.1:8080") computed independently with Python's hashlib.
        assert_eq!(proxy_id("http://10.0.0.1:8080").as_str(), "cc3dd0c247d6ff41");
        // Residential gateways: same host and port, different usernames, different ids.
        assert_ne!(proxy_id("http://user-a:pw@gw:7777"), proxy_id("http://user-b:pw@gw:7777"));
    }

    #[test]
    fn password_never_survives_redaction() {
        let cases = [
            ("http://user:hunter2@proxy.example:8080", "http://user:***@proxy.example:8080", vec!["hunter2"]),
            ("socks5://alice:s3cr3t@10.1.2.3:1080", "socks5://alice:***@10.1.2.3:1080", vec!["s3cr3t"]),
            ("socks4://bob:pw4@10.1.2.3:1080", "socks4://bob:***@10.1.2.3:1080", vec!["pw4"]),
            ("https://u:p%40ss%3Aw0rd@host:443", "https://u:***@host", vec!["p%40ss", "p@ss", "w0rd", "%3A"]),
            ("http://us%65r:pa%20ss@h:1", "http://us%65r:***@h:1", vec!["pa%20ss", "pa ss"]),
            ("http://user:pw@host:8080/?token=abc", "http://user:***@host:8080/?***", vec!["abc"]),
            ("http://host:3128", "http://host:3128", vec![]),
        ];
        for (input, expected, secrets) in cases {
            let redacted = redact_url(input);
            assert_eq!(redacted, expected, "redacting {input}");
            assert_no_secret(&redacted, &secrets);
        }
    }

    #[test]
    fn unparseable_urls_leak_nothing_after_the_scheme() {
        assert_eq!(redact_url("http://user:secret@[bad"), "http://***");
        assert_eq!(redact_url("user:secret@host"), "***");
        assert_eq!(redact_url("http://user:secret"), "http://***");
    }

    #[test]
    fn urls_inside_text_are_redacted() {
        let text = redact_text("connect to \"http://u:hunter2@h:1\" failed: refused");
        assert_eq!(text, "connect to http://u:***@h:1 failed: refused");
    }

    #[test]
    fn proxy_url_validates_scheme_and_host() {
        assert_eq!(ProxyUrl::parse("ftp://h:21").unwrap_err(), ProxyUrlError::UnsupportedScheme("ftp".into()));
        assert_eq!(ProxyUrl::parse("http://:8080").unwrap_err(), ProxyUrlError::MissingHost);
        assert_eq!(ProxyUrl::parse("socks5:///nohost").unwrap_err(), ProxyUrlError::MissingHost);
        assert_eq!(ProxyUrl::parse("not a url").unwrap_err(), ProxyUrlError::Invalid);
        for ok in ["http://h:1", "https://h", "socks4://h:1080", "socks5://u:p@h:1080"] {
            assert!(ProxyUrl::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn proxy_url_debug_and_display_hide_the_password() {
        let url = ProxyUrl::parse("socks5://alice:t0p%2Fsecret@10.0.0.9:1080").unwrap();
        for shown in [format!("{url}"), format!("{url:?}")] {
            assert_no_secret(&shown, &["t0p", "secret"]);
            assert!(shown.contains("alice:***@10.0.0.9:1080"), "{shown}");
        }
        assert_eq!(url.expose(), "socks5://alice:t0p%2Fsecret@10.0.0.9:1080");
        assert_eq!(url.id(), proxy_id(url.expose()));
    }
}
