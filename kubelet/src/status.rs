//! Pod status: computed from what the pod worker knows of its containers (phase, conditions,
//! container statuses as the kubelet derives them), and the status manager that writes it to the
//! API only when it changed — conditions keep their transition times, nothing is written when a
//! pod is idle.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::Utc;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::containers::ContainerRecord;

/// A chrono time as the API's Time.
pub fn k8s_time(t: chrono::DateTime<Utc>) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::new(t.timestamp(), t.timestamp_subsec_nanos() as i32)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// What the worker knows of one container of the spec.
pub struct ContainerView<'a> {
    pub name: &'a str,
    pub image: &'a str,
    /// The newest attempt and the one before it.
    pub current: Option<&'a ContainerRecord>,
    pub previous: Option<&'a ContainerRecord>,
    /// Why it is not running, when the worker holds it back (CrashLoopBackOff, a config error,
    /// PodInitializing, ContainerCreating).
    pub waiting: Option<(String, String)>,
    pub ready: bool,
    /// Whether its startup probe (if any) succeeded.
    pub started: bool,
}

fn container_id(r: &ContainerRecord) -> String {
    format!("skiff://{}", r.meta.id)
}

/// The state a finished attempt ended in.
fn terminated(r: &ContainerRecord) -> Option<ContainerStateTerminated> {
    let exit = r.exit.as_ref()?;
    let reason = if exit.oom_killed {
        "OOMKilled"
    } else if exit.start_error.is_some() {
        "StartError"
    } else if exit.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let message = exit
        .start_error
        .clone()
        .or_else(|| r.termination_message.clone());
    Some(ContainerStateTerminated {
        exit_code: exit.exit_code,
        reason: Some(reason.to_string()),
        message,
        started_at: r.started.as_ref().map(|s| k8s_time(s.started_at)),
        finished_at: Some(k8s_time(exit.finished_at)),
        container_id: Some(container_id(r)),
        signal: None,
    })
}

pub fn container_status(v: &ContainerView) -> ContainerStatus {
    let mut state = ContainerState::default();
    let mut last_state = ContainerState::default();
    if let Some(prev) = v.previous {
        last_state.terminated = terminated(prev);
    }
    match (v.current, &v.waiting) {
        (cur, Some((reason, message))) => {
            if let Some(t) = cur.and_then(terminated) {
                last_state.terminated = Some(t);
            }
            state.waiting = Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: (!message.is_empty()).then(|| message.clone()),
            });
        }
        (Some(cur), None) => {
            if let Some(t) = terminated(cur) {
                state.terminated = Some(t);
            } else if let Some(s) = &cur.started {
                state.running = Some(ContainerStateRunning {
                    started_at: Some(k8s_time(s.started_at)),
                });
            } else {
                state.waiting = Some(ContainerStateWaiting {
                    reason: Some("ContainerCreating".to_string()),
                    message: None,
                });
            }
        }
        (None, None) => {
            state.waiting = Some(ContainerStateWaiting {
                reason: Some("ContainerCreating".to_string()),
                message: None,
            });
        }
    }
    let running = state.running.is_some();
    ContainerStatus {
        name: v.name.to_string(),
        image: v.image.to_string(),
        image_id: v
            .current
            .map(|r| r.meta.image_id.clone())
            .unwrap_or_default(),
        container_id: v.current.map(container_id),
        restart_count: v.current.map(|r| r.meta.attempt as i32).unwrap_or(0),
        ready: running && v.ready,
        started: Some(running && v.started),
        state: Some(state),
        last_state: Some(last_state),
        ..ContainerStatus::default()
    }
}

/// Whether an init container has done its part: a regular one completed, a sidecar started.
fn init_complete(s: &ContainerStatus, sidecar: bool) -> bool {
    if sidecar {
        return s.started == Some(true);
    }
    s.state
        .as_ref()
        .and_then(|st| st.terminated.as_ref())
        .is_some_and(|t| t.exit_code == 0)
}

/// The pod's phase from its container statuses (the kubelet's getPhase); `init_pending` when
/// some init container has not done its part yet.
pub fn phase(
    restart_policy: &str,
    init_pending: bool,
    init_failed: bool,
    apps: &[ContainerStatus],
) -> &'static str {
    if init_failed {
        return "Failed";
    }
    if init_pending {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in apps {
        let st = s.state.clone().unwrap_or_default();
        if st.running.is_some() {
            running += 1;
        } else if let Some(t) = &st.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s
            .last_state
            .as_ref()
            .is_some_and(|l| l.terminated.is_some())
        {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting == apps.len() {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 && waiting == 0 {
        match restart_policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        }
    } else {
        "Pending"
    }
}

fn condition(kind: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> PodCondition {
    PodCondition {
        type_: kind.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: if ok { None } else { reason.map(str::to_string) },
        message: if ok { None } else { message },
        ..PodCondition::default()
    }
}

/// Everything the pod's status is made of.
pub struct PodView<'a> {
    pub pod: &'a Pod,
    pub sandbox_ready: bool,
    pub pod_ip: Option<String>,
    pub host_ip: String,
    pub init: Vec<ContainerStatus>,
    pub init_failed: bool,
    pub apps: Vec<ContainerStatus>,
    pub ephemeral: Vec<ContainerStatus>,
    /// Set when the pod cannot run at all (reason, message), e.g. no pod network.
    pub pod_error: Option<(String, String)>,
}

pub fn pod_status(v: PodView) -> PodStatus {
    let spec = v.pod.spec.clone().unwrap_or_default();
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let sidecars: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.as_str())
        .collect();
    // Once an app container has run, the pod was initialized, whatever its sidecars do since
    // (they are stopped when the app containers of a Never/OnFailure pod are done).
    let apps_ran = v.apps.iter().any(|s| {
        let ran = |st: Option<&ContainerState>| {
            st.is_some_and(|st| st.running.is_some() || st.terminated.is_some())
        };
        ran(s.state.as_ref()) || ran(s.last_state.as_ref())
    });
    let complete =
        |s: &ContainerStatus| apps_ran || init_complete(s, sidecars.contains(&s.name.as_str()));
    let phase = phase(policy, !v.init.iter().all(complete), v.init_failed, &v.apps);
    let unfinished = |all: &[ContainerStatus], pred: &dyn Fn(&ContainerStatus) -> bool| {
        let names: Vec<&str> = all
            .iter()
            .filter(|s| !pred(s))
            .map(|s| s.name.as_str())
            .collect();
        (names.is_empty(), format!("[{}]", names.join(" ")))
    };
    let (init_ok, init_msg) = unfinished(&v.init, &complete);
    let (ready_ok, ready_msg) = unfinished(&v.apps, &|s| s.ready);
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let gates = unready_gates(v.pod);
    let ready = if terminal {
        condition("Ready", false, Some("PodCompleted"), None)
    } else if !ready_ok {
        condition(
            "Ready",
            false,
            Some("ContainersNotReady"),
            Some(format!("containers with unready status: {ready_msg}")),
        )
    } else {
        condition(
            "Ready",
            gates.is_empty(),
            Some("ReadinessGatesNotReady"),
            Some(gates.join(", ")),
        )
    };
    let mut conditions = vec![
        condition("PodReadyToStartContainers", v.sandbox_ready, None, None),
        condition(
            "Initialized",
            init_ok,
            Some("ContainersNotInitialized"),
            Some(format!("containers with incomplete status: {init_msg}")),
        ),
        ready,
        condition(
            "ContainersReady",
            ready_ok && !terminal,
            Some(if terminal {
                "PodCompleted"
            } else {
                "ContainersNotReady"
            }),
            (!terminal).then(|| format!("containers with unready status: {ready_msg}")),
        ),
    ];
    let scheduled = v
        .pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled").cloned())
        .unwrap_or_else(|| condition("PodScheduled", true, None, None));
    conditions.push(scheduled);
    let (reason, message) = match &v.pod_error {
        Some((r, m)) => (Some(r.clone()), Some(m.clone())),
        None => (None, None),
    };
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(v.host_ip.clone()),
        host_ips: Some(vec![HostIP { ip: v.host_ip }]),
        pod_ip: v.pod_ip.clone(),
        pod_ips: v.pod_ip.map(|ip| vec![PodIP { ip }]),
        qos_class: Some(skiff_k8s::qos::qos_class(&spec).as_str().to_string()),
        init_container_statuses: (!v.init.is_empty()).then_some(v.init),
        container_statuses: Some(v.apps),
        ephemeral_container_statuses: (!v.ephemeral.is_empty()).then_some(v.ephemeral),
        reason,
        message,
        ..PodStatus::default()
    }
}

/// Why each of the pod's readiness gates holds it back, as the kubelet words it (none: all are
/// True). A gate is a condition some other component sets on the pod.
fn unready_gates(pod: &Pod) -> Vec<String> {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    pod.spec
        .iter()
        .flat_map(|s| s.readiness_gates.iter().flatten())
        .filter_map(|g| {
            let kind = &g.condition_type;
            match conditions.and_then(|cs| cs.iter().find(|c| &c.type_ == kind)) {
                None => Some(format!(
                    "corresponding condition of pod readiness gate \"{kind}\" does not exist."
                )),
                Some(c) if c.status != "True" => Some(format!(
                    "the status of pod readiness gate \"{kind}\" is not \"True\", but {}",
                    c.status
                )),
                Some(_) => None,
            }
        })
        .collect()
}

/// The pod conditions the kubelet owns; others (readiness gates', DisruptionTarget…) belong to
/// whoever wrote them and are kept as they are.
const KUBELET_CONDITIONS: [&str; 5] = [
    "PodScheduled",
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
];

/// How many times a status write that lost a race (409) is redone against the fresh object.
const CONFLICT_RETRIES: usize = 5;

/// Writes pod statuses, each only when it differs from what the API holds.
pub struct StatusManager {
    client: Client,
    /// pod uid → the status last written (as JSON) and the pod's resourceVersion after it.
    written: Mutex<HashMap<String, Written>>,
}

/// A status the manager wrote.
#[derive(Clone)]
struct Written {
    status: serde_json::Value,
    resource_version: Option<String>,
}

/// How one write went.
enum Write {
    Done,
    /// The object changed since `base` was read (its resourceVersion precondition failed).
    Conflict,
}

impl StatusManager {
    pub fn new(client: Client) -> StatusManager {
        StatusManager {
            client,
            written: Mutex::new(HashMap::new()),
        }
    }

    /// Brings the pod's status in the API to `status`. Conditions whose state did not change
    /// keep their transition time; the start time is set once; conditions the kubelet does not
    /// own are kept. The write is conditional on the resourceVersion `pod` was read at, so that
    /// nothing written meanwhile is lost: on a conflict it is redone against the fresh object.
    /// A static pod's status is written to its mirror pod.
    #[tracing::instrument(level = "debug", skip_all, fields(pod = pod.metadata.name))]
    pub async fn set(&self, pod: &Pod, status: PodStatus) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let mut fresh;
        let mut base = pod;
        // A static pod's status goes to its mirror pod.
        if crate::static_pods::is_static(pod) {
            let uid = pod.metadata.uid.as_deref().unwrap_or_default();
            match api.get_opt(&name).await {
                Ok(Some(m)) if crate::static_pods::mirrors(&m, uid) => fresh = m,
                _ => return,
            }
            base = &fresh;
        }
        let target = base.metadata.uid.clone();
        for _ in 0..CONFLICT_RETRIES {
            match self.write(&api, base, status.clone()).await {
                Write::Done => return,
                Write::Conflict => {}
            }
            tracing::debug!(pod = %format!("{ns}/{name}"), "status write conflicted; retrying against the fresh pod");
            fresh = match api.get(&name).await {
                Ok(p) if p.metadata.uid == target => p,
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(pod = %format!("{ns}/{name}"), "re-reading the pod for its status: {e}");
                    return;
                }
            };
            base = &fresh;
        }
        tracing::warn!(pod = %format!("{ns}/{name}"), "status update kept conflicting; left for the next sync");
    }

    /// One conditional write of `status` over `base`.
    async fn write(&self, api: &Api<Pod>, base: &Pod, mut status: PodStatus) -> Write {
        let uid = base.metadata.uid.clone().unwrap_or_default();
        let old = base.status.clone().unwrap_or_default();
        let now = k8s_time(Utc::now());
        for c in status.conditions.iter_mut().flatten() {
            let prev = old
                .conditions
                .iter()
                .flatten()
                .find(|o| o.type_ == c.type_ && o.status == c.status);
            c.last_transition_time = prev
                .and_then(|p| p.last_transition_time.clone())
                .or_else(|| Some(now.clone()));
            c.last_probe_time = None;
        }
        if let Some(conditions) = status.conditions.as_mut() {
            let set: Vec<String> = conditions.iter().map(|c| c.type_.clone()).collect();
            conditions.extend(
                old.conditions
                    .iter()
                    .flatten()
                    .filter(|c| !KUBELET_CONDITIONS.contains(&c.type_.as_str()))
                    .filter(|c| !set.contains(&c.type_))
                    .cloned(),
            );
        }
        status.start_time = old.start_time.clone().or(Some(now));
        let new = serde_json::to_value(&status).expect("a status serialises");
        if same_status(&old, &new) {
            let rv = base.metadata.resource_version.clone();
            self.remember(uid, new, rv);
            return Write::Done;
        }
        // `base` may be a copy from before the last write (the watch not there yet): then the
        // write is not redone. A copy from after it that differs was changed by another writer
        // (the node lifecycle controller marking the pod NotReady): the kubelet's status wins.
        let cached = self
            .written
            .lock()
            .expect("status cache")
            .get(&uid)
            .cloned();
        if let Some(w) = cached
            && w.status == new
            && !newer(
                base.metadata.resource_version.as_deref(),
                w.resource_version.as_deref(),
            )
        {
            return Write::Done;
        }
        let name = base.metadata.name.clone().unwrap_or_default();
        let pod_name = format!(
            "{}/{name}",
            base.metadata.namespace.as_deref().unwrap_or_default()
        );
        // Fields absent from the new status are cleared (a merge patch keeps what it omits).
        let mut body = new.clone();
        for key in ["reason", "message", "podIP", "podIPs"] {
            if body.get(key).is_none() {
                body[key] = serde_json::Value::Null;
            }
        }
        let metadata = json!({"uid": uid, "resourceVersion": base.metadata.resource_version});
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": metadata, "status": body})),
            )
            .await
        {
            Ok(written) => {
                tracing::debug!(pod = %pod_name, phase = ?status.phase, "status written");
                self.remember(uid, new, written.metadata.resource_version);
                Write::Done
            }
            Err(kube::Error::Api(e))
                if e.code == 409 && base.metadata.resource_version.is_some() =>
            {
                Write::Conflict
            }
            Err(e) => {
                tracing::warn!(pod = %pod_name, "status update failed: {e}");
                Write::Done
            }
        }
    }

    fn remember(&self, uid: String, status: serde_json::Value, resource_version: Option<String>) {
        self.written.lock().expect("status cache").insert(
            uid,
            Written {
                status,
                resource_version,
            },
        );
    }

    pub fn forget(&self, uid: &str) {
        self.written.lock().expect("status cache").remove(uid);
    }
}

/// Whether resourceVersion `a` is newer than `b`. They are etcd revisions (skiff's store
/// revisions too); anything else that differs is taken as newer, which costs at most a write
/// that the resourceVersion precondition turns down.
fn newer(a: Option<&str>, b: Option<&str>) -> bool {
    match (
        a.and_then(|a| a.parse::<u64>().ok()),
        b.and_then(|b| b.parse::<u64>().ok()),
    ) {
        (Some(a), Some(b)) => a > b,
        _ => a != b,
    }
}

/// Whether the API already holds `new` (fields it fills in itself aside).
fn same_status(old: &PodStatus, new: &serde_json::Value) -> bool {
    let mut old = serde_json::to_value(old).unwrap_or_default();
    if let Some(o) = old.as_object_mut() {
        o.remove("nominatedNodeName");
    }
    &old == new
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(running: bool, exit: Option<i32>, last_exit: bool) -> ContainerStatus {
        let mut s = ContainerState::default();
        if running {
            s.running = Some(ContainerStateRunning::default());
        } else if let Some(code) = exit {
            s.terminated = Some(ContainerStateTerminated {
                exit_code: code,
                ..Default::default()
            });
        } else {
            s.waiting = Some(ContainerStateWaiting::default());
        }
        let mut last = ContainerState::default();
        if last_exit {
            last.terminated = Some(ContainerStateTerminated::default());
        }
        ContainerStatus {
            state: Some(s),
            last_state: Some(last),
            ..Default::default()
        }
    }

    #[test]
    fn resource_versions_are_ordered_as_revisions() {
        assert!(newer(Some("12"), Some("9")));
        assert!(!newer(Some("9"), Some("12")));
        assert!(!newer(Some("12"), Some("12")));
        // Not numbers: different counts as newer.
        assert!(newer(Some("b"), Some("a")));
        assert!(!newer(None, None));
    }

    #[test]
    fn phases() {
        assert_eq!(
            phase("Always", false, false, &[st(false, None, false)]),
            "Pending"
        );
        assert_eq!(
            phase("Always", false, false, &[st(true, None, false)]),
            "Running"
        );
        assert_eq!(
            phase("Never", false, false, &[st(false, Some(0), false)]),
            "Succeeded"
        );
        assert_eq!(
            phase("Never", false, false, &[st(false, Some(3), false)]),
            "Failed"
        );
        assert_eq!(
            phase("OnFailure", false, false, &[st(false, Some(3), false)]),
            "Running"
        );
        // CrashLoopBackOff: waiting with a last termination counts as stopped.
        assert_eq!(
            phase("Always", false, false, &[st(false, None, true)]),
            "Running"
        );
        assert_eq!(
            phase("Always", true, false, &[st(false, None, false)]),
            "Pending"
        );
        assert_eq!(phase("Never", false, true, &[]), "Failed");
        // A running init container is pending; a sidecar once it has started is done.
        let mut sidecar = st(true, None, false);
        assert!(!init_complete(&sidecar, false));
        assert!(!init_complete(&sidecar, true));
        sidecar.started = Some(true);
        assert!(init_complete(&sidecar, true));
        assert!(init_complete(&st(false, Some(0), false), false));
    }
}
