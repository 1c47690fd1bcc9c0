//! The Deployment controller, step for step as kube-controller-manager's `syncDeployment`: one
//! ReplicaSet per pod template, named by its `pod-template-hash` (salted by
//! `status.collisionCount` when another ReplicaSet already holds the name); a paused Deployment
//! or a change of `spec.replicas` only scales, proportionally across the ReplicaSets of a rollout
//! in progress (`sync.rs`); otherwise RollingUpdate within maxSurge/maxUnavailable or Recreate
//! (`rollout.rs`); revisions in `deployment.kubernetes.io/revision`, the history limit; and the
//! status with its `Available` and `Progressing` conditions, including the progress deadline
//! (`progress.rs`).

mod progress;
mod rollout;
mod sync;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use super::{Context, ControllerError, claim, drive, error_policy};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
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

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn desired(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// (replicas, ready, available) from a ReplicaSet's status.
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

fn is_rolling_update(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate"
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

/// maxSurge and maxUnavailable resolved against the desired replicas (kube's
/// `ResolveFenceposts`): never both zero.
fn fenceposts(d: &Deployment) -> (i32, i32) {
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let want = desired(d);
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
        (surge, unavailable)
    }
}

/// How many pods a rolling update may add above `spec.replicas` (0 for Recreate).
pub fn max_surge(d: &Deployment) -> i32 {
    if is_rolling_update(d) {
        fenceposts(d).0
    } else {
        0
    }
}

/// How many pods may be unavailable during a rolling update (0 for Recreate or no replicas).
pub fn max_unavailable(d: &Deployment) -> i32 {
    if !is_rolling_update(d) || desired(d) == 0 {
        0
    } else {
        fenceposts(d).1.min(desired(d))
    }
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

fn same_template(d: &Deployment, rs: &ReplicaSet) -> bool {
    let want = d.spec.as_ref().map(|s| without_hash(&s.template));
    rs.spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .map(without_hash)
        == want
}

/// What one sync of a Deployment works with: its ReplicaSets as they are now and the status it
/// is building, written once at the end if it changed.
struct DeploymentSync<'a> {
    d: &'a Deployment,
    ctx: &'a Context,
    api: Api<ReplicaSet>,
    all: Vec<ReplicaSet>,
    status: DeploymentStatus,
    now: Timestamp,
}

impl DeploymentSync<'_> {
    /// The ReplicaSet whose template is the Deployment's (the oldest if several are).
    fn new_rs(&self) -> Option<&ReplicaSet> {
        self.all
            .iter()
            .filter(|rs| same_template(self.d, rs))
            .min_by_key(|rs| {
                (
                    rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    rs.name_any(),
                )
            })
    }

    /// Every other ReplicaSet.
    fn old_rss(&self) -> Vec<ReplicaSet> {
        let new = self.new_rs().map(|rs| rs.name_any());
        self.all
            .iter()
            .filter(|rs| Some(rs.name_any()) != new)
            .cloned()
            .collect()
    }

    /// Replaces a ReplicaSet with its updated version.
    fn store(&mut self, rs: ReplicaSet) {
        match self.all.iter_mut().find(|r| r.name_any() == rs.name_any()) {
            Some(slot) => *slot = rs,
            None => self.all.push(rs),
        }
    }

    /// Writes the status if it changed.
    async fn write_status(&self) -> Result<(), ControllerError> {
        let old =
            serde_json::to_value(self.d.status.clone().unwrap_or_default()).unwrap_or_default();
        let new = serde_json::to_value(&self.status).unwrap_or_default();
        if old == new {
            return Ok(());
        }
        Api::<Deployment>::namespaced(
            self.ctx.client.clone(),
            &self.d.namespace().unwrap_or_default(),
        )
        .patch_status(
            &self.d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": new })),
        )
        .await?;
        Ok(())
    }
}

/// Whether `spec.replicas` changed since the active ReplicaSets were last sized (their
/// `desired-replicas` annotation says otherwise).
fn is_scaling_event(d: &Deployment, all: &[ReplicaSet]) -> bool {
    all.iter().filter(|rs| replicas(rs) > 0).any(|rs| {
        rs.annotations()
            .get(DESIRED_REPLICAS)
            .and_then(|v| v.parse::<i32>().ok())
            .is_some_and(|v| v != desired(d))
    })
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    let ns = d.namespace().unwrap_or_default();
    if d.spec.is_none() {
        return Err(ControllerError::Invalid(format!(
            "deployment {ns}/{} has no spec",
            d.name_any()
        )));
    }
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = &d.spec.as_ref().expect("checked above").selector;
    let all = claim(
        &*d,
        selector,
        &api,
        api.list(&ListParams::default()).await?.items,
    )
    .await?;
    let mut sync = DeploymentSync {
        d: &d,
        ctx: &ctx,
        api,
        all,
        status: d.status.clone().unwrap_or_default(),
        now: super::now(),
    };
    if d.metadata.deletion_timestamp.is_some() {
        sync.sync_status_only().await?;
        return Ok(Action::await_change());
    }
    sync.check_paused_conditions().await?;
    let paused = d.spec.as_ref().and_then(|s| s.paused) == Some(true);
    if paused || is_scaling_event(&d, &sync.all) {
        sync.sync().await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }
    if is_rolling_update(&d) {
        sync.rollout_rolling().await
    } else {
        sync.rollout_recreate().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn deployment(replicas: i32, surge: Value, unavailable: Value) -> Deployment {
        serde_json::from_value(json!({"metadata": {"name": "d"}, "spec": {"replicas": replicas,
            "selector": {"matchLabels": {"app": "x"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
            "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}))
        .unwrap()
    }

    #[test]
    fn surge_and_unavailable_round_as_kubernetes() {
        let d = deployment(10, json!("25%"), json!("25%"));
        assert_eq!((max_surge(&d), max_unavailable(&d)), (3, 2));
        let d = deployment(4, json!(1), json!(0));
        assert_eq!((max_surge(&d), max_unavailable(&d)), (1, 0));
        let d = deployment(4, json!(0), json!(0));
        assert_eq!((max_surge(&d), max_unavailable(&d)), (0, 1));
        let mut d = deployment(4, json!(1), json!(1));
        d.spec.as_mut().unwrap().strategy =
            serde_json::from_value(json!({"type": "Recreate"})).ok();
        assert_eq!((max_surge(&d), max_unavailable(&d)), (0, 0));
    }

    #[test]
    fn hashes_are_stable_and_the_hash_label_is_ignored_when_comparing() {
        let d = deployment(1, json!(1), json!(0));
        let t = d.spec.unwrap().template;
        let h = super::super::template_hash(&t, None);
        assert_eq!(h, super::super::template_hash(&t, None));
        assert_ne!(h, super::super::template_hash(&t, Some(1)));
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
