//! The probes of a pod's running containers: one task per probe and container attempt, probing
//! every `periodSeconds` after `initialDelaySeconds`, counting `successThreshold` and
//! `failureThreshold`, and waking the pod worker when a result changes. Readiness and liveness
//! wait for the startup probe; a failed liveness or startup probe is handed to the worker, which
//! kills the container.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::prober::{self, Action, Outcome, Target};
use crate::containers::ContainerRecord;
use crate::events::EventType;
use crate::pod_worker::Kubelet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Liveness,
    Readiness,
    Startup,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
            Kind::Startup => "Startup",
        }
    }

    pub fn probe(self, c: &Container) -> Option<&Probe> {
        match self {
            Kind::Liveness => c.liveness_probe.as_ref(),
            Kind::Readiness => c.readiness_probe.as_ref(),
            Kind::Startup => c.startup_probe.as_ref(),
        }
    }
}

/// What the probes say of one container attempt.
#[derive(Debug)]
struct Results {
    started: bool,
    ready: bool,
    /// The probe whose failure means the container must be killed.
    failed: Option<Kind>,
}

/// The probing of one container attempt; its tasks end when it is dropped.
struct Probed {
    id: String,
    results: Arc<Mutex<Results>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Probed {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The probes of one pod, owned by its worker.
pub struct ProbeManager {
    k: Arc<Kubelet>,
    wake: Arc<Notify>,
    containers: HashMap<String, Probed>,
}

impl ProbeManager {
    pub fn new(k: Arc<Kubelet>, wake: Arc<Notify>) -> ProbeManager {
        ProbeManager {
            k,
            wake,
            containers: HashMap::new(),
        }
    }

    /// Probes the running attempt `r` of `c` (started once per attempt).
    pub fn ensure(&mut self, pod: &Pod, c: &Container, r: &ContainerRecord, pod_ip: &str) {
        if self
            .containers
            .get(&c.name)
            .is_some_and(|p| p.id == r.meta.id)
        {
            return;
        }
        let results = Arc::new(Mutex::new(Results {
            started: c.startup_probe.is_none(),
            ready: c.readiness_probe.is_none(),
            failed: None,
        }));
        let started_at = r
            .started
            .as_ref()
            .map(|s| s.started_at)
            .unwrap_or_else(Utc::now);
        let mut tasks = Vec::new();
        for kind in [Kind::Startup, Kind::Liveness, Kind::Readiness] {
            let Some(probe) = kind.probe(c) else { continue };
            let worker = ProbeWorker {
                k: self.k.clone(),
                wake: self.wake.clone(),
                pod: pod.clone(),
                container: c.clone(),
                id: r.meta.id.clone(),
                pod_ip: pod_ip.to_string(),
                kind,
                probe: probe.clone(),
                results: results.clone(),
            };
            let since_start = (Utc::now() - started_at).to_std().unwrap_or_default();
            tasks.push(tokio::spawn(worker.run(since_start)));
        }
        self.containers.insert(
            c.name.clone(),
            Probed {
                id: r.meta.id.clone(),
                results,
                tasks,
            },
        );
    }

    /// Stops probing the container `name`.
    pub fn stop(&mut self, name: &str) {
        self.containers.remove(name);
    }

    pub fn stop_all(&mut self) {
        self.containers.clear();
    }

    fn results<T>(
        &self,
        name: &str,
        current: Option<&ContainerRecord>,
        f: impl Fn(&Results) -> T,
    ) -> Option<T> {
        let p = self.containers.get(name)?;
        if current.is_some_and(|r| r.meta.id != p.id) {
            return None;
        }
        Some(f(&p.results.lock().expect("probe results")))
    }

    /// Whether the startup probe (if any) of the attempt `current` of `c` has succeeded.
    pub fn started(&self, c: &Container, current: Option<&ContainerRecord>) -> bool {
        c.startup_probe.is_none()
            || self
                .results(&c.name, current, |r| r.started)
                .unwrap_or(false)
    }

    /// Whether the attempt `current` of `c` is ready: started, and its readiness probe (if any)
    /// succeeded last.
    pub fn ready(&self, c: &Container, current: Option<&ContainerRecord>) -> bool {
        if c.startup_probe.is_none() && c.readiness_probe.is_none() {
            return true;
        }
        self.results(&c.name, current, |r| r.started && r.ready)
            .unwrap_or(false)
    }

    /// The containers whose liveness or startup probe failed since the last call.
    pub fn take_failed(&mut self) -> Vec<(String, Kind)> {
        let mut out = Vec::new();
        for (name, p) in &self.containers {
            if let Some(kind) = p.results.lock().expect("probe results").failed.take() {
                out.push((name.clone(), kind));
            }
        }
        out
    }
}

/// One probe of one container attempt.
struct ProbeWorker {
    k: Arc<Kubelet>,
    wake: Arc<Notify>,
    pod: Pod,
    container: Container,
    id: String,
    pod_ip: String,
    kind: Kind,
    probe: Probe,
    results: Arc<Mutex<Results>>,
}

fn seconds(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(v.unwrap_or(default).max(0) as u64)
}

impl ProbeWorker {
    async fn run(self, since_start: Duration) {
        let p = &self.probe;
        let Some(action) = Action::of_probe(p) else {
            tracing::warn!(container = %self.container.name, kind = self.kind.label(), "probe without an action");
            return;
        };
        let period = seconds(p.period_seconds, 10).max(Duration::from_secs(1));
        let timeout = seconds(p.timeout_seconds, 1).max(Duration::from_secs(1));
        let success_threshold = p.success_threshold.unwrap_or(1).max(1);
        let failure_threshold = p.failure_threshold.unwrap_or(3).max(1);
        let initial = seconds(p.initial_delay_seconds, 0).saturating_sub(since_start);
        tokio::time::sleep(initial).await;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut successes, mut failures) = (0, 0);
        loop {
            tick.tick().await;
            if self.kind != Kind::Startup && !self.results.lock().expect("probe results").started {
                continue;
            }
            let target = Target {
                runtime: &self.k.runtime,
                container_id: &self.id,
                container: &self.container,
                pod_ip: &self.pod_ip,
            };
            let outcome = prober::run(action, &target, timeout).await;
            tracing::debug!(container = %self.container.name, kind = self.kind.label(), ?outcome, "probe");
            // Some(result) once a threshold is reached; None while it is not.
            let verdict = match outcome {
                Outcome::Success => {
                    failures = 0;
                    successes += 1;
                    (successes >= success_threshold).then_some(true)
                }
                Outcome::Failure(message) => {
                    successes = 0;
                    failures += 1;
                    self.k
                        .events
                        .record(
                            &self.pod,
                            Some((&self.container.name, false)),
                            EventType::Warning,
                            "Unhealthy",
                            &format!("{} probe failed: {message}", self.kind.label()),
                        )
                        .await;
                    (failures >= failure_threshold).then_some(false)
                }
            };
            let Some(passed) = verdict else { continue };
            let (changed, done) = {
                let mut r = self.results.lock().expect("probe results");
                match (self.kind, passed) {
                    (Kind::Readiness, ready) => {
                        let changed = r.ready != ready;
                        r.ready = ready;
                        (changed, false)
                    }
                    (Kind::Startup, true) => {
                        r.started = true;
                        (true, true)
                    }
                    (_, false) => {
                        r.failed = Some(self.kind);
                        (true, true)
                    }
                    (Kind::Liveness, true) => (false, false),
                }
            };
            if changed {
                self.wake.notify_one();
            }
            if done {
                return;
            }
        }
    }
}
