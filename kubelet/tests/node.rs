//! The node's record: registration with capacity, addresses, nodeInfo and conditions, and the
//! Lease heartbeat — against a real `skiff server`, checked with kubectl.

mod common;

use std::time::{Duration, Instant};

use common::{NODE_IP, Node};

#[test]
fn node_registers_ready_with_lease_and_pod_cidr() {
    let node = Node::start();
    node.wait_for("the node to be Ready", Duration::from_secs(20), |n| {
        n.get_json(&["node", &n.name]).is_some_and(|j| {
            j["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
    });
    let j = node.get_json(&["node", &node.name]).unwrap();
    let status = &j["status"];
    assert_eq!(status["capacity"]["pods"], "110");
    assert!(
        status["capacity"]["cpu"]
            .as_str()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            >= 1
    );
    assert!(
        status["capacity"]["memory"]
            .as_str()
            .unwrap()
            .ends_with("Ki")
    );
    assert!(status["allocatable"]["ephemeral-storage"].is_string());
    let addresses = status["addresses"].as_array().unwrap();
    assert!(
        addresses
            .iter()
            .any(|a| a["type"] == "InternalIP" && a["address"] == NODE_IP),
        "{addresses:?}"
    );
    assert!(
        addresses
            .iter()
            .any(|a| a["type"] == "Hostname" && a["address"] == "node-1")
    );
    let info = &status["nodeInfo"];
    assert!(
        info["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("skiff://"),
        "{info}"
    );
    assert!(!info["kernelVersion"].as_str().unwrap().is_empty());
    assert_eq!(info["operatingSystem"], "linux");
    let kinds: Vec<&str> = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    for k in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }
    assert_eq!(j["metadata"]["labels"]["kubernetes.io/hostname"], "node-1");
    // The images the node holds: the busybox image the harness imported, by digest and tag.
    let images = status["images"].as_array().expect("status.images");
    let busybox = images
        .iter()
        .find(|i| {
            i["names"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|n| n == "docker.io/library/busybox:latest")
        })
        .unwrap_or_else(|| panic!("no busybox among {images:?}"));
    assert!(busybox["sizeBytes"].as_i64() > Some(0), "{busybox}");
    assert!(
        busybox["names"][0]
            .as_str()
            .unwrap()
            .starts_with("docker.io/library/busybox@sha256:"),
        "{busybox}"
    );

    // The heartbeat.
    let lease = node
        .get_json(&["lease", "-n", "kube-node-lease", &node.name])
        .expect("the node's Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "node-1");
    assert_eq!(lease["metadata"]["ownerReferences"][0]["kind"], "Node");
    // The control plane gives the node a pod range; the kubelet reads it.
    node.wait_for("a podCIDR", Duration::from_secs(20), |n| {
        n.get_json(&["node", &n.name])
            .is_some_and(|j| j["spec"]["podCIDR"].is_string())
    });
    let printed = node.kubectl(&["get", "node", "node-1"]);
    assert!(printed.contains("Ready"), "{printed}");
}

/// Given several API servers (`--api-servers`), the kubelet skips one that refuses connections
/// and runs its pods through the next.
#[test]
fn a_kubelet_given_an_unreachable_api_server_first_uses_the_next() {
    let mut node = Node::start();
    let kubeconfig = std::fs::read_to_string(node.kubeconfig()).expect("admin.kubeconfig");
    let live = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("the kubeconfig names its server")
        .to_string();
    // Nothing listens on port 1 of the node's loopback: refused.
    node.restart_kubelet_with(&["--api-servers", &format!("https://127.0.0.1:1,{live}")]);
    node.apply(&common::busybox_pod(
        "through-next",
        "Never",
        "sleep 30",
        "",
    ));
    node.wait_pod("through-next", "Running", Duration::from_secs(30), |p| {
        p["status"]["phase"] == "Running"
    });
    let log = node.kubelet_log();
    assert!(
        log.contains("API server unreachable; trying the next"),
        "{log}"
    );
}

/// The status of the Node or the pod's Ready condition, as JSON.
fn ready_of(object: &serde_json::Value) -> String {
    object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// What the node lifecycle controller writes about a node it lost (`Ready=Unknown`) and its pods
/// (`Ready=False`) is set back by the kubelet, which still runs, within its ten-second sync
/// period; and once the statuses agree again nothing more is written.
#[test]
fn statuses_another_writer_changed_are_set_back() {
    let node = Node::start();
    node.apply(&common::busybox_pod("steady", "Always", "sleep 3600", ""));
    node.wait_pod("steady", "Ready", Duration::from_secs(60), |p| {
        ready_of(p) == "True"
    });
    node.wait_for("the node to be Ready", Duration::from_secs(20), |n| {
        n.get_json(&["node", &n.name])
            .is_some_and(|j| ready_of(&j) == "True")
    });
    let written = |kind: &str, name: &str, patch: &str| {
        node.kubectl(&[
            "patch",
            kind,
            name,
            "--subresource=status",
            "-p",
            patch,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])
    };
    let start = Instant::now();
    assert_eq!(
        written(
            "node",
            &node.name,
            r#"{"status":{"conditions":[{"type":"Ready","status":"Unknown","reason":"NodeStatusUnknown","message":"Kubelet stopped posting node status."}]}}"#,
        ),
        "Unknown"
    );
    assert_eq!(
        written(
            "pod",
            "steady",
            r#"{"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#,
        ),
        "False"
    );
    node.wait_pod("steady", "Ready again", Duration::from_secs(15), |p| {
        ready_of(p) == "True"
    });
    node.wait_for("the node Ready again", Duration::from_secs(15), |n| {
        n.get_json(&["node", &n.name])
            .is_some_and(|j| ready_of(&j) == "True")
    });
    eprintln!("both set back after {:?}", start.elapsed());
    // Settled: a whole sync period later neither object was written again.
    let versions = || {
        node.kubectl(&[
            "get",
            &format!("node/{}", node.name),
            "pod/steady",
            "-o",
            "jsonpath={.items[*].metadata.resourceVersion}",
        ])
    };
    let before = versions();
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(versions(), before);
}
