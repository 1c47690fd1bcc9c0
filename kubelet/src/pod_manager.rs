//! The pods bound to this node: a watch with `spec.nodeName=<node>` feeding one worker per pod.
//! At start the containers already on the node (from the shims' files) are handed to their pods'
//! workers; those of pods that no longer exist are stopped and removed once the first listing is
//! complete. A pod seen for the first time is admitted first (see [`crate::admission`]): one
//! that does not fit the node gets a worker that only reports it Failed. Pods are admitted in the
//! order they were created, so after a restart the oldest keep their place.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::admission::{self, Rejection};
use crate::containers::{self, ContainerRecord};
use crate::events::EventType;
use crate::image::ImageStore;
use crate::node_network::NetworkHandle;
use crate::pod_worker::{Kubelet, KubeletConfig, PodWorker};
use crate::runtime::Runtime;

struct Workers {
    k: Arc<Kubelet>,
    running: HashMap<String, watch::Sender<Option<Arc<Pod>>>>,
    /// Containers found on disk, by pod uid, not yet handed to a worker.
    adoptable: HashMap<String, Vec<ContainerRecord>>,
    /// Pods that were not admitted (they never run, and take no room on the node).
    rejected: HashSet<String>,
}

/// Whether the API already reports the pod finished.
fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl Workers {
    fn spawn(&mut self, uid: String, pod: Option<Arc<Pod>>, rejection: Option<Rejection>) {
        let (tx, rx) = watch::channel(pod);
        let adopted = self.adoptable.remove(&uid).unwrap_or_default();
        let worker = PodWorker::new(self.k.clone(), uid.clone(), rx, adopted, rejection);
        tokio::spawn(worker.run());
        self.running.insert(uid, tx);
    }

    /// Hands the pod's newest version to its worker, starting one (after admission) if needed.
    async fn apply(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        self.running.retain(|_, tx| !tx.is_closed());
        let pod = Arc::new(pod);
        if let Some(tx) = self.running.get(&uid) {
            tx.send_replace(Some(pod));
            return;
        }
        let rejection = if terminal(&pod) || pod.metadata.deletion_timestamp.is_some() {
            None
        } else {
            self.admit(&pod).await
        };
        if let Some(r) = &rejection {
            self.rejected.insert(uid.clone());
            tracing::info!(pod = %uid, reason = %r.reason, "pod rejected: {}", r.message);
            self.k
                .events
                .record(&pod, None, EventType::Warning, &r.reason, &r.message)
                .await;
        }
        self.spawn(uid, Some(pod), rejection);
    }

    /// Admission against the node's current record and the pods admitted so far that are still
    /// active.
    async fn admit(&self, pod: &Pod) -> Option<Rejection> {
        let api: Api<Node> = Api::all(self.k.client.clone());
        let node = match api.get(&self.k.config.node_name).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("reading the node for admission: {e}");
                return Some(Rejection {
                    reason: "InvalidNodeInfo".to_string(),
                    message: "Kubelet cannot get node info.".to_string(),
                });
            }
        };
        let admitted: Vec<Arc<Pod>> = self
            .running
            .iter()
            .filter(|(uid, _)| !self.rejected.contains(*uid))
            .filter_map(|(_, tx)| tx.borrow().clone())
            .filter(|p| !terminal(p))
            .collect();
        let others: Vec<&Pod> = admitted.iter().map(|p| p.as_ref()).collect();
        admission::admit(pod, &node, &others).err()
    }

    /// The pod is gone from the API: its worker stops what is left.
    fn gone(&mut self, uid: &str) {
        if let Some(tx) = self.running.get(uid) {
            tx.send_replace(None);
        } else if self.adoptable.contains_key(uid) {
            self.spawn(uid.to_string(), None, None);
        }
        self.rejected.remove(uid);
    }
}

pub async fn run(
    client: Client,
    config: Arc<KubeletConfig>,
    runtime: Arc<Runtime>,
    images: ImageStore,
    network: NetworkHandle,
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
        adoptable,
        rejected: HashSet::new(),
    };
    let api: Api<Pod> = Api::all(client);
    let selector = format!("spec.nodeName={node}");
    let mut events = watcher(api, watcher::Config::default().fields(&selector))
        .default_backoff()
        .boxed();
    let mut listed: HashSet<String> = HashSet::new();
    // A (re)listing's pods, handed over oldest first once it is complete.
    let mut listing: Vec<Pod> = Vec::new();
    while let Some(event) = events.try_next().await? {
        match event {
            watcher::Event::Init => {
                listed.clear();
                listing.clear();
            }
            watcher::Event::InitApply(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    listed.insert(uid.clone());
                }
                listing.push(pod);
            }
            watcher::Event::InitDone => {
                listing.sort_by(|a, b| {
                    let key = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
                    key(a).cmp(&key(b))
                });
                for pod in listing.drain(..) {
                    workers.apply(pod).await;
                }
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
            watcher::Event::Apply(pod) => workers.apply(pod).await,
            watcher::Event::Delete(pod) => {
                if let Some(uid) = &pod.metadata.uid {
                    workers.gone(uid);
                }
            }
        }
    }
    anyhow::bail!("the pod watch ended")
}
