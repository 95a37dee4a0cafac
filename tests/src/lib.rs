//! Real-NATS test harness for proxybus, and the home of its end-to-end suite.
//!
//! Other crates use it as a dev-dependency: each test starts its own `nats-server` process on a
//! random port with its own JetStream store, and the process is killed and its directory removed
//! when the handle drops. Tests can therefore run in parallel (`cargo nextest run`). Set
//! `NATS_SERVER_BIN` to choose the binary (by default the locator of
//! `proxybus_shared::nats_server` picks a current one, 2.11 or newer); set `TEST_LOG` to print server logs when a handle
//! drops.
//!
//! # Layout
//!
//! - `server.rs`: [`NatsServer`] and [`NatsServerBuilder`], one server with optional token or
//!   user/password authentication, extra config and JetStream; stop, kill -9 and restart.
//! - `cluster.rs`: [`NatsCluster`], three routed JetStream nodes with a meta leader; kill and
//!   restart single nodes.
//! - `supercluster.rs`: [`NatsSuperCluster`], clusters named for regions joined by gateways
//!   (one JetStream meta group), leaf nodes with their own domain; kill or restart a node or a
//!   whole region.
//! - `docker.rs` (feature `docker`): `DockerNats`, NATS with JetStream in a container via
//!   testcontainers.
//! - `discovery.rs`: [`resolvers_serving`], how many resolvers answer `$SRV.PING`.
//! - `connect.rs`: client options that reconnect quickly and forever, and server credentials.
//! - `process.rs`: finding the binary, spawning, the ports file, signalling and reaping.
//! - `proxies.rs`: [`TestProxy`] (HTTP CONNECT, HTTPS CONNECT, SOCKS4/4a, SOCKS5/5h, logging every tunnel) and
//!   [`WsEchoServer`], for tests of code that connects through proxies.
//! - `faulty_upstream.rs`: [`FaultyUpstream`], a proxy service (axum, plain or TLS) whose
//!   [`Fault`] is switched at run time: slow, an HTTP status, garbage, a hostile `proxy_url`,
//!   a failing TLS handshake, a reset connection, flapping.
//! - `inventory.rs`: [`TestInventory`], a pool inventory a test writes for the pool service.
//! - `monitor.rs`: readiness probes on the client port and the HTTP monitoring endpoint.
//! - `service_process.rs`: [`ServiceProcess`], a service run as a child process a test can kill
//!   and restart.
//! - `measurement.rs`: resident memory sampled over a run ([`MemorySampler`]) and request
//!   latencies ([`Latencies`]), for the load and fault tests.
//! - `tests/harness.rs`: the harness's own tests against a real `nats-server`.
//! - `tests/deployment.rs`: `docker-compose.yml` and the `Dockerfile` name every service binary.
//! - `tests/soak.rs`, `tests/faults.rs` (with `tests/pipeline/`): load on, and faults of, the whole
//!   pipeline with its services as child processes; their figures are in `docs/reliability.md`.
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
mod discovery;
#[cfg(feature = "docker")]
mod docker;
mod faulty_upstream;
mod inventory;
mod kv_writers;
mod measurement;
mod monitor;
mod process;
mod proxies;
mod server;
mod service_process;
mod supercluster;

pub use cluster::NatsCluster;
pub use discovery::resolvers_serving;
#[cfg(feature = "docker")]
pub use docker::DockerNats;
pub use faulty_upstream::{Fault, FaultyUpstream, HEALTHY_PROXY, HOSTILE_URLS, TlsFault};
pub use inventory::{TestInventory, documentation_proxy};
pub use kv_writers::KvRewriters;
pub use measurement::{Latencies, MemorySampler, MemorySamples, resident_kib};
pub use proxies::{ProxyCredentials, ProxyLog, TestProxy, WsEchoServer};
pub use server::{NatsServer, NatsServerBuilder};
pub use service_process::{ServiceProcess, exit_when_parent_goes};
pub use supercluster::NatsSuperCluster;

/// The Python of the project-local tools venv (`.tools/venv/bin/python`, made by
/// `scripts/ensure-deps.sh` with msgpack and nats-py pinned by hash), for tests that check
/// proxybus against another language's client.
///
/// # Panics
/// When the venv is missing: run `./scripts/ensure-deps.sh` first.
pub fn tools_python() -> std::path::PathBuf {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let python = workspace.join(".tools/venv/bin/python");
    assert!(python.is_file(), "{} is missing: run ./scripts/ensure-deps.sh", python.display());
    python
}

/// Environment variable naming an old (pre-2.11) nats-server for the tests that prove it is
/// refused; by default Debian's `/usr/sbin/nats-server` (2.9), which `scripts/ensure-deps.sh`
/// installs for the tests.
pub const OLD_SERVER_ENV: &str = "NATS_SERVER_OLD_BIN";

/// An installed nats-server older than proxybus' minimum, to start with
/// [`NatsServerBuilder::binary`].
///
/// # Panics
/// When none is installed, or the one found is not older than the minimum (the test would prove
/// nothing).
pub fn old_server_binary() -> std::path::PathBuf {
    use proxybus_shared::nats_server::{MINIMUM_VERSION, ServerVersion, binary_version};
    let binary = std::env::var_os(OLD_SERVER_ENV)
        .filter(|value| !value.is_empty())
        .map_or_else(|| std::path::PathBuf::from("/usr/sbin/nats-server"), Into::into);
    let version = binary_version(&binary)
        .unwrap_or_else(|| panic!("{} does not run: run ./scripts/ensure-deps.sh", binary.display()));
    let parsed: ServerVersion = version.parse().expect("a version");
    assert!(parsed < MINIMUM_VERSION, "{} is {version}, not older than {MINIMUM_VERSION}", binary.display());
    binary
}
