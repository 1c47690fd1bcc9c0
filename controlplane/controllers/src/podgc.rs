//! Pod garbage collection (kube-controller-manager's `pod-garbage-collector-controller`). Every
//! check period it force-deletes (grace 0):
//!
//! - the oldest finished pods (Succeeded or Failed; evicted ones first) beyond
//!   `--terminated-pod-gc-threshold`;
//! - terminating pods on a NotReady node tainted `node.kubernetes.io/out-of-service`;
//! - pods bound to a node that no longer exists, once it has been missing for the quarantine
//!   period and a direct lookup confirms it, marked Failed with a `DisruptionTarget` condition;
//! - terminating pods that were never scheduled.
//!
//! Pods not yet finished are first marked Failed, as nothing else would finish them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::is_not_found;

/// How often kube checks.
const CHECK_PERIOD: Duration = Duration::from_secs(20);
const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";

#[derive(Debug, Clone, Copy)]
pub struct PodGcConfig {
    /// Finished pods kept before the oldest are deleted; 0 keeps them all.
    pub terminated_pod_threshold: usize,
    /// How long a node must be missing before its pods are deleted (kube: 40 s). The checks
    /// run this often when it is shorter than kube's 20 s period.
    pub quarantine: Duration,
}

impl Default for PodGcConfig {
    fn default() -> Self {
        PodGcConfig {
            terminated_pod_threshold: 12500,
            quarantine: Duration::from_secs(40),
        }
    }
}

pub async fn run(client: Client, cfg: PodGcConfig) {
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (nodes, nodes_writer) = reflector::store::<Node>();
    let pod_events = reflector::reflector(
        pods_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()).default_backoff(),
    )
    .for_each(|_| async {});
    let node_events = reflector::reflector(
        nodes_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()).default_backoff(),
    )
    .for_each(|_| async {});
    let checks = async {
        if pods.wait_until_ready().await.is_err() || nodes.wait_until_ready().await.is_err() {
            return;
        }
        let mut gc = PodGc {
            client: client.clone(),
            cfg,
            missing_nodes: HashMap::new(),
        };
        let mut ticker = tokio::time::interval(CHECK_PERIOD.min(cfg.quarantine));
        loop {
            ticker.tick().await;
            gc.check(&pods, &nodes).await;
        }
    };
    futures::join!(pod_events, node_events, checks);
}

struct PodGc {
    client: Client,
    cfg: PodGcConfig,
    /// Nodes pods are bound to that were missing, with when their quarantine ends.
    missing_nodes: HashMap<String, Instant>,
}

fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn finished(p: &Pod) -> bool {
    matches!(phase(p), Some("Succeeded" | "Failed"))
}

fn node_name(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// Deletion order among finished pods: evicted first, then oldest, then by name.
fn deletion_order(a: &Pod, b: &Pod) -> std::cmp::Ordering {
    let evicted = |p: &Pod| {
        phase(p) == Some("Failed")
            && p.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted")
    };
    evicted(b)
        .cmp(&evicted(a))
        .then_with(|| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
        })
        .then_with(|| a.name_any().cmp(&b.name_any()))
}

/// The finished pods to delete so that at most `threshold` remain.
fn excess_finished(pods: &[Arc<Pod>], threshold: usize) -> Vec<Arc<Pod>> {
    let mut done: Vec<Arc<Pod>> = pods.iter().filter(|p| finished(p)).cloned().collect();
    if threshold == 0 || done.len() <= threshold {
        return Vec::new();
    }
    done.sort_by(|a, b| deletion_order(a, b));
    done.truncate(done.len() - threshold);
    done
}

fn out_of_service(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .any(|t| t.key == OUT_OF_SERVICE_TAINT);
    !ready && tainted
}

impl PodGc {
    async fn check(&mut self, pods: &Store<Pod>, nodes: &Store<Node>) {
        let pods = pods.state();
        let nodes: HashMap<String, Arc<Node>> = nodes
            .state()
            .into_iter()
            .map(|n| (n.name_any(), n))
            .collect();
        for p in excess_finished(&pods, self.cfg.terminated_pod_threshold) {
            self.delete(&p, None).await;
        }
        for p in pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
        {
            let out = node_name(p)
                .and_then(|n| nodes.get(n))
                .is_some_and(|n| out_of_service(n));
            if out {
                self.delete(p, None).await;
            }
        }
        let gone = self.deleted_nodes(&pods, &nodes).await;
        for p in pods
            .iter()
            .filter(|p| node_name(p).is_some_and(|n| gone.contains(n)))
        {
            let condition = json!({"type": "DisruptionTarget", "status": "True",
                "reason": "DeletionByPodGC", "message": "PodGC: node no longer exists"});
            self.delete(p, Some(condition)).await;
        }
        for p in pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some() && node_name(p).is_none())
        {
            self.delete(p, None).await;
        }
    }

    /// The nodes pods are bound to that have been missing for the quarantine period and that
    /// a direct lookup does not find either.
    async fn deleted_nodes(
        &mut self,
        pods: &[Arc<Pod>],
        nodes: &HashMap<String, Arc<Node>>,
    ) -> HashSet<String> {
        let now = Instant::now();
        for n in pods.iter().filter_map(|p| node_name(p)) {
            if !nodes.contains_key(n) {
                self.missing_nodes
                    .entry(n.to_string())
                    .or_insert(now + self.cfg.quarantine);
            }
        }
        let due: Vec<String> = self
            .missing_nodes
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(n, _)| n.clone())
            .collect();
        let api: Api<Node> = Api::all(self.client.clone());
        let mut gone = HashSet::new();
        for n in due {
            self.missing_nodes.remove(&n);
            if nodes.contains_key(&n) {
                continue;
            }
            match api.get_opt(&n).await {
                Ok(None) => {
                    gone.insert(n);
                }
                Ok(Some(_)) => {}
                // Looked at again on a later check if pods still name it.
                Err(e) => tracing::debug!(node = %n, error = %e, "pod GC: looking up a node"),
            }
        }
        gone
    }

    /// Marks the pod Failed (with `condition`) unless it finished, then deletes it at once.
    async fn delete(&self, p: &Pod, condition: Option<Value>) {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &p.namespace().unwrap_or_default());
        let name = p.name_any();
        tracing::info!(pod = %name, namespace = ?p.namespace(), "pod GC: force deleting");
        if !finished(p) {
            let mut status = json!({"phase": "Failed"});
            if let Some(mut c) = condition {
                c["lastTransitionTime"] = json!(
                    k8s_openapi::jiff::Timestamp::now()
                        .strftime("%Y-%m-%dT%H:%M:%SZ")
                        .to_string()
                );
                status["conditions"] = json!([c]);
            }
            let patch = json!({"metadata": {"uid": p.metadata.uid}, "status": status});
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => return,
                Err(e) => {
                    tracing::debug!(pod = %name, error = %e, "pod GC: marking failed");
                    return;
                }
            }
        }
        match api
            .delete(&name, &DeleteParams::default().grace_period(0))
            .await
        {
            Err(e) if !is_not_found(&e) => {
                tracing::debug!(pod = %name, error = %e, "pod GC: deleting")
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, created: &str, phase: &str, reason: Option<&str>) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "creationTimestamp": created},
                "status": {"phase": phase, "reason": reason},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn the_oldest_finished_pods_beyond_the_threshold_go_evicted_first() {
        let pods = vec![
            pod("e", "2026-01-01T00:00:05Z", "Succeeded", None),
            pod("a", "2026-01-01T00:00:03Z", "Failed", None),
            pod("running", "2026-01-01T00:00:00Z", "Running", None),
            pod("c", "2026-01-01T00:00:01Z", "Succeeded", None),
            pod("b", "2026-01-01T00:00:01Z", "Succeeded", None),
            pod("evicted", "2026-01-01T00:00:09Z", "Failed", Some("Evicted")),
        ];
        let names = |ps: Vec<Arc<Pod>>| ps.iter().map(|p| p.name_any()).collect::<Vec<_>>();
        assert_eq!(names(excess_finished(&pods, 2)), ["evicted", "b", "c"]);
        assert!(excess_finished(&pods, 5).is_empty());
        assert!(excess_finished(&pods, 0).is_empty());
    }

    #[test]
    fn only_not_ready_nodes_tainted_out_of_service_release_their_terminating_pods() {
        let node = |ready: &str, taint: bool| -> Node {
            let taints = if taint {
                json!([{"key": OUT_OF_SERVICE_TAINT, "effect": "NoExecute"}])
            } else {
                json!([])
            };
            serde_json::from_value(json!({"spec": {"taints": taints},
                "status": {"conditions": [{"type": "Ready", "status": ready}]}}))
            .unwrap()
        };
        assert!(out_of_service(&node("False", true)));
        assert!(!out_of_service(&node("True", true)));
        assert!(!out_of_service(&node("Unknown", false)));
    }
}
