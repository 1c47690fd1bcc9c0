//! ControllerRevision (`apps/v1`, `controllerrevisions`).

use serde_json::Value;

use super::prelude::*;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "apps",
    version: "v1",
    kind: "ControllerRevision",
    plural: "controllerrevisions",
    singular: "controllerrevision",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    storage: "controllerrevisions",
    schema: "io.k8s.api.apps.v1.ControllerRevision",
    strategy: &Controllerrevisions,
};

struct Controllerrevisions;

impl Strategy for Controllerrevisions {
    fn validate(&self, o: &Value, errs: &mut Vec<FieldError>) {
        if o.get("data").is_none_or(Value::is_null) {
            errs.push(FieldError {
                message: "Required value: data is mandatory".into(),
                ..FieldError::required("data")
            });
        }
        if o["revision"].as_i64().is_some_and(|r| r < 0) {
            errs.push(FieldError::invalid(
                "revision",
                &o["revision"],
                "must be greater than or equal to 0",
            ));
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        immutable("data", old, new, errs);
    }
}
