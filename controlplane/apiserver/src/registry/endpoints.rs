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
    strategy: &EndpointsStrategy,
};

struct EndpointsStrategy;

impl Strategy for EndpointsStrategy {
    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            (
                "Endpoints",
                "string",
                0,
                "Endpoints is the list of endpoints in the service.",
            ),
            AGE,
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let name = json!(s(o, "/metadata/name"));
        vec![name, json!(endpoints_summary(o)), age(o)]
    }
}

fn endpoints_summary(o: &Value) -> String {
    let mut out = Vec::new();
    let mut total = 0;
    for ss in arr(o, "/subsets") {
        for a in arr(ss, "/addresses") {
            let ports: Vec<i64> = arr(ss, "/ports")
                .filter_map(|p| p["port"].as_i64())
                .collect();
            if ports.is_empty() {
                total += 1;
                out.push(s(a, "/ip").to_string());
            }
            for p in ports {
                total += 1;
                out.push(format!("{}:{p}", s(a, "/ip")));
            }
        }
    }
    if out.is_empty() {
        return "<none>".into();
    }
    let shown: Vec<String> = out.into_iter().take(3).collect();
    if total > 3 {
        format!("{} + {} more...", shown.join(","), total - 3)
    } else {
        shown.join(",")
    }
}
