//! Image garbage collection by disk usage on a real node: the node's root directory (and so its
//! image store) is a 128 MiB tmpfs holding real images, two of them used by running pods. Once a
//! file pushes usage past `--image-gc-high-threshold`, the kubelet removes unused images, least
//! recently used first, just enough to get below `--image-gc-low-threshold`; the images the pods
//! use are kept although they were used longer ago. With `--image-gc-high-threshold 100` nothing
//! is collected even on a nearly full disk. When the unused images cannot bring usage below the
//! low threshold (here: every image is used by a running pod), the Node gets the kubelet's
//! Warning events, FreeDiskSpaceFailed once per period and ImageGCFailed from the second failure.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Node, busybox_pod};
use serde_json::Value;
use skiff_kubelet::image::ImageStore;
use skiff_kubelet::image::busybox::{BusyboxImage, ExtraFile};

const WAIT: Duration = Duration::from_secs(60);
const HIGH: u64 = 60;
const LOW: u64 = 50;
/// What the kubelet logs when it starts a collection.
const OVER_HIGH: &str = "over the high threshold";

/// (available, capacity) of the filesystem holding `dir`.
fn usage(dir: &Path) -> (u64, u64) {
    let s = nix::sys::statvfs::statvfs(dir).expect("statvfs");
    let frag = s.fragment_size();
    (s.blocks_available() * frag, s.blocks() * frag)
}

/// Imports `<name>:1`, busybox with 10 MiB of its own.
fn import(root: &Path, name: &str) {
    // Beside the root (in the node's own directory): tests running side by side import the
    // same names.
    let archive = root
        .parent()
        .expect("the node's directory")
        .join(format!("{name}.tar"));
    BusyboxImage {
        extra_files: vec![ExtraFile {
            path: format!("/{name}.bin"),
            contents: vec![0; 10 << 20],
            mode: 0o644,
        }],
        ..BusyboxImage::new(&format!("{name}:1"))
    }
    .write(&archive)
    .expect("building the image");
    ImageStore::open(root)
        .and_then(|store| store.import(&archive))
        .expect("importing the image");
    std::fs::remove_file(&archive).expect("removing the archive");
}

fn present(root: &Path, reference: &str) -> bool {
    ImageStore::open(root)
        .expect("image store")
        .lookup(reference)
        .is_ok()
}

/// A node whose root is a 128 MiB tmpfs holding `images` beside busybox, collecting images
/// every `period` between the thresholds, with no nodefs eviction threshold: only image
/// garbage collection frees the disk.
fn gc_node(period: &str, images: &[&str]) -> Node {
    let high = HIGH.to_string();
    let low = LOW.to_string();
    Node::start_with_root(
        &[
            "--eviction-hard",
            "memory.available<100Mi",
            "--image-gc-high-threshold",
            &high,
            "--image-gc-low-threshold",
            &low,
            "--image-gc-period",
            period,
            "--minimum-image-ttl-duration",
            "0s",
        ],
        |root| {
            let ok = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=128m", "skiff-image-gc-test"])
                .arg(root)
                .status()
                .expect("mount");
            assert!(ok.success(), "mounting a tmpfs on {}", root.display());
            for name in images {
                import(root, name);
            }
        },
    )
}

#[test]
fn unused_images_are_collected_least_recently_used_first_down_to_the_low_threshold() {
    let mut node = gc_node("1s", &["a", "b", "c", "d"]);
    let root = node.root_dir();
    // busybox and d are used by pods, before a, b and c are used (in that order): the two in
    // use are the least recently used.
    node.apply(&busybox_pod("idle", "Never", "sleep 3600", ""));
    node.apply(
        &busybox_pod("user", "Never", "sleep 3600", "").replace("image: busybox", "image: d:1"),
    );
    for name in ["idle", "user"] {
        node.wait_pod(name, "Running", WAIT, |p| p["status"]["phase"] == "Running");
    }
    let store = ImageStore::open(&root).expect("image store");
    for name in ["a:1", "b:1", "c:1"] {
        std::thread::sleep(Duration::from_millis(10));
        let id = store.lookup(name).expect("image").id;
        store.mark_used(&id).expect("marking the image used");
    }
    let size = store.lookup("a:1").expect("image").size;
    // Nothing is collected below the high threshold.
    let (available, capacity) = usage(&root);
    assert!(
        (capacity - available) * 100 / capacity < HIGH,
        "already {} of {capacity} bytes used",
        capacity - available
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(present(&root, "a:1"), "collected below the high threshold");

    // A file takes the disk past the high threshold, to where 1.5 images must go to get down
    // to the low one: a and b (the least recently used unused ones) go, c stays.
    let target_available = capacity * (100 - LOW) / 100 - size * 3 / 2;
    let filler = available - target_available;
    std::fs::write(root.join("filler"), vec![1u8; filler as usize]).expect("filling the disk");
    let (after_fill, _) = usage(&root);
    assert!(
        (capacity - after_fill) * 100 / capacity >= HIGH,
        "the filler left {after_fill} of {capacity} bytes"
    );
    node.wait_for("a:1 and b:1 collected", WAIT, |_| {
        !present(&root, "a:1") && !present(&root, "b:1")
    });
    std::thread::sleep(Duration::from_secs(2));
    for name in ["c:1", "d:1", "busybox"] {
        assert!(present(&root, name), "{name} was collected");
    }
    let (available, _) = usage(&root);
    assert!(
        (capacity - available) * 100 / capacity < LOW,
        "{available} of {capacity} bytes free after collection"
    );
    for name in ["idle", "user"] {
        let p = node.pod(name).expect("the pod");
        assert_eq!(p["status"]["phase"], "Running", "{name}: {}", p["status"]);
    }

    // --image-gc-high-threshold 100: a nearly full disk, and c is still kept.
    let collections = node.kubelet_log().matches(OVER_HIGH).count();
    node.kill9_kubelet();
    let high = HIGH.to_string();
    for arg in node.kubelet_args_mut().iter_mut() {
        if *arg == high {
            *arg = "100".to_string();
        }
    }
    node.start_kubelet();
    let (available, _) = usage(&root);
    let more = available - capacity / 20;
    std::fs::write(root.join("filler-2"), vec![1u8; more as usize]).expect("filling the disk");
    node.wait_pod("user", "Running after the restart", WAIT, |p| {
        p["status"]["phase"] == "Running"
    });
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        present(&root, "c:1"),
        "collected with the high threshold at 100"
    );
    assert_eq!(
        node.kubelet_log().matches(OVER_HIGH).count(),
        collections,
        "image garbage collection ran with --image-gc-high-threshold 100"
    );
}

/// The Node's events with `reason`, as `kubectl get events -A` lists them.
fn node_events(node: &Node, reason: &str) -> Vec<Value> {
    let selector = format!(
        "involvedObject.kind=Node,involvedObject.name={},reason={reason}",
        node.name
    );
    let list = node
        .get_json(&["events", "-A", "--field-selector", &selector])
        .unwrap_or_default();
    list["items"].as_array().cloned().unwrap_or_default()
}

/// How many times the events were recorded (repeats fold into one event's count).
fn total_count(events: &[Value]) -> u64 {
    events
        .iter()
        .map(|e| e["count"].as_u64().unwrap_or(1))
        .sum()
}

#[test]
fn images_in_use_cannot_be_freed_and_the_node_gets_free_disk_space_failed_events() {
    let period = Duration::from_secs(2);
    let node = gc_node("2s", &["a"]);
    let root = node.root_dir();
    // Both images on the node are held by running pods: none is eligible.
    node.apply(&busybox_pod("idle", "Never", "sleep 3600", ""));
    node.apply(
        &busybox_pod("user", "Never", "sleep 3600", "").replace("image: busybox", "image: a:1"),
    );
    for name in ["idle", "user"] {
        node.wait_pod(name, "Running", WAIT, |p| p["status"]["phase"] == "Running");
    }
    std::thread::sleep(period * 2);
    assert!(
        node_events(&node, "FreeDiskSpaceFailed").is_empty(),
        "FreeDiskSpaceFailed below the high threshold"
    );

    // Past the high threshold, with nothing to free.
    let (available, capacity) = usage(&root);
    let filler = available - capacity * (100 - HIGH) / 100 + (4 << 20);
    std::fs::write(root.join("filler"), vec![1u8; filler as usize]).expect("filling the disk");
    let (after_fill, _) = usage(&root);
    assert!((capacity - after_fill) * 100 / capacity >= HIGH);
    node.wait_for("a FreeDiskSpaceFailed event on the Node", WAIT, |n| {
        !node_events(n, "FreeDiskSpaceFailed").is_empty()
    });
    let first = node_events(&node, "FreeDiskSpaceFailed").remove(0);
    assert_eq!(first["type"], "Warning", "{first}");
    assert_eq!(first["source"]["component"], "kubelet", "{first}");
    assert_eq!(first["involvedObject"]["kind"], "Node", "{first}");
    // The kubelet's node reference: the node's name as its uid too.
    assert_eq!(
        first["involvedObject"]["uid"],
        node.name.as_str(),
        "{first}"
    );
    let message = first["message"].as_str().unwrap_or_default();
    let attempted: u64 = message
        .strip_prefix("Failed to garbage collect required amount of images. Attempted to free ")
        .and_then(|rest| rest.strip_suffix(" bytes, but only found 0 bytes eligible to free."))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("message: {message}"));
    let expected = capacity * (100 - LOW) / 100 - after_fill;
    assert!(
        attempted.abs_diff(expected) < 1 << 20,
        "attempted to free {attempted} bytes, expected about {expected}"
    );

    // Once per period at most, and ImageGCFailed from the second failure in a row.
    let (start, before) = (
        std::time::Instant::now(),
        total_count(&node_events(&node, "FreeDiskSpaceFailed")),
    );
    std::thread::sleep(period * 4);
    let after = total_count(&node_events(&node, "FreeDiskSpaceFailed"));
    let periods = start.elapsed().as_secs() / period.as_secs();
    assert!(
        after > before && after - before <= periods + 1,
        "FreeDiskSpaceFailed went from {before} to {after} in {:?}",
        start.elapsed()
    );
    let gc_failed = node_events(&node, "ImageGCFailed");
    assert!(!gc_failed.is_empty(), "no ImageGCFailed event");
    assert_eq!(gc_failed[0]["message"].as_str(), Some(message));
    let described = node.kubectl(&["describe", "node", &node.name]);
    assert!(
        described.contains("FreeDiskSpaceFailed"),
        "kubectl describe node shows no FreeDiskSpaceFailed:\n{described}"
    );
    for name in ["a:1", "busybox"] {
        assert!(present(&root, name), "{name} was collected while in use");
    }
    for name in ["idle", "user"] {
        let p = node.pod(name).expect("the pod");
        assert_eq!(p["status"]["phase"], "Running", "{name}: {}", p["status"]);
    }

    // Below the high threshold again: no more events.
    std::fs::remove_file(root.join("filler")).expect("removing the filler");
    std::thread::sleep(period * 2);
    let settled = total_count(&node_events(&node, "FreeDiskSpaceFailed"));
    std::thread::sleep(period * 2);
    assert_eq!(
        total_count(&node_events(&node, "FreeDiskSpaceFailed")),
        settled,
        "FreeDiskSpaceFailed below the high threshold"
    );
}
