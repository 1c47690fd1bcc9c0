//! kubectl 1.32 reaching into pods through the API server, which proxies to the node's kubelet
//! with its kubelet-client certificate: `logs` (tail, previous, follow), `exec` (exit codes,
//! piped stdin, a terminal), `attach`, `port-forward` (SPDY, 100 MB checked) and
//! `get --raw …/nodes/NAME/proxy/…` (and the kubelet's `/run`), and `top` (metrics.k8s.io).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Node;
use serde_json::Value;

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or_default()
}

fn restart_count(p: &Value, container: &str) -> i64 {
    p["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == container)
        .and_then(|c| c["restartCount"].as_i64())
        .unwrap_or(0)
}

fn tick_numbers(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect()
}

/// A pod with a ticking `main` and a `second` that exits 1 after a second (and restarts).
fn logger_pod(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  containers:
  - name: main
    image: busybox
    imagePullPolicy: Never
    command: ["sh", "-c", "echo one; sleep 0.1; echo two >&2; sleep 0.1; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"]
  - name: second
    image: busybox
    imagePullPolicy: Never
    command: ["sh", "-c", "echo started-$(cat /proc/sys/kernel/random/uuid); sleep 1; exit 1"]
"#
    )
}

/// kubectl's stderr when it failed, for assertions on its error messages.
fn kubectl_error(node: &Node, args: &[&str]) -> String {
    let out = node.kubectl_output(args, None);
    assert!(
        !out.status.success(),
        "kubectl {} succeeded",
        args.join(" ")
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Lines a child prints, as they come, through a channel fed by a reader thread.
fn line_reader(out: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn kubectl_logs_and_exec() {
    let node = Node::start();
    node.apply(&logger_pod("logger"));
    node.wait_pod(
        "logger",
        "a restart of `second`",
        Duration::from_secs(60),
        |p| phase(p) == "Running" && restart_count(p, "second") >= 1,
    );

    // Logs: all of it, the tail, the previous run.
    let all = node.kubectl(&["logs", "logger", "-c", "main"]);
    assert!(all.starts_with("one\ntwo\ntick 1\n"), "{all}");
    let tail = node.kubectl(&["logs", "logger", "-c", "main", "--tail=2"]);
    assert_eq!(tick_numbers(&tail).len(), 2, "{tail}");
    assert_eq!(tail.lines().count(), 2, "{tail}");
    let stamped = node.kubectl(&["logs", "logger", "-c", "main", "--tail=1", "--timestamps"]);
    let (ts, line) = stamped.trim_end().split_once(' ').unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
        "{stamped}"
    );
    assert!(line.starts_with("tick "), "{stamped}");
    assert_eq!(
        node.kubectl(&["logs", "logger", "-c", "main", "--limit-bytes=5"]),
        "one\nt"
    );
    let recent = node.kubectl(&["logs", "logger", "-c", "main", "--since=1s"]);
    assert!(!recent.contains("one"), "{recent}");
    let previous = node.kubectl(&["logs", "logger", "-c", "second", "--previous"]);
    assert!(previous.starts_with("started-"), "{previous}");
    assert_ne!(previous, node.kubectl(&["logs", "logger", "-c", "second"]));
    // The first container when none is named, as kubectl chooses it.
    assert!(node.kubectl(&["logs", "logger"]).starts_with("one\n"));

    // Errors as kubectl shows them.
    let e = kubectl_error(&node, &["logs", "logger", "-c", "nosuch"]);
    assert!(
        e.contains("container nosuch is not valid for pod logger"),
        "{e}"
    );
    let e = kubectl_error(&node, &["logs", "logger", "-c", "main", "--previous"]);
    assert!(
        e.contains(r#"previous terminated container "main" in pod "logger" not found"#),
        "{e}"
    );
    let e = kubectl_error(&node, &["logs", "nosuch"]);
    assert!(e.contains(r#"pods "nosuch" not found"#), "{e}");

    // Follow: new lines arrive while kubectl runs.
    let mut follow = node
        .kubectl_command(&["logs", "-f", "logger", "-c", "main", "--tail=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl logs -f");
    let lines = line_reader(follow.stdout.take().unwrap());
    let mut ticks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while ticks.len() < 5 {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => ticks.extend(tick_numbers(&line)),
            Err(_) => panic!("kubectl logs -f stalled after {ticks:?}"),
        }
    }
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");
    let _ = follow.kill();
    let _ = follow.wait();

    // Exec: stdout and stderr apart, the exit code as kubectl's.
    let out = node.kubectl_output(
        &[
            "exec",
            "logger",
            "-c",
            "main",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("err\n"),
        "{out:?}"
    );
    assert_eq!(
        node.kubectl(&["exec", "logger", "-c", "main", "--", "echo", "hi"]),
        "hi\n"
    );
    // Piped stdin, closed at its end.
    let piped = node.kubectl_in(
        &[
            "exec",
            "-i",
            "logger",
            "-c",
            "main",
            "--",
            "sh",
            "-c",
            "cat; echo done",
        ],
        Some("piped-data\n"),
    );
    assert_eq!(piped, "piped-data\ndone\n");
    let e = kubectl_error(&node, &["exec", "logger", "-c", "nosuch", "--", "true"]);
    assert!(
        e.contains("container nosuch is not valid for pod logger"),
        "{e}"
    );

    // A terminal: kubectl under a pty the test drives, its size passed to the command.
    let terminal = exec_in_terminal(
        &node,
        &[
            "exec",
            "-it",
            "logger",
            "-c",
            "main",
            "--",
            "sh",
            "-c",
            "[ -t 0 ] && echo is-a-tty; stty size; exit 7",
        ],
    );
    assert!(
        terminal.output.contains("is-a-tty") && terminal.output.contains("31 97"),
        "{:?}",
        terminal.output
    );
    assert_eq!(terminal.code, Some(7));

    // Attach: the output from now on, stdout and stderr, until the container exits with its
    // code (output only: the container has no `stdin: true`; see kubectl_node_tools.rs).
    node.apply(&common::busybox_pod(
        "counter",
        "Never",
        "sleep 2; i=0; while [ $i -lt 15 ]; do i=$((i+1)); echo att $i; sleep 0.2; done; \
         echo bye >&2; exit 5",
        "",
    ));
    node.wait_pod("counter", "Running", Duration::from_secs(60), |p| {
        phase(p) == "Running"
    });
    let out = node.kubectl_output(&["attach", "counter"], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let seen: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("att ")?.parse().ok())
        .collect();
    assert!(
        seen.len() >= 5 && seen.windows(2).all(|w| w[1] == w[0] + 1) && seen.last() == Some(&15),
        "{stdout} {stderr}"
    );
    assert!(stderr.contains("bye"), "{stderr}");
    assert_eq!(out.status.code(), Some(5), "{stdout} {stderr}");
}

struct TerminalRun {
    output: String,
    code: Option<i32>,
}

/// Runs kubectl with a pty of 31 rows and 97 columns as its stdin, stdout and stderr.
fn exec_in_terminal(node: &Node, args: &[&str]) -> TerminalRun {
    let size = nix::pty::Winsize {
        ws_row: 31,
        ws_col: 97,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).expect("a pty");
    let mut child = node
        .kubectl_command(args)
        .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave.try_clone().unwrap()))
        .spawn()
        .expect("kubectl under a pty");
    drop(pty.slave);
    let master = std::fs::File::from(pty.master);
    let fd = master.as_raw_fd();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut master = master;
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the last holder of the slave (kubectl) is gone.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        let _ = tx.send(String::from_utf8_lossy(&all).into_owned());
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("kubectl status") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "kubectl {} under a pty did not finish (fd {fd})",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the pty's output");
    TerminalRun {
        output,
        code: status.code(),
    }
}

/// The sha256 of what `wget` reads from `url`, fetched inside the node's namespace.
fn fetched_sha256(node: &Node, url: &str) -> String {
    let out = node
        .netns
        .command("sh")
        .args(["-c", &format!("busybox wget -q -O - {url} | sha256sum")])
        .output()
        .expect("wget | sha256sum");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn kubectl_port_forward_and_node_proxy() {
    let node = Node::start();
    node.apply(&common::busybox_pod(
        "web",
        "Always",
        "mkdir -p /www && echo hello-from-pod > /www/index.html && \
         head -c 100000000 /dev/urandom > /www/big && sha256sum /www/big > /www/big.sum && \
         exec httpd -f -p 8080 -h /www",
        "",
    ));
    node.wait_pod("web", "Running", Duration::from_secs(60), |p| {
        phase(p) == "Running"
    });

    // The node proxy: the kubelet's own API through the API server.
    let raw = node.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{}/proxy/stats/summary", node.name),
    ]);
    let summary: Value = serde_json::from_str(&raw).expect("a stats summary");
    assert_eq!(summary["node"]["nodeName"], node.name.as_str(), "{summary}");
    assert!(
        summary["pods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["podRef"]["name"] == "web"),
        "{summary}"
    );
    let healthz = node.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{}/proxy/healthz", node.name),
    ]);
    assert_eq!(healthz, "ok");
    // The kubelet's /run: a command's output in one answer.
    let ran = node.kubectl_in(
        &[
            "create",
            "--raw",
            &format!(
                "/api/v1/nodes/{}/proxy/run/default/web/main?cmd=cat+/www/index.html",
                node.name
            ),
            "-f",
            "-",
        ],
        Some(""),
    );
    assert_eq!(ran, "hello-from-pod\n");
    let e = kubectl_error(
        &node,
        &["get", "--raw", "/api/v1/nodes/nosuch/proxy/healthz"],
    );
    assert!(e.contains("not found"), "{e}");

    // Port-forward (once httpd listens: kubectl ends the session on a refused connection);
    // kubectl picks the local port and says which.
    node.wait_for("httpd and the big file", Duration::from_secs(60), |n| {
        n.kubectl_ok(&["exec", "web", "--", "test", "-s", "/www/big.sum"])
    });
    let mut forward = node
        .kubectl_command(&["port-forward", "pod/web", ":8080"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl port-forward");
    let lines = line_reader(forward.stdout.take().unwrap());
    let errors = line_reader(forward.stderr.take().unwrap());
    let port = loop {
        match lines.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => {
                // "Forwarding from 127.0.0.1:PORT -> 8080"
                if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                    break rest.split_whitespace().next().unwrap().to_string();
                }
            }
            Err(_) => {
                let _ = forward.kill();
                let said: Vec<String> = errors.try_iter().collect();
                panic!("kubectl port-forward never listened: {said:?}");
            }
        }
    };
    let out = node
        .netns
        .command("busybox")
        .args([
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://127.0.0.1:{port}/index.html"),
        ])
        .output()
        .expect("wget");
    let said: Vec<String> = errors.try_iter().collect();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello-from-pod\n",
        "{out:?} {said:?}"
    );
    // 100 MB intact, twice over the same session.
    let expected = node.kubectl(&["exec", "web", "--", "cat", "/www/big.sum"]);
    let expected = expected.split_whitespace().next().unwrap().to_string();
    let started = Instant::now();
    assert_eq!(
        fetched_sha256(&node, &format!("http://127.0.0.1:{port}/big")),
        expected
    );
    eprintln!(
        "100 MB through kubectl port-forward in {:?}",
        started.elapsed()
    );
    assert_eq!(
        fetched_sha256(&node, &format!("http://127.0.0.1:{port}/big")),
        expected
    );
    let _ = forward.kill();
    let _ = forward.wait();

    // metrics.k8s.io from the kubelets' summaries (a CPU rate needs two scrapes).
    node.wait_for("kubectl top pod", Duration::from_secs(40), |n| {
        n.kubectl_ok(&["top", "pod", "web"])
    });
    let top = node.kubectl(&["top", "pod", "web", "--containers"]);
    let row = top
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("{top}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "main", "{top}");
    assert!(cols[2].ends_with('m') && cols[3].ends_with("Mi"), "{top}");
    let top = node.kubectl(&["top", "node"]);
    assert!(top.lines().any(|l| l.starts_with(&node.name)), "{top}");
}
