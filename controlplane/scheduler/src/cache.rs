//! The scheduler's view of the cluster: every node with what its bound pods request, the host
//! ports they hold and how many pods of each owner it runs. Pods the scheduler has just bound are
//! "assumed" onto their node at once, so the next decision sees them before the watch confirms.
//! It also keeps the index of bound pods with inter-pod (anti-)affinity, the namespaces' labels
//! (for affinity terms' namespace selectors) and the pods nominated onto a node by preemption.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use super::interpod::Terms;
use skiff_k8s::resources::{Resources, pod_requests};

/// A host port a container binds: protocol, address, port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    /// Whether two host ports collide (same protocol and port, overlapping addresses).
    pub fn conflicts(&self, o: &HostPort) -> bool {
        let wild = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        self.port == o.port
            && self.protocol == o.protocol
            && (self.ip == o.ip || wild(&self.ip) || wild(&o.ip))
    }
}

/// What the scheduler needs to know about one pod.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub pod: Arc<Pod>,
    pub requests: Resources,
    /// Requests with kube-scheduler's defaults for containers that ask for nothing (scoring).
    pub non_zero: Resources,
    pub host_ports: Vec<HostPort>,
    /// The uid of the controlling owner, whose pods are spread apart.
    pub owner: Option<String>,
    /// `spec.priority`, which the API server resolves from the PriorityClass.
    pub priority: i32,
    /// Its inter-pod affinity and anti-affinity terms, when it has any.
    pub affinity: Option<Arc<Terms>>,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>) -> Self {
        let host_ports = pod
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.host_port.unwrap_or(0) > 0)
            .map(|p| HostPort {
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ip: p.host_ip.clone().unwrap_or_default(),
                port: p.host_port.unwrap_or(0),
            })
            .collect();
        let owner = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        PodInfo {
            requests: pod_requests(&pod, false),
            non_zero: pod_requests(&pod, true),
            host_ports,
            owner,
            priority: pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
            affinity: Terms::of(&pod).map(Arc::new),
            pod,
        }
    }

    pub fn key(&self) -> String {
        pod_key(&self.pod)
    }

    pub fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or_default()
    }

    pub fn is_terminating(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }
}

pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// One node and the aggregate of the pods bound to it.
#[derive(Debug, Default, Clone)]
pub struct NodeInfo {
    pub node: Option<Arc<Node>>,
    pub allocatable: Resources,
    pub requested: Resources,
    pub non_zero_requested: Resources,
    pub host_ports: Vec<HostPort>,
    pub owners: HashMap<String, u32>,
    pods: HashSet<String>,
}

impl NodeInfo {
    /// Counts `p` on this node (the cache's own nodes change only through [`Cache`]; copies are
    /// changed freely to ask "what if").
    pub fn add(&mut self, p: &PodInfo) {
        if !self.pods.insert(p.key()) {
            return;
        }
        self.requested.add(&p.requests);
        self.non_zero_requested.add(&p.non_zero);
        self.host_ports.extend(p.host_ports.iter().cloned());
        if let Some(o) = &p.owner {
            *self.owners.entry(o.clone()).or_default() += 1;
        }
    }

    pub fn remove(&mut self, p: &PodInfo) {
        if !self.pods.remove(&p.key()) {
            return;
        }
        self.requested.sub(&p.requests);
        self.non_zero_requested.sub(&p.non_zero);
        for hp in &p.host_ports {
            if let Some(i) = self.host_ports.iter().position(|h| h == hp) {
                self.host_ports.swap_remove(i);
            }
        }
        if let Some(o) = &p.owner
            && let Some(n) = self.owners.get_mut(o)
        {
            *n -= 1;
            if *n == 0 {
                self.owners.remove(o);
            }
        }
    }

    pub fn name(&self) -> &str {
        self.node
            .as_ref()
            .and_then(|n| n.metadata.name.as_deref())
            .unwrap_or_default()
    }

    pub fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.node.as_ref().and_then(|n| n.metadata.labels.as_ref())
    }
}

/// Namespace name → its labels.
pub type Namespaces = HashMap<String, BTreeMap<String, String>>;

#[derive(Default)]
pub struct Cache {
    nodes: HashMap<String, NodeInfo>,
    /// Node names in a stable order, for sampling from a rotating start.
    order: Vec<String>,
    /// Pods bound (or assumed) to a node, by `namespace/name`.
    pods: HashMap<String, (String, PodInfo)>,
    assumed: HashSet<String>,
    /// Keys of the bound pods that have inter-pod affinity terms, so that pods without any pay
    /// nothing for the symmetric checks against them.
    with_affinity: HashSet<String>,
    pub namespaces: Namespaces,
    /// Pending pods nominated onto a node by preemption: key → (node, pod).
    nominated: HashMap<String, (String, PodInfo)>,
}

impl Cache {
    pub fn set_node(&mut self, node: Node) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        let info = self.nodes.entry(name.clone()).or_default();
        let fresh = info.node.is_none();
        info.allocatable = Resources::allocatable(&node);
        info.node = Some(Arc::new(node));
        if fresh {
            self.order.push(name);
            self.order.sort();
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(info) = self.nodes.get_mut(name) {
            info.node = None;
            if info.pods.is_empty() {
                self.nodes.remove(name);
            }
        }
        self.order.retain(|n| n != name);
    }

    pub fn node_names(&self) -> Vec<String> {
        self.order.clone()
    }

    /// The nodes in their stable order.
    pub fn ordered(&self) -> &[String] {
        &self.order
    }

    /// Adds or updates a pod that is bound to a node; confirms an assumption and ends a
    /// nomination.
    pub fn set_pod(&mut self, node: &str, info: PodInfo) {
        let key = info.key();
        self.assumed.remove(&key);
        self.nominated.remove(&key);
        self.remove_pod(&key);
        self.nodes.entry(node.to_string()).or_default().add(&info);
        if info.affinity.is_some() {
            self.with_affinity.insert(key.clone());
        }
        self.pods.insert(key, (node.to_string(), info));
    }

    pub fn remove_pod(&mut self, key: &str) {
        self.with_affinity.remove(key);
        if let Some((node, info)) = self.pods.remove(key)
            && let Some(n) = self.nodes.get_mut(&node)
        {
            n.remove(&info);
            if n.node.is_none() && n.pods.is_empty() {
                self.nodes.remove(&node);
            }
        }
    }

    /// Counts `info` on `node` before the API server has confirmed the binding.
    pub fn assume(&mut self, node: &str, info: PodInfo) {
        let key = info.key();
        self.set_pod(node, info);
        self.assumed.insert(key);
    }

    /// Drops an assumption whose binding failed.
    pub fn forget(&mut self, key: &str) {
        if self.assumed.remove(key) {
            self.remove_pod(key);
        }
    }

    pub fn is_assumed(&self, key: &str) -> bool {
        self.assumed.contains(key)
    }

    /// Keys of the bound pods, for pruning after a relist.
    pub fn pod_keys(&self) -> Vec<String> {
        self.pods.keys().cloned().collect()
    }

    /// Every bound (or assumed) pod with its node.
    pub fn bound_pods(&self) -> impl Iterator<Item = (&str, &PodInfo)> {
        self.pods.values().map(|(n, p)| (n.as_str(), p))
    }

    /// The bound pods that have inter-pod affinity terms, with their node.
    pub fn pods_with_affinity(&self) -> impl Iterator<Item = (&str, &PodInfo)> {
        self.with_affinity
            .iter()
            .filter_map(|k| self.pods.get(k))
            .map(|(n, p)| (n.as_str(), p))
    }

    /// The pods bound (or assumed) to `node`.
    pub fn pods_on<'a>(&'a self, node: &'a NodeInfo) -> impl Iterator<Item = &'a PodInfo> + 'a {
        node.pods
            .iter()
            .filter_map(|k| self.pods.get(k))
            .map(|(_, p)| p)
    }

    /// Records that `info` waits for room that preemption is making on `node`.
    pub fn nominate(&mut self, node: &str, info: PodInfo) {
        self.nominated.insert(info.key(), (node.to_string(), info));
    }

    pub fn forget_nomination(&mut self, key: &str) {
        self.nominated.remove(key);
    }

    /// The node `key` is nominated onto, if any.
    pub fn nominated_node(&self, key: &str) -> Option<&str> {
        self.nominated.get(key).map(|(n, _)| n.as_str())
    }

    /// The copy of a nominated pod the nomination was recorded with.
    pub fn nominated_pod(&self, key: &str) -> Option<&PodInfo> {
        self.nominated.get(key).map(|(_, p)| p)
    }

    /// Every nominated pod with its node.
    pub fn nominated_pods(&self) -> impl Iterator<Item = (&str, &PodInfo)> {
        self.nominated.values().map(|(n, p)| (n.as_str(), p))
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name).filter(|n| n.node.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, cpu: &str, host_port: Option<i32>) -> Arc<Pod> {
        let mut c = serde_json::json!({"name": "c", "resources": {"requests": {"cpu": cpu}}});
        if let Some(p) = host_port {
            c["ports"] = serde_json::json!([{"containerPort": 80, "hostPort": p}]);
        }
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "d",
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u1", "controller": true}]},
                "spec": {"containers": [c]}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn assume_confirm_forget() {
        let mut c = Cache::default();
        c.set_node(serde_json::from_value(serde_json::json!({"metadata": {"name": "n1"}, "status": {"allocatable": {"cpu": "2", "pods": "10"}}})).unwrap());
        c.assume("n1", PodInfo::new(pod("a", "500m", Some(8080))));
        c.assume("n1", PodInfo::new(pod("b", "250m", None)));
        let n = c.node("n1").unwrap();
        assert_eq!((n.requested.milli_cpu, n.requested.pods), (750, 2));
        assert_eq!(n.owners.get("u1"), Some(&2));
        assert_eq!(n.host_ports.len(), 1);
        // The watch confirms a; b's binding failed.
        c.set_pod("n1", PodInfo::new(pod("a", "500m", Some(8080))));
        c.forget("d/b");
        c.forget("d/a");
        let n = c.node("n1").unwrap();
        assert_eq!((n.requested.milli_cpu, n.requested.pods), (500, 1));
        c.remove_pod("d/a");
        let n = c.node("n1").unwrap();
        assert_eq!(
            (n.requested.milli_cpu, n.host_ports.len(), n.owners.len()),
            (0, 0, 0)
        );
    }
}
