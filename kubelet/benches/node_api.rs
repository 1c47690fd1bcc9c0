//! What the node API's proxying costs: `kubectl exec POD -- true` round trips (kubectl → API
//! server → kubelet → runtime) against `skiff-runc exec` run directly, and 1 GiB read through
//! `kubectl port-forward` (HTTP from the pod's busybox httpd) against a direct TCP connection to
//! the pod's address, on a real
//! `skiff server` and kubelet in a network namespace of their own (the integration tests'
//! harness). Prints a table; asserts nothing about time.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Node;

const ROUNDS: usize = 40;
const BYTES: u64 = 1 << 30;
const PORT: u16 = 9000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// p50 and p99 of `ROUNDS` runs of `run` (after one warm-up).
fn latencies(mut run: impl FnMut()) -> (Duration, Duration) {
    run();
    let mut all: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed()
        })
        .collect();
    all.sort();
    (percentile(&all, 0.5), percentile(&all, 0.99))
}

/// MB/s of fetching the pod's 1 GiB file over HTTP from `addr`, connecting from inside the
/// node's network namespace (setns on this thread only).
fn throughput(netns: &str, addr: String) -> f64 {
    let path = format!("/var/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("the node's namespace");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let started = Instant::now();
        let mut conn = TcpStream::connect(&addr).expect("connecting");
        conn.write_all(b"GET /big HTTP/1.0\r\n\r\n")
            .expect("the request");
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) => panic!("reading from {addr}: {e}"),
            }
        }
        // The body and a few hundred bytes of headers.
        assert!(total >= BYTES, "short read from {addr}: {total}");
        BYTES as f64 / 1e6 / started.elapsed().as_secs_f64()
    })
    .join()
    .expect("the reading thread")
}

fn main() {
    let node = Node::start();
    // httpd serving a sparse 1 GiB file (nothing on disk).
    node.apply(&common::busybox_pod(
        "bench",
        "Always",
        &format!(
            "mkdir -p /www && truncate -s {BYTES} /www/big && exec httpd -f -p {PORT} -h /www"
        ),
        "",
    ));
    let pod = node.wait_pod("bench", "Running", Duration::from_secs(60), |p| {
        p["status"]["phase"] == "Running"
    });
    let pod_ip = pod["status"]["podIP"]
        .as_str()
        .expect("a pod IP")
        .to_string();
    let id = node
        .container_dirs()
        .iter()
        .find_map(|d| {
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(d.join("meta.json")).ok()?).ok()?;
            (meta["name"] == "main").then(|| meta["id"].as_str().map(str::to_string))?
        })
        .expect("the container's id");

    let runc = common::binary("skiff-runc", "cargo build -p skiff-runtime");
    let (direct_p50, direct_p99) = latencies(|| {
        let ok = Command::new(&runc)
            .arg("--root")
            .arg(node.run_dir().join("runtime"))
            .args(["exec", &id, "true"])
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "skiff-runc exec failed");
    });
    let (kubectl_p50, kubectl_p99) = latencies(|| {
        assert!(node.kubectl_ok(&["exec", "bench", "--", "true"]));
    });

    let direct = throughput(&node.netns.name, format!("{pod_ip}:{PORT}"));
    let mut forward = node
        .kubectl_command(&["port-forward", "pod/bench", &format!(":{PORT}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl port-forward");
    let mut lines = BufReader::new(forward.stdout.take().unwrap()).lines();
    let local = loop {
        let line = lines
            .next()
            .expect("kubectl port-forward said nothing")
            .unwrap();
        if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    std::thread::sleep(Duration::from_millis(500));
    let forwarded = throughput(&node.netns.name, format!("127.0.0.1:{local}"));
    let _ = forward.kill();
    let _ = forward.wait();

    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    println!();
    println!("| path | exec `true` p50 | exec `true` p99 | 1 GiB read |");
    println!("|---|---|---|---|");
    println!(
        "| kubectl through the API server and kubelet | {} | {} | {forwarded:.0} MB/s |",
        ms(kubectl_p50),
        ms(kubectl_p99)
    );
    println!(
        "| direct (skiff-runc exec; TCP to the pod IP) | {} | {} | {direct:.0} MB/s |",
        ms(direct_p50),
        ms(direct_p99)
    );
    println!("({ROUNDS} exec rounds each; binaries of this build's profile)");
}
