//! PodTopologySpread with `whenUnsatisfiable: DoNotSchedule`: before filtering, count the pods
//! each constraint's selector matches (in the pod's namespace) per topology domain over the nodes
//! the pod could run on; a node passes when placing the pod there keeps the domain within
//! `maxSkew` of the emptiest domain, and fails when it lacks the topology label.

use std::collections::HashMap;

use kube::core::{Selector, SelectorExt};

use super::cache::{Cache, NodeInfo, PodInfo};
use super::filters::{Reason, affinity_matches};

struct Constraint {
    key: String,
    max_skew: i64,
    /// Whether the incoming pod itself matches the selector (it then adds one to its domain).
    self_match: i64,
    counts: HashMap<String, i64>,
    min: i64,
}

/// The constraints of one pod, counted once per scheduling attempt.
pub struct Spread(Vec<Constraint>);

impl Spread {
    pub fn prepare(pod: &PodInfo, cache: &Cache) -> Spread {
        let ns = pod.pod.metadata.namespace.clone().unwrap_or_default();
        let own_labels = pod.pod.metadata.labels.clone().unwrap_or_default();
        let mut out = Vec::new();
        let constraints = pod
            .pod
            .spec
            .iter()
            .flat_map(|s| s.topology_spread_constraints.iter().flatten())
            .filter(|c| c.when_unsatisfiable == "DoNotSchedule");
        for c in constraints {
            let selector = c
                .label_selector
                .clone()
                .and_then(|s| Selector::try_from(s).ok());
            let matches = |labels: &std::collections::BTreeMap<String, String>| {
                selector.as_ref().is_some_and(|s| s.matches(labels))
            };
            let mut counts: HashMap<String, i64> = HashMap::new();
            let mut node_domain: HashMap<&str, &str> = HashMap::new();
            for name in cache.ordered() {
                let Some(info) = cache.node(name) else {
                    continue;
                };
                let Some(node) = info.node.as_deref() else {
                    continue;
                };
                if !affinity_matches(&pod.pod, node) {
                    continue;
                }
                if let Some(v) = info.labels().and_then(|l| l.get(&c.topology_key)) {
                    counts.entry(v.clone()).or_insert(0);
                    node_domain.insert(name.as_str(), v.as_str());
                }
            }
            for (node, p) in cache.bound_pods() {
                let Some(domain) = node_domain.get(node) else {
                    continue;
                };
                let labels = p.pod.metadata.labels.clone().unwrap_or_default();
                if p.pod.metadata.namespace.as_deref() == Some(ns.as_str()) && matches(&labels) {
                    *counts.entry((*domain).to_string()).or_default() += 1;
                }
            }
            let min = counts.values().copied().min().unwrap_or(0);
            out.push(Constraint {
                key: c.topology_key.clone(),
                max_skew: i64::from(c.max_skew),
                self_match: i64::from(matches(&own_labels)),
                counts,
                min,
            });
        }
        Spread(out)
    }

    pub fn filter(&self, node: &NodeInfo) -> Result<(), Vec<Reason>> {
        for c in &self.0 {
            let Some(domain) = node.labels().and_then(|l| l.get(&c.key)) else {
                return Err(vec![Reason::SpreadMissingLabel]);
            };
            let count = c.counts.get(domain).copied().unwrap_or(0);
            if count + c.self_match - c.min > c.max_skew {
                return Err(vec![Reason::Spread]);
            }
        }
        Ok(())
    }
}
