//! ReplicaSet (`apps/v1`, `replicasets`).

use super::prelude::*;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "apps",
    version: "v1",
    kind: "ReplicaSet",
    plural: "replicasets",
    singular: "replicaset",
    namespaced: true,
    short_names: &["rs"],
    categories: &["all"],
    subresources: &["status", "scale"],
    storage: "replicasets",
    schema: "io.k8s.api.apps.v1.ReplicaSet",
    strategy: &ReplicaSetStrategy,
};

struct ReplicaSetStrategy;

impl Strategy for ReplicaSetStrategy {
    fn default(&self, root: &mut Map<String, Value>) {
        let spec = child(root, "spec");
        default(spec, "replicas", json!(1));
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

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["status.replicas"]
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            (
                "Desired",
                "integer",
                0,
                "Replicas is the number of desired replicas.",
            ),
            (
                "Current",
                "integer",
                0,
                "Replicas is the most recently observed number of replicas.",
            ),
            (
                "Ready",
                "integer",
                0,
                "The number of ready replicas for this replica set.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            (
                "Selector",
                "string",
                1,
                "Selector is a label query over pods that should match the replica count.",
            ),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let name = json!(s(o, "/metadata/name"));
        let [c, im, sel] = template_cells(o);
        vec![
            name,
            json!(i(o, "/spec/replicas")),
            json!(i(o, "/status/replicas")),
            json!(i(o, "/status/readyReplicas")),
            age(o),
            c,
            im,
            sel,
        ]
    }
}
