//! skiff-kubelet: the node agent. It registers its Node, watches the pods bound to it through the
//! Kubernetes API (kube-rs) and runs them in real containers through an OCI runtime with runc's
//! command line (skiff-runc, runc or crun).
//!
//! Modules, one concern each:
//! - `image`: the node's image store (pull from registries, import archives, unpacked layers shared
//!   between images, overlayfs root filesystems).
//! - `network`: the pod sandbox's pinned namespaces and the pod network (bridge, veth, IPAM on
//!   disk, routes to other nodes, masquerade) through netlink.
//! - `agent`: everything else — node registration and lease, pod workers, container supervision,
//!   status (filled in by the agent's modules).

pub mod agent;
pub mod image;
pub mod network;
