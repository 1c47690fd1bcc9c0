//! Shared support for the privileged integration tests: a busybox rootfs built from Debian's
//! `busybox-static` (no downloads), bundles with a config.json from `skiff-runc spec`, a private
//! `--root`, and a guard that force-deletes every container a test made, even when it fails.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub const BIN: &str = env!("CARGO_BIN_EXE_skiff-runc");

/// Fails (never skips) when the test cannot run here, saying what is missing.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests run real containers and need root (CI runs them as root)"
    );
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing: install Debian's busybox-static (apt-get install -y busybox-static)"
    );
}

/// A unique name per test process and call, for ids and cgroup paths.
pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A runtime state root of its own; deletes every container left in it on drop.
pub struct Runc {
    pub root: tempfile::TempDir,
}

impl Runc {
    pub fn new() -> Runc {
        require_root();
        Runc {
            root: tempfile::Builder::new()
                .prefix("skiff-root")
                .tempdir_in("/run")
                .expect("tempdir in /run"),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--root").arg(self.root.path());
        c
    }

    /// Runs `skiff-runc --root R args…`, capturing stdout and stderr. Through files, not
    /// pipes: a created container inherits the runtime's stdio and would hold a pipe open.
    pub fn run(&self, args: &[&str]) -> Output {
        let (out, err) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
        let status = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(err.try_clone().unwrap())
            .status()
            .expect("spawn skiff-runc");
        let read = |mut f: std::fs::File| {
            use std::io::{Read, Seek};
            let mut v = vec![];
            f.seek(std::io::SeekFrom::Start(0)).unwrap();
            f.read_to_end(&mut v).unwrap();
            v
        };
        Output {
            status,
            stdout: read(out),
            stderr: read(err),
        }
    }

    /// Like `run`, and asserts success.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "skiff-runc {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).expect("state is JSON")
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(self.root.path()) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.cmd().args(["delete", "--force", &id]).output();
            }
        }
    }
}

/// The busybox rootfs, built once per test binary; bundles hard-link its binary.
fn base_busybox() -> PathBuf {
    static BASE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("busybox-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("busybox");
        std::fs::copy("/bin/busybox", &bin).expect("copy /bin/busybox");
        bin
    })
    .clone()
}

pub struct Bundle {
    pub dir: tempfile::TempDir,
    pub config: Value,
}

impl Bundle {
    /// A bundle with a busybox rootfs and runc's default config, terminal off, running `args`.
    pub fn new(args: &[&str]) -> Bundle {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("skiff-bundle")
            .tempdir()
            .expect("tempdir");
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "root"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        let busybox = rootfs.join("bin/busybox");
        std::fs::hard_link(base_busybox(), &busybox)
            .or_else(|_| std::fs::copy(base_busybox(), &busybox).map(|_| ()))
            .expect("busybox into rootfs");
        let list = Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
            }
        }
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        .unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
        let out = Command::new(BIN)
            .args(["spec", "--bundle"])
            .arg(dir.path())
            .output()
            .expect("skiff-runc spec");
        assert!(
            out.status.success(),
            "spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap())
                .unwrap();
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(args);
        let b = Bundle { dir, config };
        b.save();
        b
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn path_str(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    pub fn save(&self) {
        std::fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
    }

    /// Edits the config and saves it.
    pub fn with(mut self, edit: impl FnOnce(&mut Value)) -> Bundle {
        edit(&mut self.config);
        self.save();
        self
    }

    /// Runs the container to completion: (exit code, stdout, stderr).
    pub fn run(&self, runc: &Runc, id: &str) -> (i32, String, String) {
        let out = runc.run(&["run", "--bundle", self.path_str(), id]);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a shell script in the container and returns its stdout, asserting exit 0.
    pub fn sh(runc: &Runc, script: &str, edit: impl FnOnce(&mut Value)) -> String {
        let b = Bundle::new(&["sh", "-c", script]).with(edit);
        let id = unique("sh");
        let (code, out, err) = b.run(runc, &id);
        assert_eq!(
            code, 0,
            "container script failed ({code}):\n{script}\nstdout: {out}\nstderr: {err}"
        );
        out
    }
}

/// Polls `cond` until it holds; fails the test if it does not within `secs` seconds.
pub fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached in {secs}s"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Every cgroup directory on this machine whose path ends with `name`.
pub fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let mut found = vec![];
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = h.path().join(name.trim_start_matches('/'));
        if p.exists() {
            found.push(p);
        }
    }
    found
}

/// The host's mount points at or under any of `paths` (the bundle, a bind source, a mount's
/// destination): what a container made from them could leave behind or propagate. Only these:
/// other work on the machine mounts and unmounts elsewhere meanwhile.
pub fn host_mounts_under(paths: &[&Path]) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        // Field 5 is the mount point (spaces escaped as \040, as in the paths of these tests).
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| paths.iter().any(|p| Path::new(point).starts_with(p)))
        .map(str::to_string)
        .collect()
}
