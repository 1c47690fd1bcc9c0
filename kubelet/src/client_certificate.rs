//! The node's client certificate, as the kubelet's TLS bootstrap and certificate manager keep it:
//! when `--kubeconfig` is missing or its certificate has expired, the node trades the bootstrap
//! token of `--bootstrap-kubeconfig` for a certificate (a CSR for
//! `kubernetes.io/kube-apiserver-client-kubelet`, CN `system:node:<name>`, O `system:nodes`,
//! which the cluster approves and signs) and writes `--kubeconfig` pointing at it in
//! `--cert-dir`. With `--rotate-certificates` the certificate is renewed with the node's own
//! credentials at 70–84% of its lifetime, and the node's API client switches to it in place:
//! every request goes through `RotatingClient`, which sends it with the client of the newest
//! certificate, so nothing that holds a client (pod workers, watches) has to restart.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use base64::Engine;
use kube::config::{
    AuthInfo, Context as KubeContext, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};
use skiff_client::certificates::{CertificateRequest, request_certificate};
use skiff_client::rotating::RotatingClient;

use crate::certificate_rotation::SIGNING_WAIT;
use crate::certificate_store::{CertificateStore, StoredPair};

/// Where the node's client identity comes from and goes to.
#[derive(Debug, Clone)]
pub struct ClientCertificateConfig {
    pub node_name: String,
    pub kubeconfig: PathBuf,
    pub bootstrap_kubeconfig: Option<PathBuf>,
    pub cert_dir: PathBuf,
    /// `--api-servers`: the renewed credentials are used against these, in turn.
    pub api_servers: Vec<String>,
}

impl ClientCertificateConfig {
    fn store(&self) -> CertificateStore {
        client_store(&self.cert_dir)
    }
}

/// The store of the node's client certificates in `cert_dir` (`--cert-dir`).
pub fn client_store(cert_dir: &Path) -> CertificateStore {
    CertificateStore::new(cert_dir, "kubelet-client")
}

/// The TLS bootstrap: makes sure `--kubeconfig` holds a client identity that is valid now,
/// trading the bootstrap token for a node certificate when it does not.
pub async fn bootstrap(config: &ClientCertificateConfig) -> anyhow::Result<()> {
    let Some(bootstrap) = &config.bootstrap_kubeconfig else {
        return Ok(());
    };
    if kubeconfig_is_valid(&config.kubeconfig) {
        tracing::debug!(kubeconfig = %config.kubeconfig.display(), "client certificate valid, no bootstrap");
        return Ok(());
    }
    let bootstrap_config = Kubeconfig::read_from(bootstrap)
        .with_context(|| format!("reading the bootstrap kubeconfig {}", bootstrap.display()))?;
    let store = config.store();
    // A certificate a previous start obtained (the kubeconfig lost since) is used again.
    if let Some(pair) = store.current().filter(StoredPair::is_current) {
        tracing::info!(cert = %pair.path.display(), "using the certificate already in the store");
        return write_kubeconfig(&config.kubeconfig, &bootstrap_config, bootstrap, &pair.path);
    }
    tracing::info!(bootstrap = %bootstrap.display(), "requesting a client certificate with the bootstrap credentials");
    let client = skiff_client::client(bootstrap).await?;
    let issued = request_certificate(
        &client,
        &CertificateRequest::node_client(&config.node_name),
        SIGNING_WAIT,
    )
    .await
    .context("the node's client certificate")?;
    let pair = store
        .update(&issued.certificate_pem, &issued.key_pem)
        .context("storing the client certificate")?;
    write_kubeconfig(&config.kubeconfig, &bootstrap_config, bootstrap, &pair.path)?;
    tracing::info!(csr = %issued.request_name, kubeconfig = %config.kubeconfig.display(), "client certificate obtained");
    Ok(())
}

/// Whether `path` exists and its client certificate, if it has one, is valid now (a kubeconfig
/// with a token or no credentials counts as valid, as the kubelet counts it).
fn kubeconfig_is_valid(path: &Path) -> bool {
    let Ok(kc) = Kubeconfig::read_from(path) else {
        return false;
    };
    let Some(user) = current_user(&kc) else {
        return false;
    };
    let pem = match (&user.client_certificate_data, &user.client_certificate) {
        (Some(data), _) => base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        (None, Some(file)) => std::fs::read_to_string(file).ok(),
        (None, None) => return true,
    };
    let Some((not_before, not_after)) =
        pem.and_then(|p| skiff_client::certificates::validity(&p).ok())
    else {
        return false;
    };
    let now = SystemTime::now();
    not_before <= now && now < not_after
}

fn current_context(kc: &Kubeconfig) -> Option<&KubeContext> {
    let name = kc.current_context.as_deref()?;
    kc.contexts
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.context.as_ref())
}

fn current_user(kc: &Kubeconfig) -> Option<&AuthInfo> {
    let user = current_context(kc)?.user.as_deref()?;
    kc.auth_infos
        .iter()
        .find(|u| u.name == user)
        .and_then(|u| u.auth_info.as_ref())
}

/// Writes `path` atomically: the bootstrap kubeconfig's cluster (its CA inlined) and a user
/// whose certificate and key are the store's current file.
fn write_kubeconfig(
    path: &Path,
    bootstrap: &Kubeconfig,
    bootstrap_path: &Path,
    cert: &Path,
) -> anyhow::Result<()> {
    let cluster_name = current_context(bootstrap)
        .map(|c| c.cluster.clone())
        .with_context(|| format!("{}: no current context", bootstrap_path.display()))?;
    let mut cluster = bootstrap
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.clone())
        .with_context(|| {
            format!(
                "{}: the current context's cluster {cluster_name} is missing",
                bootstrap_path.display()
            )
        })?;
    if cluster.certificate_authority_data.is_none()
        && let Some(ca) = cluster.certificate_authority.take()
    {
        let pem = std::fs::read(&ca).with_context(|| format!("reading the cluster CA {ca}"))?;
        cluster.certificate_authority_data =
            Some(base64::engine::general_purpose::STANDARD.encode(pem));
    }
    let cert = cert.display().to_string();
    let kc = Kubeconfig {
        clusters: vec![NamedCluster {
            name: "default-cluster".into(),
            cluster: Some(cluster),
            other: Default::default(),
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "default-auth".into(),
            auth_info: Some(AuthInfo {
                client_certificate: Some(cert.clone()),
                client_key: Some(cert),
                ..Default::default()
            }),
            other: Default::default(),
        }],
        contexts: vec![NamedContext {
            name: "default-context".into(),
            context: Some(KubeContext {
                cluster: "default-cluster".into(),
                user: Some("default-auth".into()),
                namespace: Some("default".into()),
                ..Default::default()
            }),
            other: Default::default(),
        }],
        current_context: Some("default-context".into()),
        kind: Some("Config".into()),
        api_version: Some("v1".into()),
        ..Default::default()
    };
    let yaml = serde_saphyr::to_string(&kc).context("rendering the kubeconfig")?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::network::write_file_atomically(path, yaml.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Renews the client certificate before it expires, for as long as the node runs: a new CSR
/// made with the node's current credentials, the store updated (the kubeconfig names its
/// current file), and `client` switched to the new certificate.
pub async fn run_rotation(config: ClientCertificateConfig, client: RotatingClient) {
    let store = config.store();
    crate::certificate_rotation::keep_renewed(store.clone(), "client", || {
        rotate(&config, &store, &client)
    })
    .await
}

async fn rotate(
    config: &ClientCertificateConfig,
    store: &CertificateStore,
    client: &RotatingClient,
) -> anyhow::Result<()> {
    let issued = request_certificate(
        &client.client(),
        &CertificateRequest::node_client(&config.node_name),
        SIGNING_WAIT,
    )
    .await?;
    store
        .update(&issued.certificate_pem, &issued.key_pem)
        .context("storing the client certificate")?;
    // The kubeconfig names the store's current file, which now holds the new pair.
    client.replace(skiff_client::failover::client(&config.kubeconfig, &config.api_servers).await?);
    tracing::info!(csr = %issued.request_name, "client certificate rotated");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_kubeconfig_names_the_store_and_inlines_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "CA PEM").unwrap();
        let bootstrap_path = dir.path().join("bootstrap.kubeconfig");
        std::fs::write(
            &bootstrap_path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://10.0.0.1:6443\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: abcdef.0123456789abcdef\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
                ca.display()
            ),
        )
        .unwrap();
        let bootstrap = Kubeconfig::read_from(&bootstrap_path).unwrap();
        let out = dir.path().join("kubelet.kubeconfig");
        let cert = dir.path().join("pki/kubelet-client-current.pem");
        write_kubeconfig(&out, &bootstrap, &bootstrap_path, &cert).unwrap();
        let written = Kubeconfig::read_from(&out).unwrap();
        let user = current_user(&written).unwrap();
        assert_eq!(
            user.client_certificate.as_deref(),
            Some(cert.to_str().unwrap())
        );
        assert_eq!(user.client_key.as_deref(), Some(cert.to_str().unwrap()));
        assert!(user.token.is_none());
        let cluster = written.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(
            cluster.certificate_authority_data.as_deref(),
            Some(
                base64::engine::general_purpose::STANDARD
                    .encode("CA PEM")
                    .as_str()
            )
        );
        // Its certificate file does not exist: not a valid identity, so the node bootstraps.
        assert!(!kubeconfig_is_valid(&out));
        assert!(kubeconfig_is_valid(&bootstrap_path));
    }
}
