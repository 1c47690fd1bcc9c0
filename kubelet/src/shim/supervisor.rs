//! The shim's process: synchronous and single-threaded (no async runtime) so that one costs a few
//! hundred KB per container, as conmon does.
//!
//! The process the kubelet starts forks twice: the first child starts a new session and forks the
//! supervisor, then exits, so the supervisor is nobody's child but init's and survives the
//! kubelet. The supervisor tells the first process (still waited on by the kubelet) over a pipe
//! whether the container started; that process then exits 0 or prints the error and exits 1.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

use chrono::Utc;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, pipe2, setsid};

use super::{
    CONTAINER_PID, EXIT, ExitRecord, RUNTIME_LOG, SHIM_LOG, SHIM_PID, ShimArgs, StartRecord,
    write_atomic, write_json,
};
use crate::cri_log::{CriLog, Stream};

/// The shim's entry point; returns the process's exit code.
pub fn main(args: ShimArgs) -> i32 {
    let (ready_r, ready_w) = match pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skiff-shim: pipe: {e}");
            return 1;
        }
    };
    // SAFETY: the shim is single-threaded here; the children only call async-signal-safe
    // functions until they exec or start the supervisor's own single-threaded loop.
    match unsafe { fork() } {
        Err(e) => {
            eprintln!("skiff-shim: fork: {e}");
            1
        }
        Ok(ForkResult::Parent { child }) => {
            drop(ready_w);
            let mut answer = String::new();
            let _ = File::from(ready_r).read_to_string(&mut answer);
            let _ = waitpid(child, None);
            match answer.strip_prefix("ok ") {
                Some(pid) => {
                    println!("{}", pid.trim());
                    0
                }
                None if answer.is_empty() => {
                    eprintln!("skiff-shim: the supervisor died before the container started");
                    1
                }
                None => {
                    eprintln!("{}", answer.trim());
                    1
                }
            }
        }
        Ok(ForkResult::Child) => {
            drop(ready_r);
            let _ = setsid();
            // SAFETY: as above.
            match unsafe { fork() } {
                Ok(ForkResult::Child) => {
                    let code = supervise(&args, ready_w);
                    std::process::exit(code)
                }
                _ => unsafe { libc::_exit(0) },
            }
        }
    }
}

/// Points stdin and stdout at /dev/null and stderr at the shim's log, so the kubelet's pipes to
/// the first process close and the shim's own messages are kept.
fn detach_stdio(state_dir: &Path) -> std::io::Result<()> {
    let null = File::options().read(true).write(true).open("/dev/null")?;
    let log = File::options()
        .create(true)
        .append(true)
        .open(state_dir.join(SHIM_LOG))?;
    // SAFETY: dup2 onto the standard descriptors, which this process owns.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
        libc::dup2(log.as_raw_fd(), 2);
    }
    Ok(())
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("{} {msg}", Utc::now().to_rfc3339());
}

/// Runs the container and supervises it to its end; returns the supervisor's exit code.
fn supervise(args: &ShimArgs, ready: OwnedFd) -> i32 {
    let mut ready = File::from(ready);
    if let Err(e) = detach_stdio(&args.state_dir) {
        let _ = write!(ready, "skiff-shim: {}: {e}", args.state_dir.display());
        return 1;
    }
    match start(args) {
        Ok(mut running) => {
            let _ = write!(ready, "ok {}", running.pid);
            drop(ready);
            let code = running.wait(args);
            log(format_args!("container {} exited with {code}", args.id));
            0
        }
        Err(message) => {
            log(&message);
            let record = ExitRecord {
                exit_code: 128,
                finished_at: Utc::now(),
                oom_killed: false,
                start_error: Some(message.clone()),
            };
            if let Err(e) = write_json(&args.state_dir, EXIT, &record) {
                log(format_args!("writing {EXIT}: {e}"));
            }
            let _ = write!(ready, "{message}");
            1
        }
    }
}

struct Running {
    pid: Pid,
    signals: SignalFd,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    log: CriLog,
}

fn runtime(args: &ShimArgs) -> Command {
    let mut c = Command::new(&args.runtime);
    c.arg("--root")
        .arg(&args.runtime_root)
        .arg("--log")
        .arg(args.state_dir.join(RUNTIME_LOG))
        .arg("--log-format")
        .arg("json");
    c
}

/// The last error the runtime logged (runc's JSON log lines), or `fallback`.
fn runtime_error(args: &ShimArgs, fallback: String) -> String {
    let text = std::fs::read_to_string(args.state_dir.join(RUNTIME_LOG)).unwrap_or_default();
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "error")
        .and_then(|v| v["msg"].as_str().map(str::to_string))
        .unwrap_or(fallback)
}

fn start(args: &ShimArgs) -> Result<Running, String> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("subreaper: {e}"))?;
    write_atomic(
        &args.state_dir,
        SHIM_PID,
        std::process::id().to_string().as_bytes(),
    )
    .map_err(|e| format!("writing {SHIM_PID}: {e}"))?;
    // SIGCHLD is read from a signalfd; blocked before any child exists so none is missed.
    // (std's Command resets the mask in the runtime's process.)
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block()
        .map_err(|e| format!("sigprocmask: {e}"))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| format!("signalfd: {e}"))?;
    let log = CriLog::open(&args.log_path, args.log_max_size)
        .map_err(|e| format!("opening log {}: {e}", args.log_path.display()))?;
    let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let pid_file = args.state_dir.join(CONTAINER_PID);
    let status = runtime(args)
        .arg("create")
        .arg("--bundle")
        .arg(&args.bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&args.id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .status()
        .map_err(|e| format!("running {}: {e}", args.runtime.display()))?;
    if !status.success() {
        let _ = runtime(args)
            .arg("delete")
            .arg("--force")
            .arg(&args.id)
            .status();
        return Err(runtime_error(args, format!("runtime create: {status}")));
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("runtime create left no pid in {}", pid_file.display()))?;
    let out = runtime(args)
        .arg("start")
        .arg(&args.id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running {}: {e}", args.runtime.display()))?;
    if !out.status.success() {
        let _ = runtime(args)
            .arg("delete")
            .arg("--force")
            .arg(&args.id)
            .status();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(runtime_error(args, format!("runtime start: {stderr}")));
    }
    write_json(
        &args.state_dir,
        super::STARTED,
        &StartRecord {
            pid,
            started_at: Utc::now(),
        },
    )
    .map_err(|e| format!("writing started record: {e}"))?;
    Ok(Running {
        pid: Pid::from_raw(pid),
        signals,
        stdout: Some(out_r),
        stderr: Some(err_r),
        log,
    })
}

impl Running {
    /// Copies output to the log until the container exits, records the exit; returns its code.
    fn wait(&mut self, args: &ShimArgs) -> i32 {
        let mut buf = vec![0u8; 64 * 1024];
        let mut exit: Option<i32> = None;
        while exit.is_none() {
            let mut ready = [false; 3];
            {
                let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
                for fd in [&self.stdout, &self.stderr].into_iter().flatten() {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        log(format_args!("poll: {e}"));
                        break;
                    }
                }
                let any = |f: &PollFd| f.any().unwrap_or(false);
                ready[0] = any(&fds[0]);
                let mut i = 1;
                if self.stdout.is_some() {
                    ready[1] = any(&fds[i]);
                    i += 1;
                }
                if self.stderr.is_some() {
                    ready[2] = any(&fds[i]);
                }
            }
            if ready[1] {
                self.copy(Stream::Stdout, &mut buf);
            }
            if ready[2] {
                self.copy(Stream::Stderr, &mut buf);
            }
            if ready[0] {
                while self.signals.read_signal().ok().flatten().is_some() {}
                exit = self.reap();
            }
        }
        // The container is gone; take what is left in the pipes without waiting for processes
        // outside its pid namespace that may still hold them.
        for fd in [&self.stdout, &self.stderr].into_iter().flatten() {
            let _ = fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
        }
        while self.stdout.is_some() && self.copy(Stream::Stdout, &mut buf) {}
        while self.stderr.is_some() && self.copy(Stream::Stderr, &mut buf) {}
        let _ = self.log.finish(Stream::Stdout);
        let _ = self.log.finish(Stream::Stderr);
        let code = exit.unwrap_or(255);
        let record = ExitRecord {
            exit_code: code,
            finished_at: Utc::now(),
            oom_killed: args.memory_cgroup.as_deref().is_some_and(oom_killed),
            start_error: None,
        };
        if let Err(e) = write_json(&args.state_dir, EXIT, &record) {
            log(format_args!("writing {EXIT}: {e}"));
        }
        code
    }

    /// Reads what is in one stream's pipe into the log; false at its end (or nothing to read
    /// when non-blocking).
    fn copy(&mut self, stream: Stream, buf: &mut [u8]) -> bool {
        let slot = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        let Some(fd) = slot.as_ref() else {
            return false;
        };
        match nix::unistd::read(fd, buf) {
            Ok(0) | Err(nix::errno::Errno::EBADF) => {
                *slot = None;
                false
            }
            Ok(n) => {
                if let Err(e) = self.log.write(stream, &buf[..n]) {
                    log(format_args!("writing the log: {e}"));
                }
                true
            }
            Err(nix::errno::Errno::EINTR) => true,
            Err(_) => false,
        }
    }

    /// Reaps every exited child (orphans of the container end here too, being a subreaper);
    /// the container's exit code once its init has exited.
    fn reap(&mut self) -> Option<i32> {
        let mut exit = None;
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == self.pid => exit = Some(code),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == self.pid => {
                    exit = Some(128 + sig as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return exit,
                Ok(_) => {}
            }
        }
    }
}

/// Whether the kernel's OOM killer killed a process of the cgroup (v1 `memory.oom_control`'s
/// `oom_kill`, v2 `memory.events`' `oom_kill`).
fn oom_killed(dir: &Path) -> bool {
    ["memory.oom_control", "memory.events"].iter().any(|f| {
        std::fs::read_to_string(dir.join(f))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("oom_kill "))
            .any(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
    })
}
