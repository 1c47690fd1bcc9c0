//! Pod admission on a real node: pods bound straight to the node (nodeName, so the scheduler's
//! filters are skipped) that do not fit it are Failed with the kubelet's reason and message and a
//! Warning event, and never run; NoSchedule taints are left to the scheduler; a rejected pod is
//! removed when deleted.

mod common;

use std::time::Duration;

use common::{Node, busybox_pod};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// A pod bound to the node with `spec` (YAML, two-space indented) and a container asking for
/// `requests` (a flow mapping such as `{cpu: "64"}`).
fn bound_pod(name: &str, spec: &str, requests: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  nodeName: node-1
  restartPolicy: Never
{spec}  containers:
  - name: main
    image: busybox
    imagePullPolicy: Never
    command: ["sleep", "3600"]
    resources:
      requests: {requests}
"#
    )
}

/// Waits for the pod to be rejected; checks its status and event.
fn expect_rejected(node: &Node, name: &str, reason: &str, message: &str) {
    let p = node.wait_pod(name, reason, WAIT, |p| p["status"]["phase"] == "Failed");
    let status = &p["status"];
    assert_eq!(status["reason"], reason, "{status}");
    assert_eq!(
        status["message"].as_str().unwrap_or_default(),
        format!("Pod was rejected: {message}"),
        "{status}"
    );
    assert!(status["containerStatuses"].is_null(), "{status}");
    node.wait_for("the rejection's event", WAIT, |n| {
        n.event_reasons(name).iter().any(|r| r == reason)
    });
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or_default()
}

#[test]
fn pods_that_do_not_fit_the_node_are_rejected() {
    let node = Node::start_with(&["--max-pods", "2"]);
    node.wait_for("the node's allocatable", WAIT, |n| {
        n.get_json(&["node", &n.name])
            .is_some_and(|v| v["status"]["allocatable"]["pods"] == "2")
    });
    let cpus = node.get_json(&["node", &node.name]).unwrap()["status"]["allocatable"]["cpu"]
        .as_str()
        .unwrap()
        .parse::<i64>()
        .unwrap();

    node.apply(&bound_pod("too-much-cpu", "", r#"{cpu: "64"}"#));
    node.apply(&bound_pod("too-much-memory", "", r#"{memory: "64Ti"}"#));
    node.apply(&bound_pod(
        "wrong-selector",
        "  nodeSelector:\n    disk: ssd\n",
        "{}",
    ));
    node.apply(&bound_pod(
        "wrong-affinity",
        r#"  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
        - matchExpressions:
          - {key: kubernetes.io/hostname, operator: NotIn, values: [node-1]}
"#,
        "{}",
    ));
    expect_rejected(
        &node,
        "too-much-cpu",
        "OutOfcpu",
        &format!(
            "Node didn't have enough resource: cpu, requested: 64000, used: 0, capacity: {}",
            cpus * 1000
        ),
    );
    let p = node.pod("too-much-memory").unwrap();
    let memory =
        node.get_json(&["node", &node.name]).unwrap()["status"]["allocatable"]["memory"].clone();
    let memory = memory.as_str().unwrap();
    expect_rejected(
        &node,
        "too-much-memory",
        "OutOfmemory",
        &format!(
            "Node didn't have enough resource: memory, requested: {}, used: 0, capacity: {}",
            64u64 << 40,
            skiff_k8s::resources::value(&k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                memory.to_string()
            ))
        ),
    );
    assert_eq!(p["status"]["qosClass"], "Burstable");
    expect_rejected(
        &node,
        "wrong-selector",
        "NodeAffinity",
        "Predicate NodeAffinity failed",
    );
    expect_rejected(
        &node,
        "wrong-affinity",
        "NodeAffinity",
        "Predicate NodeAffinity failed",
    );

    // A NoExecute taint the pod does not tolerate rejects it; one it tolerates does not.
    node.kubectl(&["taint", "node", &node.name, "dedicated=db:NoExecute"]);
    node.apply(&bound_pod("untolerated", "", "{}"));
    expect_rejected(
        &node,
        "untolerated",
        "TaintToleration",
        "Predicate TaintToleration failed",
    );
    node.apply(&bound_pod(
        "tolerated",
        "  tolerations:\n  - {key: dedicated, operator: Exists, effect: NoExecute}\n",
        "{}",
    ));
    node.wait_pod("tolerated", "Running", WAIT, |p| phase(p) == "Running");
    node.kubectl(&["taint", "node", &node.name, "dedicated-"]);

    // NoSchedule is the scheduler's: a pod bound to the node runs anyway. With it the node holds
    // its two pods; the third is one too many. Rejected pods took no room.
    node.kubectl(&["taint", "node", &node.name, "maintenance=yes:NoSchedule"]);
    node.apply(&bound_pod("second", "", "{}"));
    node.wait_pod("second", "Running", WAIT, |p| phase(p) == "Running");
    node.apply(&bound_pod("third", "", "{}"));
    expect_rejected(
        &node,
        "third",
        "OutOfpods",
        "Node didn't have enough resource: pods, requested: 1, used: 2, capacity: 2",
    );
    // The rejected pods never ran anything.
    assert_eq!(
        node.container_dirs().len(),
        2,
        "{:?}",
        node.container_dirs()
    );

    // A rejected pod is removed once deleted; the room a deleted pod leaves is free again.
    node.kubectl(&["delete", "pod", "third", "--timeout=30s"]);
    node.kubectl(&[
        "delete",
        "pod",
        "second",
        "--grace-period=1",
        "--timeout=60s",
    ]);
    node.apply(&busybox_pod(
        "fourth",
        "Never",
        "sleep 3600",
        "  nodeName: node-1\n",
    ));
    node.wait_pod("fourth", "Running", WAIT, |p| phase(p) == "Running");
}
