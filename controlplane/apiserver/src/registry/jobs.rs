//! Job (`batch/v1`, `jobs`).

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
    strategy: &JobStrategy,
};

struct JobStrategy;

/// The warning `kube-apiserver` gives when a Job is deleted without a policy.
const ORPHANS_WARNING: &str = "child pods are preserved by default when jobs are deleted; set propagationPolicy=Background to remove them or set propagationPolicy=Orphan to suppress this warning";

impl Strategy for JobStrategy {
    /// batch/v1 JobStrategy orphan their pods when no policy is named, for compatibility.
    fn default_propagation(&self) -> PropagationPolicy {
        PropagationPolicy::Orphan
    }

    fn unset_propagation_warning(&self) -> Option<&'static str> {
        Some(ORPHANS_WARNING)
    }

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

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Status", "string", 0, "Status of the job."),
            (
                "Completions",
                "string",
                0,
                "The desired number of successfully finished pods the job should be run with.",
            ),
            (
                "Duration",
                "string",
                0,
                "Time required to complete the job.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            (
                "Selector",
                "string",
                1,
                "A label query over pods that should match the pod count.",
            ),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let name = json!(s(o, "/metadata/name"));
        let [c, im, sel] = template_cells(o);
        let completions = match o.pointer("/spec/completions").and_then(Value::as_i64) {
            Some(n) => format!("{}/{n}", i(o, "/status/succeeded")),
            None => format!(
                "{}/1 of {}",
                i(o, "/status/succeeded"),
                i(o, "/spec/parallelism").max(1)
            ),
        };
        vec![
            name,
            json!(job_status(o)),
            json!(completions),
            json!(job_duration(o)),
            age(o),
            c,
            im,
            sel,
        ]
    }
}

fn job_status(o: &Value) -> &'static str {
    let cond =
        |t: &str| arr(o, "/status/conditions").any(|c| c["type"] == t && c["status"] == "True");
    if cond("Complete") {
        "Complete"
    } else if cond("Failed") {
        "Failed"
    } else if o.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else if cond("Suspended") {
        "Suspended"
    } else if cond("FailureTarget") {
        "FailureTarget"
    } else if cond("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    }
}

fn job_duration(o: &Value) -> String {
    let parse = |p: &str| {
        o.pointer(p)
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    match (parse("/status/startTime"), parse("/status/completionTime")) {
        (None, _) => String::new(),
        (Some(st), None) => {
            human_duration((chrono::Utc::now() - st.with_timezone(&chrono::Utc)).num_seconds())
        }
        (Some(st), Some(ct)) => human_duration((ct - st).num_seconds()),
    }
}
