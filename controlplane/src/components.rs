//! Starting the scheduler and the controllers: a kube-rs client from a kubeconfig, and, inside
//! `skiff server`, waiting for the listener to serve before they start with the admin
//! credentials it wrote. Each component restarts after an error so that a watch failing for good
//! does not leave the cluster without it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

use crate::leader::{self, Election};

#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("reading kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
}

/// Which components to run.
#[derive(Debug, Clone, Copy)]
pub struct Components {
    pub scheduler: bool,
    pub controllers: bool,
    pub settings: crate::controllers::Config,
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

/// Runs the scheduler, restarting it after a failure.
pub async fn run_scheduler(client: Client) {
    loop {
        if let Err(e) = crate::scheduler::run(client.clone()).await {
            tracing::error!(error = %e, "scheduler stopped; restarting");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs the controllers, restarting them should they end.
pub async fn run_controllers(client: Client, settings: crate::controllers::Config) {
    loop {
        crate::controllers::run(client.clone(), settings).await;
        tracing::error!("controllers stopped; restarting");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs the selected components until the process ends, each only while this process holds
/// its Lease (`kube-system/kube-scheduler`, `kube-system/kube-controller-manager`), so that
/// several control-plane processes can run and one takes over when the leader dies.
pub async fn run(client: Client, which: Components) {
    let mut tasks = Vec::new();
    if which.scheduler {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let election = Election::new("kube-scheduler");
            loop {
                leader::lead(c.clone(), &election, run_scheduler(c.clone())).await;
            }
        }));
    }
    if which.controllers {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let election = Election::new("kube-controller-manager");
            loop {
                leader::lead(
                    c.clone(),
                    &election,
                    run_controllers(c.clone(), which.settings),
                )
                .await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
