//! A joining node's trust in its server, as kubeadm's join makes it: the cluster CA fetched from
//! the server without trusting it and checked against the join token's hash, and a bootstrap
//! kubeconfig (that CA and the bootstrap token). The kubelet then does the rest as its TLS
//! bootstrap does: trades the token for a node client certificate (`system:node:<name>` in
//! `system:nodes`) through a CertificateSigningRequest to
//! `kubernetes.io/kube-apiserver-client-kubelet`, which the server approves for bootstrappers,
//! and renews it before it expires (`--rotate-certificates`). The node's kubeconfig is reused
//! while it is for the same server and CA.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::join::{JoinToken, spki_hash};

/// How long a server that cannot be reached or does not sign is tried again.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

/// The files of a node's credentials under its data directory.
pub struct CredentialFiles {
    pub bootstrap_kubeconfig: PathBuf,
    pub kubeconfig: PathBuf,
    /// The kubelet's `--cert-dir`, where its certificates are kept.
    pub cert_dir: PathBuf,
}

impl CredentialFiles {
    pub fn new(data_dir: &Path) -> CredentialFiles {
        CredentialFiles {
            bootstrap_kubeconfig: data_dir.join("bootstrap.kubeconfig"),
            kubeconfig: data_dir.join("kubelet.kubeconfig"),
            cert_dir: data_dir.join("pki"),
        }
    }
}

/// Makes the node ready for the kubelet's TLS bootstrap: its kubeconfig is kept when it is for
/// this server and CA; otherwise it and the certificates kept for another cluster are removed,
/// and a bootstrap kubeconfig is written with the CA checked against the token.
pub async fn ensure(
    files: &CredentialFiles,
    server: &str,
    token: &JoinToken,
) -> anyhow::Result<()> {
    match for_this_cluster(&files.kubeconfig, server, &token.ca_hash) {
        Ok(()) => {
            tracing::info!(kubeconfig = %files.kubeconfig.display(), "reusing the node's credentials");
            return Ok(());
        }
        Err(why) => tracing::info!("asking for node credentials: {why:#}"),
    }
    // A server still starting or briefly unreachable is waited for; a CA that does not match
    // is refused at once.
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    let ca_pem = loop {
        match fetch_ca(server, &token.ca_hash).await {
            Ok(ca) => break ca,
            Err(e) if e.downcast_ref::<CaMismatch>().is_some() => return Err(e),
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(e.context(format!("joining {server}: gave up after {JOIN_TIMEOUT:?}")));
            }
            Err(e) => {
                tracing::warn!("joining {server}: {e:#}; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    forget_other_cluster(files)?;
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let bootstrap = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: bootstrap\n  user:\n    token: {}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: bootstrap\ncurrent-context: skiff\n",
        b64(ca_pem.as_bytes()),
        token.bootstrap
    );
    skiff_apiserver::pki::write(&files.bootstrap_kubeconfig, bootstrap.as_bytes(), true)
        .with_context(|| format!("writing {}", files.bootstrap_kubeconfig.display()))
}

/// Removes the kubeconfig and the kubelet's client certificates, which belong to another
/// server or CA (or are missing), so that the kubelet asks this cluster for new ones.
fn forget_other_cluster(files: &CredentialFiles) -> anyhow::Result<()> {
    match std::fs::remove_file(&files.kubeconfig) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", files.kubeconfig.display()));
        }
        _ => {}
    }
    skiff_kubelet::client_certificate::client_store(&files.cert_dir).clear()?;
    Ok(())
}

/// The CA presented by the server is not the one the join token names.
#[derive(Debug, thiserror::Error)]
#[error(
    "the CA of {server} does not match the join token: the token expects CA hash {expected}, the server's CA hash is {presented}; refusing to join"
)]
pub struct CaMismatch {
    server: String,
    expected: String,
    presented: String,
}

/// Why the kubeconfig at `path` cannot be used: missing, or for another server or CA. (Its
/// certificate's validity is the kubelet's to check: it bootstraps again when it expired.)
fn for_this_cluster(path: &Path, server: &str, ca_hash: &str) -> anyhow::Result<()> {
    let kc =
        kube::config::Kubeconfig::read_from(path).with_context(|| format!("{}", path.display()))?;
    let cluster = kc
        .current_context
        .as_ref()
        .and_then(|name| kc.contexts.iter().find(|c| &c.name == name))
        .and_then(|c| c.context.as_ref())
        .and_then(|c| kc.clusters.iter().find(|n| n.name == c.cluster))
        .and_then(|n| n.cluster.as_ref())
        .with_context(|| format!("{}: no cluster for the current context", path.display()))?;
    if cluster.server.as_deref() != Some(server) {
        bail!("{} is for another server", path.display());
    }
    let ca_data = cluster
        .certificate_authority_data
        .as_deref()
        .with_context(|| format!("{}: no certificate-authority-data", path.display()))?;
    let pem = base64::engine::general_purpose::STANDARD.decode(ca_data.trim())?;
    let (_, ca) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{}: the CA is not a PEM certificate: {e}", path.display()))?;
    if spki_hash(&ca.contents)? != ca_hash {
        bail!("{} is for another cluster CA", path.display());
    }
    Ok(())
}

/// Records the certificates a server presents and accepts them: the caller trusts none of
/// them until one matches the join token's hash.
#[derive(Debug)]
struct RecordChain {
    chain: Mutex<Vec<CertificateDer<'static>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for RecordChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        *self.chain.lock().expect("not poisoned") = chain;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `https://host:port` → (`host:port` to connect to, host for TLS).
fn host_port(server: &str) -> anyhow::Result<(String, String)> {
    let rest = server
        .strip_prefix("https://")
        .with_context(|| format!("--server {server}: expected https://HOST:PORT"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        bail!("--server {server}: expected https://HOST:PORT");
    }
    let has_port = match authority.rfind(']') {
        Some(close) => authority[close..].contains(':'),
        None => authority.contains(':'),
    };
    let host = match authority.rfind(':') {
        Some(colon) if has_port => &authority[..colon],
        _ => authority,
    };
    let addr = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:6443")
    };
    Ok((
        addr,
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    ))
}

/// The cluster CA (PEM) among the certificates the server presents, when one has the token's
/// hash; otherwise an error naming both.
pub async fn fetch_ca(server: &str, ca_hash: &str) -> anyhow::Result<String> {
    let (addr, host) = host_port(server)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(RecordChain {
        chain: Mutex::new(Vec::new()),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS configuration")?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(host.clone())
        .with_context(|| format!("--server {server}: {host} is not a host name or address"))?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(&addr).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    };
    tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {server}: timed out"))?
        .with_context(|| format!("connecting to {server}"))?;
    let chain = recorder.chain.lock().expect("not poisoned").clone();
    let mut presented = Vec::new();
    // The serving certificate is never the CA: only what follows it is a candidate.
    for cert in chain.iter().skip(1) {
        let hash = spki_hash(cert)?;
        if hash == ca_hash {
            return Ok(pem("CERTIFICATE", cert));
        }
        presented.push(hash);
    }
    if presented.is_empty() {
        bail!(
            "{server} presented no CA certificate to check against the join token's CA hash {ca_hash}"
        );
    }
    Err(CaMismatch {
        server: server.to_string(),
        expected: ca_hash.to_string(),
        presented: presented.join(", "),
    }
    .into())
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kubeconfig for `server` with a CA and a client certificate valid until `not_after`;
    /// the CA's hash.
    fn kubeconfig(server: &str, not_after: time::OffsetDateTime) -> (String, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.not_after = not_after;
        let cert = p.signed_by(&key, &issuer).unwrap();
        let text = skiff_apiserver::pki::kubeconfig(
            server,
            &ca_cert.pem(),
            "system:node:n1",
            &cert.pem(),
            &key.serialize_pem(),
        );
        (text, spki_hash(ca_cert.der()).unwrap())
    }

    #[test]
    fn node_credentials_are_reused_only_for_this_server_and_ca() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelet.kubeconfig");
        let server = "https://10.0.0.1:6443";
        assert!(for_this_cluster(&path, server, "x").is_err(), "missing");
        let in_a_day = time::OffsetDateTime::now_utc() + time::Duration::days(1);
        let (text, hash) = kubeconfig(server, in_a_day);
        std::fs::write(&path, &text).unwrap();
        for_this_cluster(&path, server, &hash).unwrap();
        let other = for_this_cluster(&path, "https://10.0.0.2:6443", &hash).unwrap_err();
        assert!(format!("{other}").contains("another server"), "{other}");
        let other_ca = for_this_cluster(&path, server, &"0".repeat(64)).unwrap_err();
        assert!(
            format!("{other_ca}").contains("another cluster CA"),
            "{other_ca}"
        );
        // As the kubelet's TLS bootstrap writes it: the CA as a folded YAML scalar.
        let folded = text.replace(
            "certificate-authority-data: ",
            "certificate-authority-data: >-\n      ",
        );
        std::fs::write(&path, folded).unwrap();
        for_this_cluster(&path, server, &hash).unwrap();
    }

    #[test]
    fn server_urls() {
        assert_eq!(
            host_port("https://10.0.0.1:6443").unwrap(),
            ("10.0.0.1:6443".into(), "10.0.0.1".into())
        );
        assert_eq!(
            host_port("https://example.org").unwrap(),
            ("example.org:6443".into(), "example.org".into())
        );
        assert_eq!(
            host_port("https://[fd00::1]:7443/").unwrap(),
            ("[fd00::1]:7443".into(), "fd00::1".into())
        );
        assert!(host_port("http://10.0.0.1:6443").is_err());
    }
}
