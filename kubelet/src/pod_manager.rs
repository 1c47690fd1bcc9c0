//! The pods bound to this node: a watch with `spec.nodeName=<node>` feeding one worker per pod.
//! At start the containers already on the node (from the shims' files) are handed to their pods'
//! workers; those of pods that no longer exist are stopped and removed once the first listing is
//! complete. A pod seen for the first time is admitted first (see [`crate::admission`]): one
//! that does not fit the node gets a worker that only reports it Failed. Pods are admitted in the
//! order they were created, so after a restart the oldest keep their place. When the node stops
//! as a whole ([`run_until`]), every worker stops its pod and cleans up, and the manager returns
//! once they all have.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admission::{self, Rejection};
use crate::containers::{self, ContainerRecord};
use crate::events::EventType;
use crate::eviction::{EvictionManager, Pressure};
use crate::image::ImageStore;
use crate::node_network::NetworkHandle;
use crate::pod_worker::{Kubelet, KubeletConfig, PodWorker};
use crate::runtime::Runtime;
use crate::static_pods;

/// How often the static pod manifests are read again (and their mirrors checked).
const MANIFEST_CHECK: Duration = Duration::from_secs(2);

struct Workers {
    k: Arc<Kubelet>,
    running: HashMap<String, watch::Sender<Option<Arc<Pod>>>>,
    /// The workers' tasks, joined when the node stops.
    tasks: JoinSet<()>,
    /// Containers found on disk, by pod uid, not yet handed to a worker.
    adoptable: HashMap<String, Vec<ContainerRecord>>,
    /// Pods that were not admitted (they never run, and take no room on the node).
    rejected: HashSet<String>,
    /// The static pods from the manifest directory, by uid (their hash).
    static_pods: HashMap<String, Arc<Pod>>,
    eviction: EvictionManager,
    /// The node's pressure conditions (pods are not admitted under some of them).
    pressure: watch::Receiver<Pressure>,
    /// The last image garbage collection (it may still run); it yields whether it failed.
    image_gc: Option<tokio::task::JoinHandle<bool>>,
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
        self.tasks.spawn(worker.run());
        self.running.insert(uid, tx);
    }

    /// Hands the pod's newest version to its worker, starting one (after admission) if needed.
    async fn apply(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if static_pods::is_mirror(&pod) {
            // Its static pod runs from the manifest; the mirror is only the API's view of it.
            return;
        }
        self.running.retain(|_, tx| !tx.is_closed());
        while self.tasks.try_join_next().is_some() {}
        let pod = Arc::new(pod);
        if let Some(tx) = self.running.get(&uid) {
            tx.send_replace(Some(pod));
            return;
        }
        let active = !terminal(&pod) && pod.metadata.deletion_timestamp.is_none();
        let rejection = if active { self.admit(&pod).await } else { None };
        if active && rejection.is_none() {
            self.reserve_burstable(&uid, &pod);
        }
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

    /// An admitted Burstable pod's cpu request counts in its QoS tier's weight from now on, as
    /// the kubelet updates its QoS cgroups for a pod before making the pod's cgroup.
    fn reserve_burstable(&self, uid: &str, pod: &Pod) {
        let spec = pod.spec.clone().unwrap_or_default();
        if skiff_k8s::qos::qos_class(&spec) != skiff_k8s::qos::QosClass::Burstable {
            return;
        }
        let request = skiff_k8s::qos::pod_resources(&spec)
            .cpu_request
            .unwrap_or(0);
        let k = &self.k;
        if let Err(e) = k
            .burstable
            .set(&k.cgroups, &k.config.cgroup_root, uid, Some(request))
        {
            tracing::warn!("burstable tier: {e}");
        }
    }

    /// Admission against the node's pressure, its current record and the pods admitted so far
    /// that are still active.
    #[tracing::instrument(level = "debug", skip_all, fields(pod = pod.metadata.name))]
    async fn admit(&self, pod: &Pod) -> Option<Rejection> {
        let pressure = *self.pressure.borrow();
        if let Some(r) = admission::under_pressure(pod, pressure.memory, pressure.disk) {
            return Some(r);
        }
        let node = match self.k.listers.node().await {
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

    /// Brings the static pods to the manifest directory's content: new manifests are admitted
    /// and started, removed (or changed: a new hash) ones stopped; each has its mirror in the API.
    async fn sync_static(&mut self, dir: &Path) {
        let client = self.k.client.clone();
        let node_name = self.k.config.node_name.clone();
        let pods = static_pods::read_dir(dir, &node_name);
        let current: HashMap<String, Arc<Pod>> = pods
            .into_iter()
            .filter_map(|p| Some((p.metadata.uid.clone()?, Arc::new(p))))
            .collect();
        let removed: Vec<(String, Arc<Pod>)> = self
            .static_pods
            .iter()
            .filter(|(uid, _)| !current.contains_key(*uid))
            .map(|(uid, p)| (uid.clone(), p.clone()))
            .collect();
        for (uid, old) in removed {
            tracing::info!(pod = %uid, name = ?old.metadata.name, "static pod manifest gone or changed; stopping the pod");
            self.gone(&uid);
            static_pods::remove_mirror_of(&client, &old).await;
        }
        let node = match Api::<Node>::all(client.clone()).get(&node_name).await {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!("reading the node for its mirror pods: {e}");
                None
            }
        };
        for (uid, pod) in &current {
            if !self.static_pods.contains_key(uid) {
                tracing::info!(pod = %uid, name = ?pod.metadata.name, "static pod from the manifest directory");
                self.apply(pod.as_ref().clone()).await;
            }
            if let Some(node) = &node
                && static_pods::sync_mirror(&client, pod, node).await
                && let Some(tx) = self.running.get(uid)
            {
                // A new mirror has no status yet: the worker writes it on its next pass.
                tx.send_replace(Some(pod.clone()));
            }
        }
        self.static_pods = current;
    }

    /// One eviction monitoring period: the pods that may be evicted are the admitted, active
    /// ones; the one picked gets its order and its worker is woken.
    async fn check_eviction(&mut self) {
        self.running.retain(|_, tx| !tx.is_closed());
        let candidates: Vec<Arc<Pod>> = self
            .running
            .iter()
            .filter(|(uid, _)| !self.rejected.contains(*uid))
            .filter_map(|(_, tx)| tx.borrow().clone())
            .filter(|p| !terminal(p) && p.metadata.deletion_timestamp.is_none())
            .collect();
        let picked = self
            .eviction
            .check(
                self.k.config.clone(),
                self.k.cgroups.clone(),
                self.k.images.clone(),
                candidates,
            )
            .await;
        if let Some((uid, order)) = picked
            && let Some(tx) = self.running.get(&uid)
        {
            self.k.evictions.give(&uid, order);
            tx.send_modify(|_| {});
        }
    }

    /// One image garbage collection period: unless the last collection still runs (it waits
    /// for running pulls), one starts in the background; the images of the pods the workers
    /// hold and of the containers on disk are in use. A failure is a Warning event on the Node:
    /// FreeDiskSpaceFailed when the unused images were not enough, and ImageGCFailed when the
    /// collection before failed too (the kubelet's events, so at most one of each per period).
    async fn collect_images(&mut self) {
        if self.image_gc.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let failed_before = match self.image_gc.take() {
            Some(last) => last.await.unwrap_or(true),
            None => false,
        };
        let pods: Vec<Arc<Pod>> = self
            .running
            .values()
            .filter_map(|tx| tx.borrow().clone())
            .collect();
        let k = self.k.clone();
        self.image_gc = Some(tokio::spawn(async move {
            let collect = {
                let k = k.clone();
                move || {
                    let config = &k.config;
                    crate::image_gc::collect(&config.image_gc, &k.images, &config.run_dir, &pods)
                }
            };
            let e = match tokio::task::spawn_blocking(collect).await {
                Ok(Ok(())) => return false,
                Ok(Err(e)) => e,
                Err(e) => {
                    tracing::warn!("image garbage collection: {e}");
                    return true;
                }
            };
            let message = e.to_string();
            if matches!(e, crate::image_gc::GcError::NotEnoughFreed { .. }) {
                k.events
                    .record_node(EventType::Warning, "FreeDiskSpaceFailed", &message);
            }
            if failed_before {
                tracing::warn!(
                    "image garbage collection failed multiple times in a row: {message}"
                );
                k.events
                    .record_node(EventType::Warning, "ImageGCFailed", &message);
            } else {
                tracing::warn!("image garbage collection failed: {message}");
            }
            true
        }));
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
    eviction: EvictionManager,
) -> anyhow::Result<()> {
    run_until(
        client,
        config,
        runtime,
        images,
        network,
        eviction,
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
    eviction: EvictionManager,
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
        rejected: HashSet::new(),
        static_pods: HashMap::new(),
        pressure: eviction.subscribe(),
        eviction,
        image_gc: None,
    };
    // Static pods first, so that their containers are adopted before the first listing decides
    // which containers belong to no pod.
    let manifests = workers.k.config.pod_manifest_path.clone();
    if let Some(dir) = &manifests {
        workers.sync_static(dir).await;
    }
    let mut manifest_check = tokio::time::interval(MANIFEST_CHECK);
    manifest_check.tick().await;
    let mut eviction_check = tokio::time::interval(workers.eviction.config.monitoring_period);
    eviction_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first collection one period after start: by then the pods' containers are known.
    let gc_policy = workers.k.config.image_gc.clone();
    let mut image_gc = tokio::time::interval_at(
        tokio::time::Instant::now() + gc_policy.period,
        gc_policy.period,
    );
    image_gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let qos_period = workers.k.config.qos_update_period;
    let mut qos_update =
        tokio::time::interval_at(tokio::time::Instant::now() + qos_period, qos_period);
    qos_update.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let api: Api<Pod> = Api::all(client);
    let selector = format!("spec.nodeName={node}");
    let mut events = watcher(api, watcher::Config::default().fields(&selector))
        .default_backoff()
        .boxed();
    let mut listed: HashSet<String> = HashSet::new();
    // A (re)listing's pods, handed over oldest first once it is complete.
    let mut listing: Vec<Pod> = Vec::new();
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            grace = &mut stop => {
                workers.stop_all(grace).await;
                return Ok(());
            }
            event = events.try_next() => match event? {
                Some(e) => e,
                None => break,
            },
            _ = manifest_check.tick(), if manifests.is_some() => {
                if let Some(dir) = &manifests {
                    workers.sync_static(dir).await;
                }
                continue;
            }
            _ = eviction_check.tick() => {
                workers.check_eviction().await;
                continue;
            }
            _ = image_gc.tick(), if gc_policy.enabled() => {
                workers.collect_images().await;
                continue;
            }
            _ = qos_update.tick() => {
                let k = &workers.k;
                if let Err(e) = k.burstable.reapply(&k.cgroups, &k.config.cgroup_root) {
                    tracing::warn!("QoS tiers: {e}");
                }
                continue;
            }
        };
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
                    .filter(|uid| !listed.contains(*uid) && !workers.static_pods.contains_key(*uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    tracing::info!(pod = %uid, "pod no longer exists; stopping its containers");
                    workers.gone(&uid);
                }
                // Sandboxes of pods that vanished before any container of theirs was made.
                for uid in workers.k.sandboxes.uids() {
                    if !listed.contains(&uid)
                        && !workers.running.contains_key(&uid)
                        && !workers.static_pods.contains_key(&uid)
                    {
                        tracing::info!(pod = %uid, "removing the sandbox of a pod that no longer exists");
                        workers.k.sandboxes.remove(&uid).await;
                    }
                }
            }
            watcher::Event::Apply(pod) => workers.apply(pod).await,
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod
                    .metadata
                    .uid
                    .as_ref()
                    .filter(|_| !static_pods::is_mirror(&pod))
                {
                    workers.gone(uid);
                }
            }
        }
    }
    anyhow::bail!("the pod watch ended")
}
