//! securityContext fields on a real node, each checked by its effect inside the real container
//! (what the container prints to its CRI log): runAsUser/runAsGroup/supplementalGroups,
//! runAsNonRoot refusing an image that runs as root, readOnlyRootFilesystem,
//! allowPrivilegeEscalation (no_new_privs), capabilities add/drop, privileged, procMount,
//! seccompProfile (RuntimeDefault, Unconfined, Localhost), sysctls.

mod common;

use std::time::Duration;

use common::Node;

const WAIT: Duration = Duration::from_secs(40);

/// A pod running `script` once, with `pod_sc` and `container_sc` (YAML flow mappings) as its
/// pod and container securityContext.
fn pod(name: &str, script: &str, pod_sc: &str, container_sc: &str) -> String {
    let script = serde_json::to_string(script).unwrap();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  restartPolicy: Never
  securityContext: {pod_sc}
  containers:
  - name: main
    image: busybox
    imagePullPolicy: Never
    command: ["sh", "-c", {script}]
    securityContext: {container_sc}
"#
    )
}

/// What the pod's container printed (stdout and stderr), once it has exited 0.
fn output(node: &Node, name: &str) -> String {
    let p = node.wait_pod(name, "Succeeded", WAIT, |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let log = node
        .logs_dir()
        .join(format!("default_{name}_{uid}/main/0.log"));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    // CRI lines: `<time> <stream> <tag> <text>`.
    text.lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The capability set `field` (CapEff…) the container printed from /proc/self/status.
fn caps(out: &str, field: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in {out}"));
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

const CAP_CHOWN: u32 = 0;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

#[test]
fn security_context_fields_take_effect_in_the_container() {
    let node = Node::start();
    let status = "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status";
    node.apply(&pod(
        "ids",
        "id",
        "{runAsUser: 1234, runAsGroup: 5678, supplementalGroups: [4242]}",
        "{}",
    ));
    node.apply(&pod("non-root", "id", "{runAsNonRoot: true}", "{}"));
    node.apply(&pod(
        "read-only",
        "touch /file 2>&1; echo rc=$?; touch /tmp/file 2>&1; echo tmp-rc=$?",
        "{}",
        "{readOnlyRootFilesystem: true}",
    ));
    node.apply(&pod(
        "no-escalation",
        status,
        "{}",
        "{allowPrivilegeEscalation: false}",
    ));
    node.apply(&pod("defaults", status, "{}", "{}"));
    node.apply(&pod(
        "caps",
        status,
        "{}",
        "{capabilities: {add: [NET_ADMIN], drop: [CHOWN]}}",
    ));
    node.apply(&pod(
        "privileged",
        &format!("{status}; grep ' /sys ' /proc/mounts"),
        "{}",
        "{privileged: true}",
    ));
    let seccomp_dir = node.root_dir().join("seccomp");
    std::fs::create_dir_all(&seccomp_dir).unwrap();
    std::fs::write(
        seccomp_dir.join("no-mkdir.json"),
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let mode = "grep '^Seccomp:' /proc/self/status";
    node.apply(&pod(
        "seccomp-default",
        mode,
        "{seccompProfile: {type: RuntimeDefault}}",
        "{}",
    ));
    node.apply(&pod(
        "seccomp-unconfined",
        mode,
        "{seccompProfile: {type: RuntimeDefault}}",
        "{seccompProfile: {type: Unconfined}}",
    ));
    node.apply(&pod(
        "seccomp-local",
        "mkdir /tmp/d 2>&1; echo rc=$?; touch /tmp/f && echo touched",
        "{}",
        "{seccompProfile: {type: Localhost, localhostProfile: no-mkdir.json}}",
    ));
    let masked = "grep -cE ' /proc/(acpi|asound|kcore|keys|latency_stats|timer_list|sched_debug|scsi) ' \
                  /proc/mounts; grep -c ' /proc/sys ' /proc/mounts; true";
    node.apply(&pod("proc-default", masked, "{}", "{procMount: Default}"));
    node.apply(&pod("proc-unmasked", masked, "{}", "{procMount: Unmasked}"));
    node.apply(&pod(
        "sysctls",
        "cat /proc/sys/net/ipv4/ip_unprivileged_port_start",
        "{sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: \"80\"}]}",
        "{}",
    ));

    let out = output(&node, "ids");
    assert!(out.contains("uid=1234 gid=5678"), "{out}");
    assert!(out.contains("4242"), "{out}");

    let p = node.wait_pod("non-root", "refused", WAIT, |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
            == "CreateContainerConfigError"
    });
    let waiting = &p["status"]["containerStatuses"][0]["state"]["waiting"];
    assert!(
        waiting["message"]
            .as_str()
            .unwrap_or_default()
            .contains("runAsNonRoot and image will run as root"),
        "{waiting}"
    );

    let out = output(&node, "read-only");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(out.contains("rc=1"), "{out}");

    let defaults = output(&node, "defaults");
    assert!(defaults.contains("NoNewPrivs:\t0"), "{defaults}");
    let out = output(&node, "no-escalation");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");

    let default_caps = caps(&defaults, "CapEff");
    assert_ne!(default_caps & (1 << CAP_CHOWN), 0, "{defaults}");
    assert_eq!(default_caps & (1 << CAP_NET_ADMIN), 0, "{defaults}");
    let out = output(&node, "caps");
    let c = caps(&out, "CapEff");
    assert_eq!(c & (1 << CAP_CHOWN), 0, "CHOWN dropped: {out}");
    assert_ne!(c & (1 << CAP_NET_ADMIN), 0, "NET_ADMIN added: {out}");

    let out = output(&node, "privileged");
    assert_ne!(caps(&out, "CapEff") & (1 << CAP_SYS_ADMIN), 0, "{out}");
    let sys = out
        .lines()
        .find(|l| l.contains(" /sys "))
        .unwrap_or_default();
    assert!(sys.contains(" rw,") || sys.contains(" rw "), "{out}");

    // procMount Default masks files of /proc (those this kernel has) and makes /proc/sys
    // read-only; Unmasked does neither.
    let out = output(&node, "proc-default");
    let counts: Vec<u32> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert!(counts[0] > 0 && counts[1] == 1, "{out}");
    let out = output(&node, "proc-unmasked");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["0", "0"], "{out}");

    // seccomp: the runtime default filters (mode 2); Unconfined (the container's, over the
    // pod's) does not; a Localhost profile from the node's seccomp directory refuses mkdir.
    let out = output(&node, "seccomp-default");
    assert_eq!(out.trim(), "Seccomp:\t2");
    let out = output(&node, "seccomp-unconfined");
    assert_eq!(out.trim(), "Seccomp:\t0");
    let out = output(&node, "seccomp-local");
    assert!(out.contains("Operation not permitted"), "{out}");
    assert!(out.contains("rc=1") && out.contains("touched"), "{out}");

    let out = output(&node, "sysctls");
    assert_eq!(out.trim(), "80");
}
