//! Pod (`v1`, `pods`).

use k8s_openapi::api::core::v1::PodSpec;
use skiff_k8s::qos::qos_class;

use super::prelude::*;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Pod",
    plural: "pods",
    singular: "pod",
    namespaced: true,
    short_names: &["po"],
    categories: &["all"],
    subresources: &[
        "status",
        "binding",
        "eviction",
        "log",
        "exec",
        "attach",
        "portforward",
        "ephemeralcontainers",
    ],
    storage: "pods",
    schema: "io.k8s.api.core.v1.Pod",
    strategy: &PodStrategy,
};

struct PodStrategy;

impl Strategy for PodStrategy {
    /// The Priority admission (priority and preemption policy from the PriorityClass) and the
    /// ServiceAccount admission (the token volume).
    fn admit_create<'a>(
        &'a self,
        api: &'a ApiServer,
        o: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            api.admit_pod_priority(o).await?;
            crate::auth::service_account_admission::admit_pod(api, o).await
        })
    }

    fn admit_update<'a>(
        &'a self,
        _api: &'a ApiServer,
        cur: &'a Value,
        new: &'a mut Value,
    ) -> BoxFuture<'a, ApiResult<()>> {
        crate::priority::keep_pod_priority(cur, new);
        Box::pin(std::future::ready(Ok(())))
    }

    fn graceful_delete(
        &self,
        cur: &Value,
        requested: Option<i64>,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Grace {
        pod_grace(cur, requested, at)
    }

    fn holds_deletion(&self, o: &Value) -> bool {
        pod_awaits_kubelet(o)
    }

    fn default(&self, root: &mut Map<String, Value>) {
        let spec = child(root, "spec");
        default_pod_spec(spec);
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

    fn validate(&self, o: &Value, errs: &mut Vec<FieldError>) {
        pod_spec("spec", &o["spec"], errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        // Only images, activeDeadlineSeconds and added tolerations may change.
        let strip = |v: &Value| {
            let mut s = v["spec"].clone();
            for key in ["containers", "initContainers"] {
                if let Some(cs) = s.get_mut(key).and_then(Value::as_array_mut) {
                    for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                        c.remove("image");
                    }
                }
            }
            if let Some(m) = s.as_object_mut() {
                m.remove("activeDeadlineSeconds");
                m.remove("tolerations");
                // Binding sets the node once; it may go from empty to set.
                m.remove("nodeName");
            }
            s
        };
        if strip(old) != strip(new) {
            errs.push(FieldError::forbidden(
                "spec",
                "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
            ));
        }
        let (on, nn) = (old.pointer("/spec/nodeName"), new.pointer("/spec/nodeName"));
        if on.is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty())) && on != nn {
            errs.push(FieldError::invalid(
                "spec.nodeName",
                nn.unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
    }

    fn subresource_field(&self, sub: &str) -> Option<&'static str> {
        (sub == "ephemeralcontainers").then_some("/spec/ephemeralContainers")
    }

    /// Ephemeral containers are only added: the ones there stay as they are.
    fn validate_subresource_update(
        &self,
        _sub: &str,
        old: &Value,
        new: &Value,
        errs: &mut Vec<FieldError>,
    ) {
        let list = |o: &Value| {
            o["spec"]["ephemeralContainers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        let now = list(new);
        for (i, was) in list(old).iter().enumerate() {
            match now.iter().find(|c| c["name"] == was["name"]) {
                Some(c) if c == was => {}
                Some(_) => errs.push(FieldError::forbidden(
                    format!("spec.ephemeralContainers[{i}]"),
                    "existing ephemeral containers may not be changed",
                )),
                None => errs.push(FieldError::forbidden(
                    "spec.ephemeralContainers",
                    format!(
                        "existing ephemeral containers {} may not be removed",
                        was["name"]
                    ),
                )),
            }
        }
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ]
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            (
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            (
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            (
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            AGE,
            (
                "IP",
                "string",
                1,
                "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
            ),
            (
                "Node",
                "string",
                1,
                "NodeName is a request to schedule this pod onto a specific node.",
            ),
            (
                "Nominated Node",
                "string",
                1,
                "nominatedNodeName is set when this pod preempts other pods on the node.",
            ),
            (
                "Readiness Gates",
                "string",
                1,
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let name = json!(s(o, "/metadata/name"));
        let total = arr(o, "/spec/containers").count();
        let ready = arr(o, "/status/containerStatuses")
            .filter(|c| c["ready"] == true)
            .count();
        let gates: Vec<&Value> = arr(o, "/spec/readinessGates").collect();
        let gates_cell = if gates.is_empty() {
            "<none>".to_string()
        } else {
            let ok = gates
                .iter()
                .filter(|g| {
                    arr(o, "/status/conditions")
                        .any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
                })
                .count();
            format!("{ok}/{}", gates.len())
        };
        vec![
            name,
            json!(format!("{ready}/{total}")),
            json!(pod_status(o)),
            json!(restarts(o)),
            age(o),
            or_none(s(o, "/status/podIP").to_string()),
            or_none(s(o, "/spec/nodeName").to_string()),
            or_none(s(o, "/status/nominatedNodeName").to_string()),
            json!(gates_cell),
        ]
    }
}

fn pod_status(o: &Value) -> String {
    if o.pointer("/metadata/deletionTimestamp").is_some() {
        return "Terminating".into();
    }
    let mut reason = s(o, "/status/reason").to_string();
    if reason.is_empty() {
        reason = s(o, "/status/phase").to_string();
    }
    for (idx, c) in arr(o, "/status/initContainerStatuses").enumerate() {
        let t = c.pointer("/state/terminated");
        if t.is_some_and(|t| t["exitCode"] == 0) {
            continue;
        }
        if let Some(w) = c.pointer("/state/waiting/reason").and_then(Value::as_str)
            && w != "PodInitializing"
        {
            return format!("Init:{w}");
        }
        if let Some(t) = t {
            let r = t["reason"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("ExitCode:{}", t["exitCode"]));
            return format!("Init:{r}");
        }
        let total = arr(o, "/spec/initContainers").count();
        return format!("Init:{idx}/{total}");
    }
    for c in arr(o, "/status/containerStatuses")
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        if let Some(w) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = w.to_string();
        } else if let Some(t) = c.pointer("/state/terminated") {
            reason = t["reason"].as_str().map(str::to_string).unwrap_or_else(|| {
                if let Some(sig) = t["signal"].as_i64().filter(|s| *s != 0) {
                    format!("Signal:{sig}")
                } else {
                    format!("ExitCode:{}", t["exitCode"])
                }
            });
        }
    }
    reason
}

fn restarts(o: &Value) -> String {
    let mut n = 0;
    let mut last: Option<chrono::DateTime<chrono::FixedOffset>> = None;
    for c in arr(o, "/status/containerStatuses") {
        n += c["restartCount"].as_i64().unwrap_or(0);
        if let Some(t) = c
            .pointer("/lastState/terminated/finishedAt")
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            && last.is_none_or(|l| t > l)
        {
            last = Some(t);
        }
    }
    match last {
        Some(t) if n > 0 => format!(
            "{n} ({} ago)",
            human_duration((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
        ),
        _ => n.to_string(),
    }
}

pub fn pod_on_node(pod: &Value) -> bool {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty())
}

/// A terminating pod on a node stays until its kubelet deletes it with grace 0.
pub fn pod_awaits_kubelet(pod: &Value) -> bool {
    pod_on_node(pod)
        && pod
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .is_some_and(|g| g > 0)
}

/// The pod strategy's graceful deletion: a pod bound to a node that has not finished terminates
/// for its grace period; once terminating only a shorter one may be asked for.
fn pod_grace(pod: &Value, requested: Option<i64>, at: chrono::DateTime<chrono::Utc>) -> Grace {
    // Negative grace periods mean 1 s, as in the real registry.
    let requested = requested.map(|g| if g < 0 { 1 } else { g });
    let marked = pod
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok());
    if let Some(marked) = marked {
        let current = pod
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if current == 0 {
            return Grace::NotGraceful;
        }
        // Only a shorter grace period may be asked for once terminating.
        return match requested {
            Some(g) if g < current => Grace::Period {
                deletion_timestamp: marked - chrono::Duration::seconds(current)
                    + chrono::Duration::seconds(g),
                seconds: g,
            },
            _ => Grace::Pending,
        };
    }
    let terminal = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    let seconds = if !pod_on_node(pod) || terminal {
        0
    } else {
        requested.unwrap_or_else(|| {
            pod.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30)
        })
    };
    Grace::Period {
        deletion_timestamp: at + chrono::Duration::seconds(seconds),
        seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_on_nodes_terminate_gracefully_and_only_shorten() {
        let at: chrono::DateTime<chrono::Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let pod = |extra: Value| {
            let base = json!({"spec": {"nodeName": "n", "terminationGracePeriodSeconds": 30},
                "status": {"phase": "Running"}, "metadata": {}});
            crate::patch::merge_patch(&base, &extra).unwrap()
        };
        let period = |g: &Grace| match g {
            Grace::Period { seconds, .. } => *seconds,
            other => panic!("{other:?}"),
        };
        assert_eq!(period(&pod_grace(&pod(json!({})), None, at)), 30);
        assert_eq!(period(&pod_grace(&pod(json!({})), Some(-3), at)), 1);
        // Unbound or finished pods go at once.
        assert_eq!(
            period(&pod_grace(
                &pod(json!({"spec": {"nodeName": null}})),
                None,
                at
            )),
            0
        );
        assert_eq!(
            period(&pod_grace(
                &pod(json!({"status": {"phase": "Succeeded"}})),
                None,
                at
            )),
            0
        );
        let terminating = pod(
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:30Z",
            "deletionGracePeriodSeconds": 30}}),
        );
        assert_eq!(pod_grace(&terminating, None, at), Grace::Pending);
        assert_eq!(pod_grace(&terminating, Some(40), at), Grace::Pending);
        assert_eq!(
            pod_grace(&terminating, Some(0), at),
            Grace::Period {
                deletion_timestamp: at,
                seconds: 0
            }
        );
        let held = pod(
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z",
            "deletionGracePeriodSeconds": 0, "finalizers": ["x"]}}),
        );
        assert_eq!(pod_grace(&held, Some(0), at), Grace::NotGraceful);
    }
}
