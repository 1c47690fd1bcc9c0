//! The ReplicaSet controller: keeps as many active pods as `spec.replicas` asks for, creating
//! them from the template in slow-start batches and deleting first those kube's
//! `ActivePodsWithRanks` order gives up first (see `pods::deletion_key`), with a
//! `SuccessfulCreate`/`SuccessfulDelete` event per pod; adopts orphans its selector matches and
//! releases owned pods it no longer matches; reports replicas, fullyLabeled, ready and available
//! replicas, the observed generation and, while creating or deleting fails, a `ReplicaFailure`
//! condition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use super::pod_control::{self, BURST};
use super::pods::{ScaleDown, deletion_key, is_active, is_available, is_ready};
use super::{
    Context, ControllerError, claim, controller_ref, controller_uid, drive, error_policy, selects,
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
fn pod_from_template(rs: &ReplicaSet) -> Pod {
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

/// The active pods of this ReplicaSet and of its siblings (the ReplicaSets of the same
/// controller), whose spread over nodes decides which pods go first.
async fn related_pods<'a>(
    rs: &ReplicaSet,
    ctx: &Context,
    all: &'a [Pod],
) -> Result<Vec<&'a Pod>, kube::Error> {
    let mut owners = vec![rs.uid().unwrap_or_default()];
    if let Some(controller) = controller_uid(rs) {
        let siblings =
            Api::<ReplicaSet>::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default())
                .list(&ListParams::default())
                .await?;
        owners.extend(
            siblings
                .items
                .iter()
                .filter(|s| controller_uid(*s) == Some(controller))
                .filter_map(|s| s.uid()),
        );
    }
    Ok(all
        .iter()
        .filter(|p| controller_uid(*p).is_some_and(|u| owners.iter().any(|o| o == u)))
        .collect())
}

/// Creates or deletes pods towards `spec.replicas`, at most `BURST` per sync.
async fn manage_replicas(
    rs: &ReplicaSet,
    ctx: &Context,
    owned: &[Pod],
    all: &[Pod],
) -> Result<(), kube::Error> {
    let ns = rs.namespace().unwrap_or_default();
    let want = rs
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0) as usize;
    if owned.len() < want {
        let template = pod_from_template(rs);
        let missing = (want - owned.len()).min(BURST);
        let (created, err) =
            pod_control::slow_start(missing, |_| pod_control::create(ctx, rs, &template)).await;
        tracing::info!(replicaset = %rs.name_any(), created, "created pods");
        return err.map_or(Ok(()), Err);
    }
    if owned.len() > want {
        let excess = (owned.len() - want).min(BURST);
        let related = related_pods(rs, ctx, all).await?;
        let scale_down = ScaleDown::new(related, Timestamp::now());
        let mut victims: Vec<&Pod> = owned.iter().collect();
        victims.sort_by_cached_key(|p| deletion_key(p, Some(&scale_down)));
        let names: Vec<String> = victims[..excess].iter().map(|p| p.name_any()).collect();
        pod_control::delete_all(ctx, rs, &ns, &names).await?;
        tracing::info!(replicaset = %rs.name_any(), deleted = names.len(), "deleted pods");
    }
    Ok(())
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    let ns = rs.namespace().unwrap_or_default();
    if rs.spec.is_none() {
        return Err(ControllerError::Invalid(format!(
            "replicaset {ns}/{} has no spec",
            rs.name_any()
        )));
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let all = api.list(&ListParams::default()).await?.items;
    let active: Vec<Pod> = all.iter().filter(|p| is_active(p)).cloned().collect();
    let selector = &rs.spec.as_ref().expect("checked above").selector;
    let owned = claim(&*rs, selector, &api, active).await?;
    let manage_err = if rs.metadata.deletion_timestamp.is_none() {
        manage_replicas(&rs, &ctx, &owned, &all).await.err()
    } else {
        None
    };
    let action = update_status(&rs, &owned, manage_err.as_ref(), &ctx).await?;
    match manage_err {
        Some(e) => Err(e.into()),
        None => Ok(action),
    }
}

/// The `ReplicaFailure` condition while creating or deleting fails, none otherwise.
fn failure_condition(rs: &ReplicaSet, owned: usize, err: Option<&kube::Error>) -> Option<Value> {
    let previous = rs
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "ReplicaFailure"));
    match (err, previous) {
        (None, _) => None,
        (Some(_), Some(p)) => Some(serde_json::to_value(p).unwrap_or_default()),
        (Some(e), None) => {
            let want = rs
                .spec
                .as_ref()
                .and_then(|s| s.replicas)
                .unwrap_or(1)
                .max(0) as usize;
            let reason = if owned < want {
                "FailedCreate"
            } else {
                "FailedDelete"
            };
            Some(
                json!({"type": "ReplicaFailure", "status": "True", "reason": reason,
                "message": pod_control::error_message(e),
                "lastTransitionTime": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()}),
            )
        }
    }
}

async fn update_status(
    rs: &ReplicaSet,
    owned: &[Pod],
    manage_err: Option<&kube::Error>,
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
    let count = |f: &dyn Fn(&Pod) -> bool| owned.iter().filter(|p| f(p)).count() as i32;
    let ready = count(&is_ready);
    let available = count(&|p| is_available(p, min_ready, now));
    let fully_labeled = count(&|p| {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        template_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    });
    let conditions: Vec<Value> = failure_condition(rs, owned.len(), manage_err)
        .into_iter()
        .collect();
    let status = json!({
        "replicas": owned.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": rs.metadata.generation,
        "conditions": conditions,
    });
    let current = rs.status.as_ref();
    let current_conditions = current
        .and_then(|c| c.conditions.as_ref())
        .map(|c| serde_json::to_value(c).unwrap_or_default())
        .unwrap_or(json!([]));
    let same = current.is_some_and(|c| {
        c.replicas == owned.len() as i32
            && c.fully_labeled_replicas.unwrap_or(0) == fully_labeled
            && c.ready_replicas.unwrap_or(0) == ready
            && c.available_replicas.unwrap_or(0) == available
            && c.observed_generation == rs.metadata.generation
            && current_conditions == status["conditions"]
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
