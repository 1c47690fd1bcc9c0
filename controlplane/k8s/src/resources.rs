//! Resource quantities as kube-scheduler and the kubelet count them: CPU in millicores, memory and
//! ephemeral storage in bytes, and what a pod requests (the larger of the sum of its containers
//! and its biggest init container, plus overhead), as kube-scheduler's `computePodResourceRequest`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// What kube-scheduler assumes a container without requests uses, for scoring only.
pub const DEFAULT_MILLI_CPU: i64 = 100;
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
}

impl Resources {
    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        self.pods += o.pods;
    }

    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        self.pods -= o.pods;
    }

    fn max(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
    }

    fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let mut r = Resources::default();
        if let Some(l) = list {
            r.milli_cpu = l.get("cpu").map(milli_value).unwrap_or(0);
            r.memory = l.get("memory").map(value).unwrap_or(0);
            r.ephemeral_storage = l.get("ephemeral-storage").map(value).unwrap_or(0);
            r.pods = l.get("pods").map(value).unwrap_or(0);
        }
        r
    }

    /// A node's allocatable resources (capacity when allocatable is absent).
    pub fn allocatable(node: &Node) -> Resources {
        let status = node.status.as_ref();
        Resources::from_list(
            status
                .and_then(|s| s.allocatable.as_ref())
                .or_else(|| status.and_then(|s| s.capacity.as_ref())),
        )
    }
}

fn container_requests(c: &Container) -> Resources {
    let res = c.resources.as_ref();
    // Requests default to limits when only limits are given (the API server's defaulting).
    let mut r = Resources::from_list(res.and_then(|r| r.limits.as_ref()));
    let req = Resources::from_list(res.and_then(|r| r.requests.as_ref()));
    let reqs = res.and_then(|r| r.requests.as_ref());
    if reqs.is_some_and(|m| m.contains_key("cpu")) {
        r.milli_cpu = req.milli_cpu;
    }
    if reqs.is_some_and(|m| m.contains_key("memory")) {
        r.memory = req.memory;
    }
    if reqs.is_some_and(|m| m.contains_key("ephemeral-storage")) {
        r.ephemeral_storage = req.ephemeral_storage;
    }
    r
}

/// The pod's effective request; `non_zero` substitutes the scoring defaults for containers that
/// request no CPU or memory.
pub fn pod_requests(pod: &Pod, non_zero: bool) -> Resources {
    let mut total = Resources::default();
    let Some(spec) = pod.spec.as_ref() else {
        return total;
    };
    for c in &spec.containers {
        let mut r = container_requests(c);
        if non_zero {
            if r.milli_cpu == 0 {
                r.milli_cpu = DEFAULT_MILLI_CPU;
            }
            if r.memory == 0 {
                r.memory = DEFAULT_MEMORY;
            }
        }
        total.add(&r);
    }
    for c in spec.init_containers.iter().flatten() {
        total.max(&container_requests(c));
    }
    total.add(&Resources::from_list(spec.overhead.as_ref()));
    total.pods = 1;
    total
}

/// The quantity rounded up to a whole number (bytes, pods).
pub fn value(q: &Quantity) -> i64 {
    crate::quantity::units(q).map_or(0, saturate)
}

/// The quantity in thousandths, rounded up (millicores).
pub fn milli_value(q: &Quantity) -> i64 {
    crate::quantity::milli(q).map_or(0, saturate)
}

/// An exact quantity clamped into the scheduler's i64 counters; a malformed one counts as 0.
fn saturate(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        let q = |s: &str| Quantity(s.into());
        assert_eq!(milli_value(&q("100m")), 100);
        assert_eq!(milli_value(&q("2")), 2000);
        assert_eq!(milli_value(&q("0.5")), 500);
        assert_eq!(value(&q("1Gi")), 1 << 30);
        assert_eq!(value(&q("128974848")), 128_974_848);
        assert_eq!(value(&q("129e6")), 129_000_000);
        assert_eq!(value(&q("123M")), 123_000_000);
        assert_eq!(value(&q("110")), 110);
    }

    #[test]
    fn pod_request_takes_the_larger_of_init_and_sum() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "1Gi"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "200m"}}},
                    {"name": "c"}
                ],
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1"}}}]
            }
        }))
        .unwrap();
        let r = pod_requests(&pod, false);
        assert_eq!((r.milli_cpu, r.memory, r.pods), (1000, 1 << 30, 1));
        let nz = pod_requests(&pod, true);
        assert_eq!(nz.milli_cpu, 1000);
        assert_eq!(nz.memory, (1 << 30) + 2 * DEFAULT_MEMORY);
    }
}
