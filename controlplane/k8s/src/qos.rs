//! A pod's QoS class (Guaranteed, Burstable, BestEffort) and the resource sums its cgroup gets,
//! computed as the kubelet does: Guaranteed when every container limits cpu and memory and its
//! requests (defaulting to the limits) equal them; BestEffort when nothing is requested or
//! limited; Burstable otherwise.

use k8s_openapi::api::core::v1::{Container, PodSpec};

use crate::quantity;

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

/// A container's cpu (millicores) and memory (bytes) requests and limits; `None` when unset.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    pub cpu_request: Option<i128>,
    pub cpu_limit: Option<i128>,
    pub memory_request: Option<i128>,
    pub memory_limit: Option<i128>,
}

impl Resources {
    /// The container's resources; a request defaults to the limit, as the API server defaults it.
    pub fn of(c: &Container) -> Resources {
        let r = c.resources.as_ref();
        let get = |map: Option<&std::collections::BTreeMap<_, _>>, key: &str, milli: bool| {
            map.and_then(|m: &std::collections::BTreeMap<String, _>| m.get(key))
                .and_then(|q| {
                    if milli {
                        quantity::milli(q).ok()
                    } else {
                        quantity::units(q).ok()
                    }
                })
        };
        let limits = r.and_then(|r| r.limits.as_ref());
        let requests = r.and_then(|r| r.requests.as_ref());
        let cpu_limit = get(limits, "cpu", true);
        let memory_limit = get(limits, "memory", false);
        Resources {
            cpu_request: get(requests, "cpu", true).or(cpu_limit),
            cpu_limit,
            memory_request: get(requests, "memory", false).or(memory_limit),
            memory_limit,
        }
    }
}

/// The containers that count for the pod's class: init and app containers.
fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
}

pub fn qos_class(spec: &PodSpec) -> QosClass {
    let all: Vec<Resources> = all_containers(spec).map(Resources::of).collect();
    let nothing = all.iter().all(|r| {
        r.cpu_request.is_none()
            && r.cpu_limit.is_none()
            && r.memory_request.is_none()
            && r.memory_limit.is_none()
    });
    if nothing {
        return QosClass::BestEffort;
    }
    let guaranteed = all.iter().all(|r| {
        r.cpu_limit.is_some()
            && r.memory_limit.is_some()
            && r.cpu_request == r.cpu_limit
            && r.memory_request == r.memory_limit
    });
    if guaranteed {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// What the pod's cgroup gets: the app containers' summed requests and limits, raised to the
/// largest init container's (init containers run one at a time); a limit only when every
/// container has one.
pub fn pod_resources(spec: &PodSpec) -> Resources {
    let apps: Vec<Resources> = spec.containers.iter().map(Resources::of).collect();
    let inits: Vec<Resources> = spec
        .init_containers
        .iter()
        .flatten()
        .map(Resources::of)
        .collect();
    let sum = |f: fn(&Resources) -> Option<i128>, all_needed: bool| -> Option<i128> {
        let vals: Vec<Option<i128>> = apps.iter().map(f).collect();
        if all_needed && vals.iter().any(Option::is_none) {
            return None;
        }
        let total: i128 = vals.iter().flatten().sum();
        let init_max = inits.iter().map(f);
        if all_needed && inits.iter().map(f).any(|v| v.is_none()) {
            return None;
        }
        Some(init_max.flatten().fold(total, i128::max))
    };
    Resources {
        cpu_request: sum(|r| r.cpu_request, false).filter(|v| *v > 0),
        cpu_limit: sum(|r| r.cpu_limit, true),
        memory_request: sum(|r| r.memory_request, false).filter(|v| *v > 0),
        memory_limit: sum(|r| r.memory_limit, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(containers: serde_json::Value) -> PodSpec {
        serde_json::from_value(serde_json::json!({ "containers": containers })).unwrap()
    }

    #[test]
    fn classes_and_sums() {
        let be = spec(serde_json::json!([{"name": "a"}]));
        assert_eq!(qos_class(&be), QosClass::BestEffort);
        let g = spec(serde_json::json!([
            {"name": "a", "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}},
            {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "64Mi"},
                                        "requests": {"cpu": "1", "memory": "64Mi"}}}
        ]));
        assert_eq!(qos_class(&g), QosClass::Guaranteed);
        let r = pod_resources(&g);
        assert_eq!(r.cpu_limit, Some(1500));
        assert_eq!(r.memory_limit, Some(128 << 20));
        let b = spec(serde_json::json!([
            {"name": "a", "resources": {"requests": {"cpu": "100m"}}},
            {"name": "b", "resources": {"limits": {"memory": "64Mi"}}}
        ]));
        assert_eq!(qos_class(&b), QosClass::Burstable);
        let r = pod_resources(&b);
        assert_eq!(r.cpu_request, Some(100));
        assert_eq!(r.cpu_limit, None);
        assert_eq!(r.memory_limit, None);
    }
}
