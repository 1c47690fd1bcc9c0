//! The Job controller: runs up to `parallelism` pods at a time until `completions` of them have
//! succeeded, then marks the Job `SuccessCriteriaMet` and `Complete`; more than `backoffLimit`
//! failed pods, or a run longer than `activeDeadlineSeconds`, make it `FailureTarget` and `Failed`
//! (BackoffLimitExceeded, DeadlineExceeded) and its running pods are deleted.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use super::pods::{is_active, is_ready};
use super::{
    Context, ControllerError, controller_ref, controller_uid, drive, error_policy, is_not_found,
};

pub async fn run(client: Client) {
    let ctx = Context::new(client.clone(), "job-controller");
    let stream = Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Pod>::all(client), watcher::Config::default())
        .run(reconcile, error_policy, ctx);
    drive("job", stream).await;
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn finished(job: &Job) -> bool {
    job.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

fn pod_for(job: &Job) -> Pod {
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    let uid = job.uid().unwrap_or_default();
    labels.insert("batch.kubernetes.io/job-name".into(), job.name_any());
    labels.insert("job-name".into(), job.name_any());
    labels.insert("batch.kubernetes.io/controller-uid".into(), uid.clone());
    labels.insert("controller-uid".into(), uid);
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", job.name_any())),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![controller_ref(job)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

fn condition(type_: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({"type": type_, "status": "True", "reason": reason, "message": message,
        "lastProbeTime": now, "lastTransitionTime": now})
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    if job.metadata.deletion_timestamp.is_some() || finished(&job) {
        return Ok(Action::await_change());
    }
    let ns = job.namespace().unwrap_or_default();
    let spec = job.spec.as_ref().ok_or_else(|| {
        ControllerError::Invalid(format!("job {ns}/{} has no spec", job.name_any()))
    })?;
    let uid = job.uid().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Vec<Pod> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| controller_uid(p) == Some(uid.as_str()))
        .collect();
    let succeeded = pods.iter().filter(|p| phase(p) == "Succeeded").count() as i32;
    let failed = pods.iter().filter(|p| phase(p) == "Failed").count() as i32;
    let active: Vec<&Pod> = pods.iter().filter(|p| is_active(p)).collect();
    let ready = active.iter().filter(|p| is_ready(p)).count() as i32;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let completions = spec.completions.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let now = Timestamp::now();
    let now_s = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let start = job
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0)
        .unwrap_or(now);
    let overdue = spec
        .active_deadline_seconds
        .is_some_and(|d| start.as_second() + d <= now.as_second());
    let mut conditions: Vec<Value> = Vec::new();
    let mut completion_time = None;
    let mut requeue = Duration::from_secs(300);
    let failure = if failed > backoff_limit {
        Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ))
    } else if overdue {
        Some((
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        ))
    } else {
        None
    };
    let mut remaining_active = active.len() as i32;
    if let Some((reason, message)) = failure {
        for p in &active {
            match api.delete(&p.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        remaining_active = 0;
        conditions.push(condition("FailureTarget", reason, message, &now_s));
        conditions.push(condition("Failed", reason, message, &now_s));
        tracing::info!(job = %job.name_any(), reason, "job failed");
    } else if succeeded >= completions {
        conditions.push(condition(
            "SuccessCriteriaMet",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            &now_s,
        ));
        conditions.push(condition(
            "Complete",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            &now_s,
        ));
        completion_time = Some(now_s.clone());
        tracing::info!(job = %job.name_any(), succeeded, "job complete");
    } else {
        let want = parallelism.min(completions - succeeded);
        let have = active.len() as i32;
        if have < want {
            let pp = PostParams::default();
            for _ in have..want {
                api.create(&pp, &pod_for(&job)).await?;
            }
            remaining_active = want;
        } else if have > want {
            for p in active.iter().take((have - want) as usize) {
                match api.delete(&p.name_any(), &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            remaining_active = want;
        }
        if let Some(d) = spec.active_deadline_seconds {
            let left = start.as_second() + d - now.as_second();
            requeue = Duration::from_secs(left.max(1) as u64);
        }
    }
    let mut status = json!({
        "active": remaining_active, "succeeded": succeeded, "failed": failed, "ready": ready,
        "startTime": start.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    });
    if !conditions.is_empty() {
        status["conditions"] = json!(conditions);
    }
    if let Some(t) = completion_time {
        status["completionTime"] = json!(t);
    }
    let cur = job
        .status
        .as_ref()
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .unwrap_or_default();
    let changed = !conditions.is_empty()
        || ["active", "succeeded", "failed", "ready"]
            .iter()
            .any(|k| cur.get(*k).cloned().unwrap_or(json!(0)) != status[*k])
        || cur.get("startTime").is_none();
    if changed {
        Api::<Job>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &job.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await?;
    }
    Ok(Action::requeue(requeue))
}
