//! Starting the scheduler and the controllers: inside `skiff server`, waiting for the listener to
//! serve before they start with the credentials it wrote for them. Each component restarts after an
//! error so that a watch failing for good does not leave the cluster without it.

use std::time::Duration;

use kube::Client;
use skiff_client::leader::{self, Election};

/// Which components to run.
#[derive(Debug, Clone, Copy)]
pub struct Components {
    pub scheduler: bool,
    pub controllers: bool,
    pub settings: skiff_controllers::Config,
}

/// Runs the scheduler, restarting it after a failure.
pub async fn run_scheduler(client: Client) {
    loop {
        if let Err(e) = skiff_scheduler::run(client.clone()).await {
            tracing::error!(error = %e, "scheduler stopped; restarting");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs the controllers, restarting them should they end.
pub async fn run_controllers(client: Client, settings: skiff_controllers::Config) {
    loop {
        skiff_controllers::run(client.clone(), settings).await;
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
