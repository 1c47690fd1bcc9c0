//! The container's init process: one clone3 carrying every new namespace (and, on a unified
//! cgroup2 host, CLONE_INTO_CGROUP so no migration write is needed; v1 hierarchies the child
//! joins itself, see `cgroups::join_v1`), synchronised with the parent
//! over a SOCK_SEQPACKET pair. The child is a fork of the runtime, not a re-exec: it runs the
//! setup in `init.rs` straight away and its last act is execve of the user's program.

pub mod attributes;
pub mod channel;
pub mod init;

use crate::cgroups::{CgroupPaths, Layout};
use crate::error::{Context, Error, Result};
use crate::namespaces::{CLONE_NEWTIME, Namespaces};
use channel::{Channel, Msg};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, Spec};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// Everything the child needs; it is a fork, so this is simply shared memory.
pub struct InitConfig<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    /// The exec fifo that holds the init until `start`; `None` when the same runtime process
    /// starts the container at once (`run`): the init then execs the program as soon as it is
    /// set up, and the end of the channel (close-on-exec) tells the parent it did.
    pub fifo: Option<&'a Path>,
    pub layout: &'a Layout,
    pub cgroup: &'a CgroupPaths,
    pub namespaces: &'a Namespaces,
    /// Where the pty master goes when process.terminal is true.
    pub console_socket: Option<OwnedFd>,
    pub preserve_fds: u32,
    pub no_pivot: bool,
    pub seccomp: Option<&'a crate::seccomp::Filter>,
    /// The program is exec'd through this trampoline (sealed_exe.rs) when set.
    pub trampoline: Option<&'a crate::sealed_exe::Trampoline>,
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Where the host has cgroup2 (unified, or the hybrid's extra mount) the child is born in the
/// container's cgroup2 directory (CLONE_INTO_CGROUP); `None` without one.
fn clone_into(cgroup: &CgroupPaths) -> Result<Option<std::fs::File>> {
    match &cgroup.v2 {
        Some(dir) => Ok(Some(
            std::fs::File::open(dir).ctx(|| format!("open {}", dir.display()))?,
        )),
        None => Ok(None),
    }
}

/// clone3 without a new stack: fork semantics, returns 0 in the child.
fn clone3(flags: u64, cgroup: Option<&std::fs::File>) -> Result<i32> {
    let mut args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(dir) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = dir.as_raw_fd() as u64;
    }
    // SAFETY: the runtime is single-threaded, so the child gets a consistent copy of our
    // memory; it only runs `init::run` and then execs or exits.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            size_of::<CloneArgs>(),
        )
    };
    if r < 0 {
        return Err(Error::Other(format!(
            "clone3: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(r as i32)
}

/// Starts the container's init and drives it through setup. Returns its pid once it is
/// blocked on the exec fifo, or (without a fifo) once it has exec'd the program; on error the
/// child is killed and reaped.
/// `on_hooks(pid)` runs the runtime-side create hooks and returns the state JSON for the
/// container-side ones.
pub fn spawn(cfg: InitConfig, on_hooks: &mut dyn FnMut(Pid) -> Result<String>) -> Result<Pid> {
    let (parent, child) = channel::pair()?;
    let ns = cfg.namespaces;
    let linux = cfg.spec.linux().as_ref();
    // pid and time namespaces are entered by children: join/create them here so the clone lands
    // in them.
    for (typ, fd) in &ns.join {
        if matches!(typ, LinuxNamespaceType::Pid | LinuxNamespaceType::Time) {
            nix::sched::setns(fd, nix::sched::CloneFlags::empty())
                .ctx(|| format!("join {} namespace", crate::namespaces::name(*typ)))?;
        }
    }
    if ns.new_time {
        nix::sched::unshare(nix::sched::CloneFlags::from_bits_retain(
            CLONE_NEWTIME as i32,
        ))
        .ctx(|| "create time namespace".into())?;
        let mut offsets = String::new();
        for (clock, off) in linux
            .and_then(|l| l.time_offsets().as_ref())
            .into_iter()
            .flatten()
        {
            offsets.push_str(&format!(
                "{clock} {} {}\n",
                off.secs().unwrap_or(0),
                off.nanosecs().unwrap_or(0)
            ));
        }
        if !offsets.is_empty() {
            std::fs::write("/proc/self/timens_offsets", offsets)
                .map_err(|e| Error::Config(format!("linux.timeOffsets: {e}")))?;
        }
    }
    let cgroup_dir = clone_into(cfg.cgroup)?;
    let v1_tasks = cfg.cgroup.open_v1_tasks()?;
    let pid = clone3(ns.clone_flags, cgroup_dir.as_ref())?;
    if pid == 0 {
        drop(parent);
        let err = crate::cgroups::join_v1(v1_tasks)
            .and_then(|()| init::run(cfg, &child))
            .unwrap_err();
        // Before Ready the parent reports it; after, the parent is gone and stderr is all we have.
        if child.send(&Msg::Failed(err.to_string())).is_err() {
            eprintln!("skiff-runc init: {err}");
        }

        // SAFETY: leave the forked child without running the parent's destructors.
        unsafe { libc::_exit(1) };
    }
    drop((child, v1_tasks));
    let pid = Pid::from_raw(pid);
    let result = drive(&cfg, pid, &parent, on_hooks);
    if result.is_err() {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
    result.map(|_| pid)
}

/// Sends `msg` to the child; when the child is already gone, the reason it sent before it
/// exited is the error (rather than the broken pipe).
fn send_or_why(chan: &Channel, msg: &Msg) -> Result<()> {
    chan.send(msg).map_err(|broken| match chan.recv() {
        Ok(Some(Msg::Failed(why))) => Error::Other(why),
        _ => broken,
    })
}

fn drive(
    cfg: &InitConfig,
    pid: Pid,
    chan: &Channel,
    on_hooks: &mut dyn FnMut(Pid) -> Result<String>,
) -> Result<()> {
    let linux = cfg.spec.linux().as_ref();
    if cfg.namespaces.new_user {
        let write_map = |file: &str, maps: &Option<Vec<LinuxIdMapping>>| -> Result<()> {
            let text: String = maps
                .iter()
                .flatten()
                .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
                .collect();
            if text.is_empty() {
                return Ok(());
            }
            std::fs::write(format!("/proc/{pid}/{file}"), &text).map_err(|e| {
                Error::Config(format!(
                    "linux.{}: {e}",
                    if file == "uid_map" {
                        "uidMappings"
                    } else {
                        "gidMappings"
                    }
                ))
            })
        };
        write_map("uid_map", linux.map(|l| l.uid_mappings()).unwrap_or(&None))?;
        if !nix::unistd::geteuid().is_root() {
            // An unprivileged writer may map gids only once setgroups is denied.
            std::fs::write(format!("/proc/{pid}/setgroups"), "deny")
                .map_err(|e| Error::Other(format!("deny setgroups for the user namespace: {e}")))?;
        }
        write_map("gid_map", linux.map(|l| l.gid_mappings()).unwrap_or(&None))?;
    }
    if let Some(adj) = cfg.spec.process().as_ref().and_then(|p| p.oom_score_adj()) {
        match std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string()) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) => {
                tracing::warn!("cannot set process.oomScoreAdj to {adj} (no CAP_SYS_RESOURCE): {e}")
            }
            Err(e) => return Err(Error::Other(format!("process.oomScoreAdj {adj}: {e}"))),
        }
    }
    send_or_why(chan, &Msg::Go)?;
    loop {
        match chan.recv()? {
            Some(Msg::Ready) => return Ok(()),
            Some(Msg::Hook) => {
                let state = on_hooks(pid)?;
                chan.send(&Msg::HookDone(state))?;
            }
            Some(Msg::Failed(e)) => return Err(Error::Other(e)),
            Some(other) => {
                return Err(Error::Other(format!(
                    "unexpected message from init: {other:?}"
                )));
            }
            // Started at once: the init's end closes when it execs the program (or if it is
            // killed first, which its exit status then tells).
            None if cfg.fifo.is_none() => return Ok(()),
            None => return Err(Error::Other("container init exited during setup".into())),
        }
    }
}

/// What `exec` needs to start a process in a running container.
pub struct ExecConfig<'a> {
    pub process: &'a oci_spec::runtime::Process,
    /// The container's init, whose namespaces are joined.
    pub init_pid: i32,
    pub layout: &'a Layout,
    pub cgroup: &'a CgroupPaths,
    pub seccomp: Option<&'a crate::seccomp::Filter>,
    pub personality: Option<&'a oci_spec::runtime::LinuxPersonality>,
    pub state_json: String,
    pub console_socket: Option<OwnedFd>,
    pub preserve_fds: u32,
}

/// Namespaces in the order they are joined: user first (it owns the others), mount last (after
/// it, paths are the container's). pid and time are joined by the parent for its child.
const EXEC_NAMESPACES: [(&str, LinuxNamespaceType); 8] = [
    ("user", LinuxNamespaceType::User),
    ("cgroup", LinuxNamespaceType::Cgroup),
    ("ipc", LinuxNamespaceType::Ipc),
    ("uts", LinuxNamespaceType::Uts),
    ("net", LinuxNamespaceType::Network),
    ("pid", LinuxNamespaceType::Pid),
    ("time", LinuxNamespaceType::Time),
    ("mnt", LinuxNamespaceType::Mount),
];

/// Starts a process inside the namespaces and cgroup of the container whose init is
/// `cfg.init_pid`. Returns its pid once it is about to exec.
pub fn spawn_exec(cfg: ExecConfig) -> Result<Pid> {
    use std::os::unix::fs::MetadataExt;
    let mut join = vec![];
    for (file, typ) in EXEC_NAMESPACES {
        let theirs = format!("/proc/{}/ns/{file}", cfg.init_pid);
        let ours = std::fs::metadata(format!("/proc/self/ns/{file}"))
            .ok()
            .map(|m| m.ino());
        let meta = std::fs::metadata(&theirs).ctx(|| format!("container namespace {theirs}"))?;
        if Some(meta.ino()) != ours {
            let fd = std::fs::File::open(&theirs).ctx(|| format!("open {theirs}"))?;
            join.push((typ, OwnedFd::from(fd)));
        }
    }
    let in_user_ns = join.iter().any(|(t, _)| *t == LinuxNamespaceType::User);
    for (typ, fd) in &join {
        if matches!(typ, LinuxNamespaceType::Pid | LinuxNamespaceType::Time) {
            nix::sched::setns(fd, nix::sched::CloneFlags::empty())
                .ctx(|| format!("join {} namespace", crate::namespaces::name(*typ)))?;
        }
    }
    let affinity = cfg.process.exec_cpu_affinity().as_ref();
    if let Some(initial) = affinity.and_then(|a| a.initial().as_deref()) {
        // Inherited by the child until it is in the container's cgroup.
        attributes::set_affinity("process.execCPUAffinity.initial", initial)?;
    }
    let (parent, child) = channel::pair()?;
    let cgroup_dir = clone_into(cfg.cgroup)?;
    let v1_tasks = cfg.cgroup.open_v1_tasks()?;
    let pid = clone3(0, cgroup_dir.as_ref())?;
    if pid == 0 {
        drop(parent);
        let err = crate::cgroups::join_v1(v1_tasks)
            .and_then(|()| init::run_exec(cfg, &join, in_user_ns, &child))
            .unwrap_err();
        if child.send(&Msg::Failed(err.to_string())).is_err() {
            eprintln!("skiff-runc exec: {err}");
        }
        // SAFETY: leave the forked child without running the parent's destructors.
        unsafe { libc::_exit(255) };
    }
    drop((child, v1_tasks));
    let pid = Pid::from_raw(pid);
    let result = (|| {
        send_or_why(&parent, &Msg::Go)?;
        match parent.recv()? {
            Some(Msg::Ready) => Ok(()),
            Some(Msg::Failed(e)) => Err(Error::Other(e)),
            _ => Err(Error::Other("exec process exited during setup".into())),
        }
    })();
    if result.is_err() {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
    result.map(|_| pid)
}
