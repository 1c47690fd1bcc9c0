//! The scheduler: watches nodes and pods through kube-rs, keeps a [`cache::Cache`] of what each
//! node holds, takes pending pods of the default `schedulerName` from a [`queue::Queue`] one at a
//! time, filters and scores a sample of the nodes as kube-scheduler does, assumes the pod onto
//! the best node and binds it through `pods/binding` in the background. A pod that fits nowhere
//! gets a `FailedScheduling` event and `PodScheduled=False` with the reasons per filter.

pub mod cache;
pub mod filters;
pub mod perf;
pub mod queue;
pub mod resources;
pub mod scores;
pub mod spread;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde_json::json;

use cache::{Cache, PodInfo, pod_key};
use queue::{Popped, Queue};

pub const SCHEDULER_NAME: &str = "default-scheduler";

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("watching {what}: {source}")]
    Watch {
        what: &'static str,
        source: watcher::Error,
    },
}

/// kube-scheduler's `numFeasibleNodesToFind`: all nodes up to 100, otherwise an adaptive
/// percentage (50% minus 1% per 125 nodes, at least 5%) but never fewer than 100.
pub fn nodes_to_find(all: usize) -> usize {
    if all < 100 {
        return all;
    }
    let pct = (50 - (all / 125) as i64).max(5) as usize;
    (all * pct / 100).max(100)
}

/// Why a pod could not be placed, with kube-scheduler's message.
#[derive(Debug)]
pub struct FitError {
    pub nodes: usize,
    pub reasons: BTreeMap<String, usize>,
}

impl std::fmt::Display for FitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        parts.sort();
        write!(f, "0/{} nodes are available", self.nodes)?;
        if parts.is_empty() {
            write!(f, ".")
        } else {
            write!(f, ": {}.", parts.join(", "))
        }
    }
}

struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

struct State {
    cache: Cache,
    next_start: usize,
}

pub struct Scheduler {
    client: Client,
    state: Mutex<State>,
    queue: Queue,
    recorder: Recorder,
}

fn is_pending_for_us(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
        .is_empty()
        && spec
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or(SCHEDULER_NAME)
            == SCHEDULER_NAME
        && pod.metadata.deletion_timestamp.is_none()
        && !is_terminal(pod)
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl Scheduler {
    pub fn new(client: Client) -> Arc<Self> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: SCHEDULER_NAME.into(),
                instance: None,
            },
        );
        Arc::new(Scheduler {
            client,
            state: Mutex::new(State {
                cache: Cache::default(),
                next_start: 0,
            }),
            queue: Queue::default(),
            recorder,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until a watch fails for good.
    pub async fn run(self: Arc<Self>) -> Result<(), SchedulerError> {
        let nodes = tokio::spawn(self.clone().watch_nodes());
        let pods = tokio::spawn(self.clone().watch_pods());
        let ticker = {
            let me = self.clone();
            tokio::spawn(async move {
                let mut t = tokio::time::interval(Duration::from_millis(200));
                loop {
                    t.tick().await;
                    me.queue.tick();
                }
            })
        };
        let scheduling = {
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    let p = me.queue.pop().await;
                    me.clone().schedule_one(p);
                }
            })
        };
        // Dropping this future (leadership lost) stops every task it started.
        let guard = AbortOnDrop(vec![
            nodes.abort_handle(),
            pods.abort_handle(),
            ticker.abort_handle(),
            scheduling.abort_handle(),
        ]);
        let result = tokio::select! {
            r = nodes => r,
            r = pods => r,
        };
        drop(guard);
        result.unwrap_or(Ok(()))
    }

    async fn watch_nodes(self: Arc<Self>) -> Result<(), SchedulerError> {
        let api: Api<Node> = Api::all(self.client.clone());
        let mut stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut seen: Option<HashSet<String>> = None;
        while let Some(ev) = stream
            .try_next()
            .await
            .map_err(|source| SchedulerError::Watch {
                what: "nodes",
                source,
            })?
        {
            let mut st = self.state();
            match ev {
                watcher::Event::Init => seen = Some(HashSet::new()),
                watcher::Event::InitApply(n) => {
                    if let (Some(s), Some(name)) = (seen.as_mut(), n.metadata.name.clone()) {
                        s.insert(name);
                    }
                    st.cache.set_node(n);
                }
                watcher::Event::InitDone => {
                    if let Some(s) = seen.take() {
                        for name in st.cache.node_names() {
                            if !s.contains(&name) {
                                st.cache.remove_node(&name);
                            }
                        }
                    }
                }
                watcher::Event::Apply(n) => st.cache.set_node(n),
                watcher::Event::Delete(n) => st
                    .cache
                    .remove_node(n.metadata.name.as_deref().unwrap_or_default()),
            }
            drop(st);
            self.queue.cluster_changed();
        }
        Ok(())
    }

    fn apply_pod(&self, st: &mut State, pod: Pod) {
        let key = pod_key(&pod);
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if !node.is_empty() {
            self.queue.remove(&key);
            if is_terminal(&pod) {
                st.cache.remove_pod(&key);
                self.queue.cluster_changed();
            } else {
                st.cache.set_pod(&node, PodInfo::new(Arc::new(pod)));
            }
        } else if is_pending_for_us(&pod) {
            if !st.cache.is_assumed(&key) {
                self.queue.add(&key, Arc::new(pod));
            }
        } else {
            self.queue.remove(&key);
        }
    }

    async fn watch_pods(self: Arc<Self>) -> Result<(), SchedulerError> {
        let api: Api<Pod> = Api::all(self.client.clone());
        let mut stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut seen: Option<HashSet<String>> = None;
        while let Some(ev) = stream
            .try_next()
            .await
            .map_err(|source| SchedulerError::Watch {
                what: "pods",
                source,
            })?
        {
            let mut st = self.state();
            match ev {
                watcher::Event::Init => seen = Some(HashSet::new()),
                watcher::Event::InitApply(p) => {
                    if let Some(s) = seen.as_mut() {
                        s.insert(pod_key(&p));
                    }
                    self.apply_pod(&mut st, p);
                }
                watcher::Event::InitDone => {
                    if let Some(s) = seen.take() {
                        for key in st.cache.pod_keys() {
                            if !s.contains(&key) && !st.cache.is_assumed(&key) {
                                st.cache.remove_pod(&key);
                            }
                        }
                    }
                    drop(st);
                    self.queue.cluster_changed();
                }
                watcher::Event::Apply(p) => self.apply_pod(&mut st, p),
                watcher::Event::Delete(p) => {
                    let key = pod_key(&p);
                    st.cache.remove_pod(&key);
                    self.queue.remove(&key);
                    drop(st);
                    self.queue.cluster_changed();
                }
            }
        }
        Ok(())
    }

    /// Picks a node for `pod`: filters a rotating sample of the nodes, scores the feasible ones.
    fn find_node(&self, st: &mut State, pod: &PodInfo) -> Result<String, FitError> {
        let spread = spread::Spread::prepare(pod, &st.cache);
        let names = st.cache.ordered();
        let all = names.len();
        let want = nodes_to_find(all);
        let mut feasible = Vec::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let start = if all == 0 { 0 } else { st.next_start % all };
        let mut visited = 0;
        for i in 0..all {
            let name = &names[(start + i) % all];
            visited += 1;
            let Some(node) = st.cache.node(name) else {
                continue;
            };
            match filters::run(pod, node).and_then(|()| spread.filter(node)) {
                Ok(()) => {
                    feasible.push(node);
                    if feasible.len() >= want {
                        break;
                    }
                }
                Err(rs) => {
                    for r in rs {
                        *reasons.entry(r.to_string()).or_default() += 1;
                    }
                }
            }
        }
        if feasible.is_empty() {
            return Err(FitError {
                nodes: all,
                reasons,
            });
        }
        let scores = scores::score(pod, &feasible);
        let best = scores.iter().copied().max().unwrap_or(0);
        // Ties are broken at random, as kube-scheduler's selectHost does.
        let ties: Vec<usize> = (0..feasible.len()).filter(|&i| scores[i] == best).collect();
        let pick = ties[rand::random_range(0..ties.len())];
        let chosen = feasible[pick].name().to_string();
        st.next_start = (start + visited) % all.max(1);
        Ok(chosen)
    }

    fn schedule_one(self: Arc<Self>, p: Popped) {
        let info = PodInfo::new(p.pod.clone());
        let decision = {
            let mut st = self.state();
            let d = self.find_node(&mut st, &info);
            if let Ok(node) = &d {
                st.cache.assume(node, info);
                self.queue.remove(&p.key);
            }
            d
        };
        match decision {
            Ok(node) => {
                tokio::spawn(async move { self.bind(p, node).await });
            }
            Err(fit) => {
                self.queue.done_unschedulable(&p);
                tokio::spawn(async move { self.report_unschedulable(p.pod, fit).await });
            }
        }
    }

    async fn bind(&self, p: Popped, node: String) {
        let ns = p.pod.metadata.namespace.clone().unwrap_or_default();
        let name = p.pod.metadata.name.clone().unwrap_or_default();
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": p.pod.metadata.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        match api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &name,
                &PostParams::default(),
                &binding,
            )
            .await
        {
            Ok(_) => tracing::debug!(pod = %p.key, %node, "bound"),
            Err(e) => {
                self.state().cache.forget(&p.key);
                match &e {
                    // Gone, or bound by someone else: the watch brings the truth.
                    kube::Error::Api(s) if s.code == 404 || s.code == 409 => {
                        tracing::debug!(pod = %p.key, error = %e, "binding not needed");
                    }
                    _ => {
                        tracing::warn!(pod = %p.key, %node, error = %e, "binding failed");
                        self.queue.add(&p.key, p.pod.clone());
                        self.queue.done_error(&p.key);
                    }
                }
            }
        }
    }

    async fn report_unschedulable(&self, pod: Arc<Pod>, fit: FitError) {
        let message = fit.to_string();
        let key = pod_key(&pod);
        tracing::info!(pod = %key, %message, "unschedulable");
        let already = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.message.as_deref() == Some(message.as_str())
            });
        let reference = pod.object_ref(&());
        let event = Event {
            type_: EventType::Warning,
            reason: "FailedScheduling".into(),
            note: Some(message.clone()),
            action: "Scheduling".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(pod = %key, error = %e, "recording FailedScheduling");
        }
        if already {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let patch = json!({"status": {"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message, "lastProbeTime": null,
            "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        }]}});
        if let Err(e) = api
            .patch_status(
                pod.metadata.name.as_deref().unwrap_or_default(),
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            tracing::debug!(pod = %key, error = %e, "setting PodScheduled=False");
        }
    }
}

/// Runs a scheduler against the API server `client` talks to.
pub async fn run(client: Client) -> Result<(), SchedulerError> {
    Scheduler::new(client).run().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_and_sampling() {
        let fit = FitError {
            nodes: 3,
            reasons: [
                ("Insufficient cpu".to_string(), 2),
                ("node(s) had untolerated taint {k: v}".to_string(), 1),
            ]
            .into(),
        };
        assert_eq!(
            fit.to_string(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu."
        );
        assert_eq!(nodes_to_find(50), 50);
        assert_eq!(nodes_to_find(1000), 420);
        assert_eq!(nodes_to_find(5000), 500);
    }
}
