//! Node lifecycle: a node whose heartbeat (its Lease in `kube-node-lease`, or its Ready
//! condition's `lastHeartbeatTime`) is older than the grace period goes `Ready=Unknown` and gets
//! the `node.kubernetes.io/unreachable` NoSchedule and NoExecute taints; a node reporting
//! `Ready=False` gets the `not-ready` ones. The pods of such a node are marked NotReady at once
//! (their Ready condition False, as MarkPodsNotReady does), so that Services stop sending them
//! traffic long before they are evicted. Pods on a node with a NoExecute taint are evicted once
//! their toleration runs out (the API server gives pods 300 s ones, as the DefaultTolerationSeconds
//! admission plugin does); pods with no matching toleration at all get the configured default.
//! A node that heartbeats again has its taints removed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use super::{ControllerError, drive, is_not_found};
use skiff_k8s::taints::tolerates;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

#[derive(Debug, Clone, Copy)]
pub struct LifecycleConfig {
    /// How long a node may go without a heartbeat before it is Unknown (50 s in 1.32).
    pub grace_period: Duration,
    /// How long pods that do not tolerate a NoExecute taint stay (300 s).
    pub default_toleration: Duration,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            grace_period: Duration::from_secs(50),
            default_toleration: Duration::from_secs(300),
        }
    }
}

struct Ctx {
    client: Client,
    cfg: LifecycleConfig,
    recorder: skiff_client::events::Recorder,
}

pub async fn run(client: Client, cfg: LifecycleConfig) {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        cfg,
        recorder: skiff_client::events::Recorder::new(client.clone(), "node-controller"),
    });
    let stream = Controller::new(Api::<Node>::all(client), watcher::Config::default()).run(
        reconcile,
        |_, _, _| Action::requeue(Duration::from_secs(1)),
        ctx,
    );
    drive("nodelifecycle", stream).await;
}

fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, ControllerError> {
    let name = node.name_any();
    let now = Timestamp::now();
    let lease = Api::<Lease>::namespaced(ctx.client.clone(), "kube-node-lease")
        .get_opt(&name)
        .await?;
    let conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let ready = conditions.iter().find(|c| c.type_ == "Ready");
    let heartbeat = [
        lease
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0),
        ready
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| t.0),
        node.metadata.creation_timestamp.as_ref().map(|t| t.0),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(now);
    let silent = now.as_millisecond() - heartbeat.as_millisecond();
    let grace = ctx.cfg.grace_period.as_millis() as i64;
    let api: Api<Node> = Api::all(ctx.client.clone());
    let status = ready.map(|c| c.status.as_str()).unwrap_or("Unknown");
    let lost = silent > grace;
    if lost && status != "Unknown" {
        let conds: Vec<_> = conditions
            .iter()
            .map(|c| {
                json!({"type": c.type_, "status": "Unknown", "reason": "NodeStatusUnknown",
                    "message": "Kubelet stopped posting node status.",
                    "lastHeartbeatTime": c.last_heartbeat_time, "lastTransitionTime": rfc3339(now)})
            })
            .collect();
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"conditions": conds}})),
        )
        .await?;
        tracing::warn!(node = %name, silent_ms = silent, "node stopped posting status: Ready=Unknown");
    }
    // The taints the node's state calls for.
    let want_key = if lost {
        Some(UNREACHABLE)
    } else if status == "False" {
        Some(NOT_READY)
    } else {
        None
    };
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut next: Vec<Taint> = taints
        .iter()
        .filter(|t| {
            !((t.key == UNREACHABLE || t.key == NOT_READY) && Some(t.key.as_str()) != want_key)
        })
        .cloned()
        .collect();
    if let Some(key) = want_key {
        for effect in ["NoSchedule", "NoExecute"] {
            if !next.iter().any(|t| t.key == key && t.effect == effect) {
                next.push(Taint {
                    key: key.into(),
                    effect: effect.into(),
                    time_added: Some(Time(now)),
                    value: None,
                });
            }
        }
    }
    if next != taints {
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"taints": next}})),
        )
        .await?;
        tracing::info!(node = %name, taint = ?want_key, "node taints updated");
    }
    let mut wake = if lost { None } else { Some(grace - silent) };
    if want_key.is_some() {
        let pods = Api::<Pod>::all(ctx.client.clone())
            .list(&ListParams::default().fields(&format!("spec.nodeName={name}")))
            .await?
            .items;
        mark_not_ready(&ctx, &pods, now).await?;
        if let Some(ms) = evict(&ctx, &name, &pods, &next, now).await? {
            wake = Some(wake.map_or(ms, |w| w.min(ms)));
        }
    }
    let wait = wake.unwrap_or(grace).clamp(200, 5000);
    Ok(Action::requeue(Duration::from_millis(wait as u64)))
}

/// Sets the Ready condition of each of `pods` (those of a node that is not Ready) to False, as
/// MarkPodsNotReady does; pods without one, or already not ready, are left alone. The node's
/// kubelet sets it back once it reports again. Each write is conditional on the pod's
/// resourceVersion, so nothing the kubelet wrote meanwhile is lost.
async fn mark_not_ready(ctx: &Ctx, pods: &[Pod], now: Timestamp) -> Result<(), ControllerError> {
    for p in pods {
        let Some(status) = &p.status else { continue };
        let conditions = status.conditions.clone().unwrap_or_default();
        if !conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status != "False")
        {
            continue;
        }
        let conditions: Vec<_> = conditions
            .into_iter()
            .map(|mut c| {
                if c.type_ == "Ready" {
                    c.status = "False".into();
                    c.last_transition_time = Some(Time(now));
                }
                c
            })
            .collect();
        let ns = p.namespace().unwrap_or_default();
        let patch = json!({
            "metadata": {"uid": p.metadata.uid, "resourceVersion": p.metadata.resource_version},
            "status": {"conditions": conditions},
        });
        match Api::<Pod>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &p.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(e.into()),
        }
        tracing::info!(pod = %format!("{ns}/{}", p.name_any()), "node not ready: pod marked NotReady");
        let event = Event {
            type_: EventType::Warning,
            reason: "NodeNotReady".into(),
            note: Some("Node is not ready".into()),
            action: "MarkNotReady".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &p.object_ref(&())).await {
            tracing::debug!(error = %e, "recording an event");
        }
    }
    Ok(())
}

/// Evicts the node's pods whose tolerations of its NoExecute taints ran out; returns the
/// milliseconds until the next one is due.
async fn evict(
    ctx: &Ctx,
    node: &str,
    pods: &[Pod],
    taints: &[Taint],
    now: Timestamp,
) -> Result<Option<i64>, ControllerError> {
    let mut next_due: Option<i64> = None;
    for p in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let tolerations = p
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        // The earliest time any NoExecute taint evicts this pod.
        let mut due: Option<i64> = None;
        for t in taints.iter().filter(|t| t.effect == "NoExecute") {
            let added = t
                .time_added
                .as_ref()
                .map(|a| a.0)
                .unwrap_or(now)
                .as_millisecond();
            let matching: Vec<_> = tolerations.iter().filter(|tol| tolerates(tol, t)).collect();
            let seconds = if matching.is_empty() {
                Some(ctx.cfg.default_toleration.as_millis() as i64)
            } else {
                // Tolerated forever unless every matching toleration is bounded.
                matching
                    .iter()
                    .map(|tol| tol.toleration_seconds.map(|s| s.max(0) * 1000))
                    .try_fold(i64::MAX, |acc, s| s.map(|s| acc.min(s)))
            };
            if let Some(s) = seconds {
                let at = added + s;
                due = Some(due.map_or(at, |d| d.min(at)));
            }
        }
        let Some(at) = due else { continue };
        let left = at - now.as_millisecond();
        if left > 0 {
            next_due = Some(next_due.map_or(left, |n| n.min(left)));
            continue;
        }
        let ns = p.namespace().unwrap_or_default();
        match Api::<Pod>::namespaced(ctx.client.clone(), &ns)
            .delete(&p.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {
                tracing::info!(node, pod = %format!("{ns}/{}", p.name_any()), "evicted from a tainted node")
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(next_due)
}
