//! The node API's TLS: the serving certificate (from files, one the cluster signed through a CSR
//! and rotates, or else self-signed for the node's name and address) and the client check — a certificate from the client
//! CA is required for service; a client without one completes the handshake (and gets 401), one
//! with a certificate from another CA is refused in the handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("the client CA holds no certificate")]
    NoClientCa,
    #[error("self-signed serving certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Where the serving certificate and the client CA come from.
pub struct TlsOptions {
    /// Serving certificate chain and key files; both or neither (then self-signed).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The serving certificate chosen per handshake (one the cluster signed, rotated); it
    /// takes the place of the files and the self-signed one.
    pub resolver: Option<Arc<dyn rustls::server::ResolvesServerCert>>,
    pub client_ca: Vec<CertificateDer<'static>>,
    /// The names and addresses a self-signed certificate is made for.
    pub names: Vec<String>,
}

/// The certificates of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |detail: String| TlsError::File {
        path: path.to_path_buf(),
        detail,
    };
    CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(e.to_string()))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// The cluster CA of a kubeconfig (its current context's cluster), the default client CA.
pub async fn kubeconfig_ca(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use anyhow::Context;
    let kc = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .with_context(|| format!("kubeconfig {}", path.display()))?;
    Ok(cfg
        .root_cert
        .unwrap_or_default()
        .into_iter()
        .map(CertificateDer::from)
        .collect())
}

pub fn server_config(options: TlsOptions) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    if options.client_ca.is_empty() {
        return Err(TlsError::NoClientCa);
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in options.client_ca {
        roots
            .add(cert)
            .map_err(|e| TlsError::Config(format!("client CA: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier);
    let mut config = match options.resolver {
        Some(resolver) => builder.with_cert_resolver(resolver),
        None => {
            let (chain, key) = match (options.cert_file, options.key_file) {
                (Some(cert), Some(key)) => (read_certs(&cert)?, read_key(&key)?),
                (None, None) => {
                    let made = rcgen::generate_simple_self_signed(options.names)?;
                    (
                        vec![made.cert.der().clone()],
                        PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into()),
                    )
                }
                _ => {
                    return Err(TlsError::Config(
                        "--tls-cert-file and --tls-private-key-file go together".into(),
                    ));
                }
            };
            builder
                .with_single_cert(chain, key)
                .map_err(|e| TlsError::Config(e.to_string()))?
        }
    };
    // HTTP/1.1 only: exec, attach and port-forward are HTTP/1.1 upgrades.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
