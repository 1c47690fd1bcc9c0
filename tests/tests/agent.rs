//! `skiff agent` joining a `skiff server` on another "machine": the server in one network
//! namespace, the agent in a second, a veth between them. The server prints the join line; the
//! agent checks the server's CA against the token's hash, trades the bootstrap token for a node
//! client certificate and runs the kubelet and the proxy with it: the node is Ready, its
//! credentials are `system:node:<name>`, a pod runs on it and its log is read through the API
//! server; SIGTERM stops the node leaving nothing behind. A token with another CA hash is
//! refused, naming both hashes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use skiff_tests::up::{wait_child, wait_until};
use skiff_tests::*;

const SERVER_IP: &str = "10.231.0.1";
const AGENT_IP: &str = "10.231.0.2";
const NODE: &str = "agent-1";

/// A veth `eth1` between two namespaces, with an address at each end.
fn connect(a: &Netns, a_ip: &str, b: &Netns, b_ip: &str) {
    let run = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().expect("running ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "link", "add", "eth1", "netns", &a.name, "type", "veth", "peer", "name", "eth1", "netns",
        &b.name,
    ]);
    for (ns, ip) in [(a, a_ip), (b, b_ip)] {
        run(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth1",
        ]);
        run(&["-n", &ns.name, "link", "set", "eth1", "up"]);
    }
}

fn kubectl(ns: &Netns, kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = ns
        .command("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn an_agent_joins_with_the_servers_join_line_and_runs_a_pod() {
    require_root();
    require("kubectl", &["version", "--client"], "kubectl 1.32 on PATH");
    require("busybox", &["true"], "Debian package busybox-static");
    require("iptables-save", &["--version"], "Debian package iptables");
    let skiff = binary("skiff");
    binary("skiff-runc");
    binary("skiff-shim");
    let server_ns = Netns::new();
    let agent_ns = Netns::new();
    connect(&server_ns, SERVER_IP, &agent_ns, AGENT_IP);
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path();
    let (server_dir, agent_dir) = (dir.join("server"), dir.join("agent"));
    let cgroup_root = format!("/skiff-agent-test-{}", std::process::id());
    let _guard = NodeLeftoversGuard {
        netns: &agent_ns,
        dir: agent_dir.clone(),
        run_dir: agent_dir.join("run"),
        cgroup_root: cgroup_root.clone(),
    };
    let log = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();

    let _server = KillOnDrop(
        server_ns
            .command(&skiff)
            .arg("server")
            .arg("--data-dir")
            .arg(&server_dir)
            .args(["--listen", &format!("{SERVER_IP}:6443")])
            // Node certificates short enough to see the agent renew its own.
            .args(["--cluster-signing-duration", "45s"])
            .stdout(std::fs::File::create(dir.join("server.out")).expect("stdout file"))
            .stderr(std::fs::File::create(dir.join("server.log")).expect("log file"))
            .spawn()
            .expect("starting skiff server"),
    );
    let mut join_line = String::new();
    wait_until(
        "the server's join line",
        Duration::from_secs(60),
        || log("server.log"),
        || {
            join_line = log("server.out")
                .lines()
                .find_map(|l| l.strip_prefix("join a node: "))
                .unwrap_or_default()
                .to_string();
            !join_line.is_empty()
        },
    );
    let words: Vec<&str> = join_line.split_whitespace().collect();
    assert_eq!(
        words[..4],
        [
            "skiff",
            "agent",
            "--server",
            &format!("https://{SERVER_IP}:6443")
        ],
        "{join_line}"
    );
    let token = words[5];
    let admin = server_dir.join("admin.kubeconfig");

    // A token naming another CA: refused before anything is sent, naming both hashes.
    let good_hash = token
        .strip_prefix("K10")
        .and_then(|t| t.split_once("::"))
        .map(|(h, _)| h.to_string())
        .expect("a join token");
    let wrong_hash = "0".repeat(64);
    let wrong = token.replace(&good_hash, &wrong_hash);
    let refused = agent_ns
        .command(&skiff)
        .args(["agent", "--server", words[3], "--token", &wrong])
        .arg("--data-dir")
        .arg(dir.join("refused"))
        .args(["--node-name", "refused", "--node-ip", AGENT_IP])
        .stdin(Stdio::null())
        .output()
        .expect("running skiff agent");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(
        err.contains(&wrong_hash) && err.contains(&good_hash),
        "the error names both hashes: {err}"
    );
    assert!(!dir.join("refused/kubelet.kubeconfig").exists());

    // The image the pod runs, imported into the agent's node.
    let image = dir.join("busybox.tar");
    let built = Command::new(&skiff)
        .args(["image", "build-busybox", "-o"])
        .arg(&image)
        .arg("busybox:latest")
        .output()
        .expect("skiff image build-busybox");
    assert!(built.status.success(), "{built:?}");
    let imported = Command::new(&skiff)
        .args(["image", "import", "--data-dir"])
        .arg(&agent_dir)
        .arg(&image)
        .output()
        .expect("skiff image import");
    assert!(imported.status.success(), "{imported:?}");

    // The join line, as printed, with this node's settings.
    let mut agent = agent_ns
        .command(&skiff)
        .args(&words[1..])
        .arg("--data-dir")
        .arg(&agent_dir)
        .args(["--node-name", NODE, "--node-ip", AGENT_IP])
        .args(["--cgroup-root", &cgroup_root])
        // The test machine's disk may be fuller than the kubelet's default threshold.
        .arg("--kubelet-arg=--eviction-hard=memory.available<100Mi")
        .env("PATH", path_with_build())
        .stdout(std::fs::File::create(dir.join("agent.out")).expect("stdout file"))
        .stderr(std::fs::File::create(dir.join("agent.log")).expect("log file"))
        .spawn()
        .expect("starting skiff agent");
    wait_until(
        "the agent's node to be Ready",
        Duration::from_secs(90),
        || log("agent.log"),
        || {
            kubectl(
                &server_ns,
                &admin,
                &[
                    "wait",
                    "--for=condition=Ready",
                    "node",
                    NODE,
                    "--timeout=1s",
                ],
            )
            .0
        },
    );
    let (_, nodes) = kubectl(&server_ns, &admin, &["get", "nodes", "-o", "wide"]);
    assert!(nodes.contains(NODE) && nodes.contains(AGENT_IP), "{nodes}");

    // The node runs with credentials of its own, never the admin's.
    let node_kubeconfig = agent_dir.join("kubelet.kubeconfig");
    let (ok, who) = kubectl(&agent_ns, &node_kubeconfig, &["auth", "whoami"]);
    assert!(ok, "{who}");
    assert!(
        who.contains(&format!("system:node:{NODE}")) && who.contains("system:nodes"),
        "{who}"
    );
    let (_, csrs) = kubectl(&server_ns, &admin, &["get", "csr"]);
    assert!(
        csrs.contains("kube-apiserver-client-kubelet") && csrs.contains("Approved,Issued"),
        "{csrs}"
    );

    // A pod is scheduled to it and runs; its log comes through the API server.
    let (ok, out) = kubectl(
        &server_ns,
        &admin,
        &[
            "run",
            "hello",
            "--image=busybox:latest",
            "--image-pull-policy=IfNotPresent",
            "--restart=Never",
            "--",
            "sh",
            "-c",
            "echo hello from the agent; sleep 3600",
        ],
    );
    assert!(ok, "{out}");
    wait_until(
        "the pod to run on the agent",
        Duration::from_secs(90),
        || log("agent.log"),
        || {
            kubectl(
                &server_ns,
                &admin,
                &["wait", "--for=condition=Ready", "pod/hello", "--timeout=1s"],
            )
            .0
        },
    );
    let (_, on) = kubectl(
        &server_ns,
        &admin,
        &["get", "pod", "hello", "-o", "jsonpath={.spec.nodeName}"],
    );
    assert_eq!(on, NODE);
    let (ok, logs) = kubectl(&server_ns, &admin, &["logs", "hello"]);
    assert!(ok && logs.contains("hello from the agent"), "{logs}");

    // The node renews its certificate with its own credentials before it expires (at 70-84% of
    // its 45 s), the kubelet and the proxy switching to it in place.
    wait_until(
        "the node's certificate renewed",
        Duration::from_secs(60),
        || log("agent.log"),
        || {
            let (_, csrs) = kubectl(&server_ns, &admin, &["get", "csr", "--no-headers"]);
            csrs.lines()
                .filter(|l| {
                    l.contains(&format!("system:node:{NODE}")) && l.contains("Approved,Issued")
                })
                .count()
                >= 1
        },
    );
    assert!(log("agent.log").contains("client certificate rotated"));
    let (ok, logs) = kubectl(&server_ns, &admin, &["logs", "hello"]);
    assert!(ok && logs.contains("hello from the agent"), "{logs}");

    // SIGTERM: the pods stopped, nothing of the node left.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let stopped = wait_child(&mut agent, Duration::from_secs(60));
    assert_eq!(
        stopped,
        Some(true),
        "the agent did not stop cleanly:\n{}",
        tail(&log("agent.log"), 60)
    );
    let left: Vec<String> = leftovers(&agent_ns, &agent_dir, &cgroup_root)
        .into_iter()
        .filter(|l| l != "link eth1")
        .collect();
    assert!(
        left.is_empty(),
        "the agent left things behind: {left:#?}\n{}",
        tail(&log("agent.log"), 40)
    );
}

/// PATH with this build's binaries first (the kubelet finds skiff-runc and skiff-shim there).
fn path_with_build() -> String {
    format!(
        "{}:{}",
        target_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
