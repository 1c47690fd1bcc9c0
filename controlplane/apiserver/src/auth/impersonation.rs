//! Impersonation, as kube-apiserver's: `Impersonate-User`, `Impersonate-Group`,
//! `Impersonate-Uid` and `Impersonate-Extra-<key>` headers make the request act as another user
//! when the authenticated user may `impersonate` each of them (`users`, `groups`,
//! `serviceaccounts` for a service account's user name, `authentication.k8s.io` `uids` and
//! `userextras/<key>`); `kubectl --as`/`--as-group` send them.

use std::collections::BTreeMap;

use axum::http::HeaderMap;

use super::attributes::{Attributes, ResourceAttributes};
use super::{AUTHENTICATED, UserInfo, forbidden};
use crate::ApiServer;
use crate::status::ApiError;

const USER: &str = "impersonate-user";
const GROUP: &str = "impersonate-group";
const UID: &str = "impersonate-uid";
const EXTRA_PREFIX: &str = "impersonate-extra-";

fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// The `impersonate` request for `name` of `resource` in `group` (namespace for service
/// accounts).
fn impersonate(group: &str, resource: &str, namespace: &str, name: &str) -> Attributes {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, s),
        None => (resource, ""),
    };
    Attributes::Resource(ResourceAttributes {
        verb: "impersonate".into(),
        group: group.into(),
        resource: resource.into(),
        subresource: subresource.into(),
        namespace: namespace.into(),
        name: name.into(),
        ..Default::default()
    })
}

/// The user the request acts as: `user` itself without impersonation headers, the impersonated
/// one when `user` may impersonate everything asked.
pub fn resolve(app: &ApiServer, user: UserInfo, headers: &HeaderMap) -> Result<UserInfo, ApiError> {
    let name = values(headers, USER).first().map(|s| s.to_string());
    let groups: Vec<String> = values(headers, GROUP)
        .iter()
        .map(|s| s.to_string())
        .collect();
    let uid = values(headers, UID).first().map(|s| s.to_string());
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in headers {
        if let Some(key) = k.as_str().strip_prefix(EXTRA_PREFIX)
            && let Ok(v) = v.to_str()
        {
            extra
                .entry(key.to_string())
                .or_default()
                .push(v.to_string());
        }
    }
    let Some(name) = name else {
        if groups.is_empty() && uid.is_none() && extra.is_empty() {
            return Ok(user);
        }
        return Err(ApiError::bad_request(
            "requested impersonation of groups, uid or extra fields without impersonating a user",
        ));
    };
    let mut checks = Vec::new();
    let service_account = name
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'));
    checks.push(match service_account {
        Some((ns, sa)) => impersonate("", "serviceaccounts", ns, sa),
        None => impersonate("", "users", "", &name),
    });
    for g in &groups {
        checks.push(impersonate("", "groups", "", g));
    }
    if let Some(u) = &uid {
        checks.push(impersonate("authentication.k8s.io", "uids", "", u));
    }
    for (k, vs) in &extra {
        for v in vs {
            checks.push(impersonate(
                "authentication.k8s.io",
                &format!("userextras/{k}"),
                "",
                v,
            ));
        }
    }
    for a in &checks {
        let d = app.authorize(&user, a);
        if !d.allowed {
            return Err(forbidden(&user, a, &d.reason));
        }
    }
    let mut groups = groups;
    if let Some((ns, _)) = service_account
        && groups.is_empty()
    {
        groups = vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
        ];
    }
    if name != super::ANONYMOUS && !groups.iter().any(|g| g == AUTHENTICATED) {
        groups.push(AUTHENTICATED.into());
    }
    Ok(UserInfo {
        name,
        uid: uid.unwrap_or_default(),
        groups,
        extra,
    })
}
