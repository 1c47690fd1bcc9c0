//! Namespace (`v1`, `namespaces`).

use serde_json::{Map, Value, json};

use super::prelude::*;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Namespace",
    plural: "namespaces",
    singular: "namespace",
    namespaced: false,
    short_names: &["ns"],
    categories: &[],
    subresources: &["status", "finalize"],
    storage: "namespaces",
    schema: "io.k8s.api.core.v1.Namespace",
    strategy: &Namespaces,
};

struct Namespaces;

impl Strategy for Namespaces {
    fn default(&self, root: &mut Map<String, Value>) {
        let name = root
            .get("metadata")
            .and_then(|m| m.get("name"))
            .cloned()
            .unwrap_or(Value::Null);
        let labels = child(child(root, "metadata"), "labels");
        labels.insert("kubernetes.io/metadata.name".into(), name);
        default(child(root, "spec"), "finalizers", json!(["kubernetes"]));
        default(child(root, "status"), "phase", json!("Active"));
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["status.phase"]
    }

    fn name_rule(&self) -> NameRule {
        NameRule::Dns1123Label
    }
}
