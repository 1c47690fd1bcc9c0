//! RoleBinding (`rbac.authorization.k8s.io/v1`, `rolebindings`); escalation prevention is its admission.

use super::prelude::*;
use super::rbac_common::{
    ROLE, binding_cells, default_subjects, validate_binding, validate_binding_update,
};
use crate::auth::escalation;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "RoleBinding",
    plural: "rolebindings",
    singular: "rolebinding",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    storage: "rolebindings",
    schema: "io.k8s.api.rbac.v1.RoleBinding",
    strategy: &RoleBindingStrategy,
};

struct RoleBindingStrategy;

impl Strategy for RoleBindingStrategy {
    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn default(&self, o: &mut Map<String, Value>) {
        default_subjects(o);
    }

    fn validate(&self, o: &Value, errs: &mut Vec<FieldError>) {
        validate_binding(o, &["Role", "ClusterRole"], errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        validate_binding_update(old, new, errs);
    }

    fn admit_create<'a>(
        &'a self,
        api: &'a ApiServer,
        o: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(std::future::ready(escalation::check_binding(
            api,
            "rolebindings",
            o,
        )))
    }

    fn admit_update<'a>(
        &'a self,
        api: &'a ApiServer,
        _cur: &'a Value,
        new: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(std::future::ready(escalation::check_binding(
            api,
            "rolebindings",
            new,
        )))
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, ROLE, AGE]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        binding_cells(o)
    }
}
