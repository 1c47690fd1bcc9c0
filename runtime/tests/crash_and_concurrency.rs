//! kill -9 of the runtime mid-create, and concurrent lifecycles (needs root).

mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// The runtime process and its createRuntime hook (whose pid the hook writes to `hook_pid`),
/// killed on drop, so a failing assertion leaves neither behind.
struct Stray {
    runtime: std::process::Child,
    hook_pid: std::path::PathBuf,
}

impl Drop for Stray {
    fn drop(&mut self) {
        let _ = self.runtime.kill();
        let _ = self.runtime.wait();
        if let Ok(pid) = std::fs::read_to_string(&self.hook_pid)
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[test]
fn delete_force_cleans_up_after_a_runtime_killed_mid_create() {
    let runc = Runc::new();
    let cg = format!("/skiff-test-{}", unique("crash"));
    let marker = tempfile::NamedTempFile::new().unwrap();
    let hook_pid = tempfile::NamedTempFile::new().unwrap();
    // The createRuntime hook runs while the container is half made: note we got there, then hang.
    let b = Bundle::new(&["sleep", "1000"]).with(|c| {
        c["linux"]["cgroupsPath"] = json!(cg);
        c["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", format!(
                    "echo $$ > {}; cat > {}; exec sleep 30",
                    hook_pid.path().display(),
                    marker.path().display()
                )], "timeout": 60}]});
    });
    let id = unique("crash");
    let mut create = Stray {
        runtime: runc
            .cmd()
            .args(["create", "--bundle", b.path_str(), &id])
            .spawn()
            .unwrap(),
        hook_pid: hook_pid.path().to_path_buf(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(marker.path())
        .unwrap_or_default()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the hook never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The hook got the state on stdin: the init exists, in the cgroup.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(marker.path()).unwrap()).unwrap();
    assert_eq!(state["status"], "creating");
    let init = state["pid"].as_i64().unwrap();
    assert!(!cgroup_dirs(&cg).is_empty());
    create.runtime.kill().unwrap(); // SIGKILL
    create.runtime.wait().unwrap();
    // Our init dies with its parent (PDEATHSIG).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{init}/stat")).exists()
        && !std::fs::read_to_string(format!("/proc/{init}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(
            Instant::now() < deadline,
            "init {init} survived its runtime"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(runc.status(&id), "creating");
    let out = runc.run(&["delete", &id]);
    assert!(!out.status.success(), "a half-made container needs --force");
    runc.ok(&["delete", "--force", &id]);
    assert!(!runc.root.path().join(&id).exists());
    assert!(
        cgroup_dirs(&cg).is_empty(),
        "cgroups left behind: {:?}",
        cgroup_dirs(&cg)
    );
    // The orphaned hook (sleep 30) goes with `create`'s guard.
    drop(create);
}

/// Containers in cgroups under one parent that none of them finds (a kubelet's pod or QoS
/// cgroup): they make and remove the shared parents side by side, and none fails for it.
#[test]
fn concurrent_lifecycles_of_distinct_ids() {
    let runc = std::sync::Arc::new(Runc::new());
    let parent = format!("/skiff-test-{}", unique("conc"));
    let _cleanup = SharedParents {
        runc: runc.clone(),
        parent: parent.clone(),
    };
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let runc = runc.clone();
            let cg = format!("{parent}/shared/conc-{i}");
            std::thread::spawn(move || {
                let b = Bundle::new(&["sh", "-c", "echo $(hostname)"]).with(|c| {
                    c["linux"]["cgroupsPath"] = json!(cg);
                });
                for round in 0..3 {
                    let id = format!("conc-{i}-{round}");
                    runc.ok(&["create", "--bundle", b.path_str(), &id]);
                    runc.ok(&["start", &id]);
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while runc.status(&id) != "stopped" {
                        assert!(Instant::now() < deadline);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    runc.ok(&["delete", &id]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a lifecycle failed");
    }
    assert_eq!(runc.ok(&["list", "-q"]), "");
    // Each container's own cgroup is gone; shared parents may stay (as runc leaves them).
    let leaves: Vec<_> = (0..8)
        .flat_map(|i| cgroup_dirs(&format!("{parent}/shared/conc-{i}")))
        .collect();
    assert!(leaves.is_empty(), "{leaves:?}");
}

/// Removes what the concurrent test made, also when it fails: containers left in its runtime
/// root, then every cgroup under its parent in every hierarchy.
struct SharedParents {
    runc: std::sync::Arc<Runc>,
    parent: String,
}

impl Drop for SharedParents {
    fn drop(&mut self) {
        let listed = self.runc.run(&["list", "-q"]);
        for id in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
            self.runc.run(&["delete", "--force", id]);
        }
        for dir in cgroup_dirs(&self.parent) {
            let shared = dir.join("shared");
            for leaf in std::fs::read_dir(&shared).into_iter().flatten().flatten() {
                if leaf.path().is_dir() {
                    let _ = std::fs::remove_dir(leaf.path());
                }
            }
            let _ = std::fs::remove_dir(shared);
            let _ = std::fs::remove_dir(dir);
        }
    }
}
