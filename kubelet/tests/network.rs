//! The pod network end to end (root only), entirely inside network namespaces each test makes:
//! a "node" namespace in which `NodeNetwork` runs, an "external" one on the node's uplink, and
//! the pods' pinned namespaces. Nothing in the machine's root namespace changes (checked).
//!
//! Needs: iproute2 (`ip netns` for the test's own namespaces), iptables, busybox (ping),
//! util-linux (nsenter).

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use skiff_kubelet::network::ipam::Ipam;
use skiff_kubelet::network::veth::veth_name;
use skiff_kubelet::network::{
    HostPortMapping, HostPortProtocol, NetworkConfig, NodeNetwork, Sandbox, SandboxOptions,
};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const UPLINK_MTU: &str = "1400";

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is needed for this test: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn require_tools() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the network tests need root"
    );
    for (tool, package) in [
        ("ip", "iproute2"),
        ("iptables-restore", "iptables"),
        ("busybox", "busybox-static"),
        ("nsenter", "util-linux"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} missing: install the Debian package {package}"
        );
    }
    // Bridged pod-to-pod traffic through a DNAT needs the bridge to call iptables.
    assert!(
        Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists(),
        "the kernel module br_netfilter is not loaded (modprobe br_netfilter)"
    );
}

/// What the root namespace looks like: its links, its iptables rules, its forwarding sysctls.
fn root_snapshot() -> (String, String, String) {
    let links = run("ip", &["-d", "link"]);
    // Packet counters change with traffic; the rules must not.
    let rules = run("iptables-save", &[])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap_or(l).to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let sysctls = ["net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"]
        .map(|key| std::fs::read_to_string(Path::new("/proc/sys").join(key)).unwrap_or_default())
        .join(",");
    (links, rules, sysctls)
}

/// A named network namespace made for one test, deleted (with everything in it) on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(role: &str) -> Netns {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "sknet-{role}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A pod sandbox removed on drop, even when the test fails.
struct PodSandbox(Sandbox);

impl PodSandbox {
    fn new(run_dir: &Path, uid: &str) -> PodSandbox {
        let options = SandboxOptions {
            hostname: uid.to_string(),
            ..Default::default()
        };
        PodSandbox(Sandbox::create(run_dir, uid, &options).unwrap())
    }

    fn net(&self) -> PathBuf {
        self.0.net_path().unwrap()
    }
}

impl Drop for PodSandbox {
    fn drop(&mut self) {
        let _ = self.0.remove();
    }
}

/// Runs `work` on a thread inside the network namespace at `netns`.
fn in_netns<T: Send>(netns: &Path, work: impl FnOnce() -> T + Send) -> T {
    let file = std::fs::File::open(netns).unwrap();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                work()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs `future` on a current-thread runtime inside the network namespace at `netns`.
fn on_node<F: Future + Send>(netns: &Path, future: F) -> F::Output
where
    F::Output: Send,
{
    in_netns(netns, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    })
}

/// A node namespace with an uplink to an external namespace (MTU 1400, default route out).
fn node_with_uplink() -> (Netns, Netns) {
    let node = Netns::new("node");
    let external = Netns::new("ext");
    node.ip(&[
        "link",
        "add",
        "up0",
        "mtu",
        UPLINK_MTU,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "mtu",
        UPLINK_MTU,
        "netns",
        &external.name,
    ]);
    node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "up0"]);
    node.ip(&["link", "set", "up0", "up"]);
    node.ip(&["route", "add", "default", "via", &EXTERNAL_IP.to_string()]);
    external.ip(&["addr", "add", &format!("{EXTERNAL_IP}/24"), "dev", "eth0"]);
    external.ip(&["link", "set", "eth0", "up"]);
    (node, external)
}

fn config(state_dir: &Path) -> NetworkConfig {
    NetworkConfig::new("10.244.1.0/24".parse().unwrap(), state_dir.to_path_buf())
}

fn ping(from_netns: &Path, to: Ipv4Addr) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={}", from_netns.display()))
        .args(["busybox", "ping", "-c", "1", "-W", "2", &to.to_string()])
        .output()
        .unwrap()
        .status
        .success()
}

/// A listener bound in `netns`. A test binds a port once and accepts on it as often as it
/// needs: the server side closes first, and rebinding a port that still has TIME_WAIT sockets
/// has failed with EADDRINUSE on a loaded machine.
fn listen(netns: &Path, addr: SocketAddr) -> TcpListener {
    let listener = in_netns(netns, || TcpListener::bind(addr).unwrap());
    listener.set_nonblocking(true).unwrap();
    listener
}

/// Accepts one connection on `listener`, says hello and reports the peer address it saw.
fn serve_once(listener: &TcpListener) -> std::thread::JoinHandle<Option<SocketAddr>> {
    let listener = listener.try_clone().unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    stream.set_nonblocking(false).unwrap();
                    stream.write_all(b"hello").unwrap();
                    return Some(peer);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        None
    })
}

fn connect_from(netns: &Path, addr: SocketAddr) -> String {
    in_netns(netns, || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply
    })
}

fn pod_eth0(netns: &Path) -> String {
    run(
        "nsenter",
        &[
            &format!("--net={}", netns.display()),
            "ip",
            "-d",
            "addr",
            "show",
            "eth0",
        ],
    )
}

#[test]
fn pods_reach_each_other_the_outside_and_host_ports() {
    require_tools();
    let root_before = root_snapshot();
    let (node, external) = node_with_uplink();
    let dir = tempfile::tempdir().unwrap();
    let (state, run_dir) = (dir.path().join("state"), dir.path().join("run"));
    let a = PodSandbox::new(&run_dir, "pod-a");
    let b = PodSandbox::new(&run_dir, "pod-b");

    let (ip_a, ip_b) = on_node(&node.path(), async {
        let net = NodeNetwork::new(config(&state)).unwrap();
        net.ensure_bridge().await.unwrap();
        net.ensure_bridge().await.unwrap();
        let ip_a = net.attach("pod-a", &a.net()).await.unwrap();
        let ip_b = net.attach("pod-b", &b.net()).await.unwrap();
        assert_eq!(
            net.attach("pod-a", &a.net()).await.unwrap(),
            ip_a,
            "attach is idempotent"
        );
        let mapping = HostPortMapping {
            host_ip: None,
            host_port: 8080,
            protocol: HostPortProtocol::Tcp,
            pod_ip: ip_a,
            container_port: 80,
        };
        net.set_host_ports(std::slice::from_ref(&mapping))
            .await
            .unwrap();
        net.set_host_ports(&[mapping]).await.unwrap();
        (ip_a, ip_b)
    });
    assert_ne!(ip_a, ip_b);
    let eth0 = pod_eth0(&a.net());
    assert!(
        eth0.contains(&format!("inet {ip_a}/24")) && eth0.contains(&format!("mtu {UPLINK_MTU}")),
        "{eth0}"
    );
    let bridge = node.ip(&["-d", "link", "show", "skiff0"]);
    assert!(bridge.contains("0a:58:0a:f4:01:01"), "{bridge}");
    let port = node.ip(&["-d", "link", "show", &veth_name("pod-a")]);
    assert!(
        port.contains("master skiff0") && port.contains("hairpin on"),
        "{port}"
    );

    // Pod to pod and pod to bridge.
    assert!(ping(&a.net(), ip_b), "pod-a cannot ping pod-b");
    assert!(ping(&b.net(), ip_a), "pod-b cannot ping pod-a");
    assert!(
        ping(&a.net(), "10.244.1.1".parse().unwrap()),
        "pod-a cannot ping the bridge"
    );

    // Leaving the cluster CIDR, a pod's packets carry the node's address.
    let outside = serve_once(&listen(
        &external.path(),
        SocketAddr::from((EXTERNAL_IP, 9000)),
    ));
    assert_eq!(
        connect_from(&a.net(), SocketAddr::from((EXTERNAL_IP, 9000))),
        "hello"
    );
    assert_eq!(outside.join().unwrap().unwrap().ip(), NODE_IP);

    // The hostPort reaches pod-a from outside the node, with the client's own address.
    let pod_a = listen(&a.net(), SocketAddr::from((Ipv4Addr::UNSPECIFIED, 80)));
    let pod = serve_once(&pod_a);
    assert_eq!(
        connect_from(&external.path(), SocketAddr::from((NODE_IP, 8080))),
        "hello"
    );
    assert_eq!(pod.join().unwrap().unwrap().ip(), EXTERNAL_IP);
    // ... from a process on the node (the OUTPUT chain) ...
    let pod = serve_once(&pod_a);
    assert_eq!(
        connect_from(&node.path(), SocketAddr::from((NODE_IP, 8080))),
        "hello"
    );
    assert_eq!(pod.join().unwrap().unwrap().ip(), NODE_IP);
    // ... from pod-b on the same bridge (the reply un-DNATed thanks to br_netfilter) ...
    let pod = serve_once(&pod_a);
    assert_eq!(
        connect_from(&b.net(), SocketAddr::from((NODE_IP, 8080))),
        "hello"
    );
    assert_eq!(pod.join().unwrap().unwrap().ip(), ip_b);
    // ... and from pod-a itself (hairpin, masqueraded).
    let pod = serve_once(&pod_a);
    assert_eq!(
        connect_from(&a.net(), SocketAddr::from((NODE_IP, 8080))),
        "hello"
    );
    assert_eq!(
        pod.join().unwrap().unwrap().ip(),
        "10.244.1.1".parse::<Ipv4Addr>().unwrap()
    );

    // Each jump exists once however often the rules were written.
    let rules = run(
        "ip",
        &["netns", "exec", &node.name, "iptables-save", "-t", "nat"],
    );
    for jump in [
        "-A POSTROUTING -j SKIFF-KUBELET-POSTROUTING",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j SKIFF-HOSTPORTS",
        "-A OUTPUT -m addrtype --dst-type LOCAL -j SKIFF-HOSTPORTS",
        "-A POSTROUTING -j SKIFF-HOSTPORTS-MASQ",
    ] {
        assert_eq!(rules.matches(jump).count(), 1, "{jump} in\n{rules}");
    }
    on_node(&node.path(), async {
        let net = NodeNetwork::new(config(&state)).unwrap();
        net.set_host_ports(&[]).await.unwrap();
        net.detach("pod-a").await.unwrap();
        net.detach("pod-b").await.unwrap();
    });
    let rules = run(
        "ip",
        &["netns", "exec", &node.name, "iptables-save", "-t", "nat"],
    );
    assert!(!rules.contains("DNAT"), "{rules}");
    drop((a, b, node, external));
    assert_eq!(
        root_snapshot(),
        root_before,
        "the root network namespace changed"
    );
}

#[test]
fn restart_adopts_allocations_reconcile_frees_and_nothing_is_left() {
    require_tools();
    let root_before = root_snapshot();
    let (node, _external) = node_with_uplink();
    let dir = tempfile::tempdir().unwrap();
    let (state, run_dir) = (dir.path().join("state"), dir.path().join("run"));
    let a = PodSandbox::new(&run_dir, "pod-a");
    let b = PodSandbox::new(&run_dir, "pod-b");
    let c = PodSandbox::new(&run_dir, "pod-c");

    // The first kubelet attaches pod-a and dies without cleaning up.
    let ip_a = on_node(&node.path(), async {
        let net = NodeNetwork::new(config(&state)).unwrap();
        net.ensure_bridge().await.unwrap();
        net.attach("pod-a", &a.net()).await.unwrap()
    });
    // It died in the middle of attaching pod-b: the address claimed, a claim half-written,
    // no veth yet.
    let ipam = Ipam::open(&state.join("ipam"), "10.244.1.0/24".parse().unwrap()).unwrap();
    let (ip_b, _) = ipam.allocate("pod-b").unwrap();
    std::fs::write(state.join("ipam/.tmp-pod-c-7"), "pod-c\n").unwrap();
    // And pod-a's host veth was lost.
    node.ip(&["link", "del", &veth_name("pod-a")]);

    let ip_c = on_node(&node.path(), async {
        let net = NodeNetwork::new(config(&state)).unwrap();
        net.ensure_bridge().await.unwrap();
        assert_eq!(
            net.attach("pod-a", &a.net()).await.unwrap(),
            ip_a,
            "pod-a keeps its address"
        );
        assert_eq!(
            net.attach("pod-b", &b.net()).await.unwrap(),
            ip_b,
            "pod-b keeps its address"
        );
        let ip_c = net.attach("pod-c", &c.net()).await.unwrap();
        assert!(ip_c != ip_a && ip_c != ip_b, "no address is used twice");
        ip_c
    });
    assert!(
        ping(&a.net(), ip_c),
        "the repaired pod-a cannot reach pod-c"
    );
    assert!(ping(&b.net(), ip_a), "pod-b cannot reach pod-a");

    // pod-b was deleted while the kubelet was down: reconcile frees its address and veth, and
    // a veth nobody owns.
    node.ip(&[
        "link",
        "add",
        "skvdeadbeef000",
        "type",
        "veth",
        "peer",
        "name",
        "skvdeadbeef001",
    ]);
    on_node(&node.path(), async {
        let net = NodeNetwork::new(config(&state)).unwrap();
        let live = vec!["pod-a".to_string(), "pod-c".to_string()];
        assert_eq!(net.reconcile(&live).await.unwrap(), ["pod-b"]);
        let mut held: Vec<_> = net
            .allocations()
            .unwrap()
            .into_iter()
            .map(|(ip, _)| ip)
            .collect();
        held.sort();
        assert_eq!(held, [ip_a, ip_c]);
    });
    let links = node.ip(&["link"]);
    assert!(
        !links.contains(&veth_name("pod-b")) && !links.contains("skvdeadbeef"),
        "{links}"
    );
    assert!(!pod_eth0_exists(&b.net()), "pod-b's eth0 survived");
    assert!(ping(&a.net(), ip_c), "reconcile broke a live pod");

    // Detach and Sandbox::remove leave no veth, address, mount or file.
    on_node(&node.path(), async {
        let net = NodeNetwork::new(config(&state)).unwrap();
        for uid in ["pod-a", "pod-c", "pod-a"] {
            net.detach(uid).await.unwrap();
        }
        assert!(net.allocations().unwrap().is_empty());
    });
    for sandbox in [&a, &b, &c] {
        sandbox.0.remove().unwrap();
    }
    let links = node.ip(&["link"]);
    assert!(!links.contains("skv"), "veths left: {links}");
    assert_eq!(std::fs::read_dir(state.join("ipam")).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_dir(run_dir.join("sandboxes"))
            .unwrap()
            .count(),
        0
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(dir.path().to_str().unwrap()),
        "mounts left"
    );
    drop((a, b, c, node, _external));
    assert_eq!(
        root_snapshot(),
        root_before,
        "the root network namespace changed"
    );
}

fn pod_eth0_exists(netns: &Path) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "link", "show", "eth0"])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn routes_to_other_nodes_follow_the_node_list() {
    require_tools();
    let (node, _external) = node_with_uplink();
    node.ip(&["route", "add", "10.99.0.0/16", "via", "198.51.100.9"]);
    let dir = tempfile::tempdir().unwrap();
    let cidr = |s: &str| s.parse::<Ipv4Net>().unwrap();
    let ours = || -> Vec<String> {
        let routes = node.ip(&["route", "show", "proto", "233"]);
        routes.lines().map(|l| l.trim().to_string()).collect()
    };
    on_node(&node.path(), async {
        let net = NodeNetwork::new(config(dir.path())).unwrap();
        let wanted = [
            (cidr("10.244.1.0/24"), NODE_IP),
            (cidr("10.244.2.0/24"), "198.51.100.2".parse().unwrap()),
            (cidr("10.244.3.0/24"), "198.51.100.3".parse().unwrap()),
        ];
        net.sync_routes(&wanted).await.unwrap();
        net.sync_routes(&wanted).await.unwrap();
    });
    assert_eq!(
        ours(),
        [
            "10.244.2.0/24 via 198.51.100.2 dev up0",
            "10.244.3.0/24 via 198.51.100.3 dev up0"
        ]
    );
    on_node(&node.path(), async {
        let net = NodeNetwork::new(config(dir.path())).unwrap();
        net.sync_routes(&[(cidr("10.244.3.0/24"), "198.51.100.4".parse().unwrap())])
            .await
            .unwrap();
    });
    assert_eq!(ours(), ["10.244.3.0/24 via 198.51.100.4 dev up0"]);
    on_node(&node.path(), async {
        let net = NodeNetwork::new(config(dir.path())).unwrap();
        let unreachable = [(cidr("10.244.5.0/24"), "203.0.113.1".parse().unwrap())];
        let error = net.sync_routes(&unreachable).await.unwrap_err().to_string();
        assert!(error.contains("10.244.5.0/24 via 203.0.113.1"), "{error}");
        net.sync_routes(&[]).await.unwrap();
    });
    assert!(ours().is_empty());
    assert!(
        node.ip(&["route"])
            .contains("10.99.0.0/16 via 198.51.100.9"),
        "a foreign route was removed"
    );
}

/// The child process of `kill_9_at_any_point_recovers`: attaches and detaches one pod in a loop
/// until it is killed. Does nothing when run on its own.
#[test]
#[ignore = "run as a child process by kill_9_at_any_point_recovers"]
fn attach_detach_until_killed() {
    let Ok(spec) = std::env::var("SKNET_CRASH_CHILD") else {
        return;
    };
    let [node, state, pod] = <[&str; 3]>::try_from(spec.split('\n').collect::<Vec<_>>()).unwrap();
    on_node(Path::new(node), async {
        let net = NodeNetwork::new(config(Path::new(state))).unwrap();
        net.ensure_bridge().await.unwrap();
        loop {
            net.attach("pod-k", Path::new(pod)).await.unwrap();
            net.detach("pod-k").await.unwrap();
        }
    });
}

#[test]
fn kill_9_at_any_point_recovers() {
    require_tools();
    let (node, _external) = node_with_uplink();
    let dir = tempfile::tempdir().unwrap();
    let (state, run_dir) = (dir.path().join("state"), dir.path().join("run"));
    let stable = PodSandbox::new(&run_dir, "pod-stable");
    let killed = PodSandbox::new(&run_dir, "pod-k");
    let stable_ip = on_node(&node.path(), async {
        let net = NodeNetwork::new(config(&state)).unwrap();
        net.ensure_bridge().await.unwrap();
        net.attach("pod-stable", &stable.net()).await.unwrap()
    });
    let spec = format!(
        "{}\n{}\n{}",
        node.path().display(),
        state.display(),
        killed.net().display()
    );
    // The child needs ~60 ms to start (debug build) and ~30 ms per attach+detach round, so
    // these land in every phase of the loop.
    for delay_ms in (60..=200).step_by(20) {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "attach_detach_until_killed",
                "--ignored",
                "--quiet",
            ])
            .env("SKNET_CRASH_CHILD", &spec)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        let ip = on_node(&node.path(), async {
            let net = NodeNetwork::new(config(&state)).unwrap();
            net.attach("pod-k", &killed.net()).await.unwrap()
        });
        let allocations = Ipam::open(&state.join("ipam"), "10.244.1.0/24".parse().unwrap())
            .unwrap()
            .allocations()
            .unwrap();
        let mut owners: Vec<_> = allocations.iter().map(|(_, uid)| uid.as_str()).collect();
        owners.sort();
        assert_eq!(
            owners,
            ["pod-k", "pod-stable"],
            "after a kill at {delay_ms} ms"
        );
        assert_ne!(ip, stable_ip);
        assert!(
            ping(&killed.net(), stable_ip),
            "pod-k cut off after a kill at {delay_ms} ms"
        );
    }
    on_node(&node.path(), async {
        let net = NodeNetwork::new(config(&state)).unwrap();
        assert_eq!(net.reconcile(&[]).await.unwrap().len(), 2);
    });
    assert!(!node.ip(&["link"]).contains("skv"));
}

/// A real container (runc) joins the sandbox's namespaces by path: it sees the pod's hostname
/// and the pod's eth0 with its address.
#[test]
fn a_runc_container_joins_the_pod_sandbox() {
    require_tools();
    let runc = Command::new("runc").arg("--version").output();
    assert!(
        runc.is_ok_and(|o| o.status.success()),
        "runc missing: install the Debian package runc"
    );
    let (node, _external) = node_with_uplink();
    let dir = tempfile::tempdir().unwrap();
    let (state, run_dir) = (dir.path().join("state"), dir.path().join("run"));
    let pod = PodSandbox::new(&run_dir, "pod-runc");
    let ip = on_node(&node.path(), async {
        let net = NodeNetwork::new(config(&state)).unwrap();
        net.ensure_bridge().await.unwrap();
        net.attach("pod-runc", &pod.net()).await.unwrap()
    });

    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
    let busybox = run("sh", &["-c", "command -v busybox"]);
    std::fs::copy(busybox.trim(), bundle.join("rootfs/bin/busybox")).unwrap();
    run("runc", &["spec", "--bundle", bundle.to_str().unwrap()]);
    let config_path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    spec["process"]["terminal"] = false.into();
    // The runtime would set the joined UTS namespace's hostname to this one.
    spec.as_object_mut().unwrap().remove("hostname");
    spec["process"]["args"] = serde_json::json!([
        "/bin/busybox",
        "sh",
        "-c",
        "busybox hostname; busybox ip -4 addr show eth0"
    ]);
    let namespaces = spec["linux"]["namespaces"].as_array_mut().unwrap();
    namespaces.retain(|ns| !["network", "ipc", "uts"].contains(&ns["type"].as_str().unwrap()));
    namespaces.extend(
        serde_json::to_value(pod.0.oci_namespaces())
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .cloned(),
    );
    spec["linux"]["cgroupsPath"] = format!("/sknet-runc-{}", std::process::id()).into();
    std::fs::write(&config_path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let root = dir.path().join("runc-root");
    let id = format!("sknet-{}", std::process::id());
    let output = run(
        "runc",
        &[
            "--root",
            root.to_str().unwrap(),
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            &id,
        ],
    );
    assert!(output.starts_with("pod-runc\n"), "{output}");
    assert!(output.contains(&format!("inet {ip}/24")), "{output}");

    on_node(&node.path(), async {
        NodeNetwork::new(config(&state))
            .unwrap()
            .detach("pod-runc")
            .await
            .unwrap();
    });
}

/// A real `skiff server` (API only) inside the node namespace, killed on drop.
struct ApiServer {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl ApiServer {
    fn start_in(node: &Netns) -> ApiServer {
        let target = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        let skiff = target.join("skiff");
        assert!(
            skiff.is_file(),
            "{} is missing: build it with `cargo build -p skiff`",
            skiff.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &node.name])
            .arg(&skiff)
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--disable-scheduler",
                "--disable-controllers",
            ])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        ApiServer { child, dir }
    }

    /// A client for the server, once it answers (call inside the node namespace).
    async fn client(&self) -> kube::Client {
        let kubeconfig = self.dir.path().join("data/admin.kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(kc) = kube::config::Kubeconfig::read_from(&kubeconfig) {
                let options = kube::config::KubeConfigOptions::default();
                if let Ok(config) = kube::Config::from_custom_kubeconfig(kc, &options).await {
                    let client = kube::Client::try_from(config).unwrap();
                    if client.apiserver_version().await.is_ok() {
                        return client;
                    }
                }
            }
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "skiff server did not come up:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn routes_follow_the_nodes_in_the_api() {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{DeleteParams, Patch, PatchParams, PostParams};

    require_tools();
    let (node, _external) = node_with_uplink();
    let server = ApiServer::start_in(&node);
    let dir = tempfile::tempdir().unwrap();
    let ours = || -> Vec<String> {
        let routes = node.ip(&["route", "show", "proto", "233"]);
        routes.lines().map(|l| l.trim().to_string()).collect()
    };
    on_node(&node.path(), async {
        let client = server.client().await;
        let net = NodeNetwork::new(config(dir.path())).unwrap();
        let nodes: kube::Api<Node> = kube::Api::all(client.clone());
        let add_node = |name: &'static str, cidr: Option<&'static str>, ip: &'static str| {
            let nodes = nodes.clone();
            async move {
                let mut spec = serde_json::json!({"metadata": {"name": name}});
                if let Some(cidr) = cidr {
                    spec["spec"] = serde_json::json!({"podCIDR": cidr, "podCIDRs": [cidr]});
                }
                nodes
                    .create(
                        &PostParams::default(),
                        &serde_json::from_value(spec).unwrap(),
                    )
                    .await
                    .unwrap();
                let status = serde_json::json!({"status": {"addresses": [{"type": "InternalIP", "address": ip}]}});
                nodes
                    .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .unwrap();
            }
        };
        let wait_for = |expected: Vec<&'static str>| {
            let ours = &ours;
            async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                while ours() != expected {
                    assert!(
                        Instant::now() < deadline,
                        "routes {:?}, expected {expected:?}",
                        ours()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let keeper = skiff_kubelet::network::node_routes::keep_routes(client, "me", &net);
        let driver = async {
            add_node("me", Some("10.244.1.0/24"), "198.51.100.1").await;
            add_node("two", Some("10.244.2.0/24"), "198.51.100.2").await;
            wait_for(vec!["10.244.2.0/24 via 198.51.100.2 dev up0"]).await;
            // A node whose podCIDR comes later gets its route then.
            add_node("three", None, "198.51.100.3").await;
            let cidr = serde_json::json!({"spec": {"podCIDR": "10.244.3.0/24", "podCIDRs": ["10.244.3.0/24"]}});
            nodes
                .patch("three", &PatchParams::default(), &Patch::Merge(&cidr))
                .await
                .unwrap();
            wait_for(vec![
                "10.244.2.0/24 via 198.51.100.2 dev up0",
                "10.244.3.0/24 via 198.51.100.3 dev up0",
            ])
            .await;
            // A node that goes away takes its route with it.
            nodes.delete("two", &DeleteParams::default()).await.unwrap();
            wait_for(vec!["10.244.3.0/24 via 198.51.100.3 dev up0"]).await;
        };
        tokio::select! {
            () = keeper => panic!("keep_routes ended"),
            () = driver => {}
        }
    });
}

/// Two nodes on one link: a pod on each reaches the other through the host-gw routes, and
/// keeps its own address on the way (no masquerade inside the cluster CIDR).
#[test]
fn pods_on_two_nodes_reach_each_other_through_the_routes() {
    require_tools();
    let (node1, node2) = (Netns::new("node1"), Netns::new("node2"));
    node1.ip(&[
        "link",
        "add",
        "lab0",
        "type",
        "veth",
        "peer",
        "name",
        "lab0",
        "netns",
        &node2.name,
    ]);
    for (node, ip) in [(&node1, "192.0.2.1/24"), (&node2, "192.0.2.2/24")] {
        node.ip(&["addr", "add", ip, "dev", "lab0"]);
        node.ip(&["link", "set", "lab0", "up"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let pod1 = PodSandbox::new(&run_dir, "pod-on-1");
    let pod2 = PodSandbox::new(&run_dir, "pod-on-2");
    let mut ips = Vec::new();
    for (node, pod, cidr, other) in [
        (
            &node1,
            &pod1,
            "10.244.1.0/24",
            ("10.244.2.0/24", "192.0.2.2"),
        ),
        (
            &node2,
            &pod2,
            "10.244.2.0/24",
            ("10.244.1.0/24", "192.0.2.1"),
        ),
    ] {
        let state = dir.path().join(&node.name);
        ips.push(on_node(&node.path(), async {
            let net = NodeNetwork::new(NetworkConfig::new(cidr.parse().unwrap(), state)).unwrap();
            net.ensure_bridge().await.unwrap();
            let ip = net
                .attach(
                    &pod.0.dir().file_name().unwrap().to_string_lossy(),
                    &pod.net(),
                )
                .await
                .unwrap();
            net.sync_routes(&[(other.0.parse().unwrap(), other.1.parse().unwrap())])
                .await
                .unwrap();
            ip
        }));
    }
    assert!(ping(&pod1.net(), ips[1]), "pod-on-1 cannot ping pod-on-2");
    let server = serve_once(&listen(
        &pod2.net(),
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 7000)),
    ));
    assert_eq!(
        connect_from(&pod1.net(), SocketAddr::from((ips[1], 7000))),
        "hello"
    );
    assert_eq!(server.join().unwrap().unwrap().ip(), ips[0]);
}
