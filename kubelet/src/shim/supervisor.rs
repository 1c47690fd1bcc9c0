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
use std::os::unix::net::{UnixListener, UnixStream};
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
    attach, write_atomic, write_json,
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
    input: Option<Input>,
}

/// The container's stdin and the attached clients feeding it.
struct Input {
    /// Where the container's stdin is written (a pipe, or the pty's master); `None` once
    /// closed.
    stdin: Option<OwnedFd>,
    /// The pty's master, resized from clients (tty only).
    master: Option<OwnedFd>,
    stdin_once: bool,
    listener: UnixListener,
    clients: Vec<Client>,
    /// Input not yet taken by the container (written when its stdin is writable).
    pending: Vec<u8>,
}

struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// Clients are not read while this much input waits for the container.
const MAX_PENDING: usize = 64 * 1024;

/// What a poll found ready.
#[derive(Clone, Copy)]
enum Ready {
    Signals,
    Output(Stream),
    StdinWritable,
    Listener,
    Client(usize),
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
    let stdio = ContainerStdio::new(args)?;
    let pid_file = args.state_dir.join(CONTAINER_PID);
    let status = runtime(args)
        .arg("create")
        .arg("--bundle")
        .arg(&args.bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&args.id)
        .stdin(stdio.container_stdin)
        .stdout(stdio.container_stdout)
        .stderr(stdio.container_stderr)
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
        stdout: Some(stdio.stdout),
        stderr: stdio.stderr,
        log,
        input: stdio.input,
    })
}

/// The container's stdio and the shim's ends of it.
struct ContainerStdio {
    container_stdin: Stdio,
    container_stdout: Stdio,
    container_stderr: Stdio,
    /// What the container writes (the pty's master with a terminal: its stderr too).
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
    input: Option<Input>,
}

impl ContainerStdio {
    fn new(args: &ShimArgs) -> Result<ContainerStdio, String> {
        let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
        let clone = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("dup: {e}"));
        let listen = || -> Result<UnixListener, String> {
            let path = args.state_dir.join(attach::SOCKET);
            let _ = std::fs::remove_file(&path);
            let l = UnixListener::bind(&path)
                .map_err(|e| format!("binding {}: {e}", path.display()))?;
            l.set_nonblocking(true)
                .map_err(|e| format!("attach socket: {e}"))?;
            Ok(l)
        };
        if args.tty {
            let pty = nix::pty::openpty(None, None).map_err(|e| format!("openpty: {e}"))?;
            let _ = fcntl(
                &pty.master,
                FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
            let input = if args.stdin {
                let stdin = clone(&pty.master)?;
                let _ = fcntl(&stdin, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
                Some(Input {
                    stdin: Some(stdin),
                    master: Some(clone(&pty.master)?),
                    stdin_once: args.stdin_once,
                    listener: listen()?,
                    clients: Vec::new(),
                    pending: Vec::new(),
                })
            } else {
                None
            };
            return Ok(ContainerStdio {
                container_stdin: Stdio::from(clone(&pty.slave)?),
                container_stdout: Stdio::from(clone(&pty.slave)?),
                container_stderr: Stdio::from(pty.slave),
                stdout: pty.master,
                stderr: None,
                input,
            });
        }
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (container_stdin, input) = if args.stdin {
            let (in_r, in_w) = pipe()?;
            let _ = fcntl(&in_w, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
            let input = Input {
                stdin: Some(in_w),
                master: None,
                stdin_once: args.stdin_once,
                listener: listen()?,
                clients: Vec::new(),
                pending: Vec::new(),
            };
            (Stdio::from(in_r), Some(input))
        } else {
            (Stdio::null(), None)
        };
        Ok(ContainerStdio {
            container_stdin,
            container_stdout: Stdio::from(out_w),
            container_stderr: Stdio::from(err_w),
            stdout: out_r,
            stderr: Some(err_r),
            input,
        })
    }
}

impl Input {
    /// Takes new clients.
    fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_ok() {
                self.clients.push(Client {
                    stream,
                    buf: Vec::new(),
                });
            }
        }
    }

    /// Reads what client `i` sent; drops it at its end.
    fn read_client(&mut self, i: usize) {
        let mut chunk = [0u8; 16 * 1024];
        let client = &mut self.clients[i];
        let ended = match client.stream.read(&mut chunk) {
            Ok(0) => true,
            Ok(n) => {
                client.buf.extend_from_slice(&chunk[..n]);
                false
            }
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ),
        };
        for frame in attach::decode(&mut client.buf) {
            match frame {
                attach::Frame::Stdin(data) => {
                    if self.stdin.is_some() {
                        self.pending.extend_from_slice(&data);
                    }
                }
                attach::Frame::Resize { cols, rows } => {
                    if let Some(master) = &self.master {
                        let size = libc::winsize {
                            ws_row: rows,
                            ws_col: cols,
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        // SAFETY: TIOCSWINSZ on the pty master the shim owns, with a valid winsize.
                        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
                    }
                }
                attach::Frame::CloseStdin => {
                    if self.stdin_once {
                        self.close_stdin();
                    }
                }
            }
        }
        if ended {
            self.clients.swap_remove(i);
        }
    }

    /// Writes what the container's stdin takes of the pending input.
    fn flush(&mut self) {
        let Some(fd) = &self.stdin else {
            self.pending.clear();
            return;
        };
        while !self.pending.is_empty() {
            match nix::unistd::write(fd, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(_) => {
                    // The container closed its stdin.
                    self.stdin = None;
                    self.pending.clear();
                    return;
                }
            }
        }
    }

    /// Closes the container's stdin once the pending input is written (a pty gets an EOF
    /// character: its master stays open for the output).
    fn close_stdin(&mut self) {
        self.flush();
        if self.master.is_some() {
            self.pending.push(4);
            self.flush();
        } else {
            self.stdin = None;
        }
    }
}

impl Running {
    /// Copies output to the log until the container exits, records the exit; returns its code.
    fn wait(&mut self, args: &ShimArgs) -> i32 {
        let mut buf = vec![0u8; 64 * 1024];
        let mut exit: Option<i32> = None;
        while exit.is_none() {
            let mut ready: Vec<Ready> = Vec::new();
            {
                let mut sources = vec![Ready::Signals];
                let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
                for (stream, fd) in [
                    (Stream::Stdout, &self.stdout),
                    (Stream::Stderr, &self.stderr),
                ] {
                    if let Some(fd) = fd {
                        sources.push(Ready::Output(stream));
                        fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    }
                }
                if let Some(input) = &self.input {
                    if let Some(stdin) = input.stdin.as_ref().filter(|_| !input.pending.is_empty())
                    {
                        sources.push(Ready::StdinWritable);
                        fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLOUT));
                    }
                    sources.push(Ready::Listener);
                    fds.push(PollFd::new(input.listener.as_fd(), PollFlags::POLLIN));
                    if input.pending.len() < MAX_PENDING {
                        for (i, c) in input.clients.iter().enumerate() {
                            sources.push(Ready::Client(i));
                            fds.push(PollFd::new(c.stream.as_fd(), PollFlags::POLLIN));
                        }
                    }
                }
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        log(format_args!("poll: {e}"));
                        break;
                    }
                }
                for (source, fd) in sources.into_iter().zip(&fds) {
                    if fd.any().unwrap_or(false) {
                        ready.push(source);
                    }
                }
            }
            // Clients from the highest index down: reading one may remove it.
            let mut clients: Vec<usize> = ready
                .iter()
                .filter_map(|r| match r {
                    Ready::Client(i) => Some(*i),
                    _ => None,
                })
                .collect();
            clients.sort_unstable_by(|a, b| b.cmp(a));
            if let Some(input) = &mut self.input {
                for i in clients {
                    input.read_client(i);
                }
            }
            for r in ready {
                match r {
                    Ready::Output(stream) => {
                        self.copy(stream, &mut buf);
                    }
                    Ready::Listener => {
                        if let Some(input) = &mut self.input {
                            input.accept();
                        }
                    }
                    Ready::Signals => {
                        while self.signals.read_signal().ok().flatten().is_some() {}
                        exit = self.reap();
                    }
                    Ready::StdinWritable | Ready::Client(_) => {}
                }
            }
            if let Some(input) = &mut self.input {
                input.flush();
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
            // A pty's master reads EIO once the last holder of its slave is gone.
            Ok(0) | Err(nix::errno::Errno::EBADF | nix::errno::Errno::EIO) => {
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
