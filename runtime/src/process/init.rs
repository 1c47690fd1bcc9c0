//! The child side of create: runs inside the new namespaces, sets up everything the container
//! will see, reports ready, blocks on the exec fifo until `start`, then execs the user's program.

use super::InitConfig;
use super::attributes;

use super::channel::{Channel, Msg};
use crate::error::{Context, Error, Result};
use crate::rootfs::{self, RootfsContext};
use crate::safe_path::Kind;
use crate::sealed_exe::Trampoline;
use crate::seccomp::Filter;
use crate::{capabilities, console, rlimits};
use nix::fcntl::{OFlag, open, openat};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::SigHandler;
use nix::sys::stat::Mode;
use oci_spec::runtime::{LinuxNamespaceType, Process};
use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// What the init writes to the exec fifo once `start` opens it: go ahead and exec, or there is
/// no process to exec (the init exits and `start` fails).
pub const GO: u8 = 0;
pub const NO_PROCESS: u8 = b'n';

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn run(cfg: InitConfig, chan: &Channel) -> Result<Infallible> {
    await_go(chan)?;
    let spec = cfg.spec;
    // A config without a process can be created (runtime-spec: process is required by
    // start); its start fails, see NO_PROCESS.
    let process = spec.process().as_ref();
    let ns = cfg.namespaces;
    for (typ, fd) in &ns.join {
        if !matches!(typ, LinuxNamespaceType::Pid | LinuxNamespaceType::Time) {
            setns(fd, CloneFlags::empty())
                .ctx(|| format!("join {} namespace", crate::namespaces::name(*typ)))?;
        }
    }
    let in_user_ns = ns.has(LinuxNamespaceType::User);
    if in_user_ns {
        nix::unistd::setresgid(0.into(), 0.into(), 0.into())
            .ctx(|| "setgid 0 in the user namespace".into())?;
        nix::unistd::setresuid(0.into(), 0.into(), 0.into())
            .ctx(|| "setuid 0 in the user namespace".into())?;
    }
    if ns.new_cgroup {
        unshare(CloneFlags::CLONE_NEWCGROUP).ctx(|| "create cgroup namespace".into())?;
    }
    nix::unistd::setsid().ctx(|| "setsid".into())?;
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(h).ctx(|| format!("hostname {h:?}"))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        // SAFETY: setdomainname with a valid buffer and length.
        if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
            return Err(Error::Other(format!(
                "domainname {d:?}: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    let ctx = RootfsContext {
        rootfs: cfg.rootfs,
        layout: cfg.layout,
        cgroup: cfg.cgroup,
        new_cgroup_ns: ns.new_cgroup,
        in_user_ns,
        own_mount_ns: ns.has(LinuxNamespaceType::Mount),
    };
    let root = rootfs::prepare(spec, &ctx)?;
    let hooks = spec.hooks().clone().unwrap_or_default();
    let wants_hooks = [
        hooks.prestart(),
        hooks.create_runtime(),
        hooks.create_container(),
        hooks.start_container(),
    ]
    .iter()
    .any(|h| h.as_ref().is_some_and(|h| !h.is_empty()))
        // A seccomp listener is told the container's state too.
        || cfg.seccomp.is_some_and(|f| f.wants_state());
    let mut state_json = String::new();
    if wants_hooks {
        chan.send(&Msg::Hook)?;
        state_json = match chan.recv()? {
            Some(Msg::HookDone(s)) => s,
            _ => return Err(Error::Other("parent went away during hooks".into())),
        };
        crate::hooks::run(
            "createContainer",
            hooks.create_container().as_deref().unwrap_or_default(),
            state_json.as_bytes(),
        )?;
    }
    // Opened before pivot_root, while the host paths are visible; reopened for writing at the end.
    let fifo = cfg
        .fifo
        .map(|path| -> Result<(OwnedFd, OwnedFd)> {
            let fifo = open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
                .ctx(|| format!("open {}", path.display()))?;
            let host_proc = open(
                "/proc",
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .ctx(|| "open /proc".into())?;
            Ok((fifo, host_proc))
        })
        .transpose()?;
    if let Some(process) = process {
        root.make(process.cwd(), Kind::Dir)
            .map_err(|e| Error::Config(format!("process.cwd: {e}")))?;
    }
    let null = rootfs::host_null()?;
    rootfs::protect(spec, &root, null.as_fd())?;
    drop((root, null));
    rootfs::pivot(cfg.rootfs, cfg.no_pivot, ctx.own_mount_ns)?;
    rootfs::finalize(spec)?;
    if let Some(linux) = spec.linux() {
        if let Some(p) = linux.personality() {
            attributes::set_personality(p)?;
        }
        if let Some(p) = linux.memory_policy() {
            attributes::set_memory_policy(p)?;
        }
    }
    let seccomp = cfg.seccomp;
    let ready = process
        .map(|p| prepare(p, cfg.console_socket, seccomp, &state_json))
        .transpose()?;
    // After Ready the parent exits (create, run --detach): the death signal must not follow.
    nix::sys::prctl::set_pdeathsig(None).ctx(|| "prctl PDEATHSIG".into())?;
    // Held until the program replaces us (close-on-exec), see wait_for_start.
    let _start_signal = match fifo {
        Some((fifo, host_proc)) => {
            chan.send(&Msg::Ready)?;
            Some(wait_for_start(&fifo, &host_proc, ready.is_some())?)
        }
        None => None,
    };
    let Some(ready) = ready else {
        return Err(Error::Config("process: missing, nothing to start".into()));
    };
    if let Some(start_hooks) = hooks.start_container().as_deref().filter(|h| !h.is_empty()) {
        crate::hooks::run("startContainer", start_hooks, state_json.as_bytes())?;
    }
    ready.exec(
        cfg.preserve_fds,
        seccomp,
        &state_json,
        cfg.trampoline.map(|t| (t, chan)),
    )
}

/// Blocks until `start` opens the exec fifo for reading, then tells it whether there is a
/// program to start. The writer returned stays open (close-on-exec) until the program replaces
/// us: `start` waits for its end-of-file, so once start returns the program runs (a signal sent
/// right after reaches it, not us).
fn wait_for_start(fifo: &OwnedFd, host_proc: &OwnedFd, has_process: bool) -> Result<OwnedFd> {
    let fd = format!("thread-self/fd/{}", fifo.as_raw_fd());
    let writer = openat(
        host_proc,
        fd.as_str(),
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| "open the exec fifo".into())?;
    let byte = if has_process { GO } else { NO_PROCESS };
    nix::unistd::write(&writer, &[byte]).ctx(|| "write the exec fifo".into())?;
    Ok(writer)
}

/// The child's first steps (after joining its v1 cgroups, see `cgroups::join_v1`): die with
/// the runtime until ready, take back the signals the parent blocked, and wait until the
/// parent has written the id maps.
fn await_go(chan: &Channel) -> Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .ctx(|| "prctl PDEATHSIG".into())?;
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )
    .ctx(|| "reset the signal mask".into())?;
    match chan.recv()? {
        Some(Msg::Go) => Ok(()),
        _ => Err(Error::Other("the runtime went away before setup".into())),
    }
}

/// A process about to exec: everything is set up but the late seccomp filter.
pub struct Ready {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<String>,
    /// With no_new_privs the filter is loaded last, right before execve, so that as few of our
    /// own syscalls as possible run under it (as runc does).
    seccomp_late: bool,
}

/// The steps shared by a container's init and an exec'd process, inside the container: the
/// terminal, the program lookup, rlimits, no_new_privs, seccomp (early when it needs
/// CAP_SYS_ADMIN), the bounding set, the user, the working directory and the capabilities.
pub fn prepare(
    process: &Process,
    console_socket: Option<OwnedFd>,
    seccomp: Option<&Filter>,
    state_json: &str,
) -> Result<Ready> {
    // Rust's runtime ignores SIGPIPE, and an ignored signal stays ignored across execve: the
    // program starts with the default (a write to a closed pipe kills it), as under runc.
    // Before seccomp, which may deny rt_sigaction.
    // SAFETY: SIG_DFL installs no handler.
    unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, SigHandler::SigDfl) }
        .ctx(|| "reset SIGPIPE".into())?;
    if process.terminal().unwrap_or(false) {
        let socket = console_socket.as_ref().ok_or_else(|| {
            Error::Config("process.terminal is true but there is no --console-socket".into())
        })?;
        let size = process.console_size().map(|b| (b.height(), b.width()));
        let master = console::setup_pty(size)?;
        console::send_fd(socket.as_raw_fd(), master.as_raw_fd(), "/dev/ptmx")?;
    }
    drop(console_socket);
    let env: Vec<String> = with_home(
        process.env().clone().unwrap_or_default(),
        process.user().uid(),
    );
    let args = process.args().clone().unwrap_or_default();
    let name = args
        .first()
        .ok_or_else(|| Error::Config("process.args: must name the program to run".into()))?;
    let program = find_program(name, &env)?;
    rlimits::apply(process.rlimits().as_deref().unwrap_or_default())?;
    attributes::apply(process)?;
    let nnp = process.no_new_privileges().unwrap_or(false);
    if nnp {
        nix::sys::prctl::set_no_new_privs().ctx(|| "set no_new_privs".into())?;
    } else if let Some(filter) = seccomp {
        filter.load(state_json)?;
    }
    if let Some(caps) = process.capabilities() {
        capabilities::apply_bounding(caps)?;
    }
    switch_user(process.user())?;
    nix::unistd::chdir(process.cwd())
        .ctx(|| format!("process.cwd: chdir {}", process.cwd().display()))?;
    if let Some(caps) = process.capabilities() {
        capabilities::apply_sets(caps)?;
    } else {
        for set in [
            caps::CapSet::Effective,
            caps::CapSet::Permitted,
            caps::CapSet::Inheritable,
            caps::CapSet::Ambient,
        ] {
            caps::clear(None, set).map_err(|e| Error::Other(format!("clear capabilities: {e}")))?;
        }
    }
    Ok(Ready {
        program,
        args,
        env,
        seccomp_late: nnp && seccomp.is_some(),
    })
}

impl Ready {
    /// Closes what the program must not inherit, loads a late seccomp filter, and execs,
    /// through the trampoline when one is given.
    pub fn exec(
        self,
        preserve_fds: u32,
        seccomp: Option<&Filter>,
        state_json: &str,
        trampoline: Option<(&Trampoline, &Channel)>,
    ) -> Result<Infallible> {
        // Nothing of ours past the preserved fds reaches the program.
        close_on_exec_from(3 + preserve_fds)?;
        if self.seccomp_late
            && let Some(filter) = seccomp
        {
            filter.load(state_json)?;
        }
        if let Some((t, chan)) = trampoline {
            // The channel stays open through the trampoline's exec (see Trampoline).
            let r = if chan.raw() == t.channel_fd {
                // SAFETY: fcntl on our own open fd.
                unsafe { libc::fcntl(t.channel_fd, libc::F_SETFD, 0) }
            } else {
                // SAFETY: dup3 onto a number that is ours to reuse: every fd from 3 +
                // preserve_fds on is closed by the exec, and the trampoline's is not this one.
                unsafe { libc::dup3(chan.raw(), t.channel_fd, 0) }
            };
            // Past a low RLIMIT_NOFILE the fd cannot be had: the parent then hears of the
            // start one exec early, as without the trampoline's hand-over.
            if let Err(e) = nix::errno::Errno::result(r) {
                tracing::debug!("channel fd {} for the trampoline: {e}", t.channel_fd);
            }
        }
        exec(
            &self.program,
            &self.args,
            &self.env,
            trampoline.map(|(t, _)| t.exe.as_fd()),
        )
    }
}

/// Marks every fd from `first` on close-on-exec: close_range(CLOSE_RANGE_CLOEXEC), or where
/// the kernel lacks it (before 5.11), each fd listed in /proc/self/fd.
fn close_on_exec_from(first: u32) -> Result<()> {
    // SAFETY: close_range on fd numbers only; CLOEXEC leaves them open until execve.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    close_on_exec_walk(first)
}

fn close_on_exec_walk(first: u32) -> Result<()> {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .ctx(|| "list /proc/self/fd to close the runtime's descriptors".into())?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first as i32)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a descriptor number; the one read_dir used is closed already.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EBADF) {
                return Err(Error::Other(format!("mark fd {fd} close-on-exec: {err}")));
            }
        }
    }
    Ok(())
}

fn with_home(mut env: Vec<String>, uid: u32) -> Vec<String> {
    if env.iter().any(|e| e.starts_with("HOME=")) {
        return env;
    }
    let home = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 5 && f[2].parse() == Ok(uid)).then(|| f[5].to_string())
            })
        })
        .unwrap_or_else(|| "/".into());
    env.push(format!("HOME={home}"));
    env
}

/// Resolves the program as execvp would, with the container's PATH, inside the container.
fn find_program(name: &str, env: &[String]) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    // The wording matters: podman maps "no such file or directory" and "executable file not
    // found" to exit 127 and anything else to 126, as with runc.
    if name.contains('/') {
        return match std::fs::metadata(name) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Config(format!(
                "exec: {name:?}: stat {name}: no such file or directory"
            ))),
            Ok(_) if is_exec(Path::new(name)) => Ok(PathBuf::from(name)),
            _ => Err(Error::Config(format!("exec: {name:?}: permission denied"))),
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(name))
        .find(|p| is_exec(p))
        .ok_or_else(|| {
            Error::Config(format!(
                "exec: {name:?}: executable file not found in $PATH"
            ))
        })
}

/// process.user: groups, gid, uid, umask — keeping capabilities across the uid change so
/// the configured sets can be applied after it.
fn switch_user(user: &oci_spec::runtime::User) -> Result<()> {
    let gids: Vec<nix::unistd::Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| (*g).into())
        .collect();
    // setgroups is denied in a user namespace whose setgroups file says "deny": skip only then.
    if let Err(e) = nix::unistd::setgroups(&gids)
        && !gids.is_empty()
    {
        return Err(Error::Other(format!(
            "process.user.additionalGids: setgroups: {e}"
        )));
    }
    nix::sys::prctl::set_keepcaps(true).ctx(|| "prctl KEEPCAPS".into())?;
    let gid = user.gid().into();
    nix::unistd::setresgid(gid, gid, gid).ctx(|| format!("process.user.gid {}", user.gid()))?;
    let uid = user.uid().into();
    nix::unistd::setresuid(uid, uid, uid).ctx(|| format!("process.user.uid {}", user.uid()))?;
    nix::sys::prctl::set_keepcaps(false).ctx(|| "prctl KEEPCAPS".into())?;
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(Mode::from_bits_truncate(mask));
    }
    Ok(())
}

fn exec(
    program: &Path,
    args: &[String],
    env: &[String],
    trampoline: Option<BorrowedFd>,
) -> Result<Infallible> {
    let cstr = |s: &str| {
        CString::new(s).map_err(|_| Error::Config(format!("process: {s:?} contains a NUL byte")))
    };
    let path = cstr(&program.to_string_lossy())?;
    let argv = args.iter().map(|a| cstr(a)).collect::<Result<Vec<_>>>()?;
    let envp = env.iter().map(|e| cstr(e)).collect::<Result<Vec<_>>>()?;
    let err = match trampoline {
        // The trampoline runs execve(its argv[0], the rest of its argv, envp).
        Some(fd) => {
            let argv: Vec<CString> = std::iter::once(path).chain(argv).collect();
            nix::unistd::execveat(fd, c"", &argv, &envp, nix::fcntl::AtFlags::AT_EMPTY_PATH)
                .unwrap_err()
        }
        None => nix::unistd::execve(&path, &argv, &envp).unwrap_err(),
    };
    Err(Error::Other(format!("exec {}: {err}", program.display())))
}

/// The child side of `exec`: join the container, prepare, report ready, exec.
pub fn run_exec(
    cfg: super::ExecConfig,
    join: &[(LinuxNamespaceType, OwnedFd)],
    in_user_ns: bool,
    chan: &Channel,
) -> Result<Infallible> {
    await_go(chan)?;
    // Now in the container's cgroup.
    let affinity = cfg.process.exec_cpu_affinity().as_ref();
    if let Some(last) = affinity.and_then(|a| a.cpu_affinity_final().as_deref()) {
        attributes::set_affinity("process.execCPUAffinity.final", last)?;
    }
    if let Some(p) = cfg.personality {
        attributes::set_personality(p)?;
    }
    for (typ, fd) in join {
        if !matches!(typ, LinuxNamespaceType::Pid | LinuxNamespaceType::Time) {
            setns(fd, CloneFlags::empty())
                .ctx(|| format!("join {} namespace", crate::namespaces::name(*typ)))?;
        }
    }
    if in_user_ns {
        nix::unistd::setresgid(0.into(), 0.into(), 0.into())
            .ctx(|| "setgid 0 in the user namespace".into())?;
        nix::unistd::setresuid(0.into(), 0.into(), 0.into())
            .ctx(|| "setuid 0 in the user namespace".into())?;
    }
    nix::unistd::setsid().ctx(|| "setsid".into())?;
    let ready = prepare(
        cfg.process,
        cfg.console_socket,
        cfg.seccomp,
        &cfg.state_json,
    )?;
    nix::sys::prctl::set_pdeathsig(None).ctx(|| "prctl PDEATHSIG".into())?;
    chan.send(&Msg::Ready)?;
    ready.exec(cfg.preserve_fds, cfg.seccomp, &cfg.state_json, None)
}
