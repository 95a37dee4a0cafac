//! How proxybus parts connect to NATS: `NATS_URL` plus the credentials an
//! authenticated deployment needs, read from an injected [`EnvSource`].
//!
//! | variable | meaning |
//! | --- | --- |
//! | `NATS_URL` | server URL(s), comma-separated (default `nats://127.0.0.1:4222`) |
//! | `NATS_TOKEN` | token authentication |
//! | `NATS_USER`, `NATS_PASSWORD` | user/password authentication |
//! | `NATS_NKEY_SEED` | nkey seed (`SU…`) |
//! | `NATS_CREDS` | path of a `.creds` file (JWT + nkey) |
//! | `NATS_CA` | PEM file of root certificates to trust (implies TLS) |
//! | `NATS_CERT`, `NATS_KEY` | client certificate and key for mutual TLS |
//! | `NATS_TLS_REQUIRED` | `true` to refuse a plain-text connection |
//! | `NATS_CONNECT_TIMEOUT_SECONDS` | connect timeout (default 5) |

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::config::{ConfigError, EnvSource, Issues};
use crate::nats_server::{ServerVersion, VersionError, check_version};

/// Default server URL.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// How to authenticate to NATS.
#[derive(Debug, Clone, Default)]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// A token.
    Token(SecretString),
    /// A user and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: SecretString,
    },
    /// An nkey seed.
    NkeySeed(SecretString),
    /// A `.creds` file.
    CredsFile(PathBuf),
}

/// NATS connection settings; `Debug` shows the server URLs redacted.
#[derive(Clone)]
pub struct NatsSettings {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// Credentials.
    pub auth: NatsAuth,
    /// Root certificates to trust.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Refuse a plain-text connection.
    pub tls_required: bool,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Client name shown in the server's monitoring.
    pub name: Option<String>,
}

impl std::fmt::Debug for NatsSettings {
    /// Every field, the URLs through [`crate::redact_url`]: `NATS_URL` may carry a
    /// password (`nats://user:password@host:4222`; found by
    /// `nats_settings_errors_never_show_a_secret`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url: Vec<String> = self.url.split(',').map(|server| crate::redact_url(server.trim())).collect();
        f.debug_struct("NatsSettings")
            .field("url", &url.join(","))
            .field("auth", &self.auth)
            .field("tls_ca", &self.tls_ca)
            .field("tls_client", &self.tls_client)
            .field("tls_required", &self.tls_required)
            .field("connect_timeout", &self.connect_timeout)
            .field("name", &self.name)
            .finish()
    }
}

impl Default for NatsSettings {
    fn default() -> Self {
        Self {
            url: DEFAULT_NATS_URL.to_owned(),
            auth: NatsAuth::None,
            tls_ca: None,
            tls_client: None,
            tls_required: false,
            connect_timeout: Duration::from_secs(5),
            name: None,
        }
    }
}

impl NatsSettings {
    /// Settings for `url` with no credentials.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), ..Self::default() }
    }

    /// Reads the `NATS_*` variables of `env`; every invalid one is reported.
    pub fn from_env(env: &EnvSource) -> Result<Self, ConfigError> {
        let mut issues = Issues::default();
        let mut settings = Self::default();
        if let Some(url) = env.non_empty("NATS_URL") {
            settings.url = url.trim().to_owned();
        }
        let token = env.non_empty("NATS_TOKEN");
        let user = env.non_empty("NATS_USER");
        let password = env.non_empty("NATS_PASSWORD");
        let seed = env.non_empty("NATS_NKEY_SEED");
        let creds = env.non_empty("NATS_CREDS");
        let methods = [token.is_some(), user.is_some(), seed.is_some(), creds.is_some()].iter().filter(|b| **b).count();
        if methods > 1 {
            issues.push("NATS_TOKEN/NATS_USER/NATS_NKEY_SEED/NATS_CREDS", "set only one authentication method");
        }
        settings.auth = match (token, user, password, seed, creds) {
            (Some(token), ..) => NatsAuth::Token(token.to_owned().into()),
            (_, Some(user), Some(password), ..) => {
                NatsAuth::UserPassword { user: user.to_owned(), password: password.to_owned().into() }
            }
            (_, Some(_), None, ..) => {
                issues.push("NATS_PASSWORD", "NATS_USER is set but NATS_PASSWORD is not");
                NatsAuth::None
            }
            (_, _, _, Some(seed), _) => NatsAuth::NkeySeed(seed.to_owned().into()),
            (_, _, _, _, Some(path)) => NatsAuth::CredsFile(path.into()),
            _ => NatsAuth::None,
        };
        settings.tls_ca = env.non_empty("NATS_CA").map(PathBuf::from);
        settings.tls_client = match (env.non_empty("NATS_CERT"), env.non_empty("NATS_KEY")) {
            (Some(cert), Some(key)) => Some((cert.into(), key.into())),
            (None, None) => None,
            _ => {
                issues.push("NATS_CERT/NATS_KEY", "set both the client certificate and its key");
                None
            }
        };
        if let Some(flag) = env.non_empty("NATS_TLS_REQUIRED") {
            match flag.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => settings.tls_required = true,
                "false" | "0" | "no" => settings.tls_required = false,
                other => issues.push("NATS_TLS_REQUIRED", format!("{other:?} is not a boolean")),
            }
        }
        if let Some(timeout) = env.non_empty("NATS_CONNECT_TIMEOUT_SECONDS") {
            match timeout.trim().parse::<u64>() {
                Ok(secs @ 1..=300) => settings.connect_timeout = Duration::from_secs(secs),
                _ => issues
                    .push("NATS_CONNECT_TIMEOUT_SECONDS", format!("{timeout:?} is not a number of seconds in 1..=300")),
            }
        }
        for (i, server) in settings.url.split(',').enumerate() {
            let server = server.trim();
            if server.parse::<async_nats::ServerAddr>().is_err() {
                issues.push(
                    format!("NATS_URL[{i}]"),
                    format!("not a NATS server address: {}", crate::redact_url(server)),
                );
            }
        }
        issues.into_result()?;
        Ok(settings)
    }

    /// The client name to show in server monitoring.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Connect options with credentials, TLS, name and connect timeout applied.
    pub async fn connect_options(&self) -> Result<async_nats::ConnectOptions, async_nats::ConnectError> {
        let io = |err: std::io::Error| async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::Io, err);
        let mut options = match &self.auth {
            NatsAuth::None => async_nats::ConnectOptions::new(),
            NatsAuth::Token(token) => async_nats::ConnectOptions::with_token(token.expose_secret().to_owned()),
            NatsAuth::UserPassword { user, password } => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.expose_secret().to_owned())
            }
            NatsAuth::NkeySeed(seed) => async_nats::ConnectOptions::with_nkey(seed.expose_secret().to_owned()),
            NatsAuth::CredsFile(path) => async_nats::ConnectOptions::with_credentials_file(path).await.map_err(io)?,
        };
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.tls_client {
            options = options.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
        }
        if self.tls_required {
            options = options.require_tls(true);
        }
        if let Some(name) = &self.name {
            options = options.name(name.clone());
        }
        Ok(options.connection_timeout(self.connect_timeout))
    }

    /// Connects to NATS, failing when no server answers or the server is older than
    /// [`MINIMUM_VERSION`](crate::nats_server::MINIMUM_VERSION); once connected the client
    /// reconnects by itself.
    ///
    /// # Errors
    /// [`ConnectError::Connect`] when no server answers or authentication fails;
    /// [`ConnectError::UnsupportedServer`] when the server's `INFO` names an older version.
    pub async fn connect(&self) -> Result<async_nats::Client, ConnectError> {
        let client = self.connect_options().await?.connect(self.servers()).await?;
        ensure_supported(&client)?;
        Ok(client)
    }

    /// Connects to NATS and keeps retrying the first connection in the background,
    /// for services that must start before the bus is up. The server's version is not known
    /// until it answers: call [`ensure_supported`] after the first round trip.
    pub async fn connect_retrying(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        self.connect_options().await?.retry_on_initial_connect().connect(self.servers()).await
    }

    fn servers(&self) -> Vec<async_nats::ServerAddr> {
        self.url.split(',').filter_map(|s| s.trim().parse().ok()).collect()
    }
}

/// Why [`NatsSettings::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No server answered, or it refused the credentials.
    #[error(transparent)]
    Connect(#[from] async_nats::ConnectError),
    /// The server is older than proxybus supports (or announced no readable version).
    #[error(transparent)]
    UnsupportedServer(#[from] VersionError),
}

/// Checks the version the connected server announced in its `INFO`.
///
/// # Errors
/// [`VersionError`] when it is older than
/// [`MINIMUM_VERSION`](crate::nats_server::MINIMUM_VERSION) or unreadable (also when the client
/// has not connected yet: call this after a round trip).
pub fn ensure_supported(client: &async_nats::Client) -> Result<ServerVersion, VersionError> {
    check_version(&client.server_info().version)
}

/// Waits until `client` (made by [`NatsSettings::connect_retrying`]) has connected, then checks
/// the server's version as [`ensure_supported`] does. Waits forever while no server answers:
/// race it against shutdown.
///
/// # Errors
/// As [`ensure_supported`].
pub async fn ensure_supported_once_connected(client: &async_nats::Client) -> Result<ServerVersion, VersionError> {
    while client.connection_state() != async_nats::connection::State::Connected {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    ensure_supported(client)
}

/// A NATS micro-service that did not list an endpoint in `$SRV.INFO.{name}` in time.
#[derive(Debug, thiserror::Error)]
#[error("{name} did not register within {limit:?}")]
pub struct ServiceNotRegistered {
    /// The service name.
    pub name: String,
    /// How long it was waited for.
    pub limit: std::time::Duration,
}

/// Waits until an instance of the micro-service `name` serves: its `$SRV.INFO.{name}`
/// answer (the NATS micro-services protocol) lists at least one endpoint. Asks every
/// 100 ms with a 500 ms timeout per ask, for at most `limit`.
///
/// Not `$SRV.PING`: a service answers PING as soon as it starts, before its endpoints
/// subscribe, and a request sent in between finds no responder. async-nats lists an
/// endpoint in INFO once its subscription was sent, on the connection the INFO answer
/// then follows, so the server knows the subscription before the answer arrives.
///
/// # Errors
/// [`ServiceNotRegistered`] when no instance listed an endpoint within `limit`.
pub async fn wait_for_service(
    client: &async_nats::Client,
    name: &str,
    limit: std::time::Duration,
) -> Result<(), ServiceNotRegistered> {
    use std::time::Duration;
    let subject = format!("$SRV.INFO.{name}");
    let serves = |payload: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(payload)
            .is_ok_and(|info| info["endpoints"].as_array().is_some_and(|endpoints| !endpoints.is_empty()))
    };
    tokio::time::timeout(limit, async {
        loop {
            if let Ok(Ok(reply)) =
                tokio::time::timeout(Duration::from_millis(500), client.request(subject.clone(), "".into())).await
                && serves(&reply.payload)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .map_err(|_| ServiceNotRegistered { name: name.to_owned(), limit })
}
