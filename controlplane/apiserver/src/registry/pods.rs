//! Pod (`v1`, `pods`).

use k8s_openapi::api::core::v1::PodSpec;
use serde_json::{Map, Value, json};
use skiff_k8s::qos::qos_class;

use super::prelude::*;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Pod",
    plural: "pods",
    singular: "pod",
    namespaced: true,
    short_names: &["po"],
    categories: &["all"],
    subresources: &["status", "binding", "eviction"],
    storage: "pods",
    schema: "io.k8s.api.core.v1.Pod",
    strategy: &Pods,
};

struct Pods;

impl Strategy for Pods {
    fn default(&self, root: &mut Map<String, Value>) {
        let spec = child(root, "spec");
        default_pod_spec(spec);
        if let Some(sa) = spec.get("serviceAccount").cloned() {
            default(spec, "serviceAccountName", sa);
        }
        default(spec, "serviceAccountName", json!("default"));
        let sa = spec["serviceAccountName"].clone();
        default(spec, "serviceAccount", sa);
        default(spec, "enableServiceLinks", json!(true));
        default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
        default(spec, "priority", json!(0));
        let tolerations = spec
            .entry("tolerations")
            .or_insert_with(|| json!([]))
            .as_array_mut();
        if let Some(t) = tolerations {
            for key in [
                "node.kubernetes.io/not-ready",
                "node.kubernetes.io/unreachable",
            ] {
                if !t.iter().any(|x| x["key"] == key) {
                    t.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
                }
            }
        }
        let qos = serde_json::from_value::<PodSpec>(Value::Object(spec.clone()))
            .map(|s| qos_class(&s).as_str());
        let status = child(root, "status");
        default(status, "phase", json!("Pending"));
        if let Ok(qos) = qos {
            default(status, "qosClass", json!(qos));
        }
    }

    fn validate(&self, o: &Value, errs: &mut Vec<FieldError>) {
        pod_spec("spec", &o["spec"], errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        // Only images, activeDeadlineSeconds and added tolerations may change.
        let strip = |v: &Value| {
            let mut s = v["spec"].clone();
            for key in ["containers", "initContainers"] {
                if let Some(cs) = s.get_mut(key).and_then(Value::as_array_mut) {
                    for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                        c.remove("image");
                    }
                }
            }
            if let Some(m) = s.as_object_mut() {
                m.remove("activeDeadlineSeconds");
                m.remove("tolerations");
                // Binding sets the node once; it may go from empty to set.
                m.remove("nodeName");
            }
            s
        };
        if strip(old) != strip(new) {
            errs.push(FieldError::forbidden(
                "spec",
                "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
            ));
        }
        let (on, nn) = (old.pointer("/spec/nodeName"), new.pointer("/spec/nodeName"));
        if on.is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty())) && on != nn {
            errs.push(FieldError::invalid(
                "spec.nodeName",
                nn.unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ]
    }
}
