//! InterPodAffinity, as kube-scheduler's plugin. Filter: the incoming pod's required pod affinity
//! (every term needs a matching pod in the node's domain, except for the first pod of a group
//! that matches its own terms), its required anti-affinity (no matching pod in the domain), and
//! symmetry: a bound pod's required anti-affinity that selects the incoming pod keeps it out of
//! that pod's domain. Score: the weighted preferred terms of both sides (and, with weight 1, bound
//! pods' required affinity that selects the incoming pod), summed per domain and scaled 0–100.
//!
//! Each attempt counts matching pods per topology domain once (`key → value → count`), so that
//! checking a node is a few lookups. A pod without terms only walks the cache's index of bound
//! pods that have some.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm, WeightedPodAffinityTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};

use super::cache::{Cache, Namespaces, NodeInfo, PodInfo};
use super::filters::Reason;

/// kube-scheduler's `hardPodAffinityWeight`: the score a bound pod's required affinity term
/// gives its domain when it selects the incoming pod.
const HARD_AFFINITY_WEIGHT: i64 = 1;

/// Matching pods (or score) per topology key and value.
type Counts = HashMap<String, HashMap<String, i64>>;

/// Adds `delta` to a domain, dropping domains that fall to zero.
fn bump(counts: &mut Counts, key: &str, value: &str, delta: i64) {
    let values = counts.entry(key.to_string()).or_default();
    let n = values.entry(value.to_string()).or_default();
    *n += delta;
    if *n == 0 {
        values.remove(value);
        if values.is_empty() {
            counts.remove(key);
        }
    }
}

fn count(counts: &Counts, key: &str, value: &str) -> i64 {
    counts
        .get(key)
        .and_then(|v| v.get(value))
        .copied()
        .unwrap_or(0)
}

/// One pod affinity term with its namespaces resolved as kube-scheduler resolves them.
#[derive(Debug)]
pub struct Term {
    /// `None` (a null or unparsable selector) selects no pod.
    selector: Option<Selector>,
    /// The listed namespaces, or the owner's own when neither they nor a selector are given.
    namespaces: Vec<String>,
    /// `None` (null) selects no namespace; an empty selector selects them all.
    namespace_selector: Option<Selector>,
    topology_key: String,
}

impl Term {
    fn new(owner_namespace: &str, t: &PodAffinityTerm) -> Term {
        let parse = |s: &Option<LabelSelector>| s.clone().and_then(|s| Selector::try_from(s).ok());
        let mut namespaces = t.namespaces.clone().unwrap_or_default();
        if namespaces.is_empty() && t.namespace_selector.is_none() {
            namespaces.push(owner_namespace.to_string());
        }
        Term {
            selector: parse(&t.label_selector),
            namespaces,
            namespace_selector: parse(&t.namespace_selector),
            topology_key: t.topology_key.clone(),
        }
    }

    /// Whether the term selects `pod`.
    fn matches(&self, pod: &Pod, namespaces: &Namespaces) -> bool {
        let empty = BTreeMap::new();
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let in_namespace = self.namespaces.iter().any(|n| n == ns)
            || self
                .namespace_selector
                .as_ref()
                .is_some_and(|s| s.matches(namespaces.get(ns).unwrap_or(&empty)));
        in_namespace
            && self
                .selector
                .as_ref()
                .is_some_and(|s| s.matches(pod.metadata.labels.as_ref().unwrap_or(&empty)))
    }

    /// The value of the term's topology key on `node`.
    fn domain<'a>(&self, node: &'a NodeInfo) -> Option<&'a String> {
        node.labels().and_then(|l| l.get(&self.topology_key))
    }
}

/// A pod's inter-pod affinity and anti-affinity terms.
#[derive(Debug, Default)]
pub struct Terms {
    required_affinity: Vec<Term>,
    required_anti: Vec<Term>,
    preferred_affinity: Vec<(i64, Term)>,
    preferred_anti: Vec<(i64, Term)>,
}

impl Terms {
    /// The pod's terms, or `None` when it has none.
    pub fn of(pod: &Pod) -> Option<Terms> {
        let a = pod.spec.as_ref()?.affinity.as_ref()?;
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let required = |ts: Option<&Vec<PodAffinityTerm>>| -> Vec<Term> {
            ts.into_iter().flatten().map(|t| Term::new(ns, t)).collect()
        };
        let preferred = |ts: Option<&Vec<WeightedPodAffinityTerm>>| -> Vec<(i64, Term)> {
            ts.into_iter()
                .flatten()
                .map(|w| (i64::from(w.weight), Term::new(ns, &w.pod_affinity_term)))
                .collect()
        };
        let (aff, anti) = (a.pod_affinity.as_ref(), a.pod_anti_affinity.as_ref());
        let terms = Terms {
            required_affinity: required(aff.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            required_anti: required(anti.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_affinity: preferred(aff.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_anti: preferred(anti.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
        };
        let any = !(terms.required_affinity.is_empty()
            && terms.required_anti.is_empty()
            && terms.preferred_affinity.is_empty()
            && terms.preferred_anti.is_empty());
        any.then_some(terms)
    }

    fn has_required(&self) -> bool {
        !self.required_affinity.is_empty() || !self.required_anti.is_empty()
    }

    fn has_preferred(&self) -> bool {
        !self.preferred_affinity.is_empty() || !self.preferred_anti.is_empty()
    }

    /// Whether `pod` matches every required affinity term (and there is at least one).
    fn affinity_selects(&self, pod: &Pod, namespaces: &Namespaces) -> bool {
        !self.required_affinity.is_empty()
            && self
                .required_affinity
                .iter()
                .all(|t| t.matches(pod, namespaces))
    }
}

/// The filter's counts for one incoming pod.
#[derive(Clone)]
pub struct InterPod {
    pod: Arc<Pod>,
    terms: Option<Arc<Terms>>,
    /// Whether the incoming pod matches its own required affinity terms.
    selects_itself: bool,
    /// Domains of bound pods whose required anti-affinity selects the incoming pod.
    existing_anti: Counts,
    /// Domains of bound pods that match all the incoming pod's required affinity terms.
    affinity: Counts,
    /// Domains of bound pods that match one of its required anti-affinity terms.
    anti: Counts,
}

impl InterPod {
    pub fn prepare(pod: &PodInfo, cache: &Cache) -> InterPod {
        let ns = &cache.namespaces;
        let mut s = InterPod {
            pod: pod.pod.clone(),
            terms: pod.affinity.clone(),
            selects_itself: pod
                .affinity
                .as_ref()
                .is_some_and(|t| t.affinity_selects(&pod.pod, ns)),
            existing_anti: Counts::new(),
            affinity: Counts::new(),
            anti: Counts::new(),
        };
        for (node, p) in cache.pods_with_affinity() {
            if let Some(n) = cache.node(node) {
                s.count_existing(p, n, 1, ns);
            }
        }
        if s.terms.as_ref().is_some_and(|t| t.has_required()) {
            for (node, p) in cache.bound_pods() {
                if let Some(n) = cache.node(node) {
                    s.count_incoming(p, n, 1, ns);
                }
            }
        }
        s
    }

    /// Counts (`delta` 1) or uncounts (−1) bound pod `p` on `node`, as preemption removes and
    /// restores candidate victims.
    pub fn update(&mut self, p: &PodInfo, node: &NodeInfo, delta: i64, ns: &Namespaces) {
        self.count_existing(p, node, delta, ns);
        if self.terms.as_ref().is_some_and(|t| t.has_required()) {
            self.count_incoming(p, node, delta, ns);
        }
    }

    /// The bound pod's required anti-affinity against the incoming pod.
    fn count_existing(&mut self, p: &PodInfo, node: &NodeInfo, delta: i64, ns: &Namespaces) {
        let Some(terms) = p.affinity.as_ref() else {
            return;
        };
        for t in &terms.required_anti {
            if let Some(v) = t.domain(node)
                && t.matches(&self.pod, ns)
            {
                bump(&mut self.existing_anti, &t.topology_key, v, delta);
            }
        }
    }

    /// The incoming pod's required terms against the bound pod.
    fn count_incoming(&mut self, p: &PodInfo, node: &NodeInfo, delta: i64, ns: &Namespaces) {
        let Some(terms) = self.terms.clone() else {
            return;
        };
        if terms.affinity_selects(&p.pod, ns) {
            for t in &terms.required_affinity {
                if let Some(v) = t.domain(node) {
                    bump(&mut self.affinity, &t.topology_key, v, delta);
                }
            }
        }
        for t in &terms.required_anti {
            if let Some(v) = t.domain(node)
                && t.matches(&p.pod, ns)
            {
                bump(&mut self.anti, &t.topology_key, v, delta);
            }
        }
    }

    pub fn filter(&self, node: &NodeInfo) -> Result<(), Vec<Reason>> {
        if let Some(terms) = &self.terms {
            if !terms.required_affinity.is_empty() {
                let mut pods_exist = true;
                for t in &terms.required_affinity {
                    let Some(v) = t.domain(node) else {
                        return Err(vec![Reason::PodAffinity]);
                    };
                    if count(&self.affinity, &t.topology_key, v) <= 0 {
                        pods_exist = false;
                    }
                }
                // The first pod of a group whose affinity selects itself may go wherever the
                // topology keys exist, as long as no pod anywhere matches yet.
                let first_of_group = self.affinity.is_empty() && self.selects_itself;
                if !(pods_exist || first_of_group) {
                    return Err(vec![Reason::PodAffinity]);
                }
            }
            for t in &terms.required_anti {
                if t.domain(node)
                    .is_some_and(|v| count(&self.anti, &t.topology_key, v) > 0)
                {
                    return Err(vec![Reason::PodAntiAffinity]);
                }
            }
        }
        // Node labels are read only when there is something to check: pods without terms then
        // never touch the node object (a cache miss per node on big clusters).
        let forbidden = self.existing_anti.iter().any(|(key, values)| {
            node.labels()
                .and_then(|l| l.get(key))
                .and_then(|v| values.get(v))
                .is_some_and(|&n| n > 0)
        });
        if forbidden {
            return Err(vec![Reason::ExistingAntiAffinity]);
        }
        Ok(())
    }
}

/// InterPodAffinity's score of each of `nodes` (0–100), or `None` when no term can matter.
pub fn score(pod: &PodInfo, cache: &Cache, nodes: &[&NodeInfo]) -> Option<Vec<i64>> {
    let ns = &cache.namespaces;
    let own = pod.affinity.as_deref();
    let preferred = own.is_some_and(Terms::has_preferred);
    // Unless the incoming pod has preferred terms, only bound pods with terms can add anything.
    let pods: Box<dyn Iterator<Item = (&str, &PodInfo)> + '_> = if preferred {
        Box::new(cache.bound_pods())
    } else {
        Box::new(cache.pods_with_affinity())
    };
    let mut domains = Counts::new();
    for (node, p) in pods {
        let Some(n) = cache.node(node) else {
            continue;
        };
        let mut add = |t: &Term, weight: i64, target: &Pod| {
            if let Some(v) = t.domain(n)
                && t.matches(target, ns)
            {
                bump(&mut domains, &t.topology_key, v, weight);
            }
        };
        if let Some(t) = own {
            for (w, term) in &t.preferred_affinity {
                add(term, *w, &p.pod);
            }
            for (w, term) in &t.preferred_anti {
                add(term, -w, &p.pod);
            }
        }
        if let Some(t) = p.affinity.as_deref() {
            for term in &t.required_affinity {
                add(term, HARD_AFFINITY_WEIGHT, &pod.pod);
            }
            for (w, term) in &t.preferred_affinity {
                add(term, *w, &pod.pod);
            }
            for (w, term) in &t.preferred_anti {
                add(term, -w, &pod.pod);
            }
        }
    }
    if domains.is_empty() {
        return None;
    }
    let raw: Vec<i64> = nodes
        .iter()
        .map(|n| {
            domains
                .iter()
                .filter_map(|(key, values)| {
                    n.labels()
                        .and_then(|l| l.get(key))
                        .and_then(|v| values.get(v))
                })
                .sum()
        })
        .collect();
    let (min, max) = (
        raw.iter().copied().min().unwrap_or(0),
        raw.iter().copied().max().unwrap_or(0),
    );
    Some(
        raw.into_iter()
            .map(|s| {
                if max > min {
                    (100.0 * (s - min) as f64 / (max - min) as f64) as i64
                } else {
                    0
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(name: &str, ns: &str, labels: Value, affinity: Value) -> PodInfo {
        PodInfo::new(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {"containers": [{"name": "c"}], "affinity": affinity},
            }))
            .unwrap(),
        ))
    }

    /// Nodes a, b in zone z1 and c in z2.
    fn cache() -> Cache {
        let mut c = Cache::default();
        for (n, zone) in [("a", "z1"), ("b", "z1"), ("c", "z2")] {
            c.set_node(
                serde_json::from_value(json!({"metadata": {"name": n,
                    "labels": {"kubernetes.io/hostname": n, "zone": zone}},
                    "status": {"allocatable": {"pods": "10"}}}))
                .unwrap(),
            );
        }
        c.namespaces
            .insert("team".into(), [("tier".into(), "gold".into())].into());
        c
    }

    fn term(key: &str, labels: Value) -> Value {
        json!({"labelSelector": {"matchLabels": labels}, "topologyKey": key})
    }

    fn check(c: &Cache, p: &PodInfo) -> Vec<Result<(), Vec<Reason>>> {
        let s = InterPod::prepare(p, c);
        ["a", "b", "c"]
            .iter()
            .map(|n| s.filter(c.node(n).unwrap()))
            .collect()
    }

    #[test]
    fn required_affinity_follows_matching_pods_and_lets_the_first_of_a_group_in() {
        let mut c = cache();
        let aff = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("zone", json!({"app": "db"}))]}});
        // No db pod anywhere, and the pod is not a db itself: nowhere.
        let web = pod("web", "d", json!({"app": "web"}), aff.clone());
        assert!(
            check(&c, &web)
                .iter()
                .all(|r| r == &Err(vec![Reason::PodAffinity]))
        );
        // A db pod that selects its own kind may go anywhere while there is none.
        let db_aff = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("zone", json!({"app": "db"}))]}});
        let db = pod("db-0", "d", json!({"app": "db"}), db_aff);
        assert!(check(&c, &db).iter().all(Result::is_ok));
        c.set_pod("c", db);
        // Now both follow it into z2.
        let r = check(&c, &web);
        assert_eq!(r[0], Err(vec![Reason::PodAffinity]));
        assert_eq!(r[1], Err(vec![Reason::PodAffinity]));
        assert_eq!(r[2], Ok(()));
        // Another namespace does not count, unless a namespace selector takes it in.
        let other = pod("web", "team", json!({"app": "web"}), aff);
        assert!(check(&c, &other).iter().all(Result::is_err));
        let any_ns = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone", "namespaceSelector": {}}]}});
        let other = pod("web", "team", json!({"app": "web"}), any_ns);
        assert_eq!(check(&c, &other)[2], Ok(()));
    }

    #[test]
    fn anti_affinity_both_ways() {
        let mut c = cache();
        let anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            term("kubernetes.io/hostname", json!({"app": "web"}))]}});
        c.set_pod("a", pod("web-0", "d", json!({"app": "web"}), anti.clone()));
        let r = check(&c, &pod("web-1", "d", json!({"app": "web"}), anti));
        assert_eq!(r[0], Err(vec![Reason::PodAntiAffinity]));
        assert_eq!((r[1].clone(), r[2].clone()), (Ok(()), Ok(())));
        // Symmetry: a pod without terms that web-0's anti-affinity selects keeps off a.
        let r = check(&c, &pod("plain", "d", json!({"app": "web"}), json!(null)));
        assert_eq!(r[0], Err(vec![Reason::ExistingAntiAffinity]));
        assert!(r[1].is_ok());
        // Zone-wide anti-affinity of a bound pod forbids the whole zone; removing the pod (as
        // preemption asks) lifts it.
        let zone_anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            term("zone", json!({"app": "batch"}))]}});
        let guard = pod("guard", "d", json!({}), zone_anti);
        c.set_pod("b", guard.clone());
        let batch = pod("batch", "d", json!({"app": "batch"}), json!(null));
        let mut s = InterPod::prepare(&batch, &c);
        assert!(s.filter(c.node("a").unwrap()).is_err());
        assert!(s.filter(c.node("c").unwrap()).is_ok());
        s.update(&guard, c.node("b").unwrap(), -1, &c.namespaces);
        assert!(s.filter(c.node("a").unwrap()).is_ok());
    }

    #[test]
    fn preferred_terms_score_domains() {
        let mut c = cache();
        c.set_pod(
            "c",
            pod("cache-0", "d", json!({"app": "cache"}), json!(null)),
        );
        c.set_pod(
            "a",
            pod("noisy-0", "d", json!({"app": "noisy"}), json!(null)),
        );
        let pref = json!({
            "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 50, "podAffinityTerm": term("zone", json!({"app": "cache"}))}]},
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term("kubernetes.io/hostname", json!({"app": "noisy"}))}]}});
        let p = pod("web", "d", json!({}), pref);
        let nodes: Vec<&NodeInfo> = ["a", "b", "c"].iter().map(|n| c.node(n).unwrap()).collect();
        // a: −100, b: 0, c: +50.
        assert_eq!(score(&p, &c, &nodes), Some(vec![0, 66, 100]));
        // No terms anywhere: nothing to score.
        let plain = pod("plain", "d", json!({}), json!(null));
        assert_eq!(score(&plain, &c, &nodes), None);
    }
}
