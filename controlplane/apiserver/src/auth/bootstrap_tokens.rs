//! Bootstrap tokens (`<id>.<secret>`, 6 and 16 characters of `[a-z0-9]`): a node joining the
//! cluster presents one as a bearer token. It is valid while the Secret
//! `kube-system/bootstrap-token-<id>` of type `bootstrap.kubernetes.io/token` holds the same
//! secret, allows authentication (`usage-bootstrap-authentication: "true"`) and has not passed
//! its `expiration`. The user is `system:bootstrap:<id>` in `system:bootstrappers` and the
//! Secret's `auth-extra-groups`, as kube-apiserver's bootstrap-token authenticator makes it.

use base64::Engine;
use serde_json::Value;

use super::{AUTHENTICATED, UserInfo};
use crate::ApiServer;
use crate::resources;

pub const GROUP: &str = "system:bootstrappers";
const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";

/// `(id, secret)` when `token` has the bootstrap-token shape.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

fn field(secret: &Value, key: &str) -> Option<String> {
    let b64 = secret["data"][key].as_str()?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(raw).ok()
}

impl ApiServer {
    /// The user a bootstrap token names, if its Secret says it is valid now.
    pub async fn verify_bootstrap_token(&self, id: &str, token_secret: &str) -> Option<UserInfo> {
        let r = resources::find("", "v1", "secrets").expect("served");
        let (_, secret) = self
            .get(r, Some("kube-system"), &format!("bootstrap-token-{id}"))
            .await
            .ok()?;
        if secret["type"] != SECRET_TYPE
            || secret.pointer("/metadata/deletionTimestamp").is_some()
            || field(&secret, "token-id").as_deref() != Some(id)
            || field(&secret, "usage-bootstrap-authentication").as_deref() != Some("true")
        {
            return None;
        }
        // Compared without an early exit, so that timing says nothing of the secret.
        let held = field(&secret, "token-secret")?;
        if held.len() != token_secret.len()
            || held
                .bytes()
                .zip(token_secret.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                != 0
        {
            return None;
        }
        if let Some(exp) = field(&secret, "expiration") {
            let exp = chrono::DateTime::parse_from_rfc3339(&exp).ok()?;
            if exp <= chrono::Utc::now() {
                return None;
            }
        }
        let mut groups = vec![GROUP.to_string()];
        for g in field(&secret, "auth-extra-groups")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|g| g.starts_with("system:bootstrappers:"))
        {
            groups.push(g.to_string());
        }
        groups.push(AUTHENTICATED.to_string());
        Some(UserInfo {
            name: format!("system:bootstrap:{id}"),
            groups,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_bootstrap_shape_is_taken() {
        assert_eq!(
            super::parse("abcdef.0123456789abcdef"),
            Some(("abcdef", "0123456789abcdef"))
        );
        assert!(super::parse("abcdef.0123456789ABCDEF").is_none());
        assert!(super::parse("abcde.0123456789abcdef").is_none());
        assert!(super::parse("eyJhbGciOiJFUzI1NiJ9.e30.sig").is_none());
    }
}
