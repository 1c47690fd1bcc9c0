//! The DaemonSet controller: one pod on every node the pod template may run on (its node
//! selector and required affinity match, and it tolerates the node's NoSchedule and NoExecute
//! taints — with the tolerations every daemon pod gets), pinned there by required node affinity
//! on `metadata.name` and left to the scheduler to bind, as kube-controller-manager 1.32 does.
//! RollingUpdate replaces pods of an older template (`controller-revision-hash`) at most
//! `maxUnavailable` at a time; OnDelete waits for them to be deleted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::deployment::template_hash;
use super::pods::{is_active, is_available, is_ready};
use super::{
    Context, ControllerError, controller_ref, controller_uid, drive, error_policy, is_not_found,
};
use crate::scheduler::filters::{affinity_matches, untolerated};

pub const HASH_LABEL: &str = "controller-revision-hash";

pub async fn run(client: Client) {
    let ctx = Context::new(client.clone(), "daemonset-controller");
    let controller = Controller::new(
        Api::<DaemonSet>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    let stream = controller
        .owns(Api::<Pod>::all(client.clone()), watcher::Config::default())
        // Any node change may change where daemons belong.
        .watches(
            Api::<Node>::all(client),
            watcher::Config::default(),
            move |_node: Node| {
                store
                    .state()
                    .iter()
                    .map(|d| ObjectRef::from_obj(&**d))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile, error_policy, ctx);
    drive("daemonset", stream).await;
}

/// The tolerations the DaemonSet controller adds to every daemon pod.
fn daemon_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// The daemon pod for `node`.
fn pod_for(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.into());
    let mut spec = template.spec.unwrap_or_default();
    let mut tolerations = spec.tolerations.take().unwrap_or_default();
    for t in daemon_tolerations() {
        if !tolerations
            .iter()
            .any(|x| x.key == t.key && x.effect == t.effect)
        {
            tolerations.push(t);
        }
    }
    spec.tolerations = Some(tolerations);
    let mut affinity =
        serde_json::to_value(spec.affinity.take().unwrap_or_default()).unwrap_or_default();
    affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]});
    spec.affinity = serde_json::from_value(affinity).ok();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", ds.name_any())),
            namespace: ds.namespace(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![controller_ref(ds)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// Whether the daemon belongs on `node`.
fn should_run(ds: &DaemonSet, node: &Node) -> bool {
    let probe = pod_for(ds, node.metadata.name.as_deref().unwrap_or_default(), "");
    let tolerations = probe
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    affinity_matches(&probe, node)
        && untolerated(node, &tolerations, &["NoSchedule", "NoExecute"])
            .next()
            .is_none()
}

/// The node a daemon pod is for: its binding, or the node its affinity pins it to.
fn target_node(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = spec.node_name.clone().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name")
        .and_then(|f| f.values.as_ref()?.first().cloned())
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ds.namespace().unwrap_or_default();
    let spec = ds.spec.as_ref().ok_or_else(|| {
        ControllerError::Invalid(format!("daemonset {ns}/{} has no spec", ds.name_any()))
    })?;
    let hash = template_hash(&spec.template, None);
    let uid = ds.uid().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let mut by_node: HashMap<String, Vec<Pod>> = HashMap::new();
    for p in api.list(&ListParams::default()).await?.items {
        if controller_uid(&p) == Some(uid.as_str())
            && is_active(&p)
            && let Some(n) = target_node(&p)
        {
            by_node.entry(n).or_default().push(p);
        }
    }
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = Timestamp::now();
    let mut create = Vec::new();
    let mut delete: Vec<Pod> = Vec::new();
    let mut desired = 0;
    let (mut scheduled, mut misscheduled, mut ready, mut available, mut updated) = (0, 0, 0, 0, 0);
    let mut old: Vec<Pod> = Vec::new();
    let mut unavailable = 0;
    let node_names: BTreeMap<String, &Node> = nodes.iter().map(|n| (n.name_any(), n)).collect();
    for (name, node) in &node_names {
        let mut pods = by_node.remove(name).unwrap_or_default();
        if !should_run(&ds, node) {
            misscheduled += pods.len() as i32;
            delete.extend(pods);
            continue;
        }
        desired += 1;
        if pods.is_empty() {
            create.push(name.clone());
            unavailable += 1;
            continue;
        }
        scheduled += 1;
        // Keep the newest pod of the current template, else the oldest.
        pods.sort_by_key(|p| {
            (
                p.labels().get(HASH_LABEL) != Some(&hash),
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            )
        });
        let keep = pods.remove(0);
        delete.extend(pods);
        ready += i32::from(is_ready(&keep));
        let avail = is_available(&keep, min_ready, now);
        available += i32::from(avail);
        unavailable += i32::from(!avail);
        if keep.labels().get(HASH_LABEL) == Some(&hash) {
            updated += 1;
        } else {
            old.push(keep);
        }
    }
    // Pods pinned to nodes that no longer exist.
    delete.extend(by_node.into_values().flatten());
    let strategy = spec.update_strategy.as_ref();
    if strategy
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate"
    {
        let max_unavailable = match strategy
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.max_unavailable.as_ref())
        {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i)) => *i,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => {
                let pct: i32 = s.trim_end_matches('%').parse().unwrap_or(0);
                (pct * desired / 100).max(1)
            }
            None => 1,
        };
        // Unavailable old pods go first; then available ones within the budget.
        old.sort_by_key(|p| is_available(p, min_ready, now));
        let mut budget = max_unavailable - unavailable;
        for p in old {
            if !is_available(&p, min_ready, now) {
                delete.push(p);
            } else if budget > 0 {
                budget -= 1;
                delete.push(p);
            }
        }
    }
    let pp = PostParams::default();
    for node in &create {
        api.create(&pp, &pod_for(&ds, node, &hash)).await?;
    }
    for p in &delete {
        match api.delete(&p.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !create.is_empty() || !delete.is_empty() {
        tracing::info!(daemonset = %ds.name_any(), created = create.len(), deleted = delete.len(), "synced daemon pods");
    }
    let status = json!({
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": scheduled,
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "numberAvailable": available,
        "numberUnavailable": (desired - available).max(0),
        "updatedNumberScheduled": updated,
        "observedGeneration": ds.metadata.generation,
    });
    let cur = ds
        .status
        .as_ref()
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .unwrap_or_default();
    let changed = status
        .as_object()
        .into_iter()
        .flatten()
        .any(|(k, v)| cur.get(k).cloned().unwrap_or(json!(0)) != *v);
    if changed {
        Api::<DaemonSet>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &ds.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await?;
    }
    Ok(if available < ready {
        Action::requeue(Duration::from_secs(1))
    } else {
        Action::requeue(Duration::from_secs(300))
    })
}
