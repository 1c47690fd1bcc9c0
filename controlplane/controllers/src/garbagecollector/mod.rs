//! The garbage collector (kube-controller-manager's `garbage-collector-controller`). It watches
//! the metadata of every served resource that can be listed, watched and deleted (events
//! aside), keeps the ownership [`graph`], and:
//!
//! - deletes an object once none of its owners exists (an owner reference whose object is
//!   missing, or has another uid, is dangling); an object that still has an owner only loses its
//!   dangling references;
//! - for an owner deleting in the foreground (`foregroundDeletion`), deletes its dependents —
//!   in the foreground too when they have dependents of their own — and removes the finalizer
//!   once no dependent with `blockOwnerDeletion` remains;
//! - for an owner deleting with `orphan`, removes its reference from every dependent, then the
//!   finalizer.
//!
//! Every decision reads the objects concerned from the API server first; the graph only says
//! what to look at. The first list of every watch rebuilds the graph, so a restart finishes what
//! was left undone, and an owner seen after its dependent is a virtual node until found.

mod graph;
mod queue;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, PartialObjectMeta, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};
use kube::core::DynamicResourceScope;
use kube::discovery::Scope;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as Recorded, EventType};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde_json::{Value, json};
use skiff_client::events::Recorder;
use tokio::sync::oneshot;

use self::graph::{Graph, Identity, Work, deleting_dependents, has_finalizer};
use self::queue::WorkQueue;
use super::{ControllerError, is_not_found, served_resources};
use skiff_k8s::finalizers::{FOREGROUND as FOREGROUND_FINALIZER, ORPHAN as ORPHAN_FINALIZER};

/// Resources the collector leaves alone, as kube does.
const IGNORED: &[(&str, &str)] = &[("", "events"), ("events.k8s.io", "events")];

/// Concurrent lookups and deletions.
const WORKERS: usize = 8;

/// What became of one piece of work.
enum Outcome {
    Done,
    /// Look again later (a virtual node whose object exists but its watch has not shown).
    Again,
}

/// How an owner reference stands.
enum Owner {
    /// The owner exists and is not deleting in the foreground.
    Solid,
    /// The owner exists and waits, in the foreground, for its dependents to go.
    Waiting,
    /// No object with the reference's uid exists.
    Dangling,
}

/// The served resources by what owner references name: group and kind.
struct Kinds(HashMap<(String, String), (ApiResource, bool)>);

impl Kinds {
    fn resolve(&self, api_version: &str, kind: &str) -> Option<&(ApiResource, bool)> {
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        self.0.get(&(group.to_string(), kind.to_string()))
    }
}

struct Collector {
    client: Client,
    kinds: Kinds,
    graph: Mutex<Graph>,
    queue: Arc<WorkQueue<Work>>,
    recorder: Recorder,
}

/// Runs the collector until the process ends.
pub async fn run(client: Client) {
    // The served resources are fixed (no custom resources), so one discovery is enough.
    let served = loop {
        match served_resources(&client).await {
            Ok(s) => break s,
            Err(e) => tracing::debug!(error = %e, "garbage collector: discovery"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    };
    let kinds = Kinds(
        served
            .iter()
            .map(|(ar, caps)| {
                let namespaced = matches!(caps.scope, Scope::Namespaced);
                (
                    (ar.group.clone(), ar.kind.clone()),
                    (ar.clone(), namespaced),
                )
            })
            .collect(),
    );
    let gc = Arc::new(Collector {
        recorder: Recorder::new(client.clone(), "garbage-collector-controller"),
        client,
        kinds,
        graph: Mutex::new(Graph::default()),
        queue: WorkQueue::new(),
    });
    let watched: Vec<ApiResource> = served
        .into_iter()
        .filter(|(ar, caps)| {
            ["list", "watch", "delete"]
                .iter()
                .all(|v| caps.supports_operation(v))
                && !IGNORED.contains(&(ar.group.as_str(), ar.plural.as_str()))
        })
        .map(|(ar, _)| ar)
        .collect();
    let (listed, all_listed): (Vec<_>, Vec<_>) =
        watched.iter().map(|_| oneshot::channel::<()>()).unzip();
    let monitors = watched
        .into_iter()
        .zip(listed)
        .map(|(ar, listed)| gc.clone().monitor(ar, listed));
    // No decision before the whole graph is known: an owner's dependents may be in any
    // resource (after a restart, an orphaning owner would otherwise lose dependents not yet
    // listed).
    let workers = async {
        futures::future::join_all(all_listed).await;
        futures::future::join_all((0..WORKERS).map(|_| gc.clone().work())).await
    };
    futures::join!(futures::future::join_all(monitors), workers);
}

impl Collector {
    fn graph(&self) -> MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enqueue(&self, work: Vec<Work>) {
        for w in work {
            self.queue.add(w);
        }
    }

    /// Follows one resource's metadata into the graph. After every (re)list, what was in the
    /// graph but not listed is gone.
    async fn monitor(self: Arc<Self>, ar: ApiResource, listed_once: oneshot::Sender<()>) {
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(self.client.clone(), &ar);
        let identity = |meta: &ObjectMeta| Identity {
            api_version: ar.api_version.clone(),
            kind: ar.kind.clone(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
        };
        let mut listed_once = Some(listed_once);
        let mut listed: HashSet<String> = HashSet::new();
        let mut events =
            std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
        while let Some(event) = events.next().await {
            let work = match event {
                Ok(Event::Init) => {
                    listed.clear();
                    Vec::new()
                }
                Ok(Event::InitApply(o)) => {
                    listed.insert(o.metadata.uid.clone().unwrap_or_default());
                    self.graph().observe(identity(&o.metadata), &o.metadata)
                }
                Ok(Event::Apply(o)) => self.graph().observe(identity(&o.metadata), &o.metadata),
                Ok(Event::Delete(o)) => self
                    .graph()
                    .remove(o.metadata.uid.as_deref().unwrap_or_default()),
                Ok(Event::InitDone) => {
                    let mut g = self.graph();
                    let gone: Vec<String> = g
                        .observed_of(&ar.api_version, &ar.kind)
                        .into_iter()
                        .filter(|uid| !listed.contains(uid))
                        .collect();
                    listed.clear();
                    if let Some(tx) = listed_once.take() {
                        let _ = tx.send(());
                    }
                    gone.iter().flat_map(|uid| g.remove(uid)).collect()
                }
                Err(e) => {
                    tracing::debug!(resource = %ar.plural, error = %e, "garbage collector: watch");
                    Vec::new()
                }
            };
            self.enqueue(work);
        }
    }

    async fn work(self: Arc<Self>) {
        loop {
            let item = self.queue.next().await;
            let result = match &item {
                Work::AttemptToDelete(uid) => self.attempt_to_delete(uid).await,
                Work::AttemptToOrphan(uid) => self.attempt_to_orphan(uid).await,
            };
            match result {
                Ok(Outcome::Done) => self.queue.forget(&item),
                Ok(Outcome::Again) => self.queue.retry(item.clone()),
                Err(e) => {
                    tracing::debug!(?item, error = %e, "garbage collector: retrying");
                    self.queue.retry(item.clone());
                }
            }
            self.queue.done(&item);
        }
    }

    /// The API of the object `id` names (its resource, its namespace if it has one).
    fn api_for<K>(&self, id: &Identity) -> Result<Api<K>, ControllerError>
    where
        K: Resource<DynamicType = ApiResource, Scope = DynamicResourceScope>,
    {
        let unknown = || {
            ControllerError::Invalid(format!(
                "no served resource for {} {}",
                id.api_version, id.kind
            ))
        };
        let (ar, namespaced) = self
            .kinds
            .resolve(&id.api_version, &id.kind)
            .ok_or_else(unknown)?;
        Ok(match (namespaced, &id.namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, ar),
            (true, None) => return Err(unknown()),
            (false, _) => Api::all_with(self.client.clone(), ar),
        })
    }

    /// The metadata of the object `id` names, if it exists with that uid.
    async fn latest(&self, id: &Identity) -> Result<Option<ObjectMeta>, ControllerError> {
        let api: Api<PartialObjectMeta<DynamicObject>> = self.api_for(id)?;
        Ok(api
            .get_opt(&id.name)
            .await?
            .map(|o| o.metadata)
            .filter(|m| m.uid.as_deref() == Some(id.uid.as_str())))
    }

    async fn attempt_to_delete(&self, uid: &str) -> Result<Outcome, ControllerError> {
        let Some(node) = self.graph().get(uid).cloned() else {
            return Ok(Outcome::Done);
        };
        // Deleting already (and not waiting for dependents): its deletion will be observed.
        if node.observed && node.being_deleted() && !node.deleting_dependents() {
            return Ok(Outcome::Done);
        }
        let Some(latest) = self.latest(&node.identity).await? else {
            let work = self.graph().absent(uid);
            self.enqueue(work);
            return Ok(Outcome::Done);
        };
        // A virtual node found to exist: look again until its watch shows it.
        let outcome = if node.observed {
            Outcome::Done
        } else {
            Outcome::Again
        };
        if deleting_dependents(&latest) {
            self.process_deleting_dependents(&node.identity).await?;
            return Ok(outcome);
        }
        let owners = latest.owner_references.clone().unwrap_or_default();
        if owners.is_empty() {
            return Ok(outcome);
        }
        let (mut solid, mut dangling, mut waiting) = (0, HashSet::new(), HashSet::new());
        for r in &owners {
            match self.owner(r, &node.identity).await? {
                Owner::Solid => solid += 1,
                Owner::Dangling => {
                    dangling.insert(r.uid.clone());
                }
                Owner::Waiting => {
                    waiting.insert(r.uid.clone());
                }
            }
        }
        let has_dependents = node.dependents.iter().next().is_some();
        if solid > 0 {
            // An owner remains: the object stays, without its references to the others.
            if !dangling.is_empty() || !waiting.is_empty() {
                self.edit_owner_references(&node.identity, |refs| {
                    refs.retain(|r| !dangling.contains(&r.uid) && !waiting.contains(&r.uid));
                })
                .await?;
            }
        } else if !waiting.is_empty() && has_dependents {
            // An owner waits for this object, which has dependents of its own: delete it in the
            // foreground too. A dependent already doing so could close a cycle of blocking
            // references; unblock this object's references first.
            let cycle = {
                let g = self.graph();
                node.dependents
                    .iter()
                    .any(|d| g.get(d).is_some_and(|n| n.deleting_dependents()))
            };
            if cycle {
                self.edit_owner_references(&node.identity, |refs| {
                    for r in refs
                        .iter_mut()
                        .filter(|r| r.block_owner_deletion == Some(true))
                    {
                        r.block_owner_deletion = Some(false);
                    }
                })
                .await?;
            }
            self.delete(&node.identity, PropagationPolicy::Foreground)
                .await?;
        } else {
            let policy = if has_finalizer(&latest, ORPHAN_FINALIZER) {
                PropagationPolicy::Orphan
            } else if has_finalizer(&latest, FOREGROUND_FINALIZER) {
                PropagationPolicy::Foreground
            } else {
                PropagationPolicy::Background
            };
            self.delete(&node.identity, policy).await?;
        }
        Ok(outcome)
    }

    /// An owner deleting in the foreground: done when no dependent blocks it any more.
    async fn process_deleting_dependents(&self, id: &Identity) -> Result<(), ControllerError> {
        let blocking: Vec<(String, bool)> = self
            .graph()
            .blocking_dependents(&id.uid)
            .iter()
            .map(|n| (n.identity.uid.clone(), n.deleting_dependents()))
            .collect();
        if blocking.is_empty() {
            return self.remove_finalizer(id, FOREGROUND_FINALIZER).await;
        }
        for (uid, deleting_its_own) in blocking {
            if !deleting_its_own {
                self.queue.add(Work::AttemptToDelete(uid));
            }
        }
        Ok(())
    }

    /// How the owner `r` of the dependent `dependent` stands, read from the API server.
    async fn owner(
        &self,
        r: &OwnerReference,
        dependent: &Identity,
    ) -> Result<Owner, ControllerError> {
        let namespaced = self
            .kinds
            .resolve(&r.api_version, &r.kind)
            .ok_or_else(|| {
                ControllerError::Invalid(format!(
                    "no served resource for {} {}",
                    r.api_version, r.kind
                ))
            })?
            .1;
        if namespaced && dependent.namespace.is_none() {
            // A cluster-scoped object cannot be owned by a namespaced one: the reference can
            // never resolve, and the object is never collected for it.
            self.report_invalid_namespace(r, dependent).await;
            return Ok(Owner::Solid);
        }
        let id = Identity {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            namespace: dependent.namespace.clone().filter(|_| namespaced),
            name: r.name.clone(),
            uid: r.uid.clone(),
        };
        Ok(match self.latest(&id).await? {
            None => Owner::Dangling,
            Some(m) if deleting_dependents(&m) => Owner::Waiting,
            Some(_) => Owner::Solid,
        })
    }

    async fn report_invalid_namespace(&self, r: &OwnerReference, dependent: &Identity) {
        let reference = ObjectReference {
            api_version: Some(dependent.api_version.clone()),
            kind: Some(dependent.kind.clone()),
            name: Some(dependent.name.clone()),
            uid: Some(dependent.uid.clone()),
            ..Default::default()
        };
        let event = Recorded {
            type_: EventType::Warning,
            reason: "OwnerRefInvalidNamespace".into(),
            note: Some(format!(
                "ownerRef [{}/{}, namespace: , name: {}, uid: {}] does not exist in namespace \"\"",
                r.api_version, r.kind, r.name, r.uid
            )),
            action: "GarbageCollect".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::debug!(error = %e, "recording OwnerRefInvalidNamespace");
        }
    }

    /// Deletes the object `id` names, only if it still has that uid.
    async fn delete(
        &self,
        id: &Identity,
        policy: PropagationPolicy,
    ) -> Result<(), ControllerError> {
        let api: Api<DynamicObject> = self.api_for(id)?;
        let params = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions {
                uid: Some(id.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        tracing::debug!(kind = %id.kind, name = %id.name, ?params.propagation_policy, "garbage collector: deleting");
        match api.delete(&id.name, &params).await {
            Ok(_) => Ok(()),
            // Gone, or replaced by another object of the same name.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Orphans the dependents of the owner `uid`, then lets it go.
    async fn attempt_to_orphan(&self, uid: &str) -> Result<Outcome, ControllerError> {
        let (owner, dependents) = {
            let g = self.graph();
            let Some(owner) = g.get(uid) else {
                return Ok(Outcome::Done);
            };
            let dependents: Vec<Identity> = g
                .dependents(uid)
                .filter_map(|d| g.get(&d).map(|n| n.identity.clone()))
                .collect();
            (owner.identity.clone(), dependents)
        };
        for d in &dependents {
            self.edit_owner_references(d, |refs| refs.retain(|r| r.uid != uid))
                .await?;
        }
        self.remove_finalizer(&owner, ORPHAN_FINALIZER).await?;
        Ok(Outcome::Done)
    }

    async fn edit_owner_references(
        &self,
        id: &Identity,
        edit: impl Fn(&mut Vec<OwnerReference>),
    ) -> Result<(), ControllerError> {
        self.edit_metadata(id, |m| {
            let before = m.owner_references.clone().unwrap_or_default();
            let mut after = before.clone();
            edit(&mut after);
            (after != before).then(|| json!({"ownerReferences": null_if_empty(&after)}))
        })
        .await
    }

    async fn remove_finalizer(
        &self,
        id: &Identity,
        finalizer: &str,
    ) -> Result<(), ControllerError> {
        self.edit_metadata(id, |m| {
            let before = m.finalizers.clone().unwrap_or_default();
            let after: Vec<String> = before.iter().filter(|f| *f != finalizer).cloned().collect();
            (after != before).then(|| json!({"finalizers": null_if_empty(&after)}))
        })
        .await
    }

    /// Patches the metadata fields `change` returns for the current object (nothing when it
    /// returns `None`, or the object is gone or replaced), guarded by its resourceVersion and
    /// retried on conflicts.
    async fn edit_metadata(
        &self,
        id: &Identity,
        change: impl Fn(&ObjectMeta) -> Option<Value>,
    ) -> Result<(), ControllerError> {
        let api: Api<DynamicObject> = self.api_for(id)?;
        let mut attempts = 0;
        loop {
            let Some(meta) = self.latest(id).await? else {
                return Ok(());
            };
            let Some(mut fields) = change(&meta) else {
                return Ok(());
            };
            fields["uid"] = json!(id.uid);
            fields["resourceVersion"] = json!(meta.resource_version);
            let patch = Patch::Merge(json!({"metadata": fields}));
            attempts += 1;
            match api.patch(&id.name, &PatchParams::default(), &patch).await {
                Ok(_) => return Ok(()),
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 && attempts < 5 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn null_if_empty<T: serde::Serialize>(items: &[T]) -> Value {
    if items.is_empty() {
        Value::Null
    } else {
        json!(items)
    }
}
