//! Node (`v1`, `nodes`).

use super::prelude::*;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Node",
    plural: "nodes",
    singular: "node",
    namespaced: false,
    short_names: &["no"],
    categories: &[],
    subresources: &["status", "proxy"],
    storage: "minions",
    schema: "io.k8s.api.core.v1.Node",
    strategy: &NodeStrategy,
};

struct NodeStrategy;

impl Strategy for NodeStrategy {
    /// The kubelet registers a node with its status.
    fn keeps_status_on_create(&self) -> bool {
        true
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["spec.unschedulable"]
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Status", "string", 0, "The status of the node"),
            ("Roles", "string", 0, "The roles of the node"),
            AGE,
            (
                "Version",
                "string",
                0,
                "Kubelet Version reported by the node.",
            ),
            (
                "Internal-IP",
                "string",
                1,
                "List of internal IPs associated with the node.",
            ),
            (
                "External-IP",
                "string",
                1,
                "List of external IPs associated with the node.",
            ),
            (
                "OS-Image",
                "string",
                1,
                "OS Image reported by the node from /etc/os-release.",
            ),
            (
                "Kernel-Version",
                "string",
                1,
                "Kernel Version reported by the node from 'uname -r'.",
            ),
            (
                "Container-Runtime",
                "string",
                1,
                "ContainerRuntime Version reported by the node through runtime remote API.",
            ),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let name = json!(s(o, "/metadata/name"));
        vec![
            name,
            json!(node_status(o)),
            json!(node_roles(o)),
            age(o),
            json!(s(o, "/status/nodeInfo/kubeletVersion")),
            json!(address(o, "InternalIP")),
            json!(address(o, "ExternalIP")),
            or_none(s(o, "/status/nodeInfo/osImage").to_string()),
            or_none(s(o, "/status/nodeInfo/kernelVersion").to_string()),
            or_none(s(o, "/status/nodeInfo/containerRuntimeVersion").to_string()),
        ]
    }
}

fn node_status(o: &Value) -> String {
    let ready = arr(o, "/status/conditions").find(|c| c["type"] == "Ready");
    let mut st = match ready.and_then(|c| c["status"].as_str()) {
        Some("True") => "Ready".to_string(),
        Some("False") => "NotReady".to_string(),
        _ => "Unknown".to_string(),
    };
    if o.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
        st.push_str(",SchedulingDisabled");
    }
    st
}

fn node_roles(o: &Value) -> String {
    let mut roles: Vec<String> = o
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            if let Some(r) = k.strip_prefix("node-role.kubernetes.io/") {
                Some(r.to_string())
            } else if k == "kubernetes.io/role" {
                v.as_str().map(str::to_string)
            } else {
                None
            }
        })
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort();
    if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    }
}

fn address(o: &Value, ty: &str) -> String {
    let a: Vec<&str> = arr(o, "/status/addresses")
        .filter(|a| a["type"] == ty)
        .filter_map(|a| a["address"].as_str())
        .collect();
    if a.is_empty() {
        "<none>".into()
    } else {
        a.join(",")
    }
}
