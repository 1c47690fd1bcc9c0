//! RBAC's escalation prevention: a Role or ClusterRole may only be written by someone who holds
//! every rule in it (or may `escalate` it), and a binding only by someone who holds every rule
//! of the role it refers to (or may `bind` that role). `system:masters` and the server's own
//! writes pass.

use serde_json::Value;

use super::attributes::{Attributes, ResourceAttributes};
use super::rbac::{GROUP, Rule, uncovered};
use super::{MASTERS, UserInfo, current_user};
use crate::ApiServer;
use crate::object::meta_str;
use crate::status::{ApiError, ApiResult, Reason};

/// Whether the request's user may skip the check: the server itself, `system:masters`, or one
/// the authorizer allows `verb` (`escalate`, `bind`) on the named role.
fn may(api: &ApiServer, user: &UserInfo, verb: &str, resource: &str, ns: &str, name: &str) -> bool {
    if user.in_group(MASTERS) {
        return true;
    }
    let a = Attributes::Resource(ResourceAttributes {
        verb: verb.into(),
        group: GROUP.into(),
        version: "v1".into(),
        resource: resource.into(),
        namespace: ns.into(),
        name: name.into(),
        ..Default::default()
    });
    api.authorize(user, &a).allowed
}

fn forbidden(resource: &str, name: &str, user: &UserInfo, why: String) -> ApiError {
    let mut e = ApiError::forbidden(format!(
        "{resource}.{GROUP} {name:?} is forbidden: {} {why}",
        user.describe()
    ));
    e.details = Some(serde_json::json!({"name": name, "group": GROUP, "kind": resource}));
    e
}

fn confirm_no_escalation(
    api: &ApiServer,
    user: &UserInfo,
    resource: &str,
    name: &str,
    ns: &str,
    rules: &[Rule],
) -> ApiResult<()> {
    let missing = uncovered(&api.rbac.policy().rules_for(user, ns), rules);
    if missing.is_empty() {
        return Ok(());
    }
    let mut shown: Vec<String> = missing.iter().map(Rule::compact_string).collect();
    shown.sort();
    Err(forbidden(
        resource,
        name,
        user,
        format!(
            "is attempting to grant RBAC permissions not currently held:\n{}",
            shown.join("\n")
        ),
    ))
}

/// Admission of a Role (`roles`) or ClusterRole (`clusterroles`) being written.
pub fn check_role(api: &ApiServer, resource: &str, o: &Value) -> ApiResult<()> {
    let Some(user) = current_user() else {
        return Ok(());
    };
    let ns = meta_str(o, "namespace").unwrap_or_default();
    let name = meta_str(o, "name").unwrap_or_default();
    if may(api, &user, "escalate", resource, ns, name) {
        return Ok(());
    }
    if o.get("aggregationRule").is_some_and(|a| !a.is_null()) {
        return Err(forbidden(
            resource,
            name,
            &user,
            "must have cluster-admin privileges to use the aggregationRule".into(),
        ));
    }
    let rules: Vec<Rule> =
        serde_json::from_value(o.get("rules").cloned().unwrap_or_default()).unwrap_or_default();
    confirm_no_escalation(api, &user, resource, name, ns, &rules)
}

/// Admission of a RoleBinding (`rolebindings`) or ClusterRoleBinding (`clusterrolebindings`).
pub fn check_binding(api: &ApiServer, resource: &str, o: &Value) -> ApiResult<()> {
    let Some(user) = current_user() else {
        return Ok(());
    };
    if user.in_group(MASTERS) {
        return Ok(());
    }
    let ns = meta_str(o, "namespace").unwrap_or_default();
    let name = meta_str(o, "name").unwrap_or_default();
    let kind = o["roleRef"]["kind"].as_str().unwrap_or_default();
    let role = o["roleRef"]["name"].as_str().unwrap_or_default();
    let role_resource = if kind == "Role" {
        "roles"
    } else {
        "clusterroles"
    };
    if may(api, &user, "bind", role_resource, ns, role) {
        return Ok(());
    }
    let Some(rules) = api.rbac.policy().referenced_rules(kind, role, ns) else {
        return Err(ApiError {
            reason: Reason::NotFound,
            message: format!("{role_resource}.{GROUP} {role:?} not found"),
            details: Some(serde_json::json!({"name": role, "group": GROUP, "kind": role_resource})),
        });
    };
    confirm_no_escalation(api, &user, resource, name, ns, &rules)
}
