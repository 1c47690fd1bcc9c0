//! Driving a `skiff up` node from a test: commands in its namespace with this build's binaries,
//! kubectl against it, waiting for its processes and pods.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Netns, run_with_stdin, tail, target_dir};

/// A `skiff up` node in `netns` whose working directory is `dir` (its data in `dir/skiff-data`).
pub struct UpCluster<'a> {
    pub netns: &'a Netns,
    pub dir: &'a Path,
}

impl UpCluster<'_> {
    pub fn data(&self) -> std::path::PathBuf {
        self.dir.join("skiff-data")
    }

    /// A command in the node's namespace and directory, with this build's binaries first on
    /// PATH and KUBECONFIG set.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = self.netns.command(program);
        let path = format!(
            "{}:{}",
            target_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.current_dir(self.dir)
            .env("PATH", path)
            .env("HOME", self.dir)
            .env("KUBECONFIG", self.data().join("server/admin.kubeconfig"))
            .stdin(Stdio::null());
        c
    }

    /// kubectl's success and its stdout and stderr.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        run_with_stdin(self.command("kubectl").args(args), stdin)
    }

    /// `kubectl get … -o json`, parsed; `None` when it fails.
    pub fn get_json(&self, args: &[&str]) -> Option<Value> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        let out = self
            .command("kubectl")
            .args(&a)
            .stderr(Stdio::null())
            .output()
            .expect("kubectl");
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("kubectl JSON"))
    }

    /// A file of `dir` (the logs tests write there), empty when missing.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// The (name, uid) of the pods `selector` picks, sorted, once there are `count` and all
    /// are Ready.
    pub fn ready_pods(&self, selector: &str, count: usize) -> Option<Vec<(String, String)>> {
        let list = self.get_json(&["pods", "-l", selector])?;
        let items = list["items"].as_array()?;
        let ready = |p: &Value| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        };
        (items.len() == count && items.iter().all(ready)).then(|| {
            let mut pods: Vec<(String, String)> = items
                .iter()
                .map(|p| {
                    let field = |f: &str| p["metadata"][f].as_str().unwrap_or_default().to_string();
                    (field("name"), field("uid"))
                })
                .collect();
            pods.sort();
            pods
        })
    }
}

/// Waits for `child`, killing it after `limit`; whether it exited with 0.
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<bool> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("waiting") {
            return Some(status.success());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `f` until it holds, failing with `log`'s tail after `limit`.
pub fn wait_until(
    what: &str,
    limit: Duration,
    log: impl Fn() -> String,
    mut f: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; skiff up's log:\n{}",
            tail(&log(), 60)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
