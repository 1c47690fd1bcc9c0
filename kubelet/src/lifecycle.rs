//! Lifecycle hooks (postStart and preStop: exec, httpGet, tcpSocket, sleep), stopping one
//! container the way the kubelet does (preStop within the grace period, SIGTERM, SIGKILL when the
//! grace period ends), and the pod's `activeDeadlineSeconds`.

use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod};

use crate::containers::ContainerRecord;
use crate::events::EventType;
use crate::pod_worker::Kubelet;
use crate::probes::prober::{self, Action, Outcome, Target};

/// How long a container gets to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// The grace period when the pod gives none.
const DEFAULT_GRACE: i64 = 30;

/// The pod's status reason and message when its active deadline passed.
pub const DEADLINE_REASON: &str = "DeadlineExceeded";
pub const DEADLINE_MESSAGE: &str = "Pod was active on the node longer than the specified deadline";

/// The grace period: `preferred` (a probe's own terminationGracePeriodSeconds) or the pod's.
pub fn grace_period(pod: &Pod, preferred: Option<i64>) -> Duration {
    let secs = preferred
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(DEFAULT_GRACE);
    Duration::from_secs(secs.max(0) as u64)
}

/// Runs one hook handler in the container `id`, giving up after `limit`.
async fn run_handler(
    k: &Kubelet,
    h: &LifecycleHandler,
    c: &Container,
    id: &str,
    pod_ip: &str,
    limit: Duration,
) -> Result<(), String> {
    if let Some(s) = &h.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64).min(limit)).await;
        return Ok(());
    }
    let action = if let Some(a) = &h.exec {
        Action::Exec(a)
    } else if let Some(a) = &h.http_get {
        Action::HttpGet(a)
    } else if let Some(a) = &h.tcp_socket {
        Action::TcpSocket(a)
    } else {
        return Err("the hook has no action".to_string());
    };
    let target = Target {
        runtime: &k.runtime,
        container_id: id,
        container: c,
        pod_ip,
    };
    match prober::run(action, &target, limit).await {
        Outcome::Success => Ok(()),
        Outcome::Failure(m) => Err(m),
    }
}

fn handler_kind(h: &LifecycleHandler) -> &'static str {
    if h.exec.is_some() {
        "Exec"
    } else if h.http_get.is_some() {
        "HTTP"
    } else if h.sleep.is_some() {
        "Sleep"
    } else {
        "TCP"
    }
}

/// The container attempt a hook runs in.
struct HookTarget<'a> {
    k: &'a Kubelet,
    pod: &'a Pod,
    c: &'a Container,
    r: &'a ContainerRecord,
    pod_ip: &'a str,
}

/// Runs a hook of the container, recording `failure_reason` as a warning when it fails.
async fn run_hook(
    t: HookTarget<'_>,
    hook: Option<&LifecycleHandler>,
    limit: Duration,
    failure_reason: &str,
) -> Result<(), String> {
    let Some(h) = hook else { return Ok(()) };
    let HookTarget {
        k,
        pod,
        c,
        r,
        pod_ip,
    } = t;
    let result = run_handler(k, h, c, &r.meta.id, pod_ip, limit).await;
    if let Err(e) = &result {
        let pod_name = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        let message = format!(
            "{} lifecycle hook for Container {:?} in Pod {pod_name:?} failed - error: {e}",
            handler_kind(h),
            c.name
        );
        tracing::info!(container = %c.name, "{message}");
        k.events
            .record(
                pod,
                Some((&c.name, r.meta.init)),
                EventType::Warning,
                failure_reason,
                &message,
            )
            .await;
    }
    result
}

/// The postStart hook of a container that just started; on failure the container must be
/// killed (`FailedPostStartHook` recorded).
pub async fn post_start(
    k: &Kubelet,
    pod: &Pod,
    c: &Container,
    r: &ContainerRecord,
    pod_ip: &str,
) -> Result<(), String> {
    let hook = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref());
    let limit = grace_period(pod, None);
    let target = HookTarget {
        k,
        pod,
        c,
        r,
        pod_ip,
    };
    run_hook(target, hook, limit, "FailedPostStartHook").await
}

/// The preStop hooks of the running containers `running`, concurrently, within `limit`
/// (`FailedPreStopHook` recorded for those that fail).
pub async fn pre_stop_all(
    k: &Kubelet,
    pod: &Pod,
    running: &[ContainerRecord],
    pod_ip: &str,
    limit: Duration,
) {
    let spec = pod.spec.clone().unwrap_or_default();
    let hooks = running.iter().filter_map(|r| {
        let c = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == r.meta.name)?
            .clone();
        Some(async move {
            let hook = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref());
            let target = HookTarget {
                k,
                pod,
                c: &c,
                r,
                pod_ip,
            };
            let _ = run_hook(target, hook, limit, "FailedPreStopHook").await;
        })
    });
    futures::future::join_all(hooks).await;
}

/// Waits until the attempt `r` has exited, or `limit` passes; whether it exited.
async fn wait_exit(r: &ContainerRecord, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut r = r.clone();
    loop {
        r.refresh();
        if !r.running() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops one container: its preStop hook, SIGTERM, and SIGKILL once `grace` has passed.
pub async fn stop_container(
    k: &Kubelet,
    pod: &Pod,
    r: &ContainerRecord,
    pod_ip: &str,
    grace: Duration,
) {
    let begun = tokio::time::Instant::now();
    pre_stop_all(k, pod, std::slice::from_ref(r), pod_ip, grace).await;
    if let Err(e) = k.runtime.kill(&r.meta.id, "TERM").await {
        tracing::debug!(id = %r.meta.id, "SIGTERM: {e}");
    }
    if wait_exit(r, grace.saturating_sub(begun.elapsed())).await {
        return;
    }
    if let Err(e) = k.runtime.kill(&r.meta.id, "KILL").await {
        tracing::debug!(id = %r.meta.id, "SIGKILL: {e}");
    }
    if !wait_exit(r, KILL_WAIT).await {
        tracing::warn!(id = %r.meta.id, "container still running after SIGKILL");
    }
}

/// The time left before the pod's `activeDeadlineSeconds`, counted from its startTime (from
/// now when it has none yet); `None` without a deadline.
pub fn active_deadline_left(pod: &Pod) -> Option<Duration> {
    let deadline = pod.spec.as_ref()?.active_deadline_seconds?;
    let deadline = Duration::from_secs(deadline.max(0) as u64);
    let Some(start) = pod.status.as_ref().and_then(|s| s.start_time.as_ref()) else {
        return Some(deadline);
    };
    let elapsed_ms = Utc::now().timestamp_millis() - start.0.as_millisecond();
    Some(deadline.saturating_sub(Duration::from_millis(elapsed_ms.max(0) as u64)))
}
