//! Probes and lifecycle hooks on a node with a real `skiff server` and real busybox containers:
//! readiness (httpGet) gating Ready and the EndpointSlice, startup (tcpSocket) holding readiness
//! back, liveness (exec) restarting a container after its preStop hook, a failing postStart hook,
//! and activeDeadlineSeconds.

mod common;

use std::time::Duration;

use common::Node;
use serde_json::Value;

/// A busybox pod running `script`, with `spec_extra` under the pod spec and `container_extra`
/// under its container (both YAML, already indented).
fn pod(name: &str, policy: &str, script: &str, spec_extra: &str, container_extra: &str) -> String {
    let script = serde_json::to_string(script).expect("script");
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  restartPolicy: {policy}
{spec_extra}  containers:
  - name: main
    image: busybox
    imagePullPolicy: Never
    command: ["sh", "-c", {script}]
{container_extra}"#
    )
}

/// A node whose pod network is ready (its podCIDR assigned), so that pods start at once rather
/// than after a sandbox back-off.
fn start_node() -> Node {
    let node = Node::start();
    node.wait_for("the pod network", Duration::from_secs(30), |n| {
        n.kubelet_log().contains("pod network ready")
    });
    node
}

fn status(p: &Value) -> &Value {
    &p["status"]["containerStatuses"][0]
}

fn condition<'a>(p: &'a Value, kind: &str) -> &'a str {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
}

fn running(p: &Value) -> bool {
    p["status"]["phase"] == "Running" && status(p)["state"]["running"].is_object()
}

/// The (reason, message) of the events about the pod `name`.
fn events(node: &Node, name: &str) -> Vec<(String, String)> {
    let list = node
        .get_json(&[
            "events",
            "--field-selector",
            &format!("involvedObject.name={name}"),
        ])
        .unwrap_or_default();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("reason"), s("message"))
        })
        .collect()
}

fn has_event(node: &Node, name: &str, reason: &str, message_part: &str) -> bool {
    events(node, name)
        .iter()
        .any(|(r, m)| r == reason && m.contains(message_part))
}

/// The readiness of the endpoints in the Service `name`'s EndpointSlices.
fn slice_readiness(node: &Node, name: &str) -> Vec<bool> {
    let list = node
        .get_json(&[
            "endpointslices",
            "-l",
            &format!("kubernetes.io/service-name={name}"),
        ])
        .unwrap_or_default();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| e["conditions"]["ready"] == true)
        .collect()
}

/// One node (one server and kubelet: lean, and no two nodes start at once) runs every case.
#[test]
fn probes_hooks_and_deadline() {
    let node = start_node();
    // Serves /ready from 3 s to 13 s after it starts.
    node.apply(&pod(
        "web",
        "Always",
        "mkdir -p /www; httpd -p 8080 -h /www; sleep 3; echo ok > /www/ready; sleep 10; \
         rm /www/ready; while true; do sleep 1; done",
        "",
        r#"    ports: [{name: http, containerPort: 8080}]
    readinessProbe:
      httpGet: {path: /ready, port: http, httpHeaders: [{name: X-Probe, value: "yes"}]}
      periodSeconds: 1
      failureThreshold: 1
"#,
    ));
    node.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"#,
    );
    // Listens on 9000 only after 4 s: its startup probe (tcpSocket) holds readiness back.
    node.apply(&pod(
        "slow-start",
        "Always",
        "sleep 4; mkdir -p /www; httpd -p 9000 -h /www; while true; do sleep 1; done",
        "",
        r#"    startupProbe:
      tcpSocket: {port: 9000}
      periodSeconds: 1
      failureThreshold: 30
    readinessProbe:
      exec: {command: ["true"]}
      periodSeconds: 1
"#,
    ));

    // Healthy for 2 s; its preStop hook leaves a file that its SIGTERM handler reports as the
    // termination message.
    node.apply(&pod(
        "sick",
        "Always",
        "trap 'cat /tmp/hook > /dev/termination-log; exit 0' TERM; touch /tmp/healthy; sleep 2; \
         rm /tmp/healthy; while true; do sleep 0.2; done",
        "  terminationGracePeriodSeconds: 10\n",
        r#"    livenessProbe:
      exec: {command: ["cat", "/tmp/healthy"]}
      periodSeconds: 1
      failureThreshold: 2
    lifecycle:
      preStop:
        exec: {command: ["sh", "-c", "echo prestop-ran > /tmp/hook"]}
"#,
    ));
    // Its postStart hook fails: the container is killed and, restartPolicy Never, the pod fails.
    node.apply(&pod(
        "bad-hook",
        "Never",
        "while true; do sleep 0.2; done",
        "  terminationGracePeriodSeconds: 1\n",
        r#"    lifecycle:
      postStart:
        exec: {command: ["sh", "-c", "echo no; exit 3"]}
"#,
    ));
    // Its readiness probe outlives its timeout every time: each run is killed, with the process
    // it started, and counts as a failure.
    let marker = format!("sleep {}", 7000 + std::process::id() % 1000);
    node.apply(&pod(
        "slow-probe",
        "Always",
        "while true; do sleep 1; done",
        "  terminationGracePeriodSeconds: 1\n",
        &format!(
            r#"    readinessProbe:
      exec: {{command: ["sh", "-c", "echo run >> /tmp/runs; {marker}"]}}
      timeoutSeconds: 1
      periodSeconds: 1
      failureThreshold: 1
"#
        ),
    ));
    node.apply(&pod(
        "deadline",
        "Always",
        "trap 'exit 0' TERM; while true; do sleep 0.2; done",
        "  activeDeadlineSeconds: 4\n",
        "",
    ));

    let limit = Duration::from_secs(40);
    let p = node.wait_pod("web", "running, not ready", limit, running);
    assert_eq!(status(&p)["ready"], false, "{}", status(&p));
    let p = node.wait_pod("slow-start", "running", limit, running);
    assert_eq!(status(&p)["started"], false, "{}", status(&p));
    assert_eq!(status(&p)["ready"], false, "{}", status(&p));
    assert_eq!(condition(&p, "Ready"), "False");

    let p = node.wait_pod("web", "Ready", limit, |p| condition(p, "Ready") == "True");
    assert_eq!(status(&p)["ready"], true);
    assert_eq!(condition(&p, "ContainersReady"), "True");
    node.wait_for("the endpoint to be ready", limit, |n| {
        slice_readiness(n, "web") == [true]
    });

    let p = node.wait_pod("slow-start", "started and ready", limit, |p| {
        status(p)["started"] == true && condition(p, "Ready") == "True"
    });
    assert_eq!(status(&p)["ready"], true);
    assert_eq!(status(&p)["restartCount"], 0, "{}", status(&p));

    let p = node.wait_pod("sick", "restarted", limit, |p| {
        status(p)["restartCount"].as_i64() >= Some(1)
    });
    let last = &status(&p)["lastState"]["terminated"];
    // preStop ran before SIGTERM, which the container handled (exit 0).
    assert_eq!(
        last["message"].as_str().map(str::trim),
        Some("prestop-ran"),
        "{last}"
    );
    assert_eq!(last["exitCode"], 0, "{last}");
    assert!(has_event(
        &node,
        "sick",
        "Unhealthy",
        "Liveness probe failed: cat: can't open '/tmp/healthy'"
    ));
    assert!(has_event(
        &node,
        "sick",
        "Killing",
        "Container main failed liveness probe, will be restarted"
    ));

    let p = node.wait_pod("bad-hook", "Failed", limit, |p| {
        p["status"]["phase"] == "Failed"
    });
    let t = &status(&p)["state"]["terminated"];
    assert_ne!(t["exitCode"], 0, "{t}");
    assert!(has_event(
        &node,
        "bad-hook",
        "FailedPostStartHook",
        "Exec lifecycle hook"
    ));

    let p = node.wait_pod("deadline", "Failed", limit, |p| {
        p["status"]["phase"] == "Failed"
    });
    assert_eq!(p["status"]["reason"], "DeadlineExceeded");
    assert_eq!(condition(&p, "Ready"), "False");
    assert!(
        status(&p)["state"]["terminated"].is_object(),
        "{}",
        status(&p)
    );
    assert!(has_event(&node, "deadline", "DeadlineExceeded", "deadline"));

    // The file goes away: the pod and its endpoint become unready.
    let p = node.wait_pod("web", "unready again", limit, |p| {
        condition(p, "Ready") == "False"
    });
    assert_eq!(status(&p)["ready"], false);
    assert_eq!(condition(&p, "ContainersReady"), "False");
    assert_eq!(status(&p)["restartCount"], 0, "{}", status(&p));
    node.wait_for("the endpoint to be unready", limit, |n| {
        slice_readiness(n, "web") == [false]
    });
    assert!(has_event(
        &node,
        "web",
        "Unhealthy",
        "Readiness probe failed: HTTP probe failed with statuscode: 404"
    ));

    // The runs the probe began, counted in the container's /tmp/runs.
    let p = node.wait_pod("slow-probe", "running", limit, running);
    let id = status(&p)["containerID"].as_str().unwrap();
    let runs = node
        .container_root(id.trim_start_matches("skiff://"))
        .join("tmp/runs");
    node.wait_for("three timed-out probes", limit, |_| {
        std::fs::read_to_string(&runs).is_ok_and(|t| t.lines().count() >= 3)
    });
    // At most the run in flight (its sh and sleep) is alive: none was left behind.
    let alive = processes_with(&marker);
    assert!(
        alive <= 2,
        "{alive} processes of timed-out probes are alive"
    );
    let p = node.pod("slow-probe").unwrap();
    assert_eq!(condition(&p, "Ready"), "False");
    assert!(running(&p), "{}", status(&p));
    assert!(has_event(
        &node,
        "slow-probe",
        "Unhealthy",
        "Readiness probe failed: command timed out after 1s"
    ));
}

/// How many of the host's processes have `text` in their command line.
fn processes_with(text: &str) -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).replace('\0', " ").contains(text))
        .count()
}
