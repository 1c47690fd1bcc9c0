//! A DaemonSet's revision history, kept as kube's daemon controller keeps it
//! (`constructHistory`, `snapshot`, `dedupCurHistories`, `cleanupHistory`): one ControllerRevision
//! per distinct pod template, named `<ds>-<hash>` after the `controller-revision-hash` its pods
//! carry, holding the strategic merge patch that restores that template — what
//! `kubectl rollout history|undo daemonset` read and apply. The current template's revision is
//! always the newest: going back to an earlier template renumbers its revision rather than
//! recording a new one.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use super::HASH_LABEL;
use crate::{Context, ControllerError, claim, controller_ref, is_not_found, template_hash};

/// The revision of the current template, and the others.
pub(super) struct History {
    pub current: ControllerRevision,
    pub old: Vec<ControllerRevision>,
}

impl History {
    /// The `controller-revision-hash` the current template's pods carry.
    pub fn hash(&self) -> &str {
        hash_of(&self.current).unwrap_or_default()
    }
}

fn hash_of(r: &ControllerRevision) -> Option<&str> {
    r.labels().get(HASH_LABEL).map(String::as_str)
}

/// kube's `getPatch`: the strategic merge patch that puts `template` back in a DaemonSet
/// (`{"spec":{"template":{...,"$patch":"replace"}}}`), a revision's `data`. Written as Go writes
/// it — keys sorted, and the template's zero `creationTimestamp` as `null` — so that it is the
/// same text kubectl computes from the DaemonSet to tell whether a rollback has anything to do.
fn revision_data(template: &PodTemplateSpec) -> Value {
    let mut template = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    template["metadata"]["creationTimestamp"] = Value::Null;
    template["$patch"] = json!("replace");
    json!({"spec": {"template": template}})
}

/// A new revision of the DaemonSet's template: `<ds>-<hash>`, labelled as its pods are, with
/// the DaemonSet's annotations (a `kubernetes.io/change-cause` shows in `rollout history`).
fn new_revision(ds: &DaemonSet, template: &PodTemplateSpec, revision: i64) -> ControllerRevision {
    let collisions = ds.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(template, collisions);
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.clone());
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", ds.name_any())),
            namespace: ds.namespace(),
            labels: Some(labels),
            annotations: ds.metadata.annotations.clone(),
            owner_references: Some(vec![controller_ref(ds)]),
            ..Default::default()
        },
        data: Some(RawExtension(revision_data(template))),
        revision,
    }
}

fn holds(r: &ControllerRevision, data: &Value) -> bool {
    r.data.as_ref().is_some_and(|d| d.0 == *data)
}

/// The owned revisions split by whether they hold `data` (the current template): the one of
/// those to keep (the highest revision), its duplicates, and the old ones.
struct Split {
    current: Option<ControllerRevision>,
    duplicates: Vec<ControllerRevision>,
    old: Vec<ControllerRevision>,
}

fn split(revisions: Vec<ControllerRevision>, data: &Value) -> Split {
    let (mut duplicates, old): (Vec<_>, Vec<_>) =
        revisions.into_iter().partition(|r| holds(r, data));
    // Of equal revisions the last listed is kept, as kube's `dedupCurHistories` does.
    let newest = (0..duplicates.len()).max_by_key(|&i| duplicates[i].revision);
    Split {
        current: newest.map(|i| duplicates.remove(i)),
        duplicates,
        old,
    }
}

/// The number the current template's revision must have: one past every other.
fn next_revision(old: &[ControllerRevision]) -> i64 {
    old.iter().map(|r| r.revision).max().unwrap_or(0) + 1
}

/// Old revisions beyond `limit`, oldest first, sparing those whose hash live pods carry.
fn expired<'a>(
    old: &'a [ControllerRevision],
    limit: usize,
    live: &BTreeSet<&str>,
) -> Vec<&'a ControllerRevision> {
    let mut by_age: Vec<&ControllerRevision> = old.iter().collect();
    by_age.sort_by_key(|r| r.revision);
    by_age
        .into_iter()
        .filter(|r| !hash_of(r).is_some_and(|h| live.contains(h)))
        .take(old.len().saturating_sub(limit))
        .collect()
}

/// kube's `constructHistory`: claims the revisions the DaemonSet's selector matches, finds the
/// one of the current template — creating it, or renumbering it to be the newest — and removes
/// its duplicates (relabelling their pods first). `pods` are the DaemonSet's pods, updated here.
pub(super) async fn construct(
    ds: &DaemonSet,
    ctx: &Context,
    pods: &mut [Pod],
) -> Result<History, ControllerError> {
    let ns = ds.namespace().unwrap_or_default();
    let spec = ds.spec.as_ref().expect("checked by reconcile");
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let candidates = api.list(&ListParams::default()).await?.items;
    let mut revisions = claim(ds, &spec.selector, &api, candidates).await?;
    for r in revisions
        .iter_mut()
        .filter(|r| !r.labels().contains_key(HASH_LABEL))
    {
        // Labelled by name, not by a hash that might collide.
        let patch = json!({"metadata": {"labels": {HASH_LABEL: r.name_any()}}});
        *r = api
            .patch(
                &r.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
    }
    let data = revision_data(&spec.template);
    let Split {
        current,
        duplicates,
        old,
    } = split(revisions, &data);
    let next = next_revision(&old);
    let Some(mut current) = current else {
        let current = snapshot(ds, ctx, &api, &spec.template, next).await?;
        return Ok(History { current, old });
    };
    let keep = hash_of(&current).unwrap_or_default().to_string();
    let replaced: BTreeSet<&str> = duplicates.iter().filter_map(hash_of).collect();
    // kube relabels every pod not carrying the kept hash; only the duplicates' pods run this
    // template, so only they are relabelled here (the others still have to be rolled).
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for p in pods.iter_mut().filter(|p| {
        p.labels()
            .get(HASH_LABEL)
            .is_some_and(|h| *h != keep && replaced.contains(h.as_str()))
    }) {
        let patch = json!({"metadata": {"labels": {HASH_LABEL: keep}}});
        *p = pod_api
            .patch(
                &p.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
    }
    for d in &duplicates {
        match api.delete(&d.name_any(), &DeleteParams::default()).await {
            Err(e) if !is_not_found(&e) => return Err(e.into()),
            _ => {}
        }
    }
    if current.revision < next {
        current.revision = next;
        current = api
            .replace(&current.name_any(), &PostParams::default(), &current)
            .await?;
    }
    Ok(History { current, old })
}

/// Creates the revision of the current template (kube's `snapshot`). A name already taken by
/// another template's revision is a hash collision: `status.collisionCount` goes up and this
/// sync fails, so the next one names the revision anew.
async fn snapshot(
    ds: &DaemonSet,
    ctx: &Context,
    api: &Api<ControllerRevision>,
    template: &PodTemplateSpec,
    revision: i64,
) -> Result<ControllerRevision, ControllerError> {
    let wanted = new_revision(ds, template, revision);
    let name = wanted.name_any();
    let err = match api.create(&PostParams::default(), &wanted).await {
        Err(kube::Error::Api(e)) if e.reason == "AlreadyExists" => e,
        created => return Ok(created?),
    };
    let existing = api.get(&name).await?;
    if holds(&existing, &revision_data(template)) {
        return Ok(existing);
    }
    let ds_api: Api<DaemonSet> =
        Api::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default());
    let mut fresh = ds_api.get(&ds.name_any()).await?;
    let seen = ds.status.as_ref().and_then(|s| s.collision_count);
    let status = fresh.status.get_or_insert_with(Default::default);
    if status.collision_count != seen {
        return Err(ControllerError::Invalid(format!(
            "found a stale collision count ({seen:?}, expected {:?}) of DaemonSet {:?} while processing; will retry until it is updated",
            status.collision_count,
            ds.name_any()
        )));
    }
    let count = seen.unwrap_or(0) + 1;
    status.collision_count = Some(count);
    ds_api
        .replace_status(&ds.name_any(), &PostParams::default(), &fresh)
        .await?;
    tracing::info!(daemonset = %ds.name_any(), collision_count = count, "hash collision; bumping collisionCount");
    Err(kube::Error::Api(err).into())
}

/// Deletes the old revisions beyond `spec.revisionHistoryLimit` (kube's `cleanupHistory`).
pub(super) async fn cleanup(
    ds: &DaemonSet,
    ctx: &Context,
    old: &[ControllerRevision],
    pods: &[Pod],
) -> Result<(), ControllerError> {
    let limit = ds
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10)
        .max(0) as usize;
    let live: BTreeSet<&str> = pods
        .iter()
        .filter_map(|p| p.labels().get(HASH_LABEL))
        .map(String::as_str)
        .filter(|h| !h.is_empty())
        .collect();
    let api: Api<ControllerRevision> =
        Api::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default());
    for r in expired(old, limit, &live) {
        match api.delete(&r.name_any(), &DeleteParams::default()).await {
            Err(e) if !is_not_found(&e) => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds() -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "default", "uid": "u1",
                "annotations": {"kubernetes.io/change-cause": "v2"}},
            "spec": {"selector": {"matchLabels": {"app": "a"}},
                "template": {"metadata": {"labels": {"app": "a"}},
                    "spec": {"containers": [{"name": "c", "image": "i:2"}]}}}}))
        .unwrap()
    }

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({"metadata": {"labels": {"app": "a"}},
            "spec": {"containers": [{"name": "c", "image": image}]}}))
        .unwrap()
    }

    fn rev(name: &str, image: &str, revision: i64) -> ControllerRevision {
        let mut r = new_revision(&ds(), &template(image), revision);
        r.metadata.name = Some(name.into());
        r.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), name.into());
        r
    }

    #[test]
    fn data_is_the_patch_that_replaces_the_template() {
        assert_eq!(
            revision_data(&template("i:1")),
            json!({"spec": {"template": {"$patch": "replace",
                "metadata": {"creationTimestamp": null, "labels": {"app": "a"}},
                "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}})
        );
    }

    #[test]
    fn a_revision_is_named_and_labelled_by_the_hash_its_pods_carry() {
        let mut d = ds();
        let t = template("i:2");
        let r = new_revision(&d, &t, 3);
        let hash = template_hash(&t, None);
        assert_eq!(r.name_any(), format!("agent-{hash}"));
        assert_eq!(r.labels()[HASH_LABEL], hash);
        assert_eq!(r.labels()["app"], "a");
        assert_eq!(r.annotations()["kubernetes.io/change-cause"], "v2");
        let owner = &r.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("DaemonSet", "u1", Some(true))
        );
        assert_eq!(r.revision, 3);
        // A collision count salts the hash, so the name moves on.
        d.status = Some(Default::default());
        d.status.as_mut().unwrap().collision_count = Some(1);
        let again = new_revision(&d, &t, 3);
        assert_ne!(again.name_any(), r.name_any());
        assert_eq!(again.labels()[HASH_LABEL], template_hash(&t, Some(1)));
    }

    #[test]
    fn the_highest_matching_revision_is_current_and_the_rest_of_its_kind_are_duplicates() {
        let data = revision_data(&template("i:2"));
        let s = split(
            vec![
                rev("a-1", "i:1", 1),
                rev("a-2", "i:2", 2),
                rev("a-3", "i:3", 3),
                rev("a-4", "i:2", 4),
            ],
            &data,
        );
        assert_eq!(s.current.unwrap().name_any(), "a-4");
        let names = |v: &[ControllerRevision]| v.iter().map(|r| r.name_any()).collect::<Vec<_>>();
        assert_eq!(names(&s.duplicates), ["a-2"]);
        assert_eq!(names(&s.old), ["a-1", "a-3"]);
        assert_eq!(next_revision(&s.old), 4);
        assert_eq!(next_revision(&[]), 1);
        let tie = split(vec![rev("b-1", "i:2", 4), rev("b-2", "i:2", 4)], &data);
        assert_eq!(tie.current.unwrap().name_any(), "b-2");
    }

    #[test]
    fn rolling_back_makes_an_old_revision_the_newest() {
        // Revisions 1, 2, 3 and the template of revision 1 again: 1 is current and becomes 4.
        let old = vec![
            rev("a-1", "i:1", 1),
            rev("a-2", "i:2", 2),
            rev("a-3", "i:3", 3),
        ];
        let s = split(old, &revision_data(&template("i:1")));
        assert_eq!(s.current.as_ref().unwrap().revision, 1);
        assert_eq!(next_revision(&s.old), 4);
    }

    #[test]
    fn the_oldest_revisions_beyond_the_limit_go_unless_pods_still_run_them() {
        let old = vec![
            rev("a-3", "i:3", 3),
            rev("a-1", "i:1", 1),
            rev("a-2", "i:2", 2),
            rev("a-4", "i:4", 4),
        ];
        let names =
            |v: Vec<&ControllerRevision>| v.iter().map(|r| r.name_any()).collect::<Vec<_>>();
        assert_eq!(names(expired(&old, 2, &BTreeSet::new())), ["a-1", "a-2"]);
        assert_eq!(
            names(expired(&old, 2, &BTreeSet::from(["a-1"]))),
            ["a-2", "a-3"]
        );
        assert!(expired(&old, 10, &BTreeSet::new()).is_empty());
        assert_eq!(expired(&old, 0, &BTreeSet::new()).len(), 4);
    }
}
