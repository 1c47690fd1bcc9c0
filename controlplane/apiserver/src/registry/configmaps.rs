//! ConfigMap (`v1`, `configmaps`).

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
    strategy: &ConfigMapStrategy,
};

struct ConfigMapStrategy;

impl Strategy for ConfigMapStrategy {
    fn validate(&self, o: &Value, errs: &mut Vec<FieldError>) {
        data_keys("data", o, errs);
        data_keys("binaryData", o, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        immutable_data(old, new, errs);
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Data", "string", 0, "Data contains the configuration data."),
            AGE,
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let name = json!(s(o, "/metadata/name"));
        let n = o["data"].as_object().map_or(0, |m| m.len())
            + o["binaryData"].as_object().map_or(0, |m| m.len());
        vec![name, json!(n), age(o)]
    }
}
