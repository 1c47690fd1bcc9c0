//! The pause process of a pod with `shareProcessNamespace: true`: PID 1 of the pod's own PID
//! namespace, which every container of the pod joins (OCI `linux.namespaces` path
//! `/proc/<pid>/ns/pid`), so they see and can signal each other's processes. A PID namespace
//! lives only as long as its init, so it cannot be pinned with a bind mount as the sandbox's
//! other namespaces are: the pause process holds it, reaps the orphans reparented to it, and
//! outlives the kubelet as the shims do (`skiff-shim pause <pod-uid>`, detached in its own
//! session). Its host pid is kept in the sandbox directory (`pause.pid`) and checked against
//! `/proc/<pid>/cmdline` before it is used or killed, so a recycled pid is never taken for it.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::{ForkResult, Pid, fork, pipe2, setsid};

/// The first argument that makes `skiff-shim` a pause process.
pub const PAUSE_ARG: &str = "pause";
const PID_FILE: &str = "pause.pid";

/// `skiff-shim pause <uid>`: starts the pause process and prints its host pid; returns the exit
/// code of the command.
pub fn main(uid: &str) -> i32 {
    let (answer_r, answer_w) = match pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skiff-shim pause {uid}: pipe: {e}");
            return 1;
        }
    };
    // SAFETY: single-threaded; the children only call async-signal-safe functions or run the
    // pause loop, which is single-threaded too.
    match unsafe { fork() } {
        Err(e) => {
            eprintln!("skiff-shim pause {uid}: fork: {e}");
            1
        }
        Ok(ForkResult::Parent { child }) => {
            drop(answer_w);
            let mut answer = String::new();
            let _ = File::from(answer_r).read_to_string(&mut answer);
            let _ = waitpid(child, None);
            match answer.strip_prefix("ok ") {
                Some(pid) => {
                    println!("{}", pid.trim());
                    0
                }
                None => {
                    eprintln!("skiff-shim pause {uid}: {}", answer.trim());
                    1
                }
            }
        }
        Ok(ForkResult::Child) => {
            drop(answer_r);
            let mut answer = File::from(answer_w);
            let _ = setsid();
            // The next child is PID 1 of a new PID namespace.
            if let Err(e) = unshare(CloneFlags::CLONE_NEWPID) {
                let _ = write!(answer, "unshare(CLONE_NEWPID): {e}");
                unsafe { libc::_exit(1) }
            }
            // SAFETY: as above.
            match unsafe { fork() } {
                Ok(ForkResult::Parent { child }) => {
                    let _ = write!(answer, "ok {child}");
                    unsafe { libc::_exit(0) }
                }
                Ok(ForkResult::Child) => {
                    drop(answer);
                    pause()
                }
                Err(e) => {
                    let _ = write!(answer, "fork: {e}");
                    unsafe { libc::_exit(1) }
                }
            }
        }
    }
}

/// PID 1's loop: reaps every child that ends; ends on SIGTERM or SIGINT.
fn pause() -> ! {
    // SAFETY: dup2 onto the standard descriptors, which this process owns.
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(null.as_raw_fd(), 2);
        }
    }
    let mut signals = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        signals.add(s);
    }
    // Blocked signals stay pending (even SIGCHLD, ignored by default) for sigwait.
    let _ = signals.thread_block();
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {
                while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    if status == nix::sys::wait::WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            Ok(_) => std::process::exit(0),
            Err(_) => {}
        }
    }
}

/// Whether `pid` is the pause process of the pod `uid`.
fn is_pause_of(pid: i32, uid: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
        args.len() >= 3 && args[1] == PAUSE_ARG.as_bytes() && args[2] == uid.as_bytes()
    })
}

/// The pod's running pause process recorded in `sandbox_dir`, if any.
fn running(sandbox_dir: &Path, uid: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(sandbox_dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    is_pause_of(pid, uid).then_some(pid)
}

/// The PID namespace of the pod's pause process (started now if it does not run), as the path
/// its containers join.
pub async fn ensure(shim: &Path, sandbox_dir: &Path, uid: &str) -> Result<PathBuf, String> {
    if let Some(pid) = running(sandbox_dir, uid) {
        return Ok(PathBuf::from(format!("/proc/{pid}/ns/pid")));
    }
    let out = tokio::process::Command::new(shim)
        .args([PAUSE_ARG, uid])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("running {} {PAUSE_ARG}: {e}", shim.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let pid: i32 = pid
        .parse()
        .map_err(|_| format!("the pause process printed {pid:?}, not a pid"))?;
    if let Err(e) = super::write_atomic(sandbox_dir, PID_FILE, pid.to_string().as_bytes()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        return Err(format!("{}: {e}", sandbox_dir.join(PID_FILE).display()));
    }
    tracing::info!(pod = %uid, pid, "pause process started (shared PID namespace)");
    Ok(PathBuf::from(format!("/proc/{pid}/ns/pid")))
}

/// Kills the pod's pause process, if it runs (and with it whatever is left in its namespace).
pub fn stop(sandbox_dir: &Path, uid: &str) {
    if let Some(pid) = running(sandbox_dir, uid) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}
