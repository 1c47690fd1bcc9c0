//! Join tokens: a bootstrap token together with the hash of the cluster CA it joins,
//! `K10<sha256 of the CA's SubjectPublicKeyInfo, hex>::<id>.<secret>` as k3s writes them (the
//! hash is kubeadm's `--discovery-token-ca-cert-hash sha256:<hash>`). A joining node fetches the
//! CA without trusting it (the API server presents it after its serving certificate) and goes
//! on only when its hash is the token's. `skiff server` keeps one join token in its data
//! directory, made on first start and reused while its Secret is there.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::Context;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use sha2::Digest;

/// The file under the server's data directory that holds its join token.
const JOIN_TOKEN_FILE: &str = "join-token";
const PREFIX: &str = "K10";

/// A bootstrap token and the hash of the CA of the cluster it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// sha256 of the CA certificate's SubjectPublicKeyInfo, lowercase hex.
    pub ca_hash: String,
    /// `<id>.<secret>`, the bootstrap token the API server authenticates.
    pub bootstrap: String,
}

impl JoinToken {
    /// The token id (the `<id>` of `bootstrap-token-<id>`).
    pub fn id(&self) -> &str {
        self.bootstrap
            .split_once('.')
            .map(|(id, _)| id)
            .unwrap_or_default()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}::{}", self.ca_hash, self.bootstrap)
    }
}

impl FromStr for JoinToken {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "expected K10<sha256 of the CA, 64 hex digits>::<id>.<secret>";
        let (hash, bootstrap) = s
            .trim()
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once("::"))
            .ok_or_else(|| format!("the join token is malformed: {expected}"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "the join token's CA hash is not 64 hex digits: {expected}"
            ));
        }
        let valid_part = |p: &str, len: usize| {
            p.len() == len
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        match bootstrap.split_once('.') {
            Some((id, secret)) if valid_part(id, 6) && valid_part(secret, 16) => Ok(JoinToken {
                ca_hash: hash.to_ascii_lowercase(),
                bootstrap: bootstrap.to_string(),
            }),
            _ => Err(format!(
                "the join token's bootstrap token is not <6 of [a-z0-9]>.<16 of [a-z0-9]>: {expected}"
            )),
        }
    }
}

/// The hash of a certificate (DER): sha256 of its SubjectPublicKeyInfo, lowercase hex.
pub fn spki_hash(der: &[u8]) -> anyhow::Result<String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).context("parsing the CA certificate")?;
    let digest = sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// The hash of the first certificate of a PEM file.
pub fn ca_hash_of_file(ca_crt: &Path) -> anyhow::Result<String> {
    let pem = std::fs::read(ca_crt).with_context(|| format!("reading {}", ca_crt.display()))?;
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{}: not a PEM certificate: {e}", ca_crt.display()))?;
    spki_hash(&block.contents)
}

/// The server's join token: the one kept in `data_dir` while its Secret is there and has not
/// expired, otherwise a new one (without expiry, as k3s's server token), kept for next time.
pub async fn server_token(client: Client, data_dir: &Path) -> anyhow::Result<JoinToken> {
    let ca_hash = ca_hash_of_file(&data_dir.join("ca.crt"))?;
    let path = data_dir.join(JOIN_TOKEN_FILE);
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(kept) = text.parse::<JoinToken>()
        && kept.ca_hash == ca_hash
        && still_valid(client.clone(), kept.id()).await?
    {
        return Ok(kept);
    }
    let bootstrap = crate::token::create(client, None).await?;
    let token = JoinToken { ca_hash, bootstrap };
    skiff_apiserver::pki::write(&path, format!("{token}\n").as_bytes(), true)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

/// Whether the token's Secret exists and has not expired.
async fn still_valid(client: Client, id: &str) -> anyhow::Result<bool> {
    let secrets: Api<Secret> = Api::namespaced(client, "kube-system");
    let Some(secret) = secrets
        .get_opt(&format!("bootstrap-token-{id}"))
        .await
        .context("reading the join token's Secret")?
    else {
        return Ok(false);
    };
    let expiration = secret
        .data
        .as_ref()
        .and_then(|d| d.get("expiration"))
        .and_then(|v| std::str::from_utf8(&v.0).ok())
        .map(|s| chrono::DateTime::parse_from_rfc3339(s).map(|t| t.to_utc()));
    Ok(match expiration {
        None => true,
        Some(Ok(t)) => t > chrono::Utc::now() + chrono::Duration::minutes(5),
        Some(Err(_)) => false,
    })
}

/// The URL an agent on another machine reaches the server at: the listening address, or this
/// machine's first address when it listens on all of them.
pub fn server_url(listen: std::net::SocketAddr) -> String {
    let ip = if listen.ip().is_unspecified() {
        skiff_kubelet::host::first_host_address().unwrap_or(listen.ip())
    } else {
        listen.ip()
    };
    std::net::SocketAddr::new(ip, listen.port()).to_string()
}

/// Prints the command that joins a node to the server serving on `listen` from `data_dir`.
pub async fn print_join_line(client: Client, data_dir: &Path, listen: std::net::SocketAddr) {
    match server_token(client, data_dir).await {
        Ok(token) => println!(
            "join a node: skiff agent --server https://{} --token {token}",
            server_url(listen)
        ),
        Err(e) => tracing::error!("no join token: {e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData;

    const HASH: &str = "8f4c5e0ad5b14e0c8e07d3bb1de9b3f7f4e1ac6a0d2b7c51f6a5f7e3c2d1b0a9";

    #[test]
    fn a_join_token_round_trips() {
        let s = format!("K10{HASH}::abcdef.0123456789abcdef");
        let t: JoinToken = s.parse().unwrap();
        assert_eq!(t.ca_hash, HASH);
        assert_eq!(t.id(), "abcdef");
        assert_eq!(t.to_string(), s);
    }

    #[test]
    fn malformed_join_tokens_are_refused_saying_what_is_wrong() {
        for (bad, says) in [
            ("abcdef.0123456789abcdef", "malformed"),
            ("K10abc::abcdef.0123456789abcdef", "64 hex"),
            (&format!("K10{HASH}::abcdef"), "bootstrap token"),
            (
                &format!("K10{HASH}::ABCDEF.0123456789abcdef"),
                "bootstrap token",
            ),
        ] {
            let err = bad.parse::<JoinToken>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn the_hash_is_of_the_public_key_info() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let hash = spki_hash(cert.der()).unwrap();
        let expected: String = sha2::Sha256::digest(key.subject_public_key_info())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hash, expected);
    }
}
