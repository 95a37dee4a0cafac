//! The NATS server every scenario of a run shares: a `nats-server` started with
//! the `proxybus-tests` harness (random port on 127.0.0.1, its own JetStream
//! store, killed on drop), or the one `NATS_URL` names.

use anyhow::Context;
use async_nats::Client;
use proxybus_tests::NatsServer;

/// The bus of a run.
#[derive(Debug)]
pub struct Bus {
    url: String,
    server: Option<NatsServer>,
    /// What stream `PROXY_FEEDBACK` holds now: (proxies, events) of the data set
    /// last written by [`crate::feedback`], so that `fold` and `replay` share it.
    pub(crate) dataset: Option<(usize, u64)>,
}

impl Bus {
    /// Uses `NATS_URL` when set, else starts a `nats-server` with JetStream.
    pub async fn start() -> anyhow::Result<Self> {
        match std::env::var("NATS_URL").ok().filter(|url| !url.trim().is_empty()) {
            Some(url) => Ok(Self { url, server: None, dataset: None }),
            None => {
                let server = NatsServer::start().await.context("starting nats-server (set NATS_URL to use another)")?;
                Ok(Self { url: server.client_url(), server: Some(server), dataset: None })
            }
        }
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the server was started by this run.
    pub fn is_own(&self) -> bool {
        self.server.is_some()
    }

    /// The pid of the server started by this run.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().and_then(NatsServer::pid)
    }

    /// A new connection.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        async_nats::ConnectOptions::new()
            .name("proxybus-bench")
            .connect(&self.url)
            .await
            .with_context(|| format!("connecting to {}", self.url))
    }
}
