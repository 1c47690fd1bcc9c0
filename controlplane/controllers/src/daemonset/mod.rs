//! The DaemonSet controller, as kube-controller-manager 1.32's: one pod on every node the pod
//! template may run on (its node selector and required affinity match, and it tolerates the
//! node's NoSchedule and NoExecute taints — with the tolerations every daemon pod gets), pinned
//! there by required node affinity on `metadata.name` and left to the scheduler to bind. Pods
//! carry the `controller-revision-hash` of their template. Failed and succeeded daemon pods are
//! replaced; surplus pods on a node go, the oldest stays. RollingUpdate replaces pods of older
//! templates within `maxUnavailable` — or, with `maxSurge`, starts the new pod beside the old one
//! and removes the old one once the new one is available; OnDelete waits for old pods to be
//! deleted. Status: desired/current/misscheduled/ready/available/unavailable/updated numbers.
//! Each template is recorded as a ControllerRevision (`history.rs`), whose hash the pods carry.

mod history;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::pod_control::{self, BURST};
use super::pods::{is_available, is_ready, is_terminal, node_name, phase};
use super::{Context, ControllerError, claim, controller_ref, drive, error_policy};
use skiff_k8s::node_affinity::affinity_matches;
use skiff_k8s::taints::untolerated;

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
        .owns(
            Api::<ControllerRevision>::all(client.clone()),
            watcher::Config::default(),
        )
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

/// (should run: a new daemon pod belongs there; should continue running: an existing one may
/// stay — a taint it does not tolerate only evicts it if the effect is NoExecute).
fn should_run(ds: &DaemonSet, node: &Node) -> (bool, bool) {
    let template_node = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default();
    if !template_node.is_empty() && template_node != node.name_any() {
        return (false, false);
    }
    let probe = pod_for(ds, &node.name_any(), "");
    if !affinity_matches(&probe, node) {
        return (false, false);
    }
    let tolerations = probe
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    if untolerated(node, &tolerations, &["NoSchedule", "NoExecute"])
        .next()
        .is_none()
    {
        return (true, true);
    }
    (
        false,
        untolerated(node, &tolerations, &["NoExecute"])
            .next()
            .is_none(),
    )
}

/// The node a daemon pod is for: its binding, or the node its affinity pins it to.
fn target_node(p: &Pod) -> Option<String> {
    if let Some(n) = node_name(p) {
        return Some(n.to_string());
    }
    p.spec
        .as_ref()?
        .affinity
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

/// Bound pods first, then the oldest (kube's `podByCreationTimestampAndPhase`).
fn oldest_first(p: &Pod) -> (bool, Option<Timestamp>, String) {
    (
        node_name(p).is_none(),
        p.metadata.creation_timestamp.as_ref().map(|t| t.0),
        p.name_any(),
    )
}

fn is_updated(p: &Pod, hash: &str) -> bool {
    p.labels().get(HASH_LABEL).map(String::as_str) == Some(hash)
}

/// One node as the controller sees it.
struct NodeState<'a> {
    name: String,
    should_run: bool,
    should_continue: bool,
    /// Whether the Node object exists (pods may target nodes that are gone).
    exists: bool,
    pods: Vec<&'a Pod>,
}

/// What one sync changes: nodes to create a daemon pod on, pods to delete, events to record.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    create: Vec<String>,
    delete: Vec<String>,
    events: Vec<(EventType, &'static str, String)>,
}

/// Surge and unavailability budgets (kube's `SurgeCount`/`UnavailableCount`, percentages of the
/// nodes that should run the daemon, rounded up); never both zero.
fn budgets(ds: &DaemonSet, desired: i32) -> (i32, i32) {
    let ru = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .filter(|s| s.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate")
        .and_then(|s| s.rolling_update.as_ref());
    let value = |v: Option<&IntOrString>, default: i32| match v {
        None => default,
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => {
            let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            (pct * f64::from(desired) / 100.0).ceil() as i32
        }
    };
    let surge = value(ru.and_then(|r| r.max_surge.as_ref()), 0);
    let unavailable = value(ru.and_then(|r| r.max_unavailable.as_ref()), 1);
    if desired > 0 && surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// Creations and deletions that put one daemon pod on every node that should run it (kube's
/// `manage`): failed and succeeded pods are replaced, surplus pods removed (with a surge, one old
/// and one new pod may share a node until the new one is available).
fn manage(nodes: &[NodeState], hash: &str, surge: bool, min_ready: i32, now: Timestamp) -> Plan {
    let mut plan = Plan::default();
    for n in nodes {
        if !n.exists {
            // Pods for a node that is gone: the scheduler cannot place them, so remove them.
            plan.delete.extend(
                n.pods
                    .iter()
                    .filter(|p| node_name(p).is_none())
                    .map(|p| p.name_any()),
            );
            continue;
        }
        if n.should_run && n.pods.is_empty() {
            plan.create.push(n.name.clone());
            continue;
        }
        if !n.should_continue {
            plan.delete.extend(
                n.pods
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .map(|p| p.name_any()),
            );
            continue;
        }
        let mut running = Vec::new();
        for p in n
            .pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
        {
            let who = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
            match phase(p) {
                "Failed" => {
                    let msg = format!(
                        "Found failed daemon pod {who} on node {}, will try to kill it",
                        n.name
                    );
                    plan.events
                        .push((EventType::Warning, "FailedDaemonPod", msg));
                    plan.delete.push(p.name_any());
                }
                "Succeeded" => {
                    let msg = format!(
                        "Found succeeded daemon pod {who} on node {}, will try to delete it",
                        n.name
                    );
                    plan.events
                        .push((EventType::Normal, "SucceededDaemonPod", msg));
                    plan.delete.push(p.name_any());
                }
                _ => running.push(*p),
            }
        }
        running.sort_by_key(|p| oldest_first(p));
        if !surge {
            plan.delete
                .extend(running.iter().skip(1).map(|p| p.name_any()));
            continue;
        }
        if running.is_empty() && n.should_run {
            plan.create.push(n.name.clone());
            continue;
        }
        // Surging: keep the oldest new and the oldest old pod; the old one goes once the new one
        // is available, or at once if it is not ready.
        let (mut oldest_new, mut oldest_old) = (None, None);
        for p in running {
            let slot = if is_updated(p, hash) {
                &mut oldest_new
            } else {
                &mut oldest_old
            };
            if slot.is_none() {
                *slot = Some(p);
            } else {
                plan.delete.push(p.name_any());
            }
        }
        if let (Some(new), Some(old)) = (oldest_new, oldest_old)
            && (!is_ready(old) || is_available(new, min_ready, now))
        {
            plan.delete.push(old.name_any());
        }
    }
    plan
}

/// The old and the new pod on a node, if it has at most one of each (not being deleted).
fn old_and_new<'a>(pods: &[&'a Pod], hash: &str) -> Option<(Option<&'a Pod>, Option<&'a Pod>)> {
    let (mut old, mut new) = (None, None);
    for p in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let slot = if is_updated(p, hash) {
            &mut new
        } else {
            &mut old
        };
        if slot.replace(*p).is_some() {
            return None;
        }
    }
    Some((old, new))
}

/// One step of a rolling update (kube's `rollingUpdate`). Without surge: delete old pods, the
/// unavailable ones always and available ones while fewer than maxUnavailable daemons are
/// unavailable. With surge: start a new pod beside every unavailable old one and beside up to
/// maxSurge available ones; remove an old pod once the new one beside it is available.
fn rolling_update(nodes: &[NodeState], ds: &DaemonSet, hash: &str, now: Timestamp) -> Plan {
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let desired = nodes.iter().filter(|n| n.should_run).count() as i32;
    let (max_surge, max_unavailable) = budgets(ds, desired);
    let available = |p: &Pod| is_available(p, min_ready, now);
    let mut plan = Plan::default();
    // Nodes with daemon pods, and those that should run one.
    let relevant = nodes
        .iter()
        .filter(|n| n.exists && (n.should_run || !n.pods.is_empty()));
    if max_surge == 0 {
        let mut unavailable = 0;
        let mut candidates = Vec::new();
        for n in relevant {
            let Some((old, new)) = old_and_new(&n.pods, hash) else {
                unavailable += 1;
                continue;
            };
            match (old, new) {
                (None, None) | (Some(_), Some(_)) => unavailable += 1,
                (None, Some(new)) => unavailable += i32::from(!available(new)),
                (Some(old), None) if !available(old) => {
                    plan.delete.push(old.name_any());
                    unavailable += 1;
                }
                (Some(old), None) => {
                    if unavailable < max_unavailable {
                        candidates.push(old.name_any());
                    }
                }
            }
        }
        let room = (max_unavailable - unavailable).clamp(0, candidates.len() as i32) as usize;
        plan.delete.extend(candidates.into_iter().take(room));
        return plan;
    }
    let (mut surging, mut available_count) = (0, 0);
    let (mut candidates, mut misplaced) = (Vec::new(), Vec::new());
    for n in relevant {
        let Some((old, new)) = old_and_new(&n.pods, hash) else {
            surging += 1;
            continue;
        };
        if let Some(p) = old.or(new)
            && available(p)
        {
            available_count += 1;
        }
        match (old, new) {
            (None, _) => {}
            (Some(old), None) if !available(old) => {
                if n.should_run {
                    plan.create.push(n.name.clone());
                } else {
                    plan.delete.push(old.name_any());
                }
            }
            (Some(old), None) => {
                if !n.should_run {
                    misplaced.push(old.name_any());
                } else if surging < max_surge {
                    candidates.push(n.name.clone());
                }
            }
            (Some(old), Some(new)) => {
                if available(new) {
                    plan.delete.push(old.name_any());
                } else {
                    surging += 1;
                }
            }
        }
    }
    // Pods on nodes the daemon no longer belongs on go only once as many are available elsewhere.
    let deletable = (available_count - desired).clamp(0, misplaced.len() as i32) as usize;
    plan.delete.extend(misplaced.into_iter().take(deletable));
    let room = (max_surge - surging).clamp(0, candidates.len() as i32) as usize;
    plan.create.extend(candidates.into_iter().take(room));
    plan
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ds.namespace().unwrap_or_default();
    let spec = ds.spec.as_ref().ok_or_else(|| {
        ControllerError::Invalid(format!("daemonset {ns}/{} has no spec", ds.name_any()))
    })?;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let candidates = api.list(&ListParams::default()).await?.items;
    let mut all_pods = claim(&*ds, &spec.selector, &api, candidates).await?;
    let history = history::construct(&ds, &ctx, &mut all_pods).await?;
    let hash = history.hash().to_string();
    // Finished pods on their way out are no concern of the DaemonSet any more.
    let pods: Vec<&Pod> = all_pods
        .iter()
        .filter(|p| !(is_terminal(p) && p.metadata.deletion_timestamp.is_some()))
        .collect();
    let mut by_node: BTreeMap<String, NodeState> = nodes
        .iter()
        .map(|n| {
            let (should_run, should_continue) = should_run(&ds, n);
            let state = NodeState {
                name: n.name_any(),
                should_run,
                should_continue,
                exists: true,
                pods: Vec::new(),
            };
            (n.name_any(), state)
        })
        .collect();
    for p in pods {
        let Some(node) = target_node(p) else { continue };
        by_node
            .entry(node.clone())
            .or_insert_with(|| NodeState {
                name: node,
                should_run: false,
                should_continue: false,
                exists: false,
                pods: Vec::new(),
            })
            .pods
            .push(p);
    }
    let nodes: Vec<NodeState> = by_node.into_values().collect();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = Timestamp::now();
    let (max_surge, _) = budgets(&ds, 1);
    let mut plan = manage(&nodes, &hash, max_surge > 0, min_ready, now);
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    // Like kube, roll only once what the last step changed has been seen.
    if rolling && plan.create.is_empty() && plan.delete.is_empty() {
        plan = rolling_update(&nodes, &ds, &hash, now);
    }
    for (type_, reason, msg) in std::mem::take(&mut plan.events) {
        pod_control::record(&ctx, &*ds, type_, reason, "Delete", msg).await;
    }
    plan.create.truncate(BURST);
    plan.delete.truncate(BURST);
    let (owner, ctx_ref, hash_ref) = (&*ds, &*ctx, &hash);
    let (_, create_err) = pod_control::slow_start(plan.create.len(), |i| {
        let pod = pod_for(owner, &plan.create[i], hash_ref);
        async move { pod_control::create(ctx_ref, owner, &pod).await }
    })
    .await;
    let delete_result = pod_control::delete_all(&ctx, &*ds, &ns, &plan.delete).await;
    if !plan.create.is_empty() || !plan.delete.is_empty() {
        tracing::info!(daemonset = %ds.name_any(), created = plan.create.len(), deleted = plan.delete.len(), "synced daemon pods");
    }
    // Pods of old templates still count (finished ones too), so their revisions stay.
    let cleanup_result = history::cleanup(&ds, &ctx, &history.old, &all_pods).await;
    let action = update_status(&ds, &ctx, &nodes, &hash, now).await?;
    if let Some(e) = create_err {
        return Err(e.into());
    }
    delete_result?;
    cleanup_result?;
    Ok(action)
}

async fn update_status(
    ds: &DaemonSet,
    ctx: &Context,
    nodes: &[NodeState<'_>],
    hash: &str,
    now: Timestamp,
) -> Result<Action, ControllerError> {
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let (mut desired, mut scheduled, mut misscheduled) = (0, 0, 0);
    let (mut ready, mut available, mut updated) = (0, 0, 0);
    for n in nodes.iter().filter(|n| n.exists) {
        if !n.should_run {
            misscheduled += i32::from(!n.pods.is_empty());
            continue;
        }
        desired += 1;
        let Some(pod) = n.pods.iter().min_by_key(|p| oldest_first(p)) else {
            continue;
        };
        scheduled += 1;
        if is_ready(pod) {
            ready += 1;
            available += i32::from(is_available(pod, min_ready, now));
        }
        updated += i32::from(is_updated(pod, hash));
    }
    let status = json!({
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": scheduled,
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "numberAvailable": available,
        "numberUnavailable": desired - available,
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
        Api::<DaemonSet>::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default())
            .patch_status(
                &ds.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await?;
    }
    // Ready pods become available with time alone.
    Ok(if min_ready > 0 && ready != available {
        Action::requeue(Duration::from_secs(min_ready as u64))
    } else {
        Action::requeue(Duration::from_secs(300))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: &str = "2026-01-01T00:00:00Z";

    fn pod(name: &str, node: &str, hash: &str, ready: bool, created: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": created,
                "labels": {HASH_LABEL: hash}},
            "spec": {"containers": [], "nodeName": node},
            "status": {"phase": "Running", "conditions": [{"type": "Ready",
                "status": if ready {"True"} else {"False"}, "lastTransitionTime": T0}]},
        }))
        .unwrap()
    }

    fn ds(strategy: serde_json::Value) -> DaemonSet {
        serde_json::from_value(json!({"metadata": {"name": "ds"}, "spec": {
            "selector": {"matchLabels": {"app": "d"}}, "updateStrategy": strategy,
            "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": []}}}}))
        .unwrap()
    }

    fn node<'a>(name: &str, pods: Vec<&'a Pod>) -> NodeState<'a> {
        NodeState {
            name: name.into(),
            should_run: true,
            should_continue: true,
            exists: true,
            pods,
        }
    }

    fn now() -> Timestamp {
        "2026-01-01T01:00:00Z".parse().unwrap()
    }

    #[test]
    fn surplus_pods_go_and_the_oldest_stays() {
        let (a, b) = (
            pod("a", "n1", "h", true, T0),
            pod("b", "n1", "h", true, "2026-01-01T00:00:05Z"),
        );
        let plan = manage(
            &[node("n1", vec![&b, &a]), node("n2", vec![])],
            "h",
            false,
            0,
            now(),
        );
        assert_eq!(
            (plan.create, plan.delete),
            (vec!["n2".to_string()], vec!["b".to_string()])
        );
    }

    #[test]
    fn rolling_without_surge_stays_within_max_unavailable() {
        let d = ds(
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
        );
        let pods: Vec<Pod> = (1..=3)
            .map(|i| pod(&format!("p{i}"), &format!("n{i}"), "old", true, T0))
            .collect();
        let nodes: Vec<NodeState> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| node(&format!("n{}", i + 1), vec![p]))
            .collect();
        let plan = rolling_update(&nodes, &d, "new", now());
        assert_eq!(plan.delete, ["p1"]);
        // An unavailable new pod uses up the budget.
        let fresh = pod("q1", "n1", "new", false, T0);
        let nodes = vec![
            node("n1", vec![&fresh]),
            node("n2", vec![&pods[1]]),
            node("n3", vec![&pods[2]]),
        ];
        assert!(rolling_update(&nodes, &d, "new", now()).delete.is_empty());
    }

    #[test]
    fn rolling_with_surge_starts_new_pods_first_and_removes_old_ones_once_available() {
        let d = ds(
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}),
        );
        let (o1, o2) = (
            pod("o1", "n1", "old", true, T0),
            pod("o2", "n2", "old", true, T0),
        );
        let plan = rolling_update(
            &[node("n1", vec![&o1]), node("n2", vec![&o2])],
            &d,
            "new",
            now(),
        );
        assert_eq!((plan.create, plan.delete), (vec!["n1".to_string()], vec![]));
        // The new pod beside o1 is not ready yet: nothing more (the surge is used up).
        let n1 = pod("n1-new", "n1", "new", false, T0);
        let plan = rolling_update(
            &[node("n1", vec![&o1, &n1]), node("n2", vec![&o2])],
            &d,
            "new",
            now(),
        );
        assert_eq!(plan, Plan::default());
        // Ready now: o1 goes, and the surge moves on to n2.
        let n1 = pod("n1-new", "n1", "new", true, T0);
        let plan = rolling_update(
            &[node("n1", vec![&o1, &n1]), node("n2", vec![&o2])],
            &d,
            "new",
            now(),
        );
        assert_eq!(
            (plan.create, plan.delete),
            (vec!["n2".to_string()], vec!["o1".to_string()])
        );
        // manage keeps both pods on a node while surging.
        let plan = manage(&[node("n1", vec![&o1, &n1])], "new", true, 0, now());
        assert_eq!(plan.delete, ["o1"]);
    }

    #[test]
    fn on_delete_leaves_old_pods_alone() {
        let d = ds(json!({"type": "OnDelete"}));
        assert_eq!(budgets(&d, 3), (0, 1));
        let o1 = pod("o1", "n1", "old", true, T0);
        // The reconcile only rolls for RollingUpdate; manage alone keeps the old pod.
        assert_eq!(
            manage(&[node("n1", vec![&o1])], "new", false, 0, now()),
            Plan::default()
        );
    }

    #[test]
    fn percentages_round_up() {
        let d = ds(
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%", "maxSurge": 0}}),
        );
        assert_eq!(budgets(&d, 15), (0, 2));
        let d = ds(
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "20%"}}),
        );
        assert_eq!(budgets(&d, 3), (1, 0));
    }
}
