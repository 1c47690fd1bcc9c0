//! The Job controller, as kube-controller-manager 1.32's `syncJob`: runs up to `parallelism` pods
//! until `completions` have succeeded (or, without `completions`, until one has and the rest are
//! done) — in `Indexed` mode one per completion index (`indexed.rs`), with `status.completedIndexes`
//! — then `SuccessCriteriaMet` and `Complete`. More than `backoffLimit` failed pods, a run longer
//! than `activeDeadlineSeconds`, or a `FailJob` rule of `podFailurePolicy` (`failure_policy.rs`)
//! make it `FailureTarget` and, once its pods are gone, `Failed`. A failed pod is replaced after an
//! exponential back-off (10 s doubling per failure since the last success, at most 10 min).
//! `suspend` deletes the active pods (not counted as failures) under a `Suspended` condition;
//! resuming restarts them and the deadline clock. Counts come from the pods that exist: kube's
//! `batch.kubernetes.io/job-tracking` finalizer, which keeps pods until counted, is not used.

mod failure_policy;
mod indexed;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::pod_control::{self, BURST, record};
use super::pods::{deletion_key, is_active, is_ready, is_terminal, phase};
use super::{Context, ControllerError, claim, controller_ref, drive, error_policy};
use failure_policy::Verdict;

/// The first back-off after a failed pod; it doubles with each further failure.
const BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(600);

pub async fn run(client: Client) {
    let ctx = Context::new(client.clone(), "job-controller");
    let stream = Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Pod>::all(client), watcher::Config::default())
        .run(reconcile, error_policy, ctx);
    drive("job", stream).await;
}

fn finished(job: &Job) -> bool {
    job.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

fn is_indexed(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.completion_mode.as_deref()) == Some("Indexed")
}

fn suspended(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.suspend) == Some(true)
}

fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn condition<'a>(status: &'a JobStatus, type_: &str) -> Option<&'a JobCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// kube's `ensureJobConditionStatus`: updates a condition of that type if it differs, adds one
/// unless it would be False. Returns whether anything changed.
fn ensure_condition(status: &mut JobStatus, c: JobCondition) -> bool {
    let list = status.conditions.get_or_insert_with(Vec::new);
    match list.iter_mut().find(|x| x.type_ == c.type_) {
        Some(cur)
            if cur.status != c.status || cur.reason != c.reason || cur.message != c.message =>
        {
            *cur = c;
            true
        }
        Some(_) => false,
        None if c.status != "False" => {
            list.push(c);
            true
        }
        None => false,
    }
}

/// The pod the Job creates, for completion `index` in an Indexed Job.
fn pod_for(job: &Job, index: Option<i32>) -> Pod {
    let mut template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut generate_name = format!("{}-", job.name_any());
    if let Some(i) = index {
        indexed::set_index(&mut template, &job.name_any(), i);
        generate_name = format!("{}-{i}-", job.name_any());
    }
    let meta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.namespace(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![controller_ref(job)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// When a finished pod finished: its containers' last exit, else when it stopped being ready,
/// else when it was deleted, else its creation (kube's `getFinishedTime`).
fn finished_at(p: &Pod) -> Option<Timestamp> {
    let status = p.status.as_ref();
    let exits: Option<Vec<Timestamp>> = status
        .and_then(|s| s.container_statuses.as_ref())
        .filter(|cs| !cs.is_empty())
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    c.state
                        .as_ref()?
                        .terminated
                        .as_ref()?
                        .finished_at
                        .as_ref()
                        .map(|t| t.0)
                })
                .collect::<Option<Vec<_>>>()
        })
        .unwrap_or(None);
    if let Some(latest) = exits.and_then(|e| e.into_iter().max()) {
        return Some(latest);
    }
    status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready" && c.status == "False"))
        .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
        .or_else(|| p.metadata.deletion_timestamp.as_ref().map(|t| t.0))
        .or_else(|| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// How long to wait before replacing failed pods: 10 s after the last failure, doubled for each
/// earlier failure since the last success.
fn backoff_remaining(pods: &[Pod], now: Timestamp) -> Duration {
    let last_success = pods
        .iter()
        .filter(|p| phase(p) == "Succeeded")
        .filter_map(finished_at)
        .max();
    let failures: Vec<Timestamp> = pods
        .iter()
        .filter(|p| phase(p) == "Failed")
        .filter_map(finished_at)
        .filter(|t| last_success.is_none_or(|s| *t > s))
        .collect();
    let Some(last) = failures.iter().max() else {
        return Duration::ZERO;
    };
    let mut delay = BACKOFF;
    for _ in 1..failures.len() {
        delay = (delay * 2).min(MAX_BACKOFF);
    }
    let elapsed = Duration::from_secs((now.as_second() - last.as_second()).max(0) as u64);
    delay.saturating_sub(elapsed)
}

/// With `restartPolicy: OnFailure`, container restarts of running pods count against the limit.
fn past_backoff_limit_on_failure(job: &Job, pods: &[Pod], limit: i32) -> bool {
    let spec = job.spec.as_ref();
    if spec
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.restart_policy.as_deref())
        != Some("OnFailure")
    {
        return false;
    }
    let restarts: i32 = pods
        .iter()
        .filter(|p| matches!(phase(p), "Running" | "Pending"))
        .flat_map(|p| p.status.iter())
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum();
    if limit == 0 {
        restarts > 0
    } else {
        restarts >= limit
    }
}

/// Active pods to remove: for an Indexed Job, those without a valid index and duplicates of an
/// index first; then in `ActivePods` order until `at_least` are chosen.
fn pods_for_removal<'a>(
    job: &Job,
    active: &[&'a Pod],
    at_least: usize,
    completions: i32,
) -> Vec<&'a Pod> {
    let mut rm = Vec::new();
    let mut left: Vec<&Pod> = Vec::new();
    if is_indexed(job) {
        let mut by_index: std::collections::BTreeMap<i32, Vec<&Pod>> = Default::default();
        for p in active {
            match indexed::index_of(p).filter(|i| *i < completions) {
                Some(i) => by_index.entry(i).or_default().push(p),
                None => rm.push(*p),
            }
        }
        for mut same in by_index.into_values() {
            same.sort_by_cached_key(|p| deletion_key(p, None));
            let keep = same.pop().expect("non-empty group");
            rm.extend(same);
            left.push(keep);
        }
    } else {
        left = active.to_vec();
    }
    if rm.len() < at_least {
        left.sort_by_cached_key(|p| deletion_key(p, None));
        let more = at_least - rm.len();
        rm.extend(left.into_iter().take(more));
    }
    rm
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    if finished(&job) {
        return Ok(Action::await_change());
    }
    let ns = job.namespace().unwrap_or_default();
    let spec = job.spec.as_ref().ok_or_else(|| {
        ControllerError::Invalid(format!("job {ns}/{} has no spec", job.name_any()))
    })?;
    let Some(selector) = spec.selector.as_ref() else {
        return Err(ControllerError::Invalid(format!(
            "job {ns}/{} has no selector",
            job.name_any()
        )));
    };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let candidates = api.list(&ListParams::default()).await?.items;
    let pods = claim(&*job, selector, &api, candidates).await?;
    let now = super::now();
    let mut status = job.status.clone().unwrap_or_default();
    let indexed = is_indexed(&job);
    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let policy = spec.pod_failure_policy.as_ref();

    let active: Vec<&Pod> = pods.iter().filter(|p| is_active(p)).collect();
    let mut terminating = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some() && !is_terminal(p))
        .count() as i32;
    let mut ready = active.iter().filter(|p| is_ready(p)).count() as i32;
    let failed_pods: Vec<&Pod> = pods.iter().filter(|p| phase(p) == "Failed").collect();
    let failed = failed_pods
        .iter()
        .filter(|p| failure_policy::verdict(policy, p) != Verdict::Ignore)
        .count() as i32;
    let succeeded_indexes: BTreeSet<i32> = if indexed {
        let n = completions.unwrap_or(0);
        let mut set = indexed::parse(status.completed_indexes.as_deref().unwrap_or_default(), n);
        set.extend(
            pods.iter()
                .filter(|p| phase(p) == "Succeeded")
                .filter_map(indexed::index_of)
                .filter(|i| *i < n),
        );
        set
    } else {
        BTreeSet::new()
    };
    let succeeded = if indexed {
        succeeded_indexes.len() as i32
    } else {
        pods.iter().filter(|p| phase(p) == "Succeeded").count() as i32
    };
    if status.start_time.is_none() && !suspended(&job) {
        status.start_time = Some(Time(now));
    }
    let mut requeue = None;

    // Why the Job is finishing, if it is: success already met, a failure already decided, or one
    // decided now.
    let mut finishing: Option<JobCondition> = if let Some(c) =
        condition(&status, "SuccessCriteriaMet")
    {
        Some(c.clone())
    } else if let Some(c) = condition(&status, "FailureTarget") {
        Some(c.clone())
    } else if let Some(msg) =
        failed_pods
            .iter()
            .find_map(|p| match failure_policy::verdict(policy, p) {
                Verdict::FailJob(m) => Some(m),
                _ => None,
            })
    {
        Some(new_condition(
            "FailureTarget",
            "True",
            "PodFailurePolicy",
            &msg,
            now,
        ))
    } else if failed > backoff_limit || past_backoff_limit_on_failure(&job, &pods, backoff_limit) {
        Some(new_condition(
            "FailureTarget",
            "True",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
            now,
        ))
    } else if let (Some(deadline), Some(start), false) = (
        spec.active_deadline_seconds,
        status.start_time.as_ref(),
        suspended(&job),
    ) {
        let left = start.0.as_second() + deadline - now.as_second();
        if left <= 0 {
            Some(new_condition(
                "FailureTarget",
                "True",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
                now,
            ))
        } else {
            requeue = Some(Duration::from_secs(left as u64));
            None
        }
    } else {
        None
    };

    let mut active_count = active.len() as i32;
    let mut result: Result<(), kube::Error> = Ok(());
    // Deletes pods; on success they count as terminating instead of active.
    let delete = |pods: Vec<&Pod>| {
        let names: Vec<String> = pods.iter().take(BURST).map(|p| p.name_any()).collect();
        let deleted_ready = pods.iter().take(BURST).filter(|p| is_ready(p)).count() as i32;
        let (ctx, job, ns) = (&ctx, &job, &ns);
        async move {
            pod_control::delete_all(ctx, &**job, ns, &names)
                .await
                .map(|()| (names.len() as i32, deleted_ready))
        }
    };
    if finishing.is_some() {
        // Finishing: the remaining pods go, and the Job is done once they are gone.
        match delete(active.clone()).await {
            Ok((n, r)) => {
                (active_count, terminating, ready) = (active_count - n, terminating + n, ready - r)
            }
            Err(e) => {
                finishing = None;
                result = Err(e);
            }
        }
    } else {
        if job.metadata.deletion_timestamp.is_none() {
            let to_delete = if suspended(&job) {
                active.clone()
            } else {
                let want = match completions {
                    None if succeeded > 0 => active_count,
                    None => parallelism,
                    Some(c) => (c - succeeded).clamp(0, parallelism),
                };
                let excess = (active_count - want).max(0) as usize;
                let remove = pods_for_removal(&job, &active, excess, completions.unwrap_or(0));
                if remove.is_empty() {
                    let replacing = if spec.pod_replacement_policy.as_deref() == Some("Failed") {
                        terminating
                    } else {
                        0
                    };
                    let missing = ((want - replacing - active_count).max(0) as usize).min(BURST);
                    let wait = backoff_remaining(&pods, now);
                    if missing > 0 && !wait.is_zero() {
                        requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
                    } else if missing > 0 {
                        let indexes: Vec<Option<i32>> = if indexed {
                            let mut taken = succeeded_indexes.clone();
                            taken.extend(active.iter().copied().filter_map(indexed::index_of));
                            indexed::first_pending(&taken, missing, completions.unwrap_or(0))
                                .into_iter()
                                .map(Some)
                                .collect()
                        } else {
                            vec![None; missing]
                        };
                        let (job_ref, ctx_ref) = (&*job, &*ctx);
                        let (created, err) = pod_control::slow_start(indexes.len(), |i| {
                            let pod = pod_for(job_ref, indexes[i]);
                            async move { pod_control::create(ctx_ref, job_ref, &pod).await }
                        })
                        .await;
                        active_count += created as i32;
                        result = err.map_or(Ok(()), Err);
                    }
                }
                remove
            };
            if !to_delete.is_empty() {
                match delete(to_delete).await {
                    Ok((n, r)) => {
                        (active_count, terminating, ready) =
                            (active_count - n, terminating + n, ready - r)
                    }
                    Err(e) => result = Err(e),
                }
            }
            if suspended(&job) {
                if ensure_condition(
                    &mut status,
                    new_condition("Suspended", "True", "JobSuspended", "Job suspended", now),
                ) {
                    record(
                        &ctx,
                        &*job,
                        EventType::Normal,
                        "Suspended",
                        "Suspend",
                        "Job suspended".into(),
                    )
                    .await;
                }
            } else if ensure_condition(
                &mut status,
                new_condition("Suspended", "False", "JobResumed", "Job resumed", now),
            ) {
                record(
                    &ctx,
                    &*job,
                    EventType::Normal,
                    "Resumed",
                    "Resume",
                    "Job resumed".into(),
                )
                .await;
                // The deadline counts the time the Job is continuously active.
                status.start_time = Some(Time(now));
            }
        }
        let complete = match completions {
            None => succeeded > 0 && active_count == 0,
            Some(c) => succeeded >= c && active_count == 0,
        };
        if complete {
            finishing = Some(new_condition(
                "SuccessCriteriaMet",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            ));
        }
    }

    status.active = Some(active_count);
    status.ready = Some(ready);
    status.terminating = Some(terminating);
    status.succeeded = Some(succeeded);
    status.failed = Some(failed);
    if indexed {
        status.completed_indexes = Some(indexed::format(&succeeded_indexes));
    }
    let mut finished_now = None;
    if let Some(c) = finishing {
        // The interim condition (FailureTarget, SuccessCriteriaMet) first; the final one
        // (Failed, Complete) once no pod is terminating.
        if condition(&status, &c.type_).is_none() {
            status
                .conditions
                .get_or_insert_with(Vec::new)
                .push(c.clone());
        }
        if terminating == 0 {
            let type_ = if c.type_ == "SuccessCriteriaMet" {
                "Complete"
            } else {
                "Failed"
            };
            let reason = c.reason.clone().unwrap_or_default();
            let message = c.message.clone().unwrap_or_default();
            ensure_condition(
                &mut status,
                new_condition(type_, "True", &reason, &message, now),
            );
            if type_ == "Complete" {
                status.completion_time = Some(Time(now));
            }
            finished_now = Some((type_, reason, message));
        }
    }
    let old = serde_json::to_value(job.status.clone().unwrap_or_default()).unwrap_or_default();
    let new = serde_json::to_value(&status).unwrap_or_default();
    if old != new {
        Api::<Job>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &job.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": new })),
            )
            .await?;
    }
    match finished_now {
        Some(("Complete", _, _)) => {
            tracing::info!(job = %job.name_any(), succeeded, "job complete");
            record(
                &ctx,
                &*job,
                EventType::Normal,
                "Completed",
                "Complete",
                "Job completed".into(),
            )
            .await;
        }
        Some((_, reason, message)) => {
            tracing::info!(job = %job.name_any(), reason, "job failed");
            record(&ctx, &*job, EventType::Warning, &reason, "Fail", message).await;
        }
        None => {}
    }
    result?;
    Ok(match requeue {
        Some(after) => Action::requeue(after),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(phase: &str, finished: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": {"phase": phase,
            "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": if phase == "Failed" {1} else {0}, "finishedAt": finished}}}]}}))
        .unwrap()
    }

    #[test]
    fn backoff_doubles_with_each_failure_since_the_last_success() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let one = [pod("Failed", "2026-01-01T00:00:00Z")];
        assert_eq!(
            backoff_remaining(&one, at("2026-01-01T00:00:04Z")),
            Duration::from_secs(6)
        );
        assert_eq!(
            backoff_remaining(&one, at("2026-01-01T00:00:30Z")),
            Duration::ZERO
        );
        let three = [
            pod("Failed", "2026-01-01T00:00:00Z"),
            pod("Failed", "2026-01-01T00:00:10Z"),
            pod("Failed", "2026-01-01T00:00:30Z"),
        ];
        // 10 s, 20 s, then 40 s after the third failure.
        assert_eq!(
            backoff_remaining(&three, at("2026-01-01T00:00:40Z")),
            Duration::from_secs(30)
        );
        let after_success = [
            pod("Failed", "2026-01-01T00:00:00Z"),
            pod("Succeeded", "2026-01-01T00:00:05Z"),
            pod("Failed", "2026-01-01T00:00:30Z"),
        ];
        assert_eq!(
            backoff_remaining(&after_success, at("2026-01-01T00:00:31Z")),
            Duration::from_secs(9)
        );
        let many: Vec<Pod> = (0..20)
            .map(|_| pod("Failed", "2026-01-01T00:00:00Z"))
            .collect();
        assert_eq!(
            backoff_remaining(&many, at("2026-01-01T00:00:00Z")),
            MAX_BACKOFF
        );
    }

    #[test]
    fn suspension_conditions_change_only_when_they_differ() {
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut s = JobStatus::default();
        // Never suspended: no "resumed" condition appears.
        assert!(!ensure_condition(
            &mut s,
            new_condition("Suspended", "False", "JobResumed", "Job resumed", t)
        ));
        assert!(ensure_condition(
            &mut s,
            new_condition("Suspended", "True", "JobSuspended", "Job suspended", t)
        ));
        assert!(!ensure_condition(
            &mut s,
            new_condition("Suspended", "True", "JobSuspended", "Job suspended", t)
        ));
        assert!(ensure_condition(
            &mut s,
            new_condition("Suspended", "False", "JobResumed", "Job resumed", t)
        ));
        assert_eq!(s.conditions.unwrap().len(), 1);
    }

    #[test]
    fn indexed_jobs_remove_duplicates_and_stray_indexes_first() {
        let job: Job = serde_json::from_value(json!({"metadata": {"name": "j"},
            "spec": {"completionMode": "Indexed", "completions": 3, "template": {}}}))
        .unwrap();
        let p = |name: &str, index: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name, "uid": name,
                "annotations": {indexed::INDEX: index}}, "status": {"phase": "Running"}}))
            .unwrap()
        };
        let pods = [p("a", "0"), p("b", "0"), p("c", "7"), p("d", "1")];
        let active: Vec<&Pod> = pods.iter().collect();
        let rm: Vec<String> = pods_for_removal(&job, &active, 0, 3)
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert_eq!(rm, ["c", "a"]);
    }
}
