//! DaemonSet (`apps/v1`, `daemonsets`).

use serde_json::{Map, Value, json};

use super::prelude::*;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "apps",
    version: "v1",
    kind: "DaemonSet",
    plural: "daemonsets",
    singular: "daemonset",
    namespaced: true,
    short_names: &["ds"],
    categories: &["all"],
    subresources: &["status"],
    storage: "daemonsets",
    schema: "io.k8s.api.apps.v1.DaemonSet",
    strategy: &Daemonsets,
};

struct Daemonsets;

impl Strategy for Daemonsets {
    fn default(&self, root: &mut Map<String, Value>) {
        let spec = child(root, "spec");
        default(spec, "revisionHistoryLimit", json!(10));
        let strategy = child(spec, "updateStrategy");
        default(strategy, "type", json!("RollingUpdate"));
        if strategy["type"] == "RollingUpdate" {
            let ru = child(strategy, "rollingUpdate");
            default(ru, "maxUnavailable", json!(1));
            default(ru, "maxSurge", json!(0));
        }
        template(spec);
    }

    fn validate(&self, o: &Value, errs: &mut Vec<FieldError>) {
        workload_template(o, errs, true);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        immutable("spec.selector", old, new, errs);
    }

    fn tracks_generation(&self) -> bool {
        true
    }
}
