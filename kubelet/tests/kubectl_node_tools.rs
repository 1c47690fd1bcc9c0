//! kubectl 1.32's tools built on the node API, through the API server to the kubelet: `cp` of a
//! directory both ways (tar through exec: piped stdin closed at its end, binary stdout).

mod common;

use std::path::Path;
use std::time::Duration;

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
