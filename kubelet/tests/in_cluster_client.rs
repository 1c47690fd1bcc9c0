//! A pod's in-cluster client: the official Python client in a real container, configured from
//! the projected service-account token and the `kubernetes` Service's address the kubelet puts in
//! its environment, reaches the API server through the node's skiff-proxy and lists pods once a
//! Role allows its ServiceAccount to, and is refused with kube-apiserver's 403 before.

mod common;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use skiff_kubelet::image::oci_archive::{LayerCompression, write_oci_archive};
use skiff_kubelet::image::{ImageConfig, ImageStore};

const IMAGE: &str = "python-kubernetes:latest";
const BUILD_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/python_image.py");
const POD_SCRIPT: &str = include_str!("python/in_cluster_list_pods.py");

/// The image of the host's python3 and its `kubernetes` package (tests/python/python_image.py),
/// built once per python, client and build script into the target directory.
fn python_image() -> PathBuf {
    require(
        "python3",
        &["-c", "import kubernetes"],
        "python3 with the `kubernetes` package: pip install kubernetes",
    );
    let versions = Command::new("python3")
        .args([
            "-c",
            "import sys, kubernetes; print(sys.executable, sys.version, kubernetes.__version__)",
        ])
        .output()
        .expect("running python3");
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    versions.stdout.hash(&mut hasher);
    std::fs::read(BUILD_SCRIPT)
        .expect("the build script")
        .hash(&mut hasher);
    let archive = target_dir().join(format!("python-kubernetes-{:016x}.tar", hasher.finish()));
    if archive.exists() {
        return archive;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let layer_path = dir.path().join("layer.tar");
    let out = Command::new("python3")
        .arg(BUILD_SCRIPT)
        .arg(&layer_path)
        .output()
        .expect("running python_image.py");
    assert!(
        out.status.success(),
        "python_image.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let layer = std::fs::read(&layer_path).expect("the layer");
    let config = ImageConfig {
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_string()],
        cmd: Some(vec!["python3".to_string()]),
        working_dir: Some("/".to_string()),
        ..ImageConfig::default()
    };
    // Written whole or not at all: a test run killed midway leaves no half archive.
    write_oci_archive(&archive, IMAGE, &config, &[layer], LayerCompression::Gzip)
        .expect("writing the python image");
    archive
}

fn install_python_image(root_dir: &Path) {
    ImageStore::open(root_dir)
        .and_then(|store| store.import(&python_image()))
        .expect("importing the python image");
}

/// skiff-proxy in the node's namespace, killed before the node goes.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_proxy(node: &Node) -> Proxy {
    let log = std::fs::File::create(node.dir.path().join("proxy.log")).expect("proxy log");
    Proxy(
        node.netns
            .command(binary(
                "skiff-proxy",
                "cargo build -p skiff-proxy --bin skiff-proxy",
            ))
            .arg("--kubeconfig")
            .arg(node.kubeconfig())
            .args(["--node-name", &node.name, "--cluster-cidr", "10.244.0.0/16"])
            .args(["--min-sync-period", "100ms", "--disable-dns"])
            .args(["--healthz-bind-address", "127.0.0.1:10256"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting skiff-proxy"),
    )
}

fn lister_pod(name: &str) -> String {
    let script = serde_json::to_string(POD_SCRIPT).expect("script");
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  restartPolicy: Never
  serviceAccountName: lister
  containers:
  - name: main
    image: {IMAGE}
    imagePullPolicy: Never
    command: ["python3", "-c", {script}]
"#
    )
}

/// Runs the lister pod `name` to its end; its phase and what it printed.
fn run(node: &Node, name: &str) -> (String, String) {
    node.apply(&lister_pod(name));
    let pod = node.wait_pod(name, "finished", Duration::from_secs(90), |p| {
        matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
    });
    let uid = pod["metadata"]["uid"].as_str().expect("uid");
    let log = std::fs::read_to_string(
        node.logs_dir()
            .join(format!("default_{name}_{uid}/main/0.log")),
    )
    .unwrap_or_default();
    // CRI log lines: time, stream, tag, text.
    let text: Vec<&str> = log
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or_default())
        .collect();
    (
        pod["status"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        text.join("\n"),
    )
}

fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no `{key}` line in:\n{out}"))
}

#[test]
fn a_pods_python_client_lists_pods_once_a_role_allows_it() {
    // The server listens on the node's address (inside the test's namespace only), which the
    // `kubernetes` Service's endpoints name; the pod reaches it at the Service's ClusterIP.
    let node = Node::start_with_server(
        &["--listen", "0.0.0.0:0", "--advertise-address", NODE_IP],
        &[],
        |node| install_python_image(&node.root_dir()),
    );
    let _proxy = start_proxy(&node);
    require("curl", &["--version"], "Debian package curl");
    node.wait_for(
        "the proxy to route the kubernetes Service",
        Duration::from_secs(30),
        |n| {
            n.netns
                .command("curl")
                .args(["-sk", "--max-time", "2", "https://10.96.0.1:443/livez"])
                .output()
                .is_ok_and(|o| o.status.success())
        },
    );
    node.kubectl(&["create", "serviceaccount", "lister"]);

    let (phase, out) = run(&node, "denied");
    assert_eq!(line(&out, "server: "), "https://10.96.0.1:443", "{out}");
    assert_eq!(phase, "Failed", "{out}");
    assert_eq!(line(&out, "status: "), "403", "{out}");
    assert_eq!(
        line(&out, "message: "),
        r#"pods is forbidden: User "system:serviceaccount:default:lister" cannot list resource "pods" in API group "" in the namespace "default""#,
        "{out}"
    );

    node.kubectl(&[
        "create",
        "role",
        "pod-reader",
        "--verb=get,list,watch",
        "--resource=pods",
    ]);
    node.kubectl(&[
        "create",
        "rolebinding",
        "lister-reads-pods",
        "--role=pod-reader",
        "--serviceaccount=default:lister",
    ]);
    let (phase, out) = run(&node, "allowed");
    assert_eq!(phase, "Succeeded", "{out}");
    assert_eq!(line(&out, "pods: "), "allowed denied", "{out}");
}
