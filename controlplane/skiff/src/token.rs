//! `skiff token create`: a bootstrap token for a joining node — a random `<id>.<secret>` stored
//! as the `kube-system/bootstrap-token-<id>` Secret the API server authenticates it by, valid
//! for `--ttl`, in the group `system:bootstrappers:skiff:default-node-token` — printed as a join
//! token (with the CA's hash, [`crate::join`]).

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use rand::Rng;

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

pub fn random(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// `90s`, `30m`, `24h`, `7d`.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s}: expected a number and a unit (s, m, h, d), e.g. 24h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{s}: the unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err(format!("{s}: a token must live longer than 0s"));
    }
    Ok(Duration::from_secs(secs))
}

/// Creates the Secret, valid for `ttl` (for ever when `None`), and returns the token.
pub async fn create(client: kube::Client, ttl: Option<Duration>) -> anyhow::Result<String> {
    let (id, secret) = (random(6), random(16));
    let mut data = vec![
        ("token-id", id.clone()),
        ("token-secret", secret.clone()),
        ("usage-bootstrap-authentication", "true".into()),
        ("usage-bootstrap-signing", "true".into()),
        (
            "auth-extra-groups",
            "system:bootstrappers:skiff:default-node-token".into(),
        ),
    ];
    if let Some(ttl) = ttl {
        let expiration =
            chrono::Utc::now() + chrono::Duration::from_std(ttl).context("the ttl is too long")?;
        data.push((
            "expiration",
            expiration.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ));
    }
    let s = Secret {
        metadata: ObjectMeta {
            name: Some(format!("bootstrap-token-{id}")),
            namespace: Some("kube-system".into()),
            ..Default::default()
        },
        type_: Some("bootstrap.kubernetes.io/token".into()),
        string_data: Some(data.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client, "kube-system")
        .create(&PostParams::default(), &s)
        .await
        .context("creating the bootstrap-token Secret")?;
    Ok(format!("{id}.{secret}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("24h").unwrap(), Duration::from_secs(86400));
        assert!(parse_ttl("0h").is_err());
        assert!(parse_ttl("5y").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
