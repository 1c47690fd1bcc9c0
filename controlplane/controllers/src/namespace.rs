//! The namespace controller (kube-controller-manager's `namespace-controller`). A deleted
//! namespace is Terminating; the controller deletes everything in it, resource by resource over
//! discovery, waits until it is gone (pods finishing their grace period, objects held by
//! finalizers), reports progress in the namespace's deletion conditions, then drops the
//! `kubernetes` finalizer through `finalize`, which removes the namespace.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, PartialObjectMeta, Patch, PatchParams,
    PostParams,
};
use kube::discovery::{ApiCapabilities, Scope};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::{Context, ControllerError, drive, error_policy, is_not_found, served_resources};

/// The finalizer this controller owns in `spec.finalizers`.
const FINALIZER: &str = "kubernetes";
/// Seconds assumed for objects that finalizers hold (kube's `finalizerEstimateSeconds`).
const FINALIZER_ESTIMATE: i64 = 15;

pub async fn run(client: Client) {
    let ctx = Context::new(client.clone(), "namespace-controller");
    let stream = Controller::new(Api::<Namespace>::all(client), watcher::Config::default()).run(
        reconcile,
        error_policy,
        ctx,
    );
    drive("namespace", stream).await;
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let name = ns.name_any();
    let Some(ns) = api.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    let Some(deleted_at) = ns.metadata.deletion_timestamp.clone() else {
        return Ok(Action::await_change());
    };
    let ours = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER));
    if !ours {
        return Ok(Action::await_change());
    }
    let content = delete_all_content(&ctx.client, &name, deleted_at.0).await;
    let mut status = ns.status.clone().unwrap_or_default();
    let mut conditions = status.conditions.take().unwrap_or_default();
    let terminating = status.phase.as_deref() == Some("Terminating");
    if update_conditions(&mut conditions, &content.conditions(), Timestamp::now()) || !terminating {
        let patch = json!({"status": {"phase": "Terminating", "conditions": conditions}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    if !content.errors.is_empty() {
        return Err(ControllerError::Invalid(content.errors.join(", ")));
    }
    if content.estimate > 0 {
        // kube waits half the estimate; the checks are cheap here, so look at least every 5 s.
        let wait = (content.estimate / 2).clamp(1, 5) as u64;
        return Ok(Action::requeue(Duration::from_secs(wait)));
    }
    let mut finalized = ns.clone();
    if let Some(f) = finalized.spec.as_mut().and_then(|s| s.finalizers.as_mut()) {
        f.retain(|x| x != FINALIZER);
    }
    match api
        .replace_subresource("finalize", &name, &PostParams::default(), &finalized)
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        Err(e) if is_not_found(&e) => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

/// What deleting a namespace's content found.
#[derive(Debug, Default)]
struct Content {
    /// Seconds before what remains should be gone; 0 when nothing remains.
    estimate: i64,
    /// `plural.group` → objects left.
    remaining: BTreeMap<String, usize>,
    /// finalizer → objects it holds.
    finalizers: BTreeMap<String, usize>,
    discovery_error: Option<String>,
    errors: Vec<String>,
}

async fn delete_all_content(client: &Client, ns: &str, deleted_at: Timestamp) -> Content {
    let mut content = Content::default();
    let served = match served_resources(client).await {
        Ok(s) => s,
        Err(e) => {
            content.discovery_error = Some(e.to_string());
            content.errors.push(e.to_string());
            return content;
        }
    };
    for (ar, caps) in served
        .iter()
        .filter(|(_, c)| matches!(c.scope, Scope::Namespaced) && c.supports_operation("delete"))
    {
        if let Err(e) = delete_resource(client, ns, ar, caps, deleted_at, &mut content).await {
            content.errors.push(e.to_string());
        }
    }
    content
}

/// Deletes every object of one resource in `ns` and records what remains.
async fn delete_resource(
    client: &Client,
    ns: &str,
    ar: &ApiResource,
    caps: &ApiCapabilities,
    deleted_at: Timestamp,
    content: &mut Content,
) -> Result<(), ControllerError> {
    let estimate = if ar.group.is_empty() && ar.plural == "pods" {
        pods_estimate(client, ns, deleted_at).await?
    } else {
        0
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    // Dependents go with the rest of the namespace: never orphan them.
    let background = DeleteParams::background();
    if caps.supports_operation("deletecollection") {
        api.delete_collection(&background, &ListParams::default())
            .await?;
    } else if caps.supports_operation("list") {
        for o in api.list_metadata(&ListParams::default()).await? {
            match api.delete(&o.name_any(), &background).await {
                Err(e) if !is_not_found(&e) => return Err(e.into()),
                _ => {}
            }
        }
    }
    if !caps.supports_operation("list") {
        return Ok(());
    }
    let left: Vec<PartialObjectMeta<DynamicObject>> =
        api.list_metadata(&ListParams::default()).await?.items;
    if left.is_empty() {
        return Ok(());
    }
    let mut held = BTreeMap::new();
    for f in left
        .iter()
        .flat_map(|o| o.metadata.finalizers.iter().flatten())
    {
        *held.entry(f.clone()).or_insert(0) += 1;
    }
    content
        .remaining
        .insert(format!("{}.{}", ar.plural, ar.group), left.len());
    let unexplained = estimate == 0 && held.is_empty();
    let estimate = if estimate == 0 && !held.is_empty() {
        FINALIZER_ESTIMATE
    } else {
        estimate
    };
    content.estimate = content.estimate.max(estimate);
    for (f, n) in held {
        *content.finalizers.entry(f).or_insert(0) += n;
    }
    if unexplained {
        return Err(ControllerError::Invalid(format!(
            "unexpected items still remain in namespace: {ns} for gvr: {{{} {} {}}}",
            ar.group, ar.version, ar.plural
        )));
    }
    Ok(())
}

/// The longest grace period of the pods still running in `ns`, or 0 once that much time has
/// passed since the namespace was deleted.
async fn pods_estimate(
    client: &Client,
    ns: &str,
    deleted_at: Timestamp,
) -> Result<i64, ControllerError> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    let estimate = pods
        .items
        .iter()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .filter_map(|p| p.spec.as_ref()?.termination_grace_period_seconds)
        .max()
        .unwrap_or(0);
    let elapsed = Timestamp::now().as_second() - deleted_at.as_second();
    Ok(if elapsed >= estimate { 0 } else { estimate })
}

/// The condition types this controller owns, with their reason and message when all is well.
const CONDITIONS: [(&str, &str, &str); 5] = [
    (
        "NamespaceDeletionDiscoveryFailure",
        "ResourcesDiscovered",
        "All resources successfully discovered",
    ),
    (
        "NamespaceDeletionGroupVersionParsingFailure",
        "ParsedGroupVersions",
        "All legacy kube types successfully parsed",
    ),
    (
        "NamespaceDeletionContentFailure",
        "ContentDeleted",
        "All content successfully deleted, may be waiting on finalization",
    ),
    (
        "NamespaceContentRemaining",
        "ContentRemoved",
        "All content successfully removed",
    ),
    (
        "NamespaceFinalizersRemaining",
        "ContentRemoved",
        "All content successfully removed",
    ),
];

impl Content {
    /// The failing conditions (type, reason, message); the others are well.
    fn conditions(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut out = Vec::new();
        if let Some(e) = &self.discovery_error {
            out.push((CONDITIONS[0].0, "DiscoveryFailed", e.clone()));
        }
        let mut errors = self.errors.clone();
        errors.sort();
        if !errors.is_empty() {
            out.push((
                CONDITIONS[2].0,
                "ContentDeletionFailed",
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    errors.len(),
                    errors.join(", ")
                ),
            ));
        }
        if !self.remaining.is_empty() {
            let each: Vec<String> = self
                .remaining
                .iter()
                .map(|(r, n)| format!("{r} has {n} resource instances"))
                .collect();
            out.push((
                CONDITIONS[3].0,
                "SomeResourcesRemain",
                format!("Some resources are remaining: {}", each.join(", ")),
            ));
        }
        if !self.finalizers.is_empty() {
            let each: Vec<String> = self
                .finalizers
                .iter()
                .map(|(f, n)| format!("{f} in {n} resource instances"))
                .collect();
            out.push((
                CONDITIONS[4].0,
                "SomeFinalizerRemain",
                format!("Some finalizers are remaining: {}", each.join(", ")),
            ));
        }
        out
    }
}

/// Brings the five deletion conditions in `existing` to `failing` (the others are set to their
/// well state); whether anything changed. A transition time moves only with the status.
fn update_conditions(
    existing: &mut Vec<NamespaceCondition>,
    failing: &[(&'static str, &'static str, String)],
    now: Timestamp,
) -> bool {
    let mut changed = false;
    for (type_, ok_reason, ok_message) in CONDITIONS {
        let (status, reason, message) = match failing.iter().find(|(t, _, _)| *t == type_) {
            Some((_, reason, message)) => ("True", *reason, message.clone()),
            None => ("False", ok_reason, ok_message.to_string()),
        };
        match existing.iter_mut().find(|c| c.type_ == type_) {
            None => {
                existing.push(NamespaceCondition {
                    type_: type_.into(),
                    status: status.into(),
                    reason: Some(reason.into()),
                    message: Some(message),
                    last_transition_time: Some(Time(now)),
                });
                changed = true;
            }
            Some(c) => {
                let same = c.status == status
                    && c.reason.as_deref() == Some(reason)
                    && c.message.as_deref() == Some(message.as_str());
                if !same {
                    if c.status != status {
                        c.last_transition_time = Some(Time(now));
                    }
                    c.status = status.into();
                    c.reason = Some(reason.into());
                    c.message = Some(message);
                    changed = true;
                }
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletion_conditions_report_what_remains_and_settle() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:00:05Z".parse().unwrap();
        let content = Content {
            estimate: 30,
            remaining: BTreeMap::from([("pods.".to_string(), 2), ("configmaps.".to_string(), 1)]),
            finalizers: BTreeMap::from([("example.com/hold".to_string(), 1)]),
            ..Default::default()
        };
        let mut conds = Vec::new();
        assert!(update_conditions(&mut conds, &content.conditions(), t0));
        assert_eq!(conds.len(), 5);
        let get = |conds: &[NamespaceCondition], t: &str| {
            let c = conds.iter().find(|c| c.type_ == t).unwrap().clone();
            (
                c.status,
                c.message.unwrap(),
                c.last_transition_time.unwrap().0,
            )
        };
        assert_eq!(
            get(&conds, "NamespaceContentRemaining").1,
            "Some resources are remaining: configmaps. has 1 resource instances, pods. has 2 resource instances"
        );
        assert_eq!(
            get(&conds, "NamespaceFinalizersRemaining").1,
            "Some finalizers are remaining: example.com/hold in 1 resource instances"
        );
        assert_eq!(get(&conds, "NamespaceDeletionDiscoveryFailure").0, "False");
        // The same again changes nothing.
        assert!(!update_conditions(&mut conds, &content.conditions(), t1));
        // Everything gone: the conditions turn well, with a new transition time.
        assert!(update_conditions(
            &mut conds,
            &Content::default().conditions(),
            t1
        ));
        let (status, message, at) = get(&conds, "NamespaceContentRemaining");
        assert_eq!(
            (status.as_str(), message.as_str(), at),
            ("False", "All content successfully removed", t1)
        );
        assert_eq!(get(&conds, "NamespaceDeletionContentFailure").2, t0);
    }
}
