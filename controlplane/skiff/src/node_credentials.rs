//! A joining node's credentials, as kubeadm's and the kubelet's TLS bootstrap make them: the
//! cluster CA fetched from the server without trusting it and checked against the join token's
//! hash, a bootstrap kubeconfig (that CA and the bootstrap token), then a node client
//! certificate (`system:node:<name>` in `system:nodes`) asked for with a
//! CertificateSigningRequest to `kubernetes.io/kube-apiserver-client-kubelet`, which the server
//! approves for bootstrappers. The node's kubeconfig is written atomically and reused while its
//! certificate is valid for the same CA and server.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::join::{JoinToken, spki_hash};

const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// How long the server gets to sign the node's certificate.
const SIGNING_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server that cannot be reached or does not sign is tried again.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);
/// A certificate valid for less than this is renewed before the node starts.
const RENEW_BEFORE: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// The files of a node's credentials under its data directory.
pub struct CredentialFiles {
    pub bootstrap_kubeconfig: PathBuf,
    pub kubeconfig: PathBuf,
}

impl CredentialFiles {
    pub fn new(data_dir: &Path) -> CredentialFiles {
        CredentialFiles {
            bootstrap_kubeconfig: data_dir.join("bootstrap.kubeconfig"),
            kubeconfig: data_dir.join("kubelet.kubeconfig"),
        }
    }
}

/// The node's kubeconfig: the one on disk when it is still good for this server and CA,
/// otherwise new credentials through the bootstrap token.
pub async fn ensure(
    files: &CredentialFiles,
    server: &str,
    token: &JoinToken,
    node_name: &str,
) -> anyhow::Result<()> {
    match still_good(&files.kubeconfig, server, &token.ca_hash) {
        Ok(()) => {
            tracing::info!(kubeconfig = %files.kubeconfig.display(), "reusing the node's credentials");
            return Ok(());
        }
        Err(why) => tracing::info!("asking for node credentials: {why:#}"),
    }
    // A server still starting or briefly unreachable is waited for; a CA that does not match
    // is refused at once.
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    loop {
        match join(files, server, token, node_name).await {
            Ok(()) => return Ok(()),
            Err(e) if e.downcast_ref::<CaMismatch>().is_some() => return Err(e),
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(e.context(format!("joining {server}: gave up after {JOIN_TIMEOUT:?}")));
            }
            Err(e) => {
                tracing::warn!("joining {server}: {e:#}; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
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

/// The CA checked, the bootstrap kubeconfig written, the certificate asked for and written.
async fn join(
    files: &CredentialFiles,
    server: &str,
    token: &JoinToken,
    node_name: &str,
) -> anyhow::Result<()> {
    let ca_pem = fetch_ca(server, &token.ca_hash).await?;
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let bootstrap = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: bootstrap\n  user:\n    token: {}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: bootstrap\ncurrent-context: skiff\n",
        b64(ca_pem.as_bytes()),
        token.bootstrap
    );
    write_private(&files.bootstrap_kubeconfig, &bootstrap)?;
    let client = skiff_client::client(&files.bootstrap_kubeconfig)
        .await
        .context("the bootstrap kubeconfig")?;
    let (cert_pem, key_pem) = request_client_certificate(client, node_name).await?;
    let kubeconfig = skiff_apiserver::pki::kubeconfig(
        server,
        &ca_pem,
        &format!("system:node:{node_name}"),
        &cert_pem,
        &key_pem,
    );
    write_private(&files.kubeconfig, &kubeconfig)?;
    tracing::info!(kubeconfig = %files.kubeconfig.display(), "node credentials issued");
    Ok(())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    skiff_apiserver::pki::write(path, text.as_bytes(), true)
        .with_context(|| format!("writing {}", path.display()))
}

/// Why the kubeconfig at `path` cannot be used (missing, for another server or CA, expiring).
fn still_good(path: &Path, server: &str, ca_hash: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(str::trim)
            .with_context(|| format!("{}: no {name}", path.display()))
    };
    if field("server:")? != server {
        bail!("{} is for another server", path.display());
    }
    let pem_der = |b64: &str| -> anyhow::Result<Vec<u8>> {
        let pem = base64::engine::general_purpose::STANDARD.decode(b64)?;
        let (_, block) = x509_parser::pem::parse_x509_pem(&pem)
            .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
        Ok(block.contents)
    };
    let ca = pem_der(field("certificate-authority-data:")?)?;
    if spki_hash(&ca)? != ca_hash {
        bail!("{} is for another cluster CA", path.display());
    }
    let cert = pem_der(field("client-certificate-data:")?)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&cert)
        .map_err(|e| anyhow::anyhow!("{}: the client certificate: {e}", path.display()))?;
    let not_after = chrono::DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
        .context("the certificate's expiry")?;
    if not_after - RENEW_BEFORE < chrono::Utc::now() {
        bail!(
            "the certificate in {} expires at {not_after}",
            path.display()
        );
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

/// Asks for a node client certificate with a new key; returns (certificate, key) as PEM.
async fn request_client_certificate(
    client: kube::Client,
    node_name: &str,
) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate().context("generating the node's key")?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("system:node:{node_name}"),
    );
    let request = params
        .serialize_request(&key)
        .context("making the certificate request")?
        .pem()
        .context("encoding the certificate request")?;
    let name = format!("node-csr-{node_name}-{}", crate::token::random(5));
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.into_bytes()),
            signer_name: KUBELET_CLIENT_SIGNER.into(),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            ..Default::default()
        },
        status: None,
    };
    let csrs: Api<CertificateSigningRequest> = Api::all(client);
    csrs.create(&PostParams::default(), &csr)
        .await
        .with_context(|| format!("creating CertificateSigningRequest {name}"))?;
    tracing::info!(csr = %name, "asked for the node's client certificate");
    let deadline = tokio::time::Instant::now() + SIGNING_TIMEOUT;
    loop {
        let got = csrs
            .get(&name)
            .await
            .with_context(|| format!("reading CertificateSigningRequest {name}"))?;
        let status = got.status.unwrap_or_default();
        if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
            let cert = String::from_utf8(cert.0).context("the issued certificate is not PEM")?;
            return Ok((cert, key.serialize_pem()));
        }
        if let Some(c) = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True")
        {
            bail!(
                "CertificateSigningRequest {name} was {}: {}",
                c.type_.to_lowercase(),
                c.message.unwrap_or_default()
            );
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "CertificateSigningRequest {name} was not signed within {}s (is it approved?)",
                SIGNING_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    fn node_credentials_are_reused_only_while_good_for_this_server_and_ca() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelet.kubeconfig");
        let server = "https://10.0.0.1:6443";
        assert!(still_good(&path, server, "x").is_err(), "missing");
        let in_a_day = time::OffsetDateTime::now_utc() + time::Duration::days(1);
        let (text, hash) = kubeconfig(server, in_a_day);
        std::fs::write(&path, text).unwrap();
        still_good(&path, server, &hash).unwrap();
        let other = still_good(&path, "https://10.0.0.2:6443", &hash).unwrap_err();
        assert!(format!("{other}").contains("another server"), "{other}");
        let other_ca = still_good(&path, server, &"0".repeat(64)).unwrap_err();
        assert!(
            format!("{other_ca}").contains("another cluster CA"),
            "{other_ca}"
        );
        let soon = time::OffsetDateTime::now_utc() + time::Duration::minutes(5);
        let (text, hash) = kubeconfig(server, soon);
        std::fs::write(&path, text).unwrap();
        let expiring = still_good(&path, server, &hash).unwrap_err();
        assert!(format!("{expiring}").contains("expires"), "{expiring}");
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
