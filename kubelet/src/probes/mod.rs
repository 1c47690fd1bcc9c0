//! Container probes (liveness, readiness, startup) and the actions they and the lifecycle hooks
//! run: exec through the OCI runtime, httpGet (HTTP, or HTTPS without verification), tcpSocket
//! and gRPC health checks, aimed at the pod's IP from the kubelet's network namespace.

pub mod grpc;
pub mod http;
pub mod manager;
pub mod prober;

pub use manager::{Kind, ProbeManager};
