//! Test oracles that the crate's own tests share with tests outside it: compiled for
//! `cargo test` of this crate and, for other crates, behind the `testing` feature
//! (`proxybus-shared = { …, features = ["testing"] }`, as the fuzz targets of `fuzz/`
//! enable it). No part of the wire contract: services never enable it.
//!
//! - [`userinfo_parts`] and [`kept_anyway`]: where a password stands in arbitrary text, and
//!   whether it may show after redaction; the property tests of [`crate::proxy_url`] and
//!   `fuzz/fuzz_targets/proxy_url.rs` assert the same invariants with them.
//! - [`LogBuffer`]: a `tracing` writer that keeps what a test's code logged.

use std::sync::{Arc, Mutex};

use crate::proxy_url::REDACTED;

/// `(scheme, user, password, after)` of text shaped `[scheme://]user:password@after`, the
/// user info being what comes before the last `@`; `None` when there is no user info with a
/// password. The scheme is empty when the text has no `://`.
///
/// # Examples
///
/// ```
/// use proxybus_shared::testing::userinfo_parts;
///
/// assert_eq!(userinfo_parts("http://u:p@w@h:1"), Some(("http", "u", "p@w", "h:1")));
/// assert_eq!(userinfo_parts("u:p@h"), Some(("", "u", "p", "h")));
/// assert_eq!(userinfo_parts("http://h:1"), None);
/// ```
pub fn userinfo_parts(text: &str) -> Option<(&str, &str, &str, &str)> {
    let (scheme, rest) = text.split_once("://").unwrap_or(("", text));
    let (userinfo, after) = rest.rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':')?;
    Some((scheme, user, password, after))
}

/// Whether `password` can show in the redacted `text` only as a part of what redaction keeps
/// on purpose (the scheme, the user name, what follows the user info, the `***` it writes),
/// or is empty; always `true` when `text` has no user info with a password.
pub fn kept_anyway(text: &str, password: &str) -> bool {
    let Some((scheme, user, _, after)) = userinfo_parts(text) else { return true };
    let kept = format!("{scheme}://{user}:{REDACTED}@{after}?{REDACTED} {scheme}://{REDACTED}:{REDACTED}@{after}");
    password.is_empty() || password.contains(REDACTED) || kept.contains(password) || REDACTED.contains(password)
}

/// A `tracing` writer that keeps what is written, for a test to read back with
/// [`LogBuffer::text`]; clones share one buffer.
///
/// # Examples
///
/// ```
/// use proxybus_shared::telemetry::{LogFormat, subscriber};
/// use proxybus_shared::testing::LogBuffer;
///
/// let logs = LogBuffer::default();
/// let subscriber = subscriber(LogFormat::Plain, Some("warn"), false, logs.clone());
/// tracing::subscriber::with_default(subscriber, || tracing::warn!("planted"));
/// assert!(logs.text().contains("planted"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    /// Everything written so far, as text.
    ///
    /// # Panics
    /// When what was written is not UTF-8 (a `tracing` formatter writes UTF-8).
    pub fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        String::from_utf8(bytes).expect("logs are UTF-8")
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
