//! kube-apiserver's bootstrap RBAC policy (the part skiff serves): the user-facing roles
//! (`cluster-admin`, and `admin`, `edit`, `view` built by aggregation), the roles every
//! authenticated or anonymous client holds (`system:discovery`, `system:basic-user`,
//! `system:public-info-viewer`), service-account issuer discovery, and the roles of the
//! components (`system:kube-scheduler`, `system:kube-controller-manager`,
//! `system:node-proxier`). Reconciled at every start: missing objects are made, and objects
//! still annotated `rbac.authorization.kubernetes.io/autoupdate: "true"` are put back as they
//! should be.

use serde_json::{Value, json};

use super::rbac::GROUP;
use crate::ApiServer;
use crate::handlers::{FieldValidation, WriteOptions};
use crate::resources;
use crate::status::{ApiError, Reason};

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const ALL: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(paths: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": paths, "verbs": verbs})
}

fn cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<Value>) -> Value {
    let mut l = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    for (k, v) in labels {
        l[*k] = json!(v);
    }
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": l,
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "rules": rules,
    })
}

fn aggregated(name: &str, labels: &[(&str, &str)], selector_label: &str) -> Value {
    let mut r = cluster_role(name, labels, vec![]);
    r["aggregationRule"] =
        json!({"clusterRoleSelectors": [{"matchLabels": {selector_label: "true"}}]});
    r
}

fn binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> Value {
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|(kind, n)| json!({"apiGroup": GROUP, "kind": kind, "name": n}))
        .collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

const TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
const TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

/// The bootstrap ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    vec![
        cluster_role(
            "cluster-admin",
            &[],
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        aggregated("admin", &[], TO_ADMIN),
        aggregated("edit", &[(TO_ADMIN, "true")], TO_EDIT),
        aggregated("view", &[(TO_EDIT, "true")], TO_VIEW),
        cluster_role(
            "system:aggregate-to-admin",
            &[(TO_ADMIN, "true")],
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                    &["create"],
                ),
                rule(&[GROUP], &["rolebindings", "roles"], ALL),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            &[(TO_EDIT, "true")],
            vec![
                rule(
                    &[""],
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                    READ,
                ),
                rule(&[""], &["serviceaccounts"], &["impersonate"]),
                rule(
                    &[""],
                    &[
                        "pods",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                    ],
                    WRITE,
                ),
                rule(&[""], &["pods/eviction"], &["create"]),
                rule(
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                    WRITE,
                ),
                rule(&[""], &["serviceaccounts/token"], &["create"]),
                rule(
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                    WRITE,
                ),
                rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
                rule(&["batch"], &["cronjobs", "jobs"], WRITE),
                rule(&["policy"], &["poddisruptionbudgets"], WRITE),
                rule(
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                    WRITE,
                ),
                rule(&["coordination.k8s.io"], &["leases"], ALL),
            ],
        ),
        cluster_role(
            "system:aggregate-to-view",
            &[(TO_VIEW, "true")],
            vec![
                rule(
                    &[""],
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                    READ,
                ),
                rule(
                    &[""],
                    &[
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                    ],
                    READ,
                ),
                rule(&[""], &["namespaces"], READ),
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                rule(
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                    READ,
                ),
                rule(
                    &["autoscaling"],
                    &[
                        "horizontalpodautoscalers",
                        "horizontalpodautoscalers/status",
                    ],
                    READ,
                ),
                rule(
                    &["batch"],
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                    READ,
                ),
                rule(
                    &["policy"],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                    READ,
                ),
                rule(
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                    READ,
                ),
            ],
        ),
        cluster_role(
            "system:discovery",
            &[],
            vec![urls(
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
                &["get"],
            )],
        ),
        cluster_role(
            "system:basic-user",
            &[],
            vec![
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
            ],
        ),
        cluster_role(
            "system:public-info-viewer",
            &[],
            vec![urls(
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
                &["get"],
            )],
        ),
        cluster_role(
            "system:service-account-issuer-discovery",
            &[],
            vec![urls(
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
                &["get"],
            )],
        ),
        cluster_role(
            "system:auth-delegator",
            &[],
            vec![
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                    &["create"],
                ),
            ],
        ),
        cluster_role(
            "system:kube-scheduler",
            &[],
            vec![
                rule(
                    &["", "events.k8s.io"],
                    &["events"],
                    &["create", "patch", "update"],
                ),
                rule(&["coordination.k8s.io"], &["leases"], &["create"]),
                rule(&["coordination.k8s.io"], &["leases"], &["get", "update"]),
                rule(&[""], &["nodes"], READ),
                rule(&[""], &["pods"], &["delete", "get", "list", "watch"]),
                rule(&[""], &["bindings", "pods/binding"], &["create"]),
                rule(&[""], &["pods/status"], &["patch", "update"]),
                rule(
                    &["", "apps", "policy", "storage.k8s.io"],
                    &[
                        "replicationcontrollers",
                        "services",
                        "replicasets",
                        "statefulsets",
                        "poddisruptionbudgets",
                        "persistentvolumeclaims",
                        "persistentvolumes",
                        "csinodes",
                        "csidrivers",
                        "csistoragecapacities",
                        "storageclasses",
                        "namespaces",
                    ],
                    READ,
                ),
                rule(&["scheduling.k8s.io"], &["priorityclasses"], READ),
            ],
        ),
        cluster_role(
            "system:kube-controller-manager",
            &[],
            vec![
                rule(
                    &["", "events.k8s.io"],
                    &["events"],
                    &["create", "patch", "update"],
                ),
                rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["create", "get", "update"],
                ),
                rule(&["*"], &["*"], ALL),
            ],
        ),
        cluster_role(
            "system:node-bootstrapper",
            &[],
            vec![rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
                &["create", "get", "list", "watch"],
            )],
        ),
        cluster_role(
            NODE_CLIENT_APPROVAL,
            &[],
            vec![rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests/nodeclient"],
                &["create"],
            )],
        ),
        cluster_role(
            SELF_NODE_CLIENT_APPROVAL,
            &[],
            vec![rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeclient"],
                &["create"],
            )],
        ),
        cluster_role(
            SELF_NODE_SERVING_APPROVAL,
            &[],
            vec![rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeserving"],
                &["create"],
            )],
        ),
        cluster_role(
            "system:node-proxier",
            &[],
            vec![
                rule(&[""], &["endpoints", "services"], &["list", "watch"]),
                rule(&[""], &["nodes"], READ),
                rule(
                    &["", "events.k8s.io"],
                    &["events"],
                    &["create", "patch", "update"],
                ),
                rule(
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                    &["list", "watch"],
                ),
            ],
        ),
    ]
}

const NODE_CLIENT_APPROVAL: &str =
    "system:certificates.k8s.io:certificatesigningrequests:nodeclient";
const SELF_NODE_CLIENT_APPROVAL: &str =
    "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient";
const SELF_NODE_SERVING_APPROVAL: &str =
    "system:certificates.k8s.io:certificatesigningrequests:selfnodeserving";

/// The bootstrap ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding(
            "cluster-admin",
            "cluster-admin",
            &[("Group", "system:masters")],
        ),
        binding(
            "system:discovery",
            "system:discovery",
            &[("Group", "system:authenticated")],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            &[("Group", "system:authenticated")],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[
                ("Group", "system:authenticated"),
                ("Group", "system:unauthenticated"),
            ],
        ),
        binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            &[("Group", "system:serviceaccounts")],
        ),
        binding(
            "system:kube-scheduler",
            "system:kube-scheduler",
            &[("User", "system:kube-scheduler")],
        ),
        binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            &[("User", "system:kube-controller-manager")],
        ),
        // What kubeadm binds for joining nodes: bootstrappers ask for node client certificates
        // and have them approved; nodes renew their own and ask for serving certificates.
        binding(
            "system:node-bootstrapper",
            "system:node-bootstrapper",
            &[("Group", "system:bootstrappers")],
        ),
        binding(
            NODE_CLIENT_APPROVAL,
            NODE_CLIENT_APPROVAL,
            &[("Group", "system:bootstrappers")],
        ),
        binding(
            SELF_NODE_CLIENT_APPROVAL,
            SELF_NODE_CLIENT_APPROVAL,
            &[("Group", "system:nodes")],
        ),
        binding(
            SELF_NODE_SERVING_APPROVAL,
            SELF_NODE_SERVING_APPROVAL,
            &[("Group", "system:nodes")],
        ),
        binding(
            "system:node-proxier",
            "system:node-proxier",
            &[("User", "system:kube-proxy")],
        ),
    ]
}

/// The fields reconciliation puts back (the rules of an aggregated role are the aggregation's).
fn owned_fields(o: &Value) -> &'static [&'static str] {
    match o["kind"].as_str() {
        Some("ClusterRole") if o.get("aggregationRule").is_some() => &["aggregationRule"],
        Some("ClusterRole") => &["rules"],
        _ => &["roleRef", "subjects"],
    }
}

/// Makes the bootstrap policy exist and be current.
pub async fn reconcile(app: &ApiServer) -> Result<(), ApiError> {
    let opts = WriteOptions {
        field_validation: FieldValidation::Strict,
        ..Default::default()
    };
    let sets = [
        ("clusterroles", cluster_roles()),
        ("clusterrolebindings", cluster_role_bindings()),
    ];
    for (plural, objects) in sets {
        let r = resources::find(GROUP, "v1", plural).expect("served");
        for want in objects {
            let name = want["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match app.get(r, None, &name).await {
                Err(e) if e.reason == Reason::NotFound => {
                    app.create(r, None, want, &opts).await?;
                    tracing::debug!(%name, kind = plural, "created bootstrap RBAC object");
                }
                Err(e) => return Err(e),
                Ok((_, cur)) => {
                    let autoupdate = cur
                        .pointer(
                            "/metadata/annotations/rbac.authorization.kubernetes.io~1autoupdate",
                        )
                        .and_then(Value::as_str)
                        != Some("false");
                    let fields = owned_fields(&want);
                    if !autoupdate || fields.iter().all(|f| cur.get(*f) == want.get(*f)) {
                        continue;
                    }
                    let mut new = cur.clone();
                    for f in fields {
                        new[*f] = want[*f].clone();
                    }
                    match app.update(r, None, &name, new, None, &opts).await {
                        Ok(_) => {
                            tracing::info!(%name, kind = plural, "reconciled bootstrap RBAC object")
                        }
                        Err(e) if e.reason == Reason::Conflict => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
    Ok(())
}
