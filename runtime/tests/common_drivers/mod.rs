//! Shared support for the tests that drive the runtime from real container engines: Debian's
//! containerd 1.6 (its `io.containerd.runc.v2` shim, through `ctr`) and podman.
//!
//! - The runtime under test is skiff-runc, or `$SKIFF_DRIVER_RUNTIME` (e.g. `/usr/sbin/runc`) to
//!   prove the harness itself against the reference runtime.
//! - The engines never call it directly: they call a small recording wrapper that appends its
//!   argv (one line, tab-separated) to a file and then execs the runtime; the tests pin the
//!   command lines the engines use (the contract).
//! - The image is built locally from Debian's busybox-static with umoci (no network): an OCI
//!   layout tarred into an archive, imported with `ctr images import` / `podman load`.
//! - Every engine runs on its own sockets, roots and state directories under a temp dir; a Drop
//!   guard removes containers, stops the engine, kills what it left behind (by pid, only
//!   processes whose command line names that temp dir), unmounts and deletes, even on failure.
//! - Nothing is installed here: a missing tool fails the test naming the Debian package.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const SKIFF_RUNC: &str = env!("CARGO_BIN_EXE_skiff-runc");

/// A guard against hangs only (an engine or runtime that never answers), never a timing check.
pub const HANG: Duration = Duration::from_secs(180);

/// The runtime the engines drive: `$SKIFF_DRIVER_RUNTIME` if set, else skiff-runc.
pub fn runtime_under_test() -> PathBuf {
    match std::env::var_os("SKIFF_DRIVER_RUNTIME") {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "SKIFF_DRIVER_RUNTIME={} is not a file",
                p.display()
            );
            p
        }
        _ => PathBuf::from(SKIFF_RUNC),
    }
}

fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

/// A `run` command line: `run`, the test's `extra` options, the driver's `opts` (runtime
/// selection), then `rest` (image, id, command…).
pub fn run_line(extra: &[&str], opts: Vec<String>, rest: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec!["run".into()];
    v.extend(extra.iter().map(|s| s.to_string()));
    v.extend(opts);
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

/// Fails (never skips) unless running as root with every `(binary, Debian package)` present.
pub fn require(tools: &[(&str, &str)]) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests start container engines and need root (CI runs them as root)"
    );
    let missing: Vec<(&str, &str)> = tools
        .iter()
        .copied()
        .chain([("/bin/busybox", "busybox-static")])
        .filter(|(bin, _)| which(bin).is_none())
        .collect();
    let mut packages: Vec<&str> = missing.iter().map(|(_, pkg)| *pkg).collect();
    packages.dedup();
    assert!(
        missing.is_empty(),
        "missing {}: install with `apt-get install -y {}` (scripts/test.sh should)",
        missing
            .iter()
            .map(|(bin, pkg)| format!("`{bin}` (Debian package {pkg})"))
            .collect::<Vec<_>>()
            .join(", "),
        packages.join(" ")
    );
}

/// What a finished command printed and how it ended.
#[derive(Debug)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub desc: String,
}

impl Out {
    pub fn code(&self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        self.status
            .code()
            .unwrap_or_else(|| 128 + self.status.signal().unwrap_or(0))
    }
}

/// Waits for `child`, killing it and failing if it hangs.
pub fn wait_or_kill(child: &mut Child, desc: &str) -> ExitStatus {
    let deadline = Instant::now() + HANG;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{desc} hung: no answer after {HANG:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd`, capturing its output through files, not pipes: an engine's helper processes
/// (conmon, shims) may inherit stdio and would hold a pipe open.
pub fn run(cmd: &mut Command) -> Out {
    let (out, err) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {desc}: {e}"));
    let status = wait_or_kill(&mut child, &desc);
    Out {
        status,
        stdout: read_all(out),
        stderr: read_all(err),
        desc,
    }
}

fn read_all(mut f: fs::File) -> String {
    use std::io::{Read, Seek};
    let mut v = vec![];
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut v).unwrap();
    String::from_utf8_lossy(&v).into_owned()
}

/// Runs `cmd` and asserts it succeeded; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{} failed ({}):\nstdout: {}\nstderr: {}",
        out.desc,
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// Polls `f` until it returns `Some`; fails naming `what` if it never does (a hang guard).
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + HANG;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command on a fresh pseudo-terminal (stdin, stdout and stderr on its slave side) and
/// returns what it wrote to the terminal; for `ctr run -t` and `ctr task exec -t`. We keep the
/// slave open ourselves, so the master never reads EIO before everything written is drained
/// (the kernel pushes a closed slave's last output to the master asynchronously).
pub fn run_on_pty(cmd: &mut Command) -> Out {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::io::Read;
    use std::os::fd::AsFd;
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave.try_clone().unwrap()));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {desc}: {e}"));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut master = fs::File::from(pty.master);
    let mut output = vec![];
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + HANG;
    let mut status = None;
    loop {
        // Poll briefly while the child runs; once it has exited, drain until quiet.
        let timeout = if status.is_some() { 200u16 } else { 50u16 };
        let ready = {
            let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(timeout)).unwrap_or(0) > 0
        };
        if ready {
            match master.read(&mut buf) {
                Ok(n) if n > 0 => {
                    output.extend_from_slice(&buf[..n]);
                    continue;
                }
                _ => break,
            }
        }
        if status.is_some() {
            break;
        }
        status = child.try_wait().expect("try_wait");
        if status.is_none() && Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{desc} hung: no answer after {HANG:?}");
        }
    }
    drop(pty.slave);
    Out {
        status: status.expect("exited"),
        stdout: String::from_utf8_lossy(&output).into_owned(),
        stderr: String::new(),
        desc,
    }
}

/// The recording wrapper the engines get as their runtime binary.
pub struct Recorder {
    pub wrapper: PathBuf,
    pub log: PathBuf,
}

/// One recorded runtime invocation, split like runc's command line: global options, the
/// command, and the command's own arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub global: Vec<String>,
    pub verb: String,
    pub args: Vec<String>,
}

impl Call {
    pub fn parse(argv: &[String]) -> Call {
        let mut i = 0;
        while i < argv.len() && argv[i].starts_with('-') {
            let takes_value = ["--root", "--log", "--log-format", "--criu", "--rootless"]
                .contains(&argv[i].as_str());
            i += if takes_value { 2 } else { 1 };
        }
        Call {
            global: argv[..i.min(argv.len())].to_vec(),
            verb: argv.get(i).cloned().unwrap_or_default(),
            args: argv
                .get(i + 1..)
                .map(<[String]>::to_vec)
                .unwrap_or_default(),
        }
    }

    /// The value of `--flag VALUE` or `--flag=VALUE` among the command's arguments.
    pub fn opt(&self, flag: &str) -> Option<&str> {
        let eq = format!("{flag}=");
        self.args.iter().enumerate().find_map(|(i, a)| {
            if a == flag {
                self.args.get(i + 1).map(String::as_str)
            } else {
                a.strip_prefix(&eq)
            }
        })
    }

    pub fn has(&self, flag: &str) -> bool {
        self.args.iter().any(|a| a == flag)
    }

    pub fn line(&self) -> String {
        let mut v = self.global.clone();
        v.push(self.verb.clone());
        v.extend(self.args.iter().cloned());
        v.join(" ")
    }
}

impl Recorder {
    /// The wrapper is `DIR/wrapper/NAME`, NAME being the runtime's own file name (`skiff-runc`,
    /// `runc`): podman decides by that name whether the runtime takes `--log-format=json`.
    pub fn new(dir: &Path, runtime: &Path) -> Recorder {
        let wrapper_dir = dir.join("wrapper");
        fs::create_dir_all(&wrapper_dir).unwrap();
        let wrapper = wrapper_dir.join(runtime.file_name().expect("runtime file name"));
        let log = dir.join("runtime-argv.log");
        fs::write(&log, "").unwrap();
        // One write per call (the line is built first), so concurrent calls do not interleave.
        // A caller that passes no --root (podman) would leave state and the seccomp cache in
        // the runtime's default root on the host: give it one under DIR instead, after the
        // call was recorded as the caller made it.
        let root = dir.join("runtime-root");
        let script = format!(
            "#!/bin/sh\n\
             # Records this call's arguments (tab-separated, one line) and runs the runtime.\n\
             line=$(for a in \"$@\"; do printf '%s\\t' \"$a\"; done)\n\
             printf '%s\\n' \"$line\" >> '{log}'\n\
             case \"$line\" in --root*|*\"\t--root\"*) exec '{rt}' \"$@\";; esac\n\
             exec '{rt}' --root '{root}' \"$@\"\n",
            log = log.display(),
            rt = runtime.display(),
            root = root.display(),
        );
        fs::write(&wrapper, script).unwrap();
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
        Recorder { wrapper, log }
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let argv: Vec<String> = l
                    .strip_suffix('\t')
                    .unwrap_or(l)
                    .split('\t')
                    .map(str::to_string)
                    .collect();
                Call::parse(&argv)
            })
            .collect()
    }

    /// The calls about container `id` (its id is the last argument, or follows the command as
    /// with `kill ID SIGNAL`).
    pub fn calls_for(&self, id: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.args.iter().any(|a| a == id))
            .collect()
    }

    pub fn dump(&self) -> String {
        self.calls()
            .iter()
            .map(Call::line)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The first call with this command about `id`; fails showing all calls if there is none.
    pub fn find(&self, id: &str, verb: &str, pred: impl Fn(&Call) -> bool) -> Call {
        self.calls_for(id)
            .into_iter()
            .find(|c| c.verb == verb && pred(c))
            .unwrap_or_else(|| {
                panic!(
                    "no matching `{verb}` call for {id}; the runtime was called with:\n{}",
                    self.dump()
                )
            })
    }
}

/// Builds a one-layer OCI image of Debian's busybox-static with umoci (no network) and returns
/// the tar archive of its OCI layout; the manifest is tagged `latest`.
pub fn busybox_oci_archive(dir: &Path) -> PathBuf {
    let layout = dir.join("oci-layout");
    let unpacked = dir.join("oci-unpacked");
    let image = format!("{}:latest", layout.display());
    ok(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    ok(Command::new("umoci").args(["new", "--image", &image]));
    ok(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&unpacked));
    let rootfs = unpacked.join("rootfs");
    for d in ["bin", "etc", "tmp", "root", "proc", "sys", "dev"] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy /bin/busybox");
    let list = ok(Command::new("/bin/busybox").arg("--list"));
    for applet in list.lines().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    ok(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&unpacked));
    ok(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        // Sleeps forever by default, so that it can also serve as the CRI sandbox ("pause") image.
        "--config.cmd",
        "/bin/sleep",
        "--config.cmd",
        "2147483647",
        "--config.env",
        "PATH=/bin",
        "--config.workingdir",
        "/",
        "--tag",
        "latest",
    ]));
    let archive = dir.join("busybox-oci.tar");
    ok(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg("."));
    let _ = fs::remove_dir_all(&unpacked);
    archive
}

/// Unmounts (lazily, deepest first) every mount point under `dir`.
pub fn unmount_under(dir: &Path) {
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " ").replace("\\011", "\t"))
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// SIGKILLs every process whose command line names `dir` (the shims and conmons the engine
/// started for this test: their arguments carry our private paths), except ourselves.
pub fn kill_processes_naming(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid as u32 == me {
            continue;
        }
        let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Force-deletes, with the runtime itself, every container left in a runtime root.
pub fn delete_leftovers(runtime: &Path, root: &Path) {
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = run(Command::new(runtime)
                    .arg("--root")
                    .arg(root)
                    .args(["delete", "--force", &id]));
            }
        }
    }
}

fn unique_ns() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "skiff-drv-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Removes the (by then empty) cgroup directories `NAME` (and below) that the runtime made
/// for our containers, on every v1 hierarchy and on v2.
pub fn remove_cgroups_named(name: &str) {
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots: Vec<PathBuf> = hierarchies.flatten().map(|e| e.path()).collect();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    for root in roots {
        let dir = root.join(name);
        if let Ok(children) = fs::read_dir(&dir) {
            for c in children.flatten() {
                if c.path().is_dir() {
                    let _ = fs::remove_dir(c.path());
                }
            }
            let _ = fs::remove_dir(&dir);
        }
    }
}

/// Stops a daemon we started: SIGTERM, then SIGKILL if it does not go.
fn stop_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// The last `n` lines of a log file that mention an error or a warning.
pub fn log_problems(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains("level=error") || l.contains("level=warn") || l.contains("level=fatal")
        })
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The containerd namespace of the CRI plugin.
pub const CRI_NAMESPACE: &str = "k8s.io";
pub const CTR_IMAGE: &str = "localhost/skiff-busybox:latest";

/// A containerd of our own: socket, root, state, runc root and fifos under one temp dir, a
/// config.toml that also declares a CRI runtime handler `skiff` (runc v2 shim, `BinaryName` =
/// the recording wrapper). Stopped and cleaned up on drop.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub config: PathBuf,
    pub runc_root: PathBuf,
    pub fifo_dir: PathBuf,
    pub log: PathBuf,
    pub runtime: PathBuf,
    pub rec: Recorder,
    /// The containerd namespace, unique per test process and instance: ctr's cgroup paths are
    /// `/NAMESPACE/ID`, so concurrent runs must not share it.
    pub ns: String,
    child: Option<Child>,
}

impl Containerd {
    pub fn start() -> Containerd {
        Containerd::start_in(false)
    }

    /// With `private_net`, containerd (and so every shim and every container that uses the
    /// "node" network) runs in a network namespace of its own, which has only loopback.
    pub fn start_in(private_net: bool) -> Containerd {
        require(&[
            ("containerd", "containerd"),
            ("ctr", "containerd"),
            ("containerd-shim-runc-v2", "containerd"),
            ("umoci", "umoci"),
            ("tar", "tar"),
        ]);
        let runtime = runtime_under_test();
        LIVE_CONTAINERDS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Short, in /tmp: the socket path must fit in sun_path.
        let dir = tempfile::Builder::new()
            .prefix("skiff-ctrd.")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let d = dir.path().to_path_buf();
        let rec = Recorder::new(&d, &runtime);
        let sock = d.join("containerd.sock");
        let runc_root = d.join("runc-root");
        let fifo_dir = d.join("fifo");
        let config = d.join("config.toml");
        let log = d.join("containerd.log");
        fs::create_dir_all(&fifo_dir).unwrap();
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{sock}"
[debug]
  level = "debug"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{d}/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{CTR_IMAGE}"
    # The sandbox's oom_score_adj (-998) no lower than containerd's: lowering it needs
    # CAP_SYS_RESOURCE, which some CI sandboxes do not grant even to root.
    restrict_oom_score_adj = true
    stream_server_address = "127.0.0.1"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{d}/cni/bin"
      conf_dir = "{d}/cni/conf"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "skiff"
      snapshotter = "native"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.skiff]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.skiff.options]
          BinaryName = "{wrapper}"
          Root = "{runc_root}"
"#,
                d = d.display(),
                sock = sock.display(),
                wrapper = rec.wrapper.display(),
                runc_root = runc_root.display(),
            ),
        )
        .unwrap();
        let logf = fs::File::create(&log).unwrap();
        let mut cmd = if private_net {
            let mut c = Command::new("unshare");
            c.args(["--net", "containerd"]);
            c
        } else {
            Command::new("containerd")
        };
        let child = cmd
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("spawn containerd");
        let mut c = Containerd {
            dir,
            sock,
            config,
            runc_root,
            fifo_dir,
            log,
            runtime,
            rec,
            ns: unique_ns(),
            child: Some(child),
        };
        wait_for("containerd to answer on its socket", || {
            if let Some(Ok(Some(st))) = c.child.as_mut().map(Child::try_wait) {
                panic!(
                    "containerd exited ({st}) at start:\n{}",
                    fs::read_to_string(&c.log).unwrap_or_default()
                );
            }
            run(c.ctr().arg("version")).status.success().then_some(())
        });
        c
    }

    /// `ctr -a SOCK -n NS` (native snapshotter: works on any filesystem).
    pub fn ctr(&self) -> Command {
        self.ctr_in(&self.ns)
    }

    pub fn ctr_in(&self, ns: &str) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a")
            .arg(&self.sock)
            .args(["-n", ns])
            .env("CONTAINERD_SNAPSHOTTER", "native");
        cmd
    }

    /// The options of `ctr run` that select the runtime: the runc v2 shim with our wrapper as
    /// its binary (options.BinaryName), our runc root, our fifo dir.
    pub fn runtime_opts(&self) -> Vec<String> {
        vec![
            "--runtime".into(),
            "io.containerd.runc.v2".into(),
            "--runc-binary".into(),
            self.rec.wrapper.display().to_string(),
            "--runc-root".into(),
            self.runc_root.display().to_string(),
            "--fifo-dir".into(),
            self.fifo_dir.display().to_string(),
        ]
    }

    /// What went wrong, for a failure message: the engine's complaints and the runtime calls.
    pub fn diagnose(&self) -> String {
        format!(
            "runtime {} was called with:\n{}\ncontainerd log (errors and warnings):\n{}",
            self.runtime.display(),
            self.rec.dump(),
            log_problems(&self.log, 40)
        )
    }

    pub fn run(&self, args: &[&str]) -> Out {
        run(self.ctr().args(args))
    }

    /// `ctr ARGS…`, asserting success, with diagnostics on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}):\nstdout: {}\nstderr: {}\n{}",
            out.status,
            out.stdout,
            out.stderr,
            self.diagnose()
        );
        out.stdout
    }

    pub fn import_busybox(&self) {
        self.import_busybox_into(&self.ns);
    }

    /// Imports the busybox image into a containerd namespace (`k8s.io` for the CRI plugin).
    pub fn import_busybox_into(&self, ns: &str) {
        let archive = busybox_oci_archive(self.dir.path());
        ok(self.ctr_in(ns).args([
            "images",
            "import",
            "--base-name",
            "localhost/skiff-busybox",
            archive.to_str().unwrap(),
        ]));
        let images = ok(self.ctr_in(ns).args(["images", "ls", "-q"]));
        assert!(
            images.lines().any(|l| l == CTR_IMAGE),
            "import did not make {CTR_IMAGE}: {images}"
        );
    }

    /// `(pid, status)` of a task from `ctr task ls`.
    pub fn task(&self, id: &str) -> Option<(u32, String)> {
        self.ok(&["task", "ls"]).lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[0] == id).then(|| (f[1].parse().unwrap_or(0), f[2].to_string()))
        })
    }

    pub fn wait_status(&self, id: &str, status: &str) -> u32 {
        wait_for(&format!("task {id} to be {status}"), || {
            self.task(id)
                .filter(|(_, s)| s == status)
                .map(|(pid, _)| pid)
        })
    }

    /// The bundle directory the shim made for container `id`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir
            .path()
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.ns)
            .join(id)
    }
}

/// With `$SKIFF_DRIVER_KEEP_LOGS=DIR`, copies an engine's log and the recorded runtime calls
/// there (named after `tag`) before the temp dir goes: for comparing runtimes after a run.
fn keep_logs(tag: &str, files: &[(&str, &Path)]) {
    if let Some(dir) = std::env::var_os("SKIFF_DRIVER_KEEP_LOGS") {
        let dir = PathBuf::from(dir);
        let _ = fs::create_dir_all(&dir);
        for (name, path) in files {
            let _ = fs::copy(path, dir.join(format!("{tag}.{name}")));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(None) = child.try_wait()
        {
            for ns in [self.ns.as_str(), CRI_NAMESPACE] {
                let ids = run(self.ctr_in(ns).args(["containers", "ls", "-q"])).stdout;
                for id in ids.lines().filter(|l| !l.is_empty()) {
                    let _ = run(self.ctr_in(ns).args(["task", "rm", "-f", id]));
                    let _ = run(self.ctr_in(ns).args(["containers", "rm", id]));
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
        keep_logs(
            &format!(
                "{}-{}",
                self.ns,
                std::thread::current().name().unwrap_or("test")
            ),
            &[
                ("containerd.log", &self.log),
                ("runtime-argv.log", &self.rec.log),
            ],
        );
        kill_processes_naming(self.dir.path());
        delete_leftovers(&self.runtime, &self.runc_root.join(&self.ns));
        delete_leftovers(&self.runtime, &self.runc_root.join(CRI_NAMESPACE));
        unmount_under(self.dir.path());
        remove_cgroups_named(&self.ns);
        // containerd 1.6 puts every shim socket under a fixed /run/containerd/s: once the last
        // of this process's containerds is gone, remove it if it is empty (never anyone
        // else's socket).
        if LIVE_CONTAINERDS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            let _ = fs::remove_dir("/run/containerd/s");
            let _ = fs::remove_dir("/run/containerd");
        }
    }
}

/// How many `Containerd`s of this test process are running (see `Drop`).
static LIVE_CONTAINERDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// podman with storage (vfs), run root, tmp dir and events of its own under a temp dir;
/// containers get `--network none`. Cleaned up on drop.
pub struct Podman {
    pub dir: tempfile::TempDir,
    pub runtime: PathBuf,
    pub rec: Recorder,
    /// Every container's cgroup parent (instead of podman's shared `libpod_parent`), removed
    /// on drop.
    pub cgroup_parent: String,
}

pub const PODMAN_IMAGE: &str = "localhost/skiff-busybox:latest";

impl Podman {
    pub fn new() -> Podman {
        require(&[
            ("podman", "podman"),
            ("conmon", "conmon"),
            ("umoci", "umoci"),
            ("tar", "tar"),
        ]);
        let runtime = runtime_under_test();
        let dir = tempfile::Builder::new()
            .prefix("skiff-podman.")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let rec = Recorder::new(dir.path(), &runtime);
        // Only this file is read (CONTAINERS_CONF): the runtime, by its name, is one that
        // takes runc's `--log FILE --log-format=json` (runc and crun are by default).
        let conf = dir.path().join("containers.conf");
        fs::write(
            &conf,
            format!(
                "[engine]\nruntime_supports_json = [\"{}\"]\n",
                rec.wrapper.file_name().unwrap().to_string_lossy()
            ),
        )
        .unwrap();
        let cgroup_parent = unique_ns().replace("skiff-drv", "skiff-podman");
        Podman {
            dir,
            runtime,
            rec,
            cgroup_parent,
        }
    }

    pub fn cmd(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--runtime")
            .arg(&self.rec.wrapper)
            .arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ]);
        c
    }

    /// The options every `podman run` gets: no network, never pull, and rlimits the runtime
    /// can set. (podman's defaults raise RLIMIT_NOFILE and RLIMIT_NPROC to 1048576, which a
    /// root without CAP_SYS_RESOURCE — as in some CI sandboxes — cannot; podman itself also
    /// lowers its own RLIMIT_NPROC to kernel.pid_max, so the container asks for no more.)
    pub fn run_opts(&self) -> Vec<String> {
        use nix::sys::resource::{Resource, getrlimit};
        let (_, nofile) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        let (_, nproc) = getrlimit(Resource::RLIMIT_NPROC).expect("getrlimit");
        let pid_max: u64 = fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(32768);
        let nofile = nofile.min(1 << 20);
        let nproc = nproc.min(pid_max);
        vec![
            format!("--cgroup-parent=/{}", self.cgroup_parent),
            "--network".into(),
            "none".into(),
            "--pull".into(),
            "never".into(),
            "--ulimit".into(),
            format!("nofile={nofile}:{nofile}"),
            "--ulimit".into(),
            format!("nproc={nproc}:{nproc}"),
        ]
    }

    pub fn diagnose(&self) -> String {
        format!(
            "runtime {} was called with:\n{}",
            self.runtime.display(),
            self.rec.dump()
        )
    }

    pub fn run(&self, args: &[&str]) -> Out {
        run(self.cmd().args(args))
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}):\nstdout: {}\nstderr: {}\n{}",
            out.status,
            out.stdout,
            out.stderr,
            self.diagnose()
        );
        out.stdout
    }

    /// `podman load` of the busybox OCI archive, tagged PODMAN_IMAGE.
    pub fn load_busybox(&self) {
        let archive = busybox_oci_archive(self.dir.path());
        let out = self.ok(&["load", "-q", "-i", archive.to_str().unwrap()]);
        // "Loaded image: NAME" — the OCI ref name "latest" becomes localhost/latest:latest.
        let loaded = out
            .lines()
            .find_map(|l| l.strip_prefix("Loaded image: "))
            .or_else(|| {
                out.lines()
                    .find_map(|l| l.strip_prefix("Loaded image(s): "))
            })
            .unwrap_or_else(|| panic!("podman load printed no image name: {out}"))
            .trim()
            .to_string();
        self.ok(&["tag", &loaded, PODMAN_IMAGE]);
    }

    pub fn inspect(&self, name: &str, format: &str) -> String {
        self.ok(&["inspect", "--format", format, name])
            .trim()
            .to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.run(&["rmi", "--all", "--force"]);
        keep_logs(
            &format!("podman-{}", std::thread::current().name().unwrap_or("test")),
            &[("runtime-argv.log", &self.rec.log)],
        );
        kill_processes_naming(self.dir.path());
        unmount_under(self.dir.path());
        remove_cgroups_named(&self.cgroup_parent);
    }
}

/// Borrowed views of owned arguments.
pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
