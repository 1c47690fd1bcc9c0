//! Deployment (`apps/v1`, `deployments`).

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
    strategy: &DeploymentStrategy,
};

struct DeploymentStrategy;

impl Strategy for DeploymentStrategy {
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

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Ready", "string", 0, "Number of the pod with ready state"),
            (
                "Up-to-date",
                "string",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            (
                "Available",
                "string",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            AGE,
            CONTAINERS,
            IMAGES,
            (
                "Selector",
                "string",
                1,
                "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
            ),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let name = json!(s(o, "/metadata/name"));
        let [c, im, sel] = template_cells(o);
        vec![
            name,
            json!(format!(
                "{}/{}",
                i(o, "/status/readyReplicas"),
                i(o, "/spec/replicas")
            )),
            json!(i(o, "/status/updatedReplicas")),
            json!(i(o, "/status/availableReplicas")),
            age(o),
            c,
            im,
            sel,
        ]
    }
}
