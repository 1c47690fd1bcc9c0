//! Restart safety: the kubelet killed with SIGKILL while pods run; its containers keep running
//! (their shims are not its children) and the restarted kubelet adopts them, and cleans up the
//! pods deleted while it was away.

mod common;

use std::time::Duration;

use common::{Node, busybox_pod};
use serde_json::Value;

fn container(p: &Value) -> &Value {
    &p["status"]["containerStatuses"][0]
}

#[test]
fn kubelet_kill9_and_restart_adopts_running_containers() {
    let mut node = Node::start();
    node.apply(&busybox_pod(
        "survivor",
        "Always",
        "echo up; while true; do sleep 0.2; done",
        "",
    ));
    node.apply(&busybox_pod(
        "doomed",
        "Always",
        "while true; do sleep 0.2; done",
        "",
    ));
    let running = |p: &Value| p["status"]["phase"] == "Running";
    let before = node.wait_pod("survivor", "Running", Duration::from_secs(30), running);
    node.wait_pod("doomed", "Running", Duration::from_secs(30), running);
    let id = container(&before)["containerID"]
        .as_str()
        .unwrap()
        .to_string();
    let started_at = container(&before)["state"]["running"]["startedAt"].clone();
    let doomed_uid = node.pod("doomed").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();

    node.kill9_kubelet();
    // The containers outlive the kubelet.
    let shim_alive = |n: &Node| {
        n.container_dirs().iter().all(|d| {
            std::fs::read_to_string(d.join("shim.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
                .is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        })
    };
    assert_eq!(node.container_dirs().len(), 2);
    assert!(shim_alive(&node));
    // A pod deleted while the kubelet is away (forced: nobody confirms it).
    node.kubectl(&["delete", "pod", "doomed", "--grace-period=0", "--force"]);

    node.start_kubelet();
    // The deleted pod's container is stopped and removed…
    node.wait_for("the deleted pod's cleanup", Duration::from_secs(30), |n| {
        n.container_dirs().len() == 1
    });
    let left = std::fs::read_to_string(node.container_dirs()[0].join("meta.json")).unwrap();
    assert!(!left.contains(&doomed_uid), "{left}");
    // …and the other is adopted: same container, no restart, still running.
    std::thread::sleep(Duration::from_secs(2));
    let after = node.pod("survivor").unwrap();
    assert_eq!(container(&after)["containerID"], id.as_str());
    assert_eq!(container(&after)["restartCount"], 0);
    assert_eq!(
        container(&after)["state"]["running"]["startedAt"],
        started_at
    );
    assert_eq!(after["status"]["phase"], "Running");
    assert_eq!(after["status"]["podIP"], before["status"]["podIP"]);
    assert!(after["status"]["podIP"].is_string());
    assert!(shim_alive(&node));
    assert!(node.kubelet_log().contains("adopted a running container"));

    // The adopted container is supervised: deleting its pod stops it.
    node.kubectl(&[
        "delete",
        "pod",
        "survivor",
        "--grace-period=1",
        "--wait=true",
        "--timeout=30s",
    ]);
    assert!(node.container_dirs().is_empty());
}
