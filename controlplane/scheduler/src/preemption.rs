//! Preemption, as kube-scheduler's DefaultPreemption PostFilter. When a pod fits nowhere and may
//! preempt (`preemptionPolicy` is not Never, and it is not already waiting for victims on its
//! nominated node to terminate), every node whose failure removing pods could resolve (not
//! taints, selectors, unschedulable or pod affinity) is tried: take away each pod of lower
//! priority; if the pod then fits, put them back most important first (higher priority, then
//! longer running) while it still fits — those that do not go back are the victims. Of the
//! candidate nodes it picks the one whose most important victim has the lowest priority, then
//! the smallest sum of victim priorities, the fewest victims, the latest start of the most
//! important victims. (PodDisruptionBudgets are not served, so none can be violated.)

use std::cmp::Reverse;
use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use super::FitError;
use super::cache::{Cache, NodeInfo, PodInfo};
use super::cycle::Cycle;

const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
const NO_VICTIMS: &str = "No preemption victims found for incoming pod";

/// kube-scheduler's DefaultPreemption arguments: look for candidates on at least this share of
/// the nodes where preemption might help, and at least this many.
const MIN_CANDIDATE_PERCENT: usize = 10;
const MIN_CANDIDATES: usize = 100;

/// A node and the pods to evict there, most important first.
#[derive(Debug)]
pub struct Candidate {
    pub node: String,
    pub victims: Vec<PodInfo>,
}

/// Why `pod` may not preempt now, worded as kube-scheduler words it. `resolvable` are the
/// nodes whose failure removing pods might fix.
pub fn ineligible(pod: &PodInfo, cache: &Cache, resolvable: &[String]) -> Option<&'static str> {
    let spec = pod.pod.spec.as_ref();
    if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return Some("not eligible due to preemptionPolicy=Never.");
    }
    let key = pod.key();
    let nominated = cache
        .nominated_node(&key)
        .or_else(|| super::nominated_node(&pod.pod));
    // It already preempted: wait for its victims to go rather than evict more, unless its
    // node can no longer take it at all.
    let waiting = nominated
        .filter(|n| resolvable.iter().any(|r| r == n))
        .and_then(|n| cache.node(n))
        .is_some_and(|n| {
            cache
                .pods_on(n)
                .any(|p| p.is_terminating() && p.priority < pod.priority)
        });
    waiting.then_some("not eligible due to a terminating pod on the nominated node.")
}

/// Chooses where to preempt for `pod`, or says (as a fit message) why nowhere.
pub fn find(
    pod: &PodInfo,
    cache: &Cache,
    cycle: &Cycle,
    resolvable: &[String],
    all_nodes: usize,
) -> Result<Candidate, String> {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let unhelpful = all_nodes.saturating_sub(resolvable.len());
    if unhelpful > 0 {
        reasons.insert(NOT_HELPFUL.into(), unhelpful);
    }
    let want = (resolvable.len() * MIN_CANDIDATE_PERCENT / 100)
        .max(MIN_CANDIDATES)
        .min(resolvable.len());
    let mut found = Vec::new();
    // From a random offset, as kube-scheduler does, so that repeated preemptions spread out.
    let start = if resolvable.is_empty() {
        0
    } else {
        rand::random_range(0..resolvable.len())
    };
    for i in 0..resolvable.len() {
        let name = &resolvable[(start + i) % resolvable.len()];
        let Some(node) = cache.node(name) else {
            *reasons.entry(NOT_HELPFUL.into()).or_default() += 1;
            continue;
        };
        match victims(pod, node, cache, cycle) {
            Ok(victims) => {
                found.push(Candidate {
                    node: name.clone(),
                    victims,
                });
                if found.len() >= want {
                    break;
                }
            }
            Err(why) => {
                for r in why {
                    *reasons.entry(r).or_default() += 1;
                }
            }
        }
    }
    pick(found).ok_or_else(|| {
        FitError {
            nodes: all_nodes,
            reasons,
            resolvable: Vec::new(),
            post_filter: None,
        }
        .to_string()
    })
}

fn start_time(p: &PodInfo, now: Timestamp) -> Timestamp {
    p.pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0)
        .unwrap_or(now)
}

/// The fewest, least important pods on `node` whose eviction lets `pod` fit, most important
/// first; or why there are none.
pub fn victims(
    pod: &PodInfo,
    node: &NodeInfo,
    cache: &Cache,
    cycle: &Cycle,
) -> Result<Vec<PodInfo>, Vec<String>> {
    let mut lower: Vec<&PodInfo> = cache
        .pods_on(node)
        .filter(|p| p.priority < pod.priority)
        .collect();
    if lower.is_empty() {
        return Err(vec![NO_VICTIMS.into()]);
    }
    let ns = &cache.namespaces;
    let (mut without, mut state) = (node.clone(), cycle.clone());
    for v in &lower {
        without.remove(v);
        state.update(v, node, -1, ns);
    }
    state
        .check(pod, &without)
        .map_err(|rs| rs.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let now = Timestamp::now();
    lower.sort_by_key(|p| (Reverse(p.priority), start_time(p, now)));
    let mut victims = Vec::new();
    for v in lower {
        without.add(v);
        state.update(v, node, 1, ns);
        if state.check(pod, &without).is_err() {
            without.remove(v);
            state.update(v, node, -1, ns);
            victims.push(v.clone());
        }
    }
    if victims.is_empty() {
        return Err(vec![format!(
            "expected at least one victim pod on node {:?}",
            node.name()
        )]);
    }
    Ok(victims)
}

/// kube-scheduler's `pickOneNodeForPreemption` (without PodDisruptionBudgets).
fn pick(candidates: Vec<Candidate>) -> Option<Candidate> {
    let now = Timestamp::now();
    candidates.into_iter().min_by_key(|c| {
        let top = c.victims.first().map(|v| v.priority).unwrap_or(i32::MIN);
        // Shifted so that negative priorities still add up to more with more victims.
        let sum: i64 = c
            .victims
            .iter()
            .map(|v| i64::from(v.priority) + i64::from(i32::MAX) + 1)
            .sum();
        let earliest = c
            .victims
            .iter()
            .filter(|v| v.priority == top)
            .map(|v| start_time(v, now))
            .min()
            .unwrap_or(now);
        (top, sum, c.victims.len(), Reverse(earliest))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::sync::Arc;

    fn pod(name: &str, priority: i32, cpu: &str, extra: Value) -> PodInfo {
        let mut p = json!({"metadata": {"name": name, "namespace": "d"},
            "spec": {"priority": priority,
                "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}});
        if let (Some(o), Some(e)) = (p.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                match (o.get_mut(k).and_then(Value::as_object_mut), v.as_object()) {
                    (Some(into), Some(add)) => into.extend(add.clone()),
                    _ => {
                        o.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        PodInfo::new(Arc::new(serde_json::from_value(p).unwrap()))
    }

    fn cache(nodes: &[&str]) -> Cache {
        let mut c = Cache::default();
        for n in nodes {
            c.set_node(
                serde_json::from_value(
                    json!({"metadata": {"name": n, "labels": {"kubernetes.io/hostname": n}},
                    "status": {"allocatable": {"cpu": "1", "pods": "10"}}}),
                )
                .unwrap(),
            );
        }
        c
    }

    fn names(v: &[PodInfo]) -> Vec<String> {
        v.iter()
            .map(|p| p.pod.metadata.name.clone().unwrap())
            .collect()
    }

    fn started(t: &str) -> Value {
        json!({"status": {"startTime": t}})
    }

    #[test]
    fn the_fewest_least_important_victims() {
        let mut c = cache(&["n"]);
        c.set_pod(
            "n",
            pod("old-10", 10, "300m", started("2024-01-01T00:00:00Z")),
        );
        c.set_pod("n", pod("p20", 20, "300m", json!({})));
        c.set_pod("n", pod("p5", 5, "300m", json!({})));
        c.set_pod("n", pod("p200", 200, "100m", json!({})));
        let incoming = pod("urgent", 100, "500m", json!({}));
        let cycle = Cycle::prepare(&incoming, &c);
        let v = victims(&incoming, c.node("n").unwrap(), &c, &cycle).unwrap();
        // p200 is never a victim; p20 goes back first and fits; then there is room for none.
        assert_eq!(names(&v), ["old-10", "p5"]);
        // Evicting everything below it would not help a pod too big for the node.
        let huge = pod("huge", 100, "2", json!({}));
        let cycle = Cycle::prepare(&huge, &c);
        assert_eq!(
            victims(&huge, c.node("n").unwrap(), &c, &cycle).unwrap_err(),
            ["Insufficient cpu"]
        );
        // Nothing of lower priority.
        let low = pod("low", 1, "500m", json!({}));
        let cycle = Cycle::prepare(&low, &c);
        assert_eq!(
            victims(&low, c.node("n").unwrap(), &c, &cycle).unwrap_err(),
            [NO_VICTIMS]
        );
    }

    #[test]
    fn ports_and_anti_affinity_are_resolved_by_eviction() {
        let mut c = cache(&["n"]);
        let port = json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}});
        c.set_pod("n", pod("holder", 1, "0", port.clone()));
        c.set_pod("n", pod("bystander", 1, "100m", json!({})));
        let incoming = pod("wants-port", 10, "0", port);
        let cycle = Cycle::prepare(&incoming, &c);
        let v = victims(&incoming, c.node("n").unwrap(), &c, &cycle).unwrap();
        assert_eq!(names(&v), ["holder"]);

        let mut c = cache(&["n"]);
        let anti = json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}});
        c.set_pod("n", pod("guard", 1, "100m", anti));
        c.set_pod("n", pod("bystander", 1, "100m", json!({})));
        let web = pod(
            "web",
            10,
            "100m",
            json!({"metadata": {"labels": {"app": "web"}}}),
        );
        let cycle = Cycle::prepare(&web, &c);
        assert!(cycle.check(&web, c.node("n").unwrap()).is_err());
        let v = victims(&web, c.node("n").unwrap(), &c, &cycle).unwrap();
        assert_eq!(names(&v), ["guard"]);
    }

    #[test]
    fn node_choice_and_messages() {
        let mut c = cache(&["a", "b", "c", "d"]);
        // a: a victim of priority 50; b: two of 10 (lower top priority wins over fewer victims);
        // c: one of 10 (same top, smaller sum: wins); d: only more important pods.
        c.set_pod("a", pod("a50", 50, "1", json!({})));
        c.set_pod("b", pod("b10", 10, "500m", json!({})));
        c.set_pod("b", pod("b10x", 10, "500m", json!({})));
        c.set_pod("c", pod("c10", 10, "600m", json!({})));
        c.set_pod("c", pod("c90", 90, "200m", json!({})));
        c.set_pod("d", pod("d500", 500, "1", json!({})));
        let incoming = pod("urgent", 100, "800m", json!({}));
        let cycle = Cycle::prepare(&incoming, &c);
        let all: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let chosen = find(&incoming, &c, &cycle, &all, 4).unwrap();
        assert_eq!(
            (chosen.node.as_str(), names(&chosen.victims)),
            ("c", vec!["c10".to_string()])
        );
        // Only d (plus a node preemption cannot help): nothing to do, and why.
        let only_d = vec!["d".to_string()];
        assert_eq!(
            find(&incoming, &c, &cycle, &only_d, 2).unwrap_err(),
            "0/2 nodes are available: 1 No preemption victims found for incoming pod, 1 Preemption is not helpful for scheduling."
        );
        let never = pod(
            "never",
            100,
            "800m",
            json!({"spec": {"preemptionPolicy": "Never"}}),
        );
        assert_eq!(
            ineligible(&never, &c, &all),
            Some("not eligible due to preemptionPolicy=Never.")
        );
        assert_eq!(ineligible(&incoming, &c, &all), None);
    }
}
