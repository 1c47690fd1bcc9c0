//! Score plugins with kube-scheduler's default weights: NodeResourcesFit (LeastAllocated, 1),
//! NodeResourcesBalancedAllocation (1), NodeAffinity preferred terms (2), TaintToleration
//! PreferNoSchedule (3), InterPodAffinity (2), PodTopologySpread ScheduleAnyway constraints (2)
//! and spreading the pods of one owner across nodes (2). Each plugin scores 0–100 per node;
//! plugins with relative raw scores are normalised across the candidates.

use super::cache::{Cache, NodeInfo, PodInfo};
use super::{interpod, spread};
use skiff_k8s::node_affinity::term_matches;
use skiff_k8s::taints::untolerated;

const MAX: i64 = 100;

/// Total weighted scores of `nodes` for `pod`, in the same order.
pub fn score(pod: &PodInfo, cache: &Cache, nodes: &[&NodeInfo]) -> Vec<i64> {
    let mut total: Vec<i64> = nodes
        .iter()
        .map(|n| least_allocated(pod, n) + balanced(pod, n))
        .collect();
    let affinity = normalize(
        nodes.iter().map(|n| preferred_affinity(pod, n)).collect(),
        false,
    );
    let taints = normalize(
        nodes.iter().map(|n| prefer_no_schedule(pod, n)).collect(),
        true,
    );
    let owners = normalize(nodes.iter().map(|n| same_owner(pod, n)).collect(), true);
    for (i, t) in total.iter_mut().enumerate() {
        *t += 2 * affinity[i] + 3 * taints[i] + 2 * owners[i];
    }
    // The two below cost nothing unless the pod (or, for affinity, a bound pod) has terms.
    for plugin in [
        interpod::score(pod, cache, nodes),
        spread::score(pod, cache, nodes),
    ]
    .into_iter()
    .flatten()
    {
        for (t, s) in total.iter_mut().zip(plugin) {
            *t += 2 * s;
        }
    }
    total
}

/// Scales raw scores to 0–100 by the largest; `reverse` makes the smallest raw score best.
fn normalize(raw: Vec<i64>, reverse: bool) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    raw.into_iter()
        .map(|s| match (max, reverse) {
            (0, true) => MAX,
            (0, false) => 0,
            (m, false) => s * MAX / m,
            (m, true) => MAX - s * MAX / m,
        })
        .collect()
}

fn fractions(pod: &PodInfo, node: &NodeInfo) -> (f64, f64) {
    let frac = |req: i64, alloc: i64| {
        if alloc <= 0 {
            1.0
        } else {
            (req as f64 / alloc as f64).min(1.0)
        }
    };
    let used = &node.non_zero_requested;
    (
        frac(
            used.milli_cpu + pod.non_zero.milli_cpu,
            node.allocatable.milli_cpu,
        ),
        frac(used.memory + pod.non_zero.memory, node.allocatable.memory),
    )
}

/// LeastAllocated: the mean free share of CPU and memory after placing the pod.
fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let (cpu, mem) = fractions(pod, node);
    (((1.0 - cpu) + (1.0 - mem)) / 2.0 * MAX as f64) as i64
}

/// BalancedAllocation: high when CPU and memory are used in equal shares.
fn balanced(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let (cpu, mem) = fractions(pod, node);
    let std = (cpu - mem).abs() / 2.0;
    ((1.0 - std) * MAX as f64) as i64
}

/// The summed weights of the preferred node-affinity terms the node matches.
fn preferred_affinity(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let Some(n) = node.node.as_deref() else {
        return 0;
    };
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|t| term_matches(&t.preference, n))
        .map(|t| i64::from(t.weight))
        .sum()
}

/// How many PreferNoSchedule taints the pod does not tolerate.
fn prefer_no_schedule(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let Some(n) = node.node.as_deref() else {
        return 0;
    };
    let tolerations = pod
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    untolerated(n, tolerations, &["PreferNoSchedule"]).count() as i64
}

/// How many pods of the same controlling owner already run on the node.
fn same_owner(pod: &PodInfo, node: &NodeInfo) -> i64 {
    pod.owner
        .as_ref()
        .and_then(|o| node.owners.get(o))
        .map(|&n| i64::from(n))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cache;
    use serde_json::json;
    use std::sync::Arc;

    fn pod(name: &str, extra: serde_json::Value) -> PodInfo {
        let mut spec = json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}}}]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        PodInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u", "controller": true}]},
                "spec": spec})).unwrap(),
        ))
    }

    fn cache() -> Cache {
        let mut c = Cache::default();
        for (name, taint) in [("a", false), ("b", false), ("c", true)] {
            let mut n = json!({"metadata": {"name": name, "labels": {"disk": if name == "b" {"ssd"} else {"hdd"}}},
                "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}});
            if taint {
                n["spec"] =
                    json!({"taints": [{"key": "k", "value": "v", "effect": "PreferNoSchedule"}]});
            }
            c.set_node(serde_json::from_value(n).unwrap());
        }
        c
    }

    fn best(c: &Cache, p: &PodInfo) -> String {
        let names = c.node_names();
        let nodes: Vec<&NodeInfo> = names.iter().filter_map(|n| c.node(n)).collect();
        let s = score(p, c, &nodes);
        let i = (0..nodes.len())
            .max_by_key(|&i| (s[i], std::cmp::Reverse(i)))
            .unwrap();
        nodes[i].name().to_string()
    }

    #[test]
    fn spreads_owner_prefers_affinity_avoids_prefer_no_schedule() {
        let mut c = cache();
        c.assume("a", pod("p0", json!({})));
        // a holds one of the owner's pods, c has a PreferNoSchedule taint: b wins.
        assert_eq!(best(&c, &pod("p1", json!({}))), "b");
        let pref = json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution":
            [{"weight": 100, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["hdd"]}]}}]}}});
        c.assume("b", pod("p1", json!({})));
        c.assume("b", pod("p2", json!({})));
        // Preferred affinity (hdd: a or c) outweighs one extra pod on a and c's soft taint.
        assert_eq!(best(&c, &pod("p3", pref)), "a");
    }
}
