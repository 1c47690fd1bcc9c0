//! The ReplicaSet controller: keeps as many active pods as `spec.replicas` asks for, creating
//! them from the template in slow-start batches (1, 2, 4, …) and deleting the least useful first
//! (unscheduled, pending, not ready, newest); adopts orphans its selector matches and releases
//! owned pods it no longer matches; reports replicas, fullyLabeled, ready and available replicas
//! and the observed generation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::pods::{is_active, is_available, is_ready};
use super::{
    Context, ControllerError, controller_ref, controller_uid, drive, error_policy, selects,
};

pub async fn run(client: Client) {
    let ctx = Context::new(client.clone(), "replicaset-controller");
    let controller = Controller::new(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    // One pod watch: an owned pod wakes its ReplicaSet, an orphan every ReplicaSet that selects it.
    let stream = controller
        .watches(
            Api::<Pod>::all(client),
            watcher::Config::default(),
            move |pod: Pod| {
                let ns = pod.namespace().unwrap_or_default();
                match pod
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|o| o.controller == Some(true))
                {
                    Some(o) if o.kind == "ReplicaSet" => {
                        vec![ObjectRef::new(&o.name).within(&ns)]
                    }
                    Some(_) => vec![],
                    None => {
                        let empty = BTreeMap::new();
                        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
                        store
                            .state()
                            .iter()
                            .filter(|rs| rs.namespace().as_deref() == Some(ns.as_str()))
                            .filter(|rs| {
                                rs.spec
                                    .as_ref()
                                    .is_some_and(|s| selects(&s.selector, labels))
                            })
                            .map(|rs| ObjectRef::from_obj(&**rs))
                            .collect()
                    }
                }
            },
        )
        .run(reconcile, error_policy, ctx);
    drive("replicaset", stream).await;
}

/// The pod a ReplicaSet creates from its template.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.name_any())),
            namespace: rs.namespace(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![controller_ref(rs)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Deletion order: unscheduled before scheduled, pending before running, not ready before
/// ready, newer before older.
fn deletion_rank(p: &Pod) -> (bool, u8, bool, std::cmp::Reverse<Option<Timestamp>>) {
    let scheduled = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        _ => 2,
    };
    (
        scheduled,
        phase,
        is_ready(p),
        std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)),
    )
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = rs.namespace().unwrap_or_default();
    let spec = rs.spec.as_ref().ok_or_else(|| {
        ControllerError::Invalid(format!("replicaset {ns}/{} has no spec", rs.name_any()))
    })?;
    let uid = rs.uid().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let empty = BTreeMap::new();
    let mut owned = Vec::new();
    for p in api.list(&ListParams::default()).await?.items {
        let labels = p.metadata.labels.as_ref().unwrap_or(&empty);
        let matches = selects(&spec.selector, labels);
        match controller_uid(&p) {
            Some(u) if u == uid && matches => owned.push(p),
            Some(u) if u == uid => {
                // Released: drop our reference.
                let refs: Vec<_> = p
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .filter(|o| o.uid != uid)
                    .cloned()
                    .collect();
                let patch = json!({"metadata": {"ownerReferences": refs, "uid": p.metadata.uid}});
                api.patch(
                    &p.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            }
            None if matches && is_active(&p) && rs.metadata.deletion_timestamp.is_none() => {
                let mut refs = p.metadata.owner_references.clone().unwrap_or_default();
                refs.push(controller_ref(&*rs));
                let patch = json!({"metadata": {"ownerReferences": refs, "uid": p.metadata.uid}});
                let adopted = api
                    .patch(
                        &p.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
                tracing::info!(replicaset = %rs.name_any(), pod = %adopted.name_any(), "adopted");
                owned.push(adopted);
            }
            _ => {}
        }
    }
    let mut active: Vec<&Pod> = owned.iter().filter(|p| is_active(p)).collect();
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    if active.len() < want {
        let template = pod_from_template(&rs);
        let pp = PostParams::default();
        let mut remaining = want - active.len();
        let mut batch = 1;
        while remaining > 0 {
            let n = batch.min(remaining);
            let results = join_all((0..n).map(|_| api.create(&pp, &template))).await;
            for r in results {
                r?;
            }
            remaining -= n;
            batch *= 2;
        }
        tracing::info!(replicaset = %rs.name_any(), created = want - active.len(), "created pods");
    } else if active.len() > want {
        active.sort_by_key(|p| deletion_rank(p));
        let victims = &active[..active.len() - want];
        let dp = DeleteParams::default();
        let results = join_all(
            victims
                .iter()
                .map(|p| api.delete(p.metadata.name.as_deref().unwrap_or_default(), &dp)),
        )
        .await;
        for r in results {
            match r {
                Ok(_) => {}
                Err(e) if super::is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        tracing::info!(replicaset = %rs.name_any(), deleted = victims.len(), "deleted pods");
    }
    update_status(&rs, &owned, &ctx).await
}

async fn update_status(
    rs: &ReplicaSet,
    owned: &[Pod],
    ctx: &Context,
) -> Result<Action, ControllerError> {
    let spec = rs.spec.as_ref();
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let template_labels = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let now = Timestamp::now();
    let active: Vec<&Pod> = owned.iter().filter(|p| is_active(p)).collect();
    let count = |f: &dyn Fn(&Pod) -> bool| active.iter().filter(|p| f(p)).count() as i32;
    let ready = count(&is_ready);
    let available = count(&|p| is_available(p, min_ready, now));
    let fully_labeled = count(&|p| {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        template_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    });
    let status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": rs.metadata.generation,
    });
    let current = rs.status.as_ref();
    let same = current.is_some_and(|c| {
        c.replicas == active.len() as i32
            && c.fully_labeled_replicas.unwrap_or(0) == fully_labeled
            && c.ready_replicas.unwrap_or(0) == ready
            && c.available_replicas.unwrap_or(0) == available
            && c.observed_generation == rs.metadata.generation
    });
    if !same {
        let api: Api<ReplicaSet> =
            Api::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default());
        api.patch_status(
            &rs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await?;
    }
    // Pods that are ready but not yet available become available with time alone.
    Ok(if available < ready {
        Action::requeue(Duration::from_secs(1))
    } else {
        Action::requeue(Duration::from_secs(300))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_useful_pods_are_deleted_first() {
        let pod = |name: &str,
                   node: Option<&str>,
                   phase: &str,
                   ready: bool,
                   created: &str|
         -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name, "creationTimestamp": created},
                "spec": {"containers": [], "nodeName": node},
                "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
            }))
            .unwrap()
        };
        let mut pods = [
            pod(
                "old-ready",
                Some("n"),
                "Running",
                true,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "new-ready",
                Some("n"),
                "Running",
                true,
                "2026-01-02T00:00:00Z",
            ),
            pod(
                "unready",
                Some("n"),
                "Running",
                false,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "pending",
                Some("n"),
                "Pending",
                false,
                "2026-01-01T00:00:00Z",
            ),
            pod(
                "unscheduled",
                None,
                "Pending",
                false,
                "2026-01-01T00:00:00Z",
            ),
        ];
        pods.sort_by_key(deletion_rank);
        let order: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        assert_eq!(
            order,
            [
                "unscheduled",
                "pending",
                "unready",
                "new-ready",
                "old-ready"
            ]
        );
    }
}
