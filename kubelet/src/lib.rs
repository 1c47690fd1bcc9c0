//! skiff-kubelet: the node agent. It registers its Node, watches the pods bound to it through the
//! Kubernetes API (kube-rs) and runs them in real containers through an OCI runtime with runc's
//! command line (skiff-runc, runc or crun).
//!
//! Modules, one concern each:
//! - `agent`: the command line and the start of everything below.
//! - `node`, `host`: the Node's registration, status and Lease; what the host is made of.
//! - `pod_manager`, `pod_worker`: the pod watch and one worker per pod (sandbox, init and app
//!   containers, restarts with back-off, graceful termination, cleanup, adoption after a restart);
//!   `admission`: whether a pod fits the node at all (resources, node affinity, taints);
//!   `listers`: the Node and Services kept current by watches for them; `static_pods`: pods
//!   from manifest files and their mirror pods in the API; `eviction`: the
//!   memory.available/nodefs.available signals, the pressure conditions and node-pressure
//!   eviction; `image_gc`: unused images collected by the image filesystem's usage.
//! - `probes`, `lifecycle`: liveness/readiness/startup probes with their thresholds; postStart and
//!   preStop hooks, stopping one container, activeDeadlineSeconds.
//! - `volumes`: emptyDir, hostPath, configMap, secret, downwardAPI and projected volumes.
//! - `status`, `events`: the pod status manager (writes only changes) and the event recorder.
//! - `containers`, `shim`, `cri_log`, `runtime`: the containers' on-disk records, the
//!   per-container supervisor (`skiff-shim`) and its CRI log, the OCI runtime's command line.
//! - `oci_config`, `seccomp`, `container_env`, `cgroups`: a container's config.json from the pod spec (and its seccomp profile), its
//!   environment, pod cgroups in QoS tiers (QoS classes and quantities come from `skiff-k8s`, the
//!   Kubernetes semantics the control plane shares).
//! - `image`: the node's image store (pull from registries, import archives, unpacked layers shared
//!   between images, overlayfs root filesystems).
//! - `network`: the pod sandbox's pinned namespaces and the pod network (bridge, veth, IPAM on
//!   disk, routes to other nodes, masquerade) through netlink; `node_network` runs it for the node
//!   (bridge once the podCIDR is known, routes following the Node list) and `sandbox` is the pod
//!   worker's view of it (namespaces, address, hostPorts, the pod's files).
//! - `blocking`: synchronous file work (fsyncs) done from async code without stalling the
//!   runtime's other tasks.
//! - `client_certificate`, `serving_certificate`, `certificate_store`, `certificate_rotation`:
//!   the TLS bootstrap (a bootstrap token traded for a node client certificate through a CSR),
//!   the node API's serving certificate signed by the cluster, the certificates in `--cert-dir`
//!   and when they are renewed.
//! - `server`: the node API on port 10250 (logs, exec, port-forward, stats) over mutual TLS.

pub mod admission;
pub mod agent;
pub mod blocking;
pub mod certificate_rotation;
pub mod certificate_store;
pub mod cgroups;
pub mod client_certificate;
pub mod container_env;
pub mod containers;
pub mod cri_log;
pub mod events;
pub mod eviction;
pub mod host;
pub mod image;
pub mod image_gc;
pub mod lifecycle;
pub mod listers;
pub mod network;
pub mod node;
pub mod node_network;
pub mod oci_config;
pub mod pod_manager;
pub mod pod_worker;
pub mod probes;
pub mod runtime;
pub mod sandbox;
pub mod seccomp;
pub mod server;
pub mod serving_certificate;
pub mod shim;
pub mod static_pods;
pub mod status;
pub mod volumes;
