//! skiff-proxy: kube-proxy's job on a skiff node. Services and EndpointSlices (watched through
//! kube-rs) become one desired model ([`model`]) computed whole on each sync ([`sync`]), which a
//! renderer installs atomically: [`iptables`] (default) or [`nftables`]. [`netlink`] holds the
//! Service CIDR route and reads node addresses, [`conntrack`] flushes UDP entries to endpoints
//! that went away, and [`health`] serves /healthz, /metrics and healthCheckNodePorts;
//! [`bench`] measures both modes. [`dns`] answers cluster names at the cluster DNS address from
//! the same Service/EndpointSlice cache, and forwards the rest upstream.

pub mod bench;
pub mod conntrack;
pub mod dataplane;
pub mod dns;
pub mod health;
pub mod iptables;
pub mod model;
pub mod netlink;
pub mod nft_batch;
pub mod nftables;
pub mod sync;
