//! The node's pod network over the kubelet's life: once the control plane has given the node a
//! podCIDR, the bridge is made, addresses and veths of pods that no longer exist are freed, and
//! the network is published to the pod workers; from then on the routes to the other nodes'
//! podCIDRs follow the Node list.

use std::path::PathBuf;
use std::sync::Arc;

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::network::node_routes::routes_from_nodes;
use crate::network::{NetworkConfig, NodeNetwork};

/// The pod network once it is ready.
pub type NetworkHandle = watch::Receiver<Option<Arc<NodeNetwork>>>;

pub struct NodeNetworkConfig {
    pub client: Client,
    pub node_name: String,
    /// Where IPAM keeps its allocations (must survive restarts): `<root-dir>/network`.
    pub state_dir: PathBuf,
}

/// Starts the pod network's task; the handle gets the network once it is ready. Aborting the
/// task stops following the Node list (see [`remove`] for taking the network down).
pub fn start(cfg: NodeNetworkConfig) -> (NetworkHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        loop {
            if let Err(e) = run(&cfg, &tx).await {
                tracing::error!("pod network: {e:#}; trying again");
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
    (rx, task)
}

/// Takes the node's pod network down (bridge, routes, rules), once its task is stopped and no
/// pod is left on it.
pub async fn remove(network: &NetworkHandle) -> anyhow::Result<()> {
    let net = network.borrow().clone();
    if let Some(net) = net {
        net.remove().await?;
        tracing::info!("pod network removed");
    }
    Ok(())
}

async fn run(
    cfg: &NodeNetworkConfig,
    tx: &watch::Sender<Option<Arc<NodeNetwork>>>,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(cfg.client.clone());
    let mut events = watcher(nodes, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut known: BTreeMap<String, Node> = BTreeMap::new();
    let mut listing: BTreeMap<String, Node> = BTreeMap::new();
    let mut network: Option<Arc<NodeNetwork>> = tx.borrow().clone();
    let mut last_routes = None;
    while let Some(event) = events.try_next().await? {
        let name = |n: &Node| n.metadata.name.clone().unwrap_or_default();
        match event {
            watcher::Event::Init => listing.clear(),
            watcher::Event::InitApply(n) => {
                listing.insert(name(&n), n);
                continue;
            }
            watcher::Event::InitDone => known = std::mem::take(&mut listing),
            watcher::Event::Apply(n) => {
                known.insert(name(&n), n);
            }
            watcher::Event::Delete(n) => {
                known.remove(&name(&n));
            }
        }
        let all: Vec<Node> = known.values().cloned().collect();
        if network.is_none() {
            let own = all
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(cfg.node_name.as_str()));
            let Some(cidr) = own
                .and_then(|n| n.spec.as_ref())
                .and_then(|s| s.pod_cidr.as_deref())
                .and_then(|c| c.parse().ok())
            else {
                continue;
            };
            let made = Arc::new(NodeNetwork::new(NetworkConfig::new(
                cidr,
                cfg.state_dir.clone(),
            ))?);
            made.ensure_bridge().await?;
            reconcile(cfg, &made).await?;
            tracing::info!(pod_cidr = %cidr, "pod network ready");
            tx.send_replace(Some(made.clone()));
            network = Some(made);
        }
        let routes = routes_from_nodes(&all, &cfg.node_name);
        if last_routes.as_ref() != Some(&routes)
            && let Some(net) = &network
        {
            match net.sync_routes(&routes).await {
                Ok(()) => last_routes = Some(routes),
                Err(e) => tracing::warn!("routes to other nodes: {e}"),
            }
        }
    }
    anyhow::bail!("the node watch ended")
}

/// Frees the addresses and veths of pods that no longer exist (deleted while the kubelet was
/// down). Runs before the network is published, so no pod is being attached meanwhile.
async fn reconcile(cfg: &NodeNetworkConfig, net: &NodeNetwork) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::all(cfg.client.clone());
    let listed = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={}", cfg.node_name)))
        .await?;
    let live: Vec<String> = listed
        .items
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let freed = net.reconcile(&live).await?;
    if !freed.is_empty() {
        tracing::info!(?freed, "freed the addresses of pods that no longer exist");
    }
    Ok(())
}
