//! skiff-controllers: kube-controller-manager's controllers as a library that talks to the
//! cluster only through kube-rs. It may depend on skiff-k8s and skiff-client, never on the API
//! server or the store.
//!
//! The controllers, each a kube-rs `Controller` (watcher → reflector → reconcile) whose
//! `reconcile(object) -> Action` reads the current state straight from the API server, so that a
//! decision never rests on a cache that lags behind its own writes.

pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod garbagecollector;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod pod_control;
pub mod podgc;
pub mod pods;
pub mod replicaset;
pub mod ttl_after_finished;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::api::ApiResource;
use kube::core::{Selector, SelectorExt};
use kube::discovery::{ApiCapabilities, Discovery};
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};
use skiff_client::is_not_found;
use skiff_k8s::time::now;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
}

/// What every reconcile gets: a client and an event recorder.
pub struct Context {
    pub client: Client,
    pub recorder: skiff_client::events::Recorder,
}

impl Context {
    pub fn new(client: Client, controller: &str) -> Arc<Self> {
        let recorder = skiff_client::events::Recorder::new(client.clone(), controller);
        Arc::new(Context { client, recorder })
    }
}

/// Requeue policy after a failed reconcile: retry soon; conflicts resolve on the next read.
pub fn error_policy<K>(_obj: Arc<K>, err: &ControllerError, _ctx: Arc<Context>) -> Action {
    tracing::debug!(error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_millis(500))
}

/// Whether `selector` (a workload's, never empty) selects `labels`.
pub fn selects(
    selector: &LabelSelector,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    if selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|m| m.is_empty())
    {
        return false;
    }
    Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels))
}

/// The owner reference a controller puts on what it creates.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The uid of the object's controlling owner.
pub fn controller_uid<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// FNV-1a, 32 bits: the hash kube-controller-manager names ReplicaSets and revisions with.
fn fnv32a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The hash of a pod template (`pod-template-hash`, `controller-revision-hash`; kube's
/// `ComputeHash`), salted by the owner's `status.collisionCount`, in the alphabet Kubernetes uses
/// for names (no vowels, no look-alike digits).
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut data = serde_json::to_vec(template).unwrap_or_default();
    if let Some(c) = collision_count {
        data.extend_from_slice(c.to_string().as_bytes());
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    fnv32a(&data)
        .to_string()
        .bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

/// kube's `ControllerRefManager`: of `candidates`, the objects `owner` controls after adopting
/// the orphans its `selector` matches (unless the owner or the orphan is being deleted) and
/// releasing the owned ones it no longer matches.
pub async fn claim<O, K>(
    owner: &O,
    selector: &LabelSelector,
    api: &kube::Api<K>,
    candidates: Vec<K>,
) -> Result<Vec<K>, kube::Error>
where
    O: Resource<DynamicType = ()>,
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let uid = owner.uid().unwrap_or_default();
    let empty = std::collections::BTreeMap::new();
    let mut owned = Vec::new();
    for obj in candidates {
        let matches = selects(selector, obj.meta().labels.as_ref().unwrap_or(&empty));
        let refs = obj.meta().owner_references.clone().unwrap_or_default();
        let refs = match controller_uid(&obj) {
            Some(u) if u == uid && matches => {
                owned.push(obj);
                continue;
            }
            Some(u) if u == uid => refs.into_iter().filter(|o| o.uid != uid).collect(),
            None if matches
                && obj.meta().deletion_timestamp.is_none()
                && owner.meta().deletion_timestamp.is_none() =>
            {
                let mut refs = refs;
                refs.push(controller_ref(owner));
                refs
            }
            _ => continue,
        };
        // The uid guards against acting on a namesake created since the list.
        let patch =
            serde_json::json!({"metadata": {"ownerReferences": refs, "uid": obj.meta().uid}});
        let patched = api
            .patch(
                &obj.name_any(),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await?;
        if controller_uid(&patched) == Some(uid.as_str()) {
            tracing::info!(owner = %owner.name_any(), adopted = %patched.name_any(), "adopted");
            owned.push(patched);
        }
    }
    Ok(owned)
}

/// Drains a controller stream, logging failures.
pub async fn drive<S, T, E>(name: &'static str, stream: S)
where
    S: futures::Stream<Item = Result<T, E>>,
    E: std::fmt::Display,
{
    stream
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(controller = name, error = %e, "reconcile");
            }
        })
        .await;
}

/// Every resource the API server serves, with its verbs (from aggregated discovery), for the
/// controllers that work on all of them.
pub async fn served_resources(
    client: &Client,
) -> Result<Vec<(ApiResource, ApiCapabilities)>, kube::Error> {
    let discovery = Discovery::new(client.clone()).run_aggregated().await?;
    Ok(discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .collect())
}

/// The controllers, by the names kube-controller-manager's `--controllers` uses.
pub const NAMES: &[&str] = &[
    "replicaset-controller",
    "deployment-controller",
    "daemonset-controller",
    "job-controller",
    "ttl-after-finished-controller",
    // One controller here keeps both Endpoints and EndpointSlices.
    "endpoints-controller",
    "endpointslice-controller",
    "node-ipam-controller",
    "node-lifecycle-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "pod-garbage-collector-controller",
];

/// Which controllers run, as kube-controller-manager's `--controllers` says: `*` for all,
/// `name` to enable one, `-name` to disable one; the first mention of a name wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection(u32);

impl Selection {
    pub fn parse(items: &[String]) -> Result<Self, String> {
        for item in items {
            let name = item.strip_prefix('-').unwrap_or(item);
            if item != "*" && !NAMES.contains(&name) {
                return Err(format!("{item:?} is not in the list of known controllers"));
            }
        }
        let enabled = |name: &str| {
            for i in items {
                if i == name {
                    return true;
                }
                if i.strip_prefix('-') == Some(name) {
                    return false;
                }
            }
            items.iter().any(|i| i == "*")
        };
        Ok(Selection(
            NAMES
                .iter()
                .enumerate()
                .filter(|(_, n)| enabled(n))
                .fold(0, |bits, (i, _)| bits | 1 << i),
        ))
    }

    pub fn has(self, name: &str) -> bool {
        NAMES
            .iter()
            .position(|n| *n == name)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }
}

impl Default for Selection {
    fn default() -> Self {
        Selection((1 << NAMES.len()) - 1)
    }
}

/// Settings of the controllers that have any, and which run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Config {
    pub cluster_cidr: nodeipam::ClusterCidr,
    pub lifecycle: nodelifecycle::LifecycleConfig,
    pub pod_gc: podgc::PodGcConfig,
    pub selection: Selection,
}

/// Runs the selected controllers until the process ends.
pub async fn run(client: Client, cfg: Config) {
    let on = |name: &str| cfg.selection.has(name);
    let c = || client.clone();
    let mut running: Vec<BoxFuture<'static, ()>> = Vec::new();
    if on("replicaset-controller") {
        running.push(Box::pin(replicaset::run(c())));
    }
    if on("deployment-controller") {
        running.push(Box::pin(deployment::run(c())));
    }
    if on("daemonset-controller") {
        running.push(Box::pin(daemonset::run(c())));
    }
    if on("job-controller") {
        running.push(Box::pin(job::run(c())));
    }
    if on("ttl-after-finished-controller") {
        running.push(Box::pin(ttl_after_finished::run(c())));
    }
    if on("endpoints-controller") || on("endpointslice-controller") {
        running.push(Box::pin(endpoints::run(c())));
    }
    if on("node-ipam-controller") {
        running.push(Box::pin(nodeipam::run(c(), cfg.cluster_cidr)));
    }
    if on("node-lifecycle-controller") {
        running.push(Box::pin(nodelifecycle::run(c(), cfg.lifecycle)));
    }
    if on("garbage-collector-controller") {
        running.push(Box::pin(garbagecollector::run(c())));
    }
    if on("namespace-controller") {
        running.push(Box::pin(namespace::run(c())));
    }
    if on("pod-garbage-collector-controller") {
        running.push(Box::pin(podgc::run(c(), cfg.pod_gc)));
    }
    if running.is_empty() {
        // Nothing selected: nothing to end either.
        futures::future::pending::<()>().await;
    }
    futures::future::join_all(running).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_are_selected_as_kube_controller_manager_does() {
        let sel =
            |s: &[&str]| Selection::parse(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        let all = sel(&["*"]).unwrap();
        assert_eq!(all, Selection::default());
        let some = sel(&["garbage-collector-controller", "namespace-controller"]).unwrap();
        assert!(some.has("namespace-controller") && !some.has("deployment-controller"));
        let but = sel(&["*", "-job-controller"]).unwrap();
        assert!(but.has("deployment-controller") && !but.has("job-controller"));
        assert_eq!(
            sel(&["bogus"]).unwrap_err(),
            "\"bogus\" is not in the list of known controllers"
        );
    }
}
