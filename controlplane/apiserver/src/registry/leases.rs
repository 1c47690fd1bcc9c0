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
    strategy: &LeaseStrategy,
};

struct LeaseStrategy;

impl Strategy for LeaseStrategy {
    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Holder", "string", 0, "The holder of the lease."),
            AGE,
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let name = json!(s(o, "/metadata/name"));
        vec![name, json!(s(o, "/spec/holderIdentity")), age(o)]
    }
}
