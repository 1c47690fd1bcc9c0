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
