//! Creating and deleting pods for a workload, as kube-controller-manager's `PodControl` does:
//! each outcome is an event on the owner — `SuccessfulCreate` "Created pod: NAME",
//! `FailedCreate` "Error creating: …", `SuccessfulDelete` "Deleted pod: NAME", `FailedDelete`
//! "Error deleting: …" — and creations go in slow-start batches (1, 2, 4, …) that stop at the
//! first batch with a failure, so a quota or a bad template costs one request, not hundreds.

use std::future::Future;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use super::{Context, is_not_found};

/// The most pods one sync creates or deletes (kube's `burstReplicas`).
pub const BURST: usize = 500;

/// The message of an API error, as kube prints it after "Error creating: ".
pub fn error_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        e => e.to_string(),
    }
}

/// The namespace is being deleted: every creation fails alike, and no event could be stored.
fn namespace_terminating(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
}

/// Records an event about `owner`; a failure to record is only logged.
pub async fn record<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    owner: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &owner.object_ref(&())).await {
        tracing::debug!(reason, error = %e, "recording an event");
    }
}

/// Creates `pod` for `owner`.
pub async fn create<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    owner: &K,
    pod: &Pod,
) -> Result<Pod, kube::Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    match api.create(&PostParams::default(), pod).await {
        Ok(created) => {
            let note = format!("Created pod: {}", created.name_any());
            record(
                ctx,
                owner,
                EventType::Normal,
                "SuccessfulCreate",
                "Create",
                note,
            )
            .await;
            Ok(created)
        }
        Err(e) => {
            if !namespace_terminating(&e) {
                let note = format!("Error creating: {}", error_message(&e));
                record(
                    ctx,
                    owner,
                    EventType::Warning,
                    "FailedCreate",
                    "Create",
                    note,
                )
                .await;
            }
            Err(e)
        }
    }
}

/// Deletes the pod `name` of `owner`; one already gone is no error and no event.
pub async fn delete<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    owner: &K,
    namespace: &str,
    name: &str,
) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            let note = format!("Deleted pod: {name}");
            record(
                ctx,
                owner,
                EventType::Normal,
                "SuccessfulDelete",
                "Delete",
                note,
            )
            .await;
            Ok(())
        }
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => {
            let note = format!("Error deleting: {}", error_message(&e));
            record(
                ctx,
                owner,
                EventType::Warning,
                "FailedDelete",
                "Delete",
                note,
            )
            .await;
            Err(e)
        }
    }
}

/// Deletes the pods `names` of `owner` concurrently; the first error, if any.
pub async fn delete_all<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    owner: &K,
    namespace: &str,
    names: &[String],
) -> Result<(), kube::Error> {
    let results = join_all(names.iter().map(|n| delete(ctx, owner, namespace, n))).await;
    results.into_iter().collect()
}

/// Runs `create(i)` for `i` in `0..count` in batches of 1, 2, 4, …, stopping after the first
/// batch in which one failed. Returns how many succeeded and the first error.
pub async fn slow_start<F, Fut, T>(count: usize, create: F) -> (usize, Option<kube::Error>)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let (mut done, mut batch, mut succeeded) = (0, 1, 0);
    while done < count {
        let n = batch.min(count - done);
        let results = join_all((done..done + n).map(&create)).await;
        let mut first_error = None;
        for r in results {
            match r {
                Ok(_) => succeeded += 1,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if first_error.is_some() {
            return (succeeded, first_error);
        }
        done += n;
        batch *= 2;
    }
    (succeeded, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn slow_start_doubles_batches_and_stops_at_a_failing_one() {
        let seen = Mutex::new(Vec::new());
        let (ok, err) = slow_start(10, |i| {
            seen.lock().unwrap().push(i);
            async move {
                if i == 4 {
                    Err(kube::Error::LinesCodecMaxLineLengthExceeded)
                } else {
                    Ok(i)
                }
            }
        })
        .await;
        // Batches 0, 1-2, 3-6: the one holding 4 fails and the rest are never tried.
        assert_eq!((ok, err.is_some()), (6, true));
        assert_eq!(seen.into_inner().unwrap(), [0, 1, 2, 3, 4, 5, 6]);
        let (ok, err) = slow_start(5, |i| async move { Ok::<_, kube::Error>(i) }).await;
        assert_eq!((ok, err.is_none()), (5, true));
    }
}
