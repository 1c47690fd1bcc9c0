//! skiff-scheduler: a library that, like kube-scheduler, talks to the cluster only through
//! kube-rs. It may depend on skiff-k8s (taints, node affinity, quantities) and skiff-client
//! (client, Events), never on the API server or the store.
//!
//! The scheduler: watches nodes, pods and namespaces through kube-rs, keeps a [`cache::Cache`]
//! of what each node holds, takes pending pods of the default `schedulerName` from a
//! [`queue::Queue`] one at a time, filters and scores a sample of the nodes as kube-scheduler
//! does, assumes the pod onto the best node and binds it through `pods/binding` in the
//! background. A pod that fits nowhere may preempt lower-priority pods ([`preemption`]); either
//! way it gets a `FailedScheduling` event and `PodScheduled=False` with the reasons per filter.

pub mod cache;
pub mod cycle;
pub mod filters;
pub mod interpod;
pub mod preemption;
pub mod queue;
pub mod scores;
pub mod spread;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;
use skiff_client::events::Recorder;

use cache::{Cache, PodInfo, pod_key};
use cycle::Cycle;
use preemption::Candidate;
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
    /// The nodes whose failure removing pods might resolve (where preemption looks).
    pub resolvable: Vec<String>,
    /// What preemption said, appended to the message.
    pub post_filter: Option<String>,
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
            write!(f, ".")?;
        } else {
            write!(f, ": {}.", parts.join(", "))?;
        }
        if let Some(p) = &self.post_filter {
            write!(f, " {p}")?;
        }
        Ok(())
    }
}

/// The API writes a successful preemption leaves to do: evict the candidate's victims, and
/// clear the nomination of the lower-priority pods that were waiting on its node.
struct Eviction {
    candidate: Candidate,
    displaced: Vec<Arc<Pod>>,
}

/// What a failed attempt does to the pod's `status.nominatedNodeName`.
#[derive(Debug)]
enum Nomination {
    Keep,
    Set(String),
    Clear,
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

/// `status.nominatedNodeName`, when set.
fn nominated_node(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl Scheduler {
    pub fn new(client: Client) -> Arc<Self> {
        let recorder = Recorder::new(client.clone(), SCHEDULER_NAME);
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
        let nodes = tokio::spawn(self.clone().watch::<Node>());
        let pods = tokio::spawn(self.clone().watch::<Pod>());
        let namespaces = tokio::spawn(self.clone().watch::<Namespace>());
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
            namespaces.abort_handle(),
            ticker.abort_handle(),
            scheduling.abort_handle(),
        ]);
        let result = tokio::select! {
            r = nodes => r,
            r = pods => r,
            r = namespaces => r,
        };
        drop(guard);
        result.unwrap_or(Ok(()))
    }

    /// Follows one kind of object into the state: a relist replaces what the state holds.
    async fn watch<K: Watched>(self: Arc<Self>) -> Result<(), SchedulerError> {
        let api: Api<K> = Api::all(self.client.clone());
        let mut stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut seen: Option<HashSet<String>> = None;
        while let Some(ev) = stream
            .try_next()
            .await
            .map_err(|source| SchedulerError::Watch {
                what: K::WHAT,
                source,
            })?
        {
            let mut st = self.state();
            match ev {
                watcher::Event::Init => seen = Some(HashSet::new()),
                watcher::Event::InitApply(o) => {
                    if let Some(s) = seen.as_mut() {
                        s.insert(o.key());
                    }
                    o.apply(&self, &mut st);
                }
                watcher::Event::InitDone => {
                    if let Some(s) = seen.take() {
                        for key in K::known(&st) {
                            if !s.contains(&key) {
                                K::remove(&self, &mut st, &key);
                            }
                        }
                    }
                    drop(st);
                    self.queue.cluster_changed();
                }
                watcher::Event::Apply(o) => o.apply(&self, &mut st),
                watcher::Event::Delete(o) => K::remove(&self, &mut st, &o.key()),
            }
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
            let pod = Arc::new(pod);
            // A nomination in the status (ours, or a previous leader's) is honoured, and ends
            // when the status loses it; one made a moment ago and not yet written stays.
            match nominated_node(&pod) {
                Some(n) => st.cache.nominate(n, PodInfo::new(pod.clone())),
                None if st
                    .cache
                    .nominated_pod(&key)
                    .is_some_and(|p| nominated_node(&p.pod).is_some()) =>
                {
                    st.cache.forget_nomination(&key)
                }
                None => {}
            }
            if !st.cache.is_assumed(&key) {
                self.queue.add(&key, pod);
            }
        } else {
            st.cache.forget_nomination(&key);
            self.queue.remove(&key);
        }
    }

    fn remove_pod(&self, st: &mut State, key: &str) {
        st.cache.remove_pod(key);
        st.cache.forget_nomination(key);
        self.queue.remove(key);
        self.queue.cluster_changed();
    }

    /// Picks a node for `pod`: its nominated node if it fits there, otherwise the best scored
    /// of the feasible nodes in a rotating sample.
    fn find_node(&self, st: &mut State, pod: &PodInfo, cycle: &Cycle) -> Result<String, FitError> {
        let cache = &st.cache;
        let nominated = cache
            .nominated_node(&pod.key())
            .or_else(|| nominated_node(&pod.pod));
        if let Some(node) = nominated.and_then(|n| cache.node(n))
            && cycle.check(pod, node).is_ok()
        {
            return Ok(node.name().to_string());
        }
        let names = cache.ordered();
        let all = names.len();
        let want = nodes_to_find(all);
        let mut feasible = Vec::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut resolvable = Vec::new();
        let start = if all == 0 { 0 } else { st.next_start % all };
        let mut visited = 0;
        for i in 0..all {
            let name = &names[(start + i) % all];
            visited += 1;
            let Some(node) = cache.node(name) else {
                continue;
            };
            match cycle.check(pod, node) {
                Ok(()) => {
                    feasible.push(node);
                    if feasible.len() >= want {
                        break;
                    }
                }
                Err(rs) => {
                    if !rs.iter().any(filters::Reason::unresolvable) {
                        resolvable.push(name.clone());
                    }
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
                resolvable,
                post_filter: None,
            });
        }
        let scores = scores::score(pod, cache, &feasible);
        let best = scores.iter().copied().max().unwrap_or(0);
        // Ties are broken at random, as kube-scheduler's selectHost does.
        let ties: Vec<usize> = (0..feasible.len()).filter(|&i| scores[i] == best).collect();
        let pick = ties[rand::random_range(0..ties.len())];
        let chosen = feasible[pick].name().to_string();
        st.next_start = (start + visited) % all.max(1);
        Ok(chosen)
    }

    /// DefaultPreemption for a pod that fit nowhere: on success the pod is nominated onto the
    /// chosen node (and lower-priority pods nominated there lose their place); the message of
    /// `fit` gets preemption's answer otherwise.
    fn preempt(
        &self,
        st: &mut State,
        pod: &PodInfo,
        cycle: &Cycle,
        fit: &mut FitError,
    ) -> (Nomination, Option<Eviction>) {
        if let Some(why) = preemption::ineligible(pod, &st.cache, &fit.resolvable) {
            fit.post_filter = Some(format!("preemption: {why}"));
            return (Nomination::Keep, None);
        }
        match preemption::find(pod, &st.cache, cycle, &fit.resolvable, fit.nodes) {
            Err(why) => {
                fit.post_filter = Some(format!("preemption: {why}"));
                st.cache.forget_nomination(&pod.key());
                (Nomination::Clear, None)
            }
            Ok(c) => {
                let displaced: Vec<Arc<Pod>> = st
                    .cache
                    .nominated_pods()
                    .filter(|(n, p)| *n == c.node && p.priority < pod.priority)
                    .map(|(_, p)| p.pod.clone())
                    .collect();
                for p in &displaced {
                    st.cache.forget_nomination(&pod_key(p));
                }
                st.cache.nominate(&c.node, pod.clone());
                let nomination = Nomination::Set(c.node.clone());
                (
                    nomination,
                    Some(Eviction {
                        candidate: c,
                        displaced,
                    }),
                )
            }
        }
    }

    fn schedule_one(self: Arc<Self>, p: Popped) {
        let info = PodInfo::new(p.pod.clone());
        let decision = {
            let mut st = self.state();
            let cycle = Cycle::prepare(&info, &st.cache);
            match self.find_node(&mut st, &info, &cycle) {
                Ok(node) => {
                    st.cache.assume(&node, info);
                    self.queue.remove(&p.key);
                    Ok(node)
                }
                Err(mut fit) => {
                    let (nomination, eviction) = self.preempt(&mut st, &info, &cycle, &mut fit);
                    Err((fit, nomination, eviction))
                }
            }
        };
        match decision {
            Ok(node) => {
                tokio::spawn(async move { self.bind(p, node).await });
            }
            Err((fit, nomination, eviction)) => {
                self.queue.done_unschedulable(&p);
                tokio::spawn(async move {
                    if let Some(e) = eviction {
                        self.evict(&p.pod, e).await;
                    }
                    self.report_unschedulable(p.pod, fit, nomination).await
                });
            }
        }
    }

    /// Evicts the victims as kube-scheduler does: a `DisruptionTarget` condition, a graceful
    /// delete (the node's kubelet finishes it) and a `Preempted` event on each; then clears the
    /// nomination of the lower-priority pods that were waiting on that node.
    async fn evict(&self, preemptor: &Pod, e: Eviction) {
        let Eviction {
            candidate: c,
            displaced,
        } = e;
        let uid = preemptor.metadata.uid.clone().unwrap_or_default();
        let scheduler = preemptor
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.clone())
            .unwrap_or_else(|| SCHEDULER_NAME.into());
        for v in &c.victims {
            let key = v.key();
            let api: Api<Pod> = Api::namespaced(self.client.clone(), v.namespace());
            let name = v.pod.metadata.name.as_deref().unwrap_or_default();
            let condition = json!({"status": {"conditions": [{
                "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                "message": format!("{scheduler}: preempting to accommodate a higher priority pod"),
                "lastTransitionTime": now(),
            }]}});
            if let Err(e) = api
                .patch_status(name, &PatchParams::default(), &Patch::Strategic(&condition))
                .await
            {
                tracing::warn!(pod = %key, error = %e, "marking a preemption victim");
            }
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(pod = %key, node = %c.node, "preempted"),
                Err(e) => tracing::warn!(pod = %key, error = %e, "deleting a preemption victim"),
            }
            let event = Event {
                type_: EventType::Normal,
                reason: "Preempted".into(),
                note: Some(format!("Preempted by pod {uid} on node {}", c.node)),
                action: "Preempting".into(),
                secondary: Some(preemptor.object_ref(&())),
            };
            if let Err(e) = self.recorder.publish(&event, &v.pod.object_ref(&())).await {
                tracing::warn!(pod = %key, error = %e, "recording Preempted");
            }
        }
        for p in displaced {
            let api: Api<Pod> = Api::namespaced(
                self.client.clone(),
                p.metadata.namespace.as_deref().unwrap_or_default(),
            );
            let clear = json!({"status": {"nominatedNodeName": null}});
            if let Err(e) = api
                .patch_status(
                    p.metadata.name.as_deref().unwrap_or_default(),
                    &PatchParams::default(),
                    &Patch::Merge(&clear),
                )
                .await
            {
                tracing::debug!(pod = %pod_key(&p), error = %e, "clearing a nomination");
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

    async fn report_unschedulable(&self, pod: Arc<Pod>, fit: FitError, nomination: Nomination) {
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
        let nominated = nominated_node(&pod);
        let nominate = match &nomination {
            Nomination::Set(n) if nominated != Some(n.as_str()) => Some(json!(n)),
            Nomination::Clear if nominated.is_some() => Some(json!(null)),
            _ => None,
        };
        if already && nominate.is_none() {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let mut patch = json!({"status": {"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message, "lastProbeTime": null, "lastTransitionTime": now(),
        }]}});
        if let Some(n) = nominate {
            patch["status"]["nominatedNodeName"] = n;
        }
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

fn now() -> String {
    skiff_k8s::time::now().to_string()
}

/// One kind of object the scheduler watches, and how it enters and leaves the state.
trait Watched: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static {
    const WHAT: &'static str;
    fn key(&self) -> String;
    fn apply(self, s: &Scheduler, st: &mut State);
    fn remove(s: &Scheduler, st: &mut State, key: &str);
    /// The keys the state holds, pruned after a relist when the list no longer has them.
    fn known(st: &State) -> Vec<String>;
}

impl Watched for Node {
    const WHAT: &'static str = "nodes";

    fn key(&self) -> String {
        self.metadata.name.clone().unwrap_or_default()
    }

    fn apply(self, s: &Scheduler, st: &mut State) {
        st.cache.set_node(self);
        s.queue.cluster_changed();
    }

    fn remove(s: &Scheduler, st: &mut State, key: &str) {
        st.cache.remove_node(key);
        s.queue.cluster_changed();
    }

    fn known(st: &State) -> Vec<String> {
        st.cache.node_names()
    }
}

impl Watched for Pod {
    const WHAT: &'static str = "pods";

    fn key(&self) -> String {
        pod_key(self)
    }

    fn apply(self, s: &Scheduler, st: &mut State) {
        s.apply_pod(st, self);
    }

    fn remove(s: &Scheduler, st: &mut State, key: &str) {
        s.remove_pod(st, key);
    }

    fn known(st: &State) -> Vec<String> {
        // Pods bound a moment ago may not be in the list yet.
        st.cache
            .pod_keys()
            .into_iter()
            .filter(|k| !st.cache.is_assumed(k))
            .collect()
    }
}

/// Namespace labels, for affinity terms' namespace selectors.
impl Watched for Namespace {
    const WHAT: &'static str = "namespaces";

    fn key(&self) -> String {
        self.metadata.name.clone().unwrap_or_default()
    }

    fn apply(self, s: &Scheduler, st: &mut State) {
        let labels = self.metadata.labels.unwrap_or_default();
        let name = self.metadata.name.unwrap_or_default();
        if st.cache.namespaces.get(&name) != Some(&labels) {
            st.cache.namespaces.insert(name, labels);
            s.queue.cluster_changed();
        }
    }

    fn remove(_: &Scheduler, st: &mut State, key: &str) {
        st.cache.namespaces.remove(key);
    }

    fn known(st: &State) -> Vec<String> {
        st.cache.namespaces.keys().cloned().collect()
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
            resolvable: vec!["n2".into(), "n3".into()],
            post_filter: Some(
                "preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod.".into(),
            ),
        };
        assert_eq!(
            fit.to_string(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu. \
             preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod."
        );
        assert_eq!(nodes_to_find(50), 50);
        assert_eq!(nodes_to_find(1000), 420);
        assert_eq!(nodes_to_find(5000), 500);
    }
}
