//! The TTL-after-finished controller: a Job with `ttlSecondsAfterFinished` is deleted (with
//! background propagation, so its pods follow) that many seconds after its `Complete` or `Failed`
//! condition turned true; until then it is looked at again when the time comes.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use super::{Context, ControllerError, drive, error_policy, is_not_found};

pub async fn run(client: Client) {
    let ctx = Context::new(client.clone(), "ttl-after-finished-controller");
    let stream = Controller::new(Api::<Job>::all(client), watcher::Config::default()).run(
        reconcile,
        error_policy,
        ctx,
    );
    drive("ttl-after-finished", stream).await;
}

/// When the Job finished, if it did.
fn finished_at(job: &Job) -> Option<Timestamp> {
    job.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
}

/// When the Job is to be deleted, if it has a TTL and has finished.
fn expires_at(job: &Job) -> Option<Timestamp> {
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    Timestamp::from_second(finished_at(job)?.as_second() + i64::from(ttl)).ok()
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(expires) = expires_at(&job) else {
        return Ok(Action::await_change());
    };
    let left = expires.as_second() - Timestamp::now().as_second();
    if left > 0 {
        return Ok(Action::requeue(Duration::from_secs(left as u64)));
    }
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    // The cached Job may be stale (its TTL changed, or it was recreated): check a fresh copy.
    let fresh = match api.get(&job.name_any()).await {
        Ok(j) => j,
        Err(e) if is_not_found(&e) => return Ok(Action::await_change()),
        Err(e) => return Err(e.into()),
    };
    if fresh.uid() != job.uid()
        || fresh.metadata.deletion_timestamp.is_some()
        || expires_at(&fresh).is_none_or(|t| t > Timestamp::now())
    {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: fresh.uid(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    tracing::info!(job = %job.name_any(), "deleting finished job past its ttlSecondsAfterFinished");
    match api.delete(&job.name_any(), &dp).await {
        Ok(_) => Ok(Action::await_change()),
        Err(e) if is_not_found(&e) => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_job_expires_its_ttl_after_it_finished() {
        let job = |ttl: Option<i32>, cond: &str| -> Job {
            serde_json::from_value(json!({"metadata": {"name": "j"},
                "spec": {"ttlSecondsAfterFinished": ttl, "template": {}},
                "status": {"conditions": [{"type": cond, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}))
            .unwrap()
        };
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(
            expires_at(&job(Some(30), "Complete")),
            Some(at("2026-01-01T00:00:30Z"))
        );
        assert_eq!(
            expires_at(&job(Some(0), "Failed")),
            Some(at("2026-01-01T00:00:00Z"))
        );
        assert_eq!(expires_at(&job(None, "Complete")), None);
        assert_eq!(expires_at(&job(Some(30), "Suspended")), None);
    }
}
