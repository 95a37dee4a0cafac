//! [`NatsCluster`]: three routed `nats-server` nodes that share a JetStream meta group, for tests
//! of replicated streams and of losing a node.

use std::net::TcpListener;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::{Client, ConnectOptions};
use tokio::time::{Instant, sleep};

use crate::connect::resilient_options;
use crate::process::{POLL_INTERVAL, PortInUse};
use crate::server::{ClusterMembership, NatsServer, Settings};

/// Number of nodes; three is the smallest cluster that keeps a quorum after losing one.
const NODE_COUNT: usize = 3;

/// Name every node shares.
const CLUSTER_NAME: &str = "proxybus-test";

/// How long the nodes may take to route to each other and agree on a meta leader.
const FORMATION_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times start picks fresh route ports when one was taken before a node could bind it.
const START_ATTEMPTS: usize = 3;

/// A three-node JetStream cluster on `127.0.0.1`, owned by one test.
///
/// Each node has its own client port, route port, store directory and `server_name`
/// (`node-0`, `node-1`, `node-2`) and routes to the other two. Dropping the cluster kills every
/// node and removes their directories.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use proxybus_tests::NatsCluster;
///
/// let mut cluster = NatsCluster::start().await?;
/// let client = cluster.connect().await?;
/// cluster.kill_node(0)?;
/// client.publish("still.up", "yes".into()).await?;
/// cluster.restart_node(0).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three nodes and waits until they have formed a cluster with a JetStream meta leader
    /// and every node is a current member of the meta group.
    pub async fn start() -> Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::try_start().await {
                Err(error) if error.downcast_ref::<PortInUse>().is_some() && attempt < START_ATTEMPTS => {
                    tracing::debug!(attempt, %error, "route port taken; retrying with new ports");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn try_start() -> Result<Self> {
        let route_ports = reserve_ports(NODE_COUNT)?;
        let mut nodes = Vec::with_capacity(NODE_COUNT);
        for (index, &route_port) in route_ports.iter().enumerate() {
            let membership = ClusterMembership {
                cluster_name: CLUSTER_NAME.to_owned(),
                server_name: format!("node-{index}"),
                route_port,
                peer_route_ports: route_ports.iter().copied().filter(|&port| port != route_port).collect(),
            };
            let settings = Settings { cluster: Some(membership), ..Settings::default() };
            let node = NatsServer::launch(settings).await.with_context(|| format!("starting cluster node-{index}"))?;
            nodes.push(node);
        }
        let cluster = Self { nodes };
        cluster.wait_formed().await?;
        Ok(cluster)
    }

    /// The nodes, indexed like [`kill_node`](Self::kill_node) and
    /// [`restart_node`](Self::restart_node).
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// The cluster name every node shares.
    pub fn name(&self) -> &str {
        CLUSTER_NAME
    }

    /// The client URL of every node, as a seed list for `async_nats::connect`.
    pub fn client_urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::client_url).collect()
    }

    /// The index of the node whose `server_name` is `server_name` (e.g. a stream's leader).
    pub fn node_index(&self, server_name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.server_name() == server_name)
    }

    /// Client options with fast, unlimited reconnects.
    pub fn connect_options(&self) -> ConnectOptions {
        resilient_options()
    }

    /// Connects a client seeded with every node's URL, so it fails over when a node dies.
    pub async fn connect(&self) -> Result<Client> {
        self.connect_options().connect(self.client_urls()).await.context("connecting to the cluster")
    }

    /// Kills node `index` with SIGKILL, like `kill -9`; the others keep serving.
    pub fn kill_node(&mut self, index: usize) -> Result<()> {
        self.node_mut(index)?.kill()
    }

    /// Restarts node `index` on its ports with its store (stopping it gracefully first if it
    /// runs) and waits until it is again a current member of the cluster.
    pub async fn restart_node(&mut self, index: usize) -> Result<()> {
        self.node_mut(index)?.restart().await?;
        self.wait_formed().await
    }

    /// The index of the node that is the JetStream meta leader.
    pub async fn meta_leader(&self) -> Result<usize> {
        let mut last_error = None;
        for node in self.nodes.iter().filter(|node| node.pid().is_some()) {
            match node.jsz().await {
                Ok(jsz) => {
                    let leader = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default();
                    return self
                        .node_index(leader)
                        .with_context(|| format!("meta leader {leader:?} is not a known node"));
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no node is running")))
    }

    fn node_mut(&mut self, index: usize) -> Result<&mut NatsServer> {
        let count = self.nodes.len();
        self.nodes.get_mut(index).with_context(|| format!("no node {index}: the cluster has {count}"))
    }

    async fn wait_formed(&self) -> Result<()> {
        wait_formed(&self.nodes.iter().collect::<Vec<_>>(), NODE_COUNT).await
    }
}

/// Waits until every running node of `nodes` is healthy, all agree on one JetStream meta leader,
/// the meta group has `meta_size` peers and the leader sees every other running node as a
/// current peer. Used by [`NatsCluster`] and [`crate::NatsSuperCluster`].
pub(crate) async fn wait_formed(nodes: &[&NatsServer], meta_size: usize) -> Result<()> {
    let deadline = Instant::now() + FORMATION_TIMEOUT;
    loop {
        let problem = match formation_problem(nodes, meta_size).await {
            Ok(()) => return Ok(()),
            Err(problem) => problem,
        };
        if Instant::now() >= deadline {
            return Err(problem.context(format!("the cluster did not form within {FORMATION_TIMEOUT:?}")));
        }
        sleep(POLL_INTERVAL * 2).await;
    }
}

async fn formation_problem(nodes: &[&NatsServer], meta_size: usize) -> Result<()> {
    {
        let running: Vec<&NatsServer> = nodes.iter().copied().filter(|node| node.pid().is_some()).collect();
        for node in &running {
            node.healthz().await.with_context(|| format!("{} is not healthy", node.server_name()))?;
        }
        let mut leader: Option<String> = None;
        for node in &running {
            let jsz = node.jsz().await?;
            let seen = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default();
            if seen.is_empty() {
                bail!("{} knows no meta leader yet", node.server_name());
            }
            match &leader {
                Some(agreed) if agreed != seen => {
                    bail!("nodes disagree on the meta leader: {agreed} and {seen}")
                }
                Some(_) => {}
                None => leader = Some(seen.to_owned()),
            }
        }
        let leader = leader.context("no node is running")?;
        let leader_node = running
            .iter()
            .find(|node| node.server_name() == leader)
            .with_context(|| format!("meta leader {leader} is not a running node"))?;
        let jsz = leader_node.jsz().await?;
        let meta = &jsz["meta_cluster"];
        let size = meta["cluster_size"].as_u64().unwrap_or_default();
        if usize::try_from(size).ok() != Some(meta_size) {
            bail!("the meta group has {size} peers, expected {meta_size}: {meta}");
        }
        let replicas = meta["replicas"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        for node in running.iter().filter(|node| node.server_name() != leader) {
            let current = replicas.iter().any(|replica| {
                replica["name"].as_str() == Some(node.server_name()) && replica["current"].as_bool() == Some(true)
            });
            if !current {
                bail!("{} is not a current meta peer of {leader}: {meta}", node.server_name());
            }
        }
        Ok(())
    }
}

/// `count` distinct free ports, found by binding port 0 and releasing it.
///
/// Another process may take one before nats-server binds it; the node then fails with
/// [`PortInUse`] and [`NatsCluster::start`] tries again with fresh ports.
pub(crate) fn reserve_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free route ports")?;
    listeners.iter().map(|listener| Ok(listener.local_addr()?.port())).collect()
}
