//! The Node authorizer and NodeRestriction admission, as kube-apiserver's: a node's credentials
//! (`system:node:<name>` in `system:nodes`) read only the Secrets, ConfigMaps,
//! PersistentVolumeClaims and service-account tokens of the pods bound to it, found through a
//! graph of pod → node and pod → referenced objects kept current from the pods' watch; other
//! requests are decided by the static node rules (what a kubelet needs). Admission then keeps a
//! node's writes to its own Node and Lease, its own pods' status and mirror pods bound to
//! itself.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use skiff_store::EventKind;

use super::attributes::Attributes;
use super::rbac::{Decision, Rule};
use super::{UserInfo, current_user};
use crate::ApiServer;
use crate::object::{decode_kv, meta_str};
use crate::resources::{self, ResourceInfo};
use crate::status::{ApiError, ApiResult};

pub const NODES_GROUP: &str = "system:nodes";
const NODE_USER_PREFIX: &str = "system:node:";
/// The annotation a mirror pod (the API server's copy of a static pod) carries.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The node a user is, if its credentials are a node's.
pub fn node_of(user: &UserInfo) -> Option<&str> {
    user.name
        .strip_prefix(NODE_USER_PREFIX)
        .filter(|n| !n.is_empty() && user.in_group(NODES_GROUP))
}

/// An object a pod refers to: its resource (plural), namespace and name.
type Object = (&'static str, String, String);

/// What one pod bound to a node refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodEdges {
    node: String,
    objects: Vec<Object>,
}

/// The graph: every bound pod's edges, and for each (node, object) how many of the node's pods
/// refer to it.
#[derive(Debug, Default)]
pub struct NodeGraph {
    pods: RwLock<Graph>,
}

#[derive(Debug, Default)]
struct Graph {
    pods: HashMap<(String, String), PodEdges>,
    refs: HashMap<(String, Object), usize>,
}

impl Graph {
    fn remove(&mut self, key: &(String, String)) {
        if let Some(old) = self.pods.remove(key) {
            for o in old.objects {
                let k = (old.node.clone(), o);
                if let Some(n) = self.refs.get_mut(&k) {
                    *n -= 1;
                    if *n == 0 {
                        self.refs.remove(&k);
                    }
                }
            }
        }
    }

    /// Records `pod` (or forgets it when it is not bound to a node).
    fn set(&mut self, pod: &Value) {
        let key = (
            meta_str(pod, "namespace").unwrap_or_default().to_string(),
            meta_str(pod, "name").unwrap_or_default().to_string(),
        );
        self.remove(&key);
        let Some(edges) = pod_edges(pod) else {
            return;
        };
        for o in &edges.objects {
            *self
                .refs
                .entry((edges.node.clone(), o.clone()))
                .or_default() += 1;
        }
        self.pods.insert(key, edges);
    }
}

/// The node a pod is bound to and the objects it refers to (the pod itself included).
fn pod_edges(pod: &Value) -> Option<PodEdges> {
    let spec = &pod["spec"];
    let node = spec["nodeName"].as_str().filter(|n| !n.is_empty())?;
    let ns = meta_str(pod, "namespace").unwrap_or_default();
    let name = meta_str(pod, "name").unwrap_or_default();
    let mut objects: Vec<Object> = vec![("pods", ns.into(), name.into())];
    let mut add = |plural: &'static str, v: &Value| {
        if let Some(n) = v.as_str().filter(|n| !n.is_empty()) {
            let o = (plural, ns.to_string(), n.to_string());
            if !objects.contains(&o) {
                objects.push(o);
            }
        }
    };
    let sa = spec["serviceAccountName"]
        .as_str()
        .or_else(|| spec["serviceAccount"].as_str());
    add("serviceaccounts", &Value::from(sa.unwrap_or("default")));
    let items = |v: &Value| v.as_array().cloned().unwrap_or_default();
    for s in items(&spec["imagePullSecrets"]) {
        add("secrets", &s["name"]);
    }
    for v in items(&spec["volumes"]) {
        add("secrets", &v["secret"]["secretName"]);
        add("configmaps", &v["configMap"]["name"]);
        add(
            "persistentvolumeclaims",
            &v["persistentVolumeClaim"]["claimName"],
        );
        if v.get("ephemeral").is_some_and(|e| !e.is_null())
            && let Some(vol) = v["name"].as_str()
        {
            add(
                "persistentvolumeclaims",
                &Value::from(format!("{name}-{vol}")),
            );
        }
        for s in items(&v["projected"]["sources"]) {
            add("secrets", &s["secret"]["name"]);
            add("configmaps", &s["configMap"]["name"]);
        }
    }
    for kind in ["initContainers", "containers", "ephemeralContainers"] {
        for c in items(&spec[kind]) {
            for e in items(&c["env"]) {
                add("secrets", &e["valueFrom"]["secretKeyRef"]["name"]);
                add("configmaps", &e["valueFrom"]["configMapKeyRef"]["name"]);
            }
            for e in items(&c["envFrom"]) {
                add("secrets", &e["secretRef"]["name"]);
                add("configmaps", &e["configMapRef"]["name"]);
            }
        }
    }
    Some(PodEdges {
        node: node.to_string(),
        objects,
    })
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Rule {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
    Rule {
        api_groups: v(groups),
        resources: v(resources),
        verbs: v(verbs),
        ..Default::default()
    }
}

/// What a node may do besides reading the objects of its pods (kube-apiserver's `NodeRules`);
/// which Node, Lease and pods it may write NodeRestriction admission decides.
fn node_rules() -> &'static [Rule] {
    static RULES: std::sync::OnceLock<Vec<Rule>> = std::sync::OnceLock::new();
    RULES.get_or_init(|| {
        let read = &["get", "list", "watch"];
        vec![
            rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
            rule(
                &["authorization.k8s.io"],
                &["subjectaccessreviews", "localsubjectaccessreviews"],
                &["create"],
            ),
            rule(&[""], &["services"], read),
            // A skiff node runs its proxy and cluster DNS with the node's credentials
            // (`skiff agent`): they follow the Services' endpoints.
            rule(&["discovery.k8s.io"], &["endpointslices"], read),
            rule(&[""], &["nodes"], &["create", "get", "list", "watch"]),
            rule(&[""], &["nodes/status"], &["patch", "update"]),
            rule(&[""], &["nodes"], &["patch", "update", "delete"]),
            rule(
                &["", "events.k8s.io"],
                &["events"],
                &["create", "patch", "update"],
            ),
            rule(&[""], &["pods"], read),
            rule(&[""], &["pods"], &["create", "delete"]),
            // `get` as well: a node reads every pod anyway, and kubectl reads the subresource
            // before it patches it.
            rule(&[""], &["pods/status"], &["get", "patch", "update"]),
            rule(&[""], &["pods/eviction"], &["create"]),
            rule(
                &[""],
                &["persistentvolumeclaims/status"],
                &["patch", "update"],
            ),
            rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
                &["create", "get", "list", "watch"],
            ),
            rule(
                &["coordination.k8s.io"],
                &["leases"],
                &["create", "delete", "get", "patch", "update"],
            ),
            rule(&["storage.k8s.io"], &["csidrivers", "csinodes"], read),
            rule(&["node.k8s.io"], &["runtimeclasses"], read),
        ]
    })
}

fn allow() -> Decision {
    Decision {
        allowed: true,
        reason: String::new(),
    }
}

fn no_opinion(reason: impl Into<String>) -> Decision {
    Decision {
        allowed: false,
        reason: reason.into(),
    }
}

impl NodeGraph {
    /// The Node authorizer's decision; `None` for users that are not nodes (no opinion).
    pub fn authorize(&self, user: &UserInfo, a: &Attributes) -> Option<Decision> {
        let node = node_of(user)?;
        let Attributes::Resource(r) = a else {
            return Some(no_opinion(""));
        };
        let graph_kind: Option<&'static str> = match (
            r.group.as_str(),
            r.resource.as_str(),
            r.subresource.as_str(),
        ) {
            ("", "secrets", "") => Some("secrets"),
            ("", "configmaps", "") => Some("configmaps"),
            ("", "persistentvolumeclaims", "") => Some("persistentvolumeclaims"),
            ("", "serviceaccounts", "token") => Some("serviceaccounts"),
            _ => None,
        };
        let verb_ok = match graph_kind {
            Some("serviceaccounts") => r.verb == "create",
            Some(_) => matches!(r.verb.as_str(), "get" | "list" | "watch"),
            None => true,
        };
        if !verb_ok {
            return Some(no_opinion(
                "can only read individual resources of this type",
            ));
        }
        let Some(kind) = graph_kind else {
            return Some(if node_rules().iter().any(|rule| rule.allows(a)) {
                allow()
            } else {
                no_opinion("")
            });
        };
        if r.name.is_empty() {
            return Some(no_opinion("No Object name found"));
        }
        let key = (
            node.to_string(),
            (kind, r.namespace.clone(), r.name.clone()),
        );
        let related = self
            .pods
            .read()
            .expect("not poisoned")
            .refs
            .contains_key(&key);
        Some(if related {
            allow()
        } else {
            no_opinion(format!(
                "no relationship found between node '{node}' and this object"
            ))
        })
    }

    /// The node `pod` (namespace, name) is bound to, as the graph knows it.
    fn node_of_pod(&self, ns: &str, name: &str) -> Option<String> {
        self.pods
            .read()
            .expect("not poisoned")
            .pods
            .get(&(ns.to_string(), name.to_string()))
            .map(|e| e.node.clone())
    }

    fn reload(&self, pods: &[Value]) {
        let mut g = Graph::default();
        for p in pods {
            g.set(p);
        }
        *self.pods.write().expect("not poisoned") = g;
    }

    /// Reads every pod, then keeps the graph current from the pods' watch.
    pub async fn start(app: Arc<ApiServer>) -> ApiResult<()> {
        let prefix = pods_resource().prefix(None);
        let read_all = |app: Arc<ApiServer>| async move {
            let res = app
                .store
                .range(&pods_resource().prefix(None), None, 0)
                .await?;
            let pods: Vec<Value> = res.kvs.iter().map(decode_kv).collect::<Result<_, _>>()?;
            app.node_graph.reload(&pods);
            Ok::<u64, ApiError>(res.revision)
        };
        let mut after = read_all(app.clone()).await?;
        tokio::spawn(async move {
            loop {
                match app.store.watch(&prefix, after).await {
                    Ok(mut events) => {
                        while let Some(ev) = events.next().await {
                            let Ok(ev) = ev else { break };
                            after = ev.revision();
                            let Ok(pod) = decode_kv(&ev.kv) else { continue };
                            let mut g = app.node_graph.pods.write().expect("not poisoned");
                            match ev.kind {
                                EventKind::Put => g.set(&pod),
                                EventKind::Delete => g.remove(&(
                                    meta_str(&pod, "namespace").unwrap_or_default().to_string(),
                                    meta_str(&pod, "name").unwrap_or_default().to_string(),
                                )),
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "node graph watch"),
                }
                // History may be gone: read everything again and go on from there.
                tokio::time::sleep(Duration::from_millis(100)).await;
                match read_all(app.clone()).await {
                    Ok(rev) => after = rev,
                    Err(e) => tracing::warn!(error = %e.message, "reading pods for the node graph"),
                }
            }
        });
        Ok(())
    }
}

fn pods_resource() -> &'static ResourceInfo {
    resources::find("", "v1", "pods").expect("pods are served")
}

/// A write NodeRestriction admission looks at.
pub enum Write<'a> {
    Create(&'a Value),
    Update {
        cur: &'a Value,
        sub: Option<&'a str>,
    },
    Delete(&'a Value),
}

fn refused(r: &ResourceInfo, name: &str, why: String) -> ApiError {
    let qualified = match r.group {
        "" => r.plural.to_string(),
        g => format!("{}.{g}", r.plural),
    };
    ApiError::forbidden(format!("{qualified} {name:?} is forbidden: {why}"))
}

/// NodeRestriction admission of a write by the current request's user, if it is a node.
pub fn admit(r: &ResourceInfo, write: Write<'_>) -> ApiResult<()> {
    let Some(user) = current_user() else {
        return Ok(());
    };
    let Some(node) = node_of(&user) else {
        return Ok(());
    };
    let o = match &write {
        Write::Create(o) | Write::Delete(o) => *o,
        Write::Update { cur, .. } => *cur,
    };
    let name = meta_str(o, "name").unwrap_or_default();
    let bound_to = o["spec"]["nodeName"].as_str().unwrap_or_default();
    match (r.group, r.plural) {
        ("", "nodes") if name != node => Err(refused(
            r,
            name,
            format!("node {node:?} is not allowed to modify node {name:?}"),
        )),
        ("coordination.k8s.io", "leases") => {
            if meta_str(o, "namespace") != Some(NODE_LEASE_NAMESPACE) {
                Err(refused(
                    r,
                    name,
                    format!("can only access leases in the {NODE_LEASE_NAMESPACE:?} namespace"),
                ))
            } else if name != node {
                Err(refused(
                    r,
                    name,
                    "can only access node lease with the same name as the requesting node".into(),
                ))
            } else {
                Ok(())
            }
        }
        ("", "pods") => match write {
            Write::Create(pod) => {
                let mirror = pod
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(MIRROR_ANNOTATION))
                    .is_some();
                if !mirror {
                    return Err(refused(
                        r,
                        name,
                        format!(
                            "pod does not have \"{MIRROR_ANNOTATION}\" annotation, node {node:?} can only create mirror pods"
                        ),
                    ));
                }
                if bound_to != node {
                    return Err(refused(
                        r,
                        name,
                        format!(
                            "node {node:?} can only create pods with spec.nodeName set to itself"
                        ),
                    ));
                }
                let refs_more = pod_edges(pod).is_some_and(|e| {
                    e.objects.iter().any(|(k, _, _)| {
                        matches!(*k, "secrets" | "configmaps" | "persistentvolumeclaims")
                    })
                });
                if refs_more {
                    return Err(refused(
                        r,
                        name,
                        format!(
                            "node {node:?} can not create pods that reference secrets, configmaps or persistentvolumeclaims"
                        ),
                    ));
                }
                Ok(())
            }
            Write::Update { sub, .. } if bound_to != node => Err(refused(
                r,
                name,
                match sub {
                    Some("status") => format!(
                        "node {node:?} can only update pod status for pods with spec.nodeName set to itself"
                    ),
                    _ => format!(
                        "node {node:?} can only update pods with spec.nodeName set to itself"
                    ),
                },
            )),
            Write::Delete(_) if bound_to != node => Err(refused(
                r,
                name,
                format!("node {node:?} can only delete pods with spec.nodeName set to itself"),
            )),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// NodeRestriction of a TokenRequest: a node asks only for tokens bound to a pod on itself.
pub fn admit_token_request(
    app: &ApiServer,
    user: &UserInfo,
    ns: &str,
    sa: &str,
    req: &Value,
) -> ApiResult<()> {
    let Some(node) = node_of(user) else {
        return Ok(());
    };
    let bound = &req["spec"]["boundObjectRef"];
    let r = resources::find("", "v1", "serviceaccounts").expect("served");
    if bound["kind"].as_str() != Some("Pod") {
        return Err(refused(
            r,
            sa,
            format!("node {node:?} can only request tokens bound to pods"),
        ));
    }
    let pod = bound["name"].as_str().unwrap_or_default();
    if app.node_graph.node_of_pod(ns, pod).as_deref() != Some(node) {
        return Err(refused(
            r,
            sa,
            format!("node {node:?} can only request tokens bound to pods scheduled to itself"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::attributes::ResourceAttributes;
    use serde_json::json;

    fn node(name: &str) -> UserInfo {
        UserInfo::authenticated(format!("system:node:{name}"), vec![NODES_GROUP.into()])
    }

    fn get(resource: &str, ns: &str, name: &str) -> Attributes {
        Attributes::Resource(ResourceAttributes {
            verb: "get".into(),
            resource: resource.into(),
            namespace: ns.into(),
            name: name.into(),
            ..Default::default()
        })
    }

    #[test]
    fn a_node_reads_only_what_its_pods_refer_to() {
        let g = NodeGraph::default();
        let pod = json!({"metadata": {"namespace": "d", "name": "p"}, "spec": {
            "nodeName": "n1",
            "volumes": [{"name": "v", "secret": {"secretName": "s1"}},
                        {"name": "w", "projected": {"sources": [{"configMap": {"name": "c1"}}]}}],
            "containers": [{"name": "c", "envFrom": [{"secretRef": {"name": "s2"}}]}]}});
        g.reload(std::slice::from_ref(&pod));
        let n1 = node("n1");
        assert!(
            g.authorize(&n1, &get("secrets", "d", "s1"))
                .unwrap()
                .allowed
        );
        assert!(
            g.authorize(&n1, &get("secrets", "d", "s2"))
                .unwrap()
                .allowed
        );
        assert!(
            g.authorize(&n1, &get("configmaps", "d", "c1"))
                .unwrap()
                .allowed
        );
        let no = g.authorize(&n1, &get("secrets", "d", "other")).unwrap();
        assert!(!no.allowed);
        assert_eq!(
            no.reason,
            "no relationship found between node 'n1' and this object"
        );
        assert!(
            !g.authorize(&node("n2"), &get("secrets", "d", "s1"))
                .unwrap()
                .allowed
        );
        // Not a node: no opinion at all.
        assert!(
            g.authorize(
                &UserInfo::authenticated("system:node:n1", vec![]),
                &get("secrets", "d", "s1")
            )
            .is_none()
        );
        // The edges go when the pod does.
        g.pods.write().unwrap().remove(&("d".into(), "p".into()));
        assert!(
            !g.authorize(&n1, &get("secrets", "d", "s1"))
                .unwrap()
                .allowed
        );
        assert!(g.pods.read().unwrap().refs.is_empty());
    }
}
