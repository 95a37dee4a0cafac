//! [`DockerNats`]: NATS with JetStream in a Docker container (testcontainers), for machines with
//! a Docker engine but no `nats-server` binary. Enabled by the `docker` feature.

use anyhow::{Context, Result};
use async_nats::{Client, ConnectOptions};
use testcontainers_modules::nats::{Nats, NatsServerCmd};
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, ImageExt};

use crate::connect::resilient_options;

/// The port NATS listens on for clients inside the container.
const CLIENT_PORT: u16 = 4222;

/// A NATS server with JetStream (`--jetstream`) in a container, owned by one test.
///
/// Exposes the same client API as [`NatsServer`](crate::NatsServer); dropping it removes the
/// container.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// let nats = proxybus_tests::DockerNats::start().await?;
/// let client = nats.connect().await?;
/// client.publish("greeting", "hello".into()).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct DockerNats {
    container: ContainerAsync<Nats>,
    host: String,
    port: u16,
}

impl DockerNats {
    /// Starts the container and waits until the server inside reports ready.
    pub async fn start() -> Result<Self> {
        let command = NatsServerCmd::default().with_jetstream();
        let container = Nats::default()
            .with_cmd(&command)
            .start()
            .await
            .context("starting the NATS container (is a Docker engine running?)")?;
        let host = container.get_host().await.context("finding the container's host")?.to_string();
        let port = container.get_host_port_ipv4(CLIENT_PORT).await.context("finding the container's client port")?;
        Ok(Self { container, host, port })
    }

    /// `nats://HOST:PORT`, the URL clients connect to.
    pub fn client_url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    /// The host port mapped to the container's client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The container's id, for `docker logs` and the like.
    pub fn container_id(&self) -> &str {
        self.container.id()
    }

    /// Client options with fast, unlimited reconnects.
    pub fn connect_options(&self) -> ConnectOptions {
        resilient_options()
    }

    /// Connects a client with [`connect_options`](Self::connect_options).
    pub async fn connect(&self) -> Result<Client> {
        let url = self.client_url();
        self.connect_options().connect(url.as_str()).await.with_context(|| format!("connecting to {url}"))
    }
}
