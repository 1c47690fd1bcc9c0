//! The proxy's test lab: a "node" network namespace (the lab itself: nothing in it routes out)
//! running the real `skiff server` and `skiff-proxy`, two "pod" namespaces on its `skiff0`
//! bridge with TCP and UDP listeners answering their own name, and an "outside" namespace on a
//! second link for NodePort traffic from another machine. The bridge and the pods are dual-stack
//! (IPv6 addresses without duplicate address detection, so they are usable at once) and the
//! server's Service network is too. Everything is made with `ip -n`/`ip netns exec` and removed
//! by Drop; nothing touches the root namespace.

#![allow(dead_code)]

pub mod sctp;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const NODE: &str = "node1";
pub const POD_A_IP: &str = "10.244.0.2";
pub const POD_B_IP: &str = "10.244.0.3";
/// A third pod's address, for [`Lab::add_pod`].
pub const POD_C_IP: &str = "10.244.0.4";
pub const BRIDGE_IP6: &str = "fd00:244::1";
pub const POD_A_IP6: &str = "fd00:244::2";
pub const POD_B_IP6: &str = "fd00:244::3";
/// The pod network's and the Service network's IPv6 ranges.
pub const CLUSTER_CIDR6: &str = "fd00:244::/64";
pub const SERVICE_CIDRS: &str = "10.96.0.0/12,fd00:10:96::/108";
pub const NODE_OUTSIDE_IP: &str = "192.168.200.1";
pub const OUTSIDE_IP: &str = "192.168.200.2";
pub const NODE_OUTSIDE_IP6: &str = "fd00:200::1";
pub const OUTSIDE_IP6: &str = "fd00:200::2";
pub const TCP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 5353;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Fails with a clear message when a tool is missing.
pub fn require(tool: &str, args: &[&str], package: &str) {
    let ok = Command::new(tool)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "this test needs `{tool}` (Debian package {package}) and root"
    );
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// A network namespace with `lo` up and no duplicate address detection (an address is
/// usable at once, not seconds later).
fn add_netns(ns: &str) {
    ip(&["netns", "add", ns]);
    for sysctl in [
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
    ] {
        run(Command::new("ip").args(["netns", "exec", ns, "sysctl", "-qw", sysctl]));
    }
    ip(&["-n", ns, "link", "set", "lo", "up"]);
}

/// Runs `f` on a thread inside network namespace `ns`; sockets it makes stay in `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// The host's own rules, to prove the tests never touch them.
pub fn host_rules() -> String {
    // A save's rules without its comments (they carry the time).
    let saved = |tool: &str| -> String {
        let save = Command::new(tool).output().expect(tool);
        String::from_utf8_lossy(&save.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let (saved, saved6) = (saved("iptables-save"), saved("ip6tables-save"));
    let nft = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .expect("nft");
    format!(
        "{saved}\n{saved6}\n{}",
        String::from_utf8_lossy(&nft.stdout)
    )
}

pub struct Lab {
    pub node: String,
    pub pod_a: String,
    pub pod_b: String,
    pub outside: String,
    /// Pods added by [`Lab::add_pod`].
    extra_pods: Vec<String>,
    pub dir: tempfile::TempDir,
    server: Option<Child>,
    proxy: Option<Child>,
    stop: Arc<AtomicBool>,
    host_rules_before: String,
    pub mode: &'static str,
}

impl Lab {
    /// Namespaces, links and listeners; then the API server. The proxy starts with
    /// [`Lab::start_proxy`].
    pub fn new(mode: &'static str) -> Lab {
        require("ip", &["-V"], "iproute2");
        require("iptables-save", &["-V"], "iptables");
        require("nft", &["-v"], "nftables");
        require("kubectl", &["version", "--client"], "kubectl 1.32 on PATH");
        let host_rules_before = host_rules();
        let id = format!(
            "sp{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let lab = Lab {
            node: format!("{id}n"),
            pod_a: format!("{id}a"),
            pod_b: format!("{id}b"),
            outside: format!("{id}o"),
            extra_pods: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
            server: None,
            proxy: None,
            stop: Arc::new(AtomicBool::new(false)),
            host_rules_before,
            mode,
        };
        for ns in [&lab.node, &lab.pod_a, &lab.pod_b, &lab.outside] {
            add_netns(ns);
        }
        let n = lab.node.as_str();
        ip(&["-n", n, "link", "add", "skiff0", "type", "bridge"]);
        ip(&["-n", n, "addr", "add", "10.244.0.1/24", "dev", "skiff0"]);
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{BRIDGE_IP6}/64"),
            "dev",
            "skiff0",
            "nodad",
        ]);
        ip(&["-n", n, "link", "set", "skiff0", "up"]);
        for (veth, pod, addr, addr6) in [
            ("va", &lab.pod_a, POD_A_IP, Some(POD_A_IP6)),
            ("vb", &lab.pod_b, POD_B_IP, Some(POD_B_IP6)),
        ] {
            lab.plug_pod(veth, pod, addr, addr6);
        }
        let o = lab.outside.as_str();
        ip(&[
            "-n", n, "link", "add", "vo", "type", "veth", "peer", "name", "eth0", "netns", o,
        ]);
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{NODE_OUTSIDE_IP}/24"),
            "dev",
            "vo",
        ]);
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{NODE_OUTSIDE_IP6}/64"),
            "dev",
            "vo",
            "nodad",
        ]);
        ip(&["-n", n, "link", "set", "vo", "up"]);
        ip(&[
            "-n",
            o,
            "addr",
            "add",
            &format!("{OUTSIDE_IP}/24"),
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            o,
            "addr",
            "add",
            &format!("{OUTSIDE_IP6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ip(&["-n", o, "link", "set", "eth0", "up"]);
        ip(&["-n", o, "route", "add", "default", "via", NODE_OUTSIDE_IP]);
        ip(&[
            "-n",
            o,
            "-6",
            "route",
            "add",
            "default",
            "via",
            NODE_OUTSIDE_IP6,
        ]);
        for sysctl in [
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.bridge.bridge-nf-call-iptables=1",
            "net.bridge.bridge-nf-call-ip6tables=1",
        ] {
            run(Command::new("ip").args(["netns", "exec", n, "sysctl", "-qw", sysctl]));
        }
        lab.listen(&lab.pod_a, "pod-a");
        lab.listen(&lab.pod_b, "pod-b");
        let mut lab = lab;
        lab.start_server();
        lab
    }

    /// Links pod namespace `pod` to the bridge through `veth`, at `addr` (and `addr6`).
    fn plug_pod(&self, veth: &str, pod: &str, addr: &str, addr6: Option<&str>) {
        let n = self.node.as_str();
        ip(&[
            "-n", n, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pod,
        ]);
        ip(&["-n", n, "link", "set", veth, "master", "skiff0", "up"]);
        // What the kubelet's hairpin-veth mode does: a pod reaching itself through a
        // Service is bridged back out of the port it came in on.
        ip(&[
            "-n",
            n,
            "link",
            "set",
            veth,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ]);
        ip(&[
            "-n",
            pod,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", pod, "link", "set", "eth0", "up"]);
        ip(&["-n", pod, "route", "add", "default", "via", "10.244.0.1"]);
        if let Some(addr6) = addr6 {
            ip(&[
                "-n",
                pod,
                "addr",
                "add",
                &format!("{addr6}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            ip(&[
                "-n", pod, "-6", "route", "add", "default", "via", BRIDGE_IP6,
            ]);
        }
    }

    /// Another pod on the bridge at `addr`, its listeners answering `name`; returns its
    /// namespace (removed with the lab).
    pub fn add_pod(&mut self, addr: &str, name: &'static str) -> String {
        let ns = format!("{}p{}", self.node, self.extra_pods.len());
        add_netns(&ns);
        self.extra_pods.push(ns.clone());
        self.plug_pod(&format!("vp{}", self.extra_pods.len()), &ns, addr, None);
        self.listen(&ns, name);
        ns
    }

    /// An SCTP endpoint in the pod `ns` on `port` answering `name` (see [`sctp`]), stopped with
    /// the lab.
    pub fn listen_sctp(&self, ns: &str, port: u16, name: &'static str) {
        sctp::answer(ns, port, name, self.stop.clone());
    }

    /// A TCP and a UDP listener in `ns`, each answering `name`, on both families (`::`, which
    /// takes IPv4 too).
    fn listen(&self, ns: &str, name: &'static str) {
        let (tcp, udp) = in_netns(ns, || {
            (
                TcpListener::bind(("::", TCP_PORT)).expect("tcp listener"),
                UdpSocket::bind(("::", UDP_PORT)).expect("udp socket"),
            )
        });
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            tcp.set_nonblocking(true).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(name.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            udp.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(name.as_bytes(), from);
                }
            }
        });
    }

    fn skiff_binary() -> PathBuf {
        let exe = std::env::current_exe().expect("current exe");
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .join("skiff");
        assert!(
            bin.exists(),
            "{} is missing: build it with `cargo build -p skiff --bin skiff`",
            bin.display()
        );
        bin
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("data/admin.kubeconfig")
    }

    fn start_server(&mut self) {
        let log = File::create(self.dir.path().join("server.log")).expect("server log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node])
            .arg(Self::skiff_binary())
            .arg("server")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--service-cidr",
                SERVICE_CIDRS,
                "--disable-scheduler",
                "--disable-controllers",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting skiff server");
        self.server = Some(child);
        eventually("skiff server ready", Duration::from_secs(60), || {
            self.kubeconfig().exists()
                && self
                    .kubectl_output(&["get", "--raw", "/readyz"])
                    .status
                    .success()
        });
    }

    /// Starts (or restarts) skiff-proxy in the node with `extra` flags and waits for /healthz.
    pub fn start_proxy(&mut self, extra: &[&str]) {
        self.stop_proxy();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("proxy.log"))
            .expect("proxy log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node])
            .arg(env!("CARGO_BIN_EXE_skiff-proxy"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args([
                "--node-name",
                NODE,
                "--mode",
                self.mode,
                "--cluster-cidr",
                "10.244.0.0/16",
                "--min-sync-period",
                "50ms",
                "--healthz-bind-address",
                "127.0.0.1:10256",
            ])
            .args(extra)
            .env("RUST_LOG", "skiff_proxy=debug,info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting skiff-proxy");
        self.proxy = Some(child);
        eventually("skiff-proxy healthy", Duration::from_secs(30), || {
            if let Some(status) = self
                .proxy
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("skiff-proxy exited with {status}:\n{}", self.proxy_log());
            }
            self.http(&self.node, "127.0.0.1:10256", "/healthz")
                .is_some_and(|(code, _)| code == 200)
        });
    }

    /// SIGKILLs the proxy, as a crash would.
    pub fn stop_proxy(&mut self) {
        if let Some(mut c) = self.proxy.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn proxy_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.node, "kubectl"])
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .env("HOME", self.dir.path());
        c
    }

    pub fn kubectl_output(&self, args: &[&str]) -> Output {
        self.kubectl_cmd(args).output().expect("kubectl")
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = run(&mut self.kubectl_cmd(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn apply(&self, yaml: &str) {
        let mut child = self
            .kubectl_cmd(&["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl apply");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply failed: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A selector-less Service; `extra_spec` is more YAML under `spec:` (indented 2).
    pub fn service(&self, name: &str, extra_spec: &str) -> String {
        self.apply(&format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n{extra_spec}"
        ));
        self.kubectl(&["get", "service", name, "-o", "jsonpath={.spec.clusterIP}"])
    }

    /// The Service's EndpointSlice with ports `tcp` (8080) and `udp` (5353) and these
    /// endpoints: (ip, ready, nodeName).
    pub fn endpoints(&self, service: &str, endpoints: &[(&str, bool, &str)]) {
        self.slice(service, "1", "IPv4", endpoints);
    }

    /// [`Lab::endpoints`] of IPv6 (the slice `<service>-6`).
    pub fn endpoints6(&self, service: &str, endpoints: &[(&str, bool, &str)]) {
        self.slice(service, "6", "IPv6", endpoints);
    }

    fn slice(&self, service: &str, suffix: &str, family: &str, endpoints: &[(&str, bool, &str)]) {
        let mut yaml = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-{suffix}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: {family}\nports:\n- name: tcp\n  port: {TCP_PORT}\n  protocol: TCP\n- name: udp\n  port: {UDP_PORT}\n  protocol: UDP\nendpoints:"
        );
        if endpoints.is_empty() {
            yaml.push_str(" []\n");
        } else {
            yaml.push('\n');
        }
        for (ip, ready, node) in endpoints {
            yaml.push_str(&format!(
                "- addresses: [\"{ip}\"]\n  conditions:\n    ready: {ready}\n  nodeName: {node}\n"
            ));
        }
        self.apply(&yaml);
    }

    /// One TCP connection from `ns` to `addr`: the name the endpoint answered, or the error.
    pub fn tcp(&self, ns: &str, addr: &str) -> Result<String, std::io::Error> {
        let addr: SocketAddr = addr.parse().expect("address");
        in_netns(ns, move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
    }

    /// One UDP exchange from a fresh socket in `ns`.
    pub fn udp(&self, ns: &str, addr: &str) -> Option<String> {
        let addr: SocketAddr = addr.parse().expect("address");
        in_netns(ns, move || {
            let any = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let s = UdpSocket::bind(any).ok()?;
            udp_exchange(&s, addr)
        })
    }

    /// `n` TCP connections; the names that answered, with counts.
    pub fn spread(
        &self,
        ns: &str,
        addr: &str,
        n: usize,
    ) -> std::collections::BTreeMap<String, usize> {
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..n {
            let name = self.tcp(ns, addr).unwrap_or_else(|e| format!("error: {e}"));
            *seen.entry(name).or_insert(0) += 1;
        }
        seen
    }

    /// GET `path` from `addr` inside `ns`: (status, body).
    pub fn http(&self, ns: &str, addr: &str, path: &str) -> Option<(u16, String)> {
        let addr: SocketAddr = addr.parse().ok()?;
        let path = path.to_string();
        in_netns(ns, move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            let code = out.split_whitespace().nth(1)?.parse().ok()?;
            let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
            Some((code, body))
        })
    }

    /// Waits until `n` connections in a row from `ns` to `addr` all reach exactly `names`.
    pub fn wait_spread(&self, ns: &str, addr: &str, names: &[&str], n: usize) {
        let want: std::collections::BTreeSet<String> =
            names.iter().map(|s| s.to_string()).collect();
        let mut last = Default::default();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            last = self.spread(ns, addr, n);
            if last
                .keys()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                == want
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{n} connections from {ns} to {addr} reached {last:?}, want exactly {names:?}\nproxy log:\n{}",
            self.proxy_log()
        );
    }

    pub fn iptables_save(&self) -> String {
        String::from_utf8_lossy(
            &run(Command::new("ip").args(["netns", "exec", &self.node, "iptables-save"])).stdout,
        )
        .into_owned()
    }

    pub fn ip6tables_save(&self) -> String {
        String::from_utf8_lossy(
            &run(Command::new("ip").args(["netns", "exec", &self.node, "ip6tables-save"])).stdout,
        )
        .into_owned()
    }

    pub fn nft_ruleset(&self) -> String {
        String::from_utf8_lossy(
            &run(Command::new("ip").args(["netns", "exec", &self.node, "nft", "list", "ruleset"]))
                .stdout,
        )
        .into_owned()
    }
}

/// A UDP request/answer on `s`, retried a few times (the first datagram may race a sync).
pub fn udp_exchange(s: &UdpSocket, addr: SocketAddr) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
    let mut buf = [0u8; 64];
    for _ in 0..3 {
        s.send_to(b"who", addr).ok()?;
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    None
}

pub fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.stop_proxy();
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.node, &self.pod_a, &self.pod_b, &self.outside]
            .into_iter()
            .chain(&self.extra_pods)
        {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if !std::thread::panicking() {
            assert_eq!(
                host_rules(),
                self.host_rules_before,
                "the host's own iptables/nftables rules changed"
            );
        }
    }
}
