//! ClusterRoleBinding (`rbac.authorization.k8s.io/v1`, `clusterrolebindings`); escalation prevention is its admission.

use super::prelude::*;
use super::rbac_common::{
    ROLE, binding_cells, default_subjects, validate_binding, validate_binding_update,
};
use crate::auth::escalation;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "ClusterRoleBinding",
    plural: "clusterrolebindings",
    singular: "clusterrolebinding",
    namespaced: false,
    short_names: &[],
    categories: &[],
    subresources: &[],
    storage: "clusterrolebindings",
    schema: "io.k8s.api.rbac.v1.ClusterRoleBinding",
    strategy: &ClusterRoleBindingStrategy,
};

struct ClusterRoleBindingStrategy;

impl Strategy for ClusterRoleBindingStrategy {
    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn default(&self, o: &mut Map<String, Value>) {
        default_subjects(o);
    }

    fn validate(&self, o: &Value, errs: &mut Vec<FieldError>) {
        validate_binding(o, &["ClusterRole"], errs);
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
            "clusterrolebindings",
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
            "clusterrolebindings",
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
