//! Static pods from `--pod-manifest-path` on a real node: the pod runs from its file, its mirror
//! pod in the API carries the kubelet's status, the mirror annotation and the Node as owner; a
//! mirror deleted through the API comes back without the pod restarting, and a restarted kubelet
//! adopts the pod's container; a changed file replaces
//! the pod; a removed file stops it and removes the mirror.

mod common;

use std::time::Duration;

use common::Node;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(40);
const MIRROR: &str = "kubernetes.io/config.mirror";

fn manifest(message: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {{app: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    imagePullPolicy: Never
    command: ["sh", "-c", "echo {message}; sleep 3600"]
"#
    )
}

fn container_id(p: &Value) -> String {
    p["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn running(p: &Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["status"]["containerStatuses"][0]["state"]["running"].is_object()
}

#[test]
fn static_pods_run_from_files_with_mirror_pods() {
    let manifests = tempfile::tempdir().expect("manifest directory");
    let file = manifests.path().join("web.yaml");
    std::fs::write(&file, manifest("first")).unwrap();
    let dir = manifests.path().to_string_lossy().into_owned();
    let node = Node::start_with(&["--pod-manifest-path", &dir]);

    let name = "web-node-1";
    let p = node.wait_pod(name, "the mirror running", WAIT, running);
    let hash = p["metadata"]["annotations"][MIRROR]
        .as_str()
        .expect("the mirror annotation")
        .to_string();
    assert_eq!(
        p["metadata"]["annotations"]["kubernetes.io/config.source"],
        "file"
    );
    assert_eq!(p["metadata"]["labels"]["app"], "web");
    assert_eq!(p["spec"]["nodeName"], "node-1");
    let owner = &p["metadata"]["ownerReferences"][0];
    let node_obj = node.get_json(&["node", "node-1"]).unwrap();
    assert_eq!(owner["kind"], "Node", "{owner}");
    assert_eq!(owner["name"], "node-1");
    assert_eq!(owner["uid"], node_obj["metadata"]["uid"]);
    let first_id = container_id(&p);
    assert!(first_id.starts_with("skiff://"), "{first_id}");
    // The static pod's uid is its hash, not the mirror's uid.
    assert_ne!(p["metadata"]["uid"].as_str(), Some(hash.as_str()));
    assert!(
        std::fs::read_dir(node.logs_dir())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(&hash)),
        "the pod's log directory is named by its hash"
    );

    // A mirror deleted through the API is made again; the pod keeps running.
    let mirror_uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    node.kubectl(&["delete", "pod", name, "--wait=false"]);
    let p = node.wait_pod(name, "a new mirror", WAIT, |p| {
        p["metadata"]["uid"].as_str() != Some(mirror_uid.as_str())
            && p["metadata"]["deletionTimestamp"].is_null()
            && running(p)
    });
    assert_eq!(container_id(&p), first_id, "the static pod was restarted");

    // A kubelet killed and started again adopts the static pod's running container.
    let mut node = node;
    node.kill9_kubelet();
    node.start_kubelet();
    node.wait_for("the container to be adopted", WAIT, |n| {
        n.kubelet_log().contains("adopted a running container")
    });
    std::thread::sleep(Duration::from_secs(3));
    let p = node.wait_pod(name, "running after the restart", WAIT, running);
    assert_eq!(container_id(&p), first_id, "the static pod was restarted");
    assert_eq!(
        node.container_dirs().len(),
        1,
        "{:?}",
        node.container_dirs()
    );

    // A changed manifest is a new pod: the old one stops, the new one runs, the mirror follows.
    std::fs::write(&file, manifest("second")).unwrap();
    let p = node.wait_pod(name, "the new version running", WAIT, |p| {
        p["metadata"]["annotations"][MIRROR].as_str() != Some(hash.as_str()) && running(p)
    });
    assert_ne!(container_id(&p), first_id);
    node.wait_for("the old pod's containers to go", WAIT, |n| {
        n.container_dirs().len() == 1
    });

    // A removed manifest stops the pod and removes its mirror.
    std::fs::remove_file(&file).unwrap();
    node.wait_for("the mirror to go", WAIT, |n| n.pod(name).is_none());
    node.wait_for("the containers to go", WAIT, |n| {
        n.container_dirs().is_empty()
    });
    assert!(
        node.cgroup_leftovers().is_empty(),
        "{:?}",
        node.cgroup_leftovers()
    );
}
