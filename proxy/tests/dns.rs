//! Cluster DNS against the real thing, inside a network namespace this test creates: a real
//! `skiff server`, Services and EndpointSlices written with kubectl, the DNS server fed by kube-rs
//! reflectors on that API, `unbound` on the namespace's loopback as the upstream resolver, and
//! `dig` as the client. Nothing leaves the namespace.
//!
//! Needs root, `ip` (iproute2), `kubectl`, `dig` (bind9-dnsutils), `unbound`, and the control
//! plane binary (`cargo build -p skiff --bin skiff`).

mod dns_support;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dns_support::{Netns, Process, Unbound, require, start_unbound, text};
use skiff_proxy::dns::{DnsConfig, DnsServer};

/// The cluster DNS address inside the namespace, as on a node.
const DNS_ADDR: &str = "10.96.0.10";
/// Where the test's unbound listens inside the namespace.
const UPSTREAM_ADDR: &str = "127.0.0.53";

/// `target/debug/skiff`, next to the directory holding this test binary.
fn skiff_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("skiff");
    assert!(
        bin.exists(),
        "this test needs the control plane binary at {} (cargo build -p skiff --bin skiff)",
        bin.display()
    );
    bin
}

/// The API server, unbound and the DNS server, all in one namespace.
struct Lab {
    dir: tempfile::TempDir,
    // Dropped in order: the DNS thread stops before the processes and the namespace go.
    dns: Option<DnsThread>,
    _unbound: Process,
    _server: Process,
    ns: Netns,
}

struct DnsThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    metrics: mpsc::Receiver<String>,
}

impl Drop for DnsThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Lab {
    fn start() -> Self {
        require("kubectl", &["version", "--client"], "kubectl 1.32 on PATH");
        let skiff = skiff_binary();
        let ns = Netns::new("skiff-dns", &[DNS_ADDR]);
        let dir = tempfile::tempdir().expect("temporary directory");

        let log = File::create(dir.path().join("server.log")).expect("server log");
        let server = Process(
            ns.cmd(skiff.to_str().expect("UTF-8 path"))
                .args(["server", "--data-dir"])
                .arg(dir.path().join("data"))
                .args([
                    "--listen",
                    "127.0.0.1:0",
                    "--disable-scheduler",
                    "--disable-controllers",
                ])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting skiff server"),
        );
        let upstream = Unbound {
            addr: UPSTREAM_ADDR,
            threads: 1,
            local_data: &upstream_zone(),
            probe: "www.example.test",
        };
        let unbound = start_unbound(&ns, dir.path(), upstream);

        let mut lab = Lab {
            dir,
            dns: None,
            _unbound: unbound,
            _server: server,
            ns,
        };
        lab.wait_ready();
        lab.dns = Some(lab.start_dns());
        lab
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("data").join("admin.kubeconfig")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.kubeconfig().exists()
                && self
                    .kubectl_output(&["get", "--raw", "/readyz"], None)
                    .status
                    .success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "skiff server did not become ready; log:\n{}",
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The DNS server on its own thread inside the namespace: a current-thread runtime, so every
    /// socket it opens (listeners, API connections, upstream queries) is in the namespace.
    fn start_dns(&self) -> DnsThread {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (metrics_tx, metrics_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let kubeconfig = self.kubeconfig();
        let thread = self.ns.thread(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let config = DnsConfig {
                    listen: format!("{DNS_ADDR}:53").parse().unwrap(),
                    cluster_domain: "cluster.local".into(),
                    ttl: 5,
                    upstreams: vec![format!("{UPSTREAM_ADDR}:53").parse().unwrap()],
                    upstream_timeout: Duration::from_secs(1),
                    cache_entries: 100,
                };
                let dns = DnsServer::new(config).expect("dns server");
                let listening = dns.bind().await.expect("binding the DNS server");
                let kubeconfig =
                    kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
                let options = kube::config::KubeConfigOptions::default();
                let client_config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .expect("client config");
                let client = kube::Client::try_from(client_config).expect("kube client");
                ready_tx.send(()).expect("ready");
                tokio::select! {
                    served = listening.run() => panic!("DNS server stopped: {served:?}"),
                    followed = dns.follow(client) => panic!("DNS watch stopped: {followed:?}"),
                    _ = stop_rx => {}
                }
                let _ = metrics_tx.send(dns.metrics().render());
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("DNS server did not start");
        DnsThread {
            stop: Some(stop_tx),
            thread: Some(thread),
            metrics: metrics_rx,
        }
    }

    fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.ns.cmd("kubectl");
        cmd.args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("running kubectl");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).expect("writing stdin");
        }
        drop(input);
        child.wait_with_output().expect("kubectl output")
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_output(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {} failed:\n{}\n{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn dig(&self, args: &[&str]) -> String {
        let out = self
            .ns
            .cmd("dig")
            .args(["+time=2", "+tries=1"])
            .args(args)
            .output()
            .expect("running dig");
        text(&out.stdout)
    }

    /// `dig @DNS_ADDR +short …`, lines sorted.
    fn short(&self, args: &[&str]) -> Vec<String> {
        let mut lines: Vec<String> = self
            .dig(&[&[&format!("@{DNS_ADDR}"), "+short"][..], args].concat())
            .lines()
            .map(str::to_string)
            .filter(|l| !l.starts_with(';'))
            .collect();
        lines.sort();
        lines
    }

    /// Polls `short(args)` until `want` returns true, for up to `within`.
    fn eventually(
        &self,
        args: &[&str],
        within: Duration,
        want: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.short(args);
            if want(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "dig {args:?} still answers {got:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn metrics(&mut self) -> String {
        let mut dns = self.dns.take().expect("dns thread");
        if let Some(stop) = dns.stop.take() {
            let _ = stop.send(());
        }
        dns.metrics
            .recv_timeout(Duration::from_secs(10))
            .expect("metrics")
    }
}

/// The upstream's names: one address, no name at all (NXDOMAIN with the zone's SOA), and an
/// answer too large for the 1232 bytes offered over UDP.
fn upstream_zone() -> String {
    let mut zone = [
        r#"local-zone: "example.test." static"#,
        r#"local-data: "example.test. 3600 IN SOA ns.example.test. admin.example.test. 1 3600 600 86400 30""#,
        r#"local-data: "www.example.test. 60 IN A 192.0.2.80""#,
    ]
    .map(|line| format!("    {line}\n"))
    .concat();
    for i in 0..16 {
        let txt = format!("{i:02}{}", "x".repeat(180));
        zone += &format!("    local-data: 'big.example.test. 60 IN TXT \"{txt}\"'\n");
    }
    zone
}

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  namespace: default
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- addresses: [10.244.1.5]
  hostname: db-0
  conditions: {ready: true}
- addresses: [10.244.2.6]
  hostname: db-1
  conditions: {ready: true}
- addresses: [10.244.3.7]
  hostname: db-2
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: payments, namespace: default}
spec:
  type: ExternalName
  externalName: www.example.test
"#;

#[test]
fn cluster_dns_answers_from_the_api_and_forwards_the_rest() {
    let mut lab = Lab::start();
    lab.kubectl(&["apply", "-f", "-"], Some(SERVICES));
    let cluster_ip = lab.kubectl(
        &["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"],
        None,
    );
    assert!(
        cluster_ip.starts_with("10."),
        "web has no ClusterIP: {cluster_ip:?}"
    );
    let wait = Duration::from_secs(10);

    // A ClusterIP Service by its full name, over UDP and TCP.
    let web = "web.default.svc.cluster.local";
    lab.eventually(&[web, "A"], wait, |a| a == [cluster_ip.as_str()]);
    assert_eq!(lab.short(&["+tcp", web, "A"]), [cluster_ip.as_str()]);
    assert_eq!(
        lab.short(&["_http._tcp.web.default.svc.cluster.local", "SRV"]),
        [format!("0 100 80 {web}.")]
    );
    assert_eq!(lab.short(&["-x", &cluster_ip]), [format!("{web}.")]);

    // A headless Service: every ready endpoint, per-endpoint names, SRV targets, PTR.
    let db = "db.default.svc.cluster.local";
    lab.eventually(&[db, "A"], wait, |a| a == ["10.244.1.5", "10.244.2.6"]);
    assert_eq!(
        lab.short(&["db-0.db.default.svc.cluster.local", "A"]),
        ["10.244.1.5"]
    );
    assert_eq!(
        lab.short(&["_pg._tcp.db.default.svc.cluster.local", "SRV"]),
        [
            "0 100 5432 db-0.db.default.svc.cluster.local.",
            "0 100 5432 db-1.db.default.svc.cluster.local."
        ]
    );
    assert_eq!(
        lab.short(&["-x", "10.244.2.6"]),
        ["db-1.db.default.svc.cluster.local."]
    );

    // ExternalName: the CNAME, and the target's address through the upstream.
    assert_eq!(
        lab.short(&["payments.default.svc.cluster.local", "A"]),
        ["192.0.2.80", "www.example.test."]
    );

    // Outside names through the upstream: positive, negative, and an answer too large for UDP
    // (fetched upstream over TCP after the truncated UDP answer).
    assert_eq!(lab.short(&["www.example.test", "A"]), ["192.0.2.80"]);
    let nx = lab.dig(&[&format!("@{DNS_ADDR}"), "nothing.example.test", "A"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    let big = lab.short(&["+tcp", "big.example.test", "TXT"]);
    assert_eq!(big.len(), 16, "{big:?}");

    // Unknown cluster names, and an ndots:5 search-path miss: NXDOMAIN with the zone's SOA.
    for name in [
        "nothere.default.svc.cluster.local",
        "www.example.test.default.svc.cluster.local",
    ] {
        let out = lab.dig(&[&format!("@{DNS_ADDR}"), name, "A"]);
        assert!(out.contains("status: NXDOMAIN"), "{out}");
        assert!(
            out.lines().any(|l| l.starts_with("cluster.local.")
                && l.contains("\tSOA\t")
                && l.contains("ns.dns.cluster.local.")),
            "no SOA in the authority section:\n{out}"
        );
        assert!(out.contains(" aa"), "not authoritative:\n{out}");
    }

    // Malformed requests are answered or dropped; the server keeps answering.
    malformed_requests(&lab);
    // A class other than IN is refused; an EDNS version above 0 gets BADVERS.
    let dns = format!("@{DNS_ADDR}");
    let chaos = lab.dig(&[&dns, "version.bind", "TXT", "CH"]);
    assert!(chaos.contains("status: REFUSED"), "{chaos}");
    let future_edns = lab.dig(&[&dns, "+edns=1", "+noednsnegotiation", web, "A"]);
    assert!(future_edns.contains("status: BADVERS"), "{future_edns}");
    assert_eq!(lab.short(&[web, "A"]), [cluster_ip.as_str()]);

    // Byte-identical requests (the second answered from the response cache) get the same
    // answer under their own ID.
    let [first, second] = raw_queries(&lab, web, [0x0101, 0x0202]);
    assert_eq!(first[..2], [0x01, 0x01]);
    assert_eq!(second[..2], [0x02, 0x02]);
    assert_eq!(first[2..], second[2..]);
    assert_eq!(rcode(&first), 0, "{first:?}");
    assert_eq!(answer_count(&first), 1, "{first:?}");

    // A deleted Service stops resolving.
    lab.kubectl(&["delete", "service", "web"], None);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(3);
    while !lab
        .dig(&[&format!("@{DNS_ADDR}"), web, "A"])
        .contains("status: NXDOMAIN")
    {
        assert!(
            Instant::now() < deadline,
            "{web} still resolves 3 s after the delete"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "deleted Service stopped resolving after {:?}",
        start.elapsed()
    );
    // Also for the bytes whose answer was cached before the delete.
    let [after] = raw_queries(&lab, web, [0x0303]);
    assert_eq!(
        rcode(&after),
        3,
        "a cached answer outlived its Service: {after:?}"
    );

    let metrics = lab.metrics();
    for prefix in [
        "skiff_dns_requests_total{proto=\"udp\"} ",
        "skiff_dns_requests_total{proto=\"tcp\"} ",
        "skiff_dns_responses_total{rcode=\"NXDOMAIN\"} ",
        "skiff_dns_responses_total{rcode=\"FORMERR\"} ",
        "skiff_dns_responses_total{rcode=\"REFUSED\"} ",
        "skiff_dns_answers_total{source=\"upstream\"} ",
        "skiff_dns_request_duration_seconds_count ",
    ] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} missing:\n{metrics}"));
        assert_ne!(line.trim_start_matches(prefix), "0", "{line}");
    }
}

/// Sends an A query for `name` (RD, no EDNS) once per ID, one after the other, and returns
/// the responses.
fn raw_queries<const N: usize>(lab: &Lab, name: &str, ids: [u16; N]) -> [Vec<u8>; N] {
    let mut question = Vec::new();
    for label in name.split('.') {
        question.push(label.len() as u8);
        question.extend_from_slice(label.as_bytes());
    }
    question.extend_from_slice(&[0, 0, 1, 0, 1]);
    let (tx, rx) = mpsc::channel();
    lab.ns.thread(move || {
        let dns: SocketAddr = format!("{DNS_ADDR}:53").parse().unwrap();
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let responses = ids.map(|id| {
            let mut request = id.to_be_bytes().to_vec();
            request.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
            request.extend_from_slice(&question);
            socket.send_to(&request, dns).unwrap();
            let mut buf = [0u8; 4096];
            let len = socket.recv(&mut buf).expect("an answer to a raw query");
            buf[..len].to_vec()
        });
        tx.send(responses).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("raw queries answered")
}

fn rcode(response: &[u8]) -> u8 {
    response[3] & 0x0f
}

fn answer_count(response: &[u8]) -> u16 {
    u16::from_be_bytes([response[6], response[7]])
}

/// Garbage, a header promising a question it does not carry, two questions, an oversized
/// datagram, and a TCP length prefix with nothing behind it.
fn malformed_requests(lab: &Lab) {
    let (tx, rx) = mpsc::channel();
    lab.ns.thread(move || {
        let dns: SocketAddr = format!("{DNS_ADDR}:53").parse().unwrap();
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 4096];

        socket.send_to(&[1, 2, 3, 4, 5], dns).unwrap();
        socket.send_to(&vec![0xab; 4000], dns).unwrap();
        // id 0x1234, RD, qdcount 1, and no question.
        socket
            .send_to(&[0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0], dns)
            .unwrap();
        let mut formerr = false;
        while let Ok(len) = socket.recv(&mut buf) {
            if len >= 4 && buf[0] == 0x12 && buf[1] == 0x34 {
                formerr = buf[3] & 0x0f == 1;
            }
        }
        // Two questions in one request.
        let mut two = vec![0x56, 0x78, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0];
        for _ in 0..2 {
            two.extend_from_slice(&[3, b'w', b'e', b'b', 0, 0, 1, 0, 1]);
        }
        socket.send_to(&two, dns).unwrap();
        let two_formerr = socket
            .recv(&mut buf)
            .is_ok_and(|len| len >= 4 && buf[0] == 0x56 && buf[3] & 0x0f == 1);

        let mut tcp = TcpStream::connect(dns).unwrap();
        tcp.write_all(&[0xff, 0xff, 1, 2, 3]).unwrap();
        drop(tcp);
        let mut tcp = TcpStream::connect(dns).unwrap();
        tcp.write_all(&[0, 2, 0, 0]).unwrap();
        tcp.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let _ = tcp.read(&mut buf);
        tx.send((formerr, two_formerr)).unwrap();
    });
    let (formerr, two_formerr) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("malformed requests sent");
    assert!(formerr, "a header without its question is answered FORMERR");
    assert!(
        two_formerr,
        "two questions in one request are answered FORMERR"
    );
}
