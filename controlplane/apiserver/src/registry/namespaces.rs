//! Namespace (`v1`, `namespaces`).

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
    strategy: &NamespaceStrategy,
};

struct NamespaceStrategy;

impl Strategy for NamespaceStrategy {
    /// The first delete marks the namespace `Terminating` (the namespace controller empties
    /// it); later ones wait while `spec.finalizers` hold it.
    fn begin_delete(
        &self,
        cur: &Value,
        new: &mut Value,
        at: chrono::DateTime<chrono::Utc>,
    ) -> DeleteStart {
        if cur.pointer("/metadata/deletionTimestamp").is_none() {
            new["metadata"]["deletionTimestamp"] = json!(timestamp(at));
            new["status"]["phase"] = json!("Terminating");
            DeleteStart::Mark
        } else if self.holds_deletion(cur) {
            DeleteStart::Hold
        } else {
            DeleteStart::Proceed
        }
    }

    fn holds_deletion(&self, o: &Value) -> bool {
        o.pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
    }

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

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Status", "string", 0, "The status of the namespace"),
            AGE,
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let name = json!(s(o, "/metadata/name"));
        vec![name, json!(s(o, "/status/phase")), age(o)]
    }
}
