//! Finding or creating the new ReplicaSet (with the hash-collision retry and the revision
//! annotations), scaling a ReplicaSet with its `ScalingReplicaSet` event, proportional scaling
//! for paused Deployments and changes of `spec.replicas`, and the history limit.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::super::pod_control::{error_message, record};
use super::super::{ControllerError, controller_ref, controller_uid, is_not_found, template_hash};
use super::progress::{has_progress_deadline, new_condition, set_condition};
use super::{
    DESIRED_REPLICAS, DeploymentSync, HASH_LABEL, MAX_REPLICAS, REVISION, REVISION_HISTORY,
    desired, max_surge, replicas, revision, same_template, status_of,
};

/// Annotations of the Deployment never copied to its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

/// The longest `revision-history` annotation kept, in characters.
const MAX_REVISION_HISTORY_CHARS: usize = 2000;

/// Brings a new ReplicaSet's annotations in line with its Deployment (kube's
/// `SetNewReplicaSetAnnotations`): the Deployment's own annotations, the revision — a ReplicaSet
/// brought back into service by a rollback keeps its former revisions in `revision-history` — and,
/// for one about to be created, the replica annotations. Returns whether anything changed.
fn set_new_rs_annotations(
    d: &Deployment,
    annotations: &mut BTreeMap<String, String>,
    new_revision: i64,
    exists: bool,
) -> bool {
    let mut changed = false;
    for (k, v) in d.annotations() {
        if NOT_COPIED.contains(&k.as_str()) || annotations.get(k) == Some(v) {
            continue;
        }
        annotations.insert(k.clone(), v.clone());
        changed = true;
    }
    let old = annotations.get(REVISION).cloned();
    let old_revision = match old.as_deref().map(str::parse::<i64>) {
        None => 0,
        Some(Ok(r)) => r,
        Some(Err(_)) => return false,
    };
    if old_revision < new_revision {
        annotations.insert(REVISION.into(), new_revision.to_string());
        changed = true;
        if let Some(old) = old {
            let history = annotations
                .get(REVISION_HISTORY)
                .cloned()
                .unwrap_or_default();
            let mut revisions: Vec<&str> = history.split(',').filter(|r| !r.is_empty()).collect();
            revisions.push(&old);
            while revisions.join(",").len() > MAX_REVISION_HISTORY_CHARS && revisions.len() > 1 {
                revisions.remove(0);
            }
            annotations.insert(REVISION_HISTORY.into(), revisions.join(","));
        }
    }
    if !exists {
        annotations.insert(DESIRED_REPLICAS.into(), desired(d).to_string());
        annotations.insert(MAX_REPLICAS.into(), (desired(d) + max_surge(d)).to_string());
        changed = true;
    }
    changed
}

/// The size a new ReplicaSet starts at: as much of `spec.replicas` as maxSurge leaves room for
/// (Recreate: all of it).
pub(super) fn new_rs_replicas(d: &Deployment, all: &[ReplicaSet], new_rs: &ReplicaSet) -> i32 {
    if !super::is_rolling_update(d) {
        return desired(d);
    }
    let current: i32 = all.iter().map(replicas).sum();
    let max_total = desired(d) + max_surge(d);
    if current >= max_total {
        return replicas(new_rs);
    }
    replicas(new_rs) + (max_total - current).min(desired(d) - replicas(new_rs))
}

/// One ReplicaSet as proportional scaling weighs it.
#[derive(Debug, Clone)]
struct Share {
    name: String,
    replicas: i32,
    /// The `max-replicas` annotation: the Deployment's size (with surge) when it was last sized.
    max_replicas: Option<i32>,
    created: Option<Timestamp>,
}

/// kube's `GetProportion`: this ReplicaSet's part of `to_add`, in proportion to its size, never
/// more than what is left to add (or remove).
fn proportion(
    share: &Share,
    d_max: i32,
    want: i32,
    d_status_replicas: i32,
    to_add: i32,
    added: i32,
) -> i32 {
    if share.replicas == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = if want == 0 {
        -share.replicas
    } else {
        let before = share
            .max_replicas
            .filter(|m| *m != 0)
            .unwrap_or(d_status_replicas);
        if before == 0 {
            return 0;
        }
        (f64::from(share.replicas) * f64::from(d_max) / f64::from(before)).round() as i32
            - share.replicas
    };
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

/// New sizes for the active ReplicaSets of a rollout in progress when the Deployment is resized:
/// the difference to `spec.replicas` + maxSurge is spread in proportion to their sizes, larger
/// first (ties: newer first when growing, older first when shrinking), the rounding leftover to
/// the first. Returns (name, size) in that order and "up" or "down".
fn proportional_sizes(
    mut shares: Vec<Share>,
    want: i32,
    surge: i32,
    d_status_replicas: i32,
) -> (Vec<(String, i32)>, &'static str) {
    let d_max = if want > 0 { want + surge } else { 0 };
    let total: i32 = shares.iter().map(|s| s.replicas).sum();
    let to_add = d_max - total;
    let op = if to_add > 0 {
        shares.sort_by(|a, b| {
            b.replicas
                .cmp(&a.replicas)
                .then_with(|| (b.created, &b.name).cmp(&(a.created, &a.name)))
        });
        "up"
    } else {
        shares.sort_by(|a, b| {
            b.replicas
                .cmp(&a.replicas)
                .then_with(|| (a.created, &a.name).cmp(&(b.created, &b.name)))
        });
        "down"
    };
    let mut added = 0;
    let mut sizes: Vec<(String, i32)> = shares
        .iter()
        .map(|s| {
            let p = proportion(s, want + surge, want, d_status_replicas, to_add, added);
            added += p;
            (s.name.clone(), s.replicas + p)
        })
        .collect();
    if let Some(first) = sizes.first_mut()
        && to_add != 0
    {
        first.1 = (first.1 + to_add - added).max(0);
    }
    (sizes, op)
}

impl DeploymentSync<'_> {
    /// Sets `spec.replicas` of a ReplicaSet (and its replica annotations) and records
    /// `ScalingReplicaSet` "Scaled up|down replica set NAME from A to B" if the size changed.
    pub(super) async fn scale(
        &mut self,
        rs: &ReplicaSet,
        to: i32,
        op: &str,
    ) -> Result<bool, ControllerError> {
        let from = replicas(rs);
        let want = desired(self.d).to_string();
        let max = (desired(self.d) + max_surge(self.d)).to_string();
        let annotations_stale = rs.annotations().get(DESIRED_REPLICAS) != Some(&want)
            || rs.annotations().get(MAX_REPLICAS) != Some(&max);
        if from == to && !annotations_stale {
            return Ok(false);
        }
        let patch = json!({
            "metadata": {"annotations": {DESIRED_REPLICAS: want, MAX_REPLICAS: max}},
            "spec": {"replicas": to},
        });
        let updated = self
            .api
            .patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        self.store(updated);
        if from == to {
            return Ok(false);
        }
        let note = format!(
            "Scaled {op} replica set {} from {from} to {to}",
            rs.name_any()
        );
        tracing::info!(deployment = %self.d.name_any(), "{note}");
        record(
            self.ctx,
            self.d,
            EventType::Normal,
            "ScalingReplicaSet",
            "Scale",
            note,
        )
        .await;
        Ok(true)
    }

    /// Scales to `to`, "up" or "down" by the direction.
    pub(super) async fn scale_to(
        &mut self,
        rs: &ReplicaSet,
        to: i32,
    ) -> Result<bool, ControllerError> {
        let op = if to > replicas(rs) { "up" } else { "down" };
        self.scale(rs, to, op).await
    }

    /// The new ReplicaSet, its revision brought up to date (kube's `getNewReplicaSet`); created
    /// if there is none and `create` is set. A name taken by a ReplicaSet of another template
    /// bumps `status.collisionCount` and fails this sync, so the next one tries another hash.
    pub(super) async fn new_replica_set(
        &mut self,
        create: bool,
    ) -> Result<Option<ReplicaSet>, ControllerError> {
        let max_old_revision = self.old_rss().iter().map(revision).max().unwrap_or(0);
        let new_revision = max_old_revision + 1;
        if let Some(existing) = self.new_rs().cloned() {
            let mut annotations = existing.annotations().clone();
            let changed = set_new_rs_annotations(self.d, &mut annotations, new_revision, true);
            let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            let existing_min_ready = existing.spec.as_ref().and_then(|s| s.min_ready_seconds);
            if changed || min_ready.unwrap_or(0) != existing_min_ready.unwrap_or(0) {
                let patch = json!({"metadata": {"annotations": annotations},
                    "spec": {"minReadySeconds": min_ready.unwrap_or(0)}});
                let updated = self
                    .api
                    .patch(
                        &existing.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
                self.store(updated.clone());
                return Ok(Some(updated));
            }
            let rev = existing
                .annotations()
                .get(REVISION)
                .cloned()
                .unwrap_or_default();
            self.set_deployment_revision(&rev).await?;
            if has_progress_deadline(self.d)
                && self
                    .status
                    .conditions
                    .iter()
                    .flatten()
                    .all(|c| c.type_ != "Progressing")
            {
                let msg = format!("Found new replica set \"{}\"", existing.name_any());
                let c = new_condition("Progressing", "True", "FoundNewReplicaSet", msg, self.now);
                set_condition(&mut self.status, c);
            }
            return Ok(Some(existing));
        }
        if !create {
            return Ok(None);
        }
        let d = self.d;
        let spec = d.spec.as_ref().expect("checked by reconcile");
        let hash = template_hash(&spec.template, self.status.collision_count);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("{}-{hash}", d.name_any())),
                namespace: d.namespace(),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                owner_references: Some(vec![controller_ref(d)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let mut with_new = self.old_rss();
        with_new.push(rs.clone());
        let initial = new_rs_replicas(d, &with_new, &rs);
        rs.spec.as_mut().expect("set above").replicas = Some(initial);
        let mut annotations = BTreeMap::new();
        set_new_rs_annotations(d, &mut annotations, new_revision, false);
        rs.metadata.annotations = Some(annotations);
        let name = rs.name_any();
        let created = match self.api.create(&PostParams::default(), &rs).await {
            Ok(created) => {
                if initial > 0 {
                    let note = format!("Scaled up replica set {name} from 0 to {initial}");
                    record(
                        self.ctx,
                        d,
                        EventType::Normal,
                        "ScalingReplicaSet",
                        "Scale",
                        note,
                    )
                    .await;
                }
                if has_progress_deadline(d) {
                    let msg = format!("Created new replica set \"{name}\"");
                    let c =
                        new_condition("Progressing", "True", "NewReplicaSetCreated", msg, self.now);
                    set_condition(&mut self.status, c);
                }
                created
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let existing = self.api.get(&name).await?;
                if controller_uid(&existing) == d.uid().as_deref() && same_template(d, &existing) {
                    existing
                } else {
                    return Err(self.hash_collision(&name).await);
                }
            }
            Err(e) => {
                let msg = format!(
                    "Failed to create new replica set \"{name}\": {}",
                    error_message(&e)
                );
                if has_progress_deadline(d) {
                    let c = new_condition(
                        "Progressing",
                        "False",
                        "ReplicaSetCreateError",
                        msg.clone(),
                        self.now,
                    );
                    set_condition(&mut self.status, c);
                    self.write_status().await?;
                }
                record(
                    self.ctx,
                    d,
                    EventType::Warning,
                    "ReplicaSetCreateError",
                    "Create",
                    msg,
                )
                .await;
                return Err(e.into());
            }
        };
        self.store(created.clone());
        self.set_deployment_revision(&new_revision.to_string())
            .await?;
        Ok(Some(created))
    }

    /// Bumps `status.collisionCount` after the ReplicaSet name `name` turned out taken.
    async fn hash_collision(&mut self, name: &str) -> ControllerError {
        let count = self.status.collision_count.unwrap_or(0) + 1;
        tracing::info!(deployment = %self.d.name_any(), name, count, "hash collision; bumping collisionCount");
        self.status.collision_count = Some(count);
        match self.write_status().await {
            Ok(()) => ControllerError::Invalid(format!(
                "replica set {name} exists with another template (hash collision)"
            )),
            Err(e) => e,
        }
    }

    /// Puts `rev` in the Deployment's revision annotation.
    async fn set_deployment_revision(&self, rev: &str) -> Result<(), ControllerError> {
        if rev.is_empty() || self.d.annotations().get(REVISION).map(String::as_str) == Some(rev) {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
        Api::<Deployment>::namespaced(
            self.ctx.client.clone(),
            &self.d.namespace().unwrap_or_default(),
        )
        .patch(
            &self.d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        Ok(())
    }

    /// Resizes the ReplicaSets to `spec.replicas` without rolling (kube's `scale`): a lone
    /// active ReplicaSet takes it all; a saturated new one leaves the old ones empty; otherwise,
    /// in a rolling update, proportionally.
    async fn scale_all(&mut self, new_rs: Option<&ReplicaSet>) -> Result<(), ControllerError> {
        let want = desired(self.d);
        let mut old = self.old_rss();
        old.sort_by_key(|rs| {
            std::cmp::Reverse((
                rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
                rs.name_any(),
            ))
        });
        let mut active: Vec<ReplicaSet> = old
            .iter()
            .chain(new_rs)
            .filter(|rs| replicas(rs) > 0)
            .cloned()
            .collect();
        let lone = match active.len() {
            0 => new_rs.or(old.first()).cloned(),
            1 => active.pop(),
            _ => None,
        };
        if let Some(rs) = lone {
            if replicas(&rs) != want {
                self.scale_to(&rs, want).await?;
            }
            return Ok(());
        }
        if let Some(new_rs) = new_rs
            && is_saturated(self.d, new_rs)
        {
            for rs in old.iter().filter(|rs| replicas(rs) > 0) {
                self.scale_to(rs, 0).await?;
            }
            return Ok(());
        }
        if !super::is_rolling_update(self.d) {
            return Ok(());
        }
        let shares: Vec<Share> = active
            .iter()
            .map(|rs| Share {
                name: rs.name_any(),
                replicas: replicas(rs),
                max_replicas: rs
                    .annotations()
                    .get(MAX_REPLICAS)
                    .and_then(|v| v.parse().ok()),
                created: rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
            })
            .collect();
        let status_replicas = self.d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let (sizes, op) = proportional_sizes(shares, want, max_surge(self.d), status_replicas);
        for (name, size) in sizes {
            let rs = active
                .iter()
                .find(|rs| rs.name_any() == name)
                .cloned()
                .expect("from active");
            self.scale(&rs, size, op).await?;
        }
        Ok(())
    }

    /// A paused Deployment or a change of `spec.replicas`: scale only, clean up history when
    /// paused, report status (kube's `sync`).
    pub(super) async fn sync(&mut self) -> Result<(), ControllerError> {
        let new_rs = self.new_replica_set(false).await?;
        self.scale_all(new_rs.as_ref()).await?;
        if self.d.spec.as_ref().and_then(|s| s.paused) == Some(true) {
            self.cleanup().await?;
        }
        let new_rs = new_rs.and_then(|rs| {
            self.all
                .iter()
                .find(|r| r.name_any() == rs.name_any())
                .cloned()
        });
        self.calculate_status(new_rs.as_ref());
        self.write_status().await
    }

    /// A Deployment being deleted: report status only.
    pub(super) async fn sync_status_only(&mut self) -> Result<(), ControllerError> {
        let new_rs = self.new_replica_set(false).await?;
        self.calculate_status(new_rs.as_ref());
        self.write_status().await
    }

    /// Deletes the oldest old ReplicaSets beyond `revisionHistoryLimit` that are empty and whose
    /// emptiness their controller has seen (kube's `cleanupDeployment`).
    pub(super) async fn cleanup(&mut self) -> Result<(), ControllerError> {
        let Some(limit) = self.d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
            return Ok(());
        };
        let mut cleanable: Vec<ReplicaSet> = self
            .old_rss()
            .into_iter()
            .filter(|rs| rs.metadata.deletion_timestamp.is_none())
            .collect();
        let diff = cleanable.len() as i64 - i64::from(limit);
        if diff <= 0 {
            return Ok(());
        }
        cleanable.sort_by_key(|rs| {
            (
                revision(rs),
                rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
            )
        });
        for rs in cleanable.iter().take(diff as usize) {
            let observed = rs
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            if status_of(rs).0 != 0
                || replicas(rs) != 0
                || rs.metadata.generation.unwrap_or(0) > observed
            {
                continue;
            }
            tracing::info!(deployment = %self.d.name_any(), replicaset = %rs.name_any(), "cleaning up old replica set");
            match self.api.delete(&rs.name_any(), &Default::default()).await {
                Ok(_) => self.all.retain(|r| r.name_any() != rs.name_any()),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// The new ReplicaSet runs all of `spec.replicas`, available, and was sized for it.
fn is_saturated(d: &Deployment, rs: &ReplicaSet) -> bool {
    let want = desired(d);
    rs.annotations()
        .get(DESIRED_REPLICAS)
        .and_then(|v| v.parse::<i32>().ok())
        == Some(want)
        && replicas(rs) == want
        && status_of(rs).2 == want
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Option<Timestamp> {
        Some(s.parse().unwrap())
    }

    fn share(name: &str, replicas: i32, max: i32, created: &str) -> Share {
        Share {
            name: name.into(),
            replicas,
            max_replicas: Some(max),
            created: at(created),
        }
    }

    #[test]
    fn scaling_mid_rollout_spreads_the_difference_by_size() {
        // 10 replicas, maxSurge 3: old has 8, new 5 (13 = 10 + 3). Scaled to 20 (max 23):
        // +10 in proportion 8:5 → old +6 (8*23/13 = 14.15 → 14), new +4 (5*23/13 = 8.8 → 9, capped
        // by what is left).
        let (sizes, op) = proportional_sizes(
            vec![
                share("new", 5, 13, "2026-01-01T00:01:00Z"),
                share("old", 8, 13, "2026-01-01T00:00:00Z"),
            ],
            20,
            3,
            13,
        );
        assert_eq!(op, "up");
        assert_eq!(sizes, [("old".to_string(), 14), ("new".to_string(), 9)]);
        // Back down to 5 (max 5 + 2 = 7): -16 in proportion, larger first.
        let (sizes, op) = proportional_sizes(
            vec![
                share("new", 9, 23, "2026-01-01T00:01:00Z"),
                share("old", 14, 23, "2026-01-01T00:00:00Z"),
            ],
            5,
            2,
            23,
        );
        assert_eq!(op, "down");
        assert_eq!(sizes, [("old".to_string(), 4), ("new".to_string(), 3)]);
        // To zero: everything goes.
        let (sizes, _) = proportional_sizes(
            vec![
                share("a", 2, 4, "2026-01-01T00:01:00Z"),
                share("b", 2, 4, "2026-01-01T00:00:00Z"),
            ],
            0,
            1,
            4,
        );
        assert_eq!(sizes.iter().map(|s| s.1).sum::<i32>(), 0);
    }

    #[test]
    fn equal_sizes_grow_newest_first_and_shrink_oldest_first() {
        let shares = vec![
            share("older", 2, 4, "2026-01-01T00:00:00Z"),
            share("newer", 2, 4, "2026-01-01T00:01:00Z"),
        ];
        // 4 → 5: one more, the rounding leftover goes to the newer one.
        let (sizes, _) = proportional_sizes(shares.clone(), 5, 0, 4);
        assert_eq!(sizes, [("newer".to_string(), 3), ("older".to_string(), 2)]);
        let (sizes, _) = proportional_sizes(shares, 3, 0, 4);
        assert_eq!(sizes, [("older".to_string(), 1), ("newer".to_string(), 2)]);
    }

    #[test]
    fn a_rollback_keeps_the_former_revisions() {
        let d = super::super::tests::deployment(3, json!(1), json!(0));
        let mut a: BTreeMap<String, String> = [(REVISION.to_string(), "1".to_string())].into();
        assert!(set_new_rs_annotations(&d, &mut a, 3, true));
        assert_eq!(
            (a[REVISION].as_str(), a[REVISION_HISTORY].as_str()),
            ("3", "1")
        );
        assert!(set_new_rs_annotations(&d, &mut a, 5, true));
        assert_eq!(a[REVISION_HISTORY], "1,3");
        // Not lowered, nothing to do.
        assert!(!set_new_rs_annotations(&d, &mut a, 2, true));
        let mut fresh = BTreeMap::new();
        assert!(set_new_rs_annotations(&d, &mut fresh, 1, false));
        assert_eq!(
            (
                fresh[DESIRED_REPLICAS].as_str(),
                fresh[MAX_REPLICAS].as_str()
            ),
            ("3", "4")
        );
    }

    #[test]
    fn a_new_replica_set_starts_within_the_surge() {
        let d = super::super::tests::deployment(4, json!(1), json!(0));
        let rs = |n: i32| -> ReplicaSet {
            serde_json::from_value(
                json!({"metadata": {"name": "x"}, "spec": {"replicas": n, "selector": {}}}),
            )
            .unwrap()
        };
        assert_eq!(new_rs_replicas(&d, &[rs(4), rs(0)], &rs(0)), 1);
        assert_eq!(new_rs_replicas(&d, &[rs(0)], &rs(0)), 4);
        assert_eq!(new_rs_replicas(&d, &[rs(5), rs(0)], &rs(0)), 0);
    }
}
