//! skiff-k8s: the Kubernetes semantics more than one component needs — taints and tolerations,
//! node selectors and node affinity, label selectors (kube's), quantities and what a pod
//! requests, pod QoS, the finalizers of cascading deletion, and the one clock. Pure functions over
//! k8s-openapi types: it may depend only on k8s-openapi, kube-core, serde and thiserror (no async
//! runtime, no HTTP), so that the API server, the scheduler, the controllers, the kubelet and the
//! proxy can all use it.

pub mod finalizers;
pub mod labels;
pub mod node_affinity;
pub mod qos;
pub mod quantity;
pub mod resources;
pub mod taints;
pub mod time;
