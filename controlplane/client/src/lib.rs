//! skiff-client: what every component that talks to the cluster through kube-rs shares — a
//! client from a kubeconfig (for several API servers in turn: `failover`), waiting for the API
//! server to answer, leader election on a Lease (`leader`), Event recording (`events`) and
//! certificates through CertificateSigningRequests (`certificates`). It owns no Kubernetes
//! semantics and may depend only on kube-rs, k8s-openapi and skiff-k8s; the scheduler, the
//! controllers, the kubelet and the proxy depend on it, never on the API server or the store.

pub mod certificates;
pub mod events;
pub mod failover;
pub mod leader;
pub mod rotating;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("reading kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
}

/// A client for the cluster `path` describes.
pub async fn client(path: &Path) -> Result<Client, ComponentError> {
    let err = |message: String| ComponentError::Kubeconfig {
        path: path.to_path_buf(),
        message,
    };
    let kc = Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| err(e.to_string()))?;
    Client::try_from(cfg).map_err(|e| err(e.to_string()))
}

/// Waits until `kubeconfig` exists and the API server behind it answers.
pub async fn wait_for_api(kubeconfig: &Path) -> Client {
    loop {
        if kubeconfig.exists()
            && let Ok(c) = client(kubeconfig).await
            && Api::<Namespace>::all(c.clone())
                .get("default")
                .await
                .is_ok()
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A 404: the object is already gone.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}
