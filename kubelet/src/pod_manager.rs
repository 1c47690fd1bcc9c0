//! The pods bound to this node: a watch with `spec.nodeName=<node>` feeding one worker per pod.
//! At start the containers already on the node (from the shims' files) are handed to their pods'
//! workers; those of pods that no longer exist are stopped and removed once the first listing is
//! complete. When the node stops as a whole ([`run_until`]), every worker stops its pod and
//! cleans up, and the manager returns once they all have.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::containers::{self, ContainerRecord};
use crate::image::ImageStore;
use crate::node_network::NetworkHandle;
use crate::pod_worker::{Kubelet, KubeletConfig, PodWorker};
use crate::runtime::Runtime;

struct Workers {
    k: Arc<Kubelet>,
    running: HashMap<String, watch::Sender<Option<Arc<Pod>>>>,
    /// The workers' tasks, joined when the node stops.
    tasks: JoinSet<()>,
    /// Containers found on disk, by pod uid, not yet handed to a worker.
    adoptable: HashMap<String, Vec<ContainerRecord>>,
}

impl Workers {
    fn spawn(&mut self, uid: String, pod: Option<Arc<Pod>>) {
        let (tx, rx) = watch::channel(pod);
        let adopted = self.adoptable.remove(&uid).unwrap_or_default();
        let worker = PodWorker::new(self.k.clone(), uid.clone(), rx, adopted);
        self.tasks.spawn(worker.run());
        self.running.insert(uid, tx);
    }

    /// Hands the pod's newest version to its worker, starting one if needed.
    fn apply(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        self.running.retain(|_, tx| !tx.is_closed());
        while self.tasks.try_join_next().is_some() {}
        let pod = Arc::new(pod);
        match self.running.get(&uid) {
            Some(tx) => {
                tx.send_replace(Some(pod));
            }
            None => self.spawn(uid, Some(pod)),
        }
    }

    /// The pod is gone from the API: its worker stops what is left.
    fn gone(&mut self, uid: &str) {
        if let Some(tx) = self.running.get(uid) {
            tx.send_replace(None);
        } else if self.adoptable.contains_key(uid) {
            self.spawn(uid.to_string(), None);
        }
    }

    /// The node stops: every pod's containers are stopped within `grace` at most and everything
    /// the pods had on the node is removed (their API objects stay, to run again when the node
    /// comes back).
    async fn stop_all(mut self, grace: std::time::Duration) {
        let _ = self.k.node_shutdown_grace.set(grace);
        let uids: Vec<String> = self
            .running
            .keys()
            .chain(self.adoptable.keys())
            .cloned()
            .collect();
        tracing::info!(pods = uids.len(), "node stopping: stopping every pod");
        for uid in uids {
            self.gone(&uid);
        }
        while self.tasks.join_next().await.is_some() {}
        for uid in self.k.sandboxes.uids() {
            self.k.sandboxes.remove(&uid).await;
        }
    }
}

pub async fn run(
    client: Client,
    config: Arc<KubeletConfig>,
    runtime: Arc<Runtime>,
    images: ImageStore,
    network: NetworkHandle,
) -> anyhow::Result<()> {
    run_until(
        client,
        config,
        runtime,
        images,
        network,
        std::future::pending(),
    )
    .await
}

/// [`run`] until `stop` yields a grace period; then every pod is stopped within it and cleaned
/// up before this returns.
pub async fn run_until(
    client: Client,
    config: Arc<KubeletConfig>,
    runtime: Arc<Runtime>,
    images: ImageStore,
    network: NetworkHandle,
    stop: impl std::future::Future<Output = std::time::Duration>,
) -> anyhow::Result<()> {
    let (found, stray) = containers::list(&config.run_dir);
    for dir in stray {
        tracing::info!("removing {}: no container record", dir.display());
        let _ = std::fs::remove_dir_all(dir);
    }
    let mut adoptable: HashMap<String, Vec<ContainerRecord>> = HashMap::new();
    for r in found {
        adoptable.entry(r.meta.pod_uid.clone()).or_default().push(r);
    }
    let node = config.node_name.clone();
    let k = Arc::new(Kubelet::new(
        client.clone(),
        config,
        runtime,
        images,
        network,
    ));
    let mut workers = Workers {
        k,
        running: HashMap::new(),
        tasks: JoinSet::new(),
        adoptable,
    };
    let api: Api<Pod> = Api::all(client);
    let selector = format!("spec.nodeName={node}");
    let mut events = watcher(api, watcher::Config::default().fields(&selector))
        .default_backoff()
        .boxed();
    let mut listed: HashSet<String> = HashSet::new();
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            grace = &mut stop => {
                workers.stop_all(grace).await;
                return Ok(());
            }
            event = events.try_next() => match event? {
                Some(event) => event,
                None => break,
            },
        };
        match event {
            watcher::Event::Init => listed.clear(),
            watcher::Event::InitApply(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    listed.insert(uid.clone());
                }
                workers.apply(pod);
            }
            watcher::Event::InitDone => {
                // Pods that vanished while the kubelet was away or the watch was broken.
                let gone: Vec<String> = workers
                    .running
                    .keys()
                    .chain(workers.adoptable.keys())
                    .filter(|uid| !listed.contains(*uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    tracing::info!(pod = %uid, "pod no longer exists; stopping its containers");
                    workers.gone(&uid);
                }
                // Sandboxes of pods that vanished before any container of theirs was made.
                for uid in workers.k.sandboxes.uids() {
                    if !listed.contains(&uid) && !workers.running.contains_key(&uid) {
                        tracing::info!(pod = %uid, "removing the sandbox of a pod that no longer exists");
                        workers.k.sandboxes.remove(&uid).await;
                    }
                }
            }
            watcher::Event::Apply(pod) => workers.apply(pod),
            watcher::Event::Delete(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    workers.gone(uid);
                }
            }
        }
    }
    anyhow::bail!("the pod watch ended")
}
