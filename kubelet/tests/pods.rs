//! Pods in real containers (skiff-runc through skiff-shim) on a node with a real `skiff server`:
//! running with a CRI log, completion with exit codes, restarts with back-off, graceful deletion,
//! the Burstable QoS tier's cpu.shares following its pods' requests (and put back when edited).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Node, busybox_pod};
use serde_json::Value;

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or_default()
}

fn main_status(p: &Value) -> &Value {
    &p["status"]["containerStatuses"][0]
}

#[test]
fn pod_runs_logs_and_completes() {
    let node = Node::start();
    node.apply(&busybox_pod(
        "hello",
        "Never",
        "echo hello from skiff; echo to stderr >&2; sleep 2; exit 0",
        "",
    ));
    node.apply(&busybox_pod("fails", "Never", "exit 3", ""));

    let p = node.wait_pod("hello", "Running", Duration::from_secs(30), |p| {
        phase(p) == "Running"
    });
    let cs = main_status(&p);
    assert!(cs["state"]["running"]["startedAt"].is_string(), "{cs}");
    assert!(cs["containerID"].as_str().unwrap().starts_with("skiff://"));
    assert_eq!(cs["ready"], true);
    assert_eq!(cs["restartCount"], 0);
    assert!(
        cs["imageID"].as_str().unwrap().contains("busybox@sha256:"),
        "{cs}"
    );
    assert_eq!(p["status"]["qosClass"], "BestEffort");
    assert_eq!(p["status"]["hostIP"], common::NODE_IP);
    let ip = p["status"]["podIP"].as_str().unwrap();
    assert!(ip.starts_with(&node.pod_cidr_prefix()), "{ip}");
    assert!(p["status"]["startTime"].is_string());
    let ready = p["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "True");

    // The CRI log of the first run, written by the shim.
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let log = node
        .logs_dir()
        .join(format!("default_hello_{uid}/main/0.log"));
    node.wait_for("the log line", Duration::from_secs(10), |_| {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains(" stdout F hello from skiff"))
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(" stderr F to stderr"), "{text}");
    let first = text.lines().next().unwrap();
    let ts = first.split(' ').next().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{first}");

    let p = node.wait_pod("hello", "Succeeded", Duration::from_secs(30), |p| {
        phase(p) == "Succeeded"
    });
    let t = &main_status(&p)["state"]["terminated"];
    assert_eq!(t["exitCode"], 0, "{t}");
    assert_eq!(t["reason"], "Completed");
    assert!(t["finishedAt"].is_string());

    let p = node.wait_pod("fails", "Failed", Duration::from_secs(30), |p| {
        phase(p) == "Failed"
    });
    let cs = main_status(&p);
    assert_eq!(cs["state"]["terminated"]["exitCode"], 3, "{cs}");
    assert_eq!(cs["state"]["terminated"]["reason"], "Error");
    assert_eq!(cs["restartCount"], 0);

    let reasons = node.event_reasons("hello");
    for r in ["Pulled", "Created", "Started"] {
        assert!(reasons.iter().any(|x| x == r), "{reasons:?}");
    }
}

#[test]
fn pods_get_their_network_address_hostname_and_files() {
    let node = Node::start();
    node.apply(&busybox_pod(
        "web",
        "Always",
        "hostname; ip -4 -o addr show eth0; cat /etc/resolv.conf; sleep 3600",
        "  dnsPolicy: None\n  dnsConfig: {nameservers: [10.96.0.10], searches: [example.test]}\n",
    ));
    let web = node.wait_pod("web", "Running", Duration::from_secs(30), |p| {
        phase(p) == "Running"
    });
    let ip = web["status"]["podIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with(&node.pod_cidr_prefix()), "{ip}");
    let uid = web["metadata"]["uid"].as_str().unwrap();
    let log = node
        .logs_dir()
        .join(format!("default_web_{uid}/main/0.log"));
    node.wait_for(
        "the pod's view of its network",
        Duration::from_secs(10),
        |_| std::fs::read_to_string(&log).is_ok_and(|t| t.contains("nameserver 10.96.0.10")),
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(" stdout F web\n"), "{text}");
    assert!(text.contains(&format!("inet {ip}/24")), "{text}");
    assert!(text.contains("search example.test"), "{text}");
    // An idle pod's status is not rewritten.
    let rv = node.pod("web").unwrap()["metadata"]["resourceVersion"].clone();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node.pod("web").unwrap()["metadata"]["resourceVersion"], rv);

    // A second pod reaches the first through the node's bridge.
    node.apply(&busybox_pod(
        "client",
        "Never",
        &format!("ping -c 1 -W 5 {ip}"),
        "",
    ));
    let client = node.wait_pod("client", "finished", Duration::from_secs(30), |p| {
        matches!(phase(p), "Succeeded" | "Failed")
    });
    assert_eq!(phase(&client), "Succeeded", "{}", client["status"]);
    assert_ne!(client["status"]["podIP"], web["status"]["podIP"]);
}

#[test]
fn crashing_pod_restarts_with_back_off() {
    let node = Node::start();
    node.apply(&busybox_pod("crash", "Always", "echo crashing; exit 1", ""));
    let p = node.wait_pod(
        "crash",
        "CrashLoopBackOff after a restart",
        Duration::from_secs(30),
        |p| {
            let cs = main_status(p);
            cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
                && cs["restartCount"].as_i64() >= Some(1)
        },
    );
    let cs = main_status(&p);
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 1, "{cs}");
    assert!(
        cs["state"]["waiting"]["message"]
            .as_str()
            .unwrap()
            .contains("back-off 10s"),
        "{cs}"
    );
    assert_eq!(phase(&p), "Running");
    let reasons = node.event_reasons("crash");
    assert!(reasons.iter().any(|r| r == "BackOff"), "{reasons:?}");
    // Each attempt has its own log file.
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let dir = node.logs_dir().join(format!("default_crash_{uid}/main"));
    assert!(dir.join("0.log").exists() && dir.join("1.log").exists());
    // After the 10 s back-off the container runs again (restartCount 2).
    node.wait_pod("crash", "the third run", Duration::from_secs(30), |p| {
        main_status(p)["restartCount"].as_i64() >= Some(2)
    });
}

#[test]
fn deletion_is_graceful_and_cleans_up() {
    let node = Node::start();
    // Handles SIGTERM: stops at once although its grace period is long.
    node.apply(&busybox_pod(
        "polite",
        "Always",
        "trap 'echo got TERM; exit 0' TERM; echo up; while true; do sleep 0.2; done",
        "  terminationGracePeriodSeconds: 60\n",
    ));
    // Ignores SIGTERM: killed when its 2 s run out.
    node.apply(&busybox_pod(
        "stubborn",
        "Always",
        "trap '' TERM; echo up; while true; do sleep 0.2; done",
        "  terminationGracePeriodSeconds: 2\n",
    ));
    for name in ["polite", "stubborn"] {
        node.wait_pod(name, "Running", Duration::from_secs(30), |p| {
            phase(p) == "Running"
        });
    }
    assert_eq!(node.container_dirs().len(), 2);
    assert!(!node.cgroup_leftovers().is_empty());
    // The shell must have set its trap before the signal comes.
    std::thread::sleep(Duration::from_millis(500));

    let started = Instant::now();
    node.kubectl(&["delete", "pod", "polite", "--wait=true", "--timeout=30s"]);
    let polite = started.elapsed();
    assert!(polite < Duration::from_secs(10), "took {polite:?}");

    let started = Instant::now();
    node.kubectl(&["delete", "pod", "stubborn", "--wait=true", "--timeout=30s"]);
    let stubborn = started.elapsed();
    assert!(
        stubborn >= Duration::from_secs(2) && stubborn < Duration::from_secs(15),
        "took {stubborn:?}"
    );
    assert!(node.pod("polite").is_none() && node.pod("stubborn").is_none());
    let reasons = node.event_reasons("polite");
    assert!(reasons.iter().any(|r| r == "Killing"), "{reasons:?}");
    // Nothing of the pods is left on the node.
    assert!(
        node.container_dirs().is_empty(),
        "{:?}",
        node.container_dirs()
    );
    assert!(
        node.cgroup_leftovers().is_empty(),
        "{:?}",
        node.cgroup_leftovers()
    );
    let logs: Vec<_> = std::fs::read_dir(node.logs_dir())
        .unwrap()
        .flatten()
        .collect();
    assert!(logs.is_empty(), "{logs:?}");
}

#[test]
fn init_containers_run_in_order_before_the_app() {
    let node = Node::start();
    let manifest = r#"apiVersion: v1
kind: Pod
metadata:
  name: staged
spec:
  restartPolicy: Never
  initContainers:
  - {name: first, image: busybox, imagePullPolicy: Never, command: ["sh", "-c", "echo one; sleep 1"]}
  - {name: second, image: busybox, imagePullPolicy: Never, command: ["sh", "-c", "echo two"]}
  containers:
  - {name: main, image: busybox, imagePullPolicy: Never, command: ["sh", "-c", "echo app"]}
"#;
    node.apply(manifest);
    let pending = node.wait_pod("staged", "initializing", Duration::from_secs(30), |p| {
        p["status"]["initContainerStatuses"][0]["state"]["running"].is_object()
    });
    assert_eq!(phase(&pending), "Pending");
    assert_eq!(
        main_status(&pending)["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    let done = node.wait_pod("staged", "Succeeded", Duration::from_secs(30), |p| {
        phase(p) == "Succeeded"
    });
    let inits = done["status"]["initContainerStatuses"].as_array().unwrap();
    let finished = |s: &Value| {
        s["state"]["terminated"]["finishedAt"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let started = |s: &Value| {
        s["state"]["terminated"]["startedAt"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(inits[0]["state"]["terminated"]["reason"], "Completed");
    assert!(finished(&inits[0]) <= started(&inits[1]));
    assert!(finished(&inits[1]) <= started(main_status(&done)));
    let initialized = done["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Initialized")
        .unwrap();
    assert_eq!(initialized["status"], "True");
}

#[test]
fn memory_limit_is_enforced_and_oom_kill_reported() {
    let node = Node::start();
    node.apply(
        &busybox_pod(
            "hungry",
            "Never",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; tail /dev/zero",
            "",
        )
        .replace(
            "    command:",
            "    resources: {limits: {memory: 16Mi, cpu: 200m}}\n    command:",
        ),
    );
    let p = node.wait_pod("hungry", "Failed", Duration::from_secs(30), |p| {
        phase(p) == "Failed"
    });
    let t = &main_status(&p)["state"]["terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{t}");
    assert_eq!(t["exitCode"], 137);
    assert_eq!(p["status"]["qosClass"], "Guaranteed");
}

/// The pause process of the pod `uid` (`skiff-shim pause <uid>`), if it runs.
fn pause_process(uid: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        (args.len() >= 3 && args[1] == b"pause" && args[2] == uid.as_bytes()).then_some(pid)
    })
}

#[test]
fn share_process_namespace_lets_containers_see_and_signal_each_other() {
    let node = Node::start();
    let shared = tempfile::tempdir().expect("shared directory");
    // `$$$$` is the shell's `$$` after the kubelet's `$(VAR)` expansion (`$$` escapes `$`).
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: shared-pids
spec:
  restartPolicy: Never
  shareProcessNamespace: true
  terminationGracePeriodSeconds: 2
  volumes:
  - name: shared
    hostPath: {{path: {dir}, type: Directory}}
  containers:
  - name: target
    image: busybox
    imagePullPolicy: Never
    volumeMounts: [{{name: shared, mountPath: /shared}}]
    command: ["sh", "-c", "trap 'echo terminated > /shared/target-done; exit 0' TERM; echo $$$$ > /shared/target.pid.tmp; mv /shared/target.pid.tmp /shared/target.pid; while true; do sleep 0.1; done"]
  - name: signaller
    image: busybox
    imagePullPolicy: Never
    volumeMounts: [{{name: shared, mountPath: /shared}}]
    command: ["sh", "-c", "until [ -f /shared/target.pid ]; do sleep 0.1; done; t=$(cat /shared/target.pid); cat /proc/1/cmdline | tr '\\0' ' ' > /shared/pid1; cat /proc/$t/cmdline | tr '\\0' ' ' > /shared/target-seen; ps -o pid,args > /shared/ps; kill -TERM $t; sleep 3600"]
"#,
        dir = shared.path().display()
    );
    node.apply(&manifest);
    let p = node.wait_pod(
        "shared-pids",
        "the target stopped by the other container",
        Duration::from_secs(40),
        |p| {
            p["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["name"] == "target" && s["state"]["terminated"].is_object())
        },
    );
    let target = p["status"]["containerStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "target")
        .unwrap();
    assert_eq!(target["state"]["terminated"]["exitCode"], 0, "{target}");
    let read = |f: &str| std::fs::read_to_string(shared.path().join(f)).unwrap_or_default();
    assert_eq!(read("target-done").trim(), "terminated");
    // PID 1 of the pod's namespace is the pause process; the target is another pid in it.
    assert!(read("pid1").contains("pause"), "{}", read("pid1"));
    let target_pid: i32 = read("target.pid").trim().parse().unwrap();
    assert!(target_pid > 1, "{target_pid}");
    assert!(
        read("target-seen").starts_with("sh -c trap"),
        "{}",
        read("target-seen")
    );
    let ps = read("ps");
    assert!(
        ps.lines()
            .any(|l| l.split_whitespace().next() == Some(&target_pid.to_string())),
        "{ps}"
    );
    // Deleting the pod stops the pause process too.
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    assert!(pause_process(&uid).is_some());
    node.kubectl(&["delete", "pod", "shared-pids", "--timeout=30s"]);
    node.wait_for("the pause process to end", Duration::from_secs(10), |_| {
        pause_process(&uid).is_none()
    });
}

#[test]
fn burstable_tier_cpu_shares_follow_its_pods_requests() {
    // The kubelet's minute between QoS tier updates, shortened (a hidden flag).
    let mut node = Node::start_with(&["--qos-update-period", "2s"]);
    let shares = Path::new("/sys/fs/cgroup/cpu")
        .join(node.cgroup_root.trim_start_matches('/'))
        .join("burstable/cpu.shares");
    let pod = |name: &str, policy: &str, script: &str, resources: &str| {
        busybox_pod(name, policy, script, "  terminationGracePeriodSeconds: 1\n").replace(
            "    command:",
            &format!("    resources: {resources}\n    command:"),
        )
    };
    node.apply(&pod(
        "small",
        "Always",
        "sleep 3600",
        "{requests: {cpu: 250m}}",
    ));
    node.apply(&pod(
        "large",
        "Always",
        "sleep 3600",
        "{requests: {cpu: 500m, memory: 16Mi}, limits: {memory: 64Mi}}",
    ));
    // Neither a Guaranteed pod nor a finished Burstable one counts.
    node.apply(&pod(
        "fixed",
        "Always",
        "sleep 3600",
        "{limits: {cpu: 300m, memory: 64Mi}}",
    ));
    node.apply(&pod("done", "Never", "true", "{requests: {cpu: 500m}}"));
    for name in ["small", "large", "fixed"] {
        node.wait_pod(name, "Running", Duration::from_secs(30), |p| {
            phase(p) == "Running"
        });
    }
    node.wait_pod("done", "Succeeded", Duration::from_secs(30), |p| {
        phase(p) == "Succeeded"
    });
    let read = || {
        std::fs::read_to_string(&shares)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    // 750m → 768 shares.
    node.wait_for("cpu.shares 768", Duration::from_secs(10), |_| {
        read() == "768"
    });
    node.kubectl(&["delete", "pod", "small", "--wait=true", "--timeout=30s"]);
    node.wait_for("cpu.shares 512", Duration::from_secs(10), |_| {
        read() == "512"
    });
    // A hand-edited value is put back within the update period.
    std::fs::write(&shares, "4096").expect("writing cpu.shares");
    let edited = Instant::now();
    node.wait_for(
        "cpu.shares put back to 512",
        Duration::from_secs(10),
        |_| read() == "512",
    );
    assert!(
        edited.elapsed() < Duration::from_secs(5),
        "put back only after {:?}",
        edited.elapsed()
    );
    assert!(node.kubelet_log().contains("QoS tier cpu weight put back"));
    // A kubelet killed and started again counts the pod it adopts.
    node.kill9_kubelet();
    std::fs::write(&shares, "4096").expect("writing cpu.shares");
    node.start_kubelet();
    node.wait_for(
        "cpu.shares 512 after a restart",
        Duration::from_secs(20),
        |_| read() == "512",
    );
    node.kubectl(&["delete", "pod", "large", "--wait=true", "--timeout=30s"]);
    node.wait_for("cpu.shares 2", Duration::from_secs(10), |_| read() == "2");
}
