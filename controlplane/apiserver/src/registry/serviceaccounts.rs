//! ServiceAccount (`v1`, `serviceaccounts`).

use super::prelude::*;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "ServiceAccount",
    plural: "serviceaccounts",
    singular: "serviceaccount",
    namespaced: true,
    short_names: &["sa"],
    categories: &[],
    subresources: &[],
    storage: "serviceaccounts",
    schema: "io.k8s.api.core.v1.ServiceAccount",
    strategy: &Serviceaccounts,
};

struct Serviceaccounts;

impl Strategy for Serviceaccounts {}
