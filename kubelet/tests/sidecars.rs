//! Sidecar init containers (`restartPolicy: Always`) on a real node: started in their turn and
//! kept running, they do not hold back the next init container once started, they are restarted
//! when they exit, and on deletion they are stopped after the app containers.

mod common;

use std::time::Duration;

use common::Node;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(40);

fn condition<'a>(p: &'a Value, kind: &str) -> &'a str {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
}

#[test]
fn sidecars_start_first_keep_running_and_stop_last() {
    let node = Node::start();
    // The containers record what they do in a file of the host (a hostPath volume), which
    // outlives the pod.
    let shared = tempfile::tempdir().expect("shared directory");
    let order = shared.path().join("order");
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: with-sidecar
spec:
  terminationGracePeriodSeconds: 10
  volumes:
  - name: shared
    hostPath: {{path: {dir}, type: Directory}}
  initContainers:
  - name: logger
    image: busybox
    imagePullPolicy: Never
    restartPolicy: Always
    volumeMounts: [{{name: shared, mountPath: /shared}}]
    command: ["sh", "-c", "echo sidecar-start >> /shared/order; if [ ! -f /shared/crashed ]; then touch /shared/crashed; sleep 2; exit 1; fi; trap 'echo sidecar-stop >> /shared/order; exit 0' TERM; while true; do sleep 0.1; done"]
  - name: setup
    image: busybox
    imagePullPolicy: Never
    volumeMounts: [{{name: shared, mountPath: /shared}}]
    command: ["sh", "-c", "echo setup >> /shared/order"]
  containers:
  - name: app
    image: busybox
    imagePullPolicy: Never
    volumeMounts: [{{name: shared, mountPath: /shared}}]
    command: ["sh", "-c", "echo app >> /shared/order; trap 'sleep 1; echo app-stop >> /shared/order; exit 0' TERM; while true; do sleep 0.1; done"]
"#,
        dir = shared.path().display()
    );
    node.apply(&manifest);

    // The sidecar exits once after 2 s and is restarted; it runs beside the app.
    let p = node.wait_pod(
        "with-sidecar",
        "the sidecar restarted and running",
        WAIT,
        |p| {
            let s = &p["status"]["initContainerStatuses"][0];
            s["restartCount"].as_i64() >= Some(1)
                && s["state"]["running"].is_object()
                && p["status"]["containerStatuses"][0]["state"]["running"].is_object()
        },
    );
    assert_eq!(p["status"]["phase"], "Running");
    let sidecar = &p["status"]["initContainerStatuses"][0];
    assert_eq!(sidecar["name"], "logger");
    assert_eq!(sidecar["started"], true, "{sidecar}");
    let setup = &p["status"]["initContainerStatuses"][1];
    assert_eq!(setup["state"]["terminated"]["exitCode"], 0, "{setup}");
    let p = node.wait_pod("with-sidecar", "Ready", WAIT, |p| {
        condition(p, "Ready") == "True"
    });
    assert_eq!(condition(&p, "Initialized"), "True");
    // The setup container ran while the sidecar was running (it did not wait for it to exit).
    let text = std::fs::read_to_string(&order).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..3], ["sidecar-start", "setup", "app"], "{text}");

    // Deletion stops the app first (it takes a second to go), then the sidecar.
    node.kubectl(&["delete", "pod", "with-sidecar", "--timeout=60s"]);
    let text = std::fs::read_to_string(&order).unwrap();
    let stops: Vec<&str> = text.lines().filter(|l| l.ends_with("-stop")).collect();
    assert_eq!(stops, ["app-stop", "sidecar-stop"], "{text}");
    assert!(
        node.container_dirs().is_empty(),
        "{:?}",
        node.container_dirs()
    );
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or_default()
}

/// A pod with a sidecar (which exits 0 on SIGTERM) and an app container running `app`.
fn pod_with_sidecar(name: &str, policy: &str, app: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 5
  initContainers:
  - name: sidecar
    image: busybox
    imagePullPolicy: Never
    restartPolicy: Always
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]
  containers:
  - name: app
    image: busybox
    imagePullPolicy: Never
    command: ["sh", "-c", {app:?}]
"#
    )
}

#[test]
fn sidecars_stop_when_the_apps_of_a_never_or_on_failure_pod_are_done() {
    let node = Node::start();
    node.apply(&pod_with_sidecar("never", "Never", "sleep 2; exit 3"));
    node.apply(&pod_with_sidecar("on-failure", "OnFailure", "sleep 2"));
    for (name, expected, app_code) in [("never", "Failed", 3), ("on-failure", "Succeeded", 0)] {
        let p = node.wait_pod(name, expected, WAIT, |p| phase(p) == expected);
        let app = &p["status"]["containerStatuses"][0];
        assert_eq!(app["state"]["terminated"]["exitCode"], app_code, "{app}");
        assert_eq!(app["restartCount"], 0, "{app}");
        // The sidecar was stopped (SIGTERM, which it answers with exit 0), not restarted.
        let sidecar = &p["status"]["initContainerStatuses"][0];
        assert_eq!(sidecar["state"]["terminated"]["exitCode"], 0, "{sidecar}");
        assert_eq!(sidecar["restartCount"], 0, "{sidecar}");
        assert_eq!(condition(&p, "Initialized"), "True", "{}", p["status"]);
        assert_eq!(condition(&p, "Ready"), "False");
        let reasons = node.event_reasons(name);
        assert!(reasons.iter().any(|r| r == "Killing"), "{reasons:?}");
    }
    // Nothing runs any more: the sidecar stays stopped.
    std::thread::sleep(Duration::from_secs(2));
    let p = node.pod("on-failure").unwrap();
    assert!(
        p["status"]["initContainerStatuses"][0]["state"]["terminated"].is_object(),
        "{}",
        p["status"]
    );
}

#[test]
fn a_sidecar_failing_its_liveness_probe_is_restarted() {
    let node = Node::start();
    // The first attempt never becomes healthy; the second (the emptyDir outlives it) does.
    node.apply(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: unhealthy-sidecar
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - name: state
    emptyDir: {}
  initContainers:
  - name: sidecar
    image: busybox
    imagePullPolicy: Never
    restartPolicy: Always
    volumeMounts: [{name: state, mountPath: /state}]
    command: ["sh", "-c", "if [ -f /state/restarted ]; then touch /state/healthy; else touch /state/restarted; fi; while true; do sleep 0.1; done"]
    livenessProbe:
      exec: {command: ["test", "-f", "/state/healthy"]}
      periodSeconds: 1
      failureThreshold: 2
  containers:
  - name: app
    image: busybox
    imagePullPolicy: Never
    command: ["sleep", "3600"]
"#,
    );
    let p = node.wait_pod(
        "unhealthy-sidecar",
        "the sidecar restarted and running",
        WAIT,
        |p| {
            let s = &p["status"]["initContainerStatuses"][0];
            s["restartCount"].as_i64() == Some(1) && s["state"]["running"].is_object()
        },
    );
    assert_eq!(phase(&p), "Running");
    let app = &p["status"]["containerStatuses"][0];
    assert_eq!(app["restartCount"], 0, "{app}");
    assert!(app["state"]["running"].is_object(), "{app}");
    let events = node
        .get_json(&[
            "events",
            "--field-selector",
            "involvedObject.name=unhealthy-sidecar,reason=Killing",
        ])
        .unwrap();
    let killing: Vec<&Value> = events["items"].as_array().unwrap().iter().collect();
    assert!(
        killing.iter().any(|e| {
            e["message"] == "Container sidecar failed liveness probe, will be restarted"
                && e["involvedObject"]["fieldPath"] == "spec.initContainers{sidecar}"
        }),
        "{killing:?}"
    );
    // Healthy now: it keeps running.
    std::thread::sleep(Duration::from_secs(3));
    let p = node.pod("unhealthy-sidecar").unwrap();
    assert_eq!(p["status"]["initContainerStatuses"][0]["restartCount"], 1);
}
