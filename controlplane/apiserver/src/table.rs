//! Server-side printing: `meta.k8s.io/v1` Table responses with the columns `kubectl get` shows
//! against a real cluster (priority 1 columns appear with `-o wide`).

use serde_json::{Value, json};

use super::resources::ResourceInfo;
use super::selectors::selector_string;

/// Kubernetes' short human duration (`5s`, `3m2s`, `4h`, `12d`, `2y3d`).
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if h < 24 * 365 * 8 {
        let y = d / 365;
        if d % 365 == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{}d", d % 365)
        }
    } else {
        format!("{}y", d / 365)
    }
}

fn age_of(ts: Option<&Value>) -> String {
    match ts
        .and_then(Value::as_str)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    {
        Some(t) => {
            human_duration((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
        }
        None => "<unknown>".into(),
    }
}

fn age(o: &Value) -> Value {
    json!(age_of(o.pointer("/metadata/creationTimestamp")))
}

fn s<'a>(o: &'a Value, ptr: &str) -> &'a str {
    o.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn i(o: &Value, ptr: &str) -> i64 {
    o.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(v: String) -> Value {
    if v.is_empty() {
        json!("<none>")
    } else {
        json!(v)
    }
}

fn arr<'a>(o: &'a Value, ptr: &str) -> impl Iterator<Item = &'a Value> {
    o.pointer(ptr)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// (name, type, priority, description)
type Col = (&'static str, &'static str, u8, &'static str);

const NAME: Col = (
    "Name",
    "string",
    0,
    "Name must be unique within a namespace.",
);
const AGE: Col = (
    "Age",
    "string",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

fn columns(kind: &str, group: &str) -> Vec<Col> {
    match (group, kind) {
        ("", "Pod") => vec![
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
        ],
        ("", "Node") => vec![
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
        ],
        ("", "Service") => vec![
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
        ],
        ("", "Namespace") => vec![
            NAME,
            ("Status", "string", 0, "The status of the namespace"),
            AGE,
        ],
        ("", "Endpoints") => vec![
            NAME,
            (
                "Endpoints",
                "string",
                0,
                "Endpoints is the list of endpoints in the service.",
            ),
            AGE,
        ],
        ("", "ConfigMap") => vec![
            NAME,
            ("Data", "string", 0, "Data contains the configuration data."),
            AGE,
        ],
        ("", "Secret") => vec![
            NAME,
            ("Type", "string", 0, "The type of the secret"),
            ("Data", "string", 0, "The number of data entries"),
            AGE,
        ],
        ("", "ServiceAccount") => vec![
            NAME,
            (
                "Secrets",
                "string",
                0,
                "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
            ),
            AGE,
        ],
        ("", "Event") => vec![
            (
                "Last Seen",
                "string",
                0,
                "Time when this Event was last observed.",
            ),
            (
                "Type",
                "string",
                0,
                "Type of this event (Normal, Warning), new types could be added in the future.",
            ),
            (
                "Reason",
                "string",
                0,
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            (
                "Object",
                "string",
                0,
                "The object that this event is about.",
            ),
            (
                "Subobject",
                "string",
                1,
                "The subobject that this event is about.",
            ),
            ("Source", "string", 1, "The component reporting this event."),
            (
                "Message",
                "string",
                0,
                "A human-readable description of the status of this operation.",
            ),
            (
                "First Seen",
                "string",
                1,
                "The time at which the event was first recorded.",
            ),
            (
                "Count",
                "string",
                1,
                "The number of times this event has occurred.",
            ),
            ("Name", "string", 1, "Name of the event."),
        ],
        ("events.k8s.io", "Event") => vec![
            (
                "Last Seen",
                "string",
                0,
                "Time when this Event was last observed.",
            ),
            ("Type", "string", 0, "Type of this event."),
            ("Reason", "string", 0, "Why the action was taken."),
            ("Object", "string", 0, "The object this Event is about."),
            (
                "Message",
                "string",
                0,
                "A human-readable description of the status of this operation.",
            ),
        ],
        ("apps", "Deployment") => vec![
            NAME,
            ("Ready", "string", 0, "Number of the pod with ready state"),
            (
                "Up-to-date",
                "string",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            (
                "Available",
                "string",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            AGE,
            (
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ),
            (
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ),
            (
                "Selector",
                "string",
                1,
                "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
            ),
        ],
        ("apps", "ReplicaSet") => vec![
            NAME,
            (
                "Desired",
                "integer",
                0,
                "Replicas is the number of desired replicas.",
            ),
            (
                "Current",
                "integer",
                0,
                "Replicas is the most recently observed number of replicas.",
            ),
            (
                "Ready",
                "integer",
                0,
                "The number of ready replicas for this replica set.",
            ),
            AGE,
            (
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ),
            (
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ),
            (
                "Selector",
                "string",
                1,
                "Selector is a label query over pods that should match the replica count.",
            ),
        ],
        ("apps", "DaemonSet") => vec![
            NAME,
            (
                "Desired",
                "integer",
                0,
                "The total number of nodes that should be running the daemon pod.",
            ),
            (
                "Current",
                "integer",
                0,
                "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
            ),
            (
                "Ready",
                "integer",
                0,
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
            ),
            (
                "Up-to-date",
                "integer",
                0,
                "The total number of nodes that are running updated daemon pod",
            ),
            (
                "Available",
                "integer",
                0,
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
            ),
            (
                "Node Selector",
                "string",
                0,
                "NodeSelector is a selector which must be true for the pod to fit on a node.",
            ),
            AGE,
            (
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ),
            (
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ),
            (
                "Selector",
                "string",
                1,
                "A label query over pods that are managed by the daemon set.",
            ),
        ],
        ("apps", "ControllerRevision") => vec![
            NAME,
            ("Controller", "string", 0, "Controller of the object"),
            (
                "Revision",
                "string",
                0,
                "Revision indicates the revision of the state represented by Data.",
            ),
            AGE,
        ],
        ("batch", "Job") => vec![
            NAME,
            ("Status", "string", 0, "Status of the job."),
            (
                "Completions",
                "string",
                0,
                "The desired number of successfully finished pods the job should be run with.",
            ),
            (
                "Duration",
                "string",
                0,
                "Time required to complete the job.",
            ),
            AGE,
            (
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ),
            (
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ),
            (
                "Selector",
                "string",
                1,
                "A label query over pods that should match the pod count.",
            ),
        ],
        ("scheduling.k8s.io", "PriorityClass") => vec![
            NAME,
            (
                "Value",
                "integer",
                0,
                "value represents the integer value of this priority class. This is the actual priority that pods receive when they have the name of this class in their pod spec.",
            ),
            (
                "Global-Default",
                "boolean",
                0,
                "globalDefault specifies whether this PriorityClass should be considered as the default priority for pods that do not have any priority class. Only one PriorityClass can be marked as `globalDefault`. However, if more than one PriorityClasses exists with their `globalDefault` field set to true, the smallest value of such global default PriorityClasses will be used as the default priority.",
            ),
            AGE,
            (
                "PreemptionPolicy",
                "string",
                0,
                "preemptionPolicy is the Policy for preempting pods with lower priority. One of Never, PreemptLowerPriority. Defaults to PreemptLowerPriority if unset.",
            ),
        ],
        ("coordination.k8s.io", "Lease") => vec![
            NAME,
            ("Holder", "string", 0, "The holder of the lease."),
            AGE,
        ],
        ("discovery.k8s.io", "EndpointSlice") => vec![
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
        ],
        _ => vec![NAME, AGE],
    }
}

fn template_cells(o: &Value) -> [Value; 3] {
    let cs: Vec<&Value> = arr(o, "/spec/template/spec/containers").collect();
    let names: Vec<&str> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, "/image")).collect();
    let sel = o
        .pointer("/spec/selector")
        .map(selector_string)
        .unwrap_or_default();
    [
        json!(names.join(",")),
        json!(images.join(",")),
        or_none(sel),
    ]
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

fn service_ports(o: &Value) -> String {
    let ps: Vec<String> = arr(o, "/spec/ports")
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(np) => format!("{}:{np}/{proto}", p["port"]),
                None => format!("{}/{proto}", p["port"]),
            }
        })
        .collect();
    if ps.is_empty() {
        "<none>".into()
    } else {
        ps.join(",")
    }
}

fn external_ip(o: &Value) -> String {
    let ty = s(o, "/spec/type");
    let ext: Vec<&str> = arr(o, "/spec/externalIPs")
        .filter_map(Value::as_str)
        .collect();
    match ty {
        "ExternalName" => s(o, "/spec/externalName").to_string(),
        "LoadBalancer" => {
            let mut ips: Vec<String> = arr(o, "/status/loadBalancer/ingress")
                .map(|i| {
                    i["ip"]
                        .as_str()
                        .or(i["hostname"].as_str())
                        .unwrap_or_default()
                        .to_string()
                })
                .collect();
            ips.extend(ext.iter().map(|s| s.to_string()));
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        _ if !ext.is_empty() => ext.join(","),
        _ => "<none>".into(),
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

fn event_time(o: &Value, ptrs: &[&str]) -> String {
    for p in ptrs {
        if let Some(v) = o.pointer(p).filter(|v| v.is_string()) {
            return age_of(Some(v));
        }
    }
    "<unknown>".into()
}

fn job_status(o: &Value) -> &'static str {
    let cond =
        |t: &str| arr(o, "/status/conditions").any(|c| c["type"] == t && c["status"] == "True");
    if cond("Complete") {
        "Complete"
    } else if cond("Failed") {
        "Failed"
    } else if o.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else if cond("Suspended") {
        "Suspended"
    } else if cond("FailureTarget") {
        "FailureTarget"
    } else if cond("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    }
}

fn job_duration(o: &Value) -> String {
    let parse = |p: &str| {
        o.pointer(p)
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    match (parse("/status/startTime"), parse("/status/completionTime")) {
        (None, _) => String::new(),
        (Some(st), None) => {
            human_duration((chrono::Utc::now() - st.with_timezone(&chrono::Utc)).num_seconds())
        }
        (Some(st), Some(ct)) => human_duration((ct - st).num_seconds()),
    }
}

/// The controlling owner as `kind.group/name` (kubectl's resource name form), or `<none>`.
fn controller_of(o: &Value) -> String {
    let Some(owner) = arr(o, "/metadata/ownerReferences").find(|r| r["controller"] == true) else {
        return "<none>".into();
    };
    let kind = s(owner, "/kind");
    let group = match s(owner, "/apiVersion").split_once('/') {
        Some((g, _)) => g,
        None => "",
    };
    let group_kind = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    if group_kind.is_empty() {
        return s(owner, "/name").to_string();
    }
    format!("{}/{}", group_kind.to_lowercase(), s(owner, "/name"))
}

fn cells(r: &ResourceInfo, o: &Value) -> Vec<Value> {
    let name = json!(s(o, "/metadata/name"));
    match (r.group, r.kind) {
        ("", "Pod") => {
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
        ("", "Node") => vec![
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
        ],
        ("", "Service") => {
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
        ("", "Namespace") => vec![name, json!(s(o, "/status/phase")), age(o)],
        ("", "Endpoints") => vec![name, json!(endpoints_summary(o)), age(o)],
        ("", "ConfigMap") => {
            let n = o["data"].as_object().map_or(0, |m| m.len())
                + o["binaryData"].as_object().map_or(0, |m| m.len());
            vec![name, json!(n), age(o)]
        }
        ("", "Secret") => vec![
            name,
            json!(s(o, "/type")),
            json!(o["data"].as_object().map_or(0, |m| m.len())),
            age(o),
        ],
        ("", "ServiceAccount") => vec![name, json!(arr(o, "/secrets").count()), age(o)],
        ("", "Event") => {
            let obj = format!(
                "{}/{}",
                s(o, "/involvedObject/kind").to_lowercase(),
                s(o, "/involvedObject/name")
            );
            let src = s(o, "/source/component");
            let host = s(o, "/source/host");
            let source = if host.is_empty() {
                src.to_string()
            } else {
                format!("{src}, {host}")
            };
            vec![
                json!(event_time(
                    o,
                    &[
                        "/lastTimestamp",
                        "/eventTime",
                        "/metadata/creationTimestamp"
                    ]
                )),
                json!(s(o, "/type")),
                json!(s(o, "/reason")),
                json!(obj),
                json!(s(o, "/involvedObject/fieldPath")),
                json!(source),
                json!(s(o, "/message").trim()),
                json!(event_time(
                    o,
                    &[
                        "/firstTimestamp",
                        "/eventTime",
                        "/metadata/creationTimestamp"
                    ]
                )),
                json!(o["count"].as_i64().unwrap_or(1)),
                name,
            ]
        }
        ("events.k8s.io", "Event") => vec![
            json!(event_time(
                o,
                &[
                    "/deprecatedLastTimestamp",
                    "/eventTime",
                    "/metadata/creationTimestamp"
                ]
            )),
            json!(s(o, "/type")),
            json!(s(o, "/reason")),
            json!(format!(
                "{}/{}",
                s(o, "/regarding/kind").to_lowercase(),
                s(o, "/regarding/name")
            )),
            json!(s(o, "/note")),
        ],
        ("apps", "Deployment") => {
            let [c, im, sel] = template_cells(o);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    i(o, "/status/readyReplicas"),
                    i(o, "/spec/replicas")
                )),
                json!(i(o, "/status/updatedReplicas")),
                json!(i(o, "/status/availableReplicas")),
                age(o),
                c,
                im,
                sel,
            ]
        }
        ("apps", "ReplicaSet") => {
            let [c, im, sel] = template_cells(o);
            vec![
                name,
                json!(i(o, "/spec/replicas")),
                json!(i(o, "/status/replicas")),
                json!(i(o, "/status/readyReplicas")),
                age(o),
                c,
                im,
                sel,
            ]
        }
        ("apps", "DaemonSet") => {
            let [c, im, sel] = template_cells(o);
            let ns: Vec<String> = o
                .pointer("/spec/template/spec/nodeSelector")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            vec![
                name,
                json!(i(o, "/status/desiredNumberScheduled")),
                json!(i(o, "/status/currentNumberScheduled")),
                json!(i(o, "/status/numberReady")),
                json!(i(o, "/status/updatedNumberScheduled")),
                json!(i(o, "/status/numberAvailable")),
                or_none(ns.join(",")),
                age(o),
                c,
                im,
                sel,
            ]
        }
        ("apps", "ControllerRevision") => vec![
            name,
            json!(controller_of(o)),
            json!(i(o, "/revision")),
            age(o),
        ],
        ("batch", "Job") => {
            let [c, im, sel] = template_cells(o);
            let completions = match o.pointer("/spec/completions").and_then(Value::as_i64) {
                Some(n) => format!("{}/{n}", i(o, "/status/succeeded")),
                None => format!(
                    "{}/1 of {}",
                    i(o, "/status/succeeded"),
                    i(o, "/spec/parallelism").max(1)
                ),
            };
            vec![
                name,
                json!(job_status(o)),
                json!(completions),
                json!(job_duration(o)),
                age(o),
                c,
                im,
                sel,
            ]
        }
        ("coordination.k8s.io", "Lease") => vec![name, json!(s(o, "/spec/holderIdentity")), age(o)],
        ("scheduling.k8s.io", "PriorityClass") => vec![
            name,
            json!(o["value"].as_i64().unwrap_or(0)),
            json!(o["globalDefault"].as_bool().unwrap_or(false)),
            age(o),
            json!(s(o, "/preemptionPolicy")),
        ],
        ("discovery.k8s.io", "EndpointSlice") => {
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
        _ => vec![name, age(o)],
    }
}

fn row_object(o: &Value, include: Option<&str>) -> Option<Value> {
    match include {
        Some("None") => None,
        Some("Object") => Some(o.clone()),
        _ => Some(json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
        })),
    }
}

/// A Table of `objs`.
pub fn table_for_objects(
    r: &ResourceInfo,
    objs: &[Value],
    rv: &str,
    include: Option<&str>,
) -> Value {
    let defs: Vec<Value> = columns(r.kind, r.group)
        .into_iter()
        .map(|(name, ty, prio, desc)| {
            json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" }, "description": desc, "priority": prio})
        })
        .collect();
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(r, o)});
            if let Some(obj) = row_object(o, include) {
                row["object"] = obj;
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": defs,
        "rows": rows,
    })
}

/// A Table of a list response (keeping its `continue`).
pub fn table_for_list(r: &ResourceInfo, list: &Value, include: Option<&str>) -> Value {
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let rv = list
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut t = table_for_objects(r, &items, rv, include);
    if let Some(c) = list.pointer("/metadata/continue") {
        t["metadata"]["continue"] = c.clone();
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_kubectl() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86400, "3d"),
            (20 * 86400, "20d"),
            (800 * 86400, "2y70d"),
        ] {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }

    #[test]
    fn controller_revision_rows_name_the_controller_with_its_group() {
        let r = crate::resources::find("apps", "v1", "controllerrevisions").unwrap();
        let owned = json!({"metadata": {"name": "ds-5d4b", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "ds", "uid": "u", "controller": true}]},
            "revision": 3});
        let c = cells(r, &owned);
        assert_eq!(
            c[..3],
            [json!("ds-5d4b"), json!("daemonset.apps/ds"), json!(3)]
        );
        let orphan = json!({"metadata": {"name": "x"}, "revision": 1});
        assert_eq!(cells(r, &orphan)[1], "<none>");
    }

    #[test]
    fn pod_and_service_rows() {
        let r = crate::resources::find("", "v1", "pods").unwrap();
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}], "nodeName": "n1"},
            "status": {"phase": "Pending", "containerStatuses": [{"ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}});
        let c = cells(r, &pod);
        assert_eq!(c[1], "0/1");
        assert_eq!(c[2], "ContainerCreating");
        assert_eq!(c[6], "n1");
        let svc = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.5", "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}});
        assert_eq!(service_ports(&svc), "80:30080/TCP");
        assert_eq!(external_ip(&svc), "<none>");
    }
}
