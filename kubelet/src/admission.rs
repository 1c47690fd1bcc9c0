//! Pod admission: before a pod bound to this node runs, the kubelet checks it against the node
//! as the real kubelet's predicate admit handler does — room for it in allocatable (pods, cpu,
//! memory, ephemeral-storage, beside the requests of the pods already admitted), the node
//! selector and required node affinity, and the node's NoExecute taints (the kubelet ignores
//! NoSchedule taints: those are the scheduler's business, and a pod given a nodeName skips it).
//! A rejected pod never runs: it is Failed with the first failing check's reason.

use k8s_openapi::api::core::v1::{Node, Pod};
use skiff_k8s::resources::{Resources, pod_requests};

/// Why a pod was not admitted: the reason (`OutOfcpu`, `NodeAffinity`, …) and the message, as
/// the kubelet words them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    pub message: String,
}

impl Rejection {
    fn predicate(name: &str) -> Rejection {
        Rejection {
            reason: name.to_string(),
            message: format!("Predicate {name} failed"),
        }
    }

    fn insufficient(resource: &str, requested: i64, used: i64, capacity: i64) -> Rejection {
        Rejection {
            reason: format!("OutOf{resource}"),
            message: format!(
                "Node didn't have enough resource: {resource}, requested: {requested}, used: {used}, capacity: {capacity}"
            ),
        }
    }

    /// The pod's status message (`Pod was rejected: …`).
    pub fn status_message(&self) -> String {
        format!("Pod was rejected: {}", self.message)
    }
}

/// The eviction manager's admission, as the kubelet's: under DiskPressure no pod is admitted,
/// under MemoryPressure no BestEffort pod (static pods, being critical, always are).
pub fn under_pressure(pod: &Pod, memory: bool, disk: bool) -> Option<Rejection> {
    let best_effort = pod
        .spec
        .as_ref()
        .is_some_and(|s| skiff_k8s::qos::qos_class(s) == skiff_k8s::qos::QosClass::BestEffort);
    let mut conditions = Vec::new();
    if memory {
        conditions.push("MemoryPressure");
    }
    if disk {
        conditions.push("DiskPressure");
    }
    if crate::static_pods::is_static(pod) || conditions.is_empty() || (!disk && !best_effort) {
        return None;
    }
    Some(Rejection {
        reason: crate::eviction::EVICTED_REASON.to_string(),
        message: format!(
            "The node was low on resource: [{}]. ",
            conditions.join(", ")
        ),
    })
}

/// Whether `pod` may run on `node` beside the admitted, still active `others`.
pub fn admit(pod: &Pod, node: &Node, others: &[&Pod]) -> Result<(), Rejection> {
    fits(pod, node, others)?;
    let node_name = node.metadata.name.as_deref().unwrap_or_default();
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty() && n != node_name)
    {
        return Err(Rejection::predicate("NodeName"));
    }
    if !skiff_k8s::node_affinity::affinity_matches(pod, node) {
        return Err(Rejection::predicate("NodeAffinity"));
    }
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    if !crate::static_pods::is_static(pod)
        && skiff_k8s::taints::untolerated(node, tolerations, &["NoExecute"])
            .next()
            .is_some()
    {
        return Err(Rejection::predicate("TaintToleration"));
    }
    Ok(())
}

/// The resource check: the pod count first, then each resource the pod asks for.
fn fits(pod: &Pod, node: &Node, others: &[&Pod]) -> Result<(), Rejection> {
    let allocatable = Resources::allocatable(node);
    let mut used = Resources::default();
    for p in others {
        used.add(&pod_requests(p, false));
    }
    let used_pods = others.len() as i64;
    if used_pods + 1 > allocatable.pods {
        return Err(Rejection::insufficient(
            "pods",
            1,
            used_pods,
            allocatable.pods,
        ));
    }
    let want = pod_requests(pod, false);
    let checks = [
        ("cpu", want.milli_cpu, used.milli_cpu, allocatable.milli_cpu),
        ("memory", want.memory, used.memory, allocatable.memory),
        (
            "ephemeral-storage",
            want.ephemeral_storage,
            used.ephemeral_storage,
            allocatable.ephemeral_storage,
        ),
    ];
    for (name, requested, used, capacity) in checks {
        if requested > 0 && requested > capacity - used {
            return Err(Rejection::insufficient(name, requested, used, capacity));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"disk": "ssd"}},
            "spec": {"taints": taints},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "3", "ephemeral-storage": "10Gi"}}
        }))
        .unwrap()
    }

    fn pod(spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c", "resources": spec["resources"].take()}]);
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    fn reason(r: Result<(), Rejection>) -> String {
        r.err().map(|r| r.reason).unwrap_or_default()
    }

    #[test]
    fn resources_count_against_admitted_pods() {
        let n = node(json!([]));
        let small = pod(json!({"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}));
        assert_eq!(admit(&small, &n, &[&small]), Ok(()));
        let r = admit(&small, &n, &[&small, &small]).unwrap_err();
        assert_eq!(r.reason, "OutOfcpu");
        assert_eq!(
            r.message,
            "Node didn't have enough resource: cpu, requested: 1000, used: 2000, capacity: 2000"
        );
        let big = pod(json!({"resources": {"requests": {"memory": "5Gi"}}}));
        assert_eq!(reason(admit(&big, &n, &[])), "OutOfmemory");
        let none = pod(json!({}));
        assert_eq!(
            reason(admit(&none, &n, &[&none, &none, &none])),
            "OutOfpods"
        );
    }

    #[test]
    fn pressure_rejects_best_effort_or_everything() {
        let best_effort = pod(json!({}));
        let burstable = pod(json!({"resources": {"requests": {"memory": "1Mi"}}}));
        assert_eq!(under_pressure(&best_effort, false, false), None);
        assert_eq!(under_pressure(&burstable, true, false), None);
        let r = under_pressure(&best_effort, true, false).unwrap();
        assert_eq!(
            (r.reason.as_str(), r.message.as_str()),
            (
                "Evicted",
                "The node was low on resource: [MemoryPressure]. "
            )
        );
        let r = under_pressure(&burstable, true, true).unwrap();
        assert_eq!(
            r.message,
            "The node was low on resource: [MemoryPressure, DiskPressure]. "
        );
    }

    #[test]
    fn selectors_affinity_and_taints() {
        let n = node(json!([{"key": "k", "value": "v", "effect": "NoSchedule"}]));
        assert_eq!(
            admit(&pod(json!({"nodeSelector": {"disk": "ssd"}})), &n, &[]),
            Ok(())
        );
        assert_eq!(
            reason(admit(
                &pod(json!({"nodeSelector": {"disk": "hdd"}})),
                &n,
                &[]
            )),
            "NodeAffinity"
        );
        let affinity = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "DoesNotExist"}]}]}}});
        assert_eq!(
            reason(admit(&pod(json!({"affinity": affinity})), &n, &[])),
            "NodeAffinity"
        );
        let tainted = node(json!([{"key": "k", "value": "v", "effect": "NoExecute"}]));
        let r = admit(&pod(json!({})), &tainted, &[]).unwrap_err();
        assert_eq!(
            (r.reason.as_str(), r.message.as_str()),
            ("TaintToleration", "Predicate TaintToleration failed")
        );
        let tolerant = pod(json!({"tolerations": [{"key": "k", "operator": "Exists"}]}));
        assert_eq!(admit(&tolerant, &tainted, &[]), Ok(()));
    }
}
