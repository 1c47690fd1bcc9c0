//! Service (`v1`, `services`).

use std::collections::HashSet;

use super::prelude::*;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Service",
    plural: "services",
    singular: "service",
    namespaced: true,
    short_names: &["svc"],
    categories: &["all"],
    subresources: &["status"],
    storage: "services/specs",
    schema: "io.k8s.api.core.v1.Service",
    strategy: &ServiceStrategy,
};

struct ServiceStrategy;

impl Strategy for ServiceStrategy {
    fn allocates_service_addresses(&self) -> bool {
        true
    }

    fn default(&self, root: &mut Map<String, Value>) {
        let spec = child(root, "spec");
        default(spec, "type", json!("ClusterIP"));
        let ty = spec["type"].as_str().unwrap_or_default().to_string();
        if ty != "ExternalName" {
            default(spec, "sessionAffinity", json!("None"));
            default(spec, "internalTrafficPolicy", json!("Cluster"));
        }
        if ty == "NodePort" || ty == "LoadBalancer" {
            default(spec, "externalTrafficPolicy", json!("Cluster"));
        }
        if ty == "LoadBalancer" {
            default(spec, "allocateLoadBalancerNodePorts", json!(true));
        }
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                default(p, "protocol", json!("TCP"));
                if let Some(port) = p.get("port").cloned() {
                    default(p, "targetPort", port);
                }
            }
        }
        child(root, "status");
        default(child(root, "status"), "loadBalancer", json!({}));
    }

    fn validate(&self, o: &Value, errs: &mut Vec<FieldError>) {
        validate_service(o, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        if new.pointer("/spec/type") != Some(&Value::String("ExternalName".into())) {
            immutable("spec.clusterIP", old, new, errs);
        }
    }

    fn name_rule(&self) -> NameRule {
        NameRule::Dns1035Label
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            (
                "Type",
                "string",
                0,
                "type determines how the Service is exposed.",
            ),
            (
                "Cluster-IP",
                "string",
                0,
                "clusterIP is the IP address of the service.",
            ),
            (
                "External-IP",
                "string",
                0,
                "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
            ),
            (
                "Port(s)",
                "string",
                0,
                "The list of ports that are exposed by this service.",
            ),
            AGE,
            (
                "Selector",
                "string",
                1,
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let name = json!(s(o, "/metadata/name"));
        let sel: Vec<String> = o
            .pointer("/spec/selector")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        vec![
            name,
            json!(s(o, "/spec/type")),
            or_none(s(o, "/spec/clusterIP").to_string()),
            json!(external_ip(o)),
            json!(service_ports(o)),
            age(o),
            or_none(sel.join(",")),
        ]
    }
}

fn validate_service(o: &Value, errs: &mut Vec<FieldError>) {
    let spec = &o["spec"];
    const TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    if !TYPES.contains(&ty) {
        errs.push(FieldError::not_supported("spec.type", &spec["type"], TYPES));
    }
    if ty == "ExternalName" {
        if spec["externalName"].as_str().is_none_or(str::is_empty) {
            errs.push(FieldError::required("spec.externalName"));
        }
        return;
    }
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    let headless = spec["clusterIP"] == "None";
    if ports.is_empty() && !headless {
        errs.push(FieldError::required("spec.ports"));
    }
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = format!("spec.ports[{i}]");
        if ports.len() > 1 && p["name"].as_str().is_none_or(str::is_empty) {
            errs.push(FieldError::required(format!("{pp}.name")));
        }
        if let Some(n) = p["name"].as_str()
            && !n.is_empty()
            && !seen.insert(n.to_string())
        {
            errs.push(FieldError::duplicate(format!("{pp}.name"), &p["name"]));
        }
        if !port_in_range(&p["port"]) {
            errs.push(FieldError::invalid(
                format!("{pp}.port"),
                &p["port"],
                "must be between 1 and 65535, inclusive",
            ));
        }
        if let Some(proto) = p["protocol"].as_str()
            && !PROTOCOLS.contains(&proto)
        {
            errs.push(FieldError::not_supported(
                format!("{pp}.protocol"),
                &p["protocol"],
                PROTOCOLS,
            ));
        }
        if !p["nodePort"].is_null() && ty == "ClusterIP" {
            errs.push(FieldError::forbidden(
                format!("{pp}.nodePort"),
                "may not be used when `type` is 'ClusterIP'",
            ));
        }
    }
}
