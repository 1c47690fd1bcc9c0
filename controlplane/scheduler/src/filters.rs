//! Filter plugins, in kube-scheduler's order: NodeUnschedulable, NodeName, TaintToleration,
//! NodeAffinity (nodeSelector and required node affinity), NodePorts, NodeResourcesFit. A node
//! that fails one returns the reasons kube-scheduler prints in `FailedScheduling`.

use k8s_openapi::api::core::v1::{Taint, Toleration};
use skiff_k8s::node_affinity::affinity_matches;
use skiff_k8s::taints::{tolerates, untolerated};

use crate::cache::{NodeInfo, PodInfo};

/// Why a node cannot take the pod, worded as kube-scheduler words it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    Unschedulable,
    NodeName,
    UntoleratedTaint { key: String, value: String },
    Affinity,
    Ports,
    Insufficient(&'static str),
    TooManyPods,
    Spread,
    SpreadMissingLabel,
    PodAffinity,
    PodAntiAffinity,
    ExistingAntiAffinity,
}

impl Reason {
    /// Whether removing pods from the node cannot help (kube-scheduler's
    /// `UnschedulableAndUnresolvable`), so preemption leaves the node alone.
    pub fn unresolvable(&self) -> bool {
        matches!(
            self,
            Reason::Unschedulable
                | Reason::NodeName
                | Reason::UntoleratedTaint { .. }
                | Reason::Affinity
                | Reason::SpreadMissingLabel
                | Reason::PodAffinity
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Unschedulable => write!(f, "node(s) were unschedulable"),
            Reason::NodeName => write!(f, "node(s) didn't match the requested node name"),
            Reason::UntoleratedTaint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Reason::Affinity => write!(f, "node(s) didn't match Pod's node affinity/selector"),
            Reason::Ports => write!(
                f,
                "node(s) didn't have free ports for the requested pod ports"
            ),
            Reason::Insufficient(r) => write!(f, "Insufficient {r}"),
            Reason::TooManyPods => write!(f, "Too many pods"),
            Reason::Spread => write!(f, "node(s) didn't match pod topology spread constraints"),
            Reason::SpreadMissingLabel => write!(
                f,
                "node(s) didn't match pod topology spread constraints (missing required label)"
            ),
            Reason::PodAffinity => write!(f, "node(s) didn't match pod affinity rules"),
            Reason::PodAntiAffinity => write!(f, "node(s) didn't match pod anti-affinity rules"),
            Reason::ExistingAntiAffinity => {
                write!(
                    f,
                    "node(s) didn't satisfy existing pods anti-affinity rules"
                )
            }
        }
    }
}

/// Runs the filters in order, stopping at the first that fails.
pub fn run(pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<Reason>> {
    let Some(n) = node.node.as_deref() else {
        return Err(vec![Reason::NodeName]);
    };
    let spec = pod.pod.spec.as_ref();
    let tolerations: &[Toleration] = spec
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    if n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerations.iter().any(|t| tolerates(t, &taint)) {
            return Err(vec![Reason::Unschedulable]);
        }
    }
    if let Some(want) = spec.and_then(|s| s.node_name.as_deref())
        && !want.is_empty()
        && want != node.name()
    {
        return Err(vec![Reason::NodeName]);
    }
    if let Some(t) = untolerated(n, tolerations, &["NoSchedule", "NoExecute"]).next() {
        return Err(vec![Reason::UntoleratedTaint {
            key: t.key.clone(),
            value: t.value.clone().unwrap_or_default(),
        }]);
    }
    if !affinity_matches(&pod.pod, n) {
        return Err(vec![Reason::Affinity]);
    }
    if pod
        .host_ports
        .iter()
        .any(|p| node.host_ports.iter().any(|h| h.conflicts(p)))
    {
        return Err(vec![Reason::Ports]);
    }
    fits(pod, node)
}

/// NodeResourcesFit: the pod's requests against allocatable minus what bound pods request.
fn fits(pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<Reason>> {
    let (req, used, alloc) = (&pod.requests, &node.requested, &node.allocatable);
    let mut reasons = Vec::new();
    if used.pods + 1 > alloc.pods {
        reasons.push(Reason::TooManyPods);
    }
    if req.milli_cpu > 0 && req.milli_cpu > alloc.milli_cpu - used.milli_cpu {
        reasons.push(Reason::Insufficient("cpu"));
    }
    if req.memory > 0 && req.memory > alloc.memory - used.memory {
        reasons.push(Reason::Insufficient("memory"));
    }
    if req.ephemeral_storage > 0
        && req.ephemeral_storage > alloc.ephemeral_storage - used.ephemeral_storage
    {
        reasons.push(Reason::Insufficient("ephemeral-storage"));
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cache;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;
    use std::sync::Arc;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    fn pod(spec: serde_json::Value) -> PodInfo {
        PodInfo::new(Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": "p", "namespace": "d"}, "spec": spec}),
            )
            .unwrap(),
        ))
    }

    fn check(n: serde_json::Value, p: serde_json::Value) -> Result<(), Vec<Reason>> {
        let mut c = Cache::default();
        c.set_node(node(n));
        run(&pod(p), c.node("n").unwrap())
    }

    #[test]
    fn taints_and_tolerations() {
        let n = json!({"metadata": {"name": "n"}, "spec": {"taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"pods": "10"}}});
        let err = check(n.clone(), json!({"containers": [{"name": "c"}]})).unwrap_err();
        assert_eq!(
            err[0].to_string(),
            "node(s) had untolerated taint {gpu: yes}"
        );
        let ok = json!({"containers": [{"name": "c"}], "tolerations": [{"key": "gpu", "operator": "Equal", "value": "yes"}]});
        assert!(check(n.clone(), ok).is_ok());
        let any = json!({"containers": [{"name": "c"}], "tolerations": [{"operator": "Exists"}]});
        assert!(check(n, any).is_ok());
    }

    #[test]
    fn selectors_affinity_resources_ports() {
        let n = json!({"metadata": {"name": "n", "labels": {"zone": "a", "size": "4"}},
            "status": {"allocatable": {"pods": "10", "cpu": "1", "memory": "1Gi"}}});
        assert_eq!(
            check(
                n.clone(),
                json!({"containers": [{"name": "c"}], "nodeSelector": {"zone": "b"}})
            )
            .unwrap_err(),
            vec![Reason::Affinity]
        );
        let aff = json!({"containers": [{"name": "c"}], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [{"key": "size", "operator": "Gt", "values": ["3"]}]}]}}}});
        assert!(check(n.clone(), aff).is_ok());
        let big = json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "2", "memory": "2Gi"}}}]});
        let reasons: Vec<String> = check(n.clone(), big)
            .unwrap_err()
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(reasons, ["Insufficient cpu", "Insufficient memory"]);
        let name = json!({"containers": [{"name": "c"}], "nodeName": "other"});
        assert_eq!(check(n.clone(), name).unwrap_err(), vec![Reason::NodeName]);
        let unsched = json!({"metadata": {"name": "n"}, "spec": {"unschedulable": true}, "status": {"allocatable": {"pods": "1"}}});
        assert_eq!(
            check(unsched, json!({"containers": [{"name": "c"}]})).unwrap_err(),
            vec![Reason::Unschedulable]
        );
    }
}
