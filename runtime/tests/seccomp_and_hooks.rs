//! linux.seccomp (every action, argument conditions, NOTIFY) and the six hook phases, with real
//! containers (needs root).

mod common;
use common::*;
use serde_json::{Value, json};

fn with_seccomp(profile: Value) -> impl FnOnce(&mut Value) {
    move |c| {
        c["linux"]["seccomp"] = profile;
        c["root"]["readonly"] = json!(false);
    }
}

fn run_script(runc: &Runc, script: &str, profile: Value) -> (i32, String, String) {
    let b = Bundle::new(&["sh", "-c", script]).with(with_seccomp(profile));
    b.run(runc, &unique("seccomp"))
}

#[test]
fn errno_with_errno_ret_and_argument_conditions() {
    let runc = Runc::new();
    let profile = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
        "syscalls": [
            // Unknown names are skipped, as runc does.
            {"names": ["mkdir", "mkdirat", "no_such_syscall"], "action": "SCMP_ACT_ERRNO", "errnoRet": 95,
             "args": []},
            // chmod(path, mode): only mode 0700 is refused; fchmodat(dirfd, path, mode) likewise.
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "args": [{"index": 1, "value": 448, "op": "SCMP_CMP_EQ"}]},
            {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "args": [{"index": 2, "value": 448, "op": "SCMP_CMP_EQ"}]},
            // Masked equality: any mode with the setuid bit (04000) is refused.
            {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13, "args": [{"index": 2, "value": 2048, "valueTwo": 2048, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13, "args": [{"index": 1, "value": 2048, "valueTwo": 2048, "op": "SCMP_CMP_MASKED_EQ"}]},
            // Two conditions on one argument are alternatives (OR).
            {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22, "args": [{"index": 2, "value": 384, "op": "SCMP_CMP_EQ"}, {"index": 2, "value": 288, "op": "SCMP_CMP_EQ"}]},
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22, "args": [{"index": 1, "value": 384, "op": "SCMP_CMP_EQ"}, {"index": 1, "value": 288, "op": "SCMP_CMP_EQ"}]},
            {"names": ["uname"], "action": "SCMP_ACT_LOG"}
        ]
    });
    let profile_again = profile.clone();
    let (code, out, err) = run_script(
        &runc,
        "mkdir /tmp/d 2>&1; touch /tmp/f; chmod 700 /tmp/f 2>&1; chmod 755 /tmp/f && echo 755-ok; chmod 4755 /tmp/f 2>&1; \
         chmod 600 /tmp/f 2>&1; chmod 440 /tmp/f 2>&1; uname -s",
        profile,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "mkdir: can't create directory '/tmp/d': Operation not supported\n\
         chmod: /tmp/f: Operation not permitted\n755-ok\nchmod: /tmp/f: Permission denied\n\
         chmod: /tmp/f: Invalid argument\nchmod: /tmp/f: Invalid argument\nLinux\n",
        "{out}"
    );
    // Compiled once, cached by content hash under <root>/seccomp, reused by the next container.
    let cached = || {
        std::fs::read_dir(runc.root.path().join("seccomp"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "bpf")
            })
            .count()
    };
    assert_eq!(cached(), 1);
    let (code, again, _) = run_script(&runc, "mkdir /tmp/d 2>&1", profile_again);
    assert_eq!(
        (code, again.as_str()),
        (
            1,
            "mkdir: can't create directory '/tmp/d': Operation not supported\n"
        )
    );
    assert_eq!(cached(), 1);
}

#[test]
fn default_errno_ret_kill_trap_and_kill_process() {
    let runc = Runc::new();
    // Default ERRNO with defaultErrnoRet, only what busybox needs to start allowed: an
    // unlisted syscall (mkdir) gets the default errno.
    let allowed = [
        "execve",
        "brk",
        "arch_prctl",
        "set_tid_address",
        "set_robust_list",
        "rseq",
        "prlimit64",
        "mmap",
        "munmap",
        "mprotect",
        "getuid",
        "geteuid",
        "getgid",
        "getegid",
        "getpid",
        "getppid",
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "write",
        "writev",
        "read",
        "exit",
        "exit_group",
        "close",
        "fcntl",
        "ioctl",
        "newfstatat",
        "fstat",
        "stat",
        "lstat",
        "openat",
        "open",
        "getcwd",
        "uname",
        "wait4",
        "clone",
        "fork",
        "vfork",
        "dup2",
        "dup3",
        "getrandom",
        "readlinkat",
        "statx",
        "sigaltstack",
        "futex",
        "access",
        "faccessat",
        "faccessat2",
        "getdents64",
        "lseek",
        "poll",
        "pselect6",
        "nanosleep",
        "clock_nanosleep",
        "times",
        "getpgid",
        "setpgid",
        "getpgrp",
    ];
    let profile = json!({
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
        "syscalls": [{"names": allowed.to_vec(), "action": "SCMP_ACT_ALLOW"}]
    });
    let (code, out, err) = run_script(&runc, "mkdir /tmp/d 2>&1; echo done", profile);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out, "mkdir: can't create directory '/tmp/d': Function not implemented\ndone\n",
        "{out}"
    );

    for (action, expect) in [
        ("SCMP_ACT_KILL_PROCESS", 159),
        ("SCMP_ACT_TRAP", 159),
        ("SCMP_ACT_KILL", 159),
    ] {
        let profile = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], "action": action}]});
        // SIGSYS (31) kills the process: the shell reports 128+31.
        let (code, out, err) = run_script(&runc, "mkdir /tmp/d; echo status $?", profile);
        assert_eq!(code, 0, "{action}: {err}");
        assert_eq!(out, format!("status {expect}\n"), "{action}");
    }
}

#[test]
fn unknown_action_is_an_error_naming_the_field() {
    let runc = Runc::new();
    let b = Bundle::new(&["true"]).with(with_seccomp(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_EXPLODE"}]})));
    let id = unique("badact");
    let out = runc.run(&["create", "--bundle", b.path_str(), &id]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("linux.seccomp.syscalls[0].action"), "{err}");
    assert!(!runc.root.path().join(&id).exists());
}

#[test]
fn exec_runs_under_the_containers_filter() {
    let runc = Runc::new();
    let b = Bundle::new(&["sleep", "1000"])
        .with(with_seccomp(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]})));
    let id = unique("secexec");
    runc.ok(&["run", "-d", "--bundle", b.path_str(), &id]);
    let out = runc.run(&["exec", &id, "mkdir", "/tmp/x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"));
    let status = runc.ok(&["exec", &id, "grep", "Seccomp:", "/proc/self/status"]);
    assert_eq!(status.trim(), "Seccomp:\t2");
    runc.ok(&["delete", "--force", &id]);
}

#[test]
fn notify_sends_the_listener_fd_with_the_state() {
    use libseccomp::{ScmpNotifReq, ScmpNotifResp, ScmpNotifRespFlags};
    use std::os::fd::AsRawFd;
    let runc = Runc::new();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("listener.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let agent = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        // The state arrives as the message body, the fd as SCM_RIGHTS.
        let mut buf = [0u8; 8192];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = nix::sys::socket::recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            nix::sys::socket::MsgFlags::empty(),
        )
        .unwrap();
        let mut fd = -1;
        for c in msg.cmsgs().unwrap() {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                fd = fds[0];
            }
        }
        let n = msg.bytes;
        let state: Value = serde_json::from_slice(&buf[..n]).unwrap();
        // Answer one mkdir with EROFS, as a supervisor would.
        let req = ScmpNotifReq::receive(fd).unwrap();
        ScmpNotifResp::new_error(req.id, -libc::EROFS, ScmpNotifRespFlags::empty())
            .respond(fd)
            .unwrap();
        state
    });
    let profile = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": sock,
        "listenerMetadata": "agent-metadata",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
    });
    let (code, out, err) = run_script(&runc, "mkdir /tmp/n 2>&1; echo done", profile);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "mkdir: can't create directory '/tmp/n': Read-only file system\ndone\n"
    );
    let state = agent.join().unwrap();
    assert_eq!(state["fds"], json!(["seccompFd"]));
    assert_eq!(state["metadata"], "agent-metadata");
    assert!(
        state["state"]["id"]
            .as_str()
            .unwrap()
            .starts_with("seccomp-")
    );
}

/// A hook that appends "<phase> <status> <mnt-ns>" to `log` (a path valid where it runs).
fn hook(phase: &str, log: &str) -> Value {
    json!({
        "path": "/bin/sh",
        "args": ["sh", "-c", format!("read -r state; s=$(echo \"$state\" | grep -o '\"status\":\"[a-z]*\"'); echo \"{phase} $s $(readlink /proc/self/ns/mnt) $HOOK_ENV\" >> {log}")],
        "env": ["HOOK_ENV=env-ok", "PATH=/bin:/usr/bin"]
    })
}

#[test]
fn hooks_run_at_their_moments_in_their_namespaces() {
    let runc = Runc::new();
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("hooks.log");
    let host_log = log.to_str().unwrap().to_string();
    let b = Bundle::new(&["sh", "-c", "echo main >> /hooklog/hooks.log"]).with(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/hooklog", "type": "bind", "source": logdir.path(), "options": ["rbind"]}));
        c["hooks"] = json!({
            "prestart": [hook("prestart", &host_log)],
            "createRuntime": [hook("createRuntime", &host_log)],
            "createContainer": [hook("createContainer", &host_log)],
            // startContainer runs inside the container: its paths are the container's.
            "startContainer": [hook("startContainer", "/hooklog/hooks.log")],
            "poststart": [hook("poststart", &host_log)],
            "poststop": [hook("poststop", &host_log)],
        });
    });
    let id = unique("hooks");
    runc.ok(&["create", "--bundle", b.path_str(), &id]);
    runc.ok(&["start", &id]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while runc.status(&id) != "stopped" {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    runc.ok(&["delete", &id]);
    let host_mnt = std::fs::read_link("/proc/self/ns/mnt")
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    let phases: Vec<&str> = lines.iter().map(|l| l[0]).collect();
    // main and poststart race (the program runs once start returns); everything else is ordered.
    assert_eq!(phases.len(), 7, "{text}");
    let get = |phase: &str| {
        lines
            .iter()
            .find(|l| l[0] == phase)
            .unwrap_or_else(|| panic!("{phase} did not run: {text}"))
            .clone()
    };
    for phase in ["prestart", "createRuntime", "poststart", "poststop"] {
        assert_eq!(
            get(phase)[2],
            host_mnt,
            "{phase} must run in the runtime's namespace"
        );
        assert_eq!(get(phase)[3], "env-ok");
    }
    for phase in ["createContainer", "startContainer"] {
        assert_ne!(
            get(phase)[2],
            host_mnt,
            "{phase} must run in the container's mount namespace"
        );
    }
    assert_eq!(get("prestart")[1], "\"status\":\"created\"");
    assert_eq!(get("createRuntime")[1], "\"status\":\"creating\"");
    assert_eq!(get("poststart")[1], "\"status\":\"running\"");
    assert_eq!(get("poststop")[1], "\"status\":\"stopped\"");
    // Order: the create hooks before start, startContainer before the program, poststop last.
    let pos = |p: &str| phases.iter().position(|x| *x == p).unwrap();
    assert!(
        pos("prestart") < pos("createContainer") && pos("createRuntime") < pos("createContainer")
    );
    assert!(pos("createContainer") < pos("startContainer") && pos("startContainer") < pos("main"));
    assert_eq!(pos("poststop"), phases.len() - 1);
}

#[test]
fn failing_create_runtime_hook_aborts_and_cleans_up_failing_poststart_and_poststop_are_logged() {
    let runc = Runc::new();
    let cg = format!("/skiff-test-{}", unique("hookfail"));
    let b = Bundle::new(&["true"]).with(|c| {
        c["linux"]["cgroupsPath"] = json!(cg);
        c["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo refused >&2; exit 3"]}]});
    });
    let id = unique("hookfail");
    let out = runc.run(&["create", "--bundle", b.path_str(), &id]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("createRuntime hook /bin/sh") && err.contains("refused"),
        "{err}"
    );
    assert!(!runc.root.path().join(&id).exists());
    assert!(cgroup_dirs(&cg).is_empty());

    // A hook past its timeout fails the same way.
    let b = Bundle::new(&["true"]).with(|c| c["hooks"] = json!({"createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]}));
    let out = runc.run(&["create", "--bundle", b.path_str(), &unique("hooktime")]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timed out"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A failing poststart or poststop hook is a warning: the hooks after it still run, and
    // the container's lifecycle goes on.
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("hooks.log");
    let after = |phase: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("echo {phase} >> {}", log.display())]});
    let b = Bundle::new(&["true"]).with(|c| {
        c["hooks"] = json!({
            "poststart": [{"path": "/bin/false"}, after("poststart")],
            "poststop": [{"path": "/bin/false"}, after("poststop")],
        })
    });
    let id = unique("poststop");
    let out = runc.run(&["run", "--bundle", b.path_str(), &id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "a failing poststart or poststop hook must not fail the container: {err}"
    );
    assert!(
        err.contains("poststart hook /bin/false") && err.contains("poststop hook /bin/false"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "poststart\npoststop\n"
    );
    assert!(!runc.root.path().join(&id).exists());
}
