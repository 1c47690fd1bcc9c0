//! ServiceAccount (`v1`, `serviceaccounts`); its `token` subresource (TokenRequest) is served
//! by `auth::reviews`.

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
    subresources: &["token"],
    storage: "serviceaccounts",
    schema: "io.k8s.api.core.v1.ServiceAccount",
    strategy: &ServiceAccountStrategy,
};

struct ServiceAccountStrategy;

impl Strategy for ServiceAccountStrategy {
    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            (
                "Secrets",
                "string",
                0,
                "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
            ),
            AGE,
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let name = json!(s(o, "/metadata/name"));
        vec![name, json!(arr(o, "/secrets").count()), age(o)]
    }
}
