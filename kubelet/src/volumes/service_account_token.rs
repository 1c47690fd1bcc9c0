//! Bound service-account tokens for projected `serviceAccountToken` sources, as the kubelet's
//! token manager: a TokenRequest bound to the pod (name and uid) for the source's audience and
//! lifetime, kept per pod and fetched again once 80% of its lifetime has passed (or after 24
//! hours), so the file in the volume is replaced well before the token expires.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount, ServiceAccountTokenProjection, Volume};
use kube::api::PostParams;
use kube::{Api, Client};

use super::VolumeError;

/// The API server's default and minimum lifetimes (seconds).
const DEFAULT_EXPIRATION: i64 = 3600;
const MIN_EXPIRATION: i64 = 600;
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A source's audience ("" for the API server's) and lifetime in seconds.
pub type TokenKey = (String, i64);

/// The tokens of one pod's volumes.
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: BTreeMap<TokenKey, (String, Instant, Duration)>,
}

/// The (audience, lifetime) a source asks for.
pub fn key(t: &ServiceAccountTokenProjection) -> TokenKey {
    (
        t.audience.clone().unwrap_or_default(),
        t.expiration_seconds
            .unwrap_or(DEFAULT_EXPIRATION)
            .max(MIN_EXPIRATION),
    )
}

/// The (audience, lifetime) of every serviceAccountToken source of the pod's volumes.
pub fn wanted(volumes: &[Volume]) -> Vec<TokenKey> {
    let mut out: Vec<TokenKey> = Vec::new();
    for p in volumes.iter().flat_map(|v| v.projected.iter()) {
        for s in p.sources.iter().flatten() {
            if let Some(t) = &s.service_account_token {
                let key = key(t);
                if !out.contains(&key) {
                    out.push(key);
                }
            }
        }
    }
    out
}

fn due(fetched: Instant, lifetime: Duration) -> bool {
    let age = fetched.elapsed();
    age >= lifetime.mul_f64(0.8) || age >= MAX_AGE
}

impl TokenCache {
    /// The tokens the pod's volumes want: cached ones while fresh, new ones otherwise.
    pub async fn tokens(
        &mut self,
        client: &Client,
        pod: &Pod,
        volumes: &[Volume],
    ) -> Result<BTreeMap<TokenKey, String>, VolumeError> {
        let want = wanted(volumes);
        self.tokens.retain(|k, _| want.contains(k));
        let mut out = BTreeMap::new();
        for key in want {
            let fresh = self
                .tokens
                .get(&key)
                .filter(|(_, at, lifetime)| !due(*at, *lifetime));
            let token = match fresh {
                Some((t, _, _)) => t.clone(),
                None => {
                    let (t, lifetime) = request(client, pod, &key).await?;
                    self.tokens
                        .insert(key.clone(), (t.clone(), Instant::now(), lifetime));
                    t
                }
            };
            out.insert(key, token);
        }
        Ok(out)
    }
}

/// A TokenRequest for the pod's service account, bound to the pod.
async fn request(
    client: &Client,
    pod: &Pod,
    (audience, expiration): &TokenKey,
) -> Result<(String, Duration), VolumeError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let sa = spec
        .service_account_name
        .or(spec.service_account)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: if audience.is_empty() {
                vec![]
            } else {
                vec![audience.clone()]
            },
            expiration_seconds: Some(*expiration),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let resp = api
        .create_token_request(&sa, &PostParams::default(), &req)
        .await
        .map_err(|e| {
            VolumeError::Io(format!(
                "requesting a token for service account {ns}/{sa}: {e}"
            ))
        })?;
    let token = resp
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            VolumeError::Io(format!("the token request for {ns}/{sa} returned no token"))
        })?;
    Ok((token, Duration::from_secs(*expiration as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_due_at_80_percent_of_their_lifetime() {
        let lifetime = Duration::from_secs(100);
        assert!(!due(Instant::now(), lifetime));
        let old = Instant::now() - Duration::from_secs(81);
        assert!(due(old, lifetime));
    }

    #[test]
    fn wanted_reads_audience_and_lifetime_with_defaults() {
        let v: Volume = serde_json::from_value(serde_json::json!({"name": "t", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token"}},
            {"serviceAccountToken": {"path": "vault", "audience": "vault", "expirationSeconds": 60}},
        ]}}))
        .unwrap();
        assert_eq!(
            wanted(&[v]),
            vec![(String::new(), 3600), ("vault".to_string(), 600)]
        );
    }
}
