//! Routes to the other nodes' podCIDRs via their InternalIP (host-gw), kept equal to what the
//! caller asks for. The routes are marked with a route protocol number of our own
//! ([`ROUTE_PROTOCOL`]) so that a sync adds and removes only the routes it made, never one an
//! administrator or another daemon owns; `ip route show proto 233` lists them.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::netlink::{ignore_errno, nl_err};
use super::{NetworkError, Result};

/// The route protocol of skiff's routes: unassigned in iproute2's `rt_protos`.
pub const ROUTE_PROTOCOL: u8 = 233;

/// Makes the main table's skiff routes exactly `wanted` (podCIDR → gateway), leaving out
/// `own_cidr`. Every route is tried; the failures (e.g. a gateway not on a connected network)
/// are reported together.
pub async fn sync_routes(
    handle: &Handle,
    own_cidr: Ipv4Net,
    wanted: &[(Ipv4Net, Ipv4Addr)],
) -> Result<()> {
    let mut wanted: HashMap<Ipv4Net, Ipv4Addr> = wanted
        .iter()
        .map(|(cidr, via)| (cidr.trunc(), *via))
        .filter(|(cidr, _)| *cidr != own_cidr.trunc())
        .collect();
    let mut failures = Vec::new();
    for route in our_routes(handle).await? {
        let (cidr, via) = (route_destination(&route), route_gateway(&route));
        if cidr.is_some_and(|cidr| via.is_some() && wanted.get(&cidr) == via.as_ref()) {
            wanted.remove(&cidr.unwrap());
            continue;
        }
        let result = ignore_errno(handle.route().del(route).execute().await, &[libc::ESRCH]);
        if let Err(e) = result {
            failures.push(format!("deleting the route to {cidr:?}: {e}"));
        }
    }
    for (cidr, via) in wanted {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cidr.network(), cidr.prefix_len())
            .gateway(via)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .build();
        match handle.route().add(route).replace().execute().await {
            Ok(()) => tracing::debug!(%cidr, %via, "route added"),
            Err(e) => failures.push(format!("adding the route to {cidr} via {via}: {e}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(NetworkError::Routes(failures.join("; ")))
    }
}

/// The routes the other nodes need (podCIDR → InternalIP, IPv4), from the Node objects: for
/// [`sync_routes`]. Nodes without a podCIDR or an InternalIP yet, and `own_node`, are left out.
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
            (Some(cidr), Some(ip)) => routes.push((cidr, ip)),
            _ => tracing::debug!(node = name, "no IPv4 podCIDR or InternalIP yet: no route"),
        }
    }
    routes
}

/// The IPv4 routes of the main table that carry our protocol.
pub async fn our_routes(handle: &Handle) -> Result<Vec<RouteMessage>> {
    let mut routes = main_routes(handle).await?;
    routes.retain(|r| r.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL));
    Ok(routes)
}

pub(crate) fn route_destination(route: &RouteMessage) -> Option<Ipv4Net> {
    let prefix = route.header.destination_prefix_length;
    let network = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    });
    match network {
        Some(ip) => Ipv4Net::new(ip, prefix).ok(),
        None if prefix == 0 => Some(Ipv4Net::default()),
        None => None,
    }
}

pub(crate) fn route_gateway(route: &RouteMessage) -> Option<Ipv4Addr> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

pub(crate) fn route_output(route: &RouteMessage) -> Option<u32> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    })
}

/// The main table's IPv4 routes of any protocol (for finding the node's default route).
pub(crate) async fn main_routes(handle: &Handle) -> Result<Vec<RouteMessage>> {
    let routes: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl_err("listing routes"))?;
    Ok(routes
        .into_iter()
        .filter(|r| {
            r.header.address_family == AddressFamily::Inet
                && r.header.table == RouteHeader::RT_TABLE_MAIN
        })
        .collect())
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
