//! A Deployment's status: counts summed over its ReplicaSets, the `Available` condition, and the
//! `Progressing` condition kube keeps — `NewReplicaSetCreated`/`FoundNewReplicaSet` when the
//! rollout starts, `ReplicaSetUpdated` (its `lastUpdateTime` moved) on every sign of progress,
//! `NewReplicaSetAvailable` when complete, `ProgressDeadlineExceeded` once
//! `progressDeadlineSeconds` pass without progress, `DeploymentPaused`/`DeploymentResumed` with
//! `spec.paused` — and the ReplicaSets' `ReplicaFailure`.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::super::ControllerError;
use super::{DeploymentSync, desired, max_unavailable, replicas, status_of};

const PROGRESSING: &str = "Progressing";
const TIMED_OUT: &str = "ProgressDeadlineExceeded";
const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";

/// Whether progress is tracked at all (`progressDeadlineSeconds` set and not "forever").
pub(super) fn has_progress_deadline(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .is_some_and(|s| s != i32::MAX)
}

pub(super) fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn condition<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
}

fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    if let Some(c) = status.conditions.as_mut() {
        c.retain(|c| c.type_ != type_);
    }
}

/// kube's `SetDeploymentCondition`: no change if status and reason are the same; the transition
/// time kept if only the reason changes.
pub(super) fn set_condition(status: &mut DeploymentStatus, mut c: DeploymentCondition) {
    if let Some(cur) = condition(status, &c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    remove_condition(status, &c.type_);
    status.conditions.get_or_insert_with(Vec::new).push(c);
}

/// All of `spec.replicas` updated, available, and nothing else running.
pub(super) fn complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let want = desired(d);
    s.updated_replicas.unwrap_or(0) == want
        && s.replicas.unwrap_or(0) == want
        && s.available_replicas.unwrap_or(0) == want
        && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Any sign of progress from `old` to `new`: more updated, ready or available pods, fewer old.
fn progressing(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let n = |v: Option<i32>| v.unwrap_or(0);
    let old_old = n(old.replicas) - n(old.updated_replicas);
    let new_old = n(new.replicas) - n(new.updated_replicas);
    n(new.updated_replicas) > n(old.updated_replicas)
        || new_old < old_old
        || n(new.ready_replicas) > n(old.ready_replicas)
        || n(new.available_replicas) > n(old.available_replicas)
}

/// The time by which the rollout must show progress: the last progress plus the deadline.
fn deadline(d: &Deployment, s: &DeploymentStatus) -> Option<Timestamp> {
    let c = condition(s, PROGRESSING)?;
    let seconds = d.spec.as_ref()?.progress_deadline_seconds?;
    let from = c.last_update_time.as_ref()?.0;
    Timestamp::from_second(from.as_second() + i64::from(seconds)).ok()
}

fn timed_out(d: &Deployment, s: &DeploymentStatus, now: Timestamp) -> bool {
    if !has_progress_deadline(d) {
        return false;
    }
    match condition(s, PROGRESSING).and_then(|c| c.reason.as_deref()) {
        None | Some(NEW_RS_AVAILABLE) => false,
        Some(TIMED_OUT) => true,
        Some(_) => deadline(d, s).is_some_and(|t| t < now),
    }
}

/// When to look again at a rollout that shows no progress, so the deadline is noticed.
fn recheck_after(d: &Deployment, s: &DeploymentStatus, now: Timestamp) -> Option<Duration> {
    let c = condition(s, PROGRESSING)?;
    if !has_progress_deadline(d) || complete(d, s) || c.reason.as_deref() == Some(TIMED_OUT) {
        return None;
    }
    let left = deadline(d, s)?.as_second() - now.as_second();
    Some(Duration::from_secs(left.max(0) as u64 + 1))
}

impl DeploymentSync<'_> {
    /// Marks `Progressing` Unknown with `DeploymentPaused` while paused, `DeploymentResumed` once
    /// resumed — written at once, as kube does — so the time spent paused never counts against
    /// the progress deadline.
    pub(super) async fn check_paused_conditions(&mut self) -> Result<(), ControllerError> {
        if !has_progress_deadline(self.d) {
            return Ok(());
        }
        let reason = condition(&self.status, PROGRESSING).and_then(|c| c.reason.clone());
        if reason.as_deref() == Some(TIMED_OUT) {
            return Ok(());
        }
        let paused_cond = reason.as_deref() == Some("DeploymentPaused");
        let paused = self.d.spec.as_ref().and_then(|s| s.paused) == Some(true);
        let c = if paused && !paused_cond {
            new_condition(
                PROGRESSING,
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
                self.now,
            )
        } else if !paused && paused_cond {
            new_condition(
                PROGRESSING,
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed".into(),
                self.now,
            )
        } else {
            return Ok(());
        };
        set_condition(&mut self.status, c);
        self.write_status().await
    }

    /// Counts and the `Available` condition from the ReplicaSets (kube's `calculateStatus`).
    pub(super) fn calculate_status(&mut self, new_rs: Option<&ReplicaSet>) {
        let sum = |f: &dyn Fn(&ReplicaSet) -> i32| self.all.iter().map(f).sum::<i32>();
        let available = sum(&|rs| status_of(rs).2);
        let s = &mut self.status;
        s.observed_generation = self.d.metadata.generation;
        s.replicas = Some(sum(&|rs| status_of(rs).0));
        s.updated_replicas = Some(new_rs.map(|rs| status_of(rs).0).unwrap_or(0));
        s.ready_replicas = Some(sum(&|rs| status_of(rs).1));
        s.available_replicas = Some(available);
        s.unavailable_replicas = Some((sum(&replicas) - available).max(0));
        let c = if available >= desired(self.d) - max_unavailable(self.d) {
            new_condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                self.now,
            )
        } else {
            new_condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                self.now,
            )
        };
        set_condition(s, c);
    }

    /// The status after a rollout step, with the progress estimate (kube's `syncRolloutStatus`);
    /// a rollout without progress is looked at again when its deadline passes.
    pub(super) async fn sync_rollout_status(
        &mut self,
        new_rs: Option<&ReplicaSet>,
    ) -> Result<Action, ControllerError> {
        let new_rs = new_rs.and_then(|rs| {
            self.all
                .iter()
                .find(|r| r.name_any() == rs.name_any())
                .cloned()
        });
        let before = self.status.clone();
        self.calculate_status(new_rs.as_ref());
        let d = self.d;
        if !has_progress_deadline(d) {
            remove_condition(&mut self.status, PROGRESSING);
        }
        let current = condition(&before, PROGRESSING);
        let is_complete = self.status.replicas == self.status.updated_replicas
            && current.and_then(|c| c.reason.as_deref()) == Some(NEW_RS_AVAILABLE);
        let subject = match &new_rs {
            Some(rs) => format!("ReplicaSet \"{}\"", rs.name_any()),
            None => format!("Deployment \"{}\"", d.name_any()),
        };
        if has_progress_deadline(d) && !is_complete {
            if complete(d, &self.status) {
                let msg = format!("{subject} has successfully progressed.");
                set_condition(
                    &mut self.status,
                    new_condition(PROGRESSING, "True", NEW_RS_AVAILABLE, msg, self.now),
                );
            } else if progressing(&before, &self.status) {
                let msg = format!("{subject} is progressing.");
                let mut c = new_condition(PROGRESSING, "True", "ReplicaSetUpdated", msg, self.now);
                // Progress moves lastUpdateTime even when the reason stays the same.
                if let Some(cur) = current {
                    if cur.status == "True" {
                        c.last_transition_time = cur.last_transition_time.clone();
                    }
                    remove_condition(&mut self.status, PROGRESSING);
                }
                set_condition(&mut self.status, c);
            } else if timed_out(d, &self.status, self.now) {
                let msg = format!("{subject} has timed out progressing.");
                set_condition(
                    &mut self.status,
                    new_condition(PROGRESSING, "False", TIMED_OUT, msg, self.now),
                );
            }
        }
        // A ReplicaSet that cannot create or delete pods says so on the Deployment: the new one's
        // failure first.
        let failure = new_rs
            .iter()
            .chain(self.all.iter())
            .flat_map(|rs| rs.status.iter().flat_map(|s| s.conditions.iter().flatten()))
            .find(|c| c.type_ == "ReplicaFailure")
            .cloned();
        match failure {
            Some(f) => set_condition(
                &mut self.status,
                DeploymentCondition {
                    type_: f.type_,
                    status: f.status,
                    reason: f.reason,
                    message: f.message,
                    last_update_time: f.last_transition_time.clone(),
                    last_transition_time: f.last_transition_time,
                },
            ),
            None => remove_condition(&mut self.status, "ReplicaFailure"),
        }
        let unchanged = serde_json::to_value(&self.status).ok()
            == serde_json::to_value(d.status.clone().unwrap_or_default()).ok();
        if unchanged {
            return Ok(match recheck_after(d, &self.status, self.now) {
                Some(after) => Action::requeue(after),
                None => Action::requeue(Duration::from_secs(300)),
            });
        }
        self.write_status().await?;
        Ok(Action::requeue(Duration::from_secs(300)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(v: serde_json::Value) -> DeploymentStatus {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn progress_is_more_updated_ready_or_available_or_fewer_old() {
        let old = status(
            json!({"replicas": 4, "updatedReplicas": 1, "readyReplicas": 3, "availableReplicas": 3}),
        );
        assert!(!progressing(&old, &old));
        assert!(progressing(
            &old,
            &status(
                json!({"replicas": 4, "updatedReplicas": 2, "readyReplicas": 3, "availableReplicas": 3})
            )
        ));
        assert!(progressing(
            &old,
            &status(
                json!({"replicas": 3, "updatedReplicas": 1, "readyReplicas": 3, "availableReplicas": 3})
            )
        ));
        assert!(progressing(
            &old,
            &status(
                json!({"replicas": 4, "updatedReplicas": 1, "readyReplicas": 4, "availableReplicas": 3})
            )
        ));
    }

    #[test]
    fn the_deadline_runs_from_the_last_progress() {
        let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "d", "generation": 1},
            "spec": {"replicas": 2, "progressDeadlineSeconds": 10, "selector": {}, "template": {}}})).unwrap();
        let s = |reason: &str| {
            status(
                json!({"conditions": [{"type": "Progressing", "status": "True", "reason": reason,
            "lastUpdateTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
            )
        };
        let at = |t: &str| t.parse::<Timestamp>().unwrap();
        assert!(!timed_out(
            &d,
            &s("ReplicaSetUpdated"),
            at("2026-01-01T00:00:10Z")
        ));
        assert!(timed_out(
            &d,
            &s("ReplicaSetUpdated"),
            at("2026-01-01T00:00:11Z")
        ));
        assert!(!timed_out(
            &d,
            &s(NEW_RS_AVAILABLE),
            at("2026-01-01T01:00:00Z")
        ));
        assert_eq!(
            recheck_after(&d, &s("ReplicaSetUpdated"), at("2026-01-01T00:00:04Z")),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let mut s = DeploymentStatus::default();
        set_condition(
            &mut s,
            new_condition(PROGRESSING, "True", "NewReplicaSetCreated", "a".into(), t0),
        );
        set_condition(
            &mut s,
            new_condition(PROGRESSING, "True", "NewReplicaSetCreated", "b".into(), t1),
        );
        assert_eq!(
            condition(&s, PROGRESSING).unwrap().message.as_deref(),
            Some("a")
        );
        set_condition(
            &mut s,
            new_condition(PROGRESSING, "True", NEW_RS_AVAILABLE, "c".into(), t1),
        );
        let c = condition(&s, PROGRESSING).unwrap();
        assert_eq!(
            (
                c.last_transition_time.as_ref().unwrap().0,
                c.last_update_time.as_ref().unwrap().0
            ),
            (t0, t1)
        );
    }
}
