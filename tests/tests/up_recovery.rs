//! `skiff up` killed with SIGKILL (a crash): its pods keep running (each container's shim is a
//! process of its own), a new `skiff up` on the same data directory adopts them without
//! restarting them, and SIGINT then leaves nothing behind.

use std::time::Duration;

use skiff_tests::up::*;
use skiff_tests::*;

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: httpd
    image: busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
    readinessProbe:
      tcpSocket: {port: 80}
      periodSeconds: 1
"#;

#[test]
fn skiff_up_adopts_its_pods_after_kill9_and_stops_clean() {
    require_root();
    require("busybox", &["true"], "Debian package busybox-static");
    require("kubectl", &["version", "--client"], "kubectl 1.32 on PATH");
    require("iptables-save", &["--version"], "Debian package iptables");
    let skiff_bin = binary("skiff");
    binary("skiff-runc");
    binary("skiff-shim");
    let netns = Netns::new();
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path();
    let cgroup_root = format!("/ske-up-{}", std::process::id());
    let cluster = UpCluster { netns: &netns, dir };
    let _guard = NodeLeftoversGuard {
        netns: &netns,
        dir: dir.to_path_buf(),
        run_dir: cluster.data().join("run"),
        cgroup_root: cgroup_root.clone(),
    };
    for args in [
        &[
            "image",
            "build-busybox",
            "-o",
            "busybox.tar",
            "busybox:latest",
        ][..],
        &["image", "import", "--data-dir", "skiff-data", "busybox.tar"][..],
    ] {
        let out = cluster
            .command(&skiff_bin)
            .args(args)
            .output()
            .expect("skiff image");
        assert!(
            out.status.success(),
            "skiff {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let start = |log: &str| {
        cluster
            .command(&skiff_bin)
            .args([
                "up",
                "--data-dir",
                "skiff-data",
                "--cgroup-root",
                &cgroup_root,
            ])
            .stdout(std::fs::File::create(dir.join(format!("{log}.out"))).expect("stdout file"))
            .stderr(std::fs::File::create(dir.join(format!("{log}.log"))).expect("log file"))
            .spawn()
            .expect("starting skiff up")
    };

    let mut first = start("first");
    let first_log = || cluster.log("first.log");
    wait_until("the API server", Duration::from_secs(60), first_log, || {
        cluster.kubectl(&["get", "--raw", "/readyz"], None).0
    });
    let (applied, text) = cluster.kubectl(&["apply", "-f", "-"], Some(POD));
    assert!(applied, "{text}");
    let mut pods = None;
    wait_until(
        "the pod to be Ready",
        Duration::from_secs(90),
        first_log,
        || {
            pods = cluster.ready_pods("app=web", 1);
            pods.is_some()
        },
    );
    let _ = first.kill();
    let _ = first.wait();
    assert!(
        !leftovers(&netns, dir, &cgroup_root).is_empty(),
        "the pod's container outlives a crash of skiff up"
    );

    let mut second = start("second");
    let second_log = || cluster.log("second.log");
    let mut again = None;
    wait_until(
        "the pod to be Ready again",
        Duration::from_secs(90),
        second_log,
        || {
            again = cluster.ready_pods("app=web", 1);
            again.is_some()
        },
    );
    assert_eq!(again, pods, "the same pod");
    let restarts = cluster
        .get_json(&["pod", "web"])
        .and_then(|p| p["status"]["containerStatuses"][0]["restartCount"].as_i64());
    assert_eq!(
        restarts,
        Some(0),
        "the container was adopted, not restarted:\n{}",
        tail(&second_log(), 40)
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert_eq!(
        wait_child(&mut second, Duration::from_secs(90)),
        Some(true),
        "skiff up did not stop cleanly:\n{}",
        tail(&second_log(), 60)
    );
    let left = leftovers(&netns, dir, &cgroup_root);
    assert!(
        left.is_empty(),
        "skiff up left things behind: {left:#?}\nlog:\n{}",
        tail(&second_log(), 40)
    );
}
