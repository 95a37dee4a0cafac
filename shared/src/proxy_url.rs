//! Proxy URLs: the one type every part parses a proxy URL into, proxy identity,
//! and the one redactor every part shows URLs through.
//!
//! A proxy URL is `scheme://[user[:password]@]host:port`, nothing more:
//!
//! - `scheme` is one of [`ProxyScheme`]: `http`, `https` (TLS to the proxy),
//!   `socks4`, `socks4a`, `socks5`, `socks5h` (the names curl and reqwest use);
//! - `host` is an IPv4 literal, an IPv6 literal in brackets (`[2001:db8::1]`) or a
//!   DNS name; `port` is required, 1 to 65535;
//! - `user` and `password` may hold any character percent-encoded (RFC 3986
//!   §2.1); they are decoded exactly once (`p%2541` is the password `p%41`).
//!   Raw, they may hold only RFC 3986 `unreserved` and `sub-delims` characters:
//!   a raw `/`, `?`, `#`, `@` or a second `:` is refused, because a URL parser would
//!   otherwise take part of the password for the host, a path, a query or a fragment
//!   (the inventory entry `http://alice:12/34xyz@203.0.113.10:3128` once became a
//!   proxy on host `alice`, port 12);
//! - a path, query or fragment is refused (a lone trailing `/` is tolerated).
//!
//! A proxy is identified by its full URL exactly as written, credentials included
//! (residential gateways share one `host:port` and differ only by username):
//! [`proxy_id`] is the first 8 bytes of its SHA-256 (`shared/CONTRACT.md`). Outside
//! the process that connects through it, a proxy is only shown as its id and its
//! [`redact_url`] form, which keeps the username and replaces the password with
//! `***`. [`redact_url`] and [`redact_text`] are the only redactors in proxybus;
//! they never let a password through, whatever the input (see the property test).
//!
//! # Examples
//! ```
//! use proxybus_shared::{ProxyUrl, ProxyScheme, redact_url};
//! assert_eq!(redact_url("socks5://alice:s3cret@10.0.0.7:1080"), "socks5://alice:***@10.0.0.7:1080");
//! let url = ProxyUrl::parse("socks5h://bob:p%40ss@proxy.example:1080").unwrap();
//! assert_eq!(url.scheme(), ProxyScheme::Socks5h);
//! assert_eq!(url.credentials().unwrap(), ("bob", "p@ss"));
//! assert_eq!(format!("{url}"), "socks5h://bob:***@proxy.example:1080");
//! assert!(ProxyUrl::parse("ftp://proxy.example:21").is_err());
//! assert!(ProxyUrl::parse("http://alice:12/34xyz@203.0.113.10:3128").is_err());
//! ```

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use schemars::JsonSchema;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::messages::ProxyId;

/// What replaces a password (and any query string) in redacted URLs.
pub const REDACTED: &str = "***";

/// How a client talks to a proxy: the scheme of a proxy URL.
///
/// The names are those of curl's `--proxy` and reqwest's `Proxy`: `socks4a` and
/// `socks5h` send the target's host name to the proxy, which resolves it;
/// `socks4` and `socks5` resolve it locally and send an address. `https` speaks
/// TLS to the proxy itself, then HTTP `CONNECT` inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[serde(remote = "Self")]
pub enum ProxyScheme {
    /// HTTP proxy: `CONNECT` for tunnels, absolute-form requests for plain HTTP.
    Http,
    /// HTTP proxy reached over TLS.
    Https,
    /// SOCKS4: the client resolves the target; a user id but no password.
    Socks4,
    /// SOCKS4a: the proxy resolves the target's host name.
    Socks4a,
    /// SOCKS5 (RFC 1928, username/password per RFC 1929): the client resolves the target.
    Socks5,
    /// SOCKS5 with the proxy resolving the target's host name.
    Socks5h,
}

impl ProxyScheme {
    /// Every scheme, in the order above.
    pub const ALL: [ProxyScheme; 6] = [
        ProxyScheme::Http,
        ProxyScheme::Https,
        ProxyScheme::Socks4,
        ProxyScheme::Socks4a,
        ProxyScheme::Socks5,
        ProxyScheme::Socks5h,
    ];

    /// The scheme as written in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyScheme::Http => "http",
            ProxyScheme::Https => "https",
            ProxyScheme::Socks4 => "socks4",
            ProxyScheme::Socks4a => "socks4a",
            ProxyScheme::Socks5 => "socks5",
            ProxyScheme::Socks5h => "socks5h",
        }
    }

    /// Whether the proxy, not the client, resolves the target's host name
    /// (HTTP proxies always do: `CONNECT host:port`).
    pub fn proxy_resolves_names(self) -> bool {
        !matches!(self, ProxyScheme::Socks4 | ProxyScheme::Socks5)
    }

    /// Whether a caller that can use `accepted` schemes can use this one: an empty
    /// list accepts every scheme. This is the rule of `ProxyRequest.proxy_schemes`
    /// that the resolver, the pool and embedded selection all apply.
    pub fn accepted_by(self, accepted: &[ProxyScheme]) -> bool {
        accepted.is_empty() || accepted.contains(&self)
    }
}

impl fmt::Display for ProxyScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ProxyScheme {
    type Err = ProxyUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProxyScheme::ALL
            .into_iter()
            .find(|scheme| scheme.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ProxyUrlError::UnsupportedScheme(shown_scheme(s)))
    }
}

/// The host of a proxy URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProxyHost {
    /// An IPv4 literal.
    Ipv4(Ipv4Addr),
    /// An IPv6 literal (written in brackets in the URL).
    Ipv6(Ipv6Addr),
    /// A DNS name, lowercased.
    Name(String),
}

impl fmt::Display for ProxyHost {
    /// The host as a socket address wants it: IPv6 without brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyHost::Ipv4(ip) => write!(f, "{ip}"),
            ProxyHost::Ipv6(ip) => write!(f, "{ip}"),
            ProxyHost::Name(name) => f.write_str(name),
        }
    }
}

/// Identity of the proxy at `url`: lowercase hex of the first 8 bytes of SHA-256
/// of the URL exactly as given (`shared/CONTRACT.md`, `ProxyResponse.proxy_id`).
pub fn proxy_id(url: &str) -> ProxyId {
    ProxyId::from_digest_prefix(&Sha256::digest(url.as_bytes()))
}

/// `url` with its password replaced by `***`, the username kept; a query becomes
/// `?***` and a fragment is dropped.
///
/// Whatever the input, nothing that could be part of a password survives: the
/// user info is everything before the **last** `@` (so a raw `@`, `/`, `?`, `#` or
/// `:` in a password is still hidden), a username with any character a URL does
/// not allow there is hidden too, and text that does not look like a URL keeps at
/// most its scheme and what follows its last `@`.
///
/// # Examples
/// ```
/// use proxybus_shared::redact_url;
/// assert_eq!(redact_url("http://alice:12/34xyz@203.0.113.10:3128"), "http://alice:***@203.0.113.10:3128");
/// assert_eq!(redact_url("https://pool.internal:8443/api?token=t0k"), "https://pool.internal:8443/api?***");
/// assert_eq!(redact_url("socks5://[2001:db8::1]:1080"), "socks5://[2001:db8::1]:1080");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_schemeless(url);
    };
    if !is_scheme(scheme) {
        return REDACTED.to_owned();
    }
    match rest.rsplit_once('@') {
        Some((userinfo, after)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let shown_user = if user.bytes().all(is_userinfo_byte) { user } else { REDACTED };
            let password = if userinfo.contains(':') { format!(":{REDACTED}") } else { String::new() };
            format!("{scheme}://{shown_user}{password}@{}", redact_host_part(after))
        }
        None => format!("{scheme}://{}", redact_host_part(rest)),
    }
}

/// A string without `scheme://`: `user:pw@host:port` keeps only `***@host:port`;
/// `host:port` is kept when the port is a number, else hidden.
fn redact_schemeless(text: &str) -> String {
    match text.rsplit_once('@') {
        Some((_, after)) => format!("{REDACTED}@{}", redact_host_part(after)),
        None => redact_host_part(text),
    }
}

/// `host:port` then an optional path, query or fragment, as shown: the authority
/// only when it looks like one (a numeric port), the path only then, the query as
/// `?***`, no fragment.
fn redact_host_part(text: &str) -> String {
    let end = text.find(['/', '?', '#']).unwrap_or(text.len());
    let (authority, tail) = text.split_at(end);
    if !looks_like_host_port(authority) {
        return REDACTED.to_owned();
    }
    let tail = tail.split('#').next().unwrap_or_default();
    let (path, query) = tail.split_once('?').map_or((tail, None), |(p, q)| (p, Some(q)));
    let mut shown = format!("{authority}{path}");
    if shown.ends_with('/') && path == "/" {
        shown.pop();
    }
    if query.is_some() {
        shown.push('?');
        shown.push_str(REDACTED);
    }
    shown
}

/// `host`, `host:digits`, `[v6]` or `[v6]:digits`, made of host characters only.
fn looks_like_host_port(authority: &str) -> bool {
    let host_ok = |host: &str| host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    let port_ok = |port: &str| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((v6, after)) = bracketed.split_once(']') else { return false };
        let v6_ok = v6.bytes().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
        return v6_ok && (after.is_empty() || after.strip_prefix(':').is_some_and(port_ok));
    }
    match authority.split_once(':') {
        Some((host, port)) => host_ok(host) && port_ok(port),
        None => host_ok(authority),
    }
}

fn is_scheme(scheme: &str) -> bool {
    let mut bytes = scheme.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'-'))
        && scheme.len() <= 32
}

/// A scheme fit to appear in an error: itself when it is a scheme, else `***`.
fn shown_scheme(scheme: &str) -> String {
    if is_scheme(scheme) { scheme.to_ascii_lowercase() } else { REDACTED.to_owned() }
}

/// RFC 3986 `unreserved` / `sub-delims` / `%` (the start of a pct-encoded byte):
/// what a user name or password may hold raw.
fn is_userinfo_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(b, b'-' | b'.' | b'_' | b'~' | b'%' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',')
        || matches!(b, b';' | b'=')
}

/// Free text (an error message, a log line) with every word that holds a URL or
/// user info (`://` or `@`) redacted as by [`redact_url`]; quotes, commas and
/// parentheses around such a word are dropped; other words and all whitespace are kept.
///
/// A URL whose user info holds raw whitespace (`http://u:correct horse battery@h:1`)
/// spans several words: from a word with `scheme://` and no `@` to the next word on
/// the same line with an `@` (and no `://`), the words are redacted as one URL, so
/// no middle word of such a password survives.
///
/// # Examples
/// ```
/// use proxybus_shared::proxy_url::redact_text;
/// assert_eq!(redact_text("connect to \"http://u:hunter2@h:1\" failed"), "connect to http://u:***@h:1 failed");
/// assert_eq!(redact_text("login u:hunter2@h:1 refused"), "login ***@h:1 refused");
/// assert_eq!(redact_text("via http://u:correct horse battery@h:1 failed"), "via http://u:***@h:1 failed");
/// ```
pub fn redact_text(text: &str) -> String {
    let pieces: Vec<&str> = text.split_inclusive(char::is_whitespace).collect();
    let mut redacted = String::with_capacity(text.len());
    let mut start = 0;
    while start < pieces.len() {
        let last = split_userinfo_end(&pieces, start).unwrap_or(start);
        let span: String = pieces[start..=last].concat();
        let word = span.trim_end_matches(char::is_whitespace);
        if word.contains("://") || word.contains('@') {
            redacted.push_str(&redact_url(word.trim_matches(AROUND_URL)));
        } else {
            redacted.push_str(word);
        }
        redacted.push_str(&span[word.len()..]);
        start = last + 1;
    }
    redacted
}

/// What [`redact_text`] drops around a URL.
const AROUND_URL: [char; 7] = ['"', '`', '\'', ',', '(', ')', ';'];

/// When the word of `pieces[start]` opens a URL (`scheme://…` without an `@`) whose
/// user info raw whitespace may split, the index of the piece with the word that
/// closes it: the next one on the same line with an `@` and no `://`. A URL
/// followed on its line by an unrelated `user@host` is then hidden up to that `@`
/// as well: more than needed, never less.
fn split_userinfo_end(pieces: &[&str], start: usize) -> Option<usize> {
    let opening = pieces[start];
    let word = opening.trim_end_matches(char::is_whitespace).trim_matches(AROUND_URL);
    let (_, rest) = word.split_once("://")?;
    if rest.contains('@') || opening.ends_with('\n') {
        return None;
    }
    for (index, piece) in pieces.iter().enumerate().skip(start + 1) {
        let word = piece.trim_end_matches(char::is_whitespace);
        if word.contains("://") {
            return None;
        }
        if word.contains('@') {
            return Some(index);
        }
        if piece.ends_with('\n') {
            return None;
        }
    }
    None
}

/// Why a string is not a usable proxy URL. The messages never quote the URL (a
/// caller shows it through [`redact_url`]) and say how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyUrlError {
    /// No `scheme://` at the start.
    #[error("not a proxy URL: expected scheme://[user:password@]host:port")]
    MissingScheme,
    /// The scheme is not one of [`ProxyScheme`].
    #[error("unsupported proxy scheme {0:?}: expected http, https, socks4, socks4a, socks5 or socks5h")]
    UnsupportedScheme(String),
    /// Something follows `host:port` (or a password holds a raw `/`, `?` or `#`).
    #[error(
        "proxy URL has a {0} after host:port, or a raw '/', '?' or '#' in its user name or password \
         (percent-encode those as %2F, %3F, %23)"
    )]
    Trailing(&'static str),
    /// The user info does not parse as `user[:password]`.
    #[error("user name or password of the proxy URL {0}")]
    Userinfo(&'static str),
    /// The URL names no host.
    #[error("proxy URL has no host")]
    MissingHost,
    /// The host is neither an IP literal nor a DNS name.
    #[error("proxy URL host is not an IPv4 address, a bracketed IPv6 address or a DNS name")]
    InvalidHost,
    /// The URL has no port.
    #[error("proxy URL has no port: write host:port")]
    MissingPort,
    /// The port is not a number from 1 to 65535.
    #[error("proxy URL port is not a number from 1 to 65535")]
    InvalidPort,
    /// The URL holds whitespace or control characters.
    #[error("proxy URL holds whitespace or control characters")]
    Whitespace,
}

/// A validated proxy URL whose `Debug` and `Display` never show the password.
///
/// Equality and hashing are those of the URL as written (the proxy's identity).
#[derive(Clone)]
pub struct ProxyUrl {
    original: String,
    scheme: ProxyScheme,
    user: Option<String>,
    password: Option<SecretString>,
    host: ProxyHost,
    port: u16,
}

impl PartialEq for ProxyUrl {
    fn eq(&self, other: &Self) -> bool {
        self.original == other.original
    }
}

impl Eq for ProxyUrl {}

impl std::hash::Hash for ProxyUrl {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.original.hash(state);
    }
}

impl ProxyUrl {
    /// Parses and validates a proxy URL (the rules are in the [module docs](self)).
    ///
    /// # Errors
    /// [`ProxyUrlError`], whose message never contains any part of `text`
    /// except a well-formed scheme name.
    pub fn parse(text: &str) -> Result<Self, ProxyUrlError> {
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ProxyUrlError::Whitespace);
        }
        let (scheme, rest) = text.split_once("://").ok_or(ProxyUrlError::MissingScheme)?;
        let scheme: ProxyScheme = scheme.parse()?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if let Some(at) = rest.find(['/', '?', '#']) {
            return Err(ProxyUrlError::Trailing(match rest.as_bytes()[at] {
                b'/' => "path",
                b'?' => "query",
                _ => "fragment",
            }));
        }
        let (userinfo, host_port) = match rest.split_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, rest),
        };
        if host_port.contains('@') {
            return Err(ProxyUrlError::Userinfo("holds a raw '@' (percent-encode it as %40)"));
        }
        let (user, password) = match userinfo {
            None => (None, None),
            Some(userinfo) => {
                let (user, password) = match userinfo.split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => (userinfo, None),
                };
                if password.is_some_and(|p| p.contains(':')) {
                    return Err(ProxyUrlError::Userinfo(
                        "holds a raw ':' after the one between them (percent-encode it as %3A)",
                    ));
                }
                if user.is_empty() {
                    return Err(ProxyUrlError::Userinfo("is empty: write user:password@host:port"));
                }
                (Some(decode_userinfo(user)?), password.map(decode_userinfo).transpose()?.map(SecretString::from))
            }
        };
        let (host, port) = parse_host_port(host_port)?;
        Ok(Self { original: text.to_owned(), scheme, user, password, host, port })
    }

    /// The URL exactly as given, credentials included: hand it only to the code
    /// that connects through the proxy (or to the feed it is meant for).
    pub fn expose(&self) -> &str {
        &self.original
    }

    /// The proxy's identity ([`proxy_id`] of the URL as given).
    pub fn id(&self) -> ProxyId {
        proxy_id(&self.original)
    }

    /// The URL as [`redact_url`] shows it.
    pub fn redacted(&self) -> String {
        redact_url(&self.original)
    }

    /// The scheme.
    pub fn scheme(&self) -> ProxyScheme {
        self.scheme
    }

    /// The host.
    pub fn host(&self) -> &ProxyHost {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user name, percent-decoded; `None` when the URL has no user info.
    pub fn username(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The password, percent-decoded; `None` when the URL has none.
    pub fn password(&self) -> Option<&SecretString> {
        self.password.as_ref()
    }

    /// User name and password (empty when absent), percent-decoded, for the
    /// proxy handshake; `None` when the URL has no user info.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        let user = self.user.as_deref()?;
        Some((user, self.password.as_ref().map_or("", |p| p.expose_secret())))
    }

    /// The URL without user info (`scheme://host:port`), safe to show.
    pub fn without_credentials(&self) -> String {
        match &self.host {
            ProxyHost::Ipv6(ip) => format!("{}://[{ip}]:{}", self.scheme, self.port),
            host => format!("{}://{host}:{}", self.scheme, self.port),
        }
    }

    /// `text` with both the written and the decoded password replaced by `***`,
    /// after [`redact_text`]: for messages of libraries that may echo what they were given.
    pub fn scrub(&self, text: &str) -> String {
        let mut scrubbed = redact_text(text);
        if let Some(password) = self.password.as_ref().map(|p| p.expose_secret()).filter(|p| !p.is_empty()) {
            scrubbed = scrubbed.replace(password, REDACTED);
            if let Some(written) = written_password(&self.original).filter(|w| !w.is_empty()) {
                scrubbed = scrubbed.replace(written, REDACTED);
            }
        }
        scrubbed
    }
}

/// The password as written (still percent-encoded) in a valid proxy URL.
fn written_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let (userinfo, _) = rest.split_once('@')?;
    Some(userinfo.split_once(':')?.1)
}

/// Percent-decodes a user name or password once, refusing raw characters RFC 3986
/// does not allow in user info, broken escapes and bytes that are not UTF-8.
fn decode_userinfo(raw: &str) -> Result<String, ProxyUrlError> {
    if !raw.bytes().all(is_userinfo_byte) {
        return Err(ProxyUrlError::Userinfo("holds a character that must be percent-encoded"));
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(ProxyUrlError::Userinfo("holds a '%' that is not followed by two hex digits"))?;
            decoded.push(byte);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| ProxyUrlError::Userinfo("is not UTF-8 once percent-decoded"))
}

fn parse_host_port(text: &str) -> Result<(ProxyHost, u16), ProxyUrlError> {
    let (host, port) = if let Some(bracketed) = text.strip_prefix('[') {
        let (v6, after) = bracketed.split_once(']').ok_or(ProxyUrlError::InvalidHost)?;
        let ip: Ipv6Addr = v6.parse().map_err(|_| ProxyUrlError::InvalidHost)?;
        let port = match after {
            "" => None,
            after => Some(after.strip_prefix(':').ok_or(ProxyUrlError::InvalidHost)?),
        };
        (ProxyHost::Ipv6(ip), port)
    } else {
        let (host, port) = match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        };
        if host.is_empty() {
            return Err(ProxyUrlError::MissingHost);
        }
        (parse_host(host)?, port)
    };
    let port = port.ok_or(ProxyUrlError::MissingPort)?;
    if port.is_empty() {
        return Err(ProxyUrlError::MissingPort);
    }
    let port: u16 = match port.bytes().all(|b| b.is_ascii_digit()) {
        true => port.parse().map_err(|_| ProxyUrlError::InvalidPort)?,
        false => return Err(ProxyUrlError::InvalidPort),
    };
    if port == 0 {
        return Err(ProxyUrlError::InvalidPort);
    }
    Ok((host, port))
}

/// An IPv4 literal, or a DNS name of labels of letters, digits, `-` and `_`
/// (RFC 1123, with the underscore service names use), at most 253 characters.
fn parse_host(host: &str) -> Result<ProxyHost, ProxyUrlError> {
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return host.parse().map(ProxyHost::Ipv4).map_err(|_| ProxyUrlError::InvalidHost);
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(ProxyUrlError::InvalidHost);
    }
    Ok(ProxyHost::Name(name.to_ascii_lowercase()))
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

crate::by_name_only!(ProxyScheme);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testing::{kept_anyway, userinfo_parts};

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
    fn ids_of_urls_that_were_valid_before_do_not_change() {
        // The id hashes the URL exactly as written, so a URL the old parser took is the same proxy.
        for url in ["http://10.0.0.1:8080", "socks5://u:p%40ss@h.example:1080", "http://10.0.0.1:8080/"] {
            assert_eq!(ProxyUrl::parse(url).unwrap().id(), proxy_id(url), "{url}");
        }
        assert_eq!(ProxyUrl::parse("http://10.0.0.1:8080").unwrap().id().as_str(), "cc3dd0c247d6ff41");
    }

    #[test]
    fn the_quoted_inventory_entry_is_refused_and_redacted() {
        // Issue #12 (a): a raw '/' in the password once made `alice` the host.
        let quoted = "http://alice:12/34xyz@203.0.113.10:3128";
        let err = ProxyUrl::parse(quoted).unwrap_err();
        assert_eq!(err, ProxyUrlError::Trailing("path"));
        assert!(err.to_string().contains("%2F"), "{err}");
        assert_eq!(redact_url(quoted), "http://alice:***@203.0.113.10:3128");
    }

    #[test]
    fn raw_reserved_characters_in_a_password_are_refused_and_never_shown() {
        let cases = [
            ("http://alice:pa#ss@203.0.113.10:3128", ProxyUrlError::Trailing("fragment"), &["pa#ss", "ss@"][..]),
            ("http://alice:pa?ss@203.0.113.10:3128", ProxyUrlError::Trailing("query"), &["pa?ss", "ss@"][..]),
            (
                "socks5://alice:p@ss@203.0.113.10:1080",
                ProxyUrlError::Userinfo("holds a raw '@' (percent-encode it as %40)"),
                &["p@ss"][..],
            ),
            (
                "socks5h://alice:pa:ss@203.0.113.10:1080",
                ProxyUrlError::Userinfo("holds a raw ':' after the one between them (percent-encode it as %3A)"),
                &["pa:ss"][..],
            ),
            ("http://alice:pa ss@203.0.113.10:3128", ProxyUrlError::Whitespace, &["pa ss"][..]),
            (
                "http://alice:pa\"ss@203.0.113.10:3128",
                ProxyUrlError::Userinfo("holds a character that must be percent-encoded"),
                &["pa\"ss"][..],
            ),
        ];
        for (input, expected, secrets) in cases {
            let err = ProxyUrl::parse(input).unwrap_err();
            assert_eq!(err, expected, "{input}");
            assert_no_secret(&err.to_string(), secrets);
            let shown = redact_url(input);
            assert_no_secret(&shown, secrets);
            assert!(shown.starts_with("http://alice:***@") || shown.starts_with("socks5"), "{shown}");
        }
    }

    #[test]
    fn malformed_authorities_are_refused() {
        let cases = [
            ("ftp://h:21", ProxyUrlError::UnsupportedScheme("ftp".into())),
            ("h:3128", ProxyUrlError::MissingScheme),
            ("http://h", ProxyUrlError::MissingPort),
            ("http://h:", ProxyUrlError::MissingPort),
            ("http://h:31x8", ProxyUrlError::InvalidPort),
            ("http://h:65536", ProxyUrlError::InvalidPort),
            ("http://h:0", ProxyUrlError::InvalidPort),
            ("http://:8080", ProxyUrlError::MissingHost),
            ("socks5:///nohost", ProxyUrlError::Trailing("path")),
            ("http://h:1/path", ProxyUrlError::Trailing("path")),
            ("http://h:1?q=1", ProxyUrlError::Trailing("query")),
            ("http://h:1#top", ProxyUrlError::Trailing("fragment")),
            ("http://:pw@h:1", ProxyUrlError::Userinfo("is empty: write user:password@host:port")),
            ("http://u:p%zz@h:1", ProxyUrlError::Userinfo("holds a '%' that is not followed by two hex digits")),
            ("http://u:%ff@h:1", ProxyUrlError::Userinfo("is not UTF-8 once percent-decoded")),
            ("http://999.1.1.1:1", ProxyUrlError::InvalidHost),
            ("http://[::1:1", ProxyUrlError::InvalidHost),
            ("http://[zz::1]:1", ProxyUrlError::InvalidHost),
            ("http://ho%73t:1", ProxyUrlError::InvalidHost),
            ("not a url", ProxyUrlError::Whitespace),
        ];
        for (input, expected) in cases {
            assert_eq!(ProxyUrl::parse(input).unwrap_err(), expected, "{input}");
        }
    }

    #[test]
    fn every_scheme_and_host_kind_parses() {
        let url = ProxyUrl::parse("socks4a://feed@[2001:db8::7]:1080").unwrap();
        assert_eq!(url.scheme(), ProxyScheme::Socks4a);
        assert_eq!(url.host(), &ProxyHost::Ipv6("2001:db8::7".parse().unwrap()));
        assert_eq!(url.credentials(), Some(("feed", "")));
        assert_eq!(url.without_credentials(), "socks4a://[2001:db8::7]:1080");
        let url = ProxyUrl::parse("HTTPS://Proxy.Example.:8443").unwrap();
        assert_eq!(
            (url.scheme(), url.host().to_string(), url.port()),
            (ProxyScheme::Https, "proxy.example".into(), 8443)
        );
        for scheme in ProxyScheme::ALL {
            let url = ProxyUrl::parse(&format!("{scheme}://u:p@203.0.113.9:1080")).unwrap();
            assert_eq!(url.scheme(), scheme);
            assert_eq!(url.host(), &ProxyHost::Ipv4("203.0.113.9".parse().unwrap()));
        }
    }

    #[test]
    fn userinfo_is_percent_decoded_exactly_once() {
        let url = ProxyUrl::parse("socks5://us%40er:p%2541%3Ass%2F@h:1080").unwrap();
        assert_eq!(url.credentials(), Some(("us@er", "p%41:ss/")));
        assert_eq!(url.redacted(), "socks5://us%40er:***@h:1080");
        let sub_delims = ProxyUrl::parse("http://u:a!$&'()*+,;=~._-@h:1").unwrap();
        assert_eq!(sub_delims.credentials(), Some(("u", "a!$&'()*+,;=~._-")));
    }

    #[test]
    fn password_never_survives_redaction() {
        let cases = [
            ("http://user:hunter2@proxy.example:8080", "http://user:***@proxy.example:8080", vec!["hunter2"]),
            ("socks5://alice:s3cr3t@10.1.2.3:1080", "socks5://alice:***@10.1.2.3:1080", vec!["s3cr3t"]),
            ("socks4://bob:pw4@10.1.2.3:1080", "socks4://bob:***@10.1.2.3:1080", vec!["pw4"]),
            ("https://u:p%40ss%3Aw0rd@host:443", "https://u:***@host:443", vec!["p%40ss", "p@ss", "w0rd", "%3A"]),
            ("http://us%65r:pa%20ss@h:1", "http://us%65r:***@h:1", vec!["pa%20ss", "pa ss"]),
            ("http://user:pw@host:8080/?token=abc", "http://user:***@host:8080?***", vec!["abc"]),
            ("http://host:3128", "http://host:3128", vec![]),
            ("http://host:3128/", "http://host:3128", vec![]),
            ("http://user:secret@[bad", "http://user:***@***", vec!["secret"]),
            ("user:secret@host:1", "***@host:1", vec!["secret"]),
            ("http://user:secret", "http://***", vec!["secret"]),
            ("http://alice:pa", "http://***", vec!["pa"]),
            ("{\"u\":\"http://a:b@c:1\"}", "***", vec!["b@"]),
        ];
        for (input, expected, secrets) in cases {
            let redacted = redact_url(input);
            assert_eq!(redacted, expected, "redacting {input}");
            assert_no_secret(&redacted, &secrets);
            assert_eq!(redact_url(&redacted), redacted, "redaction is idempotent");
        }
    }

    #[test]
    fn urls_inside_text_are_redacted() {
        let text = redact_text("connect to \"http://u:hunter2@h:1\" failed: refused");
        assert_eq!(text, "connect to http://u:***@h:1 failed: refused");
        // A password with a raw space splits in two words; neither half survives.
        let text = redact_text("bad url http://u:hun ter2@h:1 in settings");
        assert_no_secret(&text, &["hun", "ter2"]);
        assert_eq!(redact_text("a\n(http://u:pw@h:1),\tb"), "a\nhttp://u:***@h:1\tb");
        // Found by `unicode_and_encoded_credentials_never_show`: with two raw spaces the
        // middle word of a password survived (`says http://*** ? ***@a:1 failed`).
        let text = redact_text("says http://\u{10740}: ? @a:1 failed");
        assert_eq!(text, "says http://***:***@a:1 failed");
        let text = redact_text("proxy http://alice:correct horse battery staple@h:1 refused");
        assert_eq!(text, "proxy http://alice:***@h:1 refused");
        // A digits-only first part looks like a port, yet is hidden too.
        assert_eq!(redact_text("via http://a:0 x y@h:1 ok"), "via http://a:***@h:1 ok");
        // Found likewise: a user name with a raw '/', '?' or whitespace before such a password.
        assert_eq!(redact_text("says http:///:\tAA0\t@a:1 failed"), "says http://***:***@a:1 failed");
        assert_eq!(redact_text("says http://?: 00' @a:1 failed"), "says http://***:***@a:1 failed");
        assert_eq!(redact_text("says http://\t:a0%\t@a:1 failed"), "says http://***:***@a:1 failed");
        // Not across lines, nor past another URL.
        assert_eq!(redact_text("GET http://h:1\nbob@h:2"), "GET http://h:1\n***@h:2");
        assert_eq!(redact_text("http://h:1 http://u:p@h:2"), "http://h:1 http://u:***@h:2");
    }

    #[test]
    fn debug_display_and_errors_hide_the_password() {
        let url = ProxyUrl::parse("socks5://alice:t0p%2Fsecret@10.0.0.9:1080").unwrap();
        for shown in [format!("{url}"), format!("{url:?}")] {
            assert_no_secret(&shown, &["t0p", "secret"]);
            assert!(shown.contains("alice:***@10.0.0.9:1080"), "{shown}");
        }
        assert_eq!(url.expose(), "socks5://alice:t0p%2Fsecret@10.0.0.9:1080");
        assert_eq!(url.id(), proxy_id(url.expose()));
        let scrubbed = url.scrub("auth failed for alice:t0p/secret and t0p%2Fsecret");
        assert_no_secret(&scrubbed, &["t0p", "secret"]);
    }

    fn password_chars() -> impl Strategy<Value = String> {
        // Any printable ASCII but space: raw reserved characters included.
        proptest::collection::vec(0x21u8..0x7f, 6..24).prop_map(|b| String::from_utf8(b).unwrap())
    }

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{1,10}(\\.[a-z]{2,6}){0,2}",
            (any::<u8>(), any::<u8>()).prop_map(|(a, b)| format!("10.{a}.{b}.1")),
            any::<u16>().prop_map(|x| format!("[2001:db8::{x:x}]")),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// For any URL with credentials, written raw or percent-encoded, the
        /// redacted text never contains the password (issue #12, item 4).
        #[test]
        fn redaction_never_shows_a_password(
            scheme in prop::sample::select(vec!["http", "https", "socks4", "socks4a", "socks5", "socks5h", "wss"]),
            user in "[a-z0-9_.-]{1,12}",
            password in password_chars(),
            host in host(),
            port in 1u16..,
            encode in any::<bool>(),
            tail in prop::sample::select(vec!["", "/", "/x", "?k=v", "#f"]),
        ) {
            let written = if encode {
                percent_encoding::utf8_percent_encode(&password, percent_encoding::NON_ALPHANUMERIC).to_string()
            } else {
                password.clone()
            };
            let url = format!("{scheme}://{user}:{written}@{host}:{port}{tail}");
            let kept = format!("proxy {scheme}://{user}:{REDACTED}@{host}:{port}{tail}?{REDACTED} failed '");
            prop_assume!(!kept.contains(&password) && !kept.contains(&written));
            for redacted in [redact_url(&url), redact_text(&format!("proxy {url} failed")), redact_text(&format!("'{url}'"))] {
                prop_assert!(!redacted.contains(&password), "{password:?} in {redacted:?} (from {url:?})");
                prop_assert!(!redacted.contains(&written), "{written:?} in {redacted:?} (from {url:?})");
            }
            if let Err(err) = ProxyUrl::parse(&url) {
                prop_assert!(!err.to_string().contains(&password), "{err}");
            }
        }

        /// Any password, percent-encoded, parses back to itself (decoded exactly
        /// once) and shows only as `***`.
        #[test]
        fn any_percent_encoded_password_decodes_exactly_once(
            scheme in prop::sample::select(ProxyScheme::ALL.to_vec()),
            user in "[a-z0-9]{1,8}",
            password in "\\PC{1,24}",
        ) {
            let written = percent_encoding::utf8_percent_encode(&password, percent_encoding::NON_ALPHANUMERIC).to_string();
            let url = format!("{scheme}://{user}:{written}@gw.example:1080");
            let parsed = ProxyUrl::parse(&url).unwrap();
            prop_assert_eq!(parsed.credentials(), Some((user.as_str(), password.as_str())));
            let expected = format!("{scheme}://{user}:***@gw.example:1080");
            prop_assert_eq!(format!("{parsed}"), expected.clone());
            prop_assert_eq!(format!("{parsed:?}"), format!("ProxyUrl({expected:?})"));
            prop_assert_eq!(parsed.id(), proxy_id(&url));
        }
    }

    /// A user name or password as written in a URL: raw, fully percent-encoded,
    /// or with only the characters a user info may not hold raw encoded.
    fn written(text: &str, how: u8) -> String {
        const MUST: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
            .add(b' ')
            .add(b'"')
            .add(b'#')
            .add(b'%')
            .add(b'/')
            .add(b':')
            .add(b'<')
            .add(b'>')
            .add(b'?')
            .add(b'@')
            .add(b'[')
            .add(b'\\')
            .add(b']')
            .add(b'^')
            .add(b'`')
            .add(b'{')
            .add(b'|')
            .add(b'}');
        match how % 3 {
            0 => text.to_owned(),
            1 => percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string(),
            _ => percent_encoding::utf8_percent_encode(text, MUST).to_string(),
        }
    }

    fn credential() -> impl Strategy<Value = String> {
        prop_oneof!["\\PC{1,16}", "[a-zA-Z0-9%:@/?#\\[\\] \t\"'-]{1,16}", "[\\u{80}-\\u{10ffff}]{1,8}", any::<String>()]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// For any user name and password, unicode, control characters and URL
        /// delimiters included, written raw or percent-encoded (all of it, or only
        /// what must be): neither the password (with 3 characters or more besides
        /// whitespace and `@:/?#`, not part of the text kept on purpose) nor its
        /// written form ever shows
        /// through `redact_url`, `redact_text`, a parsed URL's `Display`, `Debug`
        /// and `scrub`, or a parse error. The user name is kept by design
        /// (residential gateways differ only by it, docs/pool.md), but only as
        /// written and only when it is made of characters a URL allows there: a raw
        /// unicode or delimiter-bearing user name is hidden by `redact_url` too
        /// (`redact_text` may show the first word of a user name with a raw space).
        #[test]
        fn unicode_and_encoded_credentials_never_show(
            scheme in prop::sample::select(vec!["http", "https", "socks4", "socks4a", "socks5", "socks5h", "nats"]),
            user in credential(),
            password in credential(),
            how in (any::<u8>(), any::<u8>()),
            host in host(),
            port in 1u16..,
        ) {
            let (user_w, password_w) = (written(&user, how.0), written(&password, how.1));
            let url = format!("{scheme}://{user_w}:{password_w}@{host}:{port}");
            let kept = format!(
                "says {scheme}://{user_w}:{REDACTED}@{host}:{port}?{REDACTED} failed ' \" ProxyUrl(\"{scheme}://{user_w}:{REDACTED}@{host}:{port}\")"
            );
            let mut shown = vec![redact_url(&url), redact_text(&format!("says {url} failed")), redact_text(&format!("'{url}'"))];
            // Idempotent: the aggregator keeps a stored (redacted) URL that an event repeats as it is.
            prop_assert_eq!(redact_url(&shown[0]), shown[0].clone(), "redacting {:?} again", url);
            match ProxyUrl::parse(&url) {
                Ok(parsed) => {
                    prop_assert_eq!(parsed.credentials(), Some((user.as_str(), password.as_str())));
                    shown.extend([format!("{parsed}"), format!("{parsed:?}"), parsed.redacted(), parsed.without_credentials()]);
                    shown.push(parsed.scrub(&format!("auth failed for {user}:{password} at {url}")));
                }
                Err(err) => shown.push(err.to_string()),
            }
            // What every error says anyway: a password made of its words is not looked for there.
            let fixed: String = [
                ProxyUrlError::MissingScheme, ProxyUrlError::UnsupportedScheme(scheme.into()), ProxyUrlError::Trailing("path"),
                ProxyUrlError::Trailing("query"), ProxyUrlError::Trailing("fragment"), ProxyUrlError::MissingHost,
                ProxyUrlError::InvalidHost, ProxyUrlError::MissingPort, ProxyUrlError::InvalidPort, ProxyUrlError::Whitespace,
                ProxyUrlError::Userinfo("holds a raw '@' (percent-encode it as %40) holds a raw ':' after the one between them (percent-encode it as %3A) is empty: write user:password@host:port holds a '%' that is not followed by two hex digits is not UTF-8 once percent-decoded holds a character that must be percent-encoded"),
            ].iter().map(|e| format!("{e}\n")).collect();
            for secret in [&password, &password_w] {
                let substance = secret.chars().filter(|c| !c.is_whitespace() && !"@:/?#".contains(*c)).count();
                if kept.contains(secret.as_str()) || user.contains(secret.as_str()) || fixed.contains(secret.as_str()) || substance < 3 {
                    continue;
                }
                // `redact_text` cannot tell where a URL whose user name or password holds
                // a raw `@` and whose password holds raw whitespace ends (`http://u:@A\t0] @h:1`
                // reads as user `u`, empty password, then words): only `redact_url` is asked.
                let raw_at = user_w.contains('@') || password_w.contains('@');
                let checked = if raw_at && secret.contains(char::is_whitespace) { &shown[..1] } else { &shown[..] };
                for text in checked {
                    prop_assert!(!text.contains(secret.as_str()), "{:?} in {:?} (from {:?})", secret, text, url);
                }
            }
            let plain_user = user_w.bytes().all(is_userinfo_byte) && user_w.contains(user.as_str());
            let user_elsewhere = format!("{scheme}://:{REDACTED}@{host}:{port}?{REDACTED} says failed ' \"").contains(user.as_str());
            if !plain_user && !user_elsewhere && !user.contains(REDACTED) && !user.trim().is_empty() && !user_w.contains(':') {
                let text = &shown[0];
                prop_assert!(!text.contains(user.as_str()), "user {:?} in {:?} (from {:?})", user, text, url);
            }
        }

        /// Arbitrary text never panics the parser or the redactors; a parse error
        /// quotes nothing of the text but a well-formed scheme; and for text shaped
        /// `[scheme://]user:password@rest`, with any parts, `redact_url` never shows
        /// the password unless the text holds it outside the user info too.
        #[test]
        fn arbitrary_text_never_shows_the_password_of_its_user_info(
            text in prop_oneof![
                any::<String>(),
                (
                    prop::sample::select(vec!["http://", "socks5h://", "x+y.z://", "1a://", "://", ""]),
                    any::<String>(),
                    "[^@]{1,12}",
                    any::<String>(),
                )
                    .prop_map(|(scheme, user, password, rest)| format!("{scheme}{user}:{password}@{rest}")),
            ],
        ) {
            if let Err(ProxyUrlError::UnsupportedScheme(shown)) = ProxyUrl::parse(&text) {
                prop_assert!(shown == REDACTED || (is_scheme(&shown) && text.to_ascii_lowercase().contains(&shown)), "{:?}", shown);
            }
            let redacted = redact_url(&text);
            let in_text = redact_text(&text);
            if let Some((_, _, password, _)) = userinfo_parts(&text)
                && !kept_anyway(&text, password)
            {
                prop_assert!(!redacted.contains(password), "{:?} in {:?}", password, redacted);
                if !password.contains(char::is_whitespace) && text.matches(password).count() == 1 && !text.contains(char::is_whitespace) {
                    prop_assert!(!in_text.contains(password), "{:?} in {:?}", password, in_text);
                }
            }
        }

        /// A URL that parses is shown as exactly `scheme://user:***@host:port`
        /// (scheme, user and authority as written, a trailing `/` dropped).
        #[test]
        fn a_valid_url_shows_as_scheme_user_stars_host_port(
            scheme in prop::sample::select(vec!["http", "HTTPS", "socks4", "Socks4a", "socks5", "socks5h"]),
            user in prop::option::of("[a-zA-Z0-9._~!$&'()*+,;=-]{1,8}(%[0-9A-F]{2}){0,2}"),
            password in prop::option::of("\\PC{0,12}"),
            host in host(),
            port in 1u16..,
            slash in any::<bool>(),
        ) {
            let password = password.map(|p| percent_encoding::utf8_percent_encode(&p, percent_encoding::NON_ALPHANUMERIC).to_string());
            let userinfo = match (&user, &password) {
                (Some(user), Some(password)) => format!("{user}:{password}@"),
                (Some(user), None) => format!("{user}@"),
                (None, _) => String::new(),
            };
            let slash = if slash { "/" } else { "" };
            let url = format!("{scheme}://{userinfo}{host}:{port}{slash}");
            let Ok(parsed) = ProxyUrl::parse(&url) else {
                // Only a user name whose escapes are not UTF-8 may be refused.
                prop_assert!(user.is_some_and(|u| u.contains('%')), "{:?} refused", url);
                return Ok(());
            };
            let expected = match (&user, &password) {
                (Some(user), Some(_)) => format!("{scheme}://{user}:{REDACTED}@{host}:{port}"),
                (Some(user), None) => format!("{scheme}://{user}@{host}:{port}"),
                (None, _) => format!("{scheme}://{host}:{port}"),
            };
            prop_assert_eq!(redact_url(&url), expected.clone());
            prop_assert_eq!(parsed.to_string(), expected);
        }
    }
}
