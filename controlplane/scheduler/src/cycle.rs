//! One scheduling attempt: what it computes once before looking at nodes — the topology spread
//! and inter-pod affinity counts, and the pods nominated onto nodes by preemption that the
//! incoming pod must leave room for — and the node check (every filter) that reads it.
//! Preemption copies it to ask "would the pod fit without these pods?".

use std::collections::HashMap;

use super::cache::{Cache, Namespaces, NodeInfo, PodInfo};
use super::filters::{self, Reason};
use super::interpod::InterPod;
use super::spread::Spread;

#[derive(Clone)]
pub struct Cycle {
    spread: Spread,
    interpod: InterPod,
    /// Node → pods nominated there with at least the incoming pod's priority (kube-scheduler
    /// counts them as if bound, so that lower- or equal-priority pods do not take the room
    /// their preemption freed).
    nominated: HashMap<String, Vec<PodInfo>>,
}

impl Cycle {
    pub fn prepare(pod: &PodInfo, cache: &Cache) -> Cycle {
        let key = pod.key();
        let mut nominated: HashMap<String, Vec<PodInfo>> = HashMap::new();
        for (node, p) in cache.nominated_pods() {
            if p.priority >= pod.priority && p.key() != key {
                nominated
                    .entry(node.to_string())
                    .or_default()
                    .push(p.clone());
            }
        }
        Cycle {
            spread: Spread::prepare(pod, cache),
            interpod: InterPod::prepare(pod, cache),
            nominated,
        }
    }

    /// Runs every filter for `pod` on `node`, with the pods nominated there counted.
    pub fn check(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<Reason>> {
        // Most attempts have no nominated pods to count: skip the lookup.
        let extra = (!self.nominated.is_empty())
            .then(|| self.nominated.get(node.name()))
            .flatten();
        match extra {
            Some(extra) => {
                let mut with = node.clone();
                for p in extra {
                    with.add(p);
                }
                self.filter(pod, &with)
            }
            None => self.filter(pod, node),
        }
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), Vec<Reason>> {
        filters::run(pod, node)?;
        self.spread.filter(node)?;
        self.interpod.filter(node)
    }

    /// Counts (`delta` 1) or uncounts (−1) bound pod `p` on `node`.
    pub fn update(&mut self, p: &PodInfo, node: &NodeInfo, delta: i64, ns: &Namespaces) {
        self.spread.update(p, node, delta);
        self.interpod.update(p, node, delta, ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn pod(name: &str, priority: i32, cpu: &str) -> PodInfo {
        PodInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d"},
                "spec": {"priority": priority, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}}))
            .unwrap(),
        ))
    }

    #[test]
    fn room_freed_for_a_nominated_pod_is_kept_from_others() {
        let mut c = Cache::default();
        c.set_node(
            serde_json::from_value(json!({"metadata": {"name": "n"},
                "status": {"allocatable": {"cpu": "1", "pods": "10"}}}))
            .unwrap(),
        );
        c.nominate("n", pod("preemptor", 10, "600m"));
        let n = c.node("n").unwrap();
        let check = |p: &PodInfo| Cycle::prepare(p, &c).check(p, n);
        // Lower or equal priority: the nominated pod counts as if it ran there.
        assert!(check(&pod("equal", 10, "500m")).is_err());
        assert!(check(&pod("lower", 1, "500m")).is_err());
        // Higher priority may take the room; the nominated pod itself of course fits.
        assert!(check(&pod("higher", 11, "500m")).is_ok());
        assert!(check(&pod("preemptor", 10, "600m")).is_ok());
    }
}
