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
    strategy: &EndpointSliceStrategy,
};

struct EndpointSliceStrategy;

impl Strategy for EndpointSliceStrategy {
    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            (
                "AddressType",
                "string",
                0,
                "The IP protocol for this slice.",
            ),
            ("Ports", "string", 0, "The ports for this slice."),
            ("Endpoints", "string", 0, "The endpoints for this slice."),
            AGE,
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let name = json!(s(o, "/metadata/name"));
        let ports: Vec<String> = arr(o, "/ports")
            .filter_map(|p| p["port"].as_i64())
            .map(|p| p.to_string())
            .collect();
        let addrs: Vec<String> = arr(o, "/endpoints")
            .flat_map(|e| {
                arr(e, "/addresses")
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        let shown = if addrs.is_empty() {
            "<unset>".to_string()
        } else if addrs.len() > 3 {
            format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
        } else {
            addrs.join(",")
        };
        vec![
            name,
            json!(s(o, "/addressType")),
            json!(if ports.is_empty() {
                "<unset>".to_string()
            } else {
                ports.join(",")
            }),
            json!(shown),
            age(o),
        ]
    }
}
