//! `skiff cluster`: a 3-node cluster in an isolated lab namespace, driven from the host through
//! the kubeconfig it prints (the API server at a 127.0.0.1 port). Every node comes up Ready; an
//! image loaded into every node runs a 3-replica Deployment spread over the nodes, which a pod
//! reaches through a ClusterIP Service (every backend answers, across nodes) and finds by DNS
//! name; a node cut off with stop-node goes NotReady and comes back Ready with start-node; `down`
//! leaves the machine as it was (namespaces, links, mounts, cgroups, rules, processes, files).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::*;

/// What a cluster may leave on the machine, as lines to compare before and after.
fn machine_state(name: &str, dir: &Path) -> Vec<String> {
    let lines = |program: &str, args: &[&str]| -> Vec<String> {
        Command::new(program)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let ours = format!("skiff-{name}");
    let dir_text = dir.to_string_lossy().into_owned();
    let mut state = Vec::new();
    state.extend(
        lines("ip", &["netns", "list"])
            .into_iter()
            .filter(|l| l.contains(&ours))
            .map(|l| format!("netns {l}")),
    );
    // The host's links by name (a cluster makes its links inside its namespaces only).
    state.extend(
        lines("ip", &["-o", "link", "show"])
            .iter()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| format!("link {}", n.split('@').next().unwrap_or(n))),
    );
    state.extend(
        lines("iptables-save", &[])
            .into_iter()
            .filter(|l| l.contains("SKIFF"))
            .map(|l| format!("host iptables {l}")),
    );
    state.extend(
        lines("nft", &["list", "tables"])
            .into_iter()
            .filter(|l| l.contains("skiff"))
            .map(|l| format!("host nftables {l}")),
    );
    state.extend(
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&dir_text) || l.contains(&ours))
            .map(|l| format!("mount {l}")),
    );
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        for c in std::fs::read_dir(h.path()).into_iter().flatten().flatten() {
            if c.file_name().to_string_lossy().starts_with(&ours) {
                state.push(format!("cgroup {}", c.path().display()));
            }
        }
    }
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(p.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&dir_text) {
                state.push(format!("process {cmd}"));
            }
        }
    }
    state.extend(
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| format!("file {}", e.path().display())),
    );
    state.sort();
    state
}

struct Skiff<'a> {
    name: &'a str,
    dir: &'a Path,
}

impl Skiff<'_> {
    /// `skiff cluster SUBCOMMAND --name NAME --dir DIR ARGS…`: success and output.
    fn cluster(&self, subcommand: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new(binary("skiff"))
            .args(["cluster", subcommand, "--name", self.name, "--dir"])
            .arg(self.dir)
            .args(args)
            .env("PATH", path_with_build())
            .stdin(Stdio::null())
            .output()
            .expect("running skiff cluster");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", self.dir.join(self.name).join("kubeconfig"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).expect("kubectl stdin");
        }
        drop(input);
        let out = child.wait_with_output().expect("kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    /// The log of one of the cluster's processes (node-1, server, …).
    fn log(&self, process: &str) -> String {
        std::fs::read_to_string(
            self.dir
                .join(self.name)
                .join("logs")
                .join(format!("{process}.log")),
        )
        .unwrap_or_default()
    }

    fn wait(&self, what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; server log:\n{}",
                tail(&self.log("server"), 30)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn node_ready(&self, node: &str) -> String {
        self.kubectl(
            &[
                "get",
                "node",
                node,
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
            ],
            None,
        )
        .1
    }
}

/// Whatever happens, the cluster is taken down.
struct DownOnDrop<'a>(&'a Skiff<'a>);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.cluster("down", &[]);
    }
}

fn path_with_build() -> String {
    format!(
        "{}:{}",
        target_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}
      containers:
      - name: httpd
        image: busybox:latest
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
        readinessProbe: {httpGet: {path: /, port: 80}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 80}]
"#;

#[test]
fn a_three_node_cluster_runs_a_spread_deployment_and_leaves_nothing_behind() {
    require_root();
    require("kubectl", &["version", "--client"], "kubectl 1.32 on PATH");
    require("busybox", &["true"], "Debian package busybox-static");
    require("ip", &["-V"], "Debian package iproute2");
    require("iptables-save", &["--version"], "Debian package iptables");
    for b in ["skiff", "skiff-runc", "skiff-shim"] {
        binary(b);
    }
    let tmp = tempfile::tempdir().expect("temporary directory");
    let name = format!("c{}", std::process::id() % 1_000_000);
    let dir = tmp.path().join("clusters");
    std::fs::create_dir_all(&dir).expect("clusters directory");
    let skiff = Skiff {
        name: &name,
        dir: &dir,
    };
    let before = machine_state(&name, &dir);
    let _down = DownOnDrop(&skiff);

    // Up: a progress line per node, back when all are Ready.
    let (ok, out) = skiff.cluster(
        "up",
        &["--nodes", "3", "--server-arg=--node-monitor-grace-period=4"],
    );
    assert!(ok, "{out}");
    for node in ["node-1", "node-2", "node-3"] {
        assert!(out.contains(&format!("{node}: Ready")), "{out}");
        assert_eq!(skiff.node_ready(node), "True");
    }
    assert!(out.contains("kubeconfig: "), "{out}");
    let ls = Command::new(binary("skiff"))
        .args(["cluster", "ls", "--dir"])
        .arg(&dir)
        .output()
        .expect("skiff cluster ls");
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.contains(&name) && ls.contains("3/3"), "{ls}");

    // The image, loaded into every node.
    let image = tmp.path().join("busybox.tar");
    let built = Command::new(binary("skiff"))
        .args(["image", "build-busybox", "-o"])
        .arg(&image)
        .arg("busybox:latest")
        .output()
        .expect("skiff image build-busybox");
    assert!(built.status.success(), "{built:?}");
    let (ok, out) = skiff.cluster("load", &[image.to_str().expect("path")]);
    let imported = out.lines().filter(|l| l.starts_with("imported ")).count();
    assert!(ok && imported == 3, "{out}");

    // A Deployment spread over the nodes, reached through its Service from a pod.
    let (ok, out) = skiff.kubectl(&["apply", "-f", "-"], Some(WEB));
    assert!(ok, "{out}");
    let (ok, out) = skiff.kubectl(
        &["rollout", "status", "deployment/web", "--timeout=90s"],
        None,
    );
    assert!(
        ok,
        "{out}\nnode-1's log:\n{}",
        tail(&skiff.log("node-1"), 30)
    );
    let (_, placed) = skiff.kubectl(
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}",
        ],
        None,
    );
    let mut nodes: Vec<&str> = placed
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    nodes.sort_unstable();
    assert_eq!(nodes, ["node-1", "node-2", "node-3"], "{placed}");
    let backends: Vec<&str> = placed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let (_, cip) = skiff.kubectl(
        &["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"],
        None,
    );
    let script = format!(
        "nslookup web.default.svc.cluster.local; \
         for i in $(seq 30); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {cip} 80 | tail -n 1; done"
    );
    let client = format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "client"}},
            "spec": {{"nodeName": "node-1", "restartPolicy": "Never", "containers": [{{
                "name": "client", "image": "busybox:latest", "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", {}]}}]}}}}"#,
        serde_json::to_string(&script).expect("script")
    );
    let (ok, out) = skiff.kubectl(&["apply", "-f", "-"], Some(&client));
    assert!(ok, "{out}");
    skiff.wait("the client pod to finish", Duration::from_secs(90), || {
        let (_, phase) = skiff.kubectl(
            &["get", "pod", "client", "-o", "jsonpath={.status.phase}"],
            None,
        );
        phase == "Succeeded" || phase == "Failed"
    });
    let (_, answers) = skiff.kubectl(&["logs", "client"], None);
    assert!(
        answers.contains(&format!("Address: {cip}")),
        "the Service's name resolves to its ClusterIP:\n{answers}"
    );
    for b in &backends {
        assert!(
            answers.lines().any(|l| l.trim() == *b),
            "backend {b} answered through the Service:\n{answers}"
        );
    }

    // A node cut off goes NotReady; brought back, Ready.
    let (ok, out) = skiff.cluster("stop-node", &["node-3"]);
    assert!(ok, "{out}");
    let lab_link = Command::new("ip")
        .args(["-n", &format!("skiff-{name}"), "link", "show", "n3"])
        .output()
        .expect("ip link show");
    assert!(
        String::from_utf8_lossy(&lab_link.stdout).contains("state DOWN"),
        "{lab_link:?}"
    );
    skiff.wait("node-3 to be NotReady", Duration::from_secs(60), || {
        skiff.node_ready("node-3") != "True"
    });
    let (ok, out) = skiff.cluster("start-node", &["node-3"]);
    assert!(ok, "{out}");
    skiff.wait("node-3 to be Ready again", Duration::from_secs(60), || {
        skiff.node_ready("node-3") == "True"
    });
    assert!(
        skiff
            .log("node-3")
            .contains("reusing the node's credentials"),
        "the node came back with the certificate it had"
    );

    // Down: the machine as it was.
    let (ok, out) = skiff.cluster("down", &[]);
    assert!(ok, "{out}");
    let after = machine_state(&name, &dir);
    assert_eq!(before, after, "skiff cluster down left the machine changed");
}
