//! The Deployment controller: one ReplicaSet per pod template, named by the template's
//! `pod-template-hash`; RollingUpdate within maxSurge/maxUnavailable or Recreate; revisions in
//! `deployment.kubernetes.io/revision` (a template that returns to an old ReplicaSet — what
//! `kubectl rollout undo` does — gives that ReplicaSet the next revision); pause; the history
//! limit; and the status and conditions (`Progressing`, `Available`) `kubectl rollout status` reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use super::{
    Context, ControllerError, controller_ref, controller_uid, drive, error_policy, selects,
};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const HASH_LABEL: &str = "pod-template-hash";

pub async fn run(client: Client) {
    let ctx = Context::new(client.clone(), "deployment-controller");
    let stream = Controller::new(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<ReplicaSet>::all(client), watcher::Config::default())
    .run(reconcile, error_policy, ctx);
    drive("deployment", stream).await;
}

/// FNV-1a, 32 bits: the hash kube-controller-manager names ReplicaSets with.
fn fnv32a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The `pod-template-hash` of a template: its hash in the alphabet Kubernetes uses for names
/// (no vowels, no look-alike digits).
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

/// The template without the hash label, for comparing a ReplicaSet's with the Deployment's.
fn without_hash(t: &PodTemplateSpec) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or_default();
    if let Some(labels) = v
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(HASH_LABEL);
        if labels.is_empty()
            && let Some(m) = v.pointer_mut("/metadata").and_then(Value::as_object_mut)
        {
            m.remove("labels");
        }
    }
    v
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    rs.status
        .as_ref()
        .map(|s| {
            (
                s.replicas,
                s.ready_replicas.unwrap_or(0),
                s.available_replicas.unwrap_or(0),
            )
        })
        .unwrap_or_default()
}

/// An int or a percentage of `total`, rounded up (surge) or down (unavailable).
fn scaled(v: Option<&IntOrString>, total: i32, default: &str, round_up: bool) -> i32 {
    let s = match v {
        Some(IntOrString::Int(i)) => return *i,
        Some(IntOrString::String(s)) => s.as_str(),
        None => default,
    };
    let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
    let x = pct * f64::from(total) / 100.0;
    (if round_up { x.ceil() } else { x.floor() }) as i32
}

/// (maxSurge, maxUnavailable) resolved against the desired replicas; never both zero.
pub fn surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    let spec = d.spec.as_ref();
    let want = spec.and_then(|s| s.replicas).unwrap_or(1);
    let ru = spec
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), want, "25%", true);
    let unavailable = scaled(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        want,
        "25%",
        false,
    );
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable.min(want))
    }
}

struct Plan<'a> {
    d: &'a Deployment,
    ctx: &'a Context,
    api: Api<ReplicaSet>,
}

impl Plan<'_> {
    async fn scale(&self, rs: &ReplicaSet, to: i32) -> Result<(), ControllerError> {
        let from = replicas(rs);
        if from == to {
            return Ok(());
        }
        let surge = surge_and_unavailable(self.d).0;
        let want = self.d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let patch = json!({
            "metadata": {"annotations": {
                "deployment.kubernetes.io/desired-replicas": want.to_string(),
                "deployment.kubernetes.io/max-replicas": (want + surge).to_string(),
            }},
            "spec": {"replicas": to},
        });
        self.api
            .patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        let verb = if to > from { "up" } else { "down" };
        let note = format!(
            "Scaled {verb} replica set {} from {from} to {to}",
            rs.name_any()
        );
        tracing::info!(deployment = %self.d.name_any(), "{note}");
        let event = kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Normal,
            reason: "ScalingReplicaSet".into(),
            note: Some(note),
            action: "Scale".into(),
            secondary: None,
        };
        let reference = kube::Resource::object_ref(self.d, &());
        if let Err(e) = self.ctx.recorder.publish(&event, &reference).await {
            tracing::debug!(error = %e, "recording ScalingReplicaSet");
        }
        Ok(())
    }

    async fn create(
        &self,
        template: &PodTemplateSpec,
        hash: &str,
        rev: i64,
        replicas: i32,
    ) -> Result<ReplicaSet, ControllerError> {
        let d = self.d;
        let spec = d.spec.as_ref();
        let mut t = template.clone();
        let meta = t.metadata.get_or_insert_with(Default::default);
        meta.labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.into());
        let mut selector = spec.map(|s| s.selector.clone()).unwrap_or_default();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.into());
        let want = spec.and_then(|s| s.replicas).unwrap_or(1);
        let mut annotations: BTreeMap<String, String> = d
            .annotations()
            .iter()
            .filter(|(k, _)| !k.starts_with("kubectl.kubernetes.io/") && *k != REVISION)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        annotations.insert(REVISION.into(), rev.to_string());
        annotations.insert(
            "deployment.kubernetes.io/desired-replicas".into(),
            want.to_string(),
        );
        annotations.insert(
            "deployment.kubernetes.io/max-replicas".into(),
            (want + surge_and_unavailable(d).0).to_string(),
        );
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("{}-{hash}", d.name_any())),
                namespace: d.namespace(),
                labels: t.metadata.as_ref().and_then(|m| m.labels.clone()),
                annotations: Some(annotations),
                owner_references: Some(vec![controller_ref(d)]),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: spec.and_then(|s| s.min_ready_seconds),
                selector,
                template: Some(t),
            }),
            status: None,
        };
        let created = self.api.create(&PostParams::default(), &rs).await?;
        let note = format!(
            "Scaled up replica set {} from 0 to {replicas}",
            created.name_any()
        );
        let event = kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Normal,
            reason: "ScalingReplicaSet".into(),
            note: Some(note),
            action: "Scale".into(),
            secondary: None,
        };
        let reference = kube::Resource::object_ref(d, &());
        if let Err(e) = self.ctx.recorder.publish(&event, &reference).await {
            tracing::debug!(error = %e, "recording ScalingReplicaSet");
        }
        Ok(created)
    }
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.namespace().unwrap_or_default();
    let spec = d.spec.as_ref().ok_or_else(|| {
        ControllerError::Invalid(format!("deployment {ns}/{} has no spec", d.name_any()))
    })?;
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let plan = Plan {
        d: &d,
        ctx: &ctx,
        api: api.clone(),
    };
    let uid = d.uid().unwrap_or_default();
    let empty = BTreeMap::new();
    let mut owned = Vec::new();
    for rs in api.list(&ListParams::default()).await?.items {
        let labels = rs.metadata.labels.as_ref().unwrap_or(&empty);
        match controller_uid(&rs) {
            Some(u) if u == uid => owned.push(rs),
            None if selects(&spec.selector, labels) && rs.metadata.deletion_timestamp.is_none() => {
                let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                refs.push(controller_ref(&*d));
                let patch = json!({"metadata": {"ownerReferences": refs, "uid": rs.metadata.uid}});
                owned.push(
                    api.patch(
                        &rs.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?,
                );
            }
            _ => {}
        }
    }
    let template = spec.template.clone();
    let want_tmpl = without_hash(&template);
    let (mut new, mut old): (Vec<ReplicaSet>, Vec<ReplicaSet>) =
        owned.into_iter().partition(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .map(without_hash)
                == Some(want_tmpl.clone())
        });
    // Several with the same template (should not happen): the oldest is the new one.
    new.sort_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0));
    old.extend(new.drain(1.min(new.len())..));
    let mut new = new.pop();
    old.sort_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let max_old_rev = old.iter().map(revision).max().unwrap_or(0);
    let want = spec.replicas.unwrap_or(1);
    let (surge, max_unavailable) = surge_and_unavailable(&d);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let paused = spec.paused == Some(true);
    let mut created_new = None;

    if !paused {
        // The new ReplicaSet carries the newest revision.
        if let Some(rs) = &new
            && revision(rs) <= max_old_rev
        {
            let patch =
                json!({"metadata": {"annotations": {REVISION: (max_old_rev + 1).to_string()}}});
            new = Some(
                api.patch(
                    &rs.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?,
            );
        }
        if new.is_none() {
            let old_active: i32 = old.iter().map(replicas).sum();
            let initial = if recreate {
                if old.iter().any(|rs| replicas(rs) > 0 || status_of(rs).0 > 0) {
                    0
                } else {
                    want
                }
            } else {
                (want + surge - old_active).clamp(0, want)
            };
            let hash = template_hash(&template, d.status.as_ref().and_then(|s| s.collision_count));
            let rs = match plan
                .create(&template, &hash, max_old_rev + 1, initial)
                .await
            {
                Ok(rs) => rs,
                // A ReplicaSet of that name exists: read it; it is ours or a hash collision.
                Err(ControllerError::Kube(kube::Error::Api(e))) if e.code == 409 => {
                    return Ok(Action::requeue(Duration::from_millis(200)));
                }
                Err(e) => return Err(e),
            };
            created_new = Some(rs.name_any());
            new = Some(rs);
        }
        let new_rs = new.as_ref().expect("created above");
        if recreate {
            for rs in &old {
                plan.scale(rs, 0).await?;
            }
            let old_running: i32 = old.iter().map(|rs| status_of(rs).0).sum();
            if old_running == 0 && old.iter().all(|rs| replicas(rs) == 0) {
                plan.scale(new_rs, want).await?;
            }
        } else {
            rolling(&plan, new_rs, &old, want, surge, max_unavailable).await?;
        }
        cleanup(&plan, &old, spec.revision_history_limit.unwrap_or(10)).await?;
    }
    // Re-read what the steps above changed before reporting.
    let current: Vec<ReplicaSet> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|rs| controller_uid(rs) == Some(uid.as_str()))
        .collect();
    let new_name = new.as_ref().map(|rs| rs.name_any());
    update_status(
        &d,
        &ctx,
        &current,
        new_name.as_deref(),
        created_new.as_deref(),
        max_unavailable,
    )
    .await
}

/// One rolling-update step: scale the new ReplicaSet up within maxSurge, then old ones down
/// within maxUnavailable (unhealthy old pods first).
async fn rolling(
    plan: &Plan<'_>,
    new_rs: &ReplicaSet,
    old: &[ReplicaSet],
    want: i32,
    surge: i32,
    max_unavailable: i32,
) -> Result<(), ControllerError> {
    let total: i32 = replicas(new_rs) + old.iter().map(replicas).sum::<i32>();
    let new_replicas = replicas(new_rs);
    if new_replicas < want {
        let room = want + surge - total;
        if room > 0 {
            plan.scale(new_rs, new_replicas + room.min(want - new_replicas))
                .await?;
            return Ok(());
        }
    } else if new_replicas > want {
        plan.scale(new_rs, want).await?;
        return Ok(());
    }
    let min_available = want - max_unavailable;
    let new_unavailable = replicas(new_rs) - status_of(new_rs).2;
    let mut budget = total - min_available - new_unavailable;
    if budget <= 0 {
        return Ok(());
    }
    let mut scaled: BTreeMap<String, i32> = BTreeMap::new();
    // Old pods that are not available cost no availability to remove.
    for rs in old {
        if budget <= 0 {
            break;
        }
        let unhealthy = replicas(rs) - status_of(rs).2;
        if unhealthy <= 0 {
            continue;
        }
        let n = unhealthy.min(budget);
        scaled.insert(rs.name_any(), replicas(rs) - n);
        budget -= n;
    }
    let all_available: i32 =
        status_of(new_rs).2 + old.iter().map(|rs| status_of(rs).2).sum::<i32>();
    let mut down = (all_available - min_available).min(budget);
    for rs in old {
        if down <= 0 {
            break;
        }
        let current = scaled.get(&rs.name_any()).copied().unwrap_or(replicas(rs));
        let n = current.min(down);
        if n > 0 {
            scaled.insert(rs.name_any(), current - n);
            down -= n;
        }
    }
    for rs in old {
        if let Some(&to) = scaled.get(&rs.name_any()) {
            plan.scale(rs, to).await?;
        }
    }
    Ok(())
}

/// Deletes the oldest empty old ReplicaSets beyond the history limit.
async fn cleanup(plan: &Plan<'_>, old: &[ReplicaSet], limit: i32) -> Result<(), ControllerError> {
    let empty: Vec<&ReplicaSet> = old
        .iter()
        .filter(|rs| replicas(rs) == 0 && status_of(rs).0 == 0)
        .collect();
    let excess = empty.len().saturating_sub(limit.max(0) as usize);
    for rs in empty.iter().take(excess) {
        match plan
            .api
            .delete(&rs.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(e) if super::is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    prev: Option<&DeploymentCondition>,
    now: &str,
) -> Value {
    let same = prev.is_some_and(|p| p.status == status && p.reason.as_deref() == Some(reason));
    let transition = match prev {
        Some(p) if p.status == status => p
            .last_transition_time
            .as_ref()
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| now.to_string()),
        _ => now.to_string(),
    };
    let update = if same {
        prev.and_then(|p| p.last_update_time.as_ref())
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| now.to_string())
    } else {
        now.to_string()
    };
    json!({"type": type_, "status": status, "reason": reason, "message": message,
        "lastUpdateTime": update, "lastTransitionTime": transition})
}

async fn update_status(
    d: &Deployment,
    ctx: &Context,
    owned: &[ReplicaSet],
    new_name: Option<&str>,
    created_new: Option<&str>,
    max_unavailable: i32,
) -> Result<Action, ControllerError> {
    let spec = d.spec.as_ref();
    let want = spec.and_then(|s| s.replicas).unwrap_or(1);
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| owned.iter().map(f).sum::<i32>();
    let total = sum(&|rs| status_of(rs).0);
    let ready = sum(&|rs| status_of(rs).1);
    let available = sum(&|rs| status_of(rs).2);
    let new_rs = owned
        .iter()
        .find(|rs| Some(rs.name_any().as_str()) == new_name);
    let updated = new_rs.map(|rs| status_of(rs).0).unwrap_or(0);
    let new_available = new_rs.map(|rs| status_of(rs).2).unwrap_or(0);
    let prev = d.status.as_ref().and_then(|s| s.conditions.as_ref());
    let find = |t: &str| prev.and_then(|c| c.iter().find(|c| c.type_ == t));
    let now_ts = Timestamp::now();
    let now = now_ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let avail = if available >= want - max_unavailable {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            find("Available"),
            &now,
        )
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            find("Available"),
            &now,
        )
    };
    let name = new_name.unwrap_or_default();
    let complete = updated == want && new_available == want && total == want;
    let prev_progress = find("Progressing");
    let deadline = spec
        .and_then(|s| s.progress_deadline_seconds)
        .unwrap_or(600);
    let paused = spec.and_then(|s| s.paused) == Some(true);
    let progressing = if paused {
        condition(
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".into(),
            prev_progress,
            &now,
        )
    } else if complete {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{name}\" has successfully progressed."),
            prev_progress,
            &now,
        )
    } else if let Some(c) = created_new {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetCreated",
            format!("Created new replica set \"{c}\""),
            prev_progress,
            &now,
        )
    } else {
        let counts_changed = d.status.as_ref().is_none_or(|s| {
            s.updated_replicas.unwrap_or(0) != updated
                || s.available_replicas.unwrap_or(0) != available
                || s.ready_replicas.unwrap_or(0) != ready
                || s.replicas.unwrap_or(0) != total
        });
        let last = prev_progress
            .and_then(|p| p.last_update_time.as_ref())
            .map(|t| t.0.as_second())
            .unwrap_or(now_ts.as_second());
        if !counts_changed && now_ts.as_second() - last > i64::from(deadline) {
            condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{name}\" has timed out progressing."),
                prev_progress,
                &now,
            )
        } else {
            let mut c = condition(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{name}\" is progressing."),
                prev_progress,
                &now,
            );
            if counts_changed {
                c["lastUpdateTime"] = json!(now);
            }
            c
        }
    };
    let revision = new_rs.map(revision).unwrap_or(0);
    let status = json!({
        "observedGeneration": d.metadata.generation,
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": (want - available).max(0),
        "conditions": [avail, progressing],
    });
    let current = d
        .status
        .as_ref()
        .map(|s| serde_json::to_value(s).unwrap_or_default());
    let changed = current.as_ref().is_none_or(|c| {
        [
            "observedGeneration",
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
            "unavailableReplicas",
        ]
        .iter()
        .any(|k| c.get(*k).cloned().unwrap_or(json!(0)) != status[*k].clone())
            || conditions_differ(c.get("conditions"), &status["conditions"])
    });
    let api: Api<Deployment> =
        Api::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default());
    if revision > 0
        && d.annotations().get(REVISION).map(String::as_str) != Some(revision.to_string().as_str())
    {
        let patch = json!({"metadata": {"annotations": {REVISION: revision.to_string()}}});
        api.patch(
            &d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    if changed {
        api.patch_status(
            &d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await?;
    }
    Ok(if complete {
        Action::requeue(Duration::from_secs(300))
    } else {
        // Watch for the progress deadline even when nothing else changes.
        Action::requeue(Duration::from_secs(5))
    })
}

fn conditions_differ(current: Option<&Value>, want: &Value) -> bool {
    let key = |v: &Value| {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["type"].clone(),
                    c["status"].clone(),
                    c["reason"].clone(),
                    c["message"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    current.map(key) != Some(key(want))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i32, surge: Value, unavailable: Value) -> Deployment {
        serde_json::from_value(json!({"metadata": {"name": "d"}, "spec": {"replicas": replicas,
            "selector": {"matchLabels": {"app": "x"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
            "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}))
        .unwrap()
    }

    #[test]
    fn surge_and_unavailable_round_as_kubernetes() {
        assert_eq!(
            surge_and_unavailable(&deployment(10, json!("25%"), json!("25%"))),
            (3, 2)
        );
        assert_eq!(
            surge_and_unavailable(&deployment(4, json!(1), json!(0))),
            (1, 0)
        );
        assert_eq!(
            surge_and_unavailable(&deployment(4, json!(0), json!(0))),
            (0, 1)
        );
    }

    #[test]
    fn hashes_are_stable_and_safe() {
        let d = deployment(1, json!(1), json!(0));
        let t = d.spec.unwrap().template;
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&t, None));
        assert_ne!(h, template_hash(&t, Some(1)));
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        let mut labelled = t.clone();
        labelled
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(HASH_LABEL.into(), h);
        assert_eq!(without_hash(&labelled), without_hash(&t));
    }
}
