//! Client options tuned for servers that tests stop, kill and restart, and the credentials a
//! harness server requires.

use std::time::Duration;

use async_nats::ConnectOptions;

/// How long the client waits for one connection attempt.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest pause between two reconnect attempts: short, so a restart costs a test little time.
const MAX_RECONNECT_DELAY: Duration = Duration::from_millis(250);

/// Credentials a server requires from its clients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// Anyone may connect.
    #[default]
    None,
    /// `authorization { token }`.
    Token(String),
    /// `authorization { user, password }`.
    UserPassword {
        /// The user name.
        user: String,
        /// The user's password.
        password: String,
    },
}

impl Credentials {
    /// `options` presenting these credentials.
    pub(crate) fn apply(&self, options: ConnectOptions) -> ConnectOptions {
        match self {
            Self::None => options,
            Self::Token(token) => options.token(token.clone()),
            Self::UserPassword { user, password } => options.user_and_password(user.clone(), password.clone()),
        }
    }

    /// The `authorization` block of a server config, empty for [`Credentials::None`].
    pub(crate) fn config_block(&self) -> String {
        match self {
            Self::None => String::new(),
            Self::Token(token) => format!("authorization {{ token: {} }}\n", quote(token)),
            Self::UserPassword { user, password } => {
                format!("authorization {{ user: {}, password: {} }}\n", quote(user), quote(password))
            }
        }
    }
}

/// Options that keep reconnecting quickly and forever, so a client survives server restarts.
pub(crate) fn resilient_options() -> ConnectOptions {
    ConnectOptions::new()
        .name("proxybus-tests")
        .connection_timeout(CONNECTION_TIMEOUT)
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
}

/// Pause before reconnect attempt `attempts`: 0, 25 ms, 50 ms, … capped at 250 ms.
fn reconnect_delay(attempts: usize) -> Duration {
    let millis = u64::try_from(attempts.saturating_sub(1)).unwrap_or(u64::MAX).saturating_mul(25);
    Duration::from_millis(millis).min(MAX_RECONNECT_DELAY)
}

/// `value` as a double-quoted nats-server config string.
pub(crate) fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for character in value.chars() {
        if matches!(character, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(character);
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_starts_at_zero_and_is_capped() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(25));
        assert_eq!(reconnect_delay(usize::MAX), MAX_RECONNECT_DELAY);
    }

    #[test]
    fn quote_escapes_quotes_and_backslashes() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
