//! Who may do what. `authn` turns a request's credentials (client certificate, bearer token)
//! into a [`UserInfo`]; `attributes` describes what the request asks to do as kube-apiserver's
//! `RequestInfo` does; `rbac` decides (with `system:masters` let through first, as
//! kube-apiserver's privileged-group authorizer does); `policy` is the bootstrap policy
//! reconciled at start; `reviews` serves the authentication and authorization review APIs;
//! `tokens` signs and verifies service-account tokens; `escalation` keeps anyone from granting
//! through a Role or binding what they do not hold; `service_accounts` gives every namespace its
//! `default` ServiceAccount and `kube-root-ca.crt`; `bootstrap_tokens` authenticates joining
//! nodes; `node` is the Node authorizer and NodeRestriction admission.

pub mod attributes;
pub mod authn;
pub mod bootstrap_tokens;
pub mod csr;
pub mod escalation;
pub mod impersonation;
pub mod node;
pub mod policy;
pub mod rbac;
pub mod reviews;
pub mod service_account_admission;
pub mod service_accounts;
pub mod tokens;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use serde_json::{Value, json};

pub use attributes::Attributes;

use crate::status::{ApiError, Reason};

pub const MASTERS: &str = "system:masters";
pub const AUTHENTICATED: &str = "system:authenticated";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
pub const ANONYMOUS: &str = "system:anonymous";

/// An authenticated identity, as kube-apiserver's `user.Info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user with `groups` and `system:authenticated`.
    pub fn authenticated(name: impl Into<String>, groups: Vec<String>) -> Self {
        let mut groups = groups;
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.to_string());
        }
        Self {
            name: name.into(),
            groups,
            ..Default::default()
        }
    }

    pub fn anonymous() -> Self {
        Self {
            name: ANONYMOUS.into(),
            groups: vec![UNAUTHENTICATED.into()],
            ..Default::default()
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.name == ANONYMOUS
    }

    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }

    /// `authentication.k8s.io/v1` UserInfo.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"username": self.name, "groups": self.groups});
        if !self.uid.is_empty() {
            v["uid"] = json!(self.uid);
        }
        if !self.extra.is_empty() {
            v["extra"] = json!(self.extra);
        }
        v
    }

    /// From an `authentication.k8s.io/v1` UserInfo or the user fields of a SubjectAccessReview
    /// spec (`user`/`username`, `groups`, `uid`, `extra`).
    pub fn from_json(v: &Value) -> Self {
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        };
        Self {
            name: v
                .get("username")
                .or_else(|| v.get("user"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            uid: v["uid"].as_str().unwrap_or_default().to_string(),
            groups: strings(&v["groups"]),
            extra: v["extra"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, vs)| (k.clone(), strings(vs)))
                .collect(),
        }
    }

    /// `user "alice" (groups=["dev" "system:authenticated"])`, as RBAC's escalation errors name
    /// a user.
    pub fn describe(&self) -> String {
        let groups: Vec<String> = self.groups.iter().map(|g| format!("{g:?}")).collect();
        format!("user {:?} (groups=[{}])", self.name, groups.join(" "))
    }
}

impl crate::ApiServer {
    /// The authorizers in kube-apiserver's order (`--authorization-mode=Node,RBAC`): the first
    /// that allows decides; the reasons of those that did not are joined.
    pub fn authorize(&self, user: &UserInfo, a: &Attributes) -> rbac::Decision {
        let node = self.node_graph.authorize(user, a);
        if let Some(d) = node.as_ref().filter(|d| d.allowed) {
            return d.clone();
        }
        let mut d = self.rbac.policy().authorize(user, a);
        if !d.allowed
            && let Some(n) = node.filter(|n| !n.reason.is_empty())
        {
            d.reason = match d.reason.as_str() {
                "" => n.reason,
                r => format!("{}, {r}", n.reason),
            };
        }
        d
    }
}

tokio::task_local! {
    static REQUEST_USER: Arc<UserInfo>;
}

/// Runs `fut` (one request's handling) as `user`, so admission can ask who is writing.
pub async fn as_user<F: Future>(user: Arc<UserInfo>, fut: F) -> F::Output {
    REQUEST_USER.scope(user, fut).await
}

/// The user the current request is served for; `None` for the server's own writes (bootstrap,
/// its controllers), which are not subject to authorization.
pub fn current_user() -> Option<Arc<UserInfo>> {
    REQUEST_USER.try_with(Arc::clone).ok()
}

/// The 403 kube-apiserver answers when the authorizer says no, worded as its
/// `responsewriters.Forbidden`: `pods "p" is forbidden: User "alice" cannot delete resource
/// "pods" in API group "" in the namespace "default"`.
pub fn forbidden(user: &UserInfo, a: &Attributes, reason: &str) -> ApiError {
    let mut msg = match a {
        Attributes::NonResource { verb, path } => {
            format!("User {:?} cannot {verb} path {path:?}", user.name)
        }
        Attributes::Resource(r) => {
            let resource = match r.subresource.as_str() {
                "" => r.resource.clone(),
                s => format!("{}/{s}", r.resource),
            };
            let scope = match r.namespace.as_str() {
                "" => "at the cluster scope".to_string(),
                ns => format!("in the namespace {ns:?}"),
            };
            format!(
                "User {:?} cannot {} resource {resource:?} in API group {:?} {scope}",
                user.name, r.verb, r.group
            )
        }
    };
    if !reason.is_empty() {
        msg = format!("{msg}: {reason}");
    }
    let (message, details) = match a {
        Attributes::NonResource { .. } => (format!("forbidden: {msg}"), json!({})),
        Attributes::Resource(r) => {
            let qualified = match r.group.as_str() {
                "" => r.resource.clone(),
                g => format!("{}.{g}", r.resource),
            };
            let mut d = json!({"kind": r.resource});
            if !r.group.is_empty() {
                d["group"] = json!(r.group);
            }
            let message = if r.name.is_empty() {
                format!("{qualified} is forbidden: {msg}")
            } else {
                d["name"] = json!(r.name);
                format!("{qualified} {:?} is forbidden: {msg}", r.name)
            };
            (message, d)
        }
    };
    ApiError {
        reason: Reason::Forbidden,
        message,
        details: Some(details),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::attributes::ResourceAttributes;

    #[test]
    fn forbidden_is_worded_as_kube_apiserver_words_it() {
        let alice = UserInfo::authenticated("alice", vec![]);
        let a = Attributes::Resource(ResourceAttributes {
            verb: "delete".into(),
            namespace: "default".into(),
            resource: "pods".into(),
            name: "web".into(),
            ..Default::default()
        });
        let e = forbidden(&alice, &a, "");
        assert_eq!(
            e.message,
            "pods \"web\" is forbidden: User \"alice\" cannot delete resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        assert_eq!(e.code(), 403);
        let a = Attributes::Resource(ResourceAttributes {
            verb: "list".into(),
            group: "apps".into(),
            resource: "deployments".into(),
            ..Default::default()
        });
        assert_eq!(
            forbidden(&alice, &a, "").message,
            "deployments.apps is forbidden: User \"alice\" cannot list resource \"deployments\" in API group \"apps\" at the cluster scope"
        );
        let a = Attributes::NonResource {
            verb: "get".into(),
            path: "/metrics".into(),
        };
        assert_eq!(
            forbidden(&alice, &a, "").message,
            "forbidden: User \"alice\" cannot get path \"/metrics\""
        );
    }

    #[test]
    fn describe_lists_groups_as_go_does() {
        let u = UserInfo::authenticated("bob", vec!["dev".into()]);
        assert_eq!(
            u.describe(),
            "user \"bob\" (groups=[\"dev\" \"system:authenticated\"])"
        );
    }
}
