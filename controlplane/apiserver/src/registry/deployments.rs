//! Deployment (`apps/v1`, `deployments`).

use serde_json::{Map, Value, json};

use super::prelude::*;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "apps",
    version: "v1",
    kind: "Deployment",
    plural: "deployments",
    singular: "deployment",
    namespaced: true,
    short_names: &["deploy"],
    categories: &["all"],
    subresources: &["status", "scale"],
    storage: "deployments",
    schema: "io.k8s.api.apps.v1.Deployment",
    strategy: &Deployments,
};

struct Deployments;

impl Strategy for Deployments {
    fn default(&self, root: &mut Map<String, Value>) {
        let spec = child(root, "spec");
        default(spec, "replicas", json!(1));
        default(spec, "revisionHistoryLimit", json!(10));
        default(spec, "progressDeadlineSeconds", json!(600));
        let strategy = child(spec, "strategy");
        default(strategy, "type", json!("RollingUpdate"));
        if strategy["type"] == "RollingUpdate" {
            let ru = child(strategy, "rollingUpdate");
            default(ru, "maxUnavailable", json!("25%"));
            default(ru, "maxSurge", json!("25%"));
        }
        template(spec);
    }

    fn validate(&self, o: &Value, errs: &mut Vec<FieldError>) {
        workload_template(o, errs, true);
        if let Some(t) = o.pointer("/spec/strategy/type").and_then(Value::as_str)
            && t != "RollingUpdate"
            && t != "Recreate"
        {
            errs.push(FieldError::not_supported(
                "spec.strategy.type",
                &o["spec"]["strategy"]["type"],
                &["Recreate", "RollingUpdate"],
            ));
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        immutable("spec.selector", old, new, errs);
    }

    fn tracks_generation(&self) -> bool {
        true
    }
}
