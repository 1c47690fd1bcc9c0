//! PodTopologySpread, as kube-scheduler's plugin. A constraint counts the pods its selector
//! matches (in the pod's namespace, terminating ones aside) per topology domain, over the nodes
//! that carry every constraint's key and pass its node inclusion policies (`nodeAffinityPolicy`,
//! default Honor: the pod's node selector and required node affinity; `nodeTaintsPolicy`,
//! default Ignore: Honor leaves out nodes with taints the pod does not tolerate).
//!
//! `whenUnsatisfiable: DoNotSchedule` filters: counted once per attempt, a node passes when the
//! pod keeps its domain within `maxSkew` of the emptiest domain (taken as 0 while there are
//! fewer domains than `minDomains`) and fails for good when it lacks a key.
//! `ScheduleAnyway` scores: each feasible node gets the matching pods of its domains, weighted
//! by log(domains + 2), plus `maxSkew − 1`, inverted so that the emptiest domains score 100.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::core::{Selector, SelectorExt};

use super::cache::{Cache, NodeInfo, PodInfo};
use skiff_k8s::node_affinity::affinity_matches;
use skiff_k8s::taints::untolerated;

use super::filters::Reason;

#[derive(Clone)]
struct Constraint {
    key: String,
    max_skew: i64,
    min_domains: i64,
    /// `None` (a null, empty or unparsable selector) counts no pod, as in kube-scheduler.
    selector: Option<Selector>,
    honor_affinity: bool,
    honor_taints: bool,
}

impl Constraint {
    /// The pod's constraints with `whenUnsatisfiable == when`.
    fn of(pod: &Pod, when: &str) -> Vec<Constraint> {
        pod.spec
            .iter()
            .flat_map(|s| s.topology_spread_constraints.iter().flatten())
            .filter(|c| c.when_unsatisfiable == when)
            .map(|c| Constraint {
                key: c.topology_key.clone(),
                max_skew: i64::from(c.max_skew),
                min_domains: i64::from(c.min_domains.unwrap_or(1)),
                selector: c
                    .label_selector
                    .clone()
                    .and_then(|s| Selector::try_from(s).ok())
                    .filter(|s| !s.selects_all()),
                honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            })
            .collect()
    }

    /// Whether the node's pods count towards the constraint (its inclusion policies).
    fn includes(&self, pod: &Pod, node: &Node) -> bool {
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default();
        (!self.honor_affinity || affinity_matches(pod, node))
            && (!self.honor_taints
                || untolerated(node, tolerations, &["NoSchedule", "NoExecute"])
                    .next()
                    .is_none())
    }

    fn selects(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let empty = BTreeMap::new();
        self.selector
            .as_ref()
            .is_some_and(|s| s.matches(labels.unwrap_or(&empty)))
    }

    /// Whether bound pod `p` counts for a pod in namespace `ns`.
    fn counts(&self, ns: &str, p: &PodInfo) -> bool {
        !p.is_terminating() && p.namespace() == ns && self.selects(p.pod.metadata.labels.as_ref())
    }
}

/// Whether the node carries every constraint's topology key.
fn has_keys(node: &NodeInfo, constraints: &[Constraint]) -> bool {
    node.labels()
        .is_some_and(|l| constraints.iter().all(|c| l.contains_key(&c.key)))
}

/// The nodes that carry every constraint's topology key, with their Node and labels.
fn labelled_nodes<'a>(
    cache: &'a Cache,
    constraints: &'a [Constraint],
) -> impl Iterator<Item = (&'a NodeInfo, &'a Node, &'a BTreeMap<String, String>)> {
    cache.ordered().iter().filter_map(move |name| {
        let info = cache.node(name)?;
        let (node, labels) = (info.node.as_deref()?, info.labels()?);
        has_keys(info, constraints).then_some((info, node, labels))
    })
}

/// The DoNotSchedule constraints of one pod, counted once per scheduling attempt.
#[derive(Clone)]
pub struct Spread {
    pod: Arc<Pod>,
    constraints: Vec<Constraint>,
    /// Per constraint: matching pods per domain of the eligible nodes.
    counts: Vec<HashMap<String, i64>>,
    /// Per constraint: the emptiest domain's count.
    min: Vec<i64>,
}

impl Spread {
    pub fn prepare(pod: &PodInfo, cache: &Cache) -> Spread {
        let constraints = Constraint::of(&pod.pod, "DoNotSchedule");
        let mut counts = vec![HashMap::new(); constraints.len()];
        if !constraints.is_empty() {
            let ns = pod.namespace();
            for (info, node, labels) in labelled_nodes(cache, &constraints) {
                for (c, domains) in constraints.iter().zip(counts.iter_mut()) {
                    if c.includes(&pod.pod, node) {
                        let n = cache.pods_on(info).filter(|p| c.counts(ns, p)).count();
                        *domains.entry(labels[&c.key].clone()).or_insert(0) += n as i64;
                    }
                }
            }
        }
        let mut s = Spread {
            pod: pod.pod.clone(),
            min: vec![0; constraints.len()],
            constraints,
            counts,
        };
        s.refresh_min();
        s
    }

    fn refresh_min(&mut self) {
        for (m, c) in self.min.iter_mut().zip(&self.counts) {
            *m = c.values().copied().min().unwrap_or(0);
        }
    }

    /// Counts (`delta` 1) or uncounts (−1) bound pod `p` on `node`, as preemption removes and
    /// restores candidate victims.
    pub fn update(&mut self, p: &PodInfo, node: &NodeInfo, delta: i64) {
        let (Some(n), Some(labels)) = (node.node.as_deref(), node.labels()) else {
            return;
        };
        if self.constraints.is_empty() || !has_keys(node, &self.constraints) {
            return;
        }
        let ns = self.pod.metadata.namespace.as_deref().unwrap_or_default();
        for (c, domains) in self.constraints.iter().zip(self.counts.iter_mut()) {
            if c.includes(&self.pod, n)
                && c.counts(ns, p)
                && let Some(count) = domains.get_mut(&labels[&c.key])
            {
                *count += delta;
            }
        }
        self.refresh_min();
    }

    pub fn filter(&self, node: &NodeInfo) -> Result<(), Vec<Reason>> {
        let own = self.pod.metadata.labels.as_ref();
        for (i, c) in self.constraints.iter().enumerate() {
            let Some(domain) = node.labels().and_then(|l| l.get(&c.key)) else {
                return Err(vec![Reason::SpreadMissingLabel]);
            };
            let min = if (self.counts[i].len() as i64) < c.min_domains {
                0
            } else {
                self.min[i]
            };
            let count = self.counts[i].get(domain).copied().unwrap_or(0);
            if count + i64::from(c.selects(own)) - min > c.max_skew {
                return Err(vec![Reason::Spread]);
            }
        }
        Ok(())
    }
}

/// PodTopologySpread's score of each of `nodes` (0–100) from the pod's ScheduleAnyway
/// constraints, or `None` when it has none.
pub fn score(pod: &PodInfo, cache: &Cache, nodes: &[&NodeInfo]) -> Option<Vec<i64>> {
    let constraints = Constraint::of(&pod.pod, "ScheduleAnyway");
    if constraints.is_empty() {
        return None;
    }
    // Feasible nodes without every key are not scored; the others' domains are the ones counted.
    let scored: Vec<bool> = nodes.iter().map(|n| has_keys(n, &constraints)).collect();
    let mut counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); constraints.len()];
    for (n, _) in nodes.iter().zip(&scored).filter(|(_, s)| **s) {
        let labels = n.labels().expect("has_keys saw the labels");
        for (c, domains) in constraints.iter().zip(counts.iter_mut()) {
            domains.entry(labels[&c.key].clone()).or_insert(0);
        }
    }
    let weights: Vec<f64> = counts.iter().map(|c| ((c.len() + 2) as f64).ln()).collect();
    let ns = pod.namespace();
    for (info, node, labels) in labelled_nodes(cache, &constraints) {
        for (c, domains) in constraints.iter().zip(counts.iter_mut()) {
            if let Some(slot) = domains.get_mut(&labels[&c.key])
                && c.includes(&pod.pod, node)
            {
                *slot += cache.pods_on(info).filter(|p| c.counts(ns, p)).count() as i64;
            }
        }
    }
    let raw: Vec<Option<i64>> = nodes
        .iter()
        .zip(&scored)
        .map(|(n, &s)| {
            let labels = n.labels().filter(|_| s)?;
            let sum: f64 = constraints
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    counts[i][&labels[&c.key]] as f64 * weights[i] + (c.max_skew - 1) as f64
                })
                .sum();
            Some(sum.round() as i64)
        })
        .collect();
    let min = raw.iter().flatten().copied().min().unwrap_or(0);
    let max = raw.iter().flatten().copied().max().unwrap_or(0).max(0);
    Some(
        raw.into_iter()
            .map(|s| match s {
                None => 0,
                Some(_) if max == 0 => 100,
                Some(s) => 100 * (max + min - s) / max,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(name: &str, labels: Value, spec: Value) -> PodInfo {
        let mut s = json!({"containers": [{"name": "c"}]});
        if let (Some(o), Some(e)) = (s.as_object_mut(), spec.as_object()) {
            o.extend(e.clone());
        }
        PodInfo::new(Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "d", "labels": labels}, "spec": s}),
            )
            .unwrap(),
        ))
    }

    /// a, b in zone z1; c in z2 (tainted); x without a zone.
    fn cache() -> Cache {
        let mut c = Cache::default();
        for (n, zone, taint) in [
            ("a", "z1", false),
            ("b", "z1", false),
            ("c", "z2", true),
            ("x", "", false),
        ] {
            let mut labels = json!({"kubernetes.io/hostname": n});
            if !zone.is_empty() {
                labels["zone"] = json!(zone);
            }
            let mut node = json!({"metadata": {"name": n, "labels": labels}, "status": {"allocatable": {"pods": "10"}}});
            if taint {
                node["spec"] =
                    json!({"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]});
            }
            c.set_node(serde_json::from_value(node).unwrap());
        }
        c
    }

    fn constraint(when: &str, extra: Value) -> Value {
        let mut c = json!({"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": when,
            "labelSelector": {"matchLabels": {"app": "web"}}});
        if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        json!({"topologySpreadConstraints": [c]})
    }

    #[test]
    fn do_not_schedule_skew_policies_and_min_domains() {
        let mut c = cache();
        c.set_pod("a", pod("w0", json!({"app": "web"}), json!({})));
        let p = pod(
            "w1",
            json!({"app": "web"}),
            constraint("DoNotSchedule", json!({})),
        );
        let s = Spread::prepare(&p, &c);
        // z1 has 1, z2 0: one more in z1 would make the skew 2.
        assert_eq!(s.filter(c.node("a").unwrap()), Err(vec![Reason::Spread]));
        assert_eq!(s.filter(c.node("c").unwrap()), Ok(()));
        assert_eq!(
            s.filter(c.node("x").unwrap()),
            Err(vec![Reason::SpreadMissingLabel])
        );
        // Honouring taints leaves z2 (only on the tainted c) out: z1 is the only domain.
        let honor = pod(
            "w1",
            json!({"app": "web"}),
            constraint("DoNotSchedule", json!({"nodeTaintsPolicy": "Honor"})),
        );
        let s = Spread::prepare(&honor, &c);
        assert_eq!(s.filter(c.node("a").unwrap()), Ok(()));
        // ...unless two domains are required: the minimum is then taken as 0.
        let min = pod(
            "w1",
            json!({"app": "web"}),
            constraint(
                "DoNotSchedule",
                json!({"nodeTaintsPolicy": "Honor", "minDomains": 2}),
            ),
        );
        let mut s = Spread::prepare(&min, &c);
        assert_eq!(s.filter(c.node("a").unwrap()), Err(vec![Reason::Spread]));
        // Preemption's question: without w0, z1 is open again.
        let w0 = pod("w0", json!({"app": "web"}), json!({}));
        s.update(&w0, c.node("a").unwrap(), -1);
        assert_eq!(s.filter(c.node("a").unwrap()), Ok(()));
    }

    #[test]
    fn schedule_anyway_prefers_the_emptier_zone() {
        let mut c = cache();
        for (i, n) in ["a", "b"].iter().enumerate() {
            c.set_pod(n, pod(&format!("w{i}"), json!({"app": "web"}), json!({})));
        }
        let p = pod(
            "w2",
            json!({"app": "web"}),
            constraint("ScheduleAnyway", json!({})),
        );
        let nodes: Vec<&NodeInfo> = ["a", "b", "c", "x"]
            .iter()
            .map(|n| c.node(n).unwrap())
            .collect();
        // z1: 2 pods × ln(4) ≈ 2.77 → 3; z2: 0; x lacks the key and is not scored.
        assert_eq!(score(&p, &c, &nodes), Some(vec![0, 0, 100, 0]));
        let plain = pod("w3", json!({"app": "web"}), json!({}));
        assert_eq!(score(&plain, &c, &nodes), None);
    }
}
