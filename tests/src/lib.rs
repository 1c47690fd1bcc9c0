//! skiff-tests: end-to-end tests across the crates, run as root against the real binaries of
//! this build (`target/debug`: `skiff`, `skiff-runc`, `skiff-shim`) and the real kubectl. This
//! library holds what they share: the binaries, throwaway network namespaces, the inventory of
//! what skiff may leave on a machine (mounts, cgroups, iptables chains, links, processes) and a
//! guard that removes it all when a test fails half-way.

pub mod up;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// What to build before running these tests.
pub const BUILD: &str = "cargo build -p skiff -p skiff-kubelet -p skiff-runtime";

/// Fails the test with a clear message when a tool the test needs is missing.
pub fn require(tool: &str, probe: &[&str], hint: &str) {
    let ok = Command::new(tool)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "this test needs `{tool}` ({hint}); it is missing or does not run"
    );
}

/// Fails the test unless it runs as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the end-to-end tests run real containers and need root"
    );
}

/// The workspace's `target/debug` (the test binary lives in `target/debug/deps`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/debug")
        .to_path_buf()
}

/// The workspace's root directory.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A binary of this build, which must exist.
pub fn binary(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build it first with `{BUILD}`",
        p.display()
    );
    p
}

/// A network namespace with `lo` and an `eth0` (and its veth peer) holding [`Netns::ADDRESS`] (so that a node in
/// it has an address of its own and no route out); dropping it kills what runs in it and
/// deletes it.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub const ADDRESS: &str = "172.31.251.2";

    pub fn new() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "ske-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        // A veth pair whose peer stays in the namespace: an interface of its own that leads
        // nowhere (this kernel may lack the dummy driver).
        ip(&[
            "-n",
            &ns.name,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0-peer",
        ]);
        ip(&["-n", &ns.name, "link", "set", "eth0-peer", "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{}/24", Self::ADDRESS),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns.name, "link", "set", "eth0", "up"]);
        ns
    }

    /// A command that runs inside the namespace (its network only: mounts and cgroups stay the
    /// machine's, as for a process started there).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in_netns(&self.name, program)
    }

    /// A command's stdout inside the namespace ("" when it fails).
    pub fn output(&self, program: &str, args: &[&str]) -> String {
        self.command(program)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    pub fn pids(&self) -> Vec<i32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    pub fn kill_all(&self) {
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for p in pids {
                kill9(p);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill_all();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `command` with `stdin` written to its input (closed at once when `None`): its success
/// and its stdout followed by its stderr.
pub fn run_with_stdin(command: &mut Command, stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the command");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(s) = stdin {
        input
            .write_all(s.as_bytes())
            .expect("writing the command's stdin");
    }
    drop(input);
    let out = child.wait_with_output().expect("waiting for the command");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A command that runs inside the named network namespace (under /var/run/netns).
pub fn command_in_netns(netns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    let path = format!("/var/run/netns/{netns}");
    // SAFETY: pre_exec runs in the forked child before exec; it only opens a file and calls
    // setns.
    unsafe {
        c.pre_exec(move || {
            let f = std::fs::File::open(&path)?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    c
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// What a node run in `netns` with its files under `dir` and its pods' cgroups under
/// `cgroup_root` may leave behind: one line per thing left, empty when nothing is.
pub fn leftovers(netns: &Netns, dir: &Path, cgroup_root: &str) -> Vec<String> {
    let mut left = Vec::new();
    left.extend(mounts_under(dir).into_iter().map(|m| format!("mount {m}")));
    left.extend(
        cgroups_under(cgroup_root)
            .into_iter()
            .map(|d| format!("cgroup {}", d.display())),
    );
    left.extend(
        netns
            .output("iptables-save", &[])
            .lines()
            .filter(|l| l.contains("SKIFF"))
            .map(|l| format!("iptables {l}")),
    );
    left.extend(
        netns
            .output("nft", &["list", "tables"])
            .lines()
            .filter(|l| l.contains("skiff"))
            .map(|l| format!("nftables {l}")),
    );
    left.extend(
        netns
            .output("ip", &["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| !matches!(n.as_str(), "lo" | "eth0" | "eth0-peer"))
            .map(|n| format!("link {n}")),
    );
    left.extend(
        netns
            .pids()
            .into_iter()
            .chain(pids_in_cgroup(cgroup_root))
            .map(|p| format!("process {p}: {}", cmdline(p))),
    );
    left
}

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let base = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .filter(|m| m.starts_with(&base))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points
}

/// The directories `cgroup_root` has in any hierarchy (itself included).
pub fn cgroups_under(cgroup_root: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let root = h.path().join(cgroup_root.trim_start_matches('/'));
        if root.is_dir() {
            found.push(root.clone());
            walk_dirs(&root, &mut found);
        }
    }
    found
}

fn walk_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(e.path());
            walk_dirs(&e.path(), out);
        }
    }
}

/// Processes in a cgroup under `cgroup_root` of any hierarchy (the pods' containers, which live
/// in network namespaces of their own).
fn pids_in_cgroup(cgroup_root: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = cgroups_under(cgroup_root)
        .iter()
        .flat_map(|d| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|p| p.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Removes whatever a node left under `dir`, in `netns` and under `cgroup_root` after a test
/// that failed half-way: its processes, containers, mounts and cgroups. Dropped before the
/// namespace (which then deletes the links and rules with it).
pub struct NodeLeftoversGuard<'a> {
    pub netns: &'a Netns,
    pub dir: PathBuf,
    pub run_dir: PathBuf,
    pub cgroup_root: String,
}

impl Drop for NodeLeftoversGuard<'_> {
    fn drop(&mut self) {
        self.netns.kill_all();
        // Containers in network namespaces of their own: asked to the runtime, then killed by
        // their cgroup.
        if let Ok(entries) = std::fs::read_dir(self.run_dir.join("containers")) {
            let runc = target_dir().join("skiff-runc");
            for e in entries.flatten() {
                let _ = Command::new(&runc)
                    .arg("--root")
                    .arg(self.run_dir.join("runtime"))
                    .args(["delete", "--force"])
                    .arg(e.file_name())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        for _ in 0..50 {
            let pids = pids_in_cgroup(&self.cgroup_root);
            if pids.is_empty() {
                break;
            }
            pids.into_iter().for_each(kill9);
            std::thread::sleep(Duration::from_millis(20));
        }
        for _ in 0..10 {
            let points = mounts_under(&self.dir);
            if points.is_empty() {
                break;
            }
            for p in points {
                let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let mut dirs = cgroups_under(&self.cgroup_root);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            for _ in 0..50 {
                if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The warnings and errors of a log, then its last `lines` lines.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let problems: Vec<&str> = all
        .iter()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .copied()
        .collect();
    format!(
        "{}\n...\n{}",
        problems.join("\n"),
        all[all.len().saturating_sub(lines)..].join("\n")
    )
}
