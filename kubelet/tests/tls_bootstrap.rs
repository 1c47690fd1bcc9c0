//! The kubelet's TLS bootstrap and certificate rotation against a real `skiff server`: a node
//! given only a bootstrap token joins with a node client certificate it requested through a CSR,
//! and renews that certificate before it expires without restarting its pods.

mod common;

use std::time::Duration;

use common::{Node, busybox_pod};
use serde_json::Value;

/// The kubelet's own kubeconfig (written by the bootstrap) in the node's directory.
fn kubelet_kubeconfig(node: &Node) -> std::path::PathBuf {
    node.dir.path().join("kubelet.kubeconfig")
}

/// A node whose kubelet has a bootstrap kubeconfig and a `--kubeconfig` that does not exist yet.
fn bootstrapped_node(server_args: &[&str], kubelet_args: &[&str]) -> Node {
    // Certificates are the point here, not the disk: a busy test machine's disk must not
    // reject the pod for DiskPressure.
    let mut args = vec![
        "--eviction-hard",
        "memory.available<100Mi,nodefs.available<1Gi",
    ];
    args.extend_from_slice(kubelet_args);
    Node::start_with_server(server_args, &args, |n| {
        let bootstrap = n.bootstrap_kubeconfig();
        let kubeconfig = kubelet_kubeconfig(n);
        assert!(!kubeconfig.exists());
        n.kubelet_args_mut().extend([
            "--kubeconfig".to_string(),
            kubeconfig.display().to_string(),
            "--bootstrap-kubeconfig".to_string(),
            bootstrap.display().to_string(),
        ]);
    })
}

fn node_ready(n: &Node) -> bool {
    n.get_json(&["node", &n.name]).is_some_and(|node| {
        node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// The node client CSRs, oldest first.
fn node_client_csrs(n: &Node) -> Vec<Value> {
    let list = n.get_json(&["csr"]).expect("listing CSRs");
    let mut items: Vec<Value> = list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet")
        .collect();
    items.sort_by_key(|c| {
        c["metadata"]["creationTimestamp"]
            .as_str()
            .map(str::to_string)
    });
    items
}

fn issued(csr: &Value) -> bool {
    csr["status"]["certificate"]
        .as_str()
        .is_some_and(|c| !c.is_empty())
}

/// `kubectl auth whoami` with the kubelet's kubeconfig.
fn kubelet_whoami(n: &Node) -> String {
    let out = n
        .netns
        .command("kubectl")
        .args(["auth", "whoami", "-o", "json"])
        .env("KUBECONFIG", kubelet_kubeconfig(n))
        .env("HOME", n.dir.path())
        .output()
        .expect("running kubectl");
    assert!(
        out.status.success(),
        "kubectl auth whoami as the kubelet: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_kubelet_with_only_a_bootstrap_token_joins_as_its_node() {
    let mut node = bootstrapped_node(&[], &[]);
    node.wait_for("the node to be Ready", Duration::from_secs(60), node_ready);

    // One request, made with the bootstrap token, for the node's client certificate.
    let csrs = node_client_csrs(&node);
    assert_eq!(csrs.len(), 1, "{csrs:#?}");
    let csr = &csrs[0];
    assert!(
        csr["spec"]["username"]
            .as_str()
            .is_some_and(|u| u.starts_with("system:bootstrap:")),
        "the requestor: {csr:#}"
    );
    let mut usages: Vec<&str> = csr["spec"]["usages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    usages.sort();
    assert_eq!(usages, ["client auth", "digital signature"]);
    assert!(issued(csr), "{csr:#}");
    assert!(
        csr["status"]["conditions"][0]["reason"] == "AutoApproved",
        "{csr:#}"
    );

    // The kubeconfig names the certificate in ROOT_DIR/pki; the node is who it says.
    let kubeconfig = std::fs::read_to_string(kubelet_kubeconfig(&node)).unwrap();
    let current = node.root_dir().join("pki/kubelet-client-current.pem");
    assert!(
        kubeconfig.contains(&current.display().to_string()),
        "{kubeconfig}"
    );
    assert!(!kubeconfig.contains("token"), "{kubeconfig}");
    let who: Value = serde_json::from_str(&kubelet_whoami(&node)).unwrap();
    assert_eq!(
        who["status"]["userInfo"]["username"], "system:node:node-1",
        "{who:#}"
    );
    let groups = who["status"]["userInfo"]["groups"].to_string();
    assert!(groups.contains("system:nodes"), "{groups}");

    // With those credentials alone the node runs a pod and reports it.
    node.apply(&busybox_pod("p", "Always", "sleep 3600", ""));
    node.wait_pod("p", "Running", Duration::from_secs(60), |p| {
        p["status"]["phase"] == "Running"
    });

    // A kubelet started again keeps its valid certificate: no new request.
    node.kill9_kubelet();
    node.start_kubelet();
    std::thread::sleep(Duration::from_secs(3));
    node.wait_for(
        "the node to stay Ready",
        Duration::from_secs(30),
        node_ready,
    );
    assert_eq!(node_client_csrs(&node).len(), 1);
    node.kubectl(&["delete", "pod", "p", "--wait=false"]);
}

/// The Lease's last renewal, seconds ago.
fn lease_age(n: &Node) -> i64 {
    let lease = n
        .get_json(&["lease", "-n", "kube-node-lease", &n.name])
        .expect("the node's Lease");
    let renewed = lease["spec"]["renewTime"].as_str().expect("renewTime");
    let renewed = chrono::DateTime::parse_from_rfc3339(renewed).expect("RFC 3339 renewTime");
    (chrono::Utc::now() - renewed.with_timezone(&chrono::Utc)).num_seconds()
}

#[test]
fn the_client_certificate_is_rotated_before_it_expires_and_pods_keep_running() {
    // Certificates of 30 s (the signer's cap, as kube-controller-manager's flag sets it): the
    // kubelet renews at 70-84% of the lifetime, and the server checks a client certificate's
    // expiry on every request, so a node still using an old one would be refused.
    let node = bootstrapped_node(
        &["--cluster-signing-duration", "30s"],
        &["--rotate-certificates"],
    );
    node.wait_for("the node to be Ready", Duration::from_secs(60), node_ready);
    node.apply(&busybox_pod("p", "Always", "sleep 3600", ""));
    let running = node.wait_pod("p", "Running", Duration::from_secs(60), |p| {
        p["status"]["phase"] == "Running"
    });
    let container = running["status"]["containerStatuses"][0]["containerID"].clone();

    // Two renewals, each asked for with the node's own certificate and approved for it.
    node.wait_for(
        "two renewals of the client certificate",
        Duration::from_secs(120),
        |n| node_client_csrs(n).iter().filter(|c| issued(c)).count() >= 3,
    );
    let csrs = node_client_csrs(&node);
    for renewal in &csrs[1..] {
        assert_eq!(
            renewal["spec"]["username"], "system:node:node-1",
            "{renewal:#}"
        );
    }
    // Both earlier certificates have expired by now; the node still heartbeats, as itself.
    std::thread::sleep(Duration::from_secs(12));
    node.wait_for("the node to stay Ready", Duration::from_secs(5), node_ready);
    let age = lease_age(&node);
    assert!(age <= 12, "the Lease was last renewed {age}s ago");
    let who: Value = serde_json::from_str(&kubelet_whoami(&node)).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "system:node:node-1");
    // The store keeps the current pair only.
    let pki: Vec<_> = std::fs::read_dir(node.root_dir().join("pki"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(pki.len(), 2, "{pki:?}");
    // The pod was not restarted.
    let now = node.pod("p").expect("the pod");
    assert_eq!(
        now["status"]["containerStatuses"][0]["containerID"],
        container
    );
    assert_eq!(now["status"]["containerStatuses"][0]["restartCount"], 0);
    node.kubectl(&["delete", "pod", "p", "--wait=false"]);
}

/// The node API's certificate as a client sees it: whether it verifies against the cluster CA
/// for the node's IP, its fingerprint and its subject alternative names.
fn presented_certificate(n: &Node) -> (bool, String) {
    let ca = n.dir.path().join("data/ca.crt");
    let script = format!(
        "openssl s_client -connect {ip}:10250 -CAfile {ca} -verify_ip {ip} -verify_return_error </dev/null 2>&1 \
         | tee /dev/stderr | openssl x509 -noout -fingerprint -sha256 -ext subjectAltName -issuer",
        ip = common::NODE_IP,
        ca = ca.display()
    );
    let out = n
        .netns
        .command("sh")
        .args(["-c", &script])
        .output()
        .expect("running openssl");
    let handshake = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        handshake.contains("Verify return code: 0 (ok)"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_node_api_serves_a_certificate_the_cluster_signed_and_renews_it() {
    common::require(
        "openssl",
        &["version"],
        "the openssl command line (Debian: openssl)",
    );
    let node = bootstrapped_node(
        &["--cluster-signing-duration", "30s"],
        &["--rotate-server-certificates"],
    );
    node.wait_for("the node to be Ready", Duration::from_secs(60), node_ready);
    node.wait_for(
        "the serving certificate to be signed",
        Duration::from_secs(30),
        |n| {
            n.get_json(&["csr"]).is_some_and(|l| {
                l["items"].as_array().into_iter().flatten().any(|c| {
                    c["spec"]["signerName"] == "kubernetes.io/kubelet-serving"
                        && c["spec"]["username"] == "system:node:node-1"
                        && issued(c)
                })
            })
        },
    );
    let mut first = (false, String::new());
    node.wait_for("the node API to present it", Duration::from_secs(10), |n| {
        first = presented_certificate(n);
        first.0
    });
    let (_, text) = &first;
    assert!(
        text.contains(&format!("IP Address:{}", common::NODE_IP)),
        "{text}"
    );
    assert!(text.contains("DNS:node-1"), "{text}");

    // logs and exec through the API server still reach the node API.
    node.apply(&busybox_pod("p", "Always", "echo hello; sleep 3600", ""));
    node.wait_pod("p", "Running", Duration::from_secs(60), |p| {
        p["status"]["phase"] == "Running"
    });
    node.wait_for("the pod's log", Duration::from_secs(10), |n| {
        n.kubectl_output(&["logs", "p"], None)
            .stdout
            .starts_with(b"hello")
    });
    assert_eq!(
        node.kubectl(&["exec", "p", "--", "echo", "in"]).trim(),
        "in"
    );

    // Renewed before it expires (30 s), and the new one served.
    let fingerprint = |t: &str| t.lines().next().unwrap_or_default().to_string();
    node.wait_for(
        "a renewed serving certificate",
        Duration::from_secs(60),
        |n| {
            let (ok, text) = presented_certificate(n);
            ok && fingerprint(&text) != fingerprint(&first.1)
        },
    );
    node.kubectl(&["delete", "pod", "p", "--wait=false"]);
}

#[test]
fn a_node_joins_a_server_on_all_addresses_through_its_advertised_one() {
    // Inside the test's own network namespace only: the server listens on every address there
    // and advertises the node's, which its kubeconfigs and the kubernetes Service name.
    let node = bootstrapped_node(
        &[
            "--listen",
            "0.0.0.0:0",
            "--advertise-address",
            common::NODE_IP,
        ],
        &[],
    );
    node.wait_for("the node to be Ready", Duration::from_secs(60), node_ready);
    let server = node.kubectl(&[
        "config",
        "view",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    assert!(
        server.starts_with(&format!("https://{}:", common::NODE_IP)),
        "{server}"
    );
    let kubelet = std::fs::read_to_string(kubelet_kubeconfig(&node)).unwrap();
    assert!(kubelet.contains(&server), "{kubelet}");
    let endpoints = node.kubectl(&[
        "get",
        "endpoints",
        "kubernetes",
        "-o",
        "jsonpath={.subsets[0].addresses[0].ip}",
    ]);
    assert_eq!(endpoints, common::NODE_IP);
}
