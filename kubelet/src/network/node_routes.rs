//! Routes to the other nodes' pods kept current as nodes come and go: a watch on the Node
//! objects (kube-rs reflector) whose every change recomputes the wanted routes (podCIDR →
//! InternalIP) and hands them to [`NodeNetwork::sync_routes`] when they differ from what was
//! last synced.

use std::net::Ipv4Addr;
use std::time::Duration;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector};
use kube::{Api, Client};

use super::NodeNetwork;

/// How often a failed sync is retried when no Node changes in the meantime.
const RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// The routes the other nodes need (podCIDR → InternalIP, IPv4), from the Node objects, sorted.
/// Nodes without a podCIDR or an InternalIP yet, and `own_node`, are left out.
pub fn routes_from_nodes(nodes: &[Node], own_node: &str) -> Vec<(Ipv4Net, Ipv4Addr)> {
    let mut routes = Vec::new();
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        if name == own_node {
            continue;
        }
        let spec = node.spec.as_ref();
        let cidrs = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
        let cidr = cidrs
            .iter()
            .chain(spec.and_then(|s| s.pod_cidr.as_ref()))
            .find_map(|c| c.parse::<Ipv4Net>().ok());
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_deref())
            .unwrap_or_default();
        let internal_ip = addresses
            .iter()
            .filter(|a| a.type_ == "InternalIP")
            .find_map(|a| a.address.parse::<Ipv4Addr>().ok());
        match (cidr, internal_ip) {
            (Some(cidr), Some(ip)) => routes.push((cidr.trunc(), ip)),
            _ => tracing::debug!(node = name, "no IPv4 podCIDR or InternalIP yet: no route"),
        }
    }
    routes.sort();
    routes
}

/// Watches the Nodes and keeps `net`'s routes to the other nodes' podCIDRs equal to them; runs
/// until the task is dropped. Watch errors are retried with backoff, failed syncs every
/// `RETRY_INTERVAL` (10 s).
pub async fn keep_routes(client: Client, own_node: &str, net: &NodeNetwork) {
    let (store, writer) = reflector::store::<Node>();
    let watch = watcher::watcher(Api::<Node>::all(client), watcher::Config::default());
    let mut events = reflector(writer, watch).default_backoff().boxed();
    let mut synced: Option<Vec<(Ipv4Net, Ipv4Addr)>> = None;
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    let mut ready = false;
    loop {
        tokio::select! {
            event = events.next() => match event {
                None => return,
                Some(Err(e)) => {
                    tracing::warn!("watching nodes for routes: {e}");
                    continue;
                }
                // The store is replaced only at InitDone.
                Some(Ok(Event::Init | Event::InitApply(_))) => continue,
                Some(Ok(_)) => ready = true,
            },
            _ = retry.tick() => {
                if !ready || synced.is_some() {
                    continue;
                }
            }
        }
        let nodes: Vec<Node> = store.state().iter().map(|n| (**n).clone()).collect();
        let wanted = routes_from_nodes(&nodes, own_node);
        if synced.as_ref() == Some(&wanted) {
            continue;
        }
        match net.sync_routes(&wanted).await {
            Ok(()) => {
                tracing::info!(routes = ?wanted, "routes to the other nodes synced");
                synced = Some(wanted);
            }
            Err(e) => {
                tracing::warn!("{e}");
                synced = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    fn node(name: &str, cidr: Option<&str>, addresses: &[(&str, &str)]) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some(name.into());
        node.spec = Some(NodeSpec {
            pod_cidr: cidr.map(Into::into),
            pod_cidrs: cidr.map(|c| vec!["fd00::/64".into(), c.into()]),
            ..Default::default()
        });
        node.status = Some(NodeStatus {
            addresses: Some(
                addresses
                    .iter()
                    .map(|(type_, address)| NodeAddress {
                        type_: type_.to_string(),
                        address: address.to_string(),
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        node
    }

    #[test]
    fn routes_come_from_other_nodes_cidrs_and_internal_ips() {
        let nodes = [
            node("me", Some("10.244.1.0/24"), &[("InternalIP", "192.0.2.1")]),
            node(
                "two",
                Some("10.244.2.0/24"),
                &[
                    ("Hostname", "two"),
                    ("InternalIP", "fd00::2"),
                    ("InternalIP", "192.0.2.2"),
                ],
            ),
            node("new", None, &[("InternalIP", "192.0.2.3")]),
            node(
                "noaddr",
                Some("10.244.4.0/24"),
                &[("ExternalIP", "203.0.113.4")],
            ),
        ];
        assert_eq!(
            routes_from_nodes(&nodes, "me"),
            [(
                "10.244.2.0/24".parse().unwrap(),
                "192.0.2.2".parse().unwrap()
            )]
        );
    }
}
