//! EndpointSlice (`discovery.k8s.io/v1`, `endpointslices`).

use super::prelude::*;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "discovery.k8s.io",
    version: "v1",
    kind: "EndpointSlice",
    plural: "endpointslices",
    singular: "endpointslice",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    storage: "endpointslices",
    schema: "io.k8s.api.discovery.v1.EndpointSlice",
    strategy: &Endpointslices,
};

struct Endpointslices;

impl Strategy for Endpointslices {}
