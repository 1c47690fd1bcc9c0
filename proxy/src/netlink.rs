//! The node's side of the Service network, through rtnetlink: the dummy interface that holds the
//! Service CIDR route (a Service packet no rule catches is dropped on the node instead of
//! leaving it, and the node's own connections to a ClusterIP find a route before NAT; an ifb
//! device stands in where the kernel lacks the dummy driver), the
//! node's addresses for NodePorts, and a stream of address changes that triggers a resync.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_sys::AsyncSocket;
use rtnetlink::{Handle, LinkDummy, LinkIfb, LinkUnspec, RouteMessageBuilder};

/// The dummy interface holding the Service CIDR route.
pub const DUMMY: &str = "skiff-svc";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink connection: {0}")]
    Connect(std::io::Error),
    #[error("netlink: {what}: {source}")]
    Request {
        what: String,
        source: rtnetlink::Error,
    },
}

fn request(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |source| Error::Request { what, source }
}

fn connect() -> Result<Handle, Error> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Connect)?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, Error> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(request(format!("looking up link {name}"))(e)),
    }
}

/// Creates `skiff-svc` (if missing), sets it up and routes the Service CIDRs (one per family)
/// to it.
pub async fn ensure_service_route(service_cidrs: &[IpNet]) -> Result<(), Error> {
    let handle = connect()?;
    let index = match link_index(&handle, DUMMY).await? {
        Some(i) => i,
        None => {
            let dummy = handle
                .link()
                .add(LinkDummy::new(DUMMY).up().build())
                .execute()
                .await;
            match dummy {
                // A kernel built without the dummy driver: an ifb device, which likewise
                // drops every packet routed to it (it only forwards what tc redirects).
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EOPNOTSUPP => {
                    tracing::info!(
                        "no dummy link support in this kernel; {DUMMY} is an ifb device"
                    );
                    handle
                        .link()
                        .add(LinkIfb::new(DUMMY).up().build())
                        .execute()
                        .await
                        .map_err(request(format!("creating {DUMMY}")))?;
                }
                other => other.map_err(request(format!("creating {DUMMY}")))?,
            }
            link_index(&handle, DUMMY).await?.ok_or_else(|| {
                request(format!("finding {DUMMY}"))(rtnetlink::Error::RequestFailed)
            })?
        }
    };
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(request(format!("setting {DUMMY} up")))?;
    for cidr in service_cidrs {
        let route = match cidr {
            IpNet::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(v4.network(), v4.prefix_len())
                .output_interface(index)
                .build(),
            IpNet::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(v6.network(), v6.prefix_len())
                .output_interface(index)
                .build(),
        };
        handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(request(format!("routing {cidr} to {DUMMY}")))?;
    }
    Ok(())
}

/// Deletes `skiff-svc` (and with it the Service CIDR route), if present.
pub async fn remove_dummy() -> Result<(), Error> {
    let handle = connect()?;
    if let Some(index) = link_index(&handle, DUMMY).await? {
        handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(request(format!("deleting {DUMMY}")))?;
    }
    Ok(())
}

/// Puts `ip` (the cluster DNS address, inside the Service CIDR) on `skiff-svc` as a /32, so
/// the node answers for it locally and a pod's query never leaves the node.
pub async fn hold_address(ip: IpAddr) -> Result<(), Error> {
    let handle = connect()?;
    let index = link_index(&handle, DUMMY)
        .await?
        .ok_or_else(|| request(format!("finding {DUMMY}"))(rtnetlink::Error::RequestFailed))?;
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    match handle.address().add(index, ip, prefix).execute().await {
        // Held already (a restarted proxy).
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        other => other.map_err(request(format!("adding {ip} to {DUMMY}"))),
    }
}

/// Sets `lo` up and adds `ip/32` to it (the benchmark's endpoint address).
pub async fn set_up_loopback(ip: Ipv4Addr) -> Result<(), Error> {
    let handle = connect()?;
    let index = link_index(&handle, "lo")
        .await?
        .ok_or_else(|| request("finding lo")(rtnetlink::Error::RequestFailed))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(request("setting lo up"))?;
    handle
        .address()
        .add(index, IpAddr::V4(ip), 32)
        .execute()
        .await
        .map_err(request(format!("adding {ip} to lo")))
}

/// The node's addresses (either family) inside any of `cidrs`, sorted.
pub async fn node_ips(cidrs: &[IpNet]) -> Result<Vec<IpAddr>, Error> {
    let handle = connect()?;
    let mut addrs = handle.address().get().execute();
    let mut out = Vec::new();
    while let Some(msg) = addrs
        .try_next()
        .await
        .map_err(request("listing addresses"))?
    {
        for attr in msg.attributes {
            if let AddressAttribute::Address(ip) = attr
                && cidrs.iter().any(|c| c.contains(&ip))
            {
                out.push(ip);
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Calls `changed` whenever an address is added to or removed from the node.
pub async fn watch_addresses(changed: impl Fn() + Send + 'static) -> Result<(), Error> {
    let (mut conn, _handle, mut messages) = rtnetlink::new_connection().map_err(Error::Connect)?;
    let groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
    conn.socket_mut()
        .socket_mut()
        .bind(&netlink_sys::SocketAddr::new(0, groups))
        .map_err(Error::Connect)?;
    tokio::spawn(conn);
    tokio::spawn(async move {
        while messages.next().await.is_some() {
            changed();
        }
    });
    Ok(())
}
