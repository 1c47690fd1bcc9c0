//! Defaulting, as the real API server defaults the built-in types on create and update: what
//! each resource defaults is its strategy's (`registry/`); here the parts several share.

use serde_json::{Map, Value, json};

use crate::resources::ResourceInfo;

fn obj(v: &mut Value) -> Option<&mut Map<String, Value>> {
    v.as_object_mut()
}

/// Sets `key` to `value` when absent (or null).
pub(crate) fn default(m: &mut Map<String, Value>, key: &str, value: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_string(), value);
    }
}

pub(crate) fn child<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    if !m.get(key).is_some_and(Value::is_object) {
        m.insert(key.to_string(), json!({}));
    }
    m.get_mut(key)
        .and_then(Value::as_object_mut)
        .expect("just inserted an object")
}

fn default_container(c: &mut Value) {
    let Some(c) = obj(c) else { return };
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    // The tag is what follows the last ':' after the last '/' (a digest pins it too).
    let last = image.rsplit('/').next().unwrap_or(image);
    let tag = if image.contains('@') {
        Some("digest")
    } else {
        last.split_once(':').map(|(_, t)| t)
    };
    let policy = match tag {
        None | Some("latest") => "Always",
        _ => "IfNotPresent",
    };
    default(c, "imagePullPolicy", json!(policy));
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    default(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            default(p, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            default(p, "timeoutSeconds", json!(1));
            default(p, "periodSeconds", json!(10));
            default(p, "successThreshold", json!(1));
            default(p, "failureThreshold", json!(3));
            if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                default(h, "path", json!("/"));
                default(h, "scheme", json!("HTTP"));
            }
        }
    }
}

/// Defaults of a pod spec (also used for workload templates).
pub fn pod_spec(spec: &mut Map<String, Value>) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    for key in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(key).and_then(Value::as_array_mut) {
            cs.iter_mut().for_each(default_container);
        }
    }
    if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in vols.iter_mut().filter_map(Value::as_object_mut) {
            for (src, field) in [("configMap", "defaultMode"), ("secret", "defaultMode")] {
                if let Some(s) = v.get_mut(src).and_then(Value::as_object_mut) {
                    default(s, field, json!(420));
                }
            }
            if let Some(s) = v.get_mut("hostPath").and_then(Value::as_object_mut) {
                default(s, "type", json!(""));
            }
        }
    }
}

pub(crate) fn template(spec: &mut Map<String, Value>) {
    if let Some(t) = spec.get_mut("template").and_then(Value::as_object_mut) {
        pod_spec(child(t, "spec"));
    }
}

/// Applies the defaults of resource `r` to a whole object.
pub fn apply(r: &ResourceInfo, o: &mut Value) {
    if let Some(root) = obj(o) {
        r.strategy.default(root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn pod_defaults() {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}, {"name": "d", "image": "busybox"}]}});
        apply(find("", "v1", "pods").unwrap(), &mut p);
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(
            p["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(p["spec"]["containers"][1]["imagePullPolicy"], "Always");
        assert_eq!(p["spec"]["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(p["status"]["phase"], "Pending");
        assert_eq!(p["status"]["qosClass"], "BestEffort");
        assert_eq!(p["spec"]["serviceAccountName"], "default");
    }

    #[test]
    fn job_counts_default_as_kube_does() {
        let counts = |spec: Value| {
            let mut j = json!({"metadata": {"name": "j"}, "spec": spec});
            apply(find("batch", "v1", "jobs").unwrap(), &mut j);
            (
                j["spec"]["completions"].clone(),
                j["spec"]["parallelism"].clone(),
            )
        };
        assert_eq!(counts(json!({})), (json!(1), json!(1)));
        assert_eq!(counts(json!({"parallelism": 3})), (Value::Null, json!(3)));
        assert_eq!(counts(json!({"completions": 5})), (json!(5), json!(1)));
    }

    #[test]
    fn service_and_secret_defaults() {
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        apply(find("", "v1", "services").unwrap(), &mut s);
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        let mut sec = json!({"stringData": {"a": "hi"}});
        apply(find("", "v1", "secrets").unwrap(), &mut sec);
        assert_eq!(sec["data"]["a"], "aGk=");
        assert_eq!(sec["type"], "Opaque");
    }
}
