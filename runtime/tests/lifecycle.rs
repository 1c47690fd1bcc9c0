//! The lifecycle verbs and the process model, with real containers (needs root).

mod common;
use common::*;
use serde_json::json;
use std::io::Read;
use std::os::fd::AsRawFd;

#[test]
fn create_start_kill_delete_with_states() {
    let runc = Runc::new();
    let b = Bundle::new(&["sleep", "1000"]).with(|c| {
        c["annotations"] = json!({"org.test": "yes"});
    });
    let id = unique("life");
    let pid_file = b.path().join("pid");
    runc.ok(&[
        "create",
        "--bundle",
        b.path_str(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
    ]);
    let st = runc.state(&id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], id.as_str());
    assert_eq!(st["ociVersion"], "1.2.0");
    assert_eq!(st["bundle"], b.path_str());
    assert_eq!(st["rootfs"], b.path().join("rootfs").to_str().unwrap());
    assert_eq!(st["annotations"]["org.test"], "yes");
    assert!(st["created"].as_str().unwrap().ends_with('Z'));
    assert!(st.get("owner").is_some());
    let pid = st["pid"].as_i64().unwrap();
    assert!(pid > 0);
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid.to_string());
    // Still our runtime, blocked, until start.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert!(
        !comm.starts_with("sleep"),
        "the process ran before start: {comm}"
    );

    runc.ok(&["start", &id]);
    assert_eq!(runc.status(&id), "running");
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(cmdline, "sleep\u{0}1000\u{0}");
    let out = runc.run(&["start", &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));

    let out = runc.run(&["delete", &id]);
    assert!(
        !out.status.success(),
        "delete of a running container must need --force"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not stopped: running"));

    runc.ok(&["kill", &id, "KILL"]);
    wait_until(10, || runc.status(&id) == "stopped");
    assert_eq!(runc.state(&id)["pid"], 0);
    runc.ok(&["delete", &id]);
    let out = runc.run(&["state", &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    assert!(!runc.root.path().join(&id).exists());
}

#[test]
fn run_returns_exit_code_and_128_plus_signal() {
    let runc = Runc::new();
    let (code, _, _) = Bundle::new(&["sh", "-c", "exit 42"]).run(&runc, &unique("exit"));
    assert_eq!(code, 42);
    // pid 1 cannot SIGKILL itself from inside its namespace: the signal comes from outside.
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique("sig");
    let mut run = runc
        .cmd()
        .args(["run", "--bundle", b.path_str(), &id])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(10, || {
        runc.run(&["state", &id]).status.success() && runc.status(&id) == "running"
    });
    runc.ok(&["kill", &id, "KILL"]);
    assert_eq!(run.wait().unwrap().code(), Some(137));
    // run deletes the container afterwards.
    assert_eq!(runc.ok(&["list", "--format", "json"]).trim(), "[]");
}

/// The runtime (Rust) ignores SIGPIPE; its programs must not inherit that: SIGPIPE is not
/// among the ignored signals of the init or of an exec'd process.
#[test]
fn programs_start_with_sigpipe_at_its_default() {
    let runc = Runc::new();
    let script = "grep SigIgn /proc/self/status";
    let out = Bundle::sh(&runc, script, |_| {});
    let sigpipe_ignored = |out: &str| {
        let mask = out
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
            .unwrap_or_else(|| panic!("no SigIgn in {out:?}"));
        mask & (1 << (libc::SIGPIPE - 1)) != 0
    };
    assert!(!sigpipe_ignored(&out), "init: {out}");

    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique("sigpipe");
    runc.ok(&["run", "-d", "--bundle", b.path_str(), &id]);
    let exec = runc.ok(&["exec", &id, "sh", "-c", script]);
    runc.ok(&["delete", "--force", &id]);
    assert!(!sigpipe_ignored(&exec), "exec: {exec}");
}

/// A reader that goes away (`skiff-runc state ID | grep -q created`) ends the command quietly
/// with 128 + SIGPIPE, as SIGPIPE ends runc, instead of a panic on stderr.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let runc = Runc::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique("pipe");
    runc.ok(&["create", "--bundle", b.path_str(), &id]);
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    let out = runc
        .cmd()
        .args(["state", &id])
        .stdout(std::process::Stdio::from(writer))
        .output()
        .unwrap();
    runc.ok(&["delete", "--force", &id]);
    assert_eq!(out.status.code(), Some(128 + libc::SIGPIPE));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

#[test]
fn argv_env_cwd_and_pid_1_are_exactly_the_config() {
    let runc = Runc::new();
    let out = Bundle::sh(
        &runc,
        "echo \"args:$0|$1\"; echo pid:$$; pwd; env | sort",
        |c| {
            c["process"]["args"] = json!([
                "sh",
                "-c",
                "echo \"args:$0|$1\"; echo pid:$$; pwd; env | grep -v '^PWD=\\|^SHLVL=' | sort",
                "zero",
                "one two"
            ]);
            c["process"]["env"] = json!(["PATH=/bin", "A=1", "B=with space"]);
            c["process"]["cwd"] = json!("/tmp/work");
        },
    );
    assert_eq!(
        out,
        "args:zero|one two\npid:1\n/tmp/work\nA=1\nB=with space\nHOME=/root\nPATH=/bin\n"
    );
}

#[test]
fn kill_by_name_number_and_all() {
    let runc = Runc::new();
    let b = Bundle::new(&["sh", "-c", "trap 'exit 0' USR1; sleep 1000 & wait"]);
    let id = unique("kill");
    runc.ok(&["run", "--detach", "--bundle", b.path_str(), &id]);
    let pids: Vec<i32> = serde_json::from_str(&runc.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(!pids.is_empty());
    runc.ok(&["kill", &id, "SIGUSR1"]);
    wait_until(10, || runc.status(&id) == "stopped");
    runc.ok(&["delete", &id]);

    let id = unique("killall");
    runc.ok(&["run", "-d", "--bundle", b.path_str(), &id]);
    wait_until(10, || {
        serde_json::from_str::<Vec<i32>>(&runc.ok(&["ps", "--format", "json", &id]))
            .unwrap()
            .len()
            >= 2
    });
    runc.ok(&["kill", "--all", &id, "9"]);
    wait_until(10, || runc.status(&id) == "stopped");
    let out = runc.run(&["kill", &id, "KILL"]);
    assert!(
        !out.status.success(),
        "kill of a stopped container must fail"
    );
    let out = runc.run(&["kill", &id, "NOSUCHSIG"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown signal"));
    runc.ok(&["delete", &id]);
}

#[test]
fn list_and_ps_formats() {
    let runc = Runc::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let (a, z) = (unique("a-list"), unique("z-list"));
    runc.ok(&["create", "--bundle", b.path_str(), &a]);
    runc.ok(&["run", "-d", "--bundle", b.path_str(), &z]);
    let table = runc.ok(&["list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ID")
            && lines[0].contains("PID")
            && lines[0].contains("STATUS")
            && lines[0].contains("OWNER")
    );
    assert!(
        lines[1].starts_with(&a) && lines[1].contains("created"),
        "{table}"
    );
    assert!(
        lines[2].starts_with(&z) && lines[2].contains("running") && lines[2].ends_with("root"),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&runc.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert_eq!(json[1]["status"], "running");
    assert_eq!(runc.ok(&["list", "-q"]), format!("{a}\n{z}\n"));
    let ps = runc.ok(&["ps", &z]);
    assert!(ps.lines().next().unwrap().contains("PID"));
    assert!(ps.contains("sleep 1000"), "{ps}");
    runc.ok(&["delete", "--force", &a]);
    runc.ok(&["delete", "--force", &z]);
    assert_eq!(runc.ok(&["list", "-q"]), "");
}

#[test]
fn spec_and_features() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["spec", "--bundle"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["process"]["args"], json!(["sh"]));
    assert_eq!(spec["process"]["terminal"], true);
    assert_eq!(spec["root"]["path"], "rootfs");
    assert_eq!(spec["hostname"], "runc");
    assert_eq!(spec["linux"]["namespaces"].as_array().unwrap().len(), 6);
    let again = std::process::Command::new(BIN)
        .args(["spec", "--bundle"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "spec must not overwrite config.json"
    );

    let out = std::process::Command::new(BIN)
        .arg("features")
        .output()
        .unwrap();
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(f["ociVersionMax"], "1.2.0");
    assert!(
        f["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .contains(&json!("time"))
    );
    assert_eq!(f["linux"]["cgroup"]["v2"], true);
    assert_eq!(f["linux"]["seccomp"]["enabled"], true);
    assert!(
        f["linux"]["seccomp"]["actions"]
            .as_array()
            .unwrap()
            .contains(&json!("SCMP_ACT_NOTIFY"))
    );
    assert!(
        f["linux"]["capabilities"]
            .as_array()
            .unwrap()
            .contains(&json!("CAP_SYS_ADMIN"))
    );
}

#[test]
fn console_socket_receives_the_pty_master() {
    use std::os::unix::net::UnixListener;
    let runc = Runc::new();
    let b = Bundle::new(&["sh", "-c", "tty; echo size $(stty size)"]).with(|c| {
        c["process"]["terminal"] = json!(true);
        c["process"]["consoleSize"] = json!({"height": 30, "width": 100});
    });
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let id = unique("tty");
    let receiver = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let fd = skiff_runtime::console::recv_fd(&stream).unwrap();
        let mut master = std::fs::File::from(fd);
        let mut out = Vec::new();
        // Reading the master ends with EIO once the container's side is closed.
        let mut buf = [0u8; 1024];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    runc.ok(&[
        "create",
        "--bundle",
        b.path_str(),
        "--console-socket",
        sock.to_str().unwrap(),
        &id,
    ]);
    runc.ok(&["start", &id]);
    let out = receiver.join().unwrap();
    assert!(out.contains("/dev/pts/0"), "tty output: {out:?}");
    assert!(out.contains("size 30 100"), "tty output: {out:?}");
    wait_until(10, || runc.status(&id) == "stopped");
    runc.ok(&["delete", &id]);
}

#[test]
fn terminal_without_console_socket_is_refused_on_create() {
    let runc = Runc::new();
    let b = Bundle::new(&["true"]).with(|c| c["process"]["terminal"] = json!(true));
    let id = unique("notty");
    let out = runc.run(&["create", "--bundle", b.path_str(), &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("console-socket"));
    assert!(!runc.root.path().join(&id).exists());
}

#[test]
fn preserve_fds_passes_extra_descriptors() {
    let runc = Runc::new();
    let b = Bundle::new(&["sh", "-c", "cat <&3; ls /proc/self/fd | wc -l"]);
    let data = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(data.path(), "through fd 3\n").unwrap();
    let file = std::fs::File::open(data.path()).unwrap();
    let id = unique("fds");
    let mut cmd = runc.cmd();
    cmd.args(["run", "--preserve-fds", "1", "--bundle", b.path_str(), &id]);
    let raw = file.as_raw_fd();
    // SAFETY: dup2 in the forked child before exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // fds 0,1,2,3 plus the one ls opens to list the directory.
    assert_eq!(stdout, "through fd 3\n5\n");
}

#[test]
fn no_pivot_runs_with_move_and_chroot() {
    let runc = Runc::new();
    let b = Bundle::new(&["sh", "-c", "cat /etc/passwd | head -1"]);
    let out = runc.run(&[
        "run",
        "--no-pivot",
        "--bundle",
        b.path_str(),
        &unique("nopivot"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "root:x:0:0:root:/root:/bin/sh\n"
    );
}

#[test]
fn runtime_binary_is_read_only_from_the_container() {
    let runc = Runc::new();
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique("exe");
    runc.ok(&["create", "--bundle", b.path_str(), &id]);
    let pid = runc.state(&id)["pid"].as_i64().unwrap();
    // The created container still runs our binary, seen through a read-only mount.
    let exe = format!("/proc/{pid}/exe");
    let st = nix::sys::statvfs::statvfs(exe.as_str()).unwrap();
    assert!(
        st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY),
        "/proc/<pid>/exe is on a writable mount"
    );
    // CVE-2019-5736: keep an O_PATH handle, let the process go, then reopen it for writing.
    let handle = nix::fcntl::open(
        exe.as_str(),
        nix::fcntl::OFlag::O_PATH,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    runc.ok(&["delete", "--force", &id]);
    let reopened = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()));
    // EROFS; ETXTBSY only while another test happens to run the same binary.
    let err = reopened.expect_err("the runtime binary could be opened for writing");
    assert!(
        matches!(err.raw_os_error(), Some(libc::EROFS) | Some(libc::ETXTBSY)),
        "{err}"
    );
}

/// `start` returns once the program runs, not merely once the init was let go: a signal sent
/// right after reaches the program's handler (as runtime-tools' killsig expects).
#[test]
fn a_signal_right_after_start_reaches_the_program() {
    let runc = Runc::new();
    let b = Bundle::new(&[
        "sh",
        "-c",
        "trap 'touch /got; exit 0' USR1; sleep 10 & wait $!",
    ])
    .with(|c| c["root"]["readonly"] = json!(false));
    for _ in 0..5 {
        let id = unique("sig");
        let _ = std::fs::remove_file(b.path().join("rootfs/got"));
        runc.ok(&["create", "--bundle", b.path_str(), &id]);
        runc.ok(&["start", &id]);
        // sh needs a moment after exec to set its trap; start already waited for the exec.
        std::thread::sleep(std::time::Duration::from_millis(20));
        runc.ok(&["kill", &id, "USR1"]);
        wait_until(5, || runc.status(&id) == "stopped");
        assert!(b.path().join("rootfs/got").exists());
        runc.ok(&["delete", &id]);
    }
}

/// runtime-spec: `process` is required by `start`, not by `create`. Without one, create
/// succeeds, start fails with a clear error and the container stops.
#[test]
fn a_config_without_process_creates_but_does_not_start() {
    let runc = Runc::new();
    let b = Bundle::new(&["true"]).with(|c| {
        c.as_object_mut().unwrap().remove("process");
    });
    let id = unique("noproc");
    runc.ok(&["create", "--bundle", b.path_str(), &id]);
    assert_eq!(runc.status(&id), "created");
    let out = runc.run(&["start", &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("process: missing"));
    wait_until(5, || runc.status(&id) == "stopped");
    runc.ok(&["delete", &id]);
}
