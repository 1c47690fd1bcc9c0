//! Job (`batch/v1`, `jobs`).

use serde_json::{Map, Value, json};

use super::prelude::*;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "batch",
    version: "v1",
    kind: "Job",
    plural: "jobs",
    singular: "job",
    namespaced: true,
    short_names: &[],
    categories: &["all"],
    subresources: &["status"],
    storage: "jobs",
    schema: "io.k8s.api.batch.v1.Job",
    strategy: &Jobs,
};

struct Jobs;

impl Strategy for Jobs {
    fn default(&self, root: &mut Map<String, Value>) {
        let uid = root
            .get("metadata")
            .and_then(|m| m.get("uid"))
            .cloned()
            .unwrap_or(Value::Null);
        let name = root
            .get("metadata")
            .and_then(|m| m.get("name"))
            .cloned()
            .unwrap_or(Value::Null);
        let spec = child(root, "spec");
        // Neither set: one pod to completion. Only parallelism: a work queue, no count.
        let unset = |k: &str| spec.get(k).is_none_or(Value::is_null);
        if unset("completions") && unset("parallelism") {
            spec.insert("completions".into(), json!(1));
        }
        default(spec, "parallelism", json!(1));
        default(spec, "backoffLimit", json!(6));
        default(spec, "completionMode", json!("NonIndexed"));
        default(spec, "suspend", json!(false));
        default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
        let manual = spec
            .get("manualSelector")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !manual && !uid.is_null() {
            let labels = json!({
                "batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-name": name,
                "controller-uid": uid,
                "job-name": name,
            });
            default(
                spec,
                "selector",
                json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
            );
            let tmeta = child(child(spec, "template"), "metadata");
            let tl = child(tmeta, "labels");
            for (k, v) in labels.as_object().expect("object literal") {
                tl.entry(k.clone()).or_insert(v.clone());
            }
        }
        template(spec);
    }

    fn validate(&self, o: &Value, errs: &mut Vec<FieldError>) {
        workload_template(o, errs, false);
        let rp = o.pointer("/spec/template/spec/restartPolicy");
        if !matches!(
            rp.and_then(Value::as_str),
            Some("Never") | Some("OnFailure")
        ) {
            errs.push(FieldError::not_supported(
                "spec.template.spec.restartPolicy",
                rp.unwrap_or(&Value::Null),
                &["OnFailure", "Never"],
            ));
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        immutable("spec.selector", old, new, errs);
        immutable("spec.completions", old, new, errs);
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["status.successful"]
    }
}
