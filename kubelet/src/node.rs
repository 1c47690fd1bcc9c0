//! The node's record in the API: registration, the status (capacity, allocatable, addresses,
//! nodeInfo, pressure conditions, the images it holds) patched when it changes and at least every five minutes, and
//! the Lease in `kube-node-lease` renewed every ten seconds (the heartbeat the node lifecycle
//! controller reads).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints,
    NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::eviction::Pressure;
use crate::host::{HostFacts, HostUsage};
use crate::image::ImageStore;

/// How often the Lease is renewed.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// The Lease's duration: four missed renewals.
const LEASE_DURATION_SECONDS: i32 = 40;
/// How often the status is recomputed (and patched if it changed).
const STATUS_CHECK: Duration = Duration::from_secs(10);
/// The status is patched at least this often even when nothing changed.
const STATUS_REPORT: Duration = Duration::from_secs(300);

/// The most images the status lists, the largest first (the kubelet's nodeStatusMaxImages).
const MAX_STATUS_IMAGES: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {node}: {action}: {source}")]
    Api {
        node: String,
        action: &'static str,
        source: kube::Error,
    },
}

/// What the node reports about itself.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub node_ip: IpAddr,
    pub max_pods: u32,
    pub root_dir: PathBuf,
    pub runtime_version: String,
    /// The node API's port, reported as `status.daemonEndpoints.kubeletEndpoint.Port`.
    pub kubelet_port: u16,
}

/// The node's record and heartbeat.
pub struct NodeAgent {
    client: Client,
    config: NodeConfig,
    facts: HostFacts,
    images: ImageStore,
    /// MemoryPressure and DiskPressure, as the eviction manager finds them.
    pressure: tokio::sync::watch::Receiver<Pressure>,
}

impl NodeAgent {
    pub fn new(
        client: Client,
        config: NodeConfig,
        images: ImageStore,
        pressure: tokio::sync::watch::Receiver<Pressure>,
    ) -> NodeAgent {
        NodeAgent {
            client,
            config,
            facts: HostFacts::read(),
            images,
            pressure,
        }
    }

    /// The images the node holds as its status lists them: names (repo digests, then tags) and
    /// size, the largest first, at most [`MAX_STATUS_IMAGES`].
    async fn node_images(&self) -> Vec<ContainerImage> {
        let store = self.images.clone();
        let listed = tokio::task::spawn_blocking(move || store.list()).await;
        let mut images = match listed {
            Ok(Ok(images)) => images,
            Ok(Err(e)) => {
                tracing::warn!("listing the node's images: {e}");
                return vec![];
            }
            Err(e) => {
                tracing::warn!("listing the node's images: {e}");
                return vec![];
            }
        };
        images.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.id.cmp(&b.id)));
        images
            .into_iter()
            .take(MAX_STATUS_IMAGES)
            .map(|i| ContainerImage {
                names: Some(i.repo_digests.into_iter().chain(i.repo_tags).collect()),
                size_bytes: Some(i64::try_from(i.size).unwrap_or(i64::MAX)),
            })
            .collect()
    }

    /// Creates the Node (or adopts the existing one) and writes its first status.
    pub async fn register(&self) -> Result<Node, NodeError> {
        let api: Api<Node> = Api::all(self.client.clone());
        let name = &self.config.name;
        let err = |action| {
            let node = name.clone();
            move |source| NodeError::Api {
                node,
                action,
                source,
            }
        };
        let labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), name.clone()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            (
                "kubernetes.io/arch".to_string(),
                std::env::consts::ARCH.replace("x86_64", "amd64"),
            ),
        ]);
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels},
        }))
        .expect("a Node literal");
        match api.create(&PostParams::default(), &node).await {
            Ok(_) => tracing::info!(node = %name, "node registered"),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                api.patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": labels}})),
                )
                .await
                .map_err(err("update labels"))?;
                tracing::info!(node = %name, "node already registered; adopted it");
            }
            Err(e) => return Err(err("create")(e)),
        }
        let status = self.status(None, self.node_images().await);
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map_err(err("write status"))
    }

    /// The status as it is now; conditions keep their transition time from `previous` when
    /// their state did not change.
    fn status(&self, previous: Option<&NodeStatus>, images: Vec<ContainerImage>) -> NodeStatus {
        let f = &self.facts;
        let usage = HostUsage::read(&self.config.root_dir);
        let resources = BTreeMap::from([
            ("cpu".to_string(), Quantity(f.cpus.to_string())),
            (
                "memory".to_string(),
                Quantity(format!("{}Ki", f.memory_bytes / 1024)),
            ),
            (
                "pods".to_string(),
                Quantity(self.config.max_pods.to_string()),
            ),
            (
                "ephemeral-storage".to_string(),
                Quantity(format!("{}Ki", usage.disk_total_bytes / 1024)),
            ),
        ]);
        let Pressure {
            memory: memory_pressure,
            disk: disk_pressure,
        } = *self.pressure.borrow();
        let pid_pressure = usage.processes * 10 > usage.pid_max * 9;
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let condition = |kind: &str, on: bool, yes: (&str, &str), no: (&str, &str)| {
            let status = if on { "True" } else { "False" };
            let (reason, message) = if on { yes } else { no };
            let since = previous
                .and_then(|p| p.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
                .filter(|c| c.status == status)
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            NodeCondition {
                type_: kind.to_string(),
                status: status.to_string(),
                reason: Some(reason.to_string()),
                message: Some(message.to_string()),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(since),
            }
        };
        NodeStatus {
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(self.config.kubelet_port),
                }),
            }),
            capacity: Some(resources.clone()),
            allocatable: Some(resources),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".to_string(),
                    address: self.config.node_ip.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".to_string(),
                    address: self.config.name.clone(),
                },
            ]),
            node_info: Some(NodeSystemInfo {
                architecture: std::env::consts::ARCH.replace("x86_64", "amd64"),
                boot_id: f.boot_id.clone(),
                container_runtime_version: format!("skiff://{}", self.config.runtime_version),
                kernel_version: f.kernel_version.clone(),
                kube_proxy_version: String::new(),
                kubelet_version: format!("v1.32.0-skiff.{}", env!("CARGO_PKG_VERSION")),
                machine_id: f.machine_id.clone(),
                operating_system: "linux".to_string(),
                os_image: f.os_image.clone(),
                system_uuid: f.machine_id.clone(),
            }),
            conditions: Some(vec![
                condition(
                    "MemoryPressure",
                    memory_pressure,
                    (
                        "KubeletHasInsufficientMemory",
                        "kubelet has insufficient memory available",
                    ),
                    (
                        "KubeletHasSufficientMemory",
                        "kubelet has sufficient memory available",
                    ),
                ),
                condition(
                    "DiskPressure",
                    disk_pressure,
                    ("KubeletHasDiskPressure", "kubelet has disk pressure"),
                    ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                ),
                condition(
                    "PIDPressure",
                    pid_pressure,
                    (
                        "KubeletHasInsufficientPID",
                        "kubelet has insufficient PID available",
                    ),
                    (
                        "KubeletHasSufficientPID",
                        "kubelet has sufficient PID available",
                    ),
                ),
                condition(
                    "Ready",
                    true,
                    ("KubeletReady", "kubelet is posting ready status"),
                    ("KubeletNotReady", ""),
                ),
            ]),
            images: Some(images),
            ..NodeStatus::default()
        }
    }

    /// Keeps the status current: recomputed every ten seconds and when the pressure changes,
    /// patched when it differs from what was last written (heartbeat times aside) or when five
    /// minutes have passed.
    pub async fn run_status(&self, mut written: Node) {
        let api: Api<Node> = Api::all(self.client.clone());
        let mut last_write = Instant::now();
        let mut pressure = self.pressure.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(STATUS_CHECK) => {}
                changed = pressure.changed() => {
                    if changed.is_err() {
                        // The eviction manager is gone (the node stops): plain periodic checks.
                        tokio::time::sleep(STATUS_CHECK).await;
                    }
                }
            }
            let before = written.status.clone().unwrap_or_default();
            let now = self.status(Some(&before), self.node_images().await);
            let due = last_write.elapsed() >= STATUS_REPORT;
            if !due && without_heartbeats(&now) == without_heartbeats(&before) {
                continue;
            }
            match api
                .patch_status(
                    &self.config.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": now })),
                )
                .await
            {
                Ok(n) => {
                    written = n;
                    last_write = Instant::now();
                }
                Err(e) => tracing::warn!(node = %self.config.name, "status update failed: {e}"),
            }
        }
    }

    /// Renews the node's Lease every ten seconds, creating it when missing.
    pub async fn run_lease(&self, node_uid: String) {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let name = &self.config.name;
        loop {
            let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
            let body = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": name,
                    "namespace": "kube-node-lease",
                    "ownerReferences": [{
                        "apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid,
                    }],
                },
                "spec": {
                    "holderIdentity": name,
                    "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                    "renewTime": now,
                },
            });
            let renewed = match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    let lease: Lease = serde_json::from_value(body).expect("a Lease literal");
                    api.create(&PostParams::default(), &lease).await.map(|_| ())
                }
                other => other.map(|_| ()),
            };
            if let Err(e) = renewed {
                tracing::warn!(node = %name, "lease renewal failed: {e}");
            }
            tokio::time::sleep(LEASE_RENEW).await;
        }
    }
}

/// The status with heartbeat times cleared, to compare two statuses for a real change.
fn without_heartbeats(s: &NodeStatus) -> NodeStatus {
    let mut s = s.clone();
    for c in s.conditions.iter_mut().flatten() {
        c.last_heartbeat_time = None;
    }
    s.daemon_endpoints = None;
    s
}
