//! A container's environment as the kubelet makes it: the Service link variables first, then
//! `envFrom` sources, then `env` entries in order (each may refer to earlier ones with `$(VAR)`),
//! with `valueFrom` resolved from the pod (fieldRef), its resources (resourceFieldRef), ConfigMaps
//! and Secrets. The lookups that need the API go through [`EnvSources`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, Service};

use skiff_k8s::qos::Resources;
use skiff_k8s::quantity;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvError {
    #[error("env {var}: {message}")]
    Invalid { var: String, message: String },
    #[error("{kind} {name:?} not found")]
    Missing { kind: &'static str, name: String },
    #[error("key {key:?} not found in {kind} {name:?}")]
    MissingKey {
        kind: &'static str,
        name: String,
        key: String,
    },
}

/// ConfigMaps and Secrets of the pod's namespace (already fetched), by name: key → value.
#[derive(Debug, Default)]
pub struct EnvSources {
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// Services for the link variables (empty when enableServiceLinks is false, apart from the
    /// `kubernetes` Service of `default`).
    pub services: Vec<Service>,
}

/// What the downward API needs beyond the pod object.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub host_ip: String,
    pub pod_ip: String,
    pub node_cpus_milli: i128,
    pub node_memory_bytes: i128,
}

/// The ConfigMap and Secret names the container's environment refers to (to fetch first).
pub fn referenced(c: &Container) -> (Vec<String>, Vec<String>) {
    let mut cms = vec![];
    let mut secrets = vec![];
    for from in c.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            secrets.push(r.name.clone());
        }
    }
    for e in c.env.iter().flatten() {
        if let Some(vf) = &e.value_from {
            if let Some(r) = &vf.config_map_key_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &vf.secret_key_ref {
                secrets.push(r.name.clone());
            }
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

/// Expands `$(VAR)` references from `env` (`$$` is a literal `$`; unknown references stay).
pub fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The Service link variables of one Service (`FOO_SERVICE_HOST`, `FOO_PORT_80_TCP_ADDR`, …).
fn service_vars(svc: &Service, out: &mut Vec<(String, String)>) {
    let Some(spec) = &svc.spec else { return };
    let Some(ip) = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| *ip != "None" && !ip.is_empty())
    else {
        return;
    };
    let name = svc
        .metadata
        .name
        .clone()
        .unwrap_or_default()
        .to_uppercase()
        .replace('-', "_");
    let ports = spec.ports.clone().unwrap_or_default();
    let Some(first) = ports.first() else { return };
    out.push((format!("{name}_SERVICE_HOST"), ip.to_string()));
    out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
    for p in &ports {
        if let Some(pn) = &p.name {
            out.push((
                format!(
                    "{name}_SERVICE_PORT_{}",
                    pn.to_uppercase().replace('-', "_")
                ),
                p.port.to_string(),
            ));
        }
    }
    let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
        p.protocol.clone().unwrap_or_else(|| "TCP".to_string())
    };
    out.push((
        format!("{name}_PORT"),
        format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port),
    ));
    for p in &ports {
        let proto = proto(p);
        let prefix = format!("{name}_PORT_{}_{}", p.port, proto.to_uppercase());
        out.push((
            prefix.clone(),
            format!("{}://{ip}:{}", proto.to_lowercase(), p.port),
        ));
        out.push((format!("{prefix}_PROTO"), proto.to_lowercase()));
        out.push((format!("{prefix}_PORT"), p.port.to_string()));
        out.push((format!("{prefix}_ADDR"), ip.to_string()));
    }
}

/// The value of a downward API `fieldRef` path.
pub fn field_value(pod: &Pod, node: &NodeView, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let from_map = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default()
    };
    let keyed = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['").and_then(|r| r.strip_suffix("']")))
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => node.host_ip.clone(),
        "status.podIP" | "status.podIPs" => node.pod_ip.clone(),
        _ => {
            if let Some(k) = keyed("metadata.labels") {
                from_map(&meta.labels, &k)
            } else if let Some(k) = keyed("metadata.annotations") {
                from_map(&meta.annotations, &k)
            } else {
                return Err(format!("unsupported fieldRef {path:?}"));
            }
        }
    })
}

/// The value of a downward API `resourceFieldRef` for container `c`.
pub fn resource_value(
    c: &Container,
    node: &NodeView,
    resource: &str,
    divisor: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
) -> Result<String, String> {
    let r = Resources::of(c);
    let divisor_milli = match divisor {
        Some(d) => quantity::milli(d).map_err(|e| e.to_string())?,
        None => 1000,
    };
    if divisor_milli <= 0 {
        return Err("divisor must be positive".to_string());
    }
    // Unset limits are the node's allocatable, as the kubelet reports them.
    let milli = match resource {
        "limits.cpu" => r.cpu_limit.unwrap_or(node.node_cpus_milli),
        "requests.cpu" => r.cpu_request.unwrap_or(0),
        "limits.memory" => r.memory_limit.unwrap_or(node.node_memory_bytes) * 1000,
        "requests.memory" => r.memory_request.unwrap_or(0) * 1000,
        other => return Err(format!("unsupported resource {other:?}")),
    };
    Ok(quantity::ceil_div(milli, divisor_milli).to_string())
}

/// The container's environment, in order, without the image's (the OCI config puts the image's
/// first and lets these override it).
pub fn container_env(
    pod: &Pod,
    c: &Container,
    node: &NodeView,
    sources: &EnvSources,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut ordered: Vec<(String, String)> = vec![];
    for svc in &sources.services {
        service_vars(svc, &mut ordered);
    }
    let mut env: BTreeMap<String, String> = ordered.iter().cloned().collect();
    let mut set = |env: &mut BTreeMap<String, String>, k: String, v: String| {
        env.insert(k.clone(), v.clone());
        ordered.retain(|(key, _)| *key != k);
        ordered.push((k, v));
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (map, optional, kind, name) = if let Some(r) = &from.config_map_ref {
            (
                sources.config_maps.get(&r.name),
                r.optional.unwrap_or(false),
                "ConfigMap",
                r.name.clone(),
            )
        } else if let Some(r) = &from.secret_ref {
            (
                sources.secrets.get(&r.name),
                r.optional.unwrap_or(false),
                "Secret",
                r.name.clone(),
            )
        } else {
            continue;
        };
        match map {
            Some(m) => {
                for (k, v) in m {
                    set(&mut env, format!("{prefix}{k}"), v.clone());
                }
            }
            None if optional => {}
            None => return Err(EnvError::Missing { kind, name }),
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(vf) = &e.value_from {
            let invalid = |message: String| EnvError::Invalid {
                var: e.name.clone(),
                message,
            };
            let keyed = |maps: &BTreeMap<String, BTreeMap<String, String>>,
                         kind: &'static str,
                         name: &str,
                         key: &str,
                         optional: bool| {
                match maps.get(name) {
                    None if optional => Ok(None),
                    None => Err(EnvError::Missing {
                        kind,
                        name: name.to_string(),
                    }),
                    Some(m) => match m.get(key) {
                        Some(v) => Ok(Some(v.clone())),
                        None if optional => Ok(None),
                        None => Err(EnvError::MissingKey {
                            kind,
                            name: name.to_string(),
                            key: key.to_string(),
                        }),
                    },
                }
            };
            if let Some(f) = &vf.field_ref {
                Some(field_value(pod, node, &f.field_path).map_err(invalid)?)
            } else if let Some(r) = &vf.resource_field_ref {
                Some(resource_value(c, node, &r.resource, r.divisor.as_ref()).map_err(invalid)?)
            } else if let Some(r) = &vf.config_map_key_ref {
                keyed(
                    &sources.config_maps,
                    "ConfigMap",
                    &r.name,
                    &r.key,
                    r.optional.unwrap_or(false),
                )?
            } else if let Some(r) = &vf.secret_key_ref {
                keyed(
                    &sources.secrets,
                    "Secret",
                    &r.name,
                    &r.key,
                    r.optional.unwrap_or(false),
                )?
            } else {
                None
            }
        } else {
            Some(expand(e.value.as_deref().unwrap_or(""), &env))
        };
        if let Some(v) = value {
            set(&mut env, e.name.clone(), v);
        }
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_rules() {
        let env = BTreeMap::from([("A".to_string(), "x".to_string())]);
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
        assert_eq!(expand("$(A", &env), "$(A");
    }

    #[test]
    fn env_from_pod_and_sources() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{
                "name": "c",
                "resources": {"limits": {"memory": "64Mi"}},
                "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
                "env": [
                    {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "GREETING", "value": "hi $(NAME) $(CM_k)"},
                    {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": true}}}
                ]
            }]}
        }))
        .unwrap();
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let node = NodeView {
            host_ip: "10.0.0.1".into(),
            pod_ip: "10.0.0.1".into(),
            node_cpus_milli: 2000,
            node_memory_bytes: 1 << 30,
        };
        let mut sources = EnvSources::default();
        sources.config_maps.insert(
            "cm".into(),
            BTreeMap::from([("k".to_string(), "v".to_string())]),
        );
        sources.services.push(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "my-svc"},
                "spec": {"clusterIP": "10.96.0.5", "ports": [{"port": 80, "protocol": "TCP"}]}
            }))
            .unwrap(),
        );
        let env: BTreeMap<_, _> = container_env(&pod, c, &node, &sources)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(env["NAME"], "p");
        assert_eq!(env["APP"], "web");
        assert_eq!(env["MEM"], "64");
        assert_eq!(env["GREETING"], "hi p v");
        assert_eq!(env["MY_SVC_SERVICE_HOST"], "10.96.0.5");
        assert_eq!(env["MY_SVC_PORT_80_TCP"], "tcp://10.96.0.5:80");
        assert!(!env.contains_key("OPT"));
        let (cms, secrets) = referenced(c);
        assert_eq!(cms, vec!["cm"]);
        assert_eq!(secrets, vec!["nope"]);
        sources.config_maps.clear();
        assert_eq!(
            container_env(&pod, c, &node, &sources).unwrap_err(),
            EnvError::Missing {
                kind: "ConfigMap",
                name: "cm".into()
            }
        );
    }
}
