//! The README's quick start, run exactly as written (the fenced block between its
//! `<!-- quick-start -->` markers) by bash in a throwaway network namespace: `skiff up` in the
//! background, a Deployment and a Service applied with kubectl, the Service answering the node
//! by its ClusterIP and its name through the node's cluster DNS, then SIGINT — after which
//! nothing of the node may be left (mounts, cgroups, iptables chains, links, processes). Then
//! `skiff up` again on the same data directory: the same pods run again and a pod reaches the
//! Service by name and ClusterIP; SIGINT leaves nothing again.

use std::time::Duration;

use skiff_tests::up::*;
use skiff_tests::*;

const CGROUP_ROOT: &str = "/kubepods";

/// The shell lines between the README's quick-start markers.
fn quick_start_block() -> String {
    let readme = std::fs::read_to_string(workspace_dir().join("README.md")).expect("README.md");
    let start = readme
        .find("<!-- quick-start -->")
        .expect("README.md has a <!-- quick-start --> marker");
    let end = readme
        .find("<!-- /quick-start -->")
        .expect("README.md has a <!-- /quick-start --> marker");
    let block = &readme[start..end];
    let body = block
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(body, _)| body)
        .expect("a ```sh fenced block between the quick-start markers");
    body.to_string()
}

#[test]
fn readme_quick_start_runs_as_written_and_resumes() {
    require_root();
    require("bash", &["-c", "true"], "bash");
    require("busybox", &["true"], "Debian package busybox-static");
    require("kubectl", &["version", "--client"], "kubectl 1.32 on PATH");
    require("curl", &["--version"], "Debian package curl");
    require("nslookup", &["-version"], "Debian package bind9-dnsutils");
    require("iptables-save", &["--version"], "Debian package iptables");
    for b in ["skiff", "skiff-runc", "skiff-shim"] {
        binary(b);
    }
    let block = quick_start_block();
    let netns = Netns::new();
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path();
    std::os::unix::fs::symlink(workspace_dir().join("examples"), dir.join("examples"))
        .expect("examples link");
    let before = leftovers(&netns, dir, CGROUP_ROOT);
    assert!(
        before.is_empty(),
        "the machine already has what the quick start must leave clean (another skiff up?): {before:#?}"
    );
    let cluster = UpCluster { netns: &netns, dir };
    let _guard = NodeLeftoversGuard {
        netns: &netns,
        dir: dir.to_path_buf(),
        run_dir: cluster.data().join("run"),
        cgroup_root: CGROUP_ROOT.to_string(),
    };

    // The quick start as written.
    let mut script = cluster
        .command("bash")
        .args(["-euo", "pipefail", "-c", &block])
        .stdout(std::fs::File::create(dir.join("quick-start.out")).expect("stdout file"))
        .stderr(std::fs::File::create(dir.join("quick-start.log")).expect("log file"))
        .spawn()
        .expect("running the quick start");
    let ok = wait_child(&mut script, Duration::from_secs(300));
    let out = cluster.log("quick-start.out");
    let log = cluster.log("quick-start.log");
    assert_eq!(
        ok,
        Some(true),
        "the quick start failed or hung\nstdout:\n{out}\nlog:\n{}",
        tail(&log, 80)
    );
    assert!(out.contains("skiff is up: node"), "{out}");
    let web_pods: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("web-") && l.contains("Running"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        web_pods.len(),
        2,
        "kubectl get pods shows 2 web pods:\n{out}"
    );
    assert!(
        out.lines().any(|l| web_pods.contains(&l.trim())),
        "curl to the ClusterIP answers with a web pod's name:\n{out}"
    );
    let answer = out
        .split_once("Name:\tweb.default.svc.cluster.local\nAddress: ")
        .and_then(|(_, rest)| rest.lines().next())
        .and_then(|ip| ip.trim().parse::<std::net::Ipv4Addr>().ok());
    assert!(
        answer.is_some_and(|ip| ip.octets()[0] == 10 && (96..112).contains(&ip.octets()[1])),
        "the node's cluster DNS answers the Service's name with a ClusterIP:\n{out}"
    );
    let left = leftovers(&netns, dir, CGROUP_ROOT);
    assert!(
        left.is_empty(),
        "skiff up left things behind: {left:#?}\nlog:\n{}",
        tail(&log, 40)
    );

    // Resumed: the same pods run again.
    let mut skiff = cluster
        .command(binary("skiff"))
        .args(["up", "--data-dir", "skiff-data"])
        .stdout(std::fs::File::create(dir.join("resume.out")).expect("stdout file"))
        .stderr(std::fs::File::create(dir.join("resume.log")).expect("log file"))
        .spawn()
        .expect("starting skiff up again");
    let resume_log = || cluster.log("resume.log");
    let mut resumed = None;
    wait_until(
        "the web pods to run again",
        Duration::from_secs(120),
        resume_log,
        || {
            resumed = cluster.ready_pods("app=web", 2);
            resumed.is_some()
        },
    );
    let resumed = resumed.expect("pods");
    let mut names: Vec<&str> = resumed.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let mut before_names = web_pods.clone();
    before_names.sort_unstable();
    assert_eq!(
        names, before_names,
        "the same pods run again after resuming"
    );

    // A pod reaches the Service by name (cluster DNS) and by ClusterIP.
    let (_, cip) = cluster.kubectl(
        &["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"],
        None,
    );
    let script = format!(
        "nslookup web.default.svc.cluster.local || exit 1; \
         for i in $(seq 20); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {cip} 80 && exit 0; \
         sleep 0.5; done; exit 1"
    );
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  restartPolicy: Never
  containers:
  - name: client
    image: busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", {}]
"#,
        serde_json::to_string(&script).expect("script")
    );
    let (applied, text) = cluster.kubectl(&["apply", "-f", "-"], Some(&pod));
    assert!(applied, "{text}");
    let mut phase = String::new();
    wait_until(
        "the client pod to finish",
        Duration::from_secs(60),
        resume_log,
        || {
            phase = cluster
                .get_json(&["pod", "client"])
                .and_then(|p| p["status"]["phase"].as_str().map(str::to_string))
                .unwrap_or_default();
            phase == "Succeeded" || phase == "Failed"
        },
    );
    let uid = cluster
        .get_json(&["pod", "client"])
        .and_then(|p| p["metadata"]["uid"].as_str().map(str::to_string))
        .expect("client uid");
    let client_log = std::fs::read_to_string(
        cluster
            .data()
            .join(format!("pod-logs/default_client_{uid}/client/0.log")),
    )
    .unwrap_or_default();
    assert_eq!(phase, "Succeeded", "client log:\n{client_log}");
    assert!(
        client_log.contains(&format!("Address: {cip}")),
        "{client_log}"
    );
    assert!(
        names
            .iter()
            .any(|n| client_log.contains(&format!(" stdout F {n}\n"))),
        "a web pod answered the client:\n{client_log}"
    );

    // Ctrl-C again: nothing left.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(skiff.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let stopped = wait_child(&mut skiff, Duration::from_secs(90));
    assert_eq!(
        stopped,
        Some(true),
        "skiff up did not stop cleanly:\n{}",
        tail(&resume_log(), 60)
    );
    let left = leftovers(&netns, dir, CGROUP_ROOT);
    assert!(
        left.is_empty(),
        "skiff up left things behind after resuming: {left:#?}\nlog:\n{}",
        tail(&resume_log(), 40)
    );
}
