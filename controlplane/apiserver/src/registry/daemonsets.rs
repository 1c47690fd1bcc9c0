//! DaemonSet (`apps/v1`, `daemonsets`).

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
    strategy: &DaemonSetStrategy,
};

struct DaemonSetStrategy;

impl Strategy for DaemonSetStrategy {
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

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            (
                "Desired",
                "integer",
                0,
                "The total number of nodes that should be running the daemon pod.",
            ),
            (
                "Current",
                "integer",
                0,
                "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
            ),
            (
                "Ready",
                "integer",
                0,
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
            ),
            (
                "Up-to-date",
                "integer",
                0,
                "The total number of nodes that are running updated daemon pod",
            ),
            (
                "Available",
                "integer",
                0,
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
            ),
            (
                "Node Selector",
                "string",
                0,
                "NodeSelector is a selector which must be true for the pod to fit on a node.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            (
                "Selector",
                "string",
                1,
                "A label query over pods that are managed by the daemon set.",
            ),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let name = json!(s(o, "/metadata/name"));
        let [c, im, sel] = template_cells(o);
        let ns: Vec<String> = o
            .pointer("/spec/template/spec/nodeSelector")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        vec![
            name,
            json!(i(o, "/status/desiredNumberScheduled")),
            json!(i(o, "/status/currentNumberScheduled")),
            json!(i(o, "/status/numberReady")),
            json!(i(o, "/status/updatedNumberScheduled")),
            json!(i(o, "/status/numberAvailable")),
            or_none(ns.join(",")),
            age(o),
            c,
            im,
            sel,
        ]
    }
}
