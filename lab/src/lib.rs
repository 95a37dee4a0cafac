//! An exchange lab on loopback: what proxybus is for, without the internet.
//!
//! - an **exchange simulator** ([`Simulator`]) answering the real host names of
//!   Binance and Coinbase over HTTPS and WSS, with certificates from a CA the lab
//!   makes ([`LabCa`]), synthetic trade streams, and the exchanges' per-IP limits
//!   scaled down ([`ExchangeRules`]: request weight with `X-MBX-USED-WEIGHT-1M`,
//!   429 with `Retry-After`, escalating 418 bans, websocket connects per window,
//!   1008 for too many client messages, 451 for restricted and 403 for
//!   WAF-blocked source IPs);
//! - **lab proxies** ([`LabProxy`]): HTTP CONNECT, HTTPS, SOCKS5 and SOCKS4
//!   forward proxies, each sending from its own `127.0.0.x` source address, with
//!   faults (dead, slow, flapping, refusing credentials), that resolve the
//!   exchanges' names to the simulator;
//! - a **pool inventory** of those proxies, with credentials, and the CA bundle,
//!   written where `proxybus up --inventory` and any client find them ([`Lab`]).
//!
//! Everything listens on and connects to loopback only, and stops when dropped.
//!
//! # Examples
//!
//! ```no_run
//! # async fn demo() -> Result<(), proxybus_lab::LabError> {
//! let dir = std::path::PathBuf::from("data/lab");
//! let lab = proxybus_lab::Lab::start(proxybus_lab::LabConfig::demo(&dir)).await?;
//! println!("inventory {} CA {}", lab.inventory_path().display(), lab.ca_path().display());
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - `ca.rs`: [`LabCa`], the lab's certificate authority and server identities.
//! - `limits.rs`: [`ExchangeRules`] (settings, defaults with their sources) and
//!   [`Limiter`], the one place each rule is decided.
//! - `simulator.rs`: [`Simulator`], the HTTPS/WSS exchange shapes and their counters.
//! - `proxies.rs`: [`LabProxy`] and its faults, [`HostMap`].
//! - `lab.rs`: [`Lab`] and [`LabConfig`]: all of it together, and the inventory file.
//! - `feeds.rs`: market-data feeds against the lab (websocket trades, REST polling) through
//!   proxybus, round robin or one proxy, and their [`feeds::FeedBoard`] of counters.
//! - `command.rs`: `proxybus lab` / `proxybus-lab`, the lab as a command.

mod ca;
pub mod command;
pub mod feeds;
mod lab;
pub mod limits;
pub mod proxies;
pub mod simulator;

pub use ca::{LabCa, ServerIdentity};
pub use lab::{Lab, LabConfig, LabProxyConfig};
pub use limits::{ExchangeRules, Limiter, Verdict};
pub use proxies::{HostMap, LabProxy, ProxyCredentials, ProxyFault, ProxyKind, ProxyLog, ProxySpec};
pub use simulator::{IpCounters, LabExchange, Simulator, SimulatorSettings, SimulatorStats};

/// Why the lab could not start or write its files.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A file or socket could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The file, or the address.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Certificates could not be made.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// TLS could not be set up.
    #[error("tls: {0}")]
    Tls(String),
    /// The lab's configuration is not valid.
    #[error("invalid lab configuration: {0}")]
    Config(String),
}
