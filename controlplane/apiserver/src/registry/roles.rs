//! Role (`rbac.authorization.k8s.io/v1`, `roles`); escalation prevention is its admission.

use super::prelude::*;
use super::rbac_common::{CREATED_AT, role_cells, validate_rules};
use crate::auth::escalation;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "Role",
    plural: "roles",
    singular: "role",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    storage: "roles",
    schema: "io.k8s.api.rbac.v1.Role",
    strategy: &RoleStrategy,
};

struct RoleStrategy;

impl Strategy for RoleStrategy {
    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn validate(&self, o: &Value, errs: &mut Vec<FieldError>) {
        validate_rules(o, errs);
    }

    fn admit_create<'a>(
        &'a self,
        api: &'a ApiServer,
        o: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(std::future::ready(escalation::check_role(api, "roles", o)))
    }

    fn admit_update<'a>(
        &'a self,
        api: &'a ApiServer,
        _cur: &'a Value,
        new: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(std::future::ready(escalation::check_role(
            api, "roles", new,
        )))
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, CREATED_AT]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        role_cells(o)
    }
}
