//! ConfigMap (`v1`, `configmaps`).

use serde_json::Value;

use super::prelude::*;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "ConfigMap",
    plural: "configmaps",
    singular: "configmap",
    namespaced: true,
    short_names: &["cm"],
    categories: &[],
    subresources: &[],
    storage: "configmaps",
    schema: "io.k8s.api.core.v1.ConfigMap",
    strategy: &Configmaps,
};

struct Configmaps;

impl Strategy for Configmaps {
    fn validate(&self, o: &Value, errs: &mut Vec<FieldError>) {
        data_keys("data", o, errs);
        data_keys("binaryData", o, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        immutable_data(old, new, errs);
    }
}
