//! Service-account tokens: JWTs (ES256) signed by a key made on first start (`sa.key` in the
//! data directory), issued by TokenRequest (`serviceaccounts/token`: audiences, expiry, bound to
//! a Pod or Secret) and accepted as bearer tokens while the service account — and the object the
//! token is bound to — still exist with the same uid. The issuer is discoverable as OIDC asks:
//! `/.well-known/openid-configuration` and `/openid/v1/jwks`.
//!
//! Written on `ring` (the TLS stack's crypto) rather than a JWT crate: the JWT crates bring a
//! second crypto backend, and ES256 compact JWS is the few lines below.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

use super::{AUTHENTICATED, UserInfo};
use crate::ApiServer;
use crate::object::meta_str;
use crate::pki::{PkiError, write};
use crate::resources;
use crate::status::{ApiError, ApiResult, FieldError, Reason};

/// kube-apiserver's usual `--service-account-issuer`; also the default audience, so a token
/// asked for without audiences is one for the API server.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const KEY_FILE: &str = "sa.key";
const DEFAULT_EXPIRY: i64 = 3600;
const MIN_EXPIRY: i64 = 600;
const MAX_EXPIRY: i64 = 1 << 32;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("invalid signature")]
    Signature,
    #[error("token is not issued by {ISSUER}")]
    Issuer,
    #[error("token has expired")]
    Expired,
    #[error("token audiences {0:?} are invalid for the target audiences")]
    Audience(Vec<String>),
    #[error("{0}")]
    Invalidated(String),
    #[error("no service-account issuer")]
    NoIssuer,
}

/// The signing key and what the discovery documents say about it.
pub struct TokenIssuer {
    key: EcdsaKeyPair,
    kid: String,
    /// Where clients reach this server, for `jwks_uri`.
    server_url: String,
}

/// The service-account signing key (PEM) in `dir`, made when missing.
pub fn ensure_key(dir: &Path) -> Result<String, PkiError> {
    let path = dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(p) => Ok(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(path = %path.display(), "creating the service-account signing key");
            let pem = rcgen::KeyPair::generate()?.serialize_pem();
            write(&path, pem.as_bytes(), true)?;
            Ok(pem)
        }
        Err(source) => Err(PkiError::Io { path, source }),
    }
}

impl TokenIssuer {
    /// Loads `sa.key` from `dir`, making it on first start.
    pub fn load_or_create(dir: &Path, server_url: &str) -> Result<Self, PkiError> {
        let path = dir.join(KEY_FILE);
        let pem = ensure_key(dir)?;
        let pkcs8 = rcgen::KeyPair::from_pem(&pem)?.serialize_der();
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|e| PkiError::Pem {
            path: path.clone(),
            detail: format!("not a P-256 key: {e}"),
        })?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        Ok(Self {
            kid: B64.encode(digest.as_ref()),
            key,
            server_url: server_url.to_string(),
        })
    }

    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("ECDSA signing does not fail with a system RNG");
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }

    /// The claims of a token this issuer signed that has not expired.
    pub fn verify(&self, token: &str, now: i64) -> Result<Value, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let decode = |p: &str| B64.decode(p).map_err(|_| TokenError::Malformed);
        let header: Value =
            serde_json::from_slice(&decode(h)?).map_err(|_| TokenError::Malformed)?;
        if header["alg"] != "ES256" {
            return Err(TokenError::Signature);
        }
        signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        )
        .verify(format!("{h}.{c}").as_bytes(), &decode(s)?)
        .map_err(|_| TokenError::Signature)?;
        let claims: Value =
            serde_json::from_slice(&decode(c)?).map_err(|_| TokenError::Malformed)?;
        if claims["iss"] != ISSUER {
            return Err(TokenError::Issuer);
        }
        if claims["exp"].as_i64().is_none_or(|exp| exp <= now)
            || claims["nbf"].as_i64().is_some_and(|nbf| nbf > now + 60)
        {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// `/openid/v1/jwks`.
    pub fn jwks(&self) -> Value {
        // An uncompressed P-256 point: 0x04, then x and y, 32 bytes each.
        let point = self.key.public_key().as_ref();
        json!({"keys": [{
            "use": "sig", "kty": "EC", "kid": self.kid, "crv": "P-256", "alg": "ES256",
            "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65]),
        }]})
    }

    /// `/.well-known/openid-configuration`.
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": ISSUER,
            "jwks_uri": format!("{}/openid/v1/jwks", self.server_url),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

impl ApiServer {
    fn issuer(&self) -> Result<&TokenIssuer, TokenError> {
        self.tokens.get().ok_or(TokenError::NoIssuer)
    }

    /// The uid of `kind` `ns/name` when it exists and is not past its deletion.
    async fn live_uid(&self, plural: &str, ns: &str, name: &str, now: i64) -> Option<String> {
        let r = resources::find("", "v1", plural)?;
        let (_, o) = self.get(r, Some(ns), name).await.ok()?;
        let deleted = o
            .pointer("/metadata/deletionTimestamp")
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| t.timestamp() <= now);
        (!deleted).then(|| meta_str(&o, "uid").unwrap_or_default().to_string())
    }

    /// The service account a bearer token names, if the token is valid for one of `audiences`
    /// (the API server's own when empty).
    pub async fn verify_token(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<UserInfo, TokenError> {
        let now = chrono::Utc::now().timestamp();
        let claims = self.issuer()?.verify(token, now)?;
        let aud = match &claims["aud"] {
            Value::String(s) => vec![s.clone()],
            v => strings(v),
        };
        let wanted = if audiences.is_empty() {
            vec![ISSUER.to_string()]
        } else {
            audiences.to_vec()
        };
        if !aud.iter().any(|a| wanted.contains(a)) {
            return Err(TokenError::Audience(aud));
        }
        let k = &claims["kubernetes.io"];
        let ns = k["namespace"].as_str().ok_or(TokenError::Malformed)?;
        let sa = k["serviceaccount"]["name"]
            .as_str()
            .ok_or(TokenError::Malformed)?;
        let sa_uid = k["serviceaccount"]["uid"].as_str().unwrap_or_default();
        let gone = |what: String| TokenError::Invalidated(format!("{what} no longer exists"));
        if self
            .live_uid("serviceaccounts", ns, sa, now)
            .await
            .as_deref()
            != Some(sa_uid)
        {
            return Err(gone(format!("service account {ns}/{sa}")));
        }
        let mut extra = std::collections::BTreeMap::new();
        for (plural, kind) in [("pods", "pod"), ("secrets", "secret")] {
            let bound = &k[kind];
            if let Some(name) = bound["name"].as_str() {
                let uid = bound["uid"].as_str().unwrap_or_default();
                if self.live_uid(plural, ns, name, now).await.as_deref() != Some(uid) {
                    return Err(gone(format!("{kind} {ns}/{name}")));
                }
                if kind == "pod" {
                    extra.insert(
                        "authentication.kubernetes.io/pod-name".to_string(),
                        vec![name.to_string()],
                    );
                    extra.insert(
                        "authentication.kubernetes.io/pod-uid".to_string(),
                        vec![uid.to_string()],
                    );
                }
            }
        }
        if let Some(jti) = claims["jti"].as_str() {
            extra.insert(
                "authentication.kubernetes.io/credential-id".to_string(),
                vec![format!("JTI={jti}")],
            );
        }
        Ok(UserInfo {
            name: format!("system:serviceaccount:{ns}:{sa}"),
            uid: sa_uid.to_string(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                AUTHENTICATED.into(),
            ],
            extra,
        })
    }

    /// `POST …/serviceaccounts/NAME/token`: a TokenRequest answered with a signed token.
    pub async fn token_request(&self, ns: &str, name: &str, req: &Value) -> ApiResult<Value> {
        let sar = resources::find("", "v1", "serviceaccounts").expect("served");
        let (_, sa) = self.get(sar, Some(ns), name).await?;
        let issuer = self
            .issuer()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let invalid = |errs: Vec<FieldError>| ApiError {
            reason: Reason::Invalid,
            message: format!(
                "TokenRequest.authentication.k8s.io {name:?} is invalid: {}",
                errs.iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            details: None,
        };
        let spec = &req["spec"];
        let mut audiences = strings(&spec["audiences"]);
        if audiences.is_empty() {
            audiences.push(ISSUER.to_string());
        }
        let expiry = spec["expirationSeconds"].as_i64().unwrap_or(DEFAULT_EXPIRY);
        if expiry < MIN_EXPIRY {
            return Err(invalid(vec![FieldError::invalid(
                "spec.expirationSeconds",
                &json!(expiry),
                "may not specify a duration less than 10 minutes",
            )]));
        }
        if expiry > MAX_EXPIRY {
            return Err(invalid(vec![FieldError::invalid(
                "spec.expirationSeconds",
                &json!(expiry),
                "may not specify a duration larger than 2^32 seconds",
            )]));
        }
        let now = chrono::Utc::now().timestamp();
        let mut private = json!({
            "namespace": ns,
            "serviceaccount": {"name": name, "uid": meta_str(&sa, "uid").unwrap_or_default()},
        });
        let bound = &spec["boundObjectRef"];
        if let Some(kind) = bound["kind"].as_str() {
            let (plural, claim) = match kind {
                "Pod" => ("pods", "pod"),
                "Secret" => ("secrets", "secret"),
                other => {
                    return Err(invalid(vec![FieldError::not_supported(
                        "spec.boundObjectRef.kind",
                        &json!(other),
                        &["Pod", "Secret"],
                    )]));
                }
            };
            let obj_name = bound["name"].as_str().unwrap_or_default();
            let r = resources::find("", "v1", plural).expect("served");
            let (_, o) = self.get(r, Some(ns), obj_name).await?;
            let uid = meta_str(&o, "uid").unwrap_or_default();
            if let Some(want) = bound["uid"].as_str().filter(|u| !u.is_empty())
                && want != uid
            {
                return Err(ApiError::conflict(
                    r,
                    obj_name,
                    &format!(
                        "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
                    ),
                ));
            }
            private[claim] = json!({"name": obj_name, "uid": uid});
        }
        let exp = now + expiry;
        let claims = json!({
            "aud": audiences, "exp": exp, "iat": now, "nbf": now, "iss": ISSUER,
            "jti": uuid::Uuid::new_v4().to_string(),
            "sub": format!("system:serviceaccount:{ns}:{name}"),
            "kubernetes.io": private,
        });
        let expires = chrono::DateTime::from_timestamp(exp, 0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut spec = spec.clone();
        if !spec.is_object() {
            spec = json!({});
        }
        spec["audiences"] = json!(audiences);
        spec["expirationSeconds"] = json!(expiry);
        Ok(json!({
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": skiff_k8s::time::now().to_string()},
            "spec": spec,
            "status": {"token": issuer.sign(&claims), "expirationTimestamp": expires},
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_tampering_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = TokenIssuer::load_or_create(dir.path(), "https://127.0.0.1:6443").unwrap();
        let claims = json!({"iss": ISSUER, "exp": 2000, "sub": "x"});
        let t = issuer.sign(&claims);
        assert_eq!(issuer.verify(&t, 1000).unwrap()["sub"], "x");
        assert!(matches!(issuer.verify(&t, 3000), Err(TokenError::Expired)));
        let forged = format!(
            "{}.{}.{}",
            t.split('.').next().unwrap(),
            B64.encode(json!({"iss": ISSUER, "exp": 2000, "sub": "admin"}).to_string()),
            t.rsplit('.').next().unwrap()
        );
        assert!(matches!(
            issuer.verify(&forged, 1000),
            Err(TokenError::Signature)
        ));
        // The same key after a restart.
        let again = TokenIssuer::load_or_create(dir.path(), "https://127.0.0.1:6443").unwrap();
        assert!(again.verify(&t, 1000).is_ok());
        assert_eq!(
            again.jwks()["keys"][0]["kid"],
            issuer.jwks()["keys"][0]["kid"]
        );
    }
}
