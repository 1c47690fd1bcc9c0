//! ControllerRevision (`apps/v1`, `controllerrevisions`).

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
    strategy: &ControllerRevisionStrategy,
};

struct ControllerRevisionStrategy;

impl Strategy for ControllerRevisionStrategy {
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

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Controller", "string", 0, "Controller of the object"),
            (
                "Revision",
                "string",
                0,
                "Revision indicates the revision of the state represented by Data.",
            ),
            AGE,
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let name = json!(s(o, "/metadata/name"));
        vec![
            name,
            json!(controller_of(o)),
            json!(i(o, "/revision")),
            age(o),
        ]
    }
}

/// The controlling owner as `kind.group/name` (kubectl's resource name form), or `<none>`.
fn controller_of(o: &Value) -> String {
    let Some(owner) = arr(o, "/metadata/ownerReferences").find(|r| r["controller"] == true) else {
        return "<none>".into();
    };
    let kind = s(owner, "/kind");
    let group = match s(owner, "/apiVersion").split_once('/') {
        Some((g, _)) => g,
        None => "",
    };
    let group_kind = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    if group_kind.is_empty() {
        return s(owner, "/name").to_string();
    }
    format!("{}/{}", group_kind.to_lowercase(), s(owner, "/name"))
}
