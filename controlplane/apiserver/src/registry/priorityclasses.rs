//! PriorityClass (`scheduling.k8s.io/v1`, `priorityclasses`).

use super::prelude::*;
use crate::priority;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "scheduling.k8s.io",
    version: "v1",
    kind: "PriorityClass",
    plural: "priorityclasses",
    singular: "priorityclass",
    namespaced: false,
    short_names: &["pc"],
    categories: &[],
    subresources: &[],
    storage: "priorityclasses",
    schema: "io.k8s.api.scheduling.v1.PriorityClass",
    strategy: &PriorityClassStrategy,
};

struct PriorityClassStrategy;

impl Strategy for PriorityClassStrategy {
    /// At most one global default.
    fn admit_create<'a>(
        &'a self,
        api: &'a ApiServer,
        o: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(api.admit_priority_class(o))
    }

    fn admit_update<'a>(
        &'a self,
        api: &'a ApiServer,
        _cur: &'a Value,
        new: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(api.admit_priority_class(new))
    }

    fn default(&self, root: &mut Map<String, Value>) {
        default(root, "preemptionPolicy", json!("PreemptLowerPriority"));
    }

    fn validate(&self, o: &Value, errs: &mut Vec<FieldError>) {
        validate_priority_class(o, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        if old.get("value") != new.get("value") {
            errs.push(FieldError::forbidden(
                "value",
                "may not be changed in an update.",
            ));
        }
        immutable("preemptionPolicy", old, new, errs);
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            (
                "Value",
                "integer",
                0,
                "value represents the integer value of this priority class. This is the actual priority that pods receive when they have the name of this class in their pod spec.",
            ),
            (
                "Global-Default",
                "boolean",
                0,
                "globalDefault specifies whether this PriorityClass should be considered as the default priority for pods that do not have any priority class. Only one PriorityClass can be marked as `globalDefault`. However, if more than one PriorityClasses exists with their `globalDefault` field set to true, the smallest value of such global default PriorityClasses will be used as the default priority.",
            ),
            AGE,
            (
                "PreemptionPolicy",
                "string",
                0,
                "preemptionPolicy is the Policy for preempting pods with lower priority. One of Never, PreemptLowerPriority. Defaults to PreemptLowerPriority if unset.",
            ),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let name = json!(s(o, "/metadata/name"));
        vec![
            name,
            json!(o["value"].as_i64().unwrap_or(0)),
            json!(o["globalDefault"].as_bool().unwrap_or(false)),
            age(o),
            json!(s(o, "/preemptionPolicy")),
        ]
    }
}

/// Names starting with `system-` are the built-in classes'; other classes stay below them.
fn validate_priority_class(o: &Value, errs: &mut Vec<FieldError>) {
    let name = o
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let value = o["value"].as_i64().unwrap_or(0);
    if name.starts_with("system-") {
        if !priority::SYSTEM_CLASSES
            .iter()
            .any(|(n, v, _)| *n == name && i64::from(*v) == value)
        {
            errs.push(FieldError::forbidden(
                "metadata.name",
                format!("priority class names with 'system-' prefix are reserved for system use only. error: {name} is not a known system priority class"),
            ));
        }
    } else if value > priority::HIGHEST_USER_PRIORITY {
        errs.push(FieldError::forbidden(
            "value",
            format!(
                "maximum allowed value of a user defined priority is {}",
                priority::HIGHEST_USER_PRIORITY
            ),
        ));
    }
    if let Some(p) = o.get("preemptionPolicy")
        && !matches!(p.as_str(), Some("Never" | "PreemptLowerPriority"))
    {
        errs.push(FieldError::not_supported(
            "preemptionPolicy",
            p,
            &["Never", "PreemptLowerPriority"],
        ));
    }
}
