//! Node-pressure eviction, as the kubelet's eviction manager does it with hard thresholds
//! (`--eviction-hard memory.available<100Mi,nodefs.available<10%`): every monitoring period the
//! signals are observed — `memory.available` from /proc/meminfo's MemAvailable (or, when the
//! pods' cgroup root has a memory limit, that limit minus the root's working set, if smaller),
//! `nodefs.available` from statvfs of the root directory — and while a threshold is met the node
//! reports MemoryPressure/DiskPressure (for at least the pressure transition period after it was
//! last met) and one pod is evicted per period: pods using more than they request first (a
//! BestEffort pod requests nothing), then the lower priority, then the larger use of the starved
//! resource. The next pod is picked only once the last one's resources are reclaimed (or 30 s
//! passed), so that the pressure relieved by one eviction does not cost a second pod. Under disk
//! pressure the images no pod or container on the node uses are collected first (least recently
//! used first), and no pod is evicted in a period whose collection freed enough.
//!
//! Soft thresholds (`--eviction-soft`) count only once their signal has stayed past them for the
//! signal's grace period (`--eviction-soft-grace-period memory.available=1m30s`); a pod they
//! evict gets its termination grace period capped by `--eviction-max-pod-grace-period` (preStop
//! and SIGTERM first), where a hard threshold kills at once.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use skiff_k8s::qos::{QosClass, qos_class};
use tokio::sync::{oneshot, watch};

use crate::cgroups::CgroupMounts;
use crate::containers::{self, ContainerRecord};
use crate::image::ImageStore;
use crate::pod_worker::{KubeletConfig, pod_log_dir};

/// The thresholds the real kubelet applies when none are given (less the inode and image
/// filesystem ones, which skiff does not observe).
pub const DEFAULT_EVICTION_HARD: &str = "memory.available<100Mi,nodefs.available<10%";
/// How long an evicted pod's resources may take to be reclaimed before the next pod is picked.
const CLEANUP_WAIT: Duration = Duration::from_secs(30);
/// The pod status reason of an evicted pod (and its event's).
pub const EVICTED_REASON: &str = "Evicted";

/// The condition an evicted pod carries, as the kubelet sets it (`DisruptionTarget`, reason
/// `TerminationByKubelet`, the eviction's message), for controllers that tell a disruption from
/// a failure (a Job's podFailurePolicy).
pub fn disruption_condition(message: &str) -> PodCondition {
    PodCondition {
        type_: "DisruptionTarget".to_string(),
        status: "True".to_string(),
        reason: Some("TerminationByKubelet".to_string()),
        message: Some(message.to_string()),
        ..PodCondition::default()
    }
}

/// An eviction signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    MemoryAvailable,
    NodefsAvailable,
}

impl Signal {
    fn parse(name: &str) -> Option<Signal> {
        match name.trim() {
            "memory.available" => Some(Signal::MemoryAvailable),
            "nodefs.available" => Some(Signal::NodefsAvailable),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodefsAvailable => "nodefs.available",
        }
    }

    /// The resource the signal starves (as the eviction message names it).
    fn resource(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory",
            Signal::NodefsAvailable => "ephemeral-storage",
        }
    }
}

/// A threshold's value: a quantity of bytes or a percentage of the capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    Bytes(u64),
    Percent(f64),
}

impl Amount {
    fn bytes(self, capacity: u64) -> u64 {
        match self {
            Amount::Bytes(b) => b,
            Amount::Percent(p) => (capacity as f64 * p / 100.0) as u64,
        }
    }
}

/// One threshold: the signal below the amount.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    pub amount: Amount,
}

/// Eviction thresholds (`--eviction-hard`, `--eviction-soft`).
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds(pub Vec<Threshold>);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ThresholdError {
    #[error("eviction threshold {0:?}: expected SIGNAL<QUANTITY or SIGNAL<PERCENT%")]
    Syntax(String),
    #[error(
        "eviction threshold {0:?}: unknown signal (skiff observes memory.available and nodefs.available)"
    )]
    Signal(String),
    #[error("eviction threshold {0:?}: bad quantity or percentage")]
    Amount(String),
}

impl FromStr for Thresholds {
    type Err = ThresholdError;

    fn from_str(s: &str) -> Result<Thresholds, ThresholdError> {
        let mut out = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, value) = item
                .split_once('<')
                .ok_or_else(|| ThresholdError::Syntax(item.to_string()))?;
            let signal =
                Signal::parse(name).ok_or_else(|| ThresholdError::Signal(item.to_string()))?;
            let value = value.trim();
            let bad = || ThresholdError::Amount(item.to_string());
            let amount = match value.strip_suffix('%') {
                Some(p) => {
                    let p: f64 = p.parse().map_err(|_| bad())?;
                    if !(0.0..=100.0).contains(&p) {
                        return Err(bad());
                    }
                    Amount::Percent(p)
                }
                None => {
                    let b = skiff_k8s::quantity::units(&Quantity(value.to_string()))
                        .map_err(|_| bad())?;
                    Amount::Bytes(u64::try_from(b).map_err(|_| bad())?)
                }
            };
            out.retain(|t: &Threshold| t.signal != signal);
            out.push(Threshold { signal, amount });
        }
        Ok(Thresholds(out))
    }
}

/// The soft thresholds' grace periods (`--eviction-soft-grace-period`): `SIGNAL=DURATION`,
/// comma-separated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GracePeriods(pub HashMap<Signal, Duration>);

impl FromStr for GracePeriods {
    type Err = String;

    fn from_str(s: &str) -> Result<GracePeriods, String> {
        let mut out = HashMap::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, value) = item.split_once('=').ok_or_else(|| {
                format!("eviction grace period {item:?}: expected SIGNAL=DURATION")
            })?;
            let signal = Signal::parse(name)
                .ok_or_else(|| format!("eviction grace period {item:?}: unknown signal"))?;
            out.insert(signal, parse_duration(value.trim())?);
        }
        Ok(GracePeriods(out))
    }
}

/// A Go-style duration (`5m`, `10s`, `1m30s`, `500ms`), as the kubelet's duration flags take.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration {s:?} (examples: 10s, 5m, 1m30s, 500ms)");
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(digits);
        let number: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return Err(bad()),
        };
        total += Duration::from_secs_f64(number * seconds);
        rest = tail;
    }
    Ok(total)
}

/// The signals as observed once: (available, capacity) in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observation {
    pub memory: (u64, u64),
    pub nodefs: (u64, u64),
}

impl Observation {
    /// Reads the signals: memory from /proc/meminfo and the pods' cgroup root, the node
    /// filesystem from statvfs of `root_dir`.
    pub fn read(root_dir: &Path, cgroups: &CgroupMounts, cgroup_root: &str) -> Observation {
        let total = crate::host::meminfo_kib("MemTotal:").unwrap_or(0) * 1024;
        let available = crate::host::meminfo_kib("MemAvailable:").unwrap_or(0) * 1024;
        let mut memory = (available, total);
        if let Some(dir) = cgroups.memory_dir(cgroup_root)
            && let Some(limit) = memory_limit(&dir).filter(|l| *l < total)
        {
            let used = working_set(&dir).unwrap_or(0);
            memory = (memory.0.min(limit.saturating_sub(used)), limit);
        }
        let nodefs = nix::sys::statvfs::statvfs(root_dir)
            .map(|s| {
                let frag = s.fragment_size();
                (s.blocks_available() * frag, s.blocks() * frag)
            })
            .unwrap_or((u64::MAX, 0));
        Observation { memory, nodefs }
    }

    fn of(&self, signal: Signal) -> (u64, u64) {
        match signal {
            Signal::MemoryAvailable => self.memory,
            Signal::NodefsAvailable => self.nodefs,
        }
    }
}

impl Thresholds {
    /// The thresholds met by `o`, with the threshold's quantity and the available amount.
    pub fn met(&self, o: &Observation) -> Vec<(Signal, u64, u64)> {
        self.0
            .iter()
            .filter_map(|t| {
                let (available, capacity) = o.of(t.signal);
                let limit = t.amount.bytes(capacity);
                (capacity > 0 && available < limit).then_some((t.signal, limit, available))
            })
            .collect()
    }
}

/// The pressure conditions the node reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
}

/// The order a pod's worker gets: fail the pod as evicted, reclaim what it holds, then say so.
pub struct EvictionOrder {
    pub message: String,
    /// A soft threshold's cap on the pod's termination grace period; `None` (a hard threshold):
    /// killed at once.
    pub max_grace: Option<Duration>,
    pub reclaimed: oneshot::Sender<()>,
}

impl EvictionOrder {
    /// The grace period the pod's containers get.
    pub fn grace(&self, pod_grace: Duration) -> Duration {
        self.max_grace
            .map_or(Duration::ZERO, |max| pod_grace.min(max))
    }
}

/// The pending orders, by pod uid (shared between the manager and the workers).
#[derive(Default)]
pub struct EvictionOrders(std::sync::Mutex<HashMap<String, EvictionOrder>>);

impl EvictionOrders {
    pub fn give(&self, uid: &str, order: EvictionOrder) {
        self.0
            .lock()
            .expect("eviction orders")
            .insert(uid.to_string(), order);
    }

    pub fn take(&self, uid: &str) -> Option<EvictionOrder> {
        self.0.lock().expect("eviction orders").remove(uid)
    }
}

/// The eviction manager's settings.
#[derive(Debug, Clone)]
pub struct EvictionConfig {
    pub thresholds: Thresholds,
    pub soft: Thresholds,
    pub soft_grace: GracePeriods,
    pub max_pod_grace_period: Duration,
    pub monitoring_period: Duration,
    pub pressure_transition_period: Duration,
}

/// The manager's state between periods.
pub struct EvictionManager {
    pub config: EvictionConfig,
    /// When each signal's threshold was last met.
    last_met: HashMap<Signal, Instant>,
    /// Since when each signal has been past its soft threshold without a break.
    soft_since: HashMap<Signal, Instant>,
    pressure: watch::Sender<Pressure>,
    /// The last evicted pod's reclaim, and when the manager stops waiting for it.
    pending: Option<(oneshot::Receiver<()>, Instant)>,
}

impl EvictionConfig {
    /// Every soft threshold needs its grace period, as the kubelet demands.
    pub fn validate(&self) -> Result<(), String> {
        match self
            .soft
            .0
            .iter()
            .find(|t| !self.soft_grace.0.contains_key(&t.signal))
        {
            Some(t) => Err(format!(
                "--eviction-soft {}: no grace period for it in --eviction-soft-grace-period",
                t.signal.name()
            )),
            None => Ok(()),
        }
    }
}

impl EvictionManager {
    pub fn new(config: EvictionConfig) -> EvictionManager {
        EvictionManager {
            config,
            last_met: HashMap::new(),
            soft_since: HashMap::new(),
            pressure: watch::channel(Pressure::default()).0,
            pending: None,
        }
    }

    /// The node's pressure conditions as they change.
    pub fn subscribe(&self) -> watch::Receiver<Pressure> {
        self.pressure.subscribe()
    }

    /// One monitoring period: observes the signals, updates the pressure conditions and, while a
    /// threshold is met, picks the pod to evict among `pods` (the active, admitted ones).
    /// Returns the pod's uid and the order for its worker.
    pub async fn check(
        &mut self,
        config: Arc<KubeletConfig>,
        cgroups: CgroupMounts,
        images: ImageStore,
        pods: Vec<Arc<Pod>>,
    ) -> Option<(String, EvictionOrder)> {
        let run_dir = config.run_dir.clone();
        let pods_in_use = pods.clone();
        let observed = {
            let (config, cgroups) = (config.clone(), cgroups.clone());
            tokio::task::spawn_blocking(move || {
                Observation::read(&config.root_dir, &cgroups, &config.cgroup_root)
            })
            .await
            .ok()?
        };
        let now = Instant::now();
        let met = self.met(&observed, now);
        for (signal, ..) in &met {
            self.last_met.insert(*signal, now);
        }
        let within = |s| {
            self.last_met
                .get(&s)
                .is_some_and(|t| now.duration_since(*t) < self.config.pressure_transition_period)
        };
        let pressure = Pressure {
            memory: within(Signal::MemoryAvailable),
            disk: within(Signal::NodefsAvailable),
        };
        self.pressure.send_if_modified(|p| {
            let changed = *p != pressure;
            *p = pressure;
            changed
        });
        let (signal, limit, available, max_grace) = *met.first()?;
        tracing::info!(
            signal = signal.name(),
            available = %format_bytes(available),
            threshold = %format_bytes(limit),
            memory = ?observed.memory,
            nodefs = ?observed.nodefs,
            "eviction threshold met"
        );
        if let Some((rx, until)) = &mut self.pending {
            let reclaimed = !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty));
            if !reclaimed && now < *until {
                tracing::info!("waiting for the last evicted pod's resources to be reclaimed");
                return None;
            }
            self.pending = None;
        }
        // The node's own reclaimable space first, as the kubelet does: the images no pod and no
        // container on the node uses; a pod is evicted only if that cannot free enough.
        if signal == Signal::NodefsAvailable {
            let needed = limit.saturating_sub(available);
            let min_age = config.image_gc.min_age;
            let report = tokio::task::spawn_blocking(move || {
                let in_use = crate::image_gc::images_in_use(&images, &run_dir, &pods_in_use);
                images.collect_garbage(&in_use, needed, min_age)
            })
            .await
            .ok()?;
            match report {
                Ok(r) if !r.removed.is_empty() || r.freed_bytes > 0 => {
                    tracing::info!(removed = ?r.removed, freed = r.freed_bytes, "unused images collected under disk pressure");
                    if r.freed_bytes >= needed {
                        return None;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("collecting unused images: {e}"),
            }
        }
        let usage =
            tokio::task::spawn_blocking(move || pod_usage(&config, &cgroups, &pods, signal))
                .await
                .ok()?;
        let victim = rank(usage).into_iter().next()?;
        let message = eviction_message(signal, limit, available, &victim);
        tracing::info!(pod = %victim.uid, "evicting: {message}");
        let (reclaimed, rx) = oneshot::channel();
        self.pending = Some((rx, now + CLEANUP_WAIT));
        let order = EvictionOrder {
            message,
            max_grace,
            reclaimed,
        };
        Some((victim.uid, order))
    }

    /// The thresholds `o` meets: the hard ones, then the soft ones past their grace period (with
    /// the cap on the evicted pod's grace period).
    fn met(&mut self, o: &Observation, now: Instant) -> Vec<(Signal, u64, u64, Option<Duration>)> {
        let soft = self.config.soft.met(o);
        self.soft_since
            .retain(|s, _| soft.iter().any(|(signal, ..)| signal == s));
        let mut met: Vec<_> = self
            .config
            .thresholds
            .met(o)
            .into_iter()
            .map(|(s, limit, available)| (s, limit, available, None))
            .collect();
        for (signal, limit, available) in soft {
            let since = *self.soft_since.entry(signal).or_insert(now);
            let grace = self.config.soft_grace.0.get(&signal).copied();
            if grace.is_some_and(|g| now.duration_since(since) >= g) {
                met.push((
                    signal,
                    limit,
                    available,
                    Some(self.config.max_pod_grace_period),
                ));
            } else {
                tracing::info!(
                    signal = signal.name(),
                    available = %format_bytes(available),
                    threshold = %format_bytes(limit),
                    "soft eviction threshold met, within its grace period"
                );
            }
        }
        met
    }
}

/// One pod's use of the starved resource.
#[derive(Debug, Clone)]
pub struct PodUsage {
    pub uid: String,
    pub priority: i32,
    pub best_effort: bool,
    pub request: u64,
    pub usage: u64,
    /// Container name → (usage, request).
    pub containers: Vec<(String, u64, u64)>,
}

impl PodUsage {
    /// A pod that requests nothing of the resource (BestEffort for memory) always counts as
    /// using more than it requests.
    fn exceeds_request(&self) -> bool {
        self.request == 0 || self.usage > self.request
    }
}

/// The order pods are evicted in: those above their requests first, then the lower priority,
/// then BestEffort before the others, then the larger use beyond the request.
pub fn rank(mut pods: Vec<PodUsage>) -> Vec<PodUsage> {
    pods.sort_by_key(|p| {
        (
            !p.exceeds_request(),
            p.priority,
            !p.best_effort,
            Reverse(p.usage.saturating_sub(p.request)),
        )
    });
    pods
}

/// The kubelet's eviction message: the starved resource, the threshold and what was available,
/// and the containers using more than they request.
fn eviction_message(signal: Signal, limit: u64, available: u64, pod: &PodUsage) -> String {
    let resource = signal.resource();
    let mut message = format!(
        "The node was low on resource: {resource}. Threshold quantity: {}, available: {}. ",
        format_bytes(limit),
        format_bytes(available)
    );
    for (name, usage, request) in &pod.containers {
        if usage > request {
            message.push_str(&format!(
                "Container {name} was using {}, request is {}, has larger consumption of {resource}. ",
                format_bytes(*usage),
                format_bytes(*request)
            ));
        }
    }
    message
}

/// Bytes as a quantity: `100Mi`, `2048Ki`, `512`.
pub fn format_bytes(b: u64) -> String {
    for (unit, size) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if b >= size && b.is_multiple_of(size) {
            return format!("{}{unit}", b / size);
        }
    }
    if b >= 1 << 10 {
        format!("{}Ki", b.div_ceil(1 << 10))
    } else {
        b.to_string()
    }
}

/// Each pod's use of the resource `signal` starves: the working set of its containers' memory
/// cgroups, or the bytes of its containers' writable layers, logs and disk-backed volumes.
fn pod_usage(
    config: &KubeletConfig,
    cgroups: &CgroupMounts,
    pods: &[Arc<Pod>],
    signal: Signal,
) -> Vec<PodUsage> {
    let (records, _) = containers::list(&config.run_dir);
    let mut by_pod: HashMap<&str, Vec<&ContainerRecord>> = HashMap::new();
    for r in &records {
        by_pod.entry(&r.meta.pod_uid).or_default().push(r);
    }
    let resource = signal.resource();
    pods.iter()
        .filter(|p| !crate::static_pods::is_static(p))
        .filter_map(|pod| {
            let uid = pod.metadata.uid.clone()?;
            let spec = pod.spec.as_ref()?;
            let request_of = |name: &str| {
                spec.containers
                    .iter()
                    .chain(spec.init_containers.iter().flatten())
                    .find(|c| c.name == name)
                    .and_then(|c| {
                        c.resources
                            .as_ref()?
                            .requests
                            .as_ref()?
                            .get(resource)
                            .cloned()
                    })
                    .and_then(|q| skiff_k8s::quantity::units(&q).ok())
                    .map_or(0, |v| v.max(0) as u64)
            };
            let records = by_pod.get(uid.as_str()).cloned().unwrap_or_default();
            let mut containers: Vec<(String, u64, u64)> = Vec::new();
            for r in &records {
                let used = match signal {
                    Signal::MemoryAvailable if r.running() => cgroups
                        .memory_dir(&r.cgroup())
                        .and_then(|d| working_set(&d))
                        .unwrap_or(0),
                    Signal::MemoryAvailable => 0,
                    Signal::NodefsAvailable => disk_usage(&r.meta.layer_dir),
                };
                match containers.iter_mut().find(|(n, ..)| *n == r.meta.name) {
                    Some(c) => c.1 += used,
                    None => containers.push((r.meta.name.clone(), used, request_of(&r.meta.name))),
                }
            }
            let mut usage: u64 = containers.iter().map(|c| c.1).sum();
            if signal == Signal::NodefsAvailable {
                let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
                let name = pod.metadata.name.as_deref().unwrap_or_default();
                usage += disk_usage(&pod_log_dir(config, ns, name, &uid));
                usage += disk_usage(&config.root_dir.join("pods").join(&uid));
            }
            let best_effort = qos_class(spec) == QosClass::BestEffort;
            let request = if best_effort {
                0
            } else {
                spec.containers.iter().map(|c| request_of(&c.name)).sum()
            };
            Some(PodUsage {
                uid,
                priority: spec.priority.unwrap_or(0),
                best_effort,
                request,
                usage,
                containers,
            })
        })
        .collect()
}

/// A memory cgroup's limit (v1 `memory.limit_in_bytes`, v2 `memory.max`), if it has one.
fn memory_limit(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("memory.limit_in_bytes"))
        .or_else(|_| std::fs::read_to_string(dir.join("memory.max")))
        .ok()?;
    text.trim().parse().ok()
}

/// A memory cgroup's working set: its usage less the inactive file cache, as the kubelet counts.
fn working_set(dir: &Path) -> Option<u64> {
    let (usage, inactive_key) = match std::fs::read_to_string(dir.join("memory.usage_in_bytes")) {
        Ok(t) => (t, "total_inactive_file"),
        Err(_) => (
            std::fs::read_to_string(dir.join("memory.current")).ok()?,
            "inactive_file",
        ),
    };
    let usage: u64 = usage.trim().parse().ok()?;
    let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
    let inactive = stat
        .lines()
        .find_map(|l| l.strip_prefix(inactive_key)?.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Some(usage.saturating_sub(inactive))
}

/// The bytes of the files under `dir` on its own filesystem (mounts under it, like a container's
/// overlay root or a tmpfs volume, are not crossed), as `du -x` counts them.
pub fn disk_usage(dir: &Path) -> u64 {
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let device = top.dev();
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != device {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_as_the_kubelet_writes_them() {
        let t: Thresholds = "memory.available<100Mi, nodefs.available<10%"
            .parse()
            .unwrap();
        assert_eq!(
            t.0,
            vec![
                Threshold {
                    signal: Signal::MemoryAvailable,
                    amount: Amount::Bytes(100 << 20)
                },
                Threshold {
                    signal: Signal::NodefsAvailable,
                    amount: Amount::Percent(10.0)
                },
            ]
        );
        assert!(matches!(
            "memory.available>1Gi".parse::<Thresholds>(),
            Err(ThresholdError::Syntax(_))
        ));
        assert!(matches!(
            "pid.available<10".parse::<Thresholds>(),
            Err(ThresholdError::Signal(_))
        ));
        assert!(matches!(
            "nodefs.available<150%".parse::<Thresholds>(),
            Err(ThresholdError::Amount(_))
        ));
        assert_eq!(
            DEFAULT_EVICTION_HARD.parse::<Thresholds>().unwrap().0.len(),
            2
        );
    }

    #[test]
    fn thresholds_met_by_bytes_or_percent() {
        let t: Thresholds = "memory.available<100Mi,nodefs.available<10%"
            .parse()
            .unwrap();
        let o = Observation {
            memory: (50 << 20, 1 << 30),
            nodefs: (200, 1000),
        };
        assert_eq!(
            t.met(&o),
            vec![(Signal::MemoryAvailable, 100 << 20, 50 << 20)]
        );
        let o = Observation {
            memory: (500 << 20, 1 << 30),
            nodefs: (99, 1000),
        };
        assert_eq!(t.met(&o), vec![(Signal::NodefsAvailable, 100, 99)]);
    }

    #[test]
    fn soft_thresholds_count_after_their_grace_period() {
        let config = EvictionConfig {
            thresholds: "memory.available<10Mi".parse().unwrap(),
            soft: "memory.available<100Mi,nodefs.available<10%"
                .parse()
                .unwrap(),
            soft_grace: "memory.available=1m".parse().unwrap(),
            max_pod_grace_period: Duration::from_secs(5),
            monitoring_period: Duration::from_secs(1),
            pressure_transition_period: Duration::from_secs(1),
        };
        assert_eq!(
            config.validate().unwrap_err(),
            "--eviction-soft nodefs.available: no grace period for it in --eviction-soft-grace-period"
        );
        let mut m = EvictionManager::new(config);
        let low = Observation {
            memory: (50 << 20, 1 << 30),
            nodefs: (900, 1000),
        };
        let fine = Observation {
            memory: (500 << 20, 1 << 30),
            ..low
        };
        let t0 = Instant::now();
        let soft = vec![(
            Signal::MemoryAvailable,
            100 << 20,
            50 << 20,
            Some(Duration::from_secs(5)),
        )];
        assert!(m.met(&low, t0).is_empty());
        assert!(m.met(&low, t0 + Duration::from_secs(59)).is_empty());
        assert_eq!(m.met(&low, t0 + Duration::from_secs(60)), soft);
        // A break restarts the grace period.
        assert!(m.met(&fine, t0 + Duration::from_secs(61)).is_empty());
        assert!(m.met(&low, t0 + Duration::from_secs(62)).is_empty());
        assert_eq!(m.met(&low, t0 + Duration::from_secs(122)), soft);
        // A hard threshold counts at once, before the soft one.
        let very_low = Observation {
            memory: (5 << 20, 1 << 30),
            ..low
        };
        assert_eq!(
            m.met(&very_low, t0 + Duration::from_secs(123))[0],
            (Signal::MemoryAvailable, 10 << 20, 5 << 20, None)
        );
        let order = |max_grace| EvictionOrder {
            message: String::new(),
            max_grace,
            reclaimed: oneshot::channel().0,
        };
        let thirty = Duration::from_secs(30);
        assert_eq!(order(None).grace(thirty), Duration::ZERO);
        assert_eq!(
            order(Some(Duration::from_secs(5))).grace(thirty),
            Duration::from_secs(5)
        );
        assert_eq!(order(Some(Duration::from_secs(60))).grace(thirty), thirty);
        assert!("memory.available:1m".parse::<GracePeriods>().is_err());
        assert!("pid.available=1m".parse::<GracePeriods>().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("3d").is_err());
    }

    fn usage(uid: &str, priority: i32, request: u64, usage: u64) -> PodUsage {
        PodUsage {
            uid: uid.to_string(),
            priority,
            best_effort: request == 0,
            request,
            usage,
            containers: vec![("c".to_string(), usage, request)],
        }
    }

    #[test]
    fn best_effort_first_then_over_request_by_usage() {
        let ranked = rank(vec![
            usage("guaranteed", 0, 100, 50),
            usage("burstable-over", 0, 10, 40),
            usage("besteffort-small", 0, 0, 1),
            usage("besteffort-big", 0, 0, 80),
            usage("burstable-over-important", 1000, 10, 90),
        ]);
        let order: Vec<&str> = ranked.iter().map(|p| p.uid.as_str()).collect();
        assert_eq!(
            order,
            [
                "besteffort-big",
                "besteffort-small",
                "burstable-over",
                "burstable-over-important",
                "guaranteed"
            ]
        );
    }

    #[test]
    fn message_names_the_resource_and_the_greedy_containers() {
        let m = eviction_message(
            Signal::MemoryAvailable,
            100 << 20,
            50 << 20,
            &usage("p", 0, 0, 30 << 20),
        );
        assert_eq!(
            m,
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi. \
             Container c was using 30Mi, request is 0, has larger consumption of memory. "
        );
        assert_eq!(format_bytes(1536), "2Ki");
    }

    #[test]
    fn disk_usage_counts_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/f"), vec![1u8; 64 << 10]).unwrap();
        assert!(disk_usage(d.path()) >= 64 << 10);
        assert_eq!(disk_usage(&d.path().join("missing")), 0);
    }
}
