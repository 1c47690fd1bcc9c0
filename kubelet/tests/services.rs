//! The node as a whole: pods that the kubelet runs reach a Service through the node's
//! skiff-proxy, by its ClusterIP and by its name from the cluster DNS the proxy answers at
//! 10.96.0.10 (the kubelet's default `--cluster-dns`, the control plane's `kube-dns` Service),
//! with SRV and PTR records too.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;

/// skiff-proxy in the node's namespace, killed before the node goes.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    let log = std::fs::File::create(node.dir.path().join("proxy.log")).expect("proxy log");
    let _proxy = Proxy(
        node.netns
            .command(proxy_bin)
            .arg("--kubeconfig")
            .arg(node.kubeconfig())
            .args(["--node-name", &node.name, "--cluster-cidr", "10.244.0.0/16"])
            .args(["--min-sync-period", "100ms"])
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
            "cat /etc/resolv.conf; nslookup web.default.svc.cluster.local || exit 1; \
             nslookup -type=srv _http._tcp.web.default.svc.cluster.local || exit 1; \
             nslookup {cip} || exit 1; \
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
    assert!(out.contains("nameserver 10.96.0.10"), "{out}");
    assert!(out.contains(&format!("Address: {cip}")), "{out}");
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
}
