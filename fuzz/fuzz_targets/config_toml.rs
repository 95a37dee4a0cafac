//! The TOML parser of `ProxySettings` (`config::from_toml_str`).
//!
//! First byte even: the rest is arbitrary text, which must never panic the parser
//! or its validation. First byte odd: a settings file with a secret in it (a
//! proxy URL's password, a service endpoint's password, a credential), written
//! escaped, percent-encoded or raw, then broken in one of several ways; the
//! bytes after the selector choose the template and the breakage, and the rest is
//! the secret. Invariant: no error (`Display` or `Debug`) contains the secret, and
//! no settings' `Debug` shows a secret kept in a `SecretString`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxybus_shared::config::{self, ProxySettings};

/// (text before the secret, text after it inside the TOML string, the closing
/// quote, text after the string, whether the secret is a `SecretString`).
const TEMPLATES: [(&str, &str, &str, &str, bool); 5] = [
    ("enabled = true\n[default.http]\nurl = \"http://alice:", "@10.0.0.1:3128", "\"", "\ntimeout_seconds = 30\n", true),
    ("[default.websocket.pool]\nproxies = [ { url = \"socks5://bob:", "@gw.example:1080", "\"", " } ]\n", true),
    ("[external_service]\nenabled = true\nendpoints = [\"https://svc:", "@svc.example:8443", "\"", "]\n", false),
    (
        "[external_service]\nenabled = true\nendpoints = [\"https://svc.example:8443\"]\nauth_credentials = { token = \"",
        "",
        "\"",
        " }\n",
        true,
    ),
    ("[exchanges.binance.http]\nurl = \"socks5h://carol:", "@[2001:db8::1]:1080", "\"", "\n", true),
];

/// A TOML basic-string escape of `text`.
fn toml_escape(text: &str) -> String {
    let mut escaped = String::new();
    for c in text.chars() {
        match c {
            '"' => escaped.push_str("\\\""),
            '\\' => escaped.push_str("\\\\"),
            c if c.is_control() => escaped.push_str(&format!("\\u{:04X}", c as u32)),
            c => escaped.push(c),
        }
    }
    escaped
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// `head` with the scheme of its URL replaced by `ftp`, which no proxy speaks.
fn unsupported_scheme(head: &str) -> String {
    let Some(at) = head.find("://") else { return head.to_owned() };
    let start = head[..at].rfind(|c: char| !c.is_ascii_alphanumeric()).map_or(0, |i| i + 1);
    format!("{}ftp{}", &head[..start], &head[at..])
}

/// The settings file of `template` with `written` as its secret, broken by
/// `breakage`: 0 none, 1 string left open, 2 a wrong type after it, 3 junk after
/// the string, 4 the secret's line twice (a duplicate key), 5 an unsupported scheme.
fn document(template: usize, breakage: u8, written: &str) -> String {
    let (head, tail, close, rest, _) = TEMPLATES[template];
    let head = if breakage == 5 { unsupported_scheme(head) } else { head.to_owned() };
    match breakage {
        1 => format!("{head}{written}{tail}{rest}"),
        2 => format!("{head}{written}{tail}{close}{rest}timeout_seconds = \"soon\"\n"),
        3 => format!("{head}{written}{tail}{close} junk{rest}"),
        4 => {
            let text = format!("{head}{written}{tail}{close}{rest}");
            let line = head.lines().last().unwrap_or_default();
            format!("{text}{line}{written}{tail}{close}{rest}")
        }
        _ => format!("{head}{written}{tail}{close}{rest}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    if selector % 2 == 0 {
        let _ = config::from_toml_str::<ProxySettings>(&String::from_utf8_lossy(rest));
        return;
    }
    let [template, breakage, how, secret @ ..] = rest else { return };
    let template = *template as usize % TEMPLATES.len();
    let breakage = breakage % 6;
    let secret = String::from_utf8_lossy(secret);
    let secret: String = secret.chars().take(48).collect();
    let written = match how % 3 {
        0 => toml_escape(&secret),
        1 => percent_encode(&secret),
        _ => secret.clone(),
    };
    let text = document(template, breakage, &written);
    let without = document(template, breakage, "");
    // A secret that the file holds anyway, or that an error states as a fixed
    // word, is not the one being looked for.
    let distinctive = |s: &str| s.chars().count() >= 4 && !without.contains(s) && !s.contains("***");
    // What the same file without the secret makes the parser say: words of it
    // (`enabled`, `proxies` …) are not the secret showing.
    let said_anyway = match config::from_toml_str::<ProxySettings>(&without) {
        Err(err) => format!("{err}\n{err:?}\n{:?}", ProxySettings::default()),
        Ok(settings) => format!("{settings:?}\n{:?}", ProxySettings::default()),
    };
    match config::from_toml_str::<ProxySettings>(&text) {
        Err(err) => {
            for shown in [err.to_string(), format!("{err:?}")] {
                for candidate in [secret.as_str(), written.as_str()] {
                    if distinctive(candidate) && !said_anyway.contains(candidate) {
                        assert!(!shown.contains(candidate), "{candidate:?} leaked from\n{text}\ninto\n{shown}");
                    }
                }
            }
        }
        Ok(settings) => {
            if TEMPLATES[template].4 && distinctive(&secret) && !said_anyway.contains(secret.as_str()) {
                let shown = format!("{settings:?}");
                assert!(!shown.contains(secret.as_str()), "{secret:?} in {shown}");
            }
        }
    }
});
