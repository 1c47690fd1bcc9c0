//! The node's record in the API: registration, the status (capacity, allocatable, addresses,
//! nodeInfo, pressure conditions, the images it holds) patched when the API's copy differs from it
//! and at least every five minutes, and
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
    /// and patched when it differs from the Node the API server holds (heartbeat times aside)
    /// or when five minutes have passed. Comparing with the API's copy, read each time, and not
    /// with what was last written, lets the kubelet's truth win over another writer's (the node
    /// lifecycle controller's `Ready=Unknown` once the node is reachable again).
    pub async fn run_status(&self) {
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
            let held = match api.get(&self.config.name).await {
                Ok(n) => n.status.unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(node = %self.config.name, "reading the node for its status: {e}");
                    continue;
                }
            };
            let now = self.status(Some(&held), self.node_images().await);
            let due = last_write.elapsed() >= STATUS_REPORT;
            if !due && !differs(&now, &held) {
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
                Ok(_) => last_write = Instant::now(),
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

/// Whether the API's copy `held` of the status lacks something of `now`: the fields the kubelet
/// sets and the conditions it reports, heartbeat times aside; fields and conditions that others
/// own are not compared.
fn differs(now: &NodeStatus, held: &NodeStatus) -> bool {
    let value = |s: &NodeStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = None;
        }
        s.daemon_endpoints = None;
        serde_json::to_value(s).expect("a node status serialises")
    };
    let (now, mut held) = (value(now), value(held));
    let kinds: Vec<&serde_json::Value> = now["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| &c["type"])
        .collect();
    if let Some(conditions) = held["conditions"].as_array_mut() {
        conditions.retain(|c| kinds.contains(&&c["type"]));
    }
    now.as_object()
        .into_iter()
        .flatten()
        .any(|(k, v)| held.get(k) != Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(kind: &str, status: &str) -> NodeCondition {
        NodeCondition {
            type_: kind.to_string(),
            status: status.to_string(),
            last_heartbeat_time: Some(Time(k8s_openapi::jiff::Timestamp::now())),
            ..NodeCondition::default()
        }
    }

    #[test]
    fn differs_from_what_another_writer_changed_only() {
        let now = NodeStatus {
            conditions: Some(vec![condition("Ready", "True")]),
            ..NodeStatus::default()
        };
        // Another writer's fields and conditions, and heartbeat times, do not count.
        let mut held = now.clone();
        held.phase = Some("Running".to_string());
        held.conditions = Some(vec![
            condition("NetworkUnavailable", "False"),
            NodeCondition {
                last_heartbeat_time: None,
                ..condition("Ready", "True")
            },
        ]);
        assert!(!differs(&now, &held));
        // The node lifecycle controller's Ready=Unknown does.
        held.conditions = Some(vec![condition("Ready", "Unknown")]);
        assert!(differs(&now, &held));
        held.conditions = None;
        assert!(differs(&now, &held));
    }
}
