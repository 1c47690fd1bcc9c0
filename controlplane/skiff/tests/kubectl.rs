//! The API server driven by the real kubectl 1.32.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::{Server, path_str};

const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
        ports:
        - containerPort: 80
        env:
        - {name: MODE, value: "one"}
        - {name: KEEP, value: "yes"}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 80
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: demo
data:
  color: blue
  size: large
"#;

#[test]
fn discovery_and_api_resources() {
    let s = Server::start();
    let out = s.kubectl(&["api-resources"]);
    for line in [
        "pods                po           v1",
        "deployments         deploy       apps/v1",
        "namespaces          ns           v1",
    ] {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().take(3).eq(cols.iter().copied())),
            "{line:?} missing from:\n{out}"
        );
    }
    for short in ["svc", "no", "cm", "ep", "rs", "ds"] {
        assert!(
            out.split_whitespace().any(|w| w == short),
            "short name {short} missing"
        );
    }
    let version = s.kubectl(&["version", "-o", "json"]);
    assert!(version.contains("\"minor\": \"32\""), "{version}");
    // `all` expands through the categories.
    s.kubectl_stdin(&["apply", "-f", "-"], APP);
    let all = s.kubectl(&["get", "all", "-n", "demo"]);
    assert!(all.contains("deployment.apps/web"), "{all}");
    assert!(all.contains("service/web"), "{all}");
    assert!(!all.contains("configmap"), "{all}");
}

/// The API server with only the controllers deletion needs (the garbage collector and the
/// namespace controller), so that what kubectl shows is the API server's own work.
fn start_with_deletion_controllers() -> Server {
    Server::start_cluster_with(&[
        "--disable-scheduler",
        "--controllers",
        "garbage-collector-controller,namespace-controller",
    ])
}

#[test]
fn apply_get_patch_scale_delete() {
    let s = start_with_deletion_controllers();
    let out = s.kubectl_stdin(&["apply", "-f", "-"], APP);
    assert!(out.contains("deployment.apps/web created"), "{out}");
    assert!(out.contains("service/web created"), "{out}");

    // Apply again, changed: kubectl computes a 3-way strategic merge patch.
    let changed = APP
        .replace("replicas: 2", "replicas: 3")
        .replace("nginx:1.27", "nginx:1.28")
        .replace(
            "{name: MODE, value: \"one\"}\n        - {name: KEEP, value: \"yes\"}",
            "{name: MODE, value: \"two\"}",
        )
        .replace("size: large", "shape: round");
    let out = s.kubectl_stdin(&["apply", "-f", "-"], &changed);
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(out.contains("namespace/demo unchanged"), "{out}");
    let got = s.kubectl(&[
        "get", "deploy", "web", "-n", "demo", "-o",
        "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].env[*].name} {.metadata.generation}",
    ]);
    assert_eq!(got, "3 nginx:1.28 MODE 2");
    let cm = s.kubectl(&[
        "get",
        "cm",
        "settings",
        "-n",
        "demo",
        "-o",
        "jsonpath={.data}",
    ]);
    assert_eq!(cm, r#"{"color":"blue","shape":"round"}"#);

    // Every output format.
    let table = s.kubectl(&["get", "deploy", "-n", "demo"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["web", "0/3", "0", "0"], "{table}");
    let wide = s.kubectl(&["get", "deploy", "-n", "demo", "-o", "wide"]);
    assert!(
        wide.contains("CONTAINERS   IMAGES       SELECTOR"),
        "{wide}"
    );
    assert!(wide.contains("nginx        nginx:1.28   app=web"), "{wide}");
    let svc = s.kubectl(&["get", "svc", "web", "-n", "demo"]);
    let row: Vec<&str> = svc.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[1], "NodePort");
    assert!(row[2].starts_with("10."), "{svc}");
    assert!(
        row[4].starts_with("80:3") && row[4].ends_with("/TCP"),
        "{svc}"
    );
    let yaml = s.kubectl(&["get", "svc", "web", "-n", "demo", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: Service") && yaml.contains("clusterIPs:"),
        "{yaml}"
    );
    let json = s.kubectl(&["get", "cm", "settings", "-n", "demo", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["kind"], "ConfigMap");
    assert!(v["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
    assert_eq!(
        s.kubectl(&["get", "deploy,svc", "-n", "demo", "-o", "name"]),
        "deployment.apps/web\nservice/web\n"
    );

    // label, annotate, and the three patch types.
    s.kubectl(&["label", "deploy", "web", "-n", "demo", "tier=front"]);
    s.kubectl(&["annotate", "deploy", "web", "-n", "demo", "owner=team-a"]);
    let labels = s.kubectl(&[
        "get",
        "deploy",
        "-n",
        "demo",
        "-l",
        "tier=front",
        "-o",
        "name",
    ]);
    assert_eq!(labels, "deployment.apps/web\n");
    s.kubectl(&["patch", "deploy", "web", "-n", "demo", "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox:1.36"}]}}}}"#]);
    s.kubectl(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "demo",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"merged":"yes"}}}"#,
    ]);
    s.kubectl(&["patch", "deploy", "web", "-n", "demo", "--type=json", "-p",
        r#"[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"nginx:1.29"}]"#]);
    let got = s.kubectl(&["get", "deploy", "web", "-n", "demo", "-o",
        "jsonpath={.spec.template.spec.containers[*].name} {.spec.template.spec.containers[*].image} {.metadata.labels.merged} {.metadata.annotations.owner}"]);
    assert_eq!(got, "nginx sidecar nginx:1.29 busybox:1.36 yes team-a");

    // scale through the scale subresource.
    s.kubectl(&["scale", "deploy", "web", "-n", "demo", "--replicas=7"]);
    assert_eq!(
        s.kubectl(&[
            "get",
            "deploy",
            "web",
            "-n",
            "demo",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "7"
    );

    // describe.
    let d = s.kubectl(&["describe", "deploy", "web", "-n", "demo"]);
    assert!(d.contains("Replicas:               7 desired"), "{d}");
    let d = s.kubectl(&["describe", "svc", "web", "-n", "demo"]);
    assert!(d.contains("Type:                     NodePort"), "{d}");

    // delete.
    let out = s.kubectl(&["delete", "cm", "settings", "-n", "demo"]);
    assert_eq!(out, "configmap \"settings\" deleted\n");
    let err = s.kubectl_err(&["get", "cm", "settings", "-n", "demo"], None);
    assert!(err.contains("configmaps \"settings\" not found"), "{err}");
    s.kubectl(&["delete", "namespace", "demo"]);
    let err = s.kubectl_err(&["get", "deploy", "web", "-n", "demo"], None);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn server_side_apply_tracks_managers_and_conflicts() {
    let s = Server::start();
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  namespace: default\ndata:\n  a: \"1\"\n  b: \"2\"\n";
    let out = s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], cm);
    assert!(out.contains("configmap/ssa serverside-applied"), "{out}");
    let mf = s.kubectl(&[
        "get",
        "cm",
        "ssa",
        "-o",
        "jsonpath={.metadata.managedFields[0].manager} {.metadata.managedFields[0].operation}",
        "--show-managed-fields",
    ]);
    assert_eq!(mf, "kubectl Apply");
    // Dropping a field from the applied configuration removes it.
    s.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        &cm.replace("  b: \"2\"\n", ""),
    );
    assert_eq!(
        s.kubectl(&["get", "cm", "ssa", "-o", "jsonpath={.data}"]),
        r#"{"a":"1"}"#
    );
    // Another manager changing an owned field conflicts, unless forced.
    let other = cm
        .replace("a: \"1\"", "a: \"9\"")
        .replace("  b: \"2\"\n", "");
    let err = s.kubectl_err(
        &["apply", "--server-side", "--field-manager=other", "-f", "-"],
        Some(&other),
    );
    assert!(err.contains("conflict") && err.contains(".data.a"), "{err}");
    s.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=other",
            "--force-conflicts",
            "-f",
            "-",
        ],
        &other,
    );
    assert_eq!(
        s.kubectl(&["get", "cm", "ssa", "-o", "jsonpath={.data.a}"]),
        "9"
    );
}

#[test]
fn invalid_objects_are_refused_with_the_field_named() {
    let s = Server::start();
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: Bad_Name\n  namespace: default\nspec:\n  containers:\n  - name: c\n";
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(pod));
    assert!(err.contains("is invalid"), "{err}");
    assert!(
        err.contains("metadata.name: Invalid value: \"Bad_Name\""),
        "{err}"
    );
    assert!(
        err.contains("spec.containers[0].image: Required value"),
        "{err}"
    );
    let deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n  namespace: default\nspec:\n  selector:\n    matchLabels: {app: a}\n  template:\n    metadata:\n      labels: {app: b}\n    spec:\n      containers:\n      - {name: c, image: i}\n";
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(deploy));
    assert!(
        err.contains("spec.template.metadata.labels: Invalid value"),
        "{err}"
    );
    // Unknown fields: kubectl asks for strict validation by default.
    let unknown = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: u\n  namespace: default\ndatta:\n  a: b\n";
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(unknown));
    assert!(
        err.contains("strict decoding error: unknown field \"datta\""),
        "{err}"
    );
    let out = s
        .kubectl_cmd(&["apply", "--validate=warn", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(unknown.as_bytes())
                .unwrap();
            c.wait_with_output().unwrap()
        })
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field \"datta\""));
    // Malformed input.
    let path = s.write(
        "broken.json",
        "{\"apiVersion\": \"v1\", \"kind\": \"ConfigMap\", ",
    );
    let err = s.kubectl_err(&["create", "-f", path_str(&path)], None);
    assert!(err.contains("error"), "{err}");
    // A NodePort already taken.
    let svc = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  type: NodePort\n  ports:\n  - port: 80\n    nodePort: 30080\n"
        )
    };
    s.kubectl_stdin(&["apply", "-f", "-"], &svc("first"));
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&svc("second")));
    assert!(
        err.contains(
            "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"
        ),
        "{err}"
    );
}

#[test]
fn optimistic_concurrency_conflicts() {
    let s = Server::start();
    s.kubectl_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  namespace: default\ndata:\n  k: v\n");
    let json = s.kubectl(&["get", "cm", "c", "-o", "json"]);
    s.kubectl(&["label", "cm", "c", "bump=1"]);
    // `kubectl replace` of the now stale object must fail with 409.
    let path = s.write("stale.json", &json);
    let err = s.kubectl_err(&["replace", "-f", path_str(&path)], None);
    assert!(err.contains("the object has been modified"), "{err}");
}

/// `kubectl get configmaps --watch` of the test's own ConfigMap `w1` with `output` args, and
/// a function returning its next line (30 s at most).
fn watch_w1(s: &Server, output: &[&str]) -> (std::process::Child, impl Fn() -> String) {
    let mut args = vec![
        "get",
        "configmaps",
        "-n",
        "default",
        // Only the test's own (the namespace also holds kube-root-ca.crt).
        "--field-selector=metadata.name=w1",
        "--watch",
        "--output-watch-events",
    ];
    args.extend_from_slice(output);
    let mut child = s
        .kubectl_cmd(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get --watch");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = move || {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("a watch event")
    };
    (child, next)
}

fn configmap_w1() -> &'static str {
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: w1\n  namespace: default\n"
}

#[test]
fn watch_sees_changes() {
    let s = Server::start();
    let (mut child, next) = watch_w1(
        &s,
        &["-o", "jsonpath={.type} {.object.metadata.name}{\"\\n\"}"],
    );
    s.kubectl_stdin(&["apply", "-f", "-"], configmap_w1());
    assert_eq!(next(), "ADDED w1");
    s.kubectl(&["label", "cm", "w1", "x=y"]);
    assert_eq!(next(), "MODIFIED w1");
    s.kubectl(&["delete", "cm", "w1"]);
    assert_eq!(next(), "DELETED w1");
    let _ = child.kill();
    let _ = child.wait();
}

/// Watches asking for Tables (kubectl's default output) get rows rendered once per event and
/// shared: two of them both see each change as its own row.
#[test]
fn table_watches_see_changes_as_rows() {
    let s = Server::start();
    let mut watches: Vec<_> = (0..2).map(|_| watch_w1(&s, &[])).collect();
    let row = |next: &dyn Fn() -> String, event: &str| {
        let line = next();
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[..2], [event, "w1"], "{line}");
    };
    s.kubectl_stdin(&["apply", "-f", "-"], configmap_w1());
    for (_, next) in &watches {
        assert!(next().starts_with("EVENT"), "a Table header first");
        row(next, "ADDED");
    }
    s.kubectl(&["label", "cm", "w1", "x=y"]);
    for (_, next) in &watches {
        row(next, "MODIFIED");
    }
    s.kubectl(&["delete", "cm", "w1"]);
    for (_, next) in &watches {
        row(next, "DELETED");
    }
    for (child, _) in &mut watches {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn unauthenticated_requests_get_401_except_health_and_version() {
    let s = Server::start();
    let server = format!("https://127.0.0.1:{}", s.port);
    let ca = s.data_dir().join("ca.crt");
    let anon = |args: &[&str]| {
        // A bearer token is not a credential this server accepts (and keeps kubectl from
        // prompting for a username).
        let mut full = vec![
            "--kubeconfig=/dev/null",
            "--server",
            &server,
            "--certificate-authority",
            path_str(&ca),
            "--token=not-a-credential",
        ];
        full.extend_from_slice(args);
        s.kubectl_cmd(&full)
            .env_remove("KUBECONFIG")
            .output()
            .expect("kubectl")
    };
    let out = anon(&["get", "--raw", "/healthz"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");
    let out = anon(&["get", "--raw", "/version"]);
    assert!(out.status.success());
    let out = anon(&["get", "--raw", "/api/v1/namespaces"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Unauthorized"), "{err}");
}

#[test]
fn kubectl_create_sends_protobuf_and_it_is_understood() {
    let s = Server::start();
    s.kubectl(&["create", "namespace", "pb"]);
    s.kubectl(&["create", "configmap", "c", "-n", "pb", "--from-literal=k=v"]);
    s.kubectl(&[
        "create",
        "secret",
        "generic",
        "s",
        "-n",
        "pb",
        "--from-literal=p=q",
    ]);
    s.kubectl(&[
        "create",
        "deployment",
        "d",
        "-n",
        "pb",
        "--image=nginx:1.27",
        "--replicas=2",
        "--port=80",
    ]);
    s.kubectl(&[
        "create",
        "service",
        "nodeport",
        "n",
        "-n",
        "pb",
        "--tcp=80:8080",
    ]);
    s.kubectl(&["create", "serviceaccount", "sa", "-n", "pb"]);
    s.kubectl(&[
        "create",
        "job",
        "j",
        "-n",
        "pb",
        "--image=busybox",
        "--",
        "echo",
        "hi",
    ]);
    s.kubectl(&["run", "p", "-n", "pb", "--image=nginx"]);
    assert_eq!(
        s.kubectl(&["get", "cm", "c", "-n", "pb", "-o", "jsonpath={.data.k}"]),
        "v"
    );
    assert_eq!(
        s.kubectl(&["get", "secret", "s", "-n", "pb", "-o", "jsonpath={.data.p}"]),
        "cQ=="
    );
    assert_eq!(
        s.kubectl(&["get", "deploy", "d", "-n", "pb", "-o", "jsonpath={.spec.replicas} {.spec.strategy.type} {.spec.template.spec.containers[0].ports[0].protocol}"]),
        "2 RollingUpdate TCP"
    );
    assert_eq!(
        s.kubectl(&[
            "get",
            "job",
            "j",
            "-n",
            "pb",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].command}"
        ]),
        r#"["echo","hi"]"#
    );
    let pods = s.kubectl(&["get", "pods", "-n", "pb", "-o", "wide"]);
    let header: Vec<&str> = pods.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED",
            "NODE",
            "READINESS",
            "GATES"
        ]
    );
    let row: Vec<&str> = pods.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["p", "0/1", "Pending", "0"]);
    let d = s.kubectl(&["describe", "pod", "p", "-n", "pb"]);
    assert!(
        d.lines()
            .any(|l| l.trim_start().starts_with("Image:") && l.trim_end().ends_with(" nginx")),
        "{d}"
    );
}

#[test]
fn events_are_served_by_both_event_apis() {
    let s = Server::start();
    let ev = r#"
apiVersion: events.k8s.io/v1
kind: Event
metadata: {name: pulled, namespace: default}
eventTime: "2026-01-01T00:00:00.000000Z"
reportingController: skiff-kubelet
reportingInstance: node-1
action: Pulling
reason: Pulled
regarding: {kind: Pod, name: web, namespace: default}
note: Successfully pulled image
type: Normal
"#;
    s.kubectl_stdin(&["apply", "-f", "-"], ev);
    let core = s.kubectl(&["get", "events", "-n", "default", "-o", "jsonpath={.items[0].involvedObject.name} {.items[0].message} {.items[0].reportingComponent}"]);
    assert_eq!(core, "web Successfully pulled image skiff-kubelet");
    let table = s.kubectl(&["get", "events", "-n", "default"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    );
    assert!(table.contains("pod/web"), "{table}");
    let new = s.kubectl(&[
        "get",
        "events.events.k8s.io",
        "pulled",
        "-n",
        "default",
        "-o",
        "jsonpath={.regarding.name} {.note}",
    ]);
    assert_eq!(new, "web Successfully pulled image");
}

#[test]
fn status_subresource_cascading_delete_and_initial_events() {
    let s = start_with_deletion_controllers();
    s.kubectl(&["create", "deployment", "web", "--image=nginx:1.27"]);
    let uid = s.kubectl(&["get", "deploy", "web", "-o", "jsonpath={.metadata.uid}"]);
    let rs = |name: &str, uid: &str| {
        format!(
            "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata:\n  name: {name}\n  namespace: default\n  ownerReferences:\n  - {{apiVersion: apps/v1, kind: Deployment, name: web, uid: {uid}, controller: true}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{containers: [{{name: nginx, image: nginx:1.27}}]}}\n"
        )
    };
    s.kubectl_stdin(&["apply", "-f", "-"], &rs("web-1", &uid));
    // The status subresource changes status only; the main resource ignores status.
    s.kubectl(&[
        "patch",
        "deploy",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":1,"readyReplicas":1},"spec":{"replicas":5}}"#,
    ]);
    assert_eq!(
        s.kubectl(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.status.readyReplicas} {.spec.replicas} {.metadata.generation}"
        ]),
        "1 1 1"
    );
    s.kubectl(&[
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        r#"{"status":{"readyReplicas":9}}"#,
    ]);
    assert_eq!(
        s.kubectl(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.status.readyReplicas}"
        ]),
        "1"
    );
    // Orphan keeps the dependent and drops its owner reference; background deletes it.
    s.kubectl(&["delete", "deploy", "web", "--cascade=orphan"]);
    assert_eq!(
        s.kubectl(&[
            "get",
            "rs",
            "web-1",
            "-o",
            "jsonpath={.metadata.ownerReferences}"
        ]),
        ""
    );
    s.kubectl(&["create", "deployment", "web", "--image=nginx:1.27"]);
    let uid = s.kubectl(&["get", "deploy", "web", "-o", "jsonpath={.metadata.uid}"]);
    s.kubectl_stdin(&["apply", "-f", "-"], &rs("web-2", &uid));
    // Background: the Deployment goes at once, the garbage collector takes its dependent.
    s.kubectl(&["delete", "deploy", "web"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while s.kubectl_output(&["get", "rs", "web-2"]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "web-2 was not collected"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    s.kubectl(&["get", "rs", "web-1"]);

    // A watch list: the initial state, then a bookmark marking its end.
    let out = s.kubectl(&["get", "--raw", "/apis/apps/v1/namespaces/default/replicasets?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1"]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "ADDED");
    assert_eq!(lines[0]["object"]["metadata"]["name"], "web-1");
    assert_eq!(lines[1]["type"], "BOOKMARK");
    assert_eq!(
        lines[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
}

#[test]
fn server_side_apply_of_a_deployment_merges_lists_by_key_and_sees_scale() {
    let s = Server::start();
    let full = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: ssa, namespace: default}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: ssa}}\n  template:\n    metadata: {labels: {app: ssa}}\n    spec:\n      containers:\n      - {name: a, image: nginx:1.27, env: [{name: X, value: \"1\"}, {name: Z, value: \"2\"}]}\n      - {name: b, image: busybox}\n";
    s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], full);
    let fewer = full
        .replace(", {name: Z, value: \"2\"}", "")
        .replace("      - {name: b, image: busybox}\n", "");
    s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &fewer);
    assert_eq!(
        s.kubectl(&["get", "deploy", "ssa", "-o", "jsonpath={.spec.template.spec.containers[*].name} {.spec.template.spec.containers[0].env[*].name}"]),
        "a X"
    );
    // `kubectl scale` takes .spec.replicas (manager "kubectl", subresource "scale").
    s.kubectl(&["scale", "deploy", "ssa", "--replicas=4"]);
    let err = s.kubectl_err(&["apply", "--server-side", "-f", "-"], Some(&fewer));
    assert!(
        err.contains(
            r#"conflict with "kubectl" with subresource "scale" using apps/v1: .spec.replicas"#
        ),
        "{err}"
    );
    s.kubectl_stdin(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        &fewer,
    );
    assert_eq!(
        s.kubectl(&["get", "deploy", "ssa", "-o", "jsonpath={.spec.replicas}"]),
        "2"
    );
}

#[test]
fn dual_stack_services() {
    let s = Server::start_with(&["--service-cidr", "10.96.0.0/16,fd00:10:96::/108"]);
    let svc = |name: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n{extra}  ports:\n  - port: 80\n"
        )
    };
    let spec = |name: &str| -> serde_json::Value {
        let out = s.kubectl(&["get", "svc", name, "-o", "json"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["spec"].clone()
    };
    // Asked for: one address per family, the IPv6 one as requested.
    let dual = svc(
        "dual",
        "  ipFamilyPolicy: RequireDualStack\n  clusterIPs: [10.96.0.50, \"fd00:10:96::50\"]\n",
    );
    s.kubectl_stdin(&["apply", "-f", "-"], &dual);
    let d = spec("dual");
    assert_eq!(d["clusterIP"], "10.96.0.50");
    assert_eq!(
        d["clusterIPs"],
        serde_json::json!(["10.96.0.50", "fd00:10:96::50"])
    );
    assert_eq!(d["ipFamilies"], serde_json::json!(["IPv4", "IPv6"]));
    // Not asked for: the primary family alone.
    s.kubectl_stdin(&["apply", "-f", "-"], &svc("single", ""));
    assert_eq!(spec("single")["ipFamilies"], serde_json::json!(["IPv4"]));
    // The IPv6 address is held until the Service goes, then free again.
    let taken = svc(
        "taken",
        "  ipFamilies: [IPv6]\n  clusterIP: \"fd00:10:96::50\"\n",
    );
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&taken));
    assert!(err.contains("provided IP is already allocated"), "{err}");
    let outside = svc(
        "outside",
        "  ipFamilies: [IPv6]\n  clusterIP: \"fd00:10:97::1\"\n",
    );
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&outside));
    assert!(
        err.contains("The range of valid IPs is fd00:10:96::/108"),
        "{err}"
    );
    s.kubectl(&["delete", "svc", "dual"]);
    s.kubectl_stdin(&["apply", "-f", "-"], &taken);
    assert_eq!(
        spec("taken")["clusterIPs"],
        serde_json::json!(["fd00:10:96::50"])
    );
    // A single-stack server refuses RequireDualStack as kube-apiserver does.
    let v4 = Server::start();
    let err = v4.kubectl_err(
        &["apply", "-f", "-"],
        Some(&svc("dual", "  ipFamilyPolicy: RequireDualStack\n")),
    );
    assert!(
        err.contains("spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services"),
        "{err}"
    );
}
