//! Pod cgroups on cgroup v2, for real: skiff-testvm's scenario VM (tests/vm: Debian's cloud
//! kernel under qemu TCG, cgroup2 the only hierarchy), the one the runtime's cgroup v2 test boots,
//! with `cgroup_v2_vm.sh` as its scenario and this test binary as a tool. In the VM the binary runs its ignored test
//! [`in_vm_pod_cgroups`]: the kubelet's cgroup code makes three pods' cgroups (Guaranteed,
//! Burstable, BestEffort) with their limits, and its OCI config code writes a container bundle
//! for each; the scenario reads the pod and QoS cgroups' files back, starts each container with
//! skiff-runc and checks the process sits in `<pod cgroup>/<container>`.
//!
//! Needs what the runtime's VM test needs (qemu-system-x86, busybox-static, the kernel package
//! fetched once) and skiff-runc built (`cargo build -p skiff-runtime --bin skiff-runc`); no root.
//! Takes about a minute. `cargo test -p skiff-kubelet --test cgroup_v2_vm -- --nocapture` shows
//! every check.

mod common;

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use skiff_kubelet::cgroups::{BurstableTier, CgroupMounts, ensure_pod_cgroup};
use skiff_kubelet::image::ImageConfig;
use skiff_kubelet::oci_config::{ContainerSetup, SandboxView, generate};
use skiff_testvm::{Scenario, run_scenario};

/// The pods' pids limit (the kubelet's `--pod-max-pids`).
const POD_PIDS: i64 = 100;

#[test]
fn pod_cgroups_in_a_cgroup_v2_vm() {
    let runtime = common::binary(
        "skiff-runc",
        "cargo build -p skiff-runtime --bin skiff-runc",
    );
    let me = std::env::current_exe().unwrap();
    let outcome = run_scenario(&Scenario {
        name: "kubelet-pod-cgroups",
        tmp_dir: Path::new(env!("CARGO_TARGET_TMPDIR")),
        runtime: &runtime,
        script: include_str!("cgroup_v2_vm.sh"),
        tools: &[&me],
        kernel_config: &[
            ("CONFIG_CFS_BANDWIDTH", "y"),
            ("CONFIG_MEMCG", "y"),
            ("CONFIG_CGROUP_PIDS", "y"),
        ],
        modules: &[],
        files: Vec::new(),
    })
    .unwrap_or_else(|e| panic!("cgroup v2 VM: {e:#}"));
    let log = outcome.report("cgroup v2 VM");
    let failed = outcome.failed();
    assert!(
        failed.is_empty(),
        "{} checks failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert!(
        outcome.done.is_some(),
        "the VM did not finish the scenario; last serial lines:\n{}",
        skiff_testvm::tail(&log, 30)
    );
    // 3 pods × (4 pod files + 2 container checks + start/stop) and the tiers: fewer means a
    // pod was skipped.
    assert!(
        outcome.checks.len() >= 30,
        "only {} checks ran",
        outcome.checks.len()
    );
}

/// Runs inside the VM only (the scenario gives it `SKIFF_VM_BUNDLES`): makes the pods' cgroups
/// and their containers' bundles, and prints `SKIFF-POD <name> <container cgroupsPath>` for each.
#[test]
#[ignore = "runs inside the cgroup v2 VM, started by pod_cgroups_in_a_cgroup_v2_vm"]
fn in_vm_pod_cgroups() {
    let bundles = PathBuf::from(
        std::env::var_os("SKIFF_VM_BUNDLES").expect("SKIFF_VM_BUNDLES: run in the VM only"),
    );
    let mounts = CgroupMounts::read();
    assert!(
        mounts.v1.is_empty(),
        "not a cgroup2-only machine: {mounts:?}"
    );
    let resources = |requests: serde_json::Value, limits: serde_json::Value| json!({"requests": requests, "limits": limits});
    let pods = [
        (
            "guaranteed",
            resources(
                json!({"cpu": "500m", "memory": "64Mi"}),
                json!({"cpu": "500m", "memory": "64Mi"}),
            ),
        ),
        (
            "burstable",
            resources(
                json!({"cpu": "250m", "memory": "16Mi"}),
                json!({"cpu": "500m", "memory": "32Mi"}),
            ),
        ),
        ("besteffort", json!({})),
    ];
    for (name, res) in pods {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {"containers": [{
                "name": "c", "image": "busybox",
                "command": ["sh", "-c", "exec sleep 100000"],
                "resources": res,
            }]},
        }))
        .unwrap();
        let spec = pod.spec.clone().unwrap();
        let pod_cgroup = ensure_pod_cgroup(
            &mounts,
            "/kubepods",
            skiff_k8s::qos::qos_class(&spec),
            &format!("uid-{name}"),
            &skiff_k8s::qos::pod_resources(&spec),
            Some(POD_PIDS),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        // The Burstable tier's weight from its one pod's 250m request (as the pod worker does).
        if name == "burstable" {
            BurstableTier::default()
                .set(&mounts, "/kubepods", &format!("uid-{name}"), Some(250))
                .unwrap();
        }
        let dir = bundles.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let file = |f: &str, content: &str| {
            std::fs::write(dir.join(f), content).unwrap();
            dir.join(f)
        };
        let sandbox = SandboxView {
            hostname: name.to_string(),
            hosts_file: file("hosts", "127.0.0.1 localhost\n"),
            resolv_conf: file("resolv.conf", ""),
            hostname_file: file("hostname", name),
            namespaces: ["network", "ipc", "uts"]
                .map(|t| (t.to_string(), None))
                .to_vec(),
        };
        let cgroups_path = format!("{pod_cgroup}/ctr-{name}");
        let config = generate(&ContainerSetup {
            pod: &pod,
            container: &spec.containers[0],
            image: &ImageConfig::default(),
            env: &[],
            rootfs: Path::new("/skiff/rootfs"),
            sandbox: &sandbox,
            termination_log: &file("termination-log", ""),
            cgroups_path: &cgroups_path,
            volume_mounts: &[],
            seccomp_dir: Path::new("/nonexistent"),
            pid_namespace: None,
            cgroup_namespace: mounts.unified(),
        })
        .unwrap();
        file("config.json", &config.to_string());
        println!("SKIFF-POD {name} {cgroups_path}");
    }
}
