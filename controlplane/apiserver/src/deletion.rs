//! DELETE as the real registry does it. The API server never touches an object's dependents or
//! a namespace's content itself: it records what the deletion asks for and leaves the rest to
//! the controllers.
//!
//! - Pods on a node terminate gracefully: marked with a deletionTimestamp `gracePeriodSeconds`
//!   ahead, removed when their kubelet deletes them again with grace 0.
//! - The propagation policy becomes a finalizer for the garbage collector: `orphan` (Orphan, or
//!   `orphanDependents: true`, or the resource's default: batch/v1 Jobs orphan their pods) or
//!   `foregroundDeletion` (Foreground). Background adds neither.
//! - An object with finalizers is only marked (deletionTimestamp, grace 0); the update that
//!   removes its last finalizer deletes it.
//! - A namespace is marked Terminating; the namespace controller empties it and drops the
//!   `kubernetes` finalizer through `finalize`, which removes it.

use std::collections::HashMap;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::ApiServer;
use super::handlers::WriteResult;
use super::object::{encode_for, meta_mut, meta_str, set_rv};
use super::resources::ResourceInfo;
use super::status::{ApiError, ApiResult, FieldError, Reason};
use skiff_k8s::finalizers::{FOREGROUND as FOREGROUND_FINALIZER, ORPHAN as ORPHAN_FINALIZER};
use skiff_store::{KeyValue, StoreError};

/// `propagationPolicy`: what happens to the dependents of a deleted object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropagationPolicy {
    /// The owner waits (`foregroundDeletion`) until its blocking dependents are gone.
    Foreground,
    /// The owner goes at once; the garbage collector deletes the dependents after it.
    Background,
    /// The dependents lose their owner reference (`orphan`) and stay.
    Orphan,
}

impl PropagationPolicy {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "Foreground" => Some(Self::Foreground),
            "Background" => Some(Self::Background),
            "Orphan" => Some(Self::Orphan),
            _ => None,
        }
    }
}

/// `metav1.DeleteOptions`, from the request body and the query.
#[derive(Debug, Default, Clone)]
pub struct DeleteOptions {
    pub dry_run: bool,
    pub grace_period_seconds: Option<i64>,
    pub orphan_dependents: Option<bool>,
    pub propagation_policy: Option<PropagationPolicy>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
}

impl DeleteOptions {
    /// Reads and validates the options (`r`, `name` only name the object in errors).
    pub fn parse(
        r: &ResourceInfo,
        name: &str,
        body: &Value,
        q: &HashMap<String, String>,
    ) -> ApiResult<Self> {
        let policy = q
            .get("propagationPolicy")
            .cloned()
            .or_else(|| body["propagationPolicy"].as_str().map(str::to_string));
        let mut o = DeleteOptions {
            dry_run: q.get("dryRun").is_some_and(|d| d == "All")
                || body["dryRun"].as_array().is_some_and(|a| !a.is_empty()),
            grace_period_seconds: q
                .get("gracePeriodSeconds")
                .and_then(|g| g.parse().ok())
                .or_else(|| body["gracePeriodSeconds"].as_i64()),
            orphan_dependents: q
                .get("orphanDependents")
                .map(|v| v == "true" || v == "1")
                .or_else(|| body["orphanDependents"].as_bool()),
            propagation_policy: None,
            precondition_uid: body
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_string),
            precondition_resource_version: body
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        let mut errs = Vec::new();
        if let Some(p) = &policy {
            if o.orphan_dependents.is_some() {
                errs.push(FieldError::invalid(
                    "propagationPolicy",
                    &json!(p),
                    "orphanDependents and deletionPropagation cannot be both set",
                ));
            }
            o.propagation_policy = PropagationPolicy::parse(p);
            if o.propagation_policy.is_none() {
                errs.push(FieldError::not_supported(
                    "propagationPolicy",
                    &json!(p),
                    &["Foreground", "Background", "Orphan", "nil"],
                ));
            }
        }
        if errs.is_empty() {
            Ok(o)
        } else {
            Err(ApiError::invalid(r, name, errs))
        }
    }

    fn policy_unset(&self) -> bool {
        self.orphan_dependents.is_none() && self.propagation_policy.is_none()
    }

    fn check_preconditions(
        &self,
        r: &ResourceInfo,
        name: &str,
        kv: &KeyValue,
        cur: &Value,
    ) -> ApiResult<()> {
        if let Some(uid) = &self.precondition_uid {
            let actual = meta_str(cur, "uid").unwrap_or_default();
            if uid != actual {
                return Err(ApiError::conflict(
                    r,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                    ),
                ));
            }
        }
        if let Some(rv) = &self.precondition_resource_version
            && *rv != kv.mod_revision.to_string()
        {
            return Err(ApiError::conflict(
                r,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    kv.mod_revision
                ),
            ));
        }
        Ok(())
    }
}

/// The warnings a delete of `r` with `o` carries.
pub fn delete_warnings(r: &ResourceInfo, o: &DeleteOptions) -> Vec<String> {
    match r.strategy.unset_propagation_warning() {
        Some(w) if o.policy_unset() => vec![w.to_string()],
        _ => Vec::new(),
    }
}

pub fn finalizers(o: &Value) -> Vec<String> {
    o.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// The object's finalizers after a delete with `o`: the options decide whether `orphan` or
/// `foregroundDeletion` is there, then whichever of them the object already carries, then the
/// resource's default.
pub fn finalizers_after_delete(r: &ResourceInfo, cur: &Value, o: &DeleteOptions) -> Vec<String> {
    let current = finalizers(cur);
    let existing = current
        .iter()
        .find(|f| *f == ORPHAN_FINALIZER || *f == FOREGROUND_FINALIZER)
        .map(String::as_str);
    let (orphan, foreground) = match (o.orphan_dependents, o.propagation_policy) {
        (Some(orphan), _) => (orphan, false),
        (None, Some(p)) => (
            p == PropagationPolicy::Orphan,
            p == PropagationPolicy::Foreground,
        ),
        (None, None) => match existing {
            Some(f) => (f == ORPHAN_FINALIZER, f == FOREGROUND_FINALIZER),
            None => (
                r.strategy.default_propagation() == PropagationPolicy::Orphan,
                false,
            ),
        },
    };
    let mut out: Vec<String> = current
        .into_iter()
        .filter(|f| f != ORPHAN_FINALIZER && f != FOREGROUND_FINALIZER)
        .collect();
    if orphan {
        out.push(ORPHAN_FINALIZER.into());
    }
    if foreground {
        out.push(FOREGROUND_FINALIZER.into());
    }
    out
}

fn set_finalizers(o: &mut Value, finalizers: &[String]) {
    let m = meta_mut(o);
    if finalizers.is_empty() {
        m.remove("finalizers");
    } else {
        m.insert("finalizers".into(), json!(finalizers));
    }
}

/// What a delete does to an object's deletion timestamp (graceful deletion, the pod strategy's).
#[derive(Debug, PartialEq)]
pub enum Grace {
    /// Already terminating with at least this grace: nothing changes.
    Pending,
    /// Terminating from `deletion_timestamp`, `seconds` after the delete.
    Period {
        deletion_timestamp: chrono::DateTime<chrono::Utc>,
        seconds: i64,
    },
    /// Not deleted gracefully (or already marked with grace 0 and held by finalizers): handled
    /// by the finalizers alone.
    NotGraceful,
}

/// How a delete of an object begins, before graceful deletion and finalizers (a resource's
/// strategy decides).
#[derive(Debug, PartialEq)]
pub enum DeleteStart {
    /// On to graceful deletion and the finalizers.
    Proceed,
    /// Nothing changes yet: the object is answered as it is.
    Hold,
    /// The strategy marked the object (a namespace turning `Terminating`): it is stored with the
    /// finalizers the options ask for.
    Mark,
}

pub(crate) fn timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Marks an object that finalizers hold: deletionTimestamp now (or earlier), grace 0, and
/// `generation` bumped on the first mark.
fn mark_as_deleting(o: &mut Value, at: chrono::DateTime<chrono::Utc>) {
    let m = meta_mut(o);
    let marked = m
        .get("deletionTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok());
    if marked.is_none()
        && let Some(g) = m
            .get("generation")
            .and_then(Value::as_i64)
            .filter(|g| *g > 0)
    {
        m.insert("generation".into(), json!(g + 1));
    }
    if marked.is_none_or(|t| t > at) {
        m.insert("deletionTimestamp".into(), json!(timestamp(at)));
    }
    m.insert("deletionGracePeriodSeconds".into(), json!(0));
}

impl ApiServer {
    /// Deletes or marks one object (see the module documentation).
    pub async fn delete(
        &self,
        r: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        o: &DeleteOptions,
    ) -> WriteResult {
        for _ in 0..16 {
            let (kv, cur) = self.get(r, ns, name).await?;
            o.check_preconditions(r, name, &kv, &cur)?;
            if let Some((code, obj)) = self.delete_once(r, name, &kv, cur, o).await? {
                return Ok((code, obj, delete_warnings(r, o)));
            }
        }
        Err(ApiError::modified(r, name))
    }

    /// One attempt against the stored `kv`; `None` when it changed meanwhile.
    async fn delete_once(
        &self,
        r: &ResourceInfo,
        name: &str,
        kv: &KeyValue,
        cur: Value,
        o: &DeleteOptions,
    ) -> ApiResult<Option<(StatusCode, Value)>> {
        crate::auth::node::admit(r, crate::auth::node::Write::Delete(&cur))?;
        let at = chrono::Utc::now();
        let mut new = cur.clone();
        match r.strategy.begin_delete(&cur, &mut new, at) {
            DeleteStart::Proceed => {}
            DeleteStart::Hold => return Ok(Some((StatusCode::OK, cur))),
            DeleteStart::Mark => {
                set_finalizers(&mut new, &finalizers_after_delete(r, &cur, o));
                return self
                    .write_marked(r, name, kv, new, StatusCode::OK, o.dry_run)
                    .await;
            }
        }
        let graceful = match r.strategy.graceful_delete(&cur, o.grace_period_seconds, at) {
            Grace::Pending => return Ok(Some((StatusCode::OK, cur))),
            Grace::NotGraceful => None,
            Grace::Period {
                deletion_timestamp,
                seconds,
            } => {
                let m = meta_mut(&mut new);
                m.insert(
                    "deletionTimestamp".into(),
                    json!(timestamp(deletion_timestamp)),
                );
                m.insert("deletionGracePeriodSeconds".into(), json!(seconds));
                Some(seconds)
            }
        };
        let finalizers = finalizers_after_delete(r, &cur, o);
        set_finalizers(&mut new, &finalizers);
        let stays = !finalizers.is_empty() || graceful.is_some_and(|s| s > 0);
        if !stays {
            if o.dry_run {
                return Ok(Some((StatusCode::OK, cur)));
            }
            return match self.store.delete(&kv.key, Some(kv.mod_revision)).await {
                Ok(deleted) => {
                    if r.strategy.allocates_service_addresses() {
                        self.service_ranges()
                            .release(&crate::alloc::InUse::of(&cur))
                            .await;
                    }
                    let mut out = cur;
                    set_rv(&mut out, deleted.mod_revision);
                    Ok(Some((StatusCode::OK, out)))
                }
                Err(StoreError::Conflict { .. }) => Ok(None),
                Err(e) => Err(self.write_error(r, name, e)),
            };
        }
        if graceful.is_none() {
            mark_as_deleting(&mut new, at);
        }
        // As the real server: 202 when the client asked for cascading with the old option.
        let code = if o.orphan_dependents == Some(false) {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        if new == cur {
            return Ok(Some((code, cur)));
        }
        self.write_marked(r, name, kv, new, code, o.dry_run).await
    }

    /// Stores the marked object `new` over `kv`; `None` when it changed meanwhile.
    async fn write_marked(
        &self,
        r: &ResourceInfo,
        name: &str,
        kv: &KeyValue,
        mut new: Value,
        code: StatusCode,
        dry_run: bool,
    ) -> ApiResult<Option<(StatusCode, Value)>> {
        if dry_run {
            return Ok(Some((code, new)));
        }
        match self
            .store
            .update(&kv.key, encode_for(r, &new), kv.mod_revision)
            .await
        {
            Ok(kv2) => {
                set_rv(&mut new, kv2.mod_revision);
                Ok(Some((code, new)))
            }
            Err(StoreError::Conflict { .. }) => Ok(None),
            Err(e) => Err(self.write_error(r, name, e)),
        }
    }

    /// DELETE on a collection: every listed object (selectors apply) deleted with the same
    /// options.
    pub async fn delete_collection(
        &self,
        r: &ResourceInfo,
        ns: Option<&str>,
        o: &DeleteOptions,
        q: &HashMap<String, String>,
    ) -> ApiResult<(Value, Vec<String>)> {
        let mut lq = q.clone();
        lq.remove("limit");
        lq.remove("continue");
        let list = self.list(r, ns, &lq).await?;
        let mut deleted = Vec::new();
        for item in list["items"].as_array().into_iter().flatten() {
            let name = meta_str(item, "name").unwrap_or_default();
            let ins = meta_str(item, "namespace");
            match self.delete(r, ins, name, o).await {
                Ok((_, obj, _)) => deleted.push(obj),
                Err(e) if e.reason == Reason::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let out = json!({
            "kind": r.list_kind(),
            "apiVersion": r.api_version(),
            "metadata": {"resourceVersion": list["metadata"]["resourceVersion"]},
            "items": deleted,
        });
        Ok((out, delete_warnings(r, o)))
    }
}

/// Whether an update leaves `new` (stored as `r`) with nothing holding its deletion, so that the
/// update deletes it: marked, no finalizers, nothing its strategy waits for (a kubelet still to
/// confirm a pod, a namespace finalizer in `spec.finalizers`).
pub fn finalized(r: &ResourceInfo, new: &Value) -> bool {
    new.pointer("/metadata/deletionTimestamp").is_some()
        && finalizers(new).is_empty()
        && !r.strategy.holds_deletion(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    fn opts(q: &[(&str, &str)], body: Value) -> ApiResult<DeleteOptions> {
        let q = q
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let r = resources::find("apps", "v1", "deployments").unwrap();
        DeleteOptions::parse(r, "x", &body, &q)
    }

    fn after(resource: (&str, &str), fins: &[&str], o: &DeleteOptions) -> Vec<String> {
        let r = resources::find(resource.0, "v1", resource.1).unwrap();
        finalizers_after_delete(r, &json!({"metadata": {"finalizers": fins}}), o)
    }

    #[test]
    fn the_policy_becomes_a_garbage_collector_finalizer() {
        let deploy = ("apps", "deployments");
        let job = ("batch", "jobs");
        let background = opts(&[], json!({"propagationPolicy": "Background"})).unwrap();
        let foreground = opts(&[("propagationPolicy", "Foreground")], json!({})).unwrap();
        let orphan = opts(&[], json!({"orphanDependents": true})).unwrap();
        let unset = opts(&[], json!({})).unwrap();
        assert!(after(deploy, &[], &background).is_empty());
        assert!(after(deploy, &[], &unset).is_empty());
        assert_eq!(
            after(deploy, &["a"], &foreground),
            ["a", "foregroundDeletion"]
        );
        assert_eq!(after(deploy, &[], &orphan), ["orphan"]);
        // Jobs orphan their pods unless told otherwise, and say so.
        assert_eq!(after(job, &[], &unset), ["orphan"]);
        assert!(after(job, &[], &background).is_empty());
        let jobs = resources::find("batch", "v1", "jobs").unwrap();
        assert_eq!(delete_warnings(jobs, &unset).len(), 1);
        assert!(delete_warnings(jobs, &background).is_empty());
        // Without options, the finalizer already there stays; options replace it.
        assert_eq!(
            after(deploy, &["foregroundDeletion"], &unset),
            ["foregroundDeletion"]
        );
        assert_eq!(
            after(job, &["foregroundDeletion"], &unset),
            ["foregroundDeletion"]
        );
        assert_eq!(
            after(deploy, &["foregroundDeletion", "b"], &orphan),
            ["b", "orphan"]
        );
    }

    #[test]
    fn options_are_validated() {
        let both = opts(
            &[],
            json!({"orphanDependents": false, "propagationPolicy": "Orphan"}),
        );
        assert_eq!(both.unwrap_err().code(), 422);
        assert_eq!(
            opts(&[("propagationPolicy", "Later")], json!({}))
                .unwrap_err()
                .code(),
            422
        );
        let o = opts(
            &[("gracePeriodSeconds", "5"), ("dryRun", "All")],
            json!({"preconditions": {"uid": "u"}}),
        )
        .unwrap();
        assert_eq!(o.grace_period_seconds, Some(5));
        assert!(o.dry_run);
        assert_eq!(o.precondition_uid.as_deref(), Some("u"));
    }

    #[test]
    fn marking_keeps_the_earliest_timestamp_and_bumps_generation_once() {
        let at: chrono::DateTime<chrono::Utc> = "2026-01-01T00:00:10Z".parse().unwrap();
        let mut o = json!({"metadata": {"generation": 3}});
        mark_as_deleting(&mut o, at);
        assert_eq!(o["metadata"]["generation"], 4);
        assert_eq!(o["metadata"]["deletionTimestamp"], "2026-01-01T00:00:10Z");
        mark_as_deleting(&mut o, at + chrono::Duration::seconds(5));
        assert_eq!(o["metadata"]["generation"], 4);
        assert_eq!(o["metadata"]["deletionTimestamp"], "2026-01-01T00:00:10Z");
        assert_eq!(o["metadata"]["deletionGracePeriodSeconds"], 0);
    }

    #[test]
    fn updates_finish_deletions_nothing_holds() {
        let pods = resources::find("", "v1", "pods").unwrap();
        let nss = resources::find("", "v1", "namespaces").unwrap();
        let marked = json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}});
        assert!(finalized(pods, &marked));
        assert!(!finalized(pods, &json!({"metadata": {}})));
        let held = json!({"metadata": {"deletionTimestamp": "t", "finalizers": ["x"]}});
        assert!(!finalized(pods, &held));
        let on_node = json!({"metadata": {"deletionTimestamp": "t", "deletionGracePeriodSeconds": 30},
            "spec": {"nodeName": "n"}});
        assert!(!finalized(pods, &on_node));
        let ns =
            json!({"metadata": {"deletionTimestamp": "t"}, "spec": {"finalizers": ["kubernetes"]}});
        assert!(!finalized(nss, &ns));
        assert!(finalized(
            nss,
            &json!({"metadata": {"deletionTimestamp": "t"}, "spec": {"finalizers": []}})
        ));
    }
}
