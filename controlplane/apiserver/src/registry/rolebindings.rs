//! RoleBinding (`rbac.authorization.k8s.io/v1`, `rolebindings`); escalation prevention is its admission.

use super::prelude::*;
use super::rbac_common::BindingStrategy;

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
    strategy: &BindingStrategy {
        resource: "rolebindings",
        role_kinds: &["Role", "ClusterRole"],
    },
};
