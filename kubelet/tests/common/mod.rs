//! Test harness: a network namespace per test holding a real `skiff server` and a real
//! `skiff-kubelet` (temporary root, run and log directories, a cgroup root of its own), driven
//! with the real kubectl. Dropping the [`Node`] kills every process of the namespace and removes
//! the containers, mounts, cgroups and the namespace itself.

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The address the node's interface (one end of a veth pair in its namespace) holds (inside its own namespace only).
pub const NODE_IP: &str = "172.31.250.2";

/// Fails the test with a clear message when a tool the test needs is missing.
pub fn require(tool: &str, probe: &[&str], hint: &str) {
    let ok = Command::new(tool)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "this test needs `{tool}` ({hint}); it is missing or does not run"
    );
}

/// The workspace's target directory of this build (`target/debug`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/debug")
        .to_path_buf()
}

pub fn binary(name: &str, build: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build it first with `{build}`",
        p.display()
    );
    p
}

/// A network namespace; dropping it kills what runs in it and deletes it.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "skt-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("running ip");
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns.name,
            "link",
            "add",
            "node0",
            "type",
            "veth",
            "peer",
            "name",
            "node0-peer",
        ]);
        ip(&["-n", &ns.name, "link", "set", "node0-peer", "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{NODE_IP}/24"),
            "dev",
            "node0",
        ]);
        ip(&["-n", &ns.name, "link", "set", "node0", "up"]);
        ns
    }

    /// A command that runs inside the namespace (network only: mounts stay the host's, so the
    /// kubelet's rootfs mounts outlive a kubelet process as they would on a real node).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        let path = format!("/var/run/netns/{}", self.name);
        // SAFETY: pre_exec runs in the forked child before exec; it only opens a file and
        // calls setns.
        unsafe {
            c.pre_exec(move || {
                let f = std::fs::File::open(&path)?;
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        c
    }

    fn pids(&self) -> Vec<i32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    fn kill_all(&self) {
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for p in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill_all();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// One node: its namespace, the API server and the kubelet.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub name: String,
    server: Option<Child>,
    kubelet: Option<Child>,
    /// Flags the kubelet gets beside the node's directories.
    kubelet_args: Vec<String>,
    pub cgroup_root: String,
    // Dropped last: the namespace's processes die before it goes.
    pub netns: Netns,
}

impl Node {
    /// A server and a kubelet in a fresh namespace, the node registered, a busybox image in
    /// the node's image directory.
    pub fn start() -> Node {
        Node::start_with(&[])
    }

    /// As [`Node::start`], the kubelet given `kubelet_args` too.
    pub fn start_with(kubelet_args: &[&str]) -> Node {
        Node::start_with_root(kubelet_args, |_| {})
    }

    /// As [`Node::start_with`], `prepare_root` given the (empty) root directory before the
    /// image is installed and the kubelet starts (e.g. to mount a small filesystem on it; the
    /// node's teardown unmounts everything under its directories).
    pub fn start_with_root(kubelet_args: &[&str], prepare_root: impl FnOnce(&Path)) -> Node {
        Node::start_prepared(kubelet_args, |node| prepare_root(&node.root_dir()))
    }

    /// As [`Node::start_with`], `prepare` given the node once its API server answers, before
    /// the image is installed and the kubelet starts (e.g. to give the kubelet a bootstrap
    /// kubeconfig through [`Node::kubelet_args_mut`]).
    pub fn start_prepared(kubelet_args: &[&str], prepare: impl FnOnce(&mut Node)) -> Node {
        Node::start_with_server(&[], kubelet_args, prepare)
    }

    /// As [`Node::start_prepared`], `skiff server` given `server_args` too.
    pub fn start_with_server(
        server_args: &[&str],
        kubelet_args: &[&str],
        prepare: impl FnOnce(&mut Node),
    ) -> Node {
        require("ip", &["-V"], "iproute2");
        require("kubectl", &["version", "--client"], "kubectl 1.32 on PATH");
        assert!(
            nix::unistd::geteuid().is_root(),
            "the kubelet tests run real containers and need root"
        );
        let netns = Netns::new();
        let dir = tempfile::tempdir().expect("temporary directory");
        let name = "node-1".to_string();
        let cgroup_root = format!("/{}", netns.name);
        let mut node = Node {
            dir,
            name,
            server: None,
            kubelet: None,
            kubelet_args: kubelet_args.iter().map(|a| a.to_string()).collect(),
            cgroup_root,
            netns,
        };
        node.start_server(server_args);
        std::fs::create_dir_all(node.root_dir()).expect("root directory");
        prepare(&mut node);
        install_busybox(&node.root_dir());
        node.start_kubelet();
        node.wait_for("the node to register", Duration::from_secs(30), |n| {
            n.kubectl_ok(&["get", "node", &n.name])
        });
        node
    }

    /// The flags the kubelet gets at its next start, beside the node's directories.
    pub fn kubelet_args_mut(&mut self) -> &mut Vec<String> {
        &mut self.kubelet_args
    }

    /// A kubeconfig for the node's API server holding a new bootstrap token (`skiff token
    /// create`) and no certificate, as a joining node is given.
    pub fn bootstrap_kubeconfig(&self) -> PathBuf {
        let skiff = binary("skiff", "cargo build -p skiff --bin skiff");
        let out = self
            .netns
            .command(skiff)
            .args(["token", "create", "--ttl", "1h", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .output()
            .expect("running skiff token create");
        assert!(
            out.status.success(),
            "skiff token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // `skiff token create` prints a join token, K10<CA hash>::<bootstrap token>; a
        // kubelet's bootstrap kubeconfig holds the bootstrap token alone.
        let join = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let token = join
            .split_once("::")
            .unwrap_or_else(|| panic!("not a join token: {join}"))
            .1
            .to_string();
        let raw = |path: &str| {
            self.kubectl(&[
                "config",
                "view",
                "--raw",
                "-o",
                &format!("jsonpath={{{path}}}"),
            ])
        };
        let server = raw(".clusters[0].cluster.server");
        let ca = raw(".clusters[0].cluster.certificate-authority-data");
        let path = self.dir.path().join("bootstrap.kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: kubelet-bootstrap\n  user:\n    token: {token}\ncontexts:\n- name: bootstrap\n  context:\n    cluster: skiff\n    user: kubelet-bootstrap\ncurrent-context: bootstrap\n"
            ),
        )
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    pub fn root_dir(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("data/admin.kubeconfig")
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(name))
            .expect("log file")
    }

    fn start_server(&mut self, extra: &[&str]) {
        let skiff = binary(
            "skiff",
            "cargo build -p skiff --bin skiff -p skiff-runtime --bin skiff-runc",
        );
        let child = self
            .netns
            .command(skiff)
            .args(["server", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(if extra.contains(&"--listen") {
                &[][..]
            } else {
                &["--listen", "127.0.0.1:0"][..]
            })
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file("server.log"))
            .spawn()
            .expect("starting skiff server");
        self.server = Some(child);
        self.wait_for("the API server", Duration::from_secs(60), |n| {
            n.kubeconfig().exists() && n.kubectl_ok(&["get", "--raw", "/readyz"])
        });
    }

    /// (Re)starts the kubelet with the node's directories.
    pub fn start_kubelet(&mut self) {
        // skiff-runc unless the node was given another --runtime-path.
        let runtime: Vec<std::ffi::OsString> =
            if self.kubelet_args.iter().any(|a| a == "--runtime-path") {
                vec![]
            } else {
                let runc = binary(
                    "skiff-runc",
                    "cargo build -p skiff --bin skiff -p skiff-runtime --bin skiff-runc",
                );
                vec!["--runtime-path".into(), runc.into()]
            };
        // The admin's kubeconfig unless the node was given its own (e.g. to bootstrap).
        let kubeconfig: Vec<std::ffi::OsString> =
            if self.kubelet_args.iter().any(|a| a == "--kubeconfig") {
                vec![]
            } else {
                vec!["--kubeconfig".into(), self.kubeconfig().into()]
            };
        // The default nodefs.available<10% would put the node under DiskPressure (and reject
        // every pod) on a shared build machine whose disk is nearly full; tests of eviction give
        // their own thresholds.
        let eviction: &[&str] = if self.kubelet_args.iter().any(|a| a == "--eviction-hard") {
            &[]
        } else {
            &[
                "--eviction-hard",
                "memory.available<100Mi,nodefs.available<1Gi",
            ]
        };
        let child = self
            .netns
            .command(env!("CARGO_BIN_EXE_skiff-kubelet"))
            .args(kubeconfig)
            .args(["--node-name", &self.name])
            .arg("--root-dir")
            .arg(self.root_dir())
            .arg("--run-dir")
            .arg(self.run_dir())
            .arg("--pod-logs-dir")
            .arg(self.logs_dir())
            .args(["--cgroup-root", &self.cgroup_root])
            .args(runtime)
            .arg("--shim-path")
            .arg(env!("CARGO_BIN_EXE_skiff-shim"))
            .args(["--volume-sync-seconds", "2"])
            .args(eviction)
            .args(&self.kubelet_args)
            .env("RUST_LOG", "info,skiff_kubelet=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file("kubelet.log"))
            .spawn()
            .expect("starting skiff-kubelet");
        self.kubelet = Some(child);
    }

    /// The running kubelet's pid.
    pub fn kubelet_pid(&self) -> Option<u32> {
        self.kubelet.as_ref().map(Child::id)
    }

    /// SIGKILL to the kubelet, as a crash would.
    pub fn kill9_kubelet(&mut self) {
        if let Some(mut c) = self.kubelet.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts the kubelet with `extra` added to its flags.
    pub fn restart_kubelet_with(&mut self, extra: &[&str]) {
        self.kill9_kubelet();
        self.kubelet_args
            .extend(extra.iter().map(|a| a.to_string()));
        self.start_kubelet();
    }

    pub fn kubelet_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kubelet.log")).unwrap_or_default()
    }

    /// kubectl with `args` in the node's namespace, as the cluster's admin.
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut command = self.netns.command("kubectl");
        command
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.dir.path());
        command
    }

    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = self
            .kubectl_command(args)
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
        child.wait_with_output().expect("kubectl output")
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> bool {
        self.kubectl_output(args, None).status.success()
    }

    /// Runs kubectl, asserting success; returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_in(args, None)
    }

    pub fn kubectl_in(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_output(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {} failed:\n{}\n{}\nkubelet log tail:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.kubelet_log(), 40)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl get … -o json`, parsed; `None` when it fails (e.g. NotFound).
    pub fn get_json(&self, args: &[&str]) -> Option<Value> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        let out = self.kubectl_output(&a, None);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("kubectl JSON"))
    }

    pub fn apply(&self, manifest: &str) {
        self.kubectl_in(&["apply", "-f", "-"], Some(manifest));
    }

    pub fn pod(&self, name: &str) -> Option<Value> {
        self.get_json(&["pod", name])
    }

    /// Polls `f` every 100 ms until it holds, failing with the kubelet's log after `limit`.
    pub fn wait_for(&self, what: &str, limit: Duration, mut f: impl FnMut(&Node) -> bool) {
        let deadline = Instant::now() + limit;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; kubelet log tail:\n{}",
                tail(&self.kubelet_log(), 60)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node's podCIDR's prefix (`10.244.N.`), once the control plane has given it one.
    pub fn pod_cidr_prefix(&self) -> String {
        let node = self.get_json(&["node", &self.name]).expect("the node");
        let cidr = node["spec"]["podCIDR"].as_str().expect("a podCIDR");
        let base = cidr.split('/').next().unwrap();
        format!("{}.", base.rsplit_once('.').unwrap().0)
    }

    /// Waits until the pod's JSON satisfies `f`; returns it.
    pub fn wait_pod(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(p) = self.pod(name) {
                if f(&p) {
                    return p;
                }
                last = p;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for pod {name}: {what}; last seen status:\n{}\nkubelet log tail:\n{}",
                serde_json::to_string_pretty(&last["status"]).unwrap_or_default(),
                tail(&self.kubelet_log(), 60)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The container state directories the kubelet has.
    pub fn container_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.run_dir().join("containers"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// The root filesystem of the running container `id`, as its init process sees it.
    pub fn container_root(&self, id: &str) -> PathBuf {
        let out = Command::new(binary("skiff-runc", ""))
            .arg("--root")
            .arg(self.run_dir().join("runtime"))
            .args(["state", id])
            .output()
            .expect("skiff-runc state");
        let state: Value = serde_json::from_slice(&out.stdout).expect("the container's state");
        PathBuf::from(format!("/proc/{}/root", state["pid"]))
    }

    /// The pod's cgroup directories left in any hierarchy.
    pub fn cgroup_leftovers(&self) -> Vec<PathBuf> {
        let mut left = vec![];
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let root = h.path().join(self.cgroup_root.trim_start_matches('/'));
            walk_dirs(&root, &mut left);
        }
        left.into_iter()
            .filter(|d| {
                d.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("pod"))
            })
            .collect()
    }

    /// The events' reasons about the pod `name`.
    pub fn event_reasons(&self, name: &str) -> Vec<String> {
        let events = self
            .get_json(&[
                "events",
                "--field-selector",
                &format!("involvedObject.name={name}"),
            ])
            .unwrap_or_default();
        events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["reason"].as_str().map(str::to_string))
            .collect()
    }
}

fn walk_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path());
                walk_dirs(&e.path(), out);
            }
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A failed test shows what the kubelet said (CI keeps nothing else).
        if std::thread::panicking() {
            eprintln!("--- kubelet log ---\n{}", tail(&self.kubelet_log(), 60));
        }
        self.kill9_kubelet();
        // Every process of the namespace: shims, host-network containers, the server.
        self.netns.kill_all();
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        // Containers in their own network namespace are not among the namespace's pids: ask the
        // runtime, then unmount what the kubelet mounted.
        // The node's own --runtime-path if it was given one (its containers' state is that
        // runtime's), else skiff-runc.
        let given = self
            .kubelet_args
            .iter()
            .position(|a| a == "--runtime-path")
            .and_then(|i| self.kubelet_args.get(i + 1))
            .map(PathBuf::from);
        let runtime = match given {
            Some(p) => Ok(p),
            None => std::panic::catch_unwind(|| binary("skiff-runc", "")),
        };
        if let Ok(runc) = runtime {
            for dir in self.container_dirs() {
                if let Some(id) = dir.file_name() {
                    let _ = Command::new(&runc)
                        .arg("--root")
                        .arg(self.run_dir().join("runtime"))
                        .args(["delete", "--force"])
                        .arg(id)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        // Every mount under the node's directories (roots, pinned namespaces, tmpfs volumes),
        // deepest first, until none is left.
        let base = self.dir.path().to_string_lossy().into_owned();
        for _ in 0..10 {
            let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
                .filter(|m| m.starts_with(&base))
                .collect();
            if points.is_empty() {
                break;
            }
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
        // The pods' tmpfs volumes and subPath binds.
        skiff_kubelet::volumes::cleanup_all(&self.root_dir());
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let root = h.path().join(self.cgroup_root.trim_start_matches('/'));
            if root.exists() {
                remove_cgroup_tree(&root);
            }
        }
    }
}

/// The warnings and errors of a log, then its last `lines` lines.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let problems: Vec<&str> = all
        .iter()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .copied()
        .collect();
    format!(
        "{}\n...\n{}",
        problems.join("\n"),
        all[all.len().saturating_sub(lines)..].join("\n")
    )
}

/// The busybox image (built from the host's static busybox by the image module) imported into
/// the node's image store as `busybox:latest`.
pub fn install_busybox(root_dir: &Path) {
    require("busybox", &["true"], "Debian package busybox-static");
    std::fs::create_dir_all(root_dir).expect("root directory");
    let archive = root_dir.join("busybox.tar");
    skiff_kubelet::image::busybox::BusyboxImage::new("busybox:latest")
        .write(&archive)
        .expect("building the busybox image");
    skiff_kubelet::image::ImageStore::open(root_dir)
        .and_then(|store| store.import(&archive))
        .expect("importing the busybox image");
    std::fs::remove_file(&archive).expect("removing the archive");
}

/// A busybox pod manifest (on the pod network unless `extra_spec` says `hostNetwork: true`)
/// running `script` with `sh -c`.
pub fn busybox_pod(name: &str, restart_policy: &str, script: &str, extra_spec: &str) -> String {
    let script = serde_json::to_string(script).expect("script");
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  restartPolicy: {restart_policy}
{extra_spec}  containers:
  - name: main
    image: busybox
    imagePullPolicy: Never
    command: ["sh", "-c", {script}]
"#
    )
}
