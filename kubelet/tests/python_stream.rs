//! The official Python `kubernetes` client's `stream` (exec) and pod logs through a real
//! `skiff server` to a real kubelet (tests/python/stream_test.py).

mod common;

use std::time::Duration;

use common::{Node, require};

#[test]
fn python_client_exec_and_logs() {
    require(
        "python3",
        &["-c", "import kubernetes.stream"],
        "python3 with the `kubernetes` package: pip install kubernetes",
    );
    let node = Node::start();
    node.apply(&common::busybox_pod(
        "py",
        "Always",
        "echo started; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done",
        "",
    ));
    node.wait_pod("py", "Running", Duration::from_secs(60), |p| {
        p["status"]["phase"] == "Running"
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/stream_test.py");
    let out = node
        .netns
        .command("python3")
        .arg(script)
        .env("KUBECONFIG", node.kubeconfig())
        .env("POD", "py")
        .output()
        .expect("running python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "Python stream tests failed:\n{stderr}\nkubelet log:\n{}",
        common::tail(&node.kubelet_log(), 40)
    );
    assert!(stderr.contains("OK"), "{stderr}");
}
