//! Pod volumes in real containers: emptyDir shared by an init container and the app, configMap,
//! secret (items), downwardAPI, hostPath (DirectoryOrCreate), subPath; a missing ConfigMap is a
//! FailedMount and the pod waits.

mod common;

use std::time::Duration;

use common::Node;

#[test]
fn volumes_reach_the_containers() {
    let node = Node::start();
    node.kubectl(&[
        "create",
        "configmap",
        "cfg",
        "--from-literal=greeting=hello",
    ]);
    node.kubectl(&[
        "create",
        "secret",
        "generic",
        "sec",
        "--from-literal=token=s3cr3t",
    ]);
    let host_dir = node.dir.path().join("host-data");
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: vols
  labels: {{app: demo}}
spec:
  restartPolicy: Never
  volumes:
  - {{name: shared, emptyDir: {{}}}}
  - {{name: mem, emptyDir: {{medium: Memory, sizeLimit: 1Mi}}}}
  - {{name: cfg, configMap: {{name: cfg}}}}
  - {{name: sec, secret: {{secretName: sec, items: [{{key: token, path: tok, mode: 0400}}]}}}}
  - name: info
    downwardAPI:
      items: [{{path: labels-app, fieldRef: {{fieldPath: "metadata.labels['app']"}}}}]
  - {{name: host, hostPath: {{path: {host}, type: DirectoryOrCreate}}}}
  initContainers:
  - name: prep
    image: busybox
    imagePullPolicy: Never
    command: ["sh", "-c", "echo from-init > /shared/file; mkdir -p /shared/sub; echo deep > /shared/sub/x"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  containers:
  - name: main
    image: busybox
    imagePullPolicy: Never
    command: ["sh", "-c", "cat /shared/file; for f in /cfg/greeting /sec/tok /info/labels-app; do cat $f; echo; done; cat /only-sub/x; grep -c ' /mem tmpfs' /proc/mounts; echo written > /host/out; touch /cfg/nope 2>/dev/null || echo read-only"]
    volumeMounts:
    - {{name: shared, mountPath: /shared}}
    - {{name: shared, mountPath: /only-sub, subPath: sub}}
    - {{name: mem, mountPath: /mem}}
    - {{name: cfg, mountPath: /cfg, readOnly: true}}
    - {{name: sec, mountPath: /sec}}
    - {{name: info, mountPath: /info}}
    - {{name: host, mountPath: /host}}
"#,
        host = host_dir.display()
    );
    node.apply(&manifest);
    let p = node.wait_pod("vols", "Succeeded", Duration::from_secs(40), |p| {
        p["status"]["phase"] == "Succeeded" || p["status"]["phase"] == "Failed"
    });
    assert_eq!(p["status"]["phase"], "Succeeded", "{}", p["status"]);
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let log = std::fs::read_to_string(
        node.logs_dir()
            .join(format!("default_vols_{uid}/main/0.log")),
    )
    .unwrap();
    let lines: Vec<&str> = log
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or_default())
        .collect();
    assert_eq!(
        lines,
        [
            "from-init",
            "hello",
            "s3cr3t",
            "demo",
            "deep",
            "1",
            "read-only"
        ],
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(host_dir.join("out")).unwrap(),
        "written\n"
    );

    // A ConfigMap that does not exist: FailedMount, the pod waits without containers.
    node.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: waits}
spec:
  volumes: [{name: c, configMap: {name: absent}}]
  containers:
  - {name: main, image: busybox, imagePullPolicy: Never, command: ["sleep", "60"], volumeMounts: [{name: c, mountPath: /c}]}
"#,
    );
    node.wait_for("a FailedMount event", Duration::from_secs(20), |n| {
        n.event_reasons("waits").iter().any(|r| r == "FailedMount")
    });
    let p = node.pod("waits").unwrap();
    assert_eq!(p["status"]["phase"], "Pending");
    assert_eq!(
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
        "ContainerCreating"
    );
}
