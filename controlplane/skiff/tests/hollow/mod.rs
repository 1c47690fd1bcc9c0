//! Simulated nodes for scheduler and controller tests, as kubemark's hollow nodes: Node objects
//! with capacity and a Ready condition, a Lease renewed every few seconds, and a pod loop that
//! (unless the node is silenced) marks the pods bound to them Running (Ready unless labelled `hollow/ready=false`), gives them
//! an address from the node's range, and confirms deletions as a kubelet would. A pod labelled
//! `hollow/exit=CODE` runs to completion instead: Succeeded for 0, else Failed with its containers
//! terminated with that exit code (what Job tests need); the label may be added to a running pod.
//! Also the helpers cluster tests share: a server with three nodes, waiting for a condition.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::common::Server;

pub async fn client(s: &Server) -> Client {
    skiff_client::client(&s.kubeconfig())
        .await
        .expect("a client for the test server")
}

/// A server with its scheduler and controllers and three hollow nodes of 4 CPUs and 8 GiB.
pub async fn cluster() -> (Server, Client, Hollow) {
    cluster_with(&[]).await
}

/// [`cluster`] with extra flags for the server.
pub async fn cluster_with(extra: &[&str]) -> (Server, Client, Hollow) {
    let s = Server::start_cluster_with(extra);
    let client = client(&s).await;
    let h = Hollow::start(
        client.clone(),
        &[
            NodeSpec::new("node-a", "4", "8Gi"),
            NodeSpec::new("node-b", "4", "8Gi"),
            NodeSpec::new("node-c", "4", "8Gi"),
        ],
    )
    .await;
    (s, client, h)
}

/// A Deployment manifest: `replicas` pods labelled `app: NAME` running `image` with a named port
/// and small requests; `extra_spec` holds more lines of `spec` (two-space indented), e.g. a strategy.
pub fn deployment(name: &str, replicas: u32, image: &str, extra_spec: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
{extra_spec}  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
      - name: c
        image: {image}
        ports: [{{name: http, containerPort: 8080}}]
        resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}
"#
    )
}

/// The image of the pod's first container.
pub fn image(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

/// The pods in `default` that `selector` selects and that are not being deleted.
pub async fn active_pods(client: &Client, selector: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// Waits up to 60 s for `f` to hold, polling.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One simulated node.
#[derive(Clone)]
pub struct NodeSpec {
    pub name: String,
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Value>,
}

impl NodeSpec {
    pub fn new(name: &str, cpu: &str, memory: &str) -> Self {
        NodeSpec {
            name: name.into(),
            cpu: cpu.into(),
            memory: memory.into(),
            pods: 110,
            labels: BTreeMap::new(),
            taints: Vec::new(),
        }
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }

    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        self.taints
            .push(json!({"key": key, "value": value, "effect": effect}));
        self
    }
}

pub struct Hollow {
    client: Client,
    nodes: Arc<Mutex<Vec<String>>>,
    /// Nodes whose heartbeats (Lease and Ready condition) are stopped.
    silenced: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Hollow {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn node_status(n: &NodeSpec, index: usize) -> Value {
    let res = json!({"cpu": n.cpu, "memory": n.memory, "pods": n.pods.to_string()});
    json!({
        "capacity": res, "allocatable": res,
        "addresses": [{"type": "InternalIP", "address": format!("10.0.{}.{}", index / 250, index % 250 + 2)},
                      {"type": "Hostname", "address": n.name}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "hollow node is posting ready status",
            "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
        "nodeInfo": {"kubeletVersion": "v1.32.0", "architecture": "amd64", "operatingSystem": "linux",
            "containerRuntimeVersion": "hollow://1", "kernelVersion": "", "osImage": "hollow",
            "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
    })
}

/// Creates Node objects for `specs` (their status set through the status subresource).
pub async fn create_nodes(client: &Client, specs: &[NodeSpec], first_index: usize) {
    let api: Api<Node> = Api::all(client.clone());
    for (i, n) in specs.iter().enumerate() {
        let mut labels = n.labels.clone();
        labels.insert("kubernetes.io/hostname".into(), n.name.clone());
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": n.name, "labels": labels},
            "spec": {"taints": n.taints},
        }))
        .unwrap();
        api.create(&PostParams::default(), &node)
            .await
            .expect("creating a node");
        api.patch_status(
            &n.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": node_status(n, first_index + i)})),
        )
        .await
        .expect("node status");
    }
}

impl Hollow {
    /// Creates the nodes and starts their heartbeats and pod loop.
    pub async fn start(client: Client, specs: &[NodeSpec]) -> Hollow {
        create_nodes(&client, specs, 0).await;
        let nodes = Arc::new(Mutex::new(
            specs.iter().map(|n| n.name.clone()).collect::<Vec<_>>(),
        ));
        let silenced = Arc::new(Mutex::new(Vec::new()));
        let mut h = Hollow {
            client: client.clone(),
            nodes: nodes.clone(),
            silenced: silenced.clone(),
            tasks: Vec::new(),
        };
        h.tasks.push(tokio::spawn(heartbeats(
            client.clone(),
            nodes.clone(),
            silenced.clone(),
        )));
        h.tasks
            .push(tokio::spawn(pod_loop(client, nodes, silenced)));
        h
    }

    /// Adds a node to the running simulation.
    pub async fn add(&self, spec: NodeSpec) {
        let index = self.nodes.lock().unwrap().len();
        create_nodes(&self.client, std::slice::from_ref(&spec), index).await;
        self.nodes.lock().unwrap().push(spec.name);
    }

    /// Stops the heartbeats of `node`, as if it lost power.
    pub fn silence(&self, node: &str) {
        self.silenced.lock().unwrap().push(node.into());
    }

    /// Starts the heartbeats of `node` again.
    pub fn resume(&self, node: &str) {
        self.silenced.lock().unwrap().retain(|n| n != node);
    }
}

async fn heartbeats(
    client: Client,
    nodes: Arc<Mutex<Vec<String>>>,
    silenced: Arc<Mutex<Vec<String>>>,
) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let api: Api<Node> = Api::all(client);
    loop {
        let names = nodes.lock().unwrap().clone();
        for n in names {
            if silenced.lock().unwrap().contains(&n) {
                continue;
            }
            let t = k8s_openapi::jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string();
            let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": n, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": n, "leaseDurationSeconds": 40, "renewTime": t}});
            let _ = leases
                .patch(
                    &n,
                    &PatchParams::apply("hollow-node").force(),
                    &Patch::Apply(&lease),
                )
                .await;
            let cond = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "hollow node is posting ready status", "lastHeartbeatTime": now()}]}});
            let _ = api
                .patch_status(&n, &PatchParams::default(), &Patch::Strategic(&cond))
                .await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn pod_ip(node_index: usize, pod: &Pod) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let h = uid
        .bytes()
        .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
    format!("10.244.{}.{}", node_index, h % 250 + 2)
}

/// The pod's IPv6 address: hollow nodes are dual-stack, as a real node may be.
fn pod_ip6(node_index: usize, pod: &Pod) -> String {
    let v4: std::net::Ipv4Addr = pod_ip(node_index, pod).parse().expect("an IPv4 address");
    let [_, _, n, h] = v4.octets();
    format!("fd00:244:{n}::{h:x}")
}

async fn pod_loop(
    client: Client,
    nodes: Arc<Mutex<Vec<String>>>,
    silenced: Arc<Mutex<Vec<String>>>,
) {
    let all: Api<Pod> = Api::all(client.clone());
    let mut stream = std::pin::pin!(
        watcher(all, watcher::Config::default())
            .default_backoff()
            .applied_objects()
    );
    while let Ok(Some(pod)) = stream.try_next().await {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let Some(index) = nodes.lock().unwrap().iter().position(|n| *n == node) else {
            continue;
        };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        if pod.metadata.deletion_timestamp.is_some() {
            let _ = api
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await;
            continue;
        }
        // A silenced node writes no status (deletions are still confirmed, as above).
        if silenced.lock().unwrap().contains(&node) {
            continue;
        }
        // Pods labelled `hollow/exit=CODE` run to completion with that exit code.
        if let Some(code) = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("hollow/exit"))
            .and_then(|c| c.parse::<i32>().ok())
        {
            let phase = if code == 0 { "Succeeded" } else { "Failed" };
            if pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some(phase) {
                let t = now();
                let patch = json!({"status": {"phase": phase, "podIP": pod_ip(index, &pod), "startTime": t,
                    "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": t}],
                    "containerStatuses": pod.spec.iter().flat_map(|s| s.containers.iter()).map(|c| json!({
                        "name": c.name, "image": c.image, "imageID": "", "ready": false, "restartCount": 0,
                        "state": {"terminated": {"exitCode": code, "reason": if code == 0 {"Completed"} else {"Error"}, "startedAt": t, "finishedAt": t}}})).collect::<Vec<_>>()}});
                let _ = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
            }
            continue;
        }
        let want_ready = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("hollow/ready"))
            .map(String::as_str)
            != Some("false");
        let status = pod.status.clone().unwrap_or_default();
        let is_ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if status.phase.as_deref() == Some("Running") && is_ready == want_ready {
            continue;
        }
        let ready = if want_ready { "True" } else { "False" };
        let containers: Vec<Value> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| {
                json!({"name": c.name, "image": c.image, "imageID": "", "ready": want_ready,
                "restartCount": 0, "started": true, "state": {"running": {"startedAt": now()}}})
            })
            .collect();
        let t = now();
        let patch = json!({"status": {
            "phase": "Running", "hostIP": format!("10.0.0.{}", index + 2),
            "podIP": pod_ip(index, &pod), "podIPs": [{"ip": pod_ip(index, &pod)}, {"ip": pod_ip6(index, &pod)}], "startTime": t,
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": t},
                {"type": "Ready", "status": ready, "lastTransitionTime": t},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": t},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": t}],
            "containerStatuses": containers,
        }});
        let _ = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
    }
}
