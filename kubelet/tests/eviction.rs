//! Node-pressure eviction on a real node, with real signals the test makes true without
//! harming the machine: the node filesystem is a 64 MiB tmpfs under the node's root directory
//! that a BestEffort pod fills, and memory is bounded by a 512 MiB limit on the pods' own cgroup
//! root that a BestEffort pod fills with a memory-backed emptyDir. In both the node reports the
//! pressure, the greedy BestEffort pod is evicted first (Failed, reason Evicted, the kubelet's
//! message, an Evicted event), its resources are reclaimed, the pressure ends, and the idle
//! BestEffort and the Guaranteed pods keep running. A soft threshold evicts only after its grace
//! period, and gives the pod SIGTERM and a grace period capped by the maximum.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::Node;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn pod(name: &str, script: &str, resources: &str, volumes: &str) -> String {
    let script = serde_json::to_string(script).unwrap();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
{volumes}  containers:
  - name: main
    image: busybox
    imagePullPolicy: Never
    command: ["sh", "-c", {script}]
{resources}"#
    )
}

const GUARANTEED: &str = r#"    resources:
      requests: {cpu: 100m, memory: 64Mi}
      limits: {cpu: 100m, memory: 64Mi}
"#;

fn node_condition(node: &Node, kind: &str) -> String {
    let n = node.get_json(&["node", &node.name]).unwrap_or_default();
    n["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or_default()
}

/// Starts the idle BestEffort and the Guaranteed pod and waits for them to run.
fn start_bystanders(node: &Node) {
    node.apply(&pod("idle", "sleep 3600", "", ""));
    node.apply(&pod("guaranteed", "sleep 3600", GUARANTEED, ""));
    for name in ["idle", "guaranteed"] {
        node.wait_pod(name, "Running", WAIT, |p| phase(p) == "Running");
    }
}

/// The greedy pod is evicted with the kubelet's status and event while `condition` is True.
fn expect_greedy_evicted(node: &Node, condition: &str, resource: &str) {
    let saw_pressure = std::cell::Cell::new(false);
    let p = node.wait_pod("greedy", "evicted", WAIT, |p| {
        if node_condition(node, condition) == "True" {
            saw_pressure.set(true);
        }
        phase(p) == "Failed"
    });
    let status = &p["status"];
    assert_eq!(status["reason"], "Evicted", "{status}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!(
            "The node was low on resource: {resource}. Threshold quantity: "
        )) && message.contains("Container main was using ")
            && message.ends_with(&format!("has larger consumption of {resource}. ")),
        "{message}"
    );
    let disruption = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "DisruptionTarget")
        .unwrap_or_else(|| panic!("no DisruptionTarget condition: {status}"));
    assert_eq!(disruption["status"], "True", "{disruption}");
    assert_eq!(disruption["reason"], "TerminationByKubelet", "{disruption}");
    assert_eq!(disruption["message"], status["message"], "{disruption}");
    let greedy = &status["containerStatuses"][0]["state"]["terminated"];
    assert!(greedy.is_object(), "{status}");
    node.wait_for("the Evicted event", WAIT, |n| {
        n.event_reasons("greedy").iter().any(|r| r == "Evicted")
    });
    node.wait_for(&format!("{condition} True"), WAIT, |n| {
        saw_pressure.get() || node_condition(n, condition) == "True"
    });
}

/// A pod applied now (within the pressure transition period) is not admitted.
fn expect_rejected_under_pressure(node: &Node, manifest: &str, condition: &str) {
    node.apply(manifest);
    let late = node.wait_pod("late", "rejected", WAIT, |p| phase(p) == "Failed");
    assert_eq!(late["status"]["reason"], "Evicted", "{}", late["status"]);
    assert_eq!(
        late["status"]["message"],
        format!("Pod was rejected: The node was low on resource: [{condition}]. ")
    );
}

/// The greedy pod's resources were reclaimed: the pressure ends (after the transition period)
/// and nobody else was evicted meanwhile.
fn expect_pressure_ends(node: &Node, condition: &str) {
    node.wait_for(&format!("{condition} False"), WAIT, |n| {
        node_condition(n, condition) == "False"
    });
    for name in ["idle", "guaranteed"] {
        let p = node.pod(name).expect("the pod");
        assert_eq!(phase(&p), "Running", "{name}: {}", p["status"]);
    }
    assert!(
        !node
            .event_reasons("idle")
            .iter()
            .chain(&node.event_reasons("guaranteed"))
            .any(|r| r == "Evicted")
    );
}

/// The node's root directory on a 64 MiB tmpfs.
fn mount_small_disk(root: &Path) {
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "skiff-eviction-test"])
        .arg(root)
        .status()
        .expect("mount");
    assert!(ok.success(), "mounting a tmpfs on {}", root.display());
}

#[test]
fn soft_threshold_evicts_after_its_grace_period_with_the_capped_pod_grace_period() {
    let node = Node::start_with_root(
        &[
            "--eviction-hard",
            "memory.available<100Mi",
            "--eviction-soft",
            "nodefs.available<40%",
            "--eviction-soft-grace-period",
            "nodefs.available=3s",
            "--eviction-max-pod-grace-period",
            "2",
            "--eviction-monitoring-period",
            "1s",
        ],
        mount_small_disk,
    );
    // Fills the disk past the soft threshold, then notes when SIGTERM came and ignores it: only
    // the end of the capped grace period (2 s, not the pod's 30 s) kills it.
    let greedy = pod(
        "greedy",
        "trap 'date +%s > /dev/termination-log' TERM; \
         dd if=/dev/zero of=/fill bs=1M count=40 && while :; do sleep 1; done",
        "",
        "",
    )
    .replace(
        "terminationGracePeriodSeconds: 1",
        "terminationGracePeriodSeconds: 30",
    );
    node.apply(&greedy);
    let p = node.wait_pod("greedy", "evicted", WAIT, |p| phase(p) == "Failed");
    assert_eq!(p["status"]["reason"], "Evicted", "{}", p["status"]);
    let terminated = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["exitCode"], 137, "{terminated}");
    let term_at: i64 = terminated["message"]
        .as_str()
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or_else(|| panic!("no SIGTERM before the kill: {terminated}"));
    let finished = chrono::DateTime::parse_from_rfc3339(terminated["finishedAt"].as_str().unwrap())
        .unwrap()
        .timestamp();
    assert!(
        (1..=10).contains(&(finished - term_at)),
        "killed {}s after SIGTERM (max grace 2s, the pod's 30s): {terminated}",
        finished - term_at
    );
    // The soft grace period: no eviction before the signal stayed past the threshold for 3 s.
    let started: i64 = terminated["startedAt"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .unwrap()
        .timestamp();
    assert!(
        term_at - started >= 3,
        "SIGTERM {}s after start: {terminated}",
        term_at - started
    );
}

#[test]
fn disk_pressure_evicts_the_best_effort_pod_filling_the_disk() {
    let node = Node::start_with_root(
        &[
            "--eviction-hard",
            "nodefs.available<40%",
            "--eviction-monitoring-period",
            "1s",
            "--eviction-pressure-transition-period",
            "10s",
            // The unused image is collected although it came in just before the kubelet.
            "--minimum-image-ttl-duration",
            "0s",
        ],
        |root: &Path| {
            mount_small_disk(root);
            // An image no pod uses: collected before any pod is evicted.
            let archive = root.join("unused.tar");
            skiff_kubelet::image::busybox::BusyboxImage {
                extra_files: vec![skiff_kubelet::image::busybox::ExtraFile {
                    path: "/unused".to_string(),
                    contents: b"unused".to_vec(),
                    mode: 0o644,
                }],
                ..skiff_kubelet::image::busybox::BusyboxImage::new("unused:1")
            }
            .write(&archive)
            .expect("building the unused image");
            skiff_kubelet::image::ImageStore::open(root)
                .and_then(|store| store.import(&archive))
                .expect("importing the unused image");
            std::fs::remove_file(&archive).expect("removing the archive");
        },
    );
    start_bystanders(&node);
    assert_eq!(node_condition(&node, "DiskPressure"), "False");
    // 40 MiB of the 64 MiB in the pod's writable layer: less than 40% left.
    node.apply(&pod(
        "greedy",
        "dd if=/dev/zero of=/fill bs=1M count=40 && sleep 3600",
        "",
        "",
    ));
    expect_greedy_evicted(&node, "DiskPressure", "ephemeral-storage");
    let store = skiff_kubelet::image::ImageStore::open(&node.root_dir()).expect("image store");
    assert!(
        store.lookup("unused:1").is_err(),
        "the unused image was not collected under disk pressure"
    );
    assert!(
        store.lookup("busybox").is_ok(),
        "the image in use was collected"
    );
    // Under DiskPressure the node admits no new pod, not even a Guaranteed one.
    let late = pod("late", "sleep 3600", GUARANTEED, "");
    expect_rejected_under_pressure(&node, &late, "DiskPressure");
    expect_pressure_ends(&node, "DiskPressure");
}

#[test]
fn memory_pressure_evicts_the_best_effort_pod_using_memory() {
    let node = Node::start_with(&[
        "--eviction-hard",
        "memory.available<200Mi",
        "--eviction-monitoring-period",
        "1s",
        "--eviction-pressure-transition-period",
        "10s",
    ]);
    // The pods' cgroup root gets a limit, as node allocatable enforcement would give it: memory
    // available to pods is that limit less what they use.
    let memory = Path::new("/sys/fs/cgroup/memory").join(node.cgroup_root.trim_start_matches('/'));
    std::fs::create_dir_all(&memory).expect("the pods' memory cgroup root (cgroup v1 memory)");
    std::fs::write(memory.join("memory.limit_in_bytes"), "536870912").expect("memory limit");
    start_bystanders(&node);
    assert_eq!(node_condition(&node, "MemoryPressure"), "False");
    // 400 MiB in a memory-backed emptyDir: charged to the pod's cgroup, less than 200 MiB left.
    node.apply(&pod(
        "greedy",
        "dd if=/dev/zero of=/mem/fill bs=1M count=400 && sleep 3600",
        "    volumeMounts: [{name: mem, mountPath: /mem}]\n",
        "  volumes:\n  - name: mem\n    emptyDir: {medium: Memory}\n",
    ));
    expect_greedy_evicted(&node, "MemoryPressure", "memory");
    // Under MemoryPressure no BestEffort pod is admitted.
    expect_rejected_under_pressure(&node, &pod("late", "sleep 3600", "", ""), "MemoryPressure");
    expect_pressure_ends(&node, "MemoryPressure");
}
