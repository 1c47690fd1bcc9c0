//! Pod states as the workload controllers count them (the `podutil` rules): active, ready,
//! available after `minReadySeconds`; and the order in which they give pods up (kube's
//! `ActivePods`, and for ReplicaSets `ActivePodsWithRanks`).

use std::cmp::Reverse;
use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

/// The annotation by which users make a pod cheaper or dearer to delete on scale-down.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// Succeeded or Failed.
pub fn is_terminal(p: &Pod) -> bool {
    matches!(phase(p), "Succeeded" | "Failed")
}

/// Not terminating and not finished.
pub fn is_active(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && !is_terminal(p)
}

fn ready_since(p: &Pod) -> Option<Option<Timestamp>> {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

pub fn is_ready(p: &Pod) -> bool {
    ready_since(p).is_some()
}

/// Ready for at least `min_ready_seconds` at `now`.
pub fn is_available(p: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(p) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => since.as_second() + i64::from(min_ready_seconds) <= now.as_second(),
    }
}

/// The node a pod is bound to, if any.
pub fn node_name(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn max_restarts(p: &Pod) -> i32 {
    p.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0)
}

/// What a ReplicaSet's scale-down weighs beyond `ActivePods`: how many of its related active
/// pods share each node (pods on crowded nodes go first), and, for the logarithmic comparison of
/// ages, the time now.
pub struct ScaleDown {
    pub colocated: HashMap<String, usize>,
    pub now: Timestamp,
}

impl ScaleDown {
    /// Counts the active pods of `related` per node.
    pub fn new<'a>(related: impl IntoIterator<Item = &'a Pod>, now: Timestamp) -> Self {
        let mut colocated: HashMap<String, usize> = HashMap::new();
        for p in related.into_iter().filter(|p| is_active(p)) {
            *colocated
                .entry(node_name(p).unwrap_or_default().to_string())
                .or_default() += 1;
        }
        ScaleDown { colocated, now }
    }
}

/// A point in time as the deletion order compares it: unknown first, then newer before older;
/// under `LogarithmicScaleDown`, times in the same power-of-two age bucket count as equal.
fn age_key(t: Option<Timestamp>, scale_down: Option<&ScaleDown>) -> (bool, Reverse<i64>) {
    match (t, scale_down) {
        (None, _) => (false, Reverse(0)),
        (Some(t), None) => (true, Reverse(t.as_second())),
        (Some(t), Some(s)) => {
            let nanos = (s.now.as_nanosecond() - t.as_nanosecond()).max(0);
            let bucket = if nanos > 0 {
                i64::from(nanos.ilog2())
            } else {
                -1
            };
            (true, Reverse(-bucket))
        }
    }
}

/// The key pods sort by when a controller gives some up: the smallest goes first.
/// Unassigned before assigned, Pending before Unknown before Running, not ready before ready;
/// with `scale_down`, a lower `pod-deletion-cost` and more colocated siblings next; then ready for
/// less time, more container restarts, newer. Ties end on the uid, so the order is total.
pub fn deletion_key(p: &Pod, scale_down: Option<&ScaleDown>) -> impl Ord + use<> {
    let node = node_name(p);
    let phase = match phase(p) {
        "Unknown" => 1u8,
        "Running" => 2,
        _ => 0,
    };
    let (cost, colocated) = match scale_down {
        Some(s) => (
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DELETION_COST))
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or(0),
            s.colocated
                .get(node.unwrap_or_default())
                .copied()
                .unwrap_or(0),
        ),
        None => (0, 0),
    };
    let ready = ready_since(p);
    (
        node.is_some(),
        phase,
        ready.is_some(),
        cost,
        Reverse(colocated),
        age_key(ready.flatten(), scale_down),
        Reverse(max_restarts(p)),
        age_key(
            p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            scale_down,
        ),
        p.metadata.uid.clone().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let p: Pod = serde_json::from_value(serde_json::json!({"status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}))
        .unwrap();
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        assert!(is_active(&p) && is_ready(&p));
        assert!(is_available(&p, 0, at("2026-01-01T00:00:00Z")));
        assert!(!is_available(&p, 10, at("2026-01-01T00:00:05Z")));
        assert!(is_available(&p, 10, at("2026-01-01T00:00:10Z")));
    }

    fn pod(
        name: &str,
        node: Option<&str>,
        phase: &str,
        ready_at: Option<&str>,
        created: &str,
    ) -> Pod {
        let mut conditions = vec![];
        if let Some(t) = ready_at {
            conditions.push(json!({"type": "Ready", "status": "True", "lastTransitionTime": t}));
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": name, "creationTimestamp": created},
            "spec": {"containers": [], "nodeName": node},
            "status": {"phase": phase, "conditions": conditions},
        }))
        .unwrap()
    }

    fn order(pods: &mut [Pod], scale_down: Option<&ScaleDown>) -> Vec<String> {
        pods.sort_by_cached_key(|p| deletion_key(p, scale_down));
        pods.iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn active_pods_order_gives_up_the_least_useful_first() {
        let t0 = "2026-01-01T00:00:00Z";
        let mut restarted = pod("restarted", Some("n"), "Running", Some(t0), t0);
        restarted.status.as_mut().unwrap().container_statuses = Some(vec![
            serde_json::from_value(
                json!({"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 3}),
            )
            .unwrap(),
        ]);
        let mut pods = vec![
            pod("old-ready", Some("n"), "Running", Some(t0), t0),
            pod(
                "ready-later",
                Some("n"),
                "Running",
                Some("2026-01-01T00:05:00Z"),
                t0,
            ),
            pod(
                "new-ready",
                Some("n"),
                "Running",
                Some(t0),
                "2026-01-02T00:00:00Z",
            ),
            restarted,
            pod("unready", Some("n"), "Running", None, t0),
            pod("unknown", Some("n"), "Unknown", None, t0),
            pod("pending", Some("n"), "Pending", None, t0),
            pod("unscheduled", None, "Pending", None, t0),
        ];
        assert_eq!(
            order(&mut pods, None),
            [
                "unscheduled",
                "pending",
                "unknown",
                "unready",
                "ready-later",
                "restarted",
                "new-ready",
                "old-ready"
            ]
        );
    }

    #[test]
    fn scale_down_weighs_deletion_cost_and_crowded_nodes() {
        let t0 = "2026-01-01T00:00:00Z";
        let mut cheap = pod("cheap", Some("c"), "Running", Some(t0), t0);
        cheap.metadata.annotations = Some([(DELETION_COST.to_string(), "-5".to_string())].into());
        let pods = vec![
            pod("alone", Some("a"), "Running", Some(t0), t0),
            pod("crowded-1", Some("b"), "Running", Some(t0), t0),
            pod("crowded-2", Some("b"), "Running", Some(t0), t0),
            cheap,
        ];
        let now: Timestamp = "2026-01-02T00:00:00Z".parse().unwrap();
        let sd = ScaleDown::new(&pods, now);
        let mut pods = pods.clone();
        assert_eq!(
            order(&mut pods, Some(&sd)),
            ["cheap", "crowded-1", "crowded-2", "alone"]
        );
    }

    #[test]
    fn scale_down_treats_ages_in_one_power_of_two_bucket_alike() {
        let now: Timestamp = "2026-01-02T00:00:00Z".parse().unwrap();
        // 120 s and 100 s old share the bucket 2^36 ns, so the uid decides between them; 10 s
        // old is a bucket younger.
        let mut pods = vec![
            pod("a", Some("n"), "Running", None, "2026-01-01T23:58:00Z"),
            pod("b", Some("n"), "Running", None, "2026-01-01T23:58:20Z"),
            pod("young", Some("n"), "Running", None, "2026-01-01T23:59:50Z"),
        ];
        let sd = ScaleDown::new(&pods, now);
        assert_eq!(order(&mut pods, Some(&sd)), ["young", "a", "b"]);
        assert_eq!(order(&mut pods, None), ["young", "b", "a"]);
    }
}
