//! The node API's serving certificate from the cluster (`--rotate-server-certificates`), as the
//! kubelet's serving certificate manager gets it: a CSR for `kubernetes.io/kubelet-serving`
//! naming only the node's own name and address (which the cluster approves automatically for
//! the node's own credentials), kept in `--cert-dir` as `kubelet-server-current.pem` and renewed
//! before it expires. The TLS server takes the newest certificate at each handshake; until the
//! first is signed, handshakes fail, as the kubelet's do.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use kube::Client;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use skiff_client::certificates::{CertificateRequest, request_certificate};

use crate::certificate_rotation::SIGNING_WAIT;
use crate::certificate_store::{CertificateStore, StoredPair};

/// The serving certificate in use, swapped when a new one is signed.
#[derive(Debug, Default)]
pub struct ServingCertificate {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ServingCertificate {
    /// Serves `pair` from the next handshake on.
    fn load(&self, pair: &StoredPair) -> anyhow::Result<()> {
        let (chain, key) = pair.rustls()?;
        let key = rustls::crypto::ring::sign::any_supported_type(&key)
            .with_context(|| format!("the key in {}", pair.path.display()))?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
            Some(Arc::new(CertifiedKey::new(chain, key)));
        Ok(())
    }
}

/// What the node's serving certificate names and where it is kept.
#[derive(Debug, Clone)]
pub struct ServingConfig {
    pub node_name: String,
    pub node_ip: IpAddr,
    pub cert_dir: std::path::PathBuf,
}

impl ServingConfig {
    fn store(&self) -> CertificateStore {
        CertificateStore::new(&self.cert_dir, "kubelet-server")
    }
}

/// The serving certificate, with the store's current pair already loaded when it is still
/// valid (so a restarted kubelet serves at once).
pub fn load(config: &ServingConfig) -> Arc<ServingCertificate> {
    let serving = Arc::new(ServingCertificate::default());
    if let Some(pair) = config.store().current().filter(StoredPair::is_current)
        && let Err(e) = serving.load(&pair)
    {
        tracing::warn!(
            error = format!("{e:#}"),
            "the stored serving certificate is unusable"
        );
    }
    serving
}

/// Gets the serving certificate signed and keeps it renewed, for as long as the node runs.
pub async fn run(config: ServingConfig, client: Client, serving: Arc<ServingCertificate>) {
    let store = config.store();
    crate::certificate_rotation::keep_renewed(store.clone(), "serving", || async {
        let request = CertificateRequest::node_serving(
            &config.node_name,
            vec![config.node_name.clone()],
            vec![config.node_ip],
        );
        let issued = request_certificate(&client, &request, SIGNING_WAIT).await?;
        let pair = store
            .update(&issued.certificate_pem, &issued.key_pem)
            .context("storing the serving certificate")?;
        serving.load(&pair)?;
        tracing::info!(csr = %issued.request_name, "serving certificate signed");
        Ok(())
    })
    .await
}
