//! A pod's quality-of-service class (`status.qosClass`), as the API server records it at creation
//! and the kubelet places the pod's cgroup by it: BestEffort without any requests or limits,
//! Guaranteed when every container's CPU and memory limits equal its requests (requests default
//! to limits), Burstable otherwise.

use k8s_openapi::api::core::v1::PodSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// The QoS class of a pod with this spec (its containers and init containers).
pub fn qos_class(spec: &PodSpec) -> QosClass {
    let containers: Vec<_> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut all_guaranteed = !containers.is_empty();
    for c in &containers {
        let req = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let lim = c.resources.as_ref().and_then(|r| r.limits.as_ref());
        if req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        let guaranteed = ["cpu", "memory"].iter().all(|r| {
            let l = lim.and_then(|l| l.get(*r));
            let q = req.and_then(|q| q.get(*r)).or(l);
            l.is_some() && q == l
        });
        all_guaranteed &= guaranteed;
    }
    if !any {
        QosClass::BestEffort
    } else if all_guaranteed {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn class(spec: serde_json::Value) -> QosClass {
        qos_class(&serde_json::from_value(spec).unwrap())
    }

    #[test]
    fn classes() {
        assert_eq!(
            class(json!({"containers": [{"name": "c"}]})),
            QosClass::BestEffort
        );
        let limits = json!({"cpu": "1", "memory": "1Gi"});
        assert_eq!(
            class(json!({"containers": [{"name": "c", "resources": {"limits": limits}}]})),
            QosClass::Guaranteed
        );
        assert_eq!(
            class(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]})),
            QosClass::Burstable
        );
        assert_eq!(
            class(
                json!({"containers": [{"name": "c", "resources": {"limits": limits}}],
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1"}}}]})
            ),
            QosClass::Burstable
        );
    }
}
