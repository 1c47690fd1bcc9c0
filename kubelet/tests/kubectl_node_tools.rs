//! kubectl 1.32's tools built on the node API, through the API server to the kubelet: `cp` of a
//! directory both ways (tar through exec: piped stdin closed at its end, binary stdout), `debug`
//! with an ephemeral container in its target's process namespace (the `ephemeralcontainers`
//! subresource), also interactive under a terminal, `attach -i` feeding a container's stdin and
//! the kubelet's `/configz` (the attach through a node API on a port of its own, which the
//! kubelet reports in `status.daemonEndpoints`).

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Node;
use serde_json::Value;

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or_default()
}

/// A tree of text and binary files (every byte value, 1 MiB of pseudo-random data).
fn write_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("hello.txt"), "hello from the host\n").unwrap();
    let every_byte: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    std::fs::write(root.join("sub/bytes.bin"), every_byte).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(root.join("sub/deeper/noise.bin"), noise).unwrap();
}

/// Every file under `root` with its content, by relative path.
fn read_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn kubectl_cp_directory_both_ways() {
    let node = Node::start();
    node.apply(&common::busybox_pod("box", "Always", "exec sleep 3600", ""));
    node.wait_pod("box", "Running", Duration::from_secs(60), |p| {
        phase(p) == "Running"
    });
    let local = node.dir.path().join("cp-src");
    write_tree(&local);
    let sent = read_tree(&local);

    // Host to pod: kubectl runs `tar xmf - -C /tmp/in` with the archive on stdin.
    node.kubectl(&["cp", local.to_str().unwrap(), "box:/tmp/in"]);
    let listed = node.kubectl(&[
        "exec",
        "box",
        "--",
        "sh",
        "-c",
        "cd /tmp/in && find . -type f | sort",
    ]);
    assert_eq!(
        listed, "./hello.txt\n./sub/bytes.bin\n./sub/deeper/noise.bin\n",
        "{listed}"
    );
    // Binary data intact on exec's stdout.
    let in_pod = node.kubectl_output(
        &["exec", "box", "--", "cat", "/tmp/in/sub/deeper/noise.bin"],
        None,
    );
    assert!(in_pod.status.success(), "{:?}", in_pod.status);
    assert!(in_pod.stdout == std::fs::read(local.join("sub/deeper/noise.bin")).unwrap());

    // Pod to host: kubectl reads `tar cf - /tmp/in` from stdout.
    let back = node.dir.path().join("cp-back");
    node.kubectl(&["cp", "box:/tmp/in", back.to_str().unwrap()]);
    assert!(read_tree(&back) == sent, "the tree copied back differs");
}

/// kubectl's stderr when it failed.
fn kubectl_error(node: &Node, args: &[&str]) -> String {
    let out = node.kubectl_output(args, None);
    assert!(
        !out.status.success(),
        "kubectl {} succeeded",
        args.join(" ")
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The state of the pod's ephemeral container `name` (`running`, `terminated`…), if reported.
fn ephemeral_state<'a>(p: &'a Value, name: &str) -> Option<&'a Value> {
    p["status"]["ephemeralContainerStatuses"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| &c["state"])
}

#[test]
fn kubectl_debug_with_target_and_configz() {
    let node = Node::start();

    // The kubelet's configuration, as the real kubelet shows it.
    let raw = node.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{}/proxy/configz", node.name),
    ]);
    let configz: Value = serde_json::from_str(&raw).expect("configz JSON");
    let config = &configz["kubeletconfig"];
    assert_eq!(config["clusterDomain"], "cluster.local", "{configz}");
    assert_eq!(config["cgroupRoot"], node.cgroup_root.as_str(), "{configz}");
    assert_eq!(config["port"], 10250, "{configz}");
    assert_eq!(config["syncFrequency"], "2s", "{configz}");
    assert_eq!(
        config["podLogsDir"],
        node.logs_dir().to_string_lossy().as_ref(),
        "{configz}"
    );

    node.apply(&common::busybox_pod(
        "target",
        "Always",
        "exec sleep 3600",
        "",
    ));
    node.wait_pod("target", "Running", Duration::from_secs(60), |p| {
        phase(p) == "Running"
    });

    // spec.ephemeralContainers changes only through its subresource.
    let e = kubectl_error(
        &node,
        &[
            "patch",
            "pod",
            "target",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/spec/ephemeralContainers","value":[{"name":"x","image":"busybox"}]}]"#,
        ],
    );
    assert!(e.contains("Forbidden"), "{e}");

    // kubectl debug: an ephemeral container seeing the target's processes.
    node.kubectl(&[
        "debug",
        "target",
        "--image=busybox",
        "--image-pull-policy=Never",
        "--target=main",
        "-c",
        "debugger",
        "--",
        "sh",
        "-c",
        "ps -o pid,args",
    ]);
    node.wait_pod(
        "target",
        "the debug container to finish",
        Duration::from_secs(60),
        |p| ephemeral_state(p, "debugger").is_some_and(|s| s.get("terminated").is_some()),
    );
    let seen = node.kubectl(&["logs", "target", "-c", "debugger"]);
    let first = seen
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("1 "))
        .unwrap_or_else(|| panic!("no pid 1 in {seen}"));
    assert_eq!(first, "1 sleep 3600", "{seen}");

    // The subresource serves the pod; what is there may not change.
    let raw = node.kubectl(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/pods/target/ephemeralcontainers",
    ]);
    let pod: Value = serde_json::from_str(&raw).expect("the pod");
    assert_eq!(pod["spec"]["ephemeralContainers"][0]["name"], "debugger");
    assert_eq!(
        pod["spec"]["ephemeralContainers"][0]["targetContainerName"],
        "main"
    );
    let e = kubectl_error(
        &node,
        &[
            "patch",
            "pod",
            "target",
            "--subresource=ephemeralcontainers",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/spec/ephemeralContainers/0"}]"#,
        ],
    );
    assert!(e.contains("may not be removed"), "{e}");
    // Interactive: kubectl under a terminal the test drives, attached to a shell in a second
    // ephemeral container.
    let typed = run_in_terminal(
        &node,
        &[
            "debug",
            "-it",
            "target",
            "--image=busybox",
            "--image-pull-policy=Never",
            "--target=main",
            "-c",
            "shell",
            "--",
            "sh",
        ],
        "If you don't see a command prompt",
        "ps -o pid,args; exit 4\n",
    );
    assert!(typed.contains("1 sleep 3600"), "{typed}");
    // An ephemeral container is never restarted.
    std::thread::sleep(Duration::from_secs(2));
    let p = node.pod("target").unwrap();
    assert!(
        ephemeral_state(&p, "debugger").is_some_and(|s| s.get("terminated").is_some()),
        "{p}"
    );
}

/// Runs kubectl under a pty (its stdin, stdout and stderr), types `input` once `prompt` shows,
/// and returns all it printed once it exits.
fn run_in_terminal(node: &Node, args: &[&str], prompt: &str, input: &str) -> String {
    let pty = nix::pty::openpty(None, None).expect("a pty");
    let mut child = node
        .kubectl_command(args)
        .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave.try_clone().unwrap()))
        .spawn()
        .expect("kubectl under a pty");
    drop(pty.slave);
    let master = std::fs::File::from(pty.master);
    let mut writer = master.try_clone().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut master = master;
            let mut buf = [0u8; 4096];
            // EIO once the last holder of the slave (kubectl) is gone.
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let text = |seen: &Mutex<Vec<u8>>| String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !text(&seen).contains(prompt) {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!(
                "kubectl {} never showed {prompt:?}: {}",
                args.join(" "),
                text(&seen)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.write_all(input.as_bytes()).expect("typing");
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kubectl {} did not finish: {}", args.join(" "), text(&seen));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(writer);
    let _ = reader.join();
    text(&seen)
}

#[test]
fn kubectl_attach_with_stdin() {
    // A node API on another port than 10250: the kubelet reports it and the server uses it.
    let node = Node::start_with(&["--port", "10251"]);
    let reported = node.get_json(&["node", &node.name]).expect("the node");
    assert_eq!(
        reported["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10251,
        "{reported}"
    );
    node.apply(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: reader
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: busybox
    imagePullPolicy: Never
    stdin: true
    stdinOnce: true
    command: ["sh", "-c", "while read line; do echo got-$line; done; echo stdin-closed >&2; exit 3"]
"#,
    );
    node.wait_pod("reader", "Running", Duration::from_secs(60), |p| {
        phase(p) == "Running"
    });
    // Lines sent, then stdin closed at its end: the container reads both and its EOF.
    let out = node.kubectl_output(&["attach", "-i", "reader"], Some("hello\nworld\n"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout, "got-hello\ngot-world\n", "{stderr}");
    assert!(stderr.contains("stdin-closed"), "{stderr}");
    assert_eq!(out.status.code(), Some(3), "{stdout} {stderr}");
    node.wait_pod("reader", "Failed", Duration::from_secs(30), |p| {
        phase(p) == "Failed"
    });
}
