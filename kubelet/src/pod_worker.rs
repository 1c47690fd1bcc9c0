//! One worker per pod: it drives the pod's containers toward its spec — sandbox, init containers
//! in order, then the app containers, each started through a shim and restarted per the
//! restartPolicy with the 10 s → 5 min back-off — reports the status, and on deletion stops the
//! containers gracefully, cleans up and removes the API object. It wakes when the pod changes,
//! when one of its containers exits (a pidfd on the container's shim) or when a back-off ends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EphemeralContainer, Pod, PodSpec, PodStatus, Secret,
};
use kube::api::{DeleteParams, Preconditions};
use kube::{Api, Client};
use skiff_k8s::qos::QosClass;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::admission::Rejection;
use crate::cgroups::{self, CgroupMounts};
use crate::container_env::{self, EnvSources, NodeView};
use crate::containers::{self, ContainerMeta, ContainerRecord};
use crate::events::{EventType, Recorder};
use crate::eviction::{EvictionOrder, EvictionOrders};
use crate::image::{self, ImageError, ImageStore, PullOptions, PullPolicy};
use crate::lifecycle;
use crate::node_network::NetworkHandle;
use crate::oci_config::{self, ContainerSetup};
use crate::probes::ProbeManager;
use crate::runtime::Runtime;
use crate::sandbox::{Sandbox, Sandboxes};
use crate::shim::{self, ExitRecord, ShimArgs};
use crate::status::{self, ContainerView, PodView, StatusManager};
use crate::volumes::VolumeSync;

/// The first restart back-off; doubled per restart up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long a failed pull shows as ErrImagePull before its back-off shows as ImagePullBackOff.
const PULL_BACKOFF_SHOWN_AFTER: Duration = Duration::from_secs(1);
/// How often an idle pod is looked at again (its status is rewritten only if it changed).
const RESYNC: Duration = Duration::from_secs(60);
/// How long a container gets to die after SIGKILL before the worker moves on.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How soon volumes that could not be set up (a missing ConfigMap…) are tried again.
const VOLUME_RETRY: Duration = Duration::from_secs(2);

/// The node-wide settings the workers use.
#[derive(Debug)]
pub struct KubeletConfig {
    pub node_name: String,
    pub node_ip: IpAddr,
    pub root_dir: PathBuf,
    pub run_dir: PathBuf,
    pub pod_logs_dir: PathBuf,
    pub cgroup_root: String,
    /// Every pod cgroup's pids.max (`--pod-max-pids`), `None` for no limit.
    pub pod_pids_limit: Option<i64>,
    pub shim_path: PathBuf,
    pub container_log_max_size: u64,
    pub cluster_dns: Vec<IpAddr>,
    pub cluster_domain: String,
    pub insecure_registries: Vec<String>,
    pub node_cpus: u64,
    pub node_memory_bytes: u64,
    /// How often volume files that follow API objects are refreshed.
    pub volume_sync_period: Duration,
    /// The directory of static pod manifests.
    pub pod_manifest_path: Option<PathBuf>,
    /// When unused images are collected.
    pub image_gc: crate::image_gc::ImageGcPolicy,
    /// How often the QoS tiers' cpu weights are put back (the kubelet's fixed minute).
    pub qos_update_period: Duration,
}

/// What every worker shares: the client, the runtime and the managers.
pub struct Kubelet {
    pub client: Client,
    pub config: Arc<KubeletConfig>,
    pub runtime: Arc<Runtime>,
    pub status: StatusManager,
    pub events: Recorder,
    pub images: ImageStore,
    pub sandboxes: Sandboxes,
    pub cgroups: CgroupMounts,
    /// The Burstable QoS tier's cpu weight from its pods' requests.
    pub burstable: cgroups::BurstableTier,
    /// Set when the whole node stops: no pod's grace period runs longer than this.
    pub node_shutdown_grace: std::sync::OnceLock<Duration>,
    /// Pods the eviction manager picked, for their workers.
    pub evictions: EvictionOrders,
    pub listers: crate::listers::Listers,
}

impl Kubelet {
    pub fn new(
        client: Client,
        config: Arc<KubeletConfig>,
        runtime: Arc<Runtime>,
        images: ImageStore,
        network: NetworkHandle,
    ) -> Kubelet {
        Kubelet {
            sandboxes: Sandboxes::new(
                config.root_dir.clone(),
                config.run_dir.clone(),
                config.node_ip,
                config.cluster_dns.clone(),
                config.cluster_domain.clone(),
                network,
                config.shim_path.clone(),
            ),
            status: StatusManager::new(client.clone()),
            events: Recorder::new(client.clone(), config.node_name.clone()),
            images,
            cgroups: CgroupMounts::read(),
            burstable: cgroups::BurstableTier::default(),
            node_shutdown_grace: std::sync::OnceLock::new(),
            evictions: EvictionOrders::default(),
            listers: crate::listers::Listers::start(client.clone(), &config.node_name),
            client,
            config,
            runtime,
        }
    }
}

/// The pod's log directory: `<pod-logs-dir>/<ns>_<name>_<uid>`.
pub fn pod_log_dir(config: &KubeletConfig, ns: &str, name: &str, uid: &str) -> PathBuf {
    config.pod_logs_dir.join(format!("{ns}_{name}_{uid}"))
}

/// The restart back-off after attempt `attempt` ended: none after the first run, then 10 s
/// doubling up to 5 minutes.
pub fn backoff(attempt: u32) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    INITIAL_BACKOFF
        .saturating_mul(1 << (attempt - 1).min(16))
        .min(MAX_BACKOFF)
}

pub struct PodWorker {
    k: Arc<Kubelet>,
    uid: String,
    pod_rx: watch::Receiver<Option<Arc<Pod>>>,
    last_pod: Option<Arc<Pod>>,
    /// Container name → its attempts, oldest first.
    records: BTreeMap<String, Vec<ContainerRecord>>,
    /// Containers whose shim is being watched.
    watched: HashSet<String>,
    wake: Arc<Notify>,
    /// Container name → why the worker holds it back (reason, message).
    waiting: HashMap<String, (String, String)>,
    /// Container name → (failed pulls in a row, when to try again) for containers whose image
    /// could not be pulled.
    retry: HashMap<String, (u32, tokio::time::Instant)>,
    sandbox: Option<Sandbox>,
    volumes: VolumeSync,
    probes: ProbeManager,
    /// Set when the kubelet failed the pod (activeDeadlineSeconds passed, evicted): the reason
    /// and message; nothing of it runs again.
    failed: Option<(String, String)>,
    /// Set when the pod was not admitted: nothing of it runs, it is reported Failed.
    rejection: Option<Rejection>,
}

impl PodWorker {
    /// A worker for the pod `uid`, adopting the containers found on disk for it.
    pub fn new(
        k: Arc<Kubelet>,
        uid: String,
        pod_rx: watch::Receiver<Option<Arc<Pod>>>,
        adopted: Vec<ContainerRecord>,
        rejection: Option<Rejection>,
    ) -> PodWorker {
        let mut records: BTreeMap<String, Vec<ContainerRecord>> = BTreeMap::new();
        for r in adopted {
            records.entry(r.meta.name.clone()).or_default().push(r);
        }
        for list in records.values_mut() {
            list.sort_by_key(|r| r.meta.attempt);
        }
        let wake = Arc::new(Notify::new());
        PodWorker {
            probes: ProbeManager::new(k.clone(), wake.clone()),
            k,
            uid,
            pod_rx,
            last_pod: None,
            records,
            watched: HashSet::new(),
            wake,
            waiting: HashMap::new(),
            retry: HashMap::new(),
            sandbox: None,
            volumes: VolumeSync::default(),
            failed: None,
            rejection,
        }
    }

    pub async fn run(mut self) {
        let adopted: Vec<ContainerRecord> = self.records.values().flatten().cloned().collect();
        for r in &adopted {
            if r.running() {
                tracing::info!(pod = %self.uid, container = %r.meta.name, id = %r.meta.id, "adopted a running container");
                self.watch_exit(r);
            }
        }
        loop {
            let latest = self.pod_rx.borrow_and_update().clone();
            let next = match latest {
                None => {
                    self.shutdown(false).await;
                    return;
                }
                Some(pod) => {
                    self.last_pod = Some(pod.clone());
                    if pod.metadata.deletion_timestamp.is_some() {
                        self.shutdown(true).await;
                        return;
                    }
                    self.sync(&pod).await
                }
            };
            tokio::select! {
                changed = self.pod_rx.changed() => if changed.is_err() { return },
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(next) => {}
            }
        }
    }

    fn latest(&self, name: &str) -> Option<&ContainerRecord> {
        self.records.get(name).and_then(|v| v.last())
    }

    fn previous(&self, name: &str) -> Option<&ContainerRecord> {
        self.records
            .get(name)
            .and_then(|v| v.len().checked_sub(2).map(|i| &v[i]))
    }

    fn refresh(&mut self) {
        for r in self.records.values_mut().flatten() {
            r.refresh();
        }
    }

    /// One pass toward the spec; returns when to look again at the latest.
    #[tracing::instrument(level = "debug", skip_all, fields(pod = pod.metadata.name))]
    async fn sync(&mut self, pod: &Pod) -> Duration {
        self.refresh();
        if let Some(r) = self.rejection.clone() {
            self.reject(pod, &r).await;
            return RESYNC;
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let api_phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        let finished = matches!(api_phase.as_deref(), Some("Succeeded" | "Failed"));
        if let Some(order) = self.k.evictions.take(&self.uid) {
            self.evict(pod, order).await;
        }
        if !finished
            && self.failed.is_none()
            && let Some(left) = lifecycle::active_deadline_left(pod)
            && left.is_zero()
        {
            self.exceed_deadline(pod).await;
        }
        if self.failed.is_some() {
            self.set_burstable_request(None);
            self.report(pod, true, false, self.failed.clone()).await;
            return RESYNC;
        }
        let mut next = RESYNC;
        let mut pod_error = None;

        if self.sandbox.is_none() && !finished {
            match self.k.sandboxes.ensure(pod).await {
                Ok(s) => self.sandbox = Some(s),
                Err(e) => {
                    tracing::warn!(pod = %self.uid, "pod sandbox: {e}");
                    self.k
                        .events
                        .record(
                            pod,
                            None,
                            EventType::Warning,
                            "FailedCreatePodSandBox",
                            &e.to_string(),
                        )
                        .await;
                    pod_error = Some(("FailedCreatePodSandBox".to_string(), e.to_string()));
                    next = INITIAL_BACKOFF;
                }
            }
        }
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".to_string());
        if !finished && let Some(left) = lifecycle::active_deadline_left(pod) {
            next = next.min(left);
        }
        let mut init_done = true;
        let mut init_failed = false;
        if self.sandbox.is_some() && !finished {
            next = next.min(self.sync_volumes(pod, &spec).await);
        }
        if self.sandbox.is_some() && self.volumes.ready().is_some() && !finished {
            let pod_cgroup = self.ensure_pod_cgroup(pod);
            let pod_ip = self.pod_ip();
            self.kill_unhealthy(pod).await;
            // The app containers of a Never/OnFailure pod are all done for good: the sidecars
            // are stopped and not started again, and the pod completes.
            let apps_done = policy != "Always"
                && spec.containers.iter().all(|c| {
                    self.latest(&c.name)
                        .and_then(|r| r.exit.as_ref())
                        .is_some_and(|e| policy == "Never" || e.exit_code == 0)
                });
            for c in spec.init_containers.iter().flatten() {
                if is_sidecar(c) {
                    if apps_done {
                        continue;
                    }
                    // A sidecar is started and kept running (restarted whatever the pod's
                    // restartPolicy); the next init container waits only for it to have started.
                    if !self.latest(&c.name).is_some_and(|r| r.running())
                        && let Some(wait) = self
                            .start_or_back_off(pod, c, true, &pod_cgroup, None)
                            .await
                    {
                        next = next.min(wait);
                    }
                    if let Some(r) = self.latest(&c.name).filter(|r| r.running()).cloned() {
                        self.probes.ensure(pod, c, &r, &pod_ip);
                        if self.probes.started(c, Some(&r)) {
                            continue;
                        }
                    }
                    init_done = false;
                    break;
                }
                let state = self
                    .latest(&c.name)
                    .map(|r| r.exit.as_ref().map(|e| e.exit_code));
                match state {
                    Some(Some(0)) => continue,
                    Some(None) => {}
                    Some(Some(_)) if policy == "Never" => init_failed = true,
                    None | Some(Some(_)) => {
                        if let Some(wait) = self
                            .start_or_back_off(pod, c, true, &pod_cgroup, None)
                            .await
                        {
                            next = next.min(wait);
                        }
                    }
                }
                init_done = false;
                break;
            }
            if apps_done {
                self.stop_all(lifecycle::grace_period(pod, None)).await;
            }
            if init_done {
                for c in &spec.containers {
                    let restart = match self
                        .latest(&c.name)
                        .map(|r| r.exit.as_ref().map(|e| e.exit_code))
                    {
                        None => true,
                        Some(None) => false,
                        Some(Some(code)) => match policy.as_str() {
                            "Never" => false,
                            "OnFailure" => code != 0,
                            _ => true,
                        },
                    };
                    if restart
                        && let Some(wait) = self
                            .start_or_back_off(pod, c, false, &pod_cgroup, None)
                            .await
                    {
                        next = next.min(wait);
                    }
                }
                for c in &spec.containers {
                    match self.latest(&c.name).filter(|r| r.running()).cloned() {
                        Some(r) => self.probes.ensure(pod, c, &r, &pod_ip),
                        None => self.probes.stop(&c.name),
                    }
                }
                next = next.min(self.start_ephemeral(pod, &spec, &pod_cgroup).await);
            }
        }
        if finished {
            // A finished pod keeps its reported status; nothing runs again (sidecars left
            // running by a kubelet that stopped before it could stop them are stopped now).
            self.probes.stop_all();
            self.stop_all(lifecycle::grace_period(pod, None)).await;
            self.set_burstable_request(None);
            return RESYNC;
        }
        self.report(pod, init_done, init_failed, pod_error).await;
        next
    }

    /// A pod that was not admitted: containers adopted from before a restart are stopped, and
    /// the status says Failed with the rejection's reason, as the kubelet's rejectPod writes it.
    async fn reject(&mut self, pod: &Pod, r: &Rejection) {
        self.stop_all(lifecycle::grace_period(pod, None)).await;
        let spec = pod.spec.clone().unwrap_or_default();
        let status = PodStatus {
            phase: Some("Failed".to_string()),
            reason: Some(r.reason.clone()),
            message: Some(r.status_message()),
            qos_class: Some(skiff_k8s::qos::qos_class(&spec).as_str().to_string()),
            ..PodStatus::default()
        };
        self.k.status.set(pod, status).await;
    }

    /// Sets up (or refreshes) the pod's volumes; while they cannot be, its containers wait with
    /// the reason and a FailedMount event. Returns when to look again.
    #[tracing::instrument(level = "debug", skip_all, fields(pod = pod.metadata.name))]
    async fn sync_volumes(
        &mut self,
        pod: &Pod,
        spec: &k8s_openapi::api::core::v1::PodSpec,
    ) -> Duration {
        let node = self.node_view();
        let cfg = &self.k.config;
        match self
            .volumes
            .sync(
                &self.k.client,
                pod,
                &node,
                &cfg.root_dir,
                cfg.volume_sync_period,
            )
            .await
        {
            Ok(again) => again.unwrap_or(RESYNC),
            Err(e) => {
                let message = e.to_string();
                self.k
                    .events
                    .record(pod, None, EventType::Warning, "FailedMount", &message)
                    .await;
                for c in spec
                    .init_containers
                    .iter()
                    .flatten()
                    .chain(&spec.containers)
                {
                    self.waiting.insert(
                        c.name.clone(),
                        ("CreateContainerConfigError".to_string(), message.clone()),
                    );
                }
                VOLUME_RETRY
            }
        }
    }

    /// What the downward API needs of the node and the pod's address.
    fn node_view(&self) -> NodeView {
        let cfg = &self.k.config;
        NodeView {
            host_ip: cfg.node_ip.to_string(),
            pod_ip: self
                .sandbox
                .as_ref()
                .map(|s| s.pod_ip.clone())
                .unwrap_or_default(),
            node_cpus_milli: cfg.node_cpus as i128 * 1000,
            node_memory_bytes: cfg.node_memory_bytes as i128,
        }
    }

    fn pod_ip(&self) -> String {
        self.sandbox
            .as_ref()
            .map(|s| s.pod_ip.clone())
            .unwrap_or_default()
    }

    /// Kills the containers (and sidecars) whose liveness or startup probe failed; they restart
    /// as the restartPolicy says (a sidecar always).
    async fn kill_unhealthy(&mut self, pod: &Pod) {
        let spec = pod.spec.clone().unwrap_or_default();
        for (name, kind) in self.probes.take_failed() {
            let app = spec.containers.iter().find(|c| c.name == name);
            let sidecar = || {
                spec.init_containers
                    .iter()
                    .flatten()
                    .find(|c| c.name == name && is_sidecar(c))
            };
            let Some((c, init)) = app
                .map(|c| (c, false))
                .or_else(|| sidecar().map(|c| (c, true)))
            else {
                continue;
            };
            let Some(r) = self.latest(&name).filter(|r| r.running()).cloned() else {
                continue;
            };
            let what = kind.label().to_lowercase();
            let message = format!("Container {name} failed {what} probe, will be restarted");
            self.k
                .events
                .record(
                    pod,
                    Some((&name, init)),
                    EventType::Normal,
                    "Killing",
                    &message,
                )
                .await;
            let grace = lifecycle::grace_period(
                pod,
                kind.probe(c)
                    .and_then(|p| p.termination_grace_period_seconds),
            );
            lifecycle::stop_container(&self.k, pod, &r, &self.pod_ip(), grace).await;
            self.probes.stop(&name);
        }
        self.refresh();
    }

    /// activeDeadlineSeconds passed: every container is stopped and the pod fails.
    async fn exceed_deadline(&mut self, pod: &Pod) {
        self.failed = Some((
            lifecycle::DEADLINE_REASON.to_string(),
            lifecycle::DEADLINE_MESSAGE.to_string(),
        ));
        self.k
            .events
            .record(
                pod,
                None,
                EventType::Normal,
                lifecycle::DEADLINE_REASON,
                lifecycle::DEADLINE_MESSAGE,
            )
            .await;
        self.stop_all(lifecycle::grace_period(pod, None)).await;
    }

    /// Node-pressure eviction: the containers are killed at once (a hard threshold gives no grace
    /// period) or stopped within the pod's grace period capped by the soft threshold's maximum,
    /// the pod fails as Evicted, and everything it held on the node — writable layers, volumes,
    /// logs, cgroup, sandbox — is reclaimed before the eviction manager hears so.
    async fn evict(&mut self, pod: &Pod, order: EvictionOrder) {
        self.k
            .events
            .record(
                pod,
                None,
                EventType::Warning,
                crate::eviction::EVICTED_REASON,
                &order.message,
            )
            .await;
        self.stop_all(order.grace(lifecycle::grace_period(pod, None)))
            .await;
        self.failed = Some((crate::eviction::EVICTED_REASON.to_string(), order.message));
        self.report(pod, true, false, self.failed.clone()).await;
        self.release().await;
        let _ = order.reclaimed.send(());
    }

    fn ensure_pod_cgroup(&self, pod: &Pod) -> String {
        let spec = pod.spec.clone().unwrap_or_default();
        let qos = skiff_k8s::qos::qos_class(&spec);
        let res = skiff_k8s::qos::pod_resources(&spec);
        let path = match cgroups::ensure_pod_cgroup(
            &self.k.cgroups,
            &self.k.config.cgroup_root,
            qos,
            &self.uid,
            &res,
            self.k.config.pod_pids_limit,
        ) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(pod = %self.uid, "{e}");
                cgroups::pod_cgroup(&self.k.config.cgroup_root, qos, &self.uid)
            }
        };
        if qos == QosClass::Burstable {
            self.set_burstable_request(Some(res.cpu_request.unwrap_or(0)));
        }
        path
    }

    /// The pod's cpu request in the Burstable tier's weight; `None` once it no longer runs.
    fn set_burstable_request(&self, request: Option<i128>) {
        let k = &self.k;
        if let Err(e) = k
            .burstable
            .set(&k.cgroups, &k.config.cgroup_root, &self.uid, request)
        {
            tracing::warn!("burstable tier: {e}");
        }
    }

    /// Starts the ephemeral containers not started yet (each runs once, never restarted), one
    /// with a target in its target's PID namespace once the target runs; returns when to look
    /// again.
    async fn start_ephemeral(&mut self, pod: &Pod, spec: &PodSpec, pod_cgroup: &str) -> Duration {
        let mut next = RESYNC;
        for ec in spec.ephemeral_containers.iter().flatten() {
            if self.latest(&ec.name).is_some() {
                continue;
            }
            let pid_namespace = match ec.target_container_name.as_deref() {
                None | Some("") => None,
                Some(target) => match self
                    .latest(target)
                    .filter(|r| r.running())
                    .and_then(|r| r.started.as_ref())
                {
                    Some(started) => Some(PathBuf::from(format!("/proc/{}/ns/pid", started.pid))),
                    None => {
                        next = next.min(INITIAL_BACKOFF);
                        continue;
                    }
                },
            };
            let c = ephemeral_as_container(ec);
            if let Some(wait) = self
                .start_or_back_off(pod, &c, false, pod_cgroup, pid_namespace)
                .await
            {
                next = next.min(wait);
            }
        }
        next
    }

    /// Starts the container's next attempt, or holds it in back-off; returns when to look again
    /// when held.
    async fn start_or_back_off(
        &mut self,
        pod: &Pod,
        c: &Container,
        init: bool,
        pod_cgroup: &str,
        pid_namespace: Option<PathBuf>,
    ) -> Option<Duration> {
        if let Some((_, at)) = self.retry.get(&c.name)
            && let Some(remaining) = at.checked_duration_since(tokio::time::Instant::now())
        {
            if let Some(w) = self.waiting.get_mut(&c.name)
                && w.0 == "ErrImagePull"
            {
                let image = c.image.clone().unwrap_or_default();
                *w = (
                    "ImagePullBackOff".to_string(),
                    format!("Back-off pulling image {image:?}: {}", w.1),
                );
            }
            return Some(remaining);
        }
        let attempt = match self.latest(&c.name) {
            None => 0,
            Some(last) => {
                let exit = last.exit.as_ref()?;
                let delay = backoff(last.meta.attempt);
                let since = (Utc::now() - exit.finished_at).to_std().unwrap_or_default();
                if since < delay {
                    let remaining = delay - since;
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    let ns = pod.metadata.namespace.clone().unwrap_or_default();
                    let message = format!(
                        "back-off {}s restarting failed container={} pod={name}_{ns}({})",
                        delay.as_secs(),
                        c.name,
                        self.uid
                    );
                    self.waiting
                        .insert(c.name.clone(), ("CrashLoopBackOff".to_string(), message));
                    self.k
                        .events
                        .record(
                            pod,
                            Some((&c.name, init)),
                            EventType::Warning,
                            "BackOff",
                            &format!(
                                "Back-off restarting failed container {} in pod {name}_{ns}({})",
                                c.name, self.uid
                            ),
                        )
                        .await;
                    return Some(remaining);
                }
                last.meta.attempt + 1
            }
        };
        match self
            .start(pod, c, init, attempt, pod_cgroup, pid_namespace)
            .await
        {
            Ok(()) => {
                self.waiting.remove(&c.name);
                self.retry.remove(&c.name);
                None
            }
            Err((reason, message)) => {
                self.k
                    .events
                    .record(
                        pod,
                        Some((&c.name, init)),
                        EventType::Warning,
                        "Failed",
                        &format!("Error: {message}"),
                    )
                    .await;
                // A failed pull is held back 10 s doubling up to 5 minutes, as the kubelet
                // holds it, and looked at again a moment later, so that the wait shows as
                // ImagePullBackOff (above) rather than ErrImagePull until the next try; other
                // errors (a missing ConfigMap, …) are tried again at each sync.
                let next = if reason == "ErrImagePull" {
                    let failures = self.retry.get(&c.name).map_or(0, |r| r.0) + 1;
                    self.retry.insert(
                        c.name.clone(),
                        (failures, tokio::time::Instant::now() + backoff(failures)),
                    );
                    PULL_BACKOFF_SHOWN_AFTER
                } else {
                    INITIAL_BACKOFF
                };
                self.waiting.insert(c.name.clone(), (reason, message));
                Some(next)
            }
        }
    }

    /// The container's image, pulled as its policy says, with the kubelet's events; on failure
    /// the waiting reason (ErrImagePull, ErrImageNeverPull, InvalidImageName) and message.
    #[tracing::instrument(level = "debug", skip_all, fields(pod = pod.metadata.name))]
    async fn ensure_image(
        &self,
        pod: &Pod,
        c: &Container,
        init: bool,
    ) -> Result<image::Image, (String, String)> {
        let k = &self.k;
        let ev = Some((c.name.as_str(), init));
        let reference = c.image.clone().unwrap_or_default();
        let invalid = |e: ImageError| ("InvalidImageName".to_string(), e.to_string());
        let policy =
            PullPolicy::from_spec(c.image_pull_policy.as_deref(), &reference).map_err(invalid)?;
        image::normalize_reference(&reference).map_err(invalid)?;
        let store = k.images.clone();
        let name = reference.clone();
        let present = tokio::task::spawn_blocking(move || store.lookup(&name).is_ok())
            .await
            .unwrap_or(false);
        let pulls = policy == PullPolicy::Always || (!present && policy != PullPolicy::Never);
        let mut options = PullOptions {
            insecure_registries: k.config.insecure_registries.clone(),
            ..PullOptions::default()
        };
        if pulls {
            self.add_pull_secrets(pod, &mut options).await;
            k.events
                .record(
                    pod,
                    ev,
                    EventType::Normal,
                    "Pulling",
                    &format!("Pulling image {reference:?}"),
                )
                .await;
        }
        let began = std::time::Instant::now();
        match k.images.ensure(&reference, policy, &options).await {
            Ok(image) => {
                let message = if pulls {
                    format!(
                        "Successfully pulled image {reference:?} in {:.3}s",
                        began.elapsed().as_secs_f64()
                    )
                } else {
                    format!("Container image {reference:?} already present on machine")
                };
                k.events
                    .record(pod, ev, EventType::Normal, "Pulled", &message)
                    .await;
                Ok(image)
            }
            Err(e @ ImageError::NeverPull { .. }) => Err((
                "ErrImageNeverPull".to_string(),
                format!(
                    "Container image {reference:?} is not present with pull policy of Never: {e}"
                ),
            )),
            Err(e) => {
                let message = format!("Failed to pull image {reference:?}: {e}");
                Err(("ErrImagePull".to_string(), message))
            }
        }
    }

    /// The pod's imagePullSecrets as registry credentials (missing or bad ones are skipped, as
    /// the kubelet does, and the pull tries anonymously).
    async fn add_pull_secrets(&self, pod: &Pod, options: &mut PullOptions) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(self.k.client.clone(), &ns);
        let refs = pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.clone())
            .unwrap_or_default();
        for r in refs {
            if let Ok(Some(secret)) = api.get_opt(&r.name).await
                && let Some(json) = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(".dockerconfigjson"))
                && let Err(e) = options.add_docker_config_json(&json.0)
            {
                tracing::warn!(secret = %r.name, "imagePullSecret: {e}");
            }
        }
    }

    /// The environment's ConfigMaps, Secrets and Services, fetched from the API.
    #[tracing::instrument(level = "debug", skip_all, fields(pod = pod.metadata.name))]
    async fn env_sources(&self, pod: &Pod, c: &Container) -> Result<EnvSources, String> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let (cms, secrets) = container_env::referenced(c);
        let mut sources = EnvSources::default();
        let cm_api: Api<ConfigMap> = Api::namespaced(self.k.client.clone(), &ns);
        for name in cms {
            match cm_api.get_opt(&name).await {
                Ok(Some(cm)) => {
                    sources
                        .config_maps
                        .insert(name, cm.data.unwrap_or_default());
                }
                Ok(None) => {}
                Err(e) => return Err(format!("configmap {name:?}: {e}")),
            }
        }
        let secret_api: Api<Secret> = Api::namespaced(self.k.client.clone(), &ns);
        for name in secrets {
            match secret_api.get_opt(&name).await {
                Ok(Some(s)) => {
                    let data = s
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                        .chain(s.string_data.unwrap_or_default())
                        .collect();
                    sources.secrets.insert(name, data);
                }
                Ok(None) => {}
                Err(e) => return Err(format!("secret {name:?}: {e}")),
            }
        }
        let links = pod
            .spec
            .as_ref()
            .and_then(|s| s.enable_service_links)
            .unwrap_or(true);
        if links {
            sources.services = self
                .k
                .listers
                .services(&ns)
                .await
                .map_err(|e| format!("listing services: {e}"))?;
        }
        if ns != "default" || !links {
            let default = self
                .k
                .listers
                .services("default")
                .await
                .map_err(|e| format!("listing services: {e}"))?;
            sources.services.extend(
                default
                    .into_iter()
                    .filter(|s| s.metadata.name.as_deref() == Some("kubernetes")),
            );
        }
        Ok(sources)
    }

    /// Creates and starts one attempt of a container; on failure, the waiting reason and the
    /// message for the status.
    #[tracing::instrument(level = "debug", skip_all, fields(pod = pod.metadata.name, container = c.name))]
    async fn start(
        &mut self,
        pod: &Pod,
        c: &Container,
        init: bool,
        attempt: u32,
        pod_cgroup: &str,
        pid_namespace: Option<PathBuf>,
    ) -> Result<(), (String, String)> {
        let k = self.k.clone();
        let cfg = &k.config;
        let ev = Some((c.name.as_str(), init));
        let image_ref = c.image.clone().unwrap_or_default();
        let image = self.ensure_image(pod, c, init).await?;
        let config_error = |m: String| ("CreateContainerConfigError".to_string(), m);
        let sources = self.env_sources(pod, c).await.map_err(config_error)?;
        let sandbox = self
            .sandbox
            .clone()
            .expect("sandbox made before containers");
        let env = container_env::container_env(pod, c, &self.node_view(), &sources)
            .map_err(|e| config_error(e.to_string()))?;
        let volume_mounts = self
            .volumes
            .ready()
            .expect("volumes set up before containers")
            .mounts_for(c, &env)
            .map_err(|e| config_error(e.to_string()))?;

        let id = containers::new_id();
        let dir = containers::containers_dir(&cfg.run_dir).join(&id);
        let meta = ContainerMeta {
            id: id.clone(),
            pod_uid: self.uid.clone(),
            pod_namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            pod_name: pod.metadata.name.clone().unwrap_or_default(),
            name: c.name.clone(),
            init,
            attempt,
            image: image_ref.clone(),
            image_id: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            created_at: Utc::now(),
            pod_cgroup: pod_cgroup.to_string(),
            layer_dir: cfg.root_dir.join("containers").join(&id),
        };
        let record = ContainerRecord {
            meta: meta.clone(),
            dir: dir.clone(),
            started: None,
            exit: None,
            termination_message: None,
        };
        // Directories, the overlay mount and fsynced files, off the runtime's worker threads.
        let made = crate::blocking::run(|| {
            let _files = tracing::debug_span!("container_files").entered();
            let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
            std::fs::create_dir_all(record.bundle()).map_err(|e| io("state directory", e))?;
            image::mount_rootfs(&image, &meta.layer_dir).map_err(|e| e.to_string())?;
            let termination_log = record.termination_log();
            std::fs::write(&termination_log, b"").map_err(|e| io("termination log", e))?;
            let spec = oci_config::generate(&ContainerSetup {
                pod,
                container: c,
                image: &image.config,
                env: &env,
                rootfs: &record.rootfs(),
                sandbox: &sandbox.view,
                termination_log: &termination_log,
                cgroups_path: &record.cgroup(),
                volume_mounts: &volume_mounts,
                seccomp_dir: &cfg.root_dir.join("seccomp"),
                pid_namespace: pid_namespace.clone(),
                cgroup_namespace: self.k.cgroups.unified(),
            })
            .map_err(|e| e.to_string())?;
            shim::write_json(&record.bundle(), "config.json", &spec)
                .map_err(|e| io("config.json", e))?;
            let log_dir =
                pod_log_dir(cfg, &meta.pod_namespace, &meta.pod_name, &self.uid).join(&c.name);
            std::fs::create_dir_all(&log_dir).map_err(|e| io("log directory", e))?;
            shim::write_json(&dir, containers::META, &meta).map_err(|e| io("meta.json", e))?;
            Ok::<PathBuf, String>(log_dir.join(format!("{attempt}.log")))
        });
        let log_path = match made {
            Ok(p) => p,
            Err(message) => {
                remove_container_files(&record);
                return Err(config_error(message));
            }
        };
        k.events
            .record(
                pod,
                ev,
                EventType::Normal,
                "Created",
                &format!("Created container {}", c.name),
            )
            .await;
        let args = ShimArgs {
            runtime: k.runtime.path.clone(),
            runtime_root: k.runtime.root.clone(),
            id: id.clone(),
            bundle: record.bundle(),
            state_dir: dir.clone(),
            log_path,
            log_max_size: cfg.container_log_max_size,
            memory_cgroup: k.cgroups.memory_dir(&record.cgroup()),
            stdin: c.stdin.unwrap_or(false),
            stdin_once: c.stdin_once.unwrap_or(false),
            tty: c.tty.unwrap_or(false),
        };
        let out = tokio::process::Command::new(&cfg.shim_path)
            .args(args.to_args())
            .stdin(std::process::Stdio::null())
            .output()
            .instrument(tracing::debug_span!("shim"))
            .await;
        let failure = match out {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Some(format!("running {}: {e}", cfg.shim_path.display())),
        };
        let mut record = record;
        record.refresh();
        if let Some(message) = &failure {
            if record.exit.is_none() {
                let exit = ExitRecord {
                    exit_code: 128,
                    finished_at: Utc::now(),
                    oom_killed: false,
                    start_error: Some(message.clone()),
                };
                let _ = shim::write_json(&dir, shim::EXIT, &exit);
                record.exit = Some(exit);
            }
            k.events
                .record(
                    pod,
                    ev,
                    EventType::Warning,
                    "Failed",
                    &format!("Error: {message}"),
                )
                .await;
        } else {
            k.events
                .record(
                    pod,
                    ev,
                    EventType::Normal,
                    "Started",
                    &format!("Started container {}", c.name),
                )
                .await;
            self.watch_exit(&record);
        }
        let hooked = failure.is_none().then(|| record.clone());
        // The attempt before the previous one is no longer reported: remove it; the previous
        // one keeps its records (lastState) but not its runtime container or root.
        let list = self.records.entry(c.name.clone()).or_default();
        list.push(record);
        while list.len() > 2 {
            let old = list.remove(0);
            self.k.runtime.delete(&old.meta.id).await.ok();
            remove_container_files(&old);
        }
        if list.len() == 2 {
            let prev = list[0].clone();
            if let Err(e) = self.k.runtime.delete(&prev.meta.id).await {
                tracing::warn!(id = %prev.meta.id, "runtime delete: {e}");
            }
            if let Err(e) = image::unmount_rootfs(&prev.meta.layer_dir) {
                tracing::warn!(id = %prev.meta.id, "{e}");
            }
        }
        if let Some(r) = hooked
            && lifecycle::post_start(&self.k, pod, c, &r, &self.pod_ip())
                .await
                .is_err()
        {
            let grace = lifecycle::grace_period(pod, None);
            lifecycle::stop_container(&self.k, pod, &r, &self.pod_ip(), grace).await;
            self.refresh();
        }
        Ok(())
    }

    /// Wakes the worker when the container's shim exits (a pidfd: no polling).
    fn watch_exit(&mut self, r: &ContainerRecord) {
        if !self.watched.insert(r.meta.id.clone()) {
            return;
        }
        let wake = self.wake.clone();
        let pid = r.shim_pid();
        let id = r.meta.id.clone();
        let cmdline_ok = pid.is_some_and(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&id))
        });
        tokio::spawn(async move {
            if let Some(pid) = pid.filter(|_| cmdline_ok)
                && let Some(fd) = pidfd_open(pid)
                // SAFETY: the AsyncFd owns the pidfd, which stays open until it is dropped.
                && let Ok(afd) = unsafe { AsyncFd::register(fd) }
            {
                let _ = afd.readable().await;
            }
            wake.notify_one();
        });
    }

    /// The status from the containers' records, written if it changed.
    #[tracing::instrument(level = "debug", skip_all, fields(pod = pod.metadata.name))]
    async fn report(
        &mut self,
        pod: &Pod,
        init_done: bool,
        init_failed: bool,
        pod_error: Option<(String, String)>,
    ) {
        let spec = pod.spec.clone().unwrap_or_default();
        let view = |c: &Container, held: Option<(String, String)>| {
            let current = self.latest(&c.name);
            let waiting = self
                .waiting
                .get(&c.name)
                .cloned()
                .or(held)
                .filter(|_| current.is_none_or(|r| r.exit.is_some()));
            status::container_status(&ContainerView {
                name: &c.name,
                image: c.image.as_deref().unwrap_or_default(),
                current,
                previous: self.previous(&c.name),
                waiting,
                ready: self.probes.ready(c, current),
                started: self.probes.started(c, current),
            })
        };
        let init: Vec<_> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| view(c, None))
            .collect();
        let held =
            |_: &Container| (!init_done).then(|| ("PodInitializing".to_string(), String::new()));
        let apps: Vec<_> = spec.containers.iter().map(|c| view(c, held(c))).collect();
        let ephemeral: Vec<_> = spec
            .ephemeral_containers
            .iter()
            .flatten()
            .map(|ec| view(&ephemeral_as_container(ec), None))
            .collect();
        let status = status::pod_status(PodView {
            pod,
            sandbox_ready: self.sandbox.is_some(),
            pod_ip: self.sandbox.as_ref().map(|s| s.pod_ip.clone()),
            host_ip: self.k.config.node_ip.to_string(),
            init,
            init_failed,
            apps,
            ephemeral,
            pod_error,
        });
        let mut status = status;
        if let Some((reason, message)) = &self.failed {
            status.phase = Some("Failed".to_string());
            if reason == crate::eviction::EVICTED_REASON {
                status
                    .conditions
                    .get_or_insert_default()
                    .push(crate::eviction::disruption_condition(message));
            }
        }
        self.k.status.set(pod, status).await;
    }

    /// Stops every container (SIGTERM, the grace period, SIGKILL), removes everything the pod
    /// had on the node, and — when the pod is being deleted in the API — removes the object.
    async fn shutdown(&mut self, delete_object: bool) {
        let pod = self.last_pod.clone();
        let grace = pod
            .as_ref()
            .and_then(|p| {
                p.metadata.deletion_grace_period_seconds.or_else(|| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                })
            })
            .unwrap_or(if pod.is_some() { 30 } else { 2 })
            .max(0) as u64;
        let mut grace = Duration::from_secs(grace);
        if let Some(cap) = self.k.node_shutdown_grace.get() {
            grace = grace.min(*cap);
        }
        self.stop_all(grace).await;
        self.cleanup().await;
        if delete_object && let Some(pod) = &pod {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(self.k.client.clone(), &ns);
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => tracing::info!(pod = %format!("{ns}/{name}"), "pod removed"),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), "removing the pod: {e}"),
            }
        }
        self.k.status.forget(&self.uid);
        self.k.events.forget(&self.uid);
    }

    /// Stops every running container within `grace`: the app (and regular init) containers
    /// first, then the sidecars, the last one first, as the kubelet does.
    async fn stop_all(&mut self, grace: Duration) {
        self.refresh();
        let running: Vec<ContainerRecord> = self
            .records
            .values()
            .flatten()
            .filter(|r| r.running())
            .cloned()
            .collect();
        if running.is_empty() {
            return;
        }
        self.probes.stop_all();
        let sidecars: Vec<String> = self
            .last_pod
            .iter()
            .flat_map(|p| {
                p.spec
                    .iter()
                    .flat_map(|s| s.init_containers.iter().flatten())
            })
            .filter(|c| is_sidecar(c))
            .map(|c| c.name.clone())
            .collect();
        let is_sidecar_record =
            |r: &ContainerRecord| r.meta.init && sidecars.contains(&r.meta.name);
        let (side, main): (Vec<_>, Vec<_>) = running.into_iter().partition(is_sidecar_record);
        let deadline = tokio::time::Instant::now() + grace;
        self.stop_group(main, grace).await;
        for name in sidecars.iter().rev() {
            let group: Vec<ContainerRecord> = side
                .iter()
                .filter(|r| &r.meta.name == name)
                .cloned()
                .collect();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.stop_group(group, left).await;
        }
    }

    /// preStop hooks, SIGTERM, `grace` to exit, then SIGKILL, for the running containers `group`.
    async fn stop_group(&mut self, group: Vec<ContainerRecord>, grace: Duration) {
        if group.is_empty() {
            return;
        }
        let ids: HashSet<String> = group.iter().map(|r| r.meta.id.clone()).collect();
        let begun = tokio::time::Instant::now();
        if let Some(pod) = self.last_pod.clone() {
            lifecycle::pre_stop_all(&self.k, &pod, &group, &self.pod_ip(), grace).await;
        }
        let grace = grace.saturating_sub(begun.elapsed());
        for r in &group {
            self.watch_exit(r);
            if let Some(pod) = &self.last_pod {
                self.k
                    .events
                    .record(
                        pod,
                        Some((&r.meta.name, r.meta.init)),
                        EventType::Normal,
                        "Killing",
                        &format!("Stopping container {}", r.meta.name),
                    )
                    .await;
            }
            if let Err(e) = self.k.runtime.kill(&r.meta.id, "TERM").await {
                tracing::debug!(id = %r.meta.id, "SIGTERM: {e}");
            }
        }
        if !self.wait_stopped(&ids, grace).await {
            for r in self
                .records
                .values()
                .flatten()
                .filter(|r| r.running() && ids.contains(&r.meta.id))
            {
                if let Err(e) = self.k.runtime.kill(&r.meta.id, "KILL").await {
                    tracing::debug!(id = %r.meta.id, "SIGKILL: {e}");
                }
            }
            if !self.wait_stopped(&ids, KILL_WAIT).await {
                tracing::warn!(pod = %self.uid, "containers still running after SIGKILL");
            }
        }
    }

    /// Waits until none of the containers `ids` runs, or `limit` passes; whether they stopped.
    async fn wait_stopped(&mut self, ids: &HashSet<String>, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.refresh();
            if self
                .records
                .values()
                .flatten()
                .all(|r| !r.running() || !ids.contains(&r.meta.id))
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    async fn cleanup(&mut self) {
        self.release().await;
        self.records.clear();
        tracing::info!(pod = %self.uid, "pod cleaned up");
    }

    /// Removes everything the pod has on the node (runtime containers, their files, cgroups,
    /// logs, volumes, sandbox); the records stay in memory for the status.
    async fn release(&mut self) {
        let cfg = self.k.config.clone();
        let records: Vec<ContainerRecord> = self.records.values().flatten().cloned().collect();
        let mut pod_cgroups: HashSet<String> = HashSet::new();
        let mut log_dirs: HashSet<PathBuf> = HashSet::new();
        for r in &records {
            if let Err(e) = self.k.runtime.delete(&r.meta.id).await {
                tracing::warn!(id = %r.meta.id, "runtime delete: {e}");
            }
            remove_container_files(r);
            pod_cgroups.insert(r.meta.pod_cgroup.clone());
            log_dirs.insert(pod_log_dir(
                &cfg,
                &r.meta.pod_namespace,
                &r.meta.pod_name,
                &self.uid,
            ));
        }
        if let Some(pod) = &self.last_pod {
            let spec = pod.spec.clone().unwrap_or_default();
            pod_cgroups.insert(cgroups::pod_cgroup(
                &cfg.cgroup_root,
                skiff_k8s::qos::qos_class(&spec),
                &self.uid,
            ));
            log_dirs.insert(pod_log_dir(
                &cfg,
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default(),
                &self.uid,
            ));
        }
        for cg in pod_cgroups {
            cgroups::remove_pod_cgroup(&self.k.cgroups, &cg);
        }
        self.set_burstable_request(None);
        for d in log_dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        self.k.sandboxes.remove(&self.uid).await;
        self.sandbox = None;
    }
}

/// Whether the init container is a sidecar (`restartPolicy: Always`): started in its turn,
/// then kept running beside the app containers.
/// An ephemeral container as the container it runs as (the same fields but its target).
fn ephemeral_as_container(ec: &EphemeralContainer) -> Container {
    let mut v = serde_json::to_value(ec).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("targetContainerName");
    }
    serde_json::from_value(v).unwrap_or_else(|_| Container {
        name: ec.name.clone(),
        ..Container::default()
    })
}

pub fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// Removes a container's root mount, its state directory and its writable layer.
fn remove_container_files(r: &ContainerRecord) {
    if let Err(e) = image::unmount_rootfs(&r.meta.layer_dir) {
        tracing::warn!(id = %r.meta.id, "{e}");
    }
    for d in [&r.dir, &r.meta.layer_dir] {
        if let Err(e) = std::fs::remove_dir_all(d)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {e}", d.display());
        }
    }
}

/// A pidfd for `pid` (readable once the process exits); `None` if it is already gone.
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the descriptor was just returned to us and is owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_minutes() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(6), Duration::from_secs(300));
        assert_eq!(backoff(60), Duration::from_secs(300));
    }
}
