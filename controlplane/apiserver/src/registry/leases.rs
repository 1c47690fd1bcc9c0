//! Lease (`coordination.k8s.io/v1`, `leases`).

use super::prelude::*;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "coordination.k8s.io",
    version: "v1",
    kind: "Lease",
    plural: "leases",
    singular: "lease",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    storage: "leases",
    schema: "io.k8s.api.coordination.v1.Lease",
    strategy: &Leases,
};

struct Leases;

impl Strategy for Leases {}
