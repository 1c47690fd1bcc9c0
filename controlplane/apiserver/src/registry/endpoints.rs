//! Endpoints (`v1`, `endpoints`).

use super::prelude::*;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Endpoints",
    plural: "endpoints",
    singular: "endpoints",
    namespaced: true,
    short_names: &["ep"],
    categories: &[],
    subresources: &[],
    storage: "services/endpoints",
    schema: "io.k8s.api.core.v1.Endpoints",
    strategy: &Endpoints,
};

struct Endpoints;

impl Strategy for Endpoints {}
