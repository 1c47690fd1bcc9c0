//! Starting the scheduler and the controllers: inside `skiff server`, waiting for the listener to
//! serve before they start with the credentials it wrote for them. Each component restarts after an
//! error so that a watch failing for good does not leave the cluster without it.

use std::path::Path;
use std::time::Duration;

use kube::Client;
use skiff_apiserver::pki;
use skiff_client::leader::{self, Election};
use skiff_client::rotating::RotatingClient;

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

/// How often a component looks for a renewed kubeconfig (the server re-issues one in the last
/// fifth of its year).
const KUBECONFIG_CHECK_INTERVAL: Duration = Duration::from_secs(3600);

/// Runs the selected components as the control plane runs them, each as its own user with its
/// bootstrap role (`system:kube-scheduler`, `system:kube-controller-manager`), through the
/// kubeconfigs the API server wrote into `server_dir`; waits for the API to serve first. A
/// kubeconfig the server re-issued is taken up in place, from the next request on.
pub async fn run_as_their_users(server_dir: &Path, which: Components) {
    let mut tasks = Vec::new();
    let selected = [
        (
            which.scheduler,
            pki::SCHEDULER_KUBECONFIG.0,
            Components {
                controllers: false,
                ..which
            },
        ),
        (
            which.controllers,
            pki::CONTROLLER_MANAGER_KUBECONFIG.0,
            Components {
                scheduler: false,
                ..which
            },
        ),
    ];
    for (wanted, kubeconfig, only) in selected {
        if wanted {
            let kubeconfig = server_dir.join(kubeconfig);
            tasks.push(tokio::spawn(async move {
                let rotating = RotatingClient::new(skiff_client::wait_for_api(&kubeconfig).await);
                tokio::join!(
                    run(rotating.client(), only),
                    follow_kubeconfig(&kubeconfig, &rotating)
                );
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Switches `client` to the credentials of `kubeconfig` whenever the file changes.
async fn follow_kubeconfig(kubeconfig: &Path, client: &RotatingClient) {
    let mut current = std::fs::read(kubeconfig).ok();
    let mut tick = tokio::time::interval(KUBECONFIG_CHECK_INTERVAL);
    loop {
        tick.tick().await;
        let now = std::fs::read(kubeconfig).ok();
        if now.is_none() || now == current {
            continue;
        }
        match skiff_client::client(kubeconfig).await {
            Ok(renewed) => {
                tracing::info!(kubeconfig = %kubeconfig.display(), "renewed credentials taken up");
                client.replace(renewed);
                current = now;
            }
            Err(e) => tracing::error!(error = %e, "reading renewed credentials"),
        }
    }
}
