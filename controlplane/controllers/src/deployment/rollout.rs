//! One step of a rollout, as kube's `rolloutRolling` and `rolloutRecreate`: RollingUpdate grows
//! the new ReplicaSet within maxSurge, else shrinks old ones within maxUnavailable (their
//! unavailable pods first); Recreate empties the old ReplicaSets, waits until none of their pods
//! runs, then creates the new one at full size. The history is cleaned once a rollout completes.

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use std::time::Duration;

use super::super::pods::is_terminal;
use super::super::{ControllerError, controller_uid, selects};
use super::progress::complete;
use super::{DeploymentSync, desired, max_unavailable, replicas, status_of};

impl DeploymentSync<'_> {
    pub(super) async fn rollout_rolling(&mut self) -> Result<Action, ControllerError> {
        let new_rs = self
            .new_replica_set(true)
            .await?
            .expect("created when missing");
        if self.reconcile_new(&new_rs).await? || self.reconcile_old(&new_rs).await? {
            return self.sync_rollout_status(Some(&new_rs)).await;
        }
        if complete(self.d, &self.status) {
            self.cleanup().await?;
        }
        self.sync_rollout_status(Some(&new_rs)).await
    }

    pub(super) async fn rollout_recreate(&mut self) -> Result<Action, ControllerError> {
        let mut new_rs = self.new_replica_set(false).await?;
        let mut scaled_down = false;
        for rs in self.old_rss().iter().filter(|rs| replicas(rs) > 0) {
            scaled_down |= self.scale_to(rs, 0).await?;
        }
        if scaled_down {
            return self.sync_rollout_status(new_rs.as_ref()).await;
        }
        if self.old_pods_running().await? {
            self.sync_rollout_status(new_rs.as_ref()).await?;
            // Pods going away change no ReplicaSet; look again shortly.
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        if new_rs.is_none() {
            new_rs = self.new_replica_set(true).await?;
        }
        let new_rs = new_rs.expect("created when missing");
        self.scale_to(&new_rs, desired(self.d)).await?;
        if complete(self.d, &self.status) {
            self.cleanup().await?;
        }
        self.sync_rollout_status(Some(&new_rs)).await
    }

    /// Whether a pod of an old ReplicaSet is still there and not finished (terminating ones
    /// count: Recreate promises old and new never run together).
    async fn old_pods_running(&self) -> Result<bool, ControllerError> {
        let old_rss = self.old_rss();
        if old_rss.iter().any(|rs| status_of(rs).0 > 0) {
            return Ok(true);
        }
        let old: Vec<String> = old_rss.iter().filter_map(|rs| rs.uid()).collect();
        let selector = &self.d.spec.as_ref().expect("checked by reconcile").selector;
        let pods = Api::<Pod>::namespaced(
            self.ctx.client.clone(),
            &self.d.namespace().unwrap_or_default(),
        )
        .list(&ListParams::default())
        .await?;
        Ok(pods.items.iter().any(|p| {
            selects(selector, p.labels())
                && controller_uid(p).is_some_and(|u| old.iter().any(|o| o == u))
                && !is_terminal(p)
        }))
    }

    /// Grows (or trims) the new ReplicaSet within maxSurge.
    async fn reconcile_new(&mut self, new_rs: &ReplicaSet) -> Result<bool, ControllerError> {
        let want = desired(self.d);
        let current = replicas(new_rs);
        if current == want {
            return Ok(false);
        }
        if current > want {
            return self.scale(new_rs, want, "down").await;
        }
        let to = super::sync::new_rs_replicas(self.d, &self.all, new_rs);
        self.scale_to(new_rs, to).await
    }

    /// Shrinks old ReplicaSets as far as maxUnavailable allows: first the pods that are not
    /// available anyway, then available ones, oldest ReplicaSet first.
    async fn reconcile_old(&mut self, new_rs: &ReplicaSet) -> Result<bool, ControllerError> {
        let mut old: Vec<ReplicaSet> = self
            .old_rss()
            .into_iter()
            .filter(|rs| replicas(rs) > 0)
            .collect();
        if old.is_empty() {
            return Ok(false);
        }
        old.sort_by_key(|rs| {
            (
                rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
                rs.name_any(),
            )
        });
        let all_pods: i32 = self.all.iter().map(replicas).sum();
        let min_available = desired(self.d) - max_unavailable(self.d);
        let new_unavailable = replicas(new_rs) - status_of(new_rs).2;
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        let mut scaled_down = 0;
        for rs in &old {
            if scaled_down >= max_scaled_down {
                break;
            }
            let unhealthy = replicas(rs) - status_of(rs).2;
            if unhealthy <= 0 {
                continue;
            }
            let n = unhealthy.min(max_scaled_down - scaled_down);
            self.scale(rs, replicas(rs) - n, "down").await?;
            scaled_down += n;
        }
        // With the unhealthy ones gone, available pods above the minimum may go too.
        let available: i32 = self.all.iter().map(|rs| status_of(rs).2).sum();
        let mut budget = available - min_available;
        for name in old.iter().map(|rs| rs.name_any()) {
            if budget <= 0 {
                break;
            }
            let Some(rs) = self.all.iter().find(|r| r.name_any() == name).cloned() else {
                continue;
            };
            let n = replicas(&rs).min(budget);
            if n == 0 {
                continue;
            }
            self.scale(&rs, replicas(&rs) - n, "down").await?;
            budget -= n;
            scaled_down += n;
        }
        Ok(scaled_down > 0)
    }
}
