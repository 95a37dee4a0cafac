//! [`NatsSuperCluster`]: several named NATS clusters (regions) joined by gateways into one
//! JetStream supercluster on `127.0.0.1`, and leaf nodes attached to a cluster as an edge site
//! would attach — for tests of regional routing, fail-over between regions, and feedback fan-in.
//!
//! Every node's config is generated (`cluster`, `gateway`, `leafnodes` and `jetstream` blocks):
//! the clusters share one JetStream meta group across the gateways, so a stream is placed in a
//! region with `placement.cluster`; a leaf node runs its own JetStream domain.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::{Client, ConnectOptions};
use tokio::time::{Instant, sleep};

use crate::cluster::{reserve_ports, wait_formed};
use crate::connect::resilient_options;
use crate::process::{POLL_INTERVAL, PortInUse};
use crate::server::{ClusterMembership, GatewayMembership, NatsServer, Settings};

/// How many times start picks fresh ports when one was taken before a node could bind it.
const START_ATTEMPTS: usize = 3;

/// How long gateways and leaf connections may take to come up.
const LINK_TIMEOUT: Duration = Duration::from_secs(30);

/// One region of the supercluster.
#[derive(Debug)]
struct Region {
    name: String,
    nodes: Vec<NatsServer>,
    /// Port node 0 accepts leaf nodes on.
    leafnode_port: u16,
}

/// Clusters named for regions (`us-east`, `eu-west`, `ap-northeast` …), one to three nodes each,
/// joined by gateways, with JetStream; owned by one test and killed on drop.
///
/// Node `i` of cluster `c` has `server_name` `{c}-{i}`. Node 0 of every cluster also accepts
/// leaf node connections ([`start_leaf`](Self::start_leaf)).
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use proxybus_tests::NatsSuperCluster;
///
/// let mut world = NatsSuperCluster::start(&[("us-east", 1), ("eu-west", 1)]).await?;
/// let in_europe = world.connect("eu-west").await?;
/// world.kill_cluster("eu-west")?;
/// world.restart_cluster("eu-west").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct NatsSuperCluster {
    regions: Vec<Region>,
    leaves: Vec<NatsServer>,
}

impl NatsSuperCluster {
    /// Starts every `(cluster name, node count)` of `layout` and waits until the gateways are up
    /// and all nodes share one JetStream meta leader.
    ///
    /// # Errors
    /// When a node does not start or the supercluster does not form within 30 s.
    pub async fn start(layout: &[(&str, usize)]) -> Result<Self> {
        Self::start_with(layout, "").await
    }

    /// [`start`](Self::start) with `account_config` (nats-server config text, e.g. a `mappings`
    /// block) inside the account every client without credentials uses.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn start_with(layout: &[(&str, usize)], account_config: &str) -> Result<Self> {
        if layout.is_empty() || layout.iter().any(|(_, nodes)| !(1..=3).contains(nodes)) {
            bail!("a supercluster has at least one cluster of one to three nodes: {layout:?}");
        }
        let mut attempt = 1;
        loop {
            match Self::try_start(layout, account_config).await {
                Err(error) if error.downcast_ref::<PortInUse>().is_some() && attempt < START_ATTEMPTS => {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn try_start(layout: &[(&str, usize)], account_config: &str) -> Result<Self> {
        // Per cluster: route ports, gateway ports, and one leaf node port.
        let plan: Vec<(String, Vec<u16>, Vec<u16>, u16)> = layout
            .iter()
            .map(|&(name, nodes)| {
                let mut ports = reserve_ports(nodes * 2 + 1)?;
                let leaf = ports.pop().context("a leaf port")?;
                let gateways = ports.split_off(nodes);
                Ok((name.to_owned(), ports, gateways, leaf))
            })
            .collect::<Result<_>>()?;
        let mut regions = Vec::with_capacity(plan.len());
        for (name, routes, gateways, leafnode_port) in &plan {
            let peers: Vec<(String, Vec<u16>)> = plan
                .iter()
                .filter(|(other, ..)| other != name)
                .map(|(other, _, other_gateways, _)| (other.clone(), other_gateways.clone()))
                .collect();
            let mut nodes = Vec::with_capacity(routes.len());
            for (index, (&route_port, &gateway_port)) in routes.iter().zip(gateways).enumerate() {
                let settings = Settings {
                    cluster: Some(ClusterMembership {
                        cluster_name: name.clone(),
                        server_name: format!("{name}-{index}"),
                        route_port,
                        // A one-node cluster routes to itself: clustered JetStream wants a configured
                        // route, and nats-server ignores a route to itself.
                        peer_route_ports: if routes.len() == 1 {
                            vec![route_port]
                        } else {
                            routes.iter().copied().filter(|&port| port != route_port).collect()
                        },
                    }),
                    gateway: Some(GatewayMembership { name: name.clone(), port: gateway_port, peers: peers.clone() }),
                    leafnode_port: (index == 0).then_some(*leafnode_port),
                    account_config: account_config.to_owned(),
                    ..Settings::default()
                };
                let node = NatsServer::launch(settings).await.with_context(|| format!("starting {name}-{index}"))?;
                nodes.push(node);
            }
            regions.push(Region { name: name.clone(), nodes, leafnode_port: *leafnode_port });
        }
        let world = Self { regions, leaves: Vec::new() };
        world.wait_formed().await?;
        Ok(world)
    }

    /// The cluster names, in start order.
    pub fn cluster_names(&self) -> Vec<&str> {
        self.regions.iter().map(|region| region.name.as_str()).collect()
    }

    /// The nodes of `cluster`.
    ///
    /// # Panics
    /// When there is no such cluster.
    pub fn nodes(&self, cluster: &str) -> &[NatsServer] {
        &self.region(cluster).expect("a cluster of the supercluster").nodes
    }

    /// The client URLs of `cluster`'s nodes: a client seeded with only these stays in that
    /// region (NATS prefers queue subscribers in the client's own cluster).
    pub fn client_urls(&self, cluster: &str) -> Vec<String> {
        self.nodes(cluster).iter().map(NatsServer::client_url).collect()
    }

    /// Client options with fast, unlimited reconnects.
    pub fn connect_options(&self) -> ConnectOptions {
        resilient_options()
    }

    /// Connects a client to `cluster`'s nodes.
    ///
    /// # Errors
    /// When no node of `cluster` accepts the connection.
    pub async fn connect(&self, cluster: &str) -> Result<Client> {
        self.connect_options()
            .connect(self.client_urls(cluster))
            .await
            .with_context(|| format!("connecting to cluster {cluster}"))
    }

    /// Kills node `index` of `cluster` with SIGKILL.
    ///
    /// # Errors
    /// When there is no such node.
    pub fn kill_node(&mut self, cluster: &str, index: usize) -> Result<()> {
        self.node_mut(cluster, index)?.kill()
    }

    /// Restarts node `index` of `cluster` on its ports and store, and waits until the
    /// supercluster has formed again.
    ///
    /// # Errors
    /// When the node does not come back or the supercluster does not re-form.
    pub async fn restart_node(&mut self, cluster: &str, index: usize) -> Result<()> {
        self.node_mut(cluster, index)?.restart().await?;
        self.wait_formed().await
    }

    /// Kills every node of `cluster` (SIGKILL): the region is gone.
    ///
    /// # Errors
    /// When there is no such cluster.
    pub fn kill_cluster(&mut self, cluster: &str) -> Result<()> {
        let region = self.region_mut(cluster)?;
        region.nodes.iter_mut().try_for_each(NatsServer::kill)
    }

    /// Restarts every node of `cluster` and waits until the supercluster has formed again.
    ///
    /// # Errors
    /// When a node does not come back or the supercluster does not re-form.
    pub async fn restart_cluster(&mut self, cluster: &str) -> Result<()> {
        let region = self.region_mut(cluster)?;
        for node in &mut region.nodes {
            node.restart().await?;
        }
        self.wait_formed().await
    }

    /// Starts a leaf node attached to node 0 of `cluster`, with its own JetStream `domain`, and
    /// waits until the hub reports the leaf connection. Clients of the leaf reach the whole
    /// supercluster's subjects through it.
    ///
    /// # Errors
    /// When the leaf does not start or does not connect within 30 s.
    pub async fn start_leaf(&mut self, cluster: &str, domain: &str) -> Result<&NatsServer> {
        let hub_port = self.region(cluster)?.leafnode_port;
        let settings =
            Settings { leaf_remote: Some(hub_port), jetstream_domain: Some(domain.to_owned()), ..Settings::default() };
        let leaf = NatsServer::launch(settings).await.context("starting a leaf node")?;
        let hub = &self.region(cluster)?.nodes[0];
        let deadline = Instant::now() + LINK_TIMEOUT;
        loop {
            let leafz = hub.monitoring_json("/leafz").await?;
            if leafz["leafnodes"].as_u64().unwrap_or_default() > 0 {
                break;
            }
            if Instant::now() >= deadline {
                bail!("the leaf node did not connect to {cluster} within {LINK_TIMEOUT:?}: {leafz}");
            }
            sleep(POLL_INTERVAL * 2).await;
        }
        self.leaves.push(leaf);
        Ok(self.leaves.last().expect("just pushed"))
    }

    async fn wait_formed(&self) -> Result<()> {
        let running: Vec<&NatsServer> = self.regions.iter().flat_map(|region| &region.nodes).collect();
        wait_formed(&running, running.len()).await?;
        // Every running node has an outbound gateway to every cluster that still runs.
        let deadline = Instant::now() + LINK_TIMEOUT;
        loop {
            match self.gateway_problem().await {
                Ok(()) => return Ok(()),
                Err(problem) if Instant::now() >= deadline => return Err(problem),
                Err(_) => sleep(POLL_INTERVAL * 2).await,
            }
        }
    }

    async fn gateway_problem(&self) -> Result<()> {
        let live: Vec<&str> = self
            .regions
            .iter()
            .filter(|region| region.nodes.iter().any(|node| node.pid().is_some()))
            .map(|region| region.name.as_str())
            .collect();
        for region in &self.regions {
            for node in region.nodes.iter().filter(|node| node.pid().is_some()) {
                let gatewayz = node.monitoring_json("/gatewayz").await?;
                for other in live.iter().filter(|other| **other != region.name) {
                    if gatewayz["outbound_gateways"][other].is_null() {
                        bail!("{} has no gateway to {other} yet", node.server_name());
                    }
                }
            }
        }
        Ok(())
    }

    fn region(&self, cluster: &str) -> Result<&Region> {
        self.regions.iter().find(|region| region.name == cluster).with_context(|| format!("no cluster {cluster}"))
    }

    fn region_mut(&mut self, cluster: &str) -> Result<&mut Region> {
        self.regions.iter_mut().find(|region| region.name == cluster).with_context(|| format!("no cluster {cluster}"))
    }

    fn node_mut(&mut self, cluster: &str, index: usize) -> Result<&mut NatsServer> {
        self.region_mut(cluster)?.nodes.get_mut(index).with_context(|| format!("no node {index} in {cluster}"))
    }
}
