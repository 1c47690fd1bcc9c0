//! The node as a whole: pods that the kubelet runs reach a Service through the node's
//! skiff-proxy, by its ClusterIP and by its name from the cluster DNS the proxy answers at
//! 10.96.0.10 (the kubelet's default `--cluster-dns`, the control plane's `kube-dns` Service),
//! with SRV and PTR records too; a name outside the cluster is answered through the upstream
//! resolver the test runs on the node's loopback (unbound with one local name, never a real
//! resolver).

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;

/// A process in the node's namespace (skiff-proxy, unbound), killed before the node goes.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// unbound on the node's 127.0.0.1:5353, answering one name outside the cluster.
fn start_upstream(node: &Node) -> Process {
    require("unbound", &["-V"], "Debian package unbound");
    let dir = node.dir.path();
    let conf = dir.join("unbound.conf");
    let config = format!(
        r#"server:
    interface: 127.0.0.1
    port: 5353
    do-daemonize: no
    chroot: ""
    username: ""
    pidfile: ""
    directory: "{dir}"
    use-syslog: no
    logfile: ""
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    local-zone: "example.test." static
    local-data: "outside.example.test. 60 IN A 192.0.2.7"
"#,
        dir = dir.display()
    );
    std::fs::write(&conf, config).expect("unbound.conf");
    let log = std::fs::File::create(dir.join("unbound.log")).expect("unbound log");
    Process(
        node.netns
            .command("unbound")
            .args(["-d", "-c"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting unbound"),
    )
}

fn phase(p: &serde_json::Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or("")
}

#[test]
fn pods_reach_a_service_by_name_and_cluster_ip() {
    require("busybox", &["true"], "Debian package busybox-static");
    let node = Node::start();
    let proxy_bin = binary(
        "skiff-proxy",
        "cargo build -p skiff-proxy --bin skiff-proxy",
    );
    let _upstream = start_upstream(&node);
    let log = std::fs::File::create(node.dir.path().join("proxy.log")).expect("proxy log");
    let _proxy = Process(
        node.netns
            .command(proxy_bin)
            .arg("--kubeconfig")
            .arg(node.kubeconfig())
            .args(["--node-name", &node.name, "--cluster-cidr", "10.244.0.0/16"])
            .args(["--min-sync-period", "100ms"])
            .args(["--dns-upstream", "127.0.0.1:5353"])
            .args(["--healthz-bind-address", "127.0.0.1:10256"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting skiff-proxy"),
    );
    node.apply(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: main
    image: busybox
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 80}
"#,
    );
    node.wait_pod("web", "Running", Duration::from_secs(30), |p| {
        phase(p) == "Running"
    });
    let cip = node.kubectl(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let cip = cip.trim();
    node.apply(&busybox_pod(
        "client",
        "Never",
        &format!(
            // The Service's endpoint follows the web pod's readiness: retry until it is in place.
            // (nc, not wget: the static busybox's wget needs NSS, which the image lacks.)
            "env | grep _SERVICE_; cat /etc/resolv.conf; \
             nslookup web.default.svc.cluster.local || exit 1; \
             echo short:; nslookup web; echo end:; \
             nslookup -type=srv _http._tcp.web.default.svc.cluster.local || exit 1; \
             nslookup {cip} || exit 1; \
             nslookup outside.example.test || exit 1; \
             for i in $(seq 20); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {cip} 80 && exit 0; \
             sleep 0.5; done; exit 1"
        ),
        "",
    ));
    let client = node.wait_pod("client", "finished", Duration::from_secs(60), |p| {
        matches!(phase(p), "Succeeded" | "Failed")
    });
    let uid = client["metadata"]["uid"].as_str().expect("uid");
    let out = std::fs::read_to_string(
        node.logs_dir()
            .join(format!("default_client_{uid}/main/0.log")),
    )
    .unwrap_or_default();
    assert_eq!(
        phase(&client),
        "Succeeded",
        "client log:\n{out}\nproxy log:\n{}",
        tail(
            &std::fs::read_to_string(node.dir.path().join("proxy.log")).unwrap_or_default(),
            40
        )
    );
    // The service link variables, from the kubelet's watch of the Services.
    assert!(out.contains(&format!("WEB_SERVICE_HOST={cip}")), "{out}");
    assert!(out.contains("WEB_SERVICE_PORT_HTTP=80"), "{out}");
    assert!(out.contains("KUBERNETES_SERVICE_HOST=10.96.0.1"), "{out}");
    assert!(out.contains("nameserver 10.96.0.10"), "{out}");
    assert!(out.contains(&format!("Address: {cip}")), "{out}");
    // The short name, through the pod's search path (busybox's nslookup tries every search
    // domain and fails when any of them is NXDOMAIN: the answer is what counts; it applies no
    // search path to a name with a dot, so `web.default` cannot be checked with it).
    let short = out
        .split("short:")
        .nth(1)
        .and_then(|rest| rest.split("end:").next())
        .unwrap_or_default();
    assert!(
        short.contains(&format!("Address: {cip}")),
        "no address for the short name:\n{out}"
    );
    assert!(out.contains(" stdout F web\n"), "{out}");
    // SRV for the named port, and PTR for the ClusterIP, from inside the pod.
    assert!(
        out.contains("service = 0 100 80 web.default.svc.cluster.local"),
        "{out}"
    );
    assert!(
        out.contains("name = web.default.svc.cluster.local"),
        "{out}"
    );
    // An outside name, forwarded to the node's upstream.
    assert!(out.contains("Address: 192.0.2.7"), "{out}");
    // The DNS counters, the pod's queries among them, on the kube-dns Service's metrics port.
    require("curl", &["--version"], "Debian package curl");
    let metrics = node
        .netns
        .command("curl")
        .args(["-sS", "--max-time", "5", "http://10.96.0.10:9153/metrics"])
        .output()
        .expect("running curl");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    let udp_requests = metrics
        .lines()
        .find_map(|l| l.strip_prefix("skiff_dns_requests_total{proto=\"udp\"} "))
        .unwrap_or_else(|| panic!("no DNS counters on 10.96.0.10:9153:\n{metrics}"));
    assert_ne!(udp_requests, "0", "{metrics}");
}
