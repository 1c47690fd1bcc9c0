//! Defaulting, as the real API server defaults the built-in types on create and update.

use base64::Engine;
use k8s_openapi::api::core::v1::PodSpec;
use serde_json::{Map, Value, json};
use skiff_k8s::qos::qos_class;

fn obj(v: &mut Value) -> Option<&mut Map<String, Value>> {
    v.as_object_mut()
}

/// Sets `key` to `value` when absent (or null).
fn default(m: &mut Map<String, Value>, key: &str, value: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_string(), value);
    }
}

fn child<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
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

fn template(spec: &mut Map<String, Value>) {
    if let Some(t) = spec.get_mut("template").and_then(Value::as_object_mut) {
        pod_spec(child(t, "spec"));
    }
}

/// Applies the defaults of `kind` (in `group`) to a whole object.
pub fn apply(group: &str, kind: &str, o: &mut Value) {
    let Some(root) = obj(o) else { return };
    match (group, kind) {
        ("", "Pod") => {
            let spec = child(root, "spec");
            pod_spec(spec);
            if let Some(sa) = spec.get("serviceAccount").cloned() {
                default(spec, "serviceAccountName", sa);
            }
            default(spec, "serviceAccountName", json!("default"));
            let sa = spec["serviceAccountName"].clone();
            default(spec, "serviceAccount", sa);
            default(spec, "enableServiceLinks", json!(true));
            default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
            default(spec, "priority", json!(0));
            let tolerations = spec
                .entry("tolerations")
                .or_insert_with(|| json!([]))
                .as_array_mut();
            if let Some(t) = tolerations {
                for key in [
                    "node.kubernetes.io/not-ready",
                    "node.kubernetes.io/unreachable",
                ] {
                    if !t.iter().any(|x| x["key"] == key) {
                        t.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
                    }
                }
            }
            let qos = serde_json::from_value::<PodSpec>(Value::Object(spec.clone()))
                .map(|s| qos_class(&s).as_str());
            let status = child(root, "status");
            default(status, "phase", json!("Pending"));
            if let Ok(qos) = qos {
                default(status, "qosClass", json!(qos));
            }
        }
        ("", "Service") => {
            let spec = child(root, "spec");
            default(spec, "type", json!("ClusterIP"));
            let ty = spec["type"].as_str().unwrap_or_default().to_string();
            if ty != "ExternalName" {
                default(spec, "sessionAffinity", json!("None"));
                default(spec, "ipFamilies", json!(["IPv4"]));
                default(spec, "ipFamilyPolicy", json!("SingleStack"));
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
        ("", "Namespace") => {
            let name = root
                .get("metadata")
                .and_then(|m| m.get("name"))
                .cloned()
                .unwrap_or(Value::Null);
            let labels = child(child(root, "metadata"), "labels");
            labels.insert("kubernetes.io/metadata.name".into(), name);
            default(child(root, "spec"), "finalizers", json!(["kubernetes"]));
            default(child(root, "status"), "phase", json!("Active"));
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            default(root, "preemptionPolicy", json!("PreemptLowerPriority"));
        }
        ("", "Secret") => {
            default(root, "type", json!("Opaque"));
            if let Some(Value::Object(sd)) = root.remove("stringData") {
                let data = child(root, "data");
                for (k, v) in sd {
                    let s = v.as_str().unwrap_or_default();
                    data.insert(
                        k,
                        json!(base64::engine::general_purpose::STANDARD.encode(s)),
                    );
                }
            }
        }
        ("apps", "Deployment") => {
            let spec = child(root, "spec");
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            let strategy = child(spec, "strategy");
            default(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                let ru = child(strategy, "rollingUpdate");
                default(ru, "maxUnavailable", json!("25%"));
                default(ru, "maxSurge", json!("25%"));
            }
            template(spec);
        }
        ("apps", "ReplicaSet") => {
            let spec = child(root, "spec");
            default(spec, "replicas", json!(1));
            template(spec);
        }
        ("apps", "DaemonSet") => {
            let spec = child(root, "spec");
            default(spec, "revisionHistoryLimit", json!(10));
            let strategy = child(spec, "updateStrategy");
            default(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                let ru = child(strategy, "rollingUpdate");
                default(ru, "maxUnavailable", json!(1));
                default(ru, "maxSurge", json!(0));
            }
            template(spec);
        }
        ("batch", "Job") => {
            let uid = root
                .get("metadata")
                .and_then(|m| m.get("uid"))
                .cloned()
                .unwrap_or(Value::Null);
            let name = root
                .get("metadata")
                .and_then(|m| m.get("name"))
                .cloned()
                .unwrap_or(Value::Null);
            let spec = child(root, "spec");
            // Neither set: one pod to completion. Only parallelism: a work queue, no count.
            let unset = |k: &str| spec.get(k).is_none_or(Value::is_null);
            if unset("completions") && unset("parallelism") {
                spec.insert("completions".into(), json!(1));
            }
            default(spec, "parallelism", json!(1));
            default(spec, "backoffLimit", json!(6));
            default(spec, "completionMode", json!("NonIndexed"));
            default(spec, "suspend", json!(false));
            default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
            let manual = spec
                .get("manualSelector")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if !manual && !uid.is_null() {
                let labels = json!({
                    "batch.kubernetes.io/controller-uid": uid,
                    "batch.kubernetes.io/job-name": name,
                    "controller-uid": uid,
                    "job-name": name,
                });
                default(
                    spec,
                    "selector",
                    json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
                );
                let tmeta = child(child(spec, "template"), "metadata");
                let tl = child(tmeta, "labels");
                for (k, v) in labels.as_object().expect("object literal") {
                    tl.entry(k.clone()).or_insert(v.clone());
                }
            }
            template(spec);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_defaults() {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}, {"name": "d", "image": "busybox"}]}});
        apply("", "Pod", &mut p);
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
            apply("batch", "Job", &mut j);
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
        apply("", "Service", &mut s);
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        let mut sec = json!({"stringData": {"a": "hi"}});
        apply("", "Secret", &mut sec);
        assert_eq!(sec["data"]["a"], "aGk=");
        assert_eq!(sec["type"], "Opaque");
    }
}
