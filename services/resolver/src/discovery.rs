//! Where the upstream endpoints come from (the seed's `ProxyServiceDiscovery`):
//! the static `external_service.endpoints`, or DNS SRV records under
//! `external_service.srv_name` (what a Kubernetes headless service publishes),
//! looked up with hickory-resolver and refreshed periodically. Each endpoint is
//! also probed with `GET /healthz`, so that a recovered endpoint's breaker closes
//! without waiting for traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use proxybus_shared::http::paths;
use tokio_util::sync::CancellationToken;

use crate::upstream::EndpointSet;

/// Why SRV discovery could not start or look up.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The resolver could not be built (no usable system configuration).
    #[error("cannot build the DNS resolver: {0}")]
    Resolver(String),
    /// The lookup failed.
    #[error("SRV lookup of {name} failed: {message}")]
    Lookup {
        /// The SRV name.
        name: String,
        /// Why.
        message: String,
    },
}

/// Looks up the endpoints published as SRV records.
pub struct SrvDiscovery {
    resolver: TokioResolver,
    name: String,
    scheme: String,
}

impl std::fmt::Debug for SrvDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrvDiscovery").field("name", &self.name).field("scheme", &self.scheme).finish()
    }
}

impl SrvDiscovery {
    /// Discovery of `name` with endpoints `{scheme}://{target}:{port}`, asking
    /// `dns_servers` (UDP and TCP), or the system's servers when the list is empty.
    pub fn new(name: &str, scheme: &str, dns_servers: &[SocketAddr]) -> Result<Self, DiscoveryError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if dns_servers.is_empty() {
            TokioResolver::builder(provider).map_err(|err| DiscoveryError::Resolver(err.to_string()))?
        } else {
            let servers = dns_servers
                .iter()
                .map(|addr| {
                    let connection = |protocol| {
                        let mut connection = ConnectionConfig::new(protocol);
                        connection.port = addr.port();
                        connection
                    };
                    NameServerConfig::new(
                        addr.ip(),
                        true,
                        vec![connection(ProtocolConfig::Udp), connection(ProtocolConfig::Tcp)],
                    )
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        // Every refresh asks the server: endpoints come and go faster than TTLs say.
        builder.options_mut().cache_size = 0;
        builder.options_mut().timeout = Duration::from_secs(2);
        builder.options_mut().attempts = 1;
        let resolver = builder.build().map_err(|err| DiscoveryError::Resolver(err.to_string()))?;
        Ok(Self { resolver, name: name.to_owned(), scheme: scheme.to_owned() })
    }

    /// The endpoints the SRV records name now, by priority then weight (heavier first).
    pub async fn lookup(&self) -> Result<Vec<String>, DiscoveryError> {
        self.resolver.clear_cache();
        let lookup = self
            .resolver
            .srv_lookup(self.name.as_str())
            .await
            .map_err(|err| DiscoveryError::Lookup { name: self.name.clone(), message: err.to_string() })?;
        let mut records: Vec<(u16, std::cmp::Reverse<u16>, String)> = lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => {
                    let target = srv.target.to_utf8();
                    let host = target.trim_end_matches('.');
                    Some((
                        srv.priority,
                        std::cmp::Reverse(srv.weight),
                        format!("{}://{host}:{}", self.scheme, srv.port),
                    ))
                }
                _ => None,
            })
            .collect();
        records.sort();
        let mut endpoints: Vec<String> = records.into_iter().map(|(_, _, url)| url).collect();
        endpoints.dedup();
        Ok(endpoints)
    }

    /// Refreshes `set` every `every` until `shutdown`; a failed lookup keeps the last list.
    pub fn spawn_refresh(self, set: Arc<EndpointSet>, every: Duration, shutdown: CancellationToken) {
        tokio::spawn(async move {
            loop {
                match self.lookup().await {
                    Ok(endpoints) if endpoints.is_empty() => {
                        tracing::warn!(srv = %self.name, "SRV lookup found no endpoint; keeping the last list");
                    }
                    Ok(endpoints) => {
                        if set.replace(&endpoints) {
                            tracing::info!(srv = %self.name, endpoints = ?set.names(), "upstream endpoints discovered");
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "SRV discovery failed; keeping the last list"),
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(every) => {}
                }
            }
        });
    }
}

/// Probes every endpoint's `GET /healthz` every `every` until `shutdown`.
pub(crate) fn spawn_probes(
    client: reqwest::Client,
    set: Arc<EndpointSet>,
    every: Duration,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
            for endpoint in set.all() {
                let url = format!("{}{}", endpoint.base(), paths::HEALTHZ);
                let ok = matches!(client.get(&url).send().await, Ok(response) if response.status().is_success());
                if !ok {
                    tracing::debug!(endpoint = %endpoint.name(), "health probe failed");
                }
                endpoint.probed(ok);
            }
        }
    });
}
