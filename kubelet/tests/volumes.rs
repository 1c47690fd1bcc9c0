//! Pod volumes on a real node (skiff server + skiff-kubelet + skiff-runc): emptyDir shared
//! between containers, configMap/secret/downwardAPI files with their modes and fsGroup, updates
//! reaching a running container, subPath and subPathExpr, secrets on tmpfs; bad volumes (missing ConfigMap,
//! hostPath type mismatch, subPath symlink escape) held with a clear reason; cleanup on deletion.
//! The pods use the host network: volumes do not need the pod network, and the tests stay lean.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use common::Node;
use serde_json::Value;

fn uid(p: &Value) -> String {
    p["metadata"]["uid"].as_str().unwrap().to_string()
}

fn log_path(node: &Node, pod: &Value, container: &str) -> PathBuf {
    let name = pod["metadata"]["name"].as_str().unwrap();
    node.logs_dir()
        .join(format!("default_{name}_{}/{container}/0.log", uid(pod)))
}

fn log(node: &Node, pod: &Value, container: &str) -> String {
    std::fs::read_to_string(log_path(node, pod, container)).unwrap_or_default()
}

fn waiting<'a>(p: &'a Value, container: &str) -> &'a Value {
    p["status"]["containerStatuses"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == container))
        .map(|c| &c["state"]["waiting"])
        .unwrap_or(&Value::Null)
}

const FILES_POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: files
  labels: {app: files, tier: "web"}
spec:
  hostNetwork: true
  restartPolicy: Never
  securityContext: {fsGroup: 2345}
  volumes:
  - {name: shared, emptyDir: {}}
  - {name: mem, emptyDir: {medium: Memory, sizeLimit: 8Mi}}
  - name: cfg
    configMap:
      name: cfg
      items: [{key: greeting, path: greeting}, {key: mode, path: nested/mode, mode: 0400}]
  - {name: sec, secret: {secretName: sec, defaultMode: 0440}}
  - {name: host, hostPath: {path: HOSTPATH, type: DirectoryOrCreate}}
  - name: proj
    projected:
      defaultMode: 0444
      sources:
      - configMap: {name: cfg, items: [{key: greeting, path: g}]}
      - secret: {name: sec}
      - downwardAPI: {items: [{path: ns, fieldRef: {fieldPath: metadata.namespace}}]}
  - name: info
    downwardAPI:
      items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}, {path: name, fieldRef: {fieldPath: metadata.name}}]
  initContainers:
  - name: prep
    image: busybox
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /shared/sub; echo deep > /shared/sub/x"]
    volumeMounts: [{name: shared, mountPath: /shared}]
  containers:
  - name: writer
    image: busybox
    imagePullPolicy: Never
    command: ["sh", "-c", "echo from-writer > /shared/msg; echo to-host > /host/out; sleep 3600"]
    volumeMounts: [{name: shared, mountPath: /shared}, {name: host, mountPath: /host}]
  - name: reader
    image: busybox
    imagePullPolicy: Never
    command:
    - sh
    - -c
    - |
      until [ -f /data/msg ]; do sleep 0.2; done
      echo "shared=$(cat /data/msg)"
      echo "mem=$(df -P /mem | tail -1 | awk '{print $2}')"
      echo "sub=$(cat /sub-greeting) subdir=$(cat /only-sub/x)"
      echo expr > /per-pod/made-by-reader
      echo "secret=$(cat /sec/password) $(stat -Lc %a:%g /sec/password)"
      echo "mode=$(stat -Lc %a:%g /cfg/nested/mode)"
      echo "name=$(cat /info/name)"
      echo "proj=$(cat /proj/g) $(cat /proj/password) $(cat /proj/ns) $(stat -Lc %a /proj/g)"
      cat /info/labels; echo
      if touch /cfg/x 2>/dev/null; then echo cfg-writable; else echo cfg-readonly; fi
      if touch /data/x 2>/dev/null; then echo data-writable; else echo data-readonly; fi
      while true; do echo "greeting=$(cat /cfg/greeting) $(grep tier /info/labels)"; sleep 0.5; done
    env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    volumeMounts:
    - {name: shared, mountPath: /data, readOnly: true}
    - {name: mem, mountPath: /mem}
    - {name: cfg, mountPath: /cfg}
    - {name: cfg, mountPath: /sub-greeting, subPath: greeting}
    - {name: shared, mountPath: /only-sub, subPath: sub}
    - {name: shared, mountPath: /per-pod, subPathExpr: $(POD_NAME)}
    - {name: sec, mountPath: /sec}
    - {name: info, mountPath: /info}
    - {name: proj, mountPath: /proj}
"#;

#[test]
fn volume_files_modes_updates_and_cleanup() {
    let mut node = Node::start();
    node.kubectl(&[
        "create",
        "configmap",
        "cfg",
        "--from-literal=greeting=hello",
        "--from-literal=mode=m",
    ]);
    node.kubectl(&[
        "create",
        "secret",
        "generic",
        "sec",
        "--from-literal=password=s3cret",
    ]);
    let host_dir = node.dir.path().join("host-volume");
    node.apply(&FILES_POD.replace("HOSTPATH", &host_dir.display().to_string()));
    let p = node.wait_pod("files", "Running", Duration::from_secs(60), |p| {
        p["status"]["phase"] == "Running"
    });
    node.wait_for("the reader's report", Duration::from_secs(20), |n| {
        log(n, &p, "reader").contains("greeting=hello")
    });
    let text = log(&node, &p, "reader");
    for want in [
        "shared=from-writer",
        "mem=8192",
        "sub=hello subdir=deep",
        "secret=s3cret 440:2345",
        "mode=440:2345",
        "name=files",
        "proj=hello s3cret default 444",
        "app=\"files\"",
        "tier=\"web\"",
        "cfg-readonly",
        "data-readonly",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }

    // On the node: the AtomicWriter layout, secrets on a tmpfs, emptyDir where the kubelet puts it.
    let vols = node.root_dir().join("pods").join(uid(&p)).join("volumes");
    let cfg = vols.join("kubernetes.io~configmap/cfg");
    assert!(std::fs::read_link(cfg.join("..data")).is_ok());
    assert_eq!(
        std::fs::read_link(cfg.join("greeting")).unwrap(),
        PathBuf::from("..data/greeting")
    );
    let sec = vols.join("kubernetes.io~secret/sec");
    let parent_dev = std::fs::metadata(sec.parent().unwrap()).unwrap().dev();
    assert_ne!(
        std::fs::metadata(&sec).unwrap().dev(),
        parent_dev,
        "secret not on its own tmpfs"
    );
    let shared = vols.join("kubernetes.io~empty-dir/shared");
    assert_eq!(
        std::fs::read_to_string(shared.join("msg")).unwrap(),
        "from-writer\n"
    );
    assert_eq!(std::fs::metadata(&shared).unwrap().gid(), 2345);
    assert_eq!(
        std::fs::read_to_string(shared.join("files/made-by-reader")).unwrap(),
        "expr\n"
    );
    assert_eq!(
        std::fs::read_to_string(host_dir.join("out")).unwrap(),
        "to-host\n"
    );

    // An update of the ConfigMap reaches the running container (not through the subPath).
    node.kubectl(&[
        "patch",
        "configmap",
        "cfg",
        "-p",
        r#"{"data":{"greeting":"bye"}}"#,
    ]);
    node.wait_for(
        "the updated ConfigMap in the container",
        Duration::from_secs(20),
        |n| log(n, &p, "reader").contains("greeting=bye"),
    );

    // A label change reaches the downwardAPI file.
    node.kubectl(&["label", "pod", "files", "tier=db", "--overwrite"]);
    node.wait_for(
        "the new label in the container",
        Duration::from_secs(20),
        |n| log(n, &p, "reader").contains("tier=\"db\""),
    );

    // A restarted kubelet finds the volumes as they are (no second tmpfs) and keeps them current.
    node.kill9_kubelet();
    node.start_kubelet();
    node.kubectl(&[
        "patch",
        "configmap",
        "cfg",
        "-p",
        r#"{"data":{"greeting":"again"}}"#,
    ]);
    node.wait_for(
        "the update after a kubelet restart",
        Duration::from_secs(30),
        |n| log(n, &p, "reader").contains("greeting=again"),
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let sec_mounts = mountinfo
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(sec.to_str().unwrap()))
        .count();
    assert_eq!(sec_mounts, 1, "{mountinfo}");

    // Deletion unmounts and removes every volume.
    node.kubectl(&["delete", "pod", "files", "--grace-period=1", "--wait=false"]);
    node.wait_for("the pod to go", Duration::from_secs(30), |n| {
        n.pod("files").is_none()
    });
    node.wait_for("the volumes to go", Duration::from_secs(10), |_| {
        !vols.exists()
    });
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&uid(&p)), "mounts left:\n{mountinfo}");
}

#[test]
fn bad_volumes_wait_with_a_clear_reason() {
    let node = Node::start();
    node.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: late}
spec:
  hostNetwork: true
  volumes: [{name: cfg, configMap: {name: late-cfg}}]
  containers:
  - {name: main, image: busybox, imagePullPolicy: Never, command: ["sh", "-c", "cat /cfg/k; echo; sleep 3600"], volumeMounts: [{name: cfg, mountPath: /cfg}]}
---
apiVersion: v1
kind: Pod
metadata: {name: hostpath}
spec:
  hostNetwork: true
  volumes: [{name: h, hostPath: {path: /dev/null, type: Directory}}]
  containers:
  - {name: main, image: busybox, imagePullPolicy: Never, command: ["sleep", "3600"], volumeMounts: [{name: h, mountPath: /h}]}
---
apiVersion: v1
kind: Pod
metadata: {name: escape}
spec:
  hostNetwork: true
  volumes: [{name: work, emptyDir: {}}]
  initContainers:
  - {name: plant, image: busybox, imagePullPolicy: Never, command: ["ln", "-s", "/", "/work/escape"], volumeMounts: [{name: work, mountPath: /work}]}
  containers:
  - {name: main, image: busybox, imagePullPolicy: Never, command: ["sleep", "3600"], volumeMounts: [{name: work, mountPath: /host, subPath: escape/etc}]}
"#,
    );
    let reason_with = |pod: &str, text: &'static str| {
        node.wait_pod(pod, text, Duration::from_secs(60), move |p| {
            let w = waiting(p, "main");
            w["reason"] == "CreateContainerConfigError"
                && w["message"].as_str().is_some_and(|m| m.contains(text))
        })
    };
    reason_with("late", r#"configmap "late-cfg" not found"#);
    reason_with(
        "hostpath",
        "hostPath type check failed: /dev/null is not a directory",
    );
    reason_with("escape", "points outside the volume");
    assert!(
        node.event_reasons("late")
            .iter()
            .any(|r| r == "FailedMount"),
        "{:?}",
        node.event_reasons("late")
    );

    // The ConfigMap appears: the pod starts.
    node.kubectl(&[
        "create",
        "configmap",
        "late-cfg",
        "--from-literal=k=arrived",
    ]);
    let p = node.wait_pod("late", "Running", Duration::from_secs(30), |p| {
        p["status"]["phase"] == "Running"
    });
    node.wait_for("the file in the container", Duration::from_secs(10), |n| {
        log(n, &p, "main").contains("arrived")
    });
}

/// kubectl in the node's namespace with only `token` as credentials.
fn with_token(node: &Node, token: &str, args: &[&str]) -> std::process::Output {
    let kubeconfig = std::fs::read_to_string(node.kubeconfig()).unwrap();
    let server = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("a server in the kubeconfig")
        .to_string();
    let ca = node.dir.path().join("data/ca.crt");
    let mut cmd = node.kubectl_command(&[]);
    cmd.env_remove("KUBECONFIG")
        .args(["--kubeconfig=/dev/null", "--server", &server])
        .arg("--certificate-authority")
        .arg(&ca)
        .arg(format!("--token={token}"))
        .args(args);
    cmd.output().expect("kubectl")
}

#[test]
fn pods_get_a_bound_service_account_token_that_dies_with_them() {
    let node = Node::start();
    const DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    node.apply(&common::busybox_pod(
        "reader",
        "Never",
        &format!("cat {DIR}/token; echo; cat {DIR}/namespace; echo; ls {DIR}; sleep 3600"),
        "  hostNetwork: true\n",
    ));
    let pod = node.wait_pod("reader", "running", Duration::from_secs(60), |p| {
        p["status"]["phase"] == "Running"
    });
    let mount = &pod["spec"]["containers"][0]["volumeMounts"][0];
    assert_eq!(mount["mountPath"], DIR, "{pod}");
    let mut out = String::new();
    node.wait_for("the token in the log", Duration::from_secs(20), |n| {
        out = log(n, &pod, "main");
        out.contains("token")
    });
    let lines: Vec<&str> = out
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or_default())
        .collect();
    let token = lines[0].trim();
    assert!(token.split('.').count() == 3, "a JWT: {out}");
    assert_eq!(lines[1], "default", "{out}");
    for f in ["ca.crt", "namespace", "token"] {
        assert!(lines.contains(&f), "{f} in {out}");
    }
    let who = with_token(
        &node,
        token,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&who.stdout),
        "system:serviceaccount:default:default",
        "{}",
        String::from_utf8_lossy(&who.stderr)
    );
    // A pod that opts out gets none.
    node.apply(&common::busybox_pod(
        "opted-out",
        "Never",
        "sleep 3600",
        "  hostNetwork: true\n  automountServiceAccountToken: false\n",
    ));
    let volumes = node.kubectl(&["get", "pod", "opted-out", "-o", "jsonpath={.spec.volumes}"]);
    assert!(volumes.is_empty(), "{volumes}");

    node.kubectl(&["delete", "pod", "reader", "--grace-period=0", "--force"]);
    node.wait_for("the token refused", Duration::from_secs(20), |n| {
        let out = with_token(n, token, &["auth", "whoami"]);
        String::from_utf8_lossy(&out.stderr).contains("Unauthorized")
    });
}
