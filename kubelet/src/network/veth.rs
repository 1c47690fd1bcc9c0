//! A pod's veth pair: the host side (`skv…`, a port of the bridge with hairpin on) and the pod
//! side (`eth0`, made directly inside the pod's network namespace, with the pod's address, up,
//! `lo` up, and the default route via the bridge). Each step checks what is there first, so a
//! pair left half-made by a crash is repaired.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use ipnet::Ipv4Net;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkMessage};
use rtnetlink::{
    Handle, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};
use sha2::{Digest, Sha256};

use super::netlink::{
    delete_link, in_netns, link_by_name, link_controller, link_name, link_peer, nl_err, set_link_up,
};
use super::{NetworkError, Result, io_err};

/// Host-side veth names: this prefix and a hash of the pod uid (interface names are at most
/// 15 bytes).
pub const VETH_PREFIX: &str = "skv";
pub const POD_INTERFACE: &str = "eth0";

/// The host-side veth of a pod: `skv` and 11 hex digits of the uid's SHA-256.
pub fn veth_name(uid: &str) -> String {
    let digest = Sha256::digest(uid.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{VETH_PREFIX}{}", &hex[..11])
}

/// Makes sure `host_name` and the pod's `eth0` are the two ends of one veth pair, recreating
/// the pair when either end is missing or belongs to something else. Returns the host end.
pub(crate) async fn ensure_pair(
    handle: &Handle,
    host_name: &str,
    netns: &Path,
    mtu: u32,
) -> Result<LinkMessage> {
    let host = link_by_name(handle, host_name).await?;
    let host_peer = host.as_ref().and_then(link_peer);
    // The pair is whole when the pod's eth0 is the host veth's peer (ifindexes are per
    // namespace: the host veth reports its peer's index in the pod's namespace); a lone or
    // foreign eth0 is deleted.
    let paired = in_netns(netns, move |handle| async move {
        match link_by_name(&handle, POD_INTERFACE).await? {
            Some(eth0) if Some(eth0.header.index) == host_peer => Ok(true),
            Some(eth0) => delete_link(&handle, eth0.header.index, POD_INTERFACE)
                .await
                .map(|_| false),
            None => Ok(false),
        }
    })
    .await?;
    if !paired {
        if let Some(host) = &host {
            delete_link(handle, host.header.index, host_name).await?;
        }
        create_pair(handle, host_name, netns, mtu).await?;
    }
    link_by_name(handle, host_name)
        .await?
        .ok_or_else(|| NetworkError::InvalidInput {
            field: "veth",
            reason: format!("{host_name} vanished after creation"),
        })
}

/// One RTM_NEWLINK makes both ends, the peer already named `eth0` inside the pod's namespace.
async fn create_pair(handle: &Handle, host_name: &str, netns: &Path, mtu: u32) -> Result<()> {
    let netns_file =
        std::fs::File::open(netns).map_err(io_err(format!("opening {}", netns.display())))?;
    let peer = LinkUnspec::new_with_name(POD_INTERFACE)
        .mtu(mtu)
        .setns_by_fd(netns_file.as_raw_fd())
        .build();
    let message = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(host_name.to_string())
        .mtu(mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    handle
        .link()
        .add(message)
        .execute()
        .await
        .map_err(nl_err(format!("creating veth {host_name}")))
}

/// Puts the host end on the bridge with hairpin mode and brings it up.
pub(crate) async fn ensure_bridge_port(
    handle: &Handle,
    host: &LinkMessage,
    bridge: &LinkMessage,
) -> Result<()> {
    let index = host.header.index;
    let name = link_name(host).unwrap_or_default().to_string();
    let bridge_index = bridge.header.index;
    if link_controller(host) != Some(bridge_index) {
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(bridge_index)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err(format!("adding {name} to the bridge")))?;
    }
    // Hairpin, so a pod reaching itself through a bridged (br_netfilter) DNAT gets its packets
    // back out of the port they came in.
    handle
        .link()
        .set_port(LinkBridgePort::new(index).hairpin(true).build())
        .execute()
        .await
        .map_err(nl_err(format!("setting hairpin mode on {name}")))?;
    set_link_up(handle, index, &name).await
}

/// Inside the pod's namespace: `lo` up, `eth0` with `address` and up, the default route via
/// `gateway`.
pub(crate) async fn configure_pod_side(
    netns: &Path,
    address: Ipv4Net,
    gateway: Ipv4Addr,
) -> Result<()> {
    in_netns(netns, move |handle| async move {
        if let Some(lo) = link_by_name(&handle, "lo").await? {
            set_link_up(&handle, lo.header.index, "lo").await?;
        }
        let eth0 = link_by_name(&handle, POD_INTERFACE)
            .await?
            .ok_or_else(|| NetworkError::InvalidInput {
                field: "netns",
                reason: format!("{POD_INTERFACE} missing after creation"),
            })?
            .header
            .index;
        handle
            .address()
            .add(eth0, IpAddr::V4(address.addr()), address.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!(
                "adding {address} to the pod's {POD_INTERFACE}"
            )))?;
        set_link_up(&handle, eth0, POD_INTERFACE).await?;
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(eth0)
            .build();
        handle
            .route()
            .add(default)
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!(
                "adding the pod's default route via {gateway}"
            )))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_and_differ() {
        let a = veth_name("0d5b7f0e-2f7c-4f57-9a43-6d8e1f0a2b3c");
        assert_eq!(a.len(), 14);
        assert!(a.starts_with(VETH_PREFIX));
        assert_ne!(a, veth_name("0d5b7f0e-2f7c-4f57-9a43-6d8e1f0a2b3d"));
        assert_eq!(a, veth_name("0d5b7f0e-2f7c-4f57-9a43-6d8e1f0a2b3c"));
    }
}
