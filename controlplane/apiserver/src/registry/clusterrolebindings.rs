//! ClusterRoleBinding (`rbac.authorization.k8s.io/v1`, `clusterrolebindings`); escalation prevention is its admission.

use super::prelude::*;
use super::rbac_common::BindingStrategy;

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
    strategy: &BindingStrategy {
        resource: "clusterrolebindings",
        role_kinds: &["ClusterRole"],
    },
};
