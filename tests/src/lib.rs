//! Real-NATS test harness for proxybus, and the home of its end-to-end suite.
//!
//! Other crates use it as a dev-dependency: each test starts its own `nats-server` process on a
//! random port with its own JetStream store, and the process is killed and its directory removed
//! when the handle drops. Tests can therefore run in parallel (`cargo nextest run`). Set
//! `NATS_SERVER_BIN` to choose the binary; set `TEST_LOG` to print server logs when a handle
//! drops.
//!
//! # Layout
//!
//! - `server.rs`: [`NatsServer`] and [`NatsServerBuilder`], one server with optional token or
//!   user/password authentication, extra config and JetStream; stop, kill -9 and restart.
//! - `cluster.rs`: [`NatsCluster`], three routed JetStream nodes with a meta leader; kill and
//!   restart single nodes.
//! - `docker.rs` (feature `docker`): `DockerNats`, NATS with JetStream in a container via
//!   testcontainers.
//! - `connect.rs`: client options that reconnect quickly and forever, and server credentials.
//! - `process.rs`: finding the binary, spawning, the ports file, signalling and reaping.
//! - `proxies.rs`: [`TestProxy`] (HTTP CONNECT, HTTPS CONNECT, SOCKS4/4a, SOCKS5/5h, logging every tunnel) and
//!   [`WsEchoServer`], for tests of code that connects through proxies.
//! - `monitor.rs`: readiness probes on the client port and the HTTP monitoring endpoint.
//! - `tests/harness.rs`: the harness's own tests against a real `nats-server`.
//! - `tests/deployment.rs`: `docker-compose.yml` and the `Dockerfile` name every service binary.
//!
//! # Examples
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use proxybus_tests::NatsServer;
//!
//! let server = NatsServer::start().await?;
//! let client = server.connect().await?;
//! let jetstream = async_nats::jetstream::new(client);
//! jetstream.query_account().await?;
//! # Ok(())
//! # }
//! ```

mod cluster;
mod connect;
#[cfg(feature = "docker")]
mod docker;
mod monitor;
mod process;
mod proxies;
mod server;

pub use cluster::NatsCluster;
#[cfg(feature = "docker")]
pub use docker::DockerNats;
pub use proxies::{ProxyCredentials, ProxyLog, TestProxy, WsEchoServer};
pub use server::{NatsServer, NatsServerBuilder};
