//! [`NatsServer`]: one real `nats-server` process per test, on a random port, with its own
//! JetStream store, config and log in a temporary directory; killed and cleaned up on drop.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::{Client, ConnectOptions};
use tempfile::TempDir;
use tokio::time::{Instant, sleep};

use crate::connect::{Credentials, quote, resilient_options};
use crate::monitor;
use crate::process::{self, POLL_INTERVAL, PortInUse, ServerProcess};

/// How long a server may take from spawn to ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a restart keeps retrying while the old port is still held.
const PORT_REUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a graceful stop waits before it kills the server.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Environment variable that, when set, makes a dropped server print its log.
const TEST_LOG_ENV: &str = "TEST_LOG";

/// Server name of a standalone server.
const STANDALONE_NAME: &str = "proxybus-test";

/// A real `nats-server` process listening on `127.0.0.1`, owned by one test.
///
/// Dropping it kills and reaps the process and removes its directory (config, JetStream store and
/// log). With `TEST_LOG` set, the log is printed first.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use proxybus_tests::NatsServer;
///
/// let mut server = NatsServer::start().await?;
/// let client = server.connect().await?;
/// client.publish("greeting", "hello".into()).await?;
/// server.kill()?; // like `kill -9`
/// server.restart().await?; // same port, same JetStream store; `client` reconnects
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    settings: Settings,
    /// Owns `nats.conf`, `store/`, `ports/` and `nats-server.log`; removed on drop.
    dir: TempDir,
    store_dir: PathBuf,
    log_path: PathBuf,
    client_port: u16,
    monitoring_port: u16,
    process: Option<ServerProcess>,
}

/// Options for a [`NatsServer`]; made by [`NatsServer::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `start` is called"]
pub struct NatsServerBuilder {
    settings: Settings,
}

/// Everything that goes into a server's config file, except the paths and ports.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) credentials: Credentials,
    pub(crate) jetstream: bool,
    pub(crate) extra_config: String,
    pub(crate) cluster: Option<ClusterMembership>,
    /// A binary to run instead of the located one (e.g. an old server a test must refuse).
    pub(crate) binary: Option<PathBuf>,
    /// Gateways to the other clusters of a supercluster.
    pub(crate) gateway: Option<GatewayMembership>,
    /// Port this server accepts leaf node connections on.
    pub(crate) leafnode_port: Option<u16>,
    /// Leaf node port of the hub this server connects to as a leaf.
    pub(crate) leaf_remote: Option<u16>,
    /// JetStream domain of this server (a leaf node's own).
    pub(crate) jetstream_domain: Option<String>,
    /// Config text inside the application account of a supercluster node (e.g. `mappings`).
    pub(crate) account_config: String,
}

/// How a cluster's node joins a supercluster: its gateway and the gateways of the other clusters.
#[derive(Debug, Clone)]
pub(crate) struct GatewayMembership {
    /// The gateway name, which is the cluster name.
    pub(crate) name: String,
    /// Port this node accepts gateway connections on.
    pub(crate) port: u16,
    /// Every other cluster: its name and its nodes' gateway ports.
    pub(crate) peers: Vec<(String, Vec<u16>)>,
}

/// How a node joins a cluster.
#[derive(Debug, Clone)]
pub(crate) struct ClusterMembership {
    /// Name shared by every node.
    pub(crate) cluster_name: String,
    /// This node's unique `server_name`.
    pub(crate) server_name: String,
    /// Port this node accepts routes on.
    pub(crate) route_port: u16,
    /// Route ports of the other nodes.
    pub(crate) peer_route_ports: Vec<u16>,
}

/// How far startup waits before it calls a server ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readiness {
    /// `/healthz` is OK and, with JetStream, `/jsz` reports it enabled.
    Healthy,
    /// The client port greets with `INFO`; a cluster node's health depends on its peers.
    Listening,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            credentials: Credentials::None,
            jetstream: true,
            extra_config: String::new(),
            cluster: None,
            binary: None,
            gateway: None,
            leafnode_port: None,
            leaf_remote: None,
            jetstream_domain: None,
            account_config: String::new(),
        }
    }
}

impl NatsServerBuilder {
    /// Requires clients to present `token`; [`NatsServer::connect`] does.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.settings.credentials = Credentials::Token(token.into());
        self
    }

    /// Requires clients to log in as `user` with `password`; [`NatsServer::connect`] does.
    pub fn user_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.settings.credentials = Credentials::UserPassword { user: user.into(), password: password.into() };
        self
    }

    /// Appends `text` verbatim to the generated config file (e.g. `"max_payload: 1024"`).
    pub fn extra_config(mut self, text: impl AsRef<str>) -> Self {
        self.settings.extra_config.push_str(text.as_ref());
        self.settings.extra_config.push('\n');
        self
    }

    /// Enables (the default) or disables JetStream.
    pub fn jetstream(mut self, enabled: bool) -> Self {
        self.settings.jetstream = enabled;
        self
    }

    /// Runs `binary` instead of the server the locator finds (which is always 2.11 or newer):
    /// for tests that prove an older server is refused.
    pub fn binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.settings.binary = Some(binary.into());
        self
    }

    /// Starts the server and waits until it is ready for clients (and JetStream, if enabled).
    pub async fn start(self) -> Result<NatsServer> {
        NatsServer::launch(self.settings).await
    }
}

impl NatsServer {
    /// Starts a server with JetStream and no authentication; see [`NatsServer::builder`].
    pub async fn start() -> Result<Self> {
        Self::builder().start().await
    }

    /// Options for a server: authentication, extra config, JetStream on or off.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder { settings: Settings::default() }
    }

    /// Spawns a server with `settings` in a fresh directory and waits until it is ready.
    pub(crate) async fn launch(settings: Settings) -> Result<Self> {
        let binary = match &settings.binary {
            Some(binary) => binary.clone(),
            None => process::locate_binary()?,
        };
        let dir = tempfile::Builder::new()
            .prefix("proxybus-nats-")
            .tempdir()
            .context("creating the nats-server directory")?;
        let store_dir = dir.path().join("store");
        fs::create_dir(&store_dir)?;
        fs::create_dir(dir.path().join("ports"))?;
        let mut server = Self {
            binary,
            settings,
            log_path: dir.path().join("nats-server.log"),
            store_dir,
            dir,
            client_port: 0,
            monitoring_port: 0,
            process: None,
        };
        // A new server's client port is chosen by nats-server (`-1`): nothing to wait for.
        server.spawn_until_ready(Duration::ZERO).await?;
        Ok(server)
    }

    /// `nats://127.0.0.1:PORT`, the URL clients connect to; stable across restarts.
    pub fn client_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// The client port; stable across restarts.
    pub fn port(&self) -> u16 {
        self.client_port
    }

    /// The HTTP monitoring port (`/varz`, `/jsz`, …); a restart may change it.
    pub fn monitoring_port(&self) -> u16 {
        self.monitoring_port
    }

    /// The `server_name`: `proxybus-test`, or a cluster node's own name.
    pub fn server_name(&self) -> &str {
        self.settings.cluster.as_ref().map_or(STANDALONE_NAME, |cluster| &cluster.server_name)
    }

    /// The JetStream store directory (`store_dir`), kept across restarts.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The file the server's output is appended to, across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The process id while the server runs; `None` after [`stop`](Self::stop) or
    /// [`kill`](Self::kill).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ServerProcess::pid)
    }

    /// Client options with fast, unlimited reconnects and this server's credentials.
    pub fn connect_options(&self) -> ConnectOptions {
        self.settings.credentials.apply(resilient_options())
    }

    /// Connects a client with [`connect_options`](Self::connect_options).
    pub async fn connect(&self) -> Result<Client> {
        let url = self.client_url();
        self.connect_options().connect(url.as_str()).await.with_context(|| format!("connecting to {url}"))
    }

    /// Stops the server gracefully (SIGTERM) and waits for it to exit.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.terminate(SHUTDOWN_GRACE).await?;
        }
        Ok(())
    }

    /// Kills the server with SIGKILL, like `kill -9`, and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.kill()?;
        }
        Ok(())
    }

    /// Starts the server again on the same client port with the same store, stopping it
    /// gracefully first if it still runs, and waits until it is ready.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.spawn_until_ready(PORT_REUSE_TIMEOUT).await
    }

    /// Writes the config, spawns the server and waits until it is ready, retrying for up to
    /// `port_reuse` while a port it must reuse is still held.
    async fn spawn_until_ready(&mut self, port_reuse: Duration) -> Result<()> {
        let config = self.dir.path().join("nats.conf");
        fs::write(&config, self.render_config()).with_context(|| format!("writing {}", config.display()))?;
        let ports_dir = self.dir.path().join("ports");
        let log = self.log_path.clone();
        let give_up_on_port = Instant::now() + port_reuse;
        let (mut process, ports) = loop {
            process::clear_ports_dir(&ports_dir)?;
            let mut process = ServerProcess::spawn(&self.binary, &config, &log)?;
            match process.wait_for_ports(&ports_dir, &log, STARTUP_TIMEOUT).await {
                Ok(ports) => break (process, ports),
                Err(error) if error.downcast_ref::<PortInUse>().is_some() && Instant::now() < give_up_on_port => {
                    tracing::debug!(port = self.client_port, "port still in use; retrying");
                    sleep(POLL_INTERVAL * 4).await;
                }
                Err(error) => return Err(error),
            }
        };
        self.client_port = ports.client;
        self.monitoring_port = ports.monitoring;
        let readiness = if self.settings.cluster.is_some() || self.settings.leaf_remote.is_some() {
            Readiness::Listening
        } else {
            Readiness::Healthy
        };
        if let Err(error) = self.wait_ready(&mut process, readiness).await {
            let output = process.own_output(&log);
            let tail = process::tail(&output);
            let port = self.client_port;
            return Err(error.context(format!("nats-server on port {port} was not ready; its output:\n{tail}")));
        }
        tracing::debug!(
            pid = process.pid(),
            url = %self.client_url(),
            name = self.server_name(),
            "nats-server ready"
        );
        self.process = Some(process);
        Ok(())
    }

    async fn wait_ready(&self, process: &mut ServerProcess, readiness: Readiness) -> Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let problem = match self.readiness_problem(readiness).await {
                Ok(()) => return Ok(()),
                Err(problem) => problem,
            };
            if let Some(status) = process.exit_status()? {
                bail!("nats-server exited ({status}) before it was ready");
            }
            if Instant::now() >= deadline {
                return Err(problem.context(format!("still not ready after {STARTUP_TIMEOUT:?}")));
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    /// `Ok` once the server is ready, else what it is still missing.
    async fn readiness_problem(&self, readiness: Readiness) -> Result<()> {
        if !monitor::client_port_ready(self.client_port).await {
            bail!("client port {} does not greet with INFO", self.client_port);
        }
        if readiness == Readiness::Listening {
            return Ok(());
        }
        monitor::healthz(self.monitoring_port).await?;
        if self.settings.jetstream {
            let jsz = monitor::jsz(self.monitoring_port).await?;
            if jsz["config"]["store_dir"].as_str().is_none() {
                bail!("JetStream is not enabled yet: {jsz}");
            }
        }
        Ok(())
    }

    /// Health of a running cluster node (`/healthz`), or why the node is not running.
    pub(crate) async fn healthz(&self) -> Result<()> {
        if self.process.is_none() {
            bail!("{} is not running", self.server_name());
        }
        monitor::healthz(self.monitoring_port).await
    }

    /// A JSON document of this running server's monitoring endpoint (`/varz`, `/gatewayz`,
    /// `/leafz`, `/connz` …).
    pub async fn monitoring_json(&self, path: &str) -> Result<serde_json::Value> {
        if self.process.is_none() {
            bail!("{} is not running", self.server_name());
        }
        monitor::json(self.monitoring_port, path).await
    }

    /// `/jsz` of a running node.
    pub(crate) async fn jsz(&self) -> Result<serde_json::Value> {
        if self.process.is_none() {
            bail!("{} is not running", self.server_name());
        }
        monitor::jsz(self.monitoring_port).await
    }

    /// The config file for the next start: the port is `-1` (random) on the first start and the
    /// known client port on restarts.
    fn render_config(&self) -> String {
        let dir = self.dir.path();
        let listen_port = match self.client_port {
            0 => "-1".to_owned(),
            port => port.to_string(),
        };
        let mut config = format!(
            "# Written by proxybus-tests for one test.\n\
             server_name: {name}\n\
             listen: \"127.0.0.1:{listen_port}\"\n\
             http: \"127.0.0.1:-1\"\n\
             ports_file_dir: {ports}\n",
            name = quote(self.server_name()),
            ports = quote(&path_str(&dir.join("ports"))),
        );
        if self.settings.jetstream {
            let domain = self.settings.jetstream_domain.as_deref().map(|d| format!(", domain: {}", quote(d)));
            config.push_str(&format!(
                "jetstream {{ store_dir: {}{} }}\n",
                quote(&path_str(&self.store_dir)),
                domain.unwrap_or_default()
            ));
        }
        config.push_str(&self.settings.credentials.config_block());
        if let Some(cluster) = &self.settings.cluster {
            let routes: Vec<String> =
                cluster.peer_route_ports.iter().map(|port| quote(&format!("nats://127.0.0.1:{port}"))).collect();
            config.push_str(&format!(
                "cluster {{\n  name: {name}\n  listen: \"127.0.0.1:{port}\"\n  routes: [{routes}]\n}}\n",
                name = quote(&cluster.cluster_name),
                port = cluster.route_port,
                routes = routes.join(", "),
            ));
        }
        if let Some(gateway) = &self.settings.gateway {
            // Gateways with leaf nodes need a system account; clients without credentials then
            // land in APP (JetStream enabled) through `no_auth_user`.
            config.push_str(&format!(
                "accounts {{\n  SYS {{ users: [ {{ user: \"sys\", password: \"sys\" }} ] }}\n  \
                 APP {{\n    jetstream: enabled\n    users: [ {{ user: \"app\", password: \"app\" }} ]\n{}  }}\n}}\n\
                 system_account: SYS\nno_auth_user: app\n",
                self.settings.account_config
            ));
            let peers: Vec<String> = gateway
                .peers
                .iter()
                .map(|(name, ports)| {
                    let urls: Vec<String> =
                        ports.iter().map(|port| quote(&format!("nats://127.0.0.1:{port}"))).collect();
                    format!("    {{ name: {}, urls: [{}] }}", quote(name), urls.join(", "))
                })
                .collect();
            config.push_str(&format!(
                "gateway {{\n  name: {name}\n  listen: \"127.0.0.1:{port}\"\n  gateways: [\n{peers}\n  ]\n}}\n",
                name = quote(&gateway.name),
                port = gateway.port,
                peers = peers.join("\n"),
            ));
        }
        if let Some(port) = self.settings.leafnode_port {
            config.push_str(&format!("leafnodes {{ listen: \"127.0.0.1:{port}\" }}\n"));
        }
        if let Some(port) = self.settings.leaf_remote {
            config.push_str(&format!("leafnodes {{ remotes: [ {{ url: \"nats-leaf://127.0.0.1:{port}\" }} ] }}\n"));
        }
        config.push_str(&self.settings.extra_config);
        config
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Kill before reading the log, so it is complete; `TempDir` then removes the directory.
        drop(self.process.take());
        if std::env::var_os(TEST_LOG_ENV).is_some() {
            let log = &self.log_path;
            let contents = process::read_from(log, 0).unwrap_or_else(|error| error.to_string());
            eprintln!(
                "----- {} ({}) -----\n{contents}----- end of {} -----",
                self.server_name(),
                log.display(),
                self.server_name()
            );
        }
    }
}

/// A path as config text; temporary directories are valid UTF-8 in practice.
fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
