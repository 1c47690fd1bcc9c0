//! The node's pod network (design: "Networking model"): bridge `skiff0` holding the first
//! address of the node's podCIDR; per pod a veth pair whose host side is a port of the bridge
//! (hairpin on) and whose other side is the pod's `eth0`, with an address from the podCIDR
//! ([`Ipam`]) and a default route via the bridge; routes to the other nodes' podCIDRs
//! ([`routes`]); MASQUERADE and hostPort DNAT ([`iptables`]). All links, addresses and routes go
//! through rtnetlink.
//!
//! A [`NodeNetwork`] works in the network namespace of the thread that made it (the node's).
//! Every operation is idempotent and safe to repeat after a crash at any point: `attach`
//! re-run returns the pod's address and repairs what is missing, `reconcile` frees what belongs
//! to pods that are gone. Calls for one pod must not run concurrently; calls for different pods
//! may.
//!
//! How the node agent uses it: see the [module comment](super).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkBridge};

use super::ipam::Ipam;
pub use super::iptables::{HostPortMapping, HostPortProtocol};
use super::netlink::{
    all_links, connect, delete_link, ignore_errno, link_by_name, link_mtu, link_name, nl_err,
    set_link_up,
};
use super::veth::{self, VETH_PREFIX, veth_name};
use super::{NetworkError, Result, io_err, iptables, routes, validate_pod_uid};

const DEFAULT_MTU: u32 = 1500;

/// The node's pod network settings.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// The bridge's name (`skiff0`).
    pub bridge: String,
    /// The node's `spec.podCIDR`.
    pub pod_cidr: Ipv4Net,
    /// The whole cluster's pod range: traffic to it is not masqueraded.
    pub cluster_cidr: Ipv4Net,
    /// Where the address allocations live (`<state_dir>/ipam/`); must survive kubelet restarts.
    pub state_dir: PathBuf,
    /// The pods' MTU; `None` for the MTU of the node's default-route interface (1500 without
    /// one).
    pub mtu: Option<u32>,
}

impl NetworkConfig {
    /// The defaults of the design: bridge `skiff0`, cluster CIDR `10.244.0.0/16`.
    pub fn new(pod_cidr: Ipv4Net, state_dir: PathBuf) -> NetworkConfig {
        NetworkConfig {
            bridge: "skiff0".to_string(),
            pod_cidr,
            cluster_cidr: "10.244.0.0/16".parse().expect("valid CIDR"),
            state_dir,
            mtu: None,
        }
    }
}

/// The pod network of one node.
#[derive(Debug)]
pub struct NodeNetwork {
    config: NetworkConfig,
    handle: Handle,
    ipam: Ipam,
    /// Held around every dump (a listing of links, addresses or routes) on `handle`: the kernel
    /// runs one dump per netlink socket at a time and answers a second one with EBUSY, and the
    /// pod workers attach pods while the node's routes are synced.
    dumps: tokio::sync::Mutex<()>,
    /// The default-route interface's MTU, once read.
    mtu: tokio::sync::OnceCell<u32>,
}

impl NodeNetwork {
    /// Opens the node's pod network state; must be called inside a tokio runtime, on a thread
    /// in the node's network namespace. Changes nothing in the kernel.
    pub fn new(mut config: NetworkConfig) -> Result<NodeNetwork> {
        config.pod_cidr = config.pod_cidr.trunc();
        if config.bridge.is_empty()
            || config.bridge.len() > 15
            || config.bridge.contains(['/', ' '])
        {
            return Err(NetworkError::InvalidInput {
                field: "bridge",
                reason: format!("{:?} is not an interface name", config.bridge),
            });
        }
        let ipam = Ipam::open(&config.state_dir.join("ipam"), config.pod_cidr)?;
        Ok(NodeNetwork {
            handle: connect()?,
            config,
            ipam,
            dumps: tokio::sync::Mutex::new(()),
            mtu: tokio::sync::OnceCell::new(),
        })
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// The bridge's address, the pods' default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.ipam.gateway()
    }

    /// The address `uid` holds, if any.
    pub fn pod_ip(&self, uid: &str) -> Result<Option<Ipv4Addr>> {
        self.ipam.lookup(uid)
    }

    /// Every allocation on disk: (address, pod uid).
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>> {
        self.ipam.allocations()
    }

    /// Creates the bridge with the gateway address (dropping any other IPv4 address on it) and
    /// brings it up, enables IPv4 forwarding (and bridge-nf-call-iptables where br_netfilter
    /// is loaded) and installs the MASQUERADE rules. Idempotent.
    pub async fn ensure_bridge(&self) -> Result<()> {
        let name = &self.config.bridge;
        let bridge = match link_by_name(&self.handle, name).await? {
            Some(link) => link,
            None => {
                // A fixed MAC (0a:58 and the gateway address, as other CNI bridges do), so the
                // bridge's MAC does not follow its lowest port's and the pods' ARP caches stay
                // right.
                let mut mac = vec![0x0a, 0x58];
                mac.extend(self.gateway().octets());
                let message = LinkBridge::new(name).address(mac).build();
                ignore_errno(
                    self.handle.link().add(message).execute().await,
                    &[libc::EEXIST],
                )
                .map_err(nl_err(format!("creating bridge {name}")))?;
                link_by_name(&self.handle, name).await?.ok_or_else(|| {
                    NetworkError::InvalidInput {
                        field: "bridge",
                        reason: format!("{name} vanished after creation"),
                    }
                })?
            }
        };
        if link_kind(&bridge) != Some(&InfoKind::Bridge) {
            return Err(NetworkError::InvalidInput {
                field: "bridge",
                reason: format!("{name} exists and is not a bridge"),
            });
        }
        let index = bridge.header.index;
        let prefix = self.config.pod_cidr.prefix_len();
        let mut present = false;
        for address in self.ipv4_addresses(index).await? {
            if address_of(&address) == Some(self.gateway()) && address.header.prefix_len == prefix {
                present = true;
            } else {
                ignore_errno(
                    self.handle.address().del(address).execute().await,
                    &[libc::EADDRNOTAVAIL],
                )
                .map_err(nl_err(format!("removing a stale address from {name}")))?;
            }
        }
        if !present {
            ignore_errno(
                self.handle
                    .address()
                    .add(index, IpAddr::V4(self.gateway()), prefix)
                    .execute()
                    .await,
                &[libc::EEXIST],
            )
            .map_err(nl_err(format!(
                "adding {}/{prefix} to {name}",
                self.gateway()
            )))?;
        }
        set_link_up(&self.handle, index, name).await?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(io_err("enabling IPv4 forwarding"))?;
        // Bridged pod-to-pod packets must pass through iptables too, or the reply to a pod that
        // reached another pod through a DNAT (hostPort, Service) skips the un-DNAT. The sysctl
        // is per network namespace and exists once the br_netfilter module is loaded.
        let bridge_nf = Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables");
        if bridge_nf.exists() {
            std::fs::write(bridge_nf, "1").map_err(io_err("enabling bridge-nf-call-iptables"))?;
        } else {
            tracing::warn!(
                "br_netfilter is not loaded: a pod reaching another pod on this node through a DNAT gets no reply"
            );
        }
        iptables::ensure_masquerade(self.config.pod_cidr, self.config.cluster_cidr).await
    }

    /// Connects the pod whose network namespace is `netns`: its address (the one it already
    /// holds, else a new one), the veth pair, `lo` and `eth0` up with the address and the
    /// default route via the bridge. Re-run after a crash it returns the same address and
    /// repairs a missing or wrong veth; on failure a newly claimed address is released.
    #[tracing::instrument(level = "debug", skip(self, netns))]
    pub async fn attach(&self, uid: &str, netns: &Path) -> Result<Ipv4Addr> {
        validate_pod_uid(uid)?;
        let (ip, new) = crate::blocking::run(|| self.ipam.allocate(uid))?;
        match self.plumb(uid, netns, ip).await {
            Ok(()) => {
                tracing::info!(uid, %ip, "pod network attached");
                Ok(ip)
            }
            Err(e) => {
                if new {
                    let _ = self.remove_veth(uid).await;
                    let _ = crate::blocking::run(|| self.ipam.release(uid));
                }
                Err(e)
            }
        }
    }

    async fn plumb(&self, uid: &str, netns: &Path, ip: Ipv4Addr) -> Result<()> {
        let bridge_name = &self.config.bridge;
        let bridge = link_by_name(&self.handle, bridge_name)
            .await?
            .ok_or_else(|| NetworkError::InvalidInput {
                field: "bridge",
                reason: format!("{bridge_name} does not exist: ensure_bridge first"),
            })?;
        let mtu = self.mtu().await?;
        let host = veth::ensure_pair(&self.handle, &veth_name(uid), netns, mtu).await?;
        veth::ensure_bridge_port(&self.handle, &host, &bridge).await?;
        let address = Ipv4Net::new(ip, self.config.pod_cidr.prefix_len()).expect("valid prefix");
        veth::configure_pod_side(netns, address, self.gateway()).await
    }

    /// Disconnects the pod: deletes its veth pair and releases its address. Idempotent.
    pub async fn detach(&self, uid: &str) -> Result<()> {
        validate_pod_uid(uid)?;
        self.remove_veth(uid).await?;
        let freed = crate::blocking::run(|| self.ipam.release(uid))?;
        tracing::info!(uid, ?freed, "pod network detached");
        Ok(())
    }

    async fn remove_veth(&self, uid: &str) -> Result<()> {
        let name = veth_name(uid);
        if let Some(link) = link_by_name(&self.handle, &name).await? {
            delete_link(&self.handle, link.header.index, &name).await?;
        }
        Ok(())
    }

    /// Frees the addresses and veths of every pod not in `live_uids` (pods deleted while the
    /// kubelet was down, or left by a crash), including host veths with no allocation. Returns
    /// the uids whose allocations were freed. `live_uids` must hold every pod that may be
    /// attached meanwhile: call it at start-up before attaching new pods.
    pub async fn reconcile(&self, live_uids: &[String]) -> Result<Vec<String>> {
        let live: HashSet<&str> = live_uids.iter().map(String::as_str).collect();
        let mut freed = Vec::new();
        let mut kept_veths = HashSet::new();
        for (_, uid) in self.ipam.allocations()? {
            if live.contains(uid.as_str()) {
                kept_veths.insert(veth_name(&uid));
            } else if !freed.contains(&uid) {
                self.detach(&uid).await?;
                freed.push(uid);
            }
        }
        for uid in &live {
            kept_veths.insert(veth_name(uid));
        }
        let links = {
            let _dump = self.dumps.lock().await;
            all_links(&self.handle).await?
        };
        for link in links {
            let Some(name) = link_name(&link) else {
                continue;
            };
            if name.starts_with(VETH_PREFIX)
                && link_kind(&link) == Some(&InfoKind::Veth)
                && !kept_veths.contains(name)
            {
                tracing::info!(veth = name, "removing a veth no pod owns");
                delete_link(&self.handle, link.header.index, name).await?;
            }
        }
        Ok(freed)
    }

    /// Makes the routes to the other nodes' podCIDRs exactly `routes` (podCIDR, InternalIP);
    /// this node's own podCIDR is skipped. See [`routes::sync_routes`].
    pub async fn sync_routes(&self, wanted: &[(Ipv4Net, Ipv4Addr)]) -> Result<()> {
        let _dump = self.dumps.lock().await;
        routes::sync_routes(&self.handle, self.config.pod_cidr, wanted).await
    }

    /// Takes the node off the pod network (the node leaving the cluster, every pod stopped):
    /// frees what pods still hold, removes the routes to other nodes, the bridge and the
    /// MASQUERADE and hostPort rules. Idempotent; the address allocations on disk are empty
    /// afterwards.
    pub async fn remove(&self) -> Result<()> {
        self.reconcile(&[]).await?;
        self.sync_routes(&[]).await?;
        let name = &self.config.bridge;
        if let Some(link) = link_by_name(&self.handle, name).await? {
            delete_link(&self.handle, link.header.index, name).await?;
        }
        iptables::remove_all().await
    }

    /// Makes the hostPort DNAT rules exactly `mappings`: every running pod's
    /// ([`HostPortMapping::for_pod`]). See [`iptables`]. The rules live in the kernel, so they
    /// outlive a kubelet restart: after one, call this once the pods are adopted, not before.
    pub async fn set_host_ports(&self, mappings: &[HostPortMapping]) -> Result<()> {
        for m in mappings {
            if !self.config.pod_cidr.contains(&m.pod_ip)
                || m.host_port == 0
                || m.container_port == 0
            {
                return Err(NetworkError::InvalidInput {
                    field: "hostPort",
                    reason: format!("{m:?}: pod IP outside {} or port 0", self.config.pod_cidr),
                });
            }
        }
        iptables::set_host_ports(mappings).await
    }

    /// The pods' MTU: configured, else the default-route interface's, read once (a dump of the
    /// main table per pod would serialize a burst of attaches on the dump lock).
    async fn mtu(&self) -> Result<u32> {
        if let Some(mtu) = self.config.mtu {
            return Ok(mtu);
        }
        self.mtu
            .get_or_try_init(|| self.default_route_mtu())
            .await
            .copied()
    }

    async fn default_route_mtu(&self) -> Result<u32> {
        let _dump = self.dumps.lock().await;
        let default_route = routes::main_routes(&self.handle)
            .await?
            .into_iter()
            .find(|r| r.header.destination_prefix_length == 0);
        let Some(oif) = default_route.as_ref().and_then(routes::route_output) else {
            return Ok(DEFAULT_MTU);
        };
        let link = self
            .handle
            .link()
            .get()
            .match_index(oif)
            .execute()
            .try_next()
            .await
            .map_err(nl_err("looking up the default route's interface"))?;
        Ok(link.as_ref().and_then(link_mtu).unwrap_or(DEFAULT_MTU))
    }

    async fn ipv4_addresses(&self, index: u32) -> Result<Vec<AddressMessage>> {
        let _dump = self.dumps.lock().await;
        let addresses: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("listing addresses"))?;
        Ok(addresses
            .into_iter()
            .filter(|a| a.header.index == index && matches!(address_of_any(a), Some(IpAddr::V4(_))))
            .collect())
    }
}

fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(kind) => Some(kind),
            _ => None,
        }),
        _ => None,
    })
}

fn address_of_any(address: &AddressMessage) -> Option<IpAddr> {
    address.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    })
}

fn address_of(address: &AddressMessage) -> Option<Ipv4Addr> {
    match address_of_any(address) {
        Some(IpAddr::V4(ip)) => Some(ip),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent shares one NodeNetwork between its pod workers and the route keeper, on a
    /// multi-threaded runtime: its futures must be spawnable.
    #[allow(dead_code)]
    fn futures_are_spawnable(net: std::sync::Arc<NodeNetwork>, client: kube::Client) {
        let attach = net.clone();
        tokio::spawn(async move { attach.attach("uid", Path::new("/x")).await });
        let detach = net.clone();
        tokio::spawn(async move { detach.detach("uid").await });
        let host_ports = net.clone();
        tokio::spawn(async move { host_ports.set_host_ports(&[]).await });
        let reconcile = net.clone();
        tokio::spawn(async move { reconcile.reconcile(&[]).await });
        tokio::spawn(
            async move { super::super::node_routes::keep_routes(client, "n", &net).await },
        );
    }
}
