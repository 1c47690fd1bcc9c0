//! The lifecycle verbs of runc's command line, as a library: create, start, run, state, kill,
//! delete, list, ps.

use crate::bundle::Bundle;
use crate::cgroups::{self, CgroupPaths, Layout};
use crate::console;
use crate::error::{Context, Error, Result};
use crate::foreground::Foreground;
use crate::fsutil;
use crate::hooks;
use crate::namespaces::Namespaces;
use crate::process::{self, InitConfig};
use crate::sealed_exe;
use crate::state::{self, Record, StateDir, Status};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxDeviceCgroup;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const DEFAULT_ROOT: &str = "/run/skiff-runc";

pub struct Runtime {
    pub root: PathBuf,
}

/// `exec`'s options; the process is complete (from --process or built from the flags).
pub struct ExecOptions {
    pub process: oci_spec::runtime::Process,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub detach: bool,
    pub preserve_fds: u32,
    pub ignore_paused: bool,
}

#[derive(Default)]
pub struct CreateOptions {
    pub bundle: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub no_pivot: bool,
    pub preserve_fds: u32,
}

/// Removes what a failed create made, unless disarmed.
struct Undo {
    dir: Option<PathBuf>,
    cgroup: Option<CgroupPaths>,
    pid: Option<Pid>,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        if let Some(cg) = &self.cgroup
            && let Err(e) = cg.remove()
        {
            tracing::warn!("undo a failed create: {e}");
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>) -> Runtime {
        Runtime { root: root.into() }
    }

    fn dir(&self, id: &str) -> StateDir {
        StateDir::new(&self.root, id)
    }

    /// Sets up the container and leaves its process blocked until `start`. Returns its pid.
    pub fn create(&self, id: &str, opts: CreateOptions) -> Result<Pid> {
        state::validate_id(id)?;
        let bundle = Bundle::load(&opts.bundle)?;
        let record = self.create_bundle(id, bundle, opts, None, Start::Later, None)?;
        Ok(Pid::from_raw(record.pid))
    }

    /// Creates the container; with `Start::AtOnce` (run) its program is also started, without
    /// the exec fifo: returns once the program is exec'd. Returns the container's record.
    fn create_bundle(
        &self,
        id: &str,
        bundle: Bundle,
        opts: CreateOptions,
        console_fd: Option<OwnedFd>,
        start: Start,
        trampoline: Option<&sealed_exe::Trampoline>,
    ) -> Result<Record> {
        // Everything that can be checked is checked before anything is made.
        let spec = &bundle.spec;
        let linux = spec
            .linux()
            .as_ref()
            .ok_or_else(|| Error::Config("linux: missing".into()))?;
        let namespaces = Namespaces::from_spec(linux.namespaces().as_deref().unwrap_or_default())?;
        let layout = Layout::detect()?;
        let resources = linux.resources().clone().unwrap_or_default();
        cgroups::check_available(&layout, &resources)?;
        let seccomp = linux
            .seccomp()
            .as_ref()
            .map(|s| crate::seccomp::Filter::new(s, &self.root))
            .transpose()?;
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let console_socket = match (console_fd, &opts.console_socket) {
            (Some(fd), _) => Some(fd),
            (None, Some(path)) => Some(console::connect(path)?),
            (None, None) if terminal => {
                return Err(Error::Config(
                    "process.terminal is true: cannot allocate a tty without --console-socket"
                        .into(),
                ));
            }
            (None, None) => None,
        };
        std::fs::create_dir_all(&self.root)
            .ctx(|| format!("create root {}", self.root.display()))?;
        let sd = self.dir(id);
        match std::fs::create_dir(&sd.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::Exists(id.into()));
            }
            Err(e) => return Err(e).ctx(|| format!("create {}", sd.dir.display())),
        }
        let mut undo = Undo {
            dir: Some(sd.dir.clone()),
            cgroup: None,
            pid: None,
        };
        let cgroup = match CgroupPaths::create(&layout, linux.cgroups_path().as_deref(), id) {
            // Rootless, as runc: without a delegated (writable) cgroup, run without one —
            // unless limits were asked for.
            Err(Error::Io { source, .. })
                if !nix::unistd::geteuid().is_root()
                    && matches!(
                        source.raw_os_error(),
                        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS)
                    ) =>
            {
                let has_limits = resources.memory().is_some()
                    || resources.cpu().is_some()
                    || resources.pids().is_some()
                    || resources.block_io().is_some()
                    || resources
                        .hugepage_limits()
                        .as_ref()
                        .is_some_and(|h| !h.is_empty())
                    || resources.unified().as_ref().is_some_and(|u| !u.is_empty());
                if has_limits {
                    return Err(Error::Config(
                        "linux.resources: a rootless container gets limits only in a delegated cgroup, and this one is not writable".into(),
                    ));
                }
                tracing::debug!("rootless: no writable cgroup, running without one");
                CgroupPaths::default()
            }
            r => r?,
        };

        undo.cgroup = Some(cgroup.clone());
        let mut record = Record {
            id: id.to_string(),
            pid: 0,
            start_time: 0,
            bundle: bundle.path.clone(),
            rootfs: bundle.rootfs.clone(),
            created: state::now_rfc3339(),
            owner: String::new(),
            annotations: spec.annotations().clone().unwrap_or_default(),
            cgroup: cgroup.clone(),
            hooks: spec.hooks().clone(),
            seccomp: linux.seccomp().clone(),
            personality: linux.personality().clone(),
        };

        // Saved before the process exists so that `delete --force` can clean up after a crash.
        sd.save(&record)?;
        cgroup
            .apply(&layout, &resources, Some(&device_rules(spec)))
            .map_err(|e| Error::Config(format!("linux.resources: {e}")))?;

        let fifo = sd.fifo();
        if start == Start::Later {
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622))
                .ctx(|| format!("mkfifo {}", fifo.display()))?;
            // The umask trimmed the mode: any container user (or mapped root) must open it for
            // writing.
            std::fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o622))
                .ctx(|| format!("chmod {}", fifo.display()))?;
        }
        let hooks = spec.hooks().clone().unwrap_or_default();
        let pid = process::spawn(
            InitConfig {
                spec,
                rootfs: &bundle.rootfs,
                fifo: (start == Start::Later).then_some(fifo.as_path()),
                layout: &layout,
                cgroup: &cgroup,
                namespaces: &namespaces,
                console_socket,
                preserve_fds: opts.preserve_fds,
                no_pivot: opts.no_pivot,
                seccomp: seccomp.as_ref(),
                trampoline,
            },
            &mut |pid| {
                let mut r = record.clone();
                r.pid = pid.as_raw();
                // prestart runs once the container is created (runtime-spec, as crun does);
                // createRuntime while it is still being created.
                hooks::run(
                    "prestart",
                    hooks.prestart().as_deref().unwrap_or_default(),
                    state_json(&r, Status::Created).as_bytes(),
                )?;
                let json = state_json(&r, Status::Creating);
                hooks::run(
                    "createRuntime",
                    hooks.create_runtime().as_deref().unwrap_or_default(),
                    json.as_bytes(),
                )?;
                Ok(state_json(&r, Status::Created))
            },
        )?;
        undo.pid = Some(pid);
        record.pid = pid.as_raw();
        record.start_time = state::process_start_time(pid.as_raw())
            .map(|(t, _)| t)
            .unwrap_or(0);
        sd.save(&record)?;
        if let Some(pid_file) = &opts.pid_file {
            let path = std::path::absolute(pid_file)
                .ctx(|| format!("--pid-file {}", pid_file.display()))?;
            fsutil::write_atomic(&path, pid.to_string().as_bytes())?;
        }
        undo.dir = None;
        undo.cgroup = None;
        undo.pid = None;
        Ok(record)
    }

    pub fn load(&self, id: &str) -> Result<(Record, Status)> {
        state::validate_id(id)?;
        let sd = self.dir(id);
        let record = sd.load(id)?;
        let status = record.status(&sd);
        Ok((record, status))
    }

    /// Lets a created container's process exec the user's program.
    pub fn start(&self, id: &str) -> Result<()> {
        let (record, status) = self.load(id)?;
        match status {
            Status::Created => {}
            Status::Stopped => {
                return Err(Error::State(
                    "cannot start a container that has stopped".into(),
                ));
            }
            Status::Running | Status::Paused => {
                return Err(Error::State(
                    "cannot start an already running container".into(),
                ));
            }
            Status::Creating => {
                return Err(Error::State(
                    "cannot start a container that is still being created".into(),
                ));
            }
        }
        let sd = self.dir(id);
        let fifo = sd.fifo();
        // Non-blocking open, then wait for the byte while the init is alive.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .ctx(|| format!("open {}", fifo.display()))?;
        // The byte says the init was let go; the end-of-file that follows, that it has exec'd
        // the program (its end of the fifo is close-on-exec).
        let mut got = false;
        loop {
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&file),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
            let mut b = [0u8; 1];
            match nix::unistd::read(&file, &mut b) {
                Ok(1) if b[0] == process::init::NO_PROCESS => {
                    let _ = std::fs::remove_file(&fifo);
                    return Err(Error::Config(
                        "process: missing in config.json, the container has nothing to start"
                            .into(),
                    ));
                }
                Ok(1) => got = true,
                Ok(0) if got => break,
                _ if !state::process_alive(record.pid, record.start_time) => {
                    if got {
                        break;
                    }
                    return Err(Error::State("container init exited before start".into()));
                }
                _ => {}
            }
        }
        let _ = std::fs::remove_file(&fifo);
        poststart(&record);
        Ok(())
    }

    /// runc's `run`: create, start, wait and delete; returns the exit code (128+signal when
    /// killed). With `detach`, returns 0 once started.
    pub fn run(&self, id: &str, opts: CreateOptions, detach: bool) -> Result<i32> {
        state::validate_id(id)?;
        let bundle = Bundle::load(&opts.bundle)?;
        // CVE-2019-5736 (sealed_exe.rs): the trampoline where it suffices, else the re-exec
        // from a read-only view of our binary (this process starts over, and comes back here).
        let trampoline = sealed_exe::trampoline_suits(&bundle.spec)
            .then(|| sealed_exe::trampoline(opts.preserve_fds))
            .and_then(|t| {
                t.inspect_err(|e| tracing::debug!("no trampoline: {e}"))
                    .ok()
            });
        if trampoline.is_none() {
            sealed_exe::ensure()
                .map_err(|e| Error::Other(format!("cannot protect the runtime binary: {e}")))?;
        }
        let trampoline = trampoline.as_ref();
        let bundle_terminal = bundle
            .spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        if detach {
            if bundle_terminal && opts.console_socket.is_none() {
                return Err(Error::Config(
                    "cannot allocate tty if runc will detach without setting console socket".into(),
                ));
            }
            let record = self.create_bundle(id, bundle, opts, None, Start::AtOnce, trampoline)?;
            poststart(&record);
            return Ok(0);
        }
        let mut foreground = Foreground::block()?;
        let record = if bundle_terminal && opts.console_socket.is_none() {
            let (ours, theirs) =
                std::os::unix::net::UnixStream::pair().ctx(|| "socketpair".into())?;
            let console = Some(OwnedFd::from(theirs));
            let record =
                self.create_bundle(id, bundle, opts, console, Start::AtOnce, trampoline)?;
            foreground.relay_pty(&ours)?;
            record
        } else {
            self.create_bundle(id, bundle, opts, None, Start::AtOnce, trampoline)?
        };
        poststart(&record);
        let code = foreground.wait(Pid::from_raw(record.pid));
        self.remove(&self.dir(id), &record, true)?;
        Ok(code)
    }

    /// The process of the container's config.json: runc's template for `exec ID ARGS…`.
    pub fn exec_template(&self, id: &str) -> Result<oci_spec::runtime::Process> {
        let (record, _) = self.load(id)?;
        let bundle = Bundle::load(&record.bundle)?;
        bundle
            .spec
            .process()
            .clone()
            .ok_or_else(|| Error::Config("process: missing".into()))
    }

    /// Runs another process in the container; returns its exit code (0 once started with
    /// `detach`).
    pub fn exec(&self, id: &str, opts: ExecOptions) -> Result<i32> {
        let (record, status) = self.load(id)?;
        match status {
            Status::Running | Status::Created => {}
            Status::Paused if opts.ignore_paused => {}
            Status::Paused => {
                return Err(Error::State(
                    "cannot exec in a paused container (use --ignore-paused)".into(),
                ));
            }
            Status::Stopped | Status::Creating => {
                return Err(Error::State("cannot exec in a stopped container".into()));
            }
        }
        let terminal = opts.process.terminal().unwrap_or(false);
        if terminal && opts.detach && opts.console_socket.is_none() {
            return Err(Error::Config(
                "cannot allocate tty if runc will detach without setting console socket".into(),
            ));
        }
        let seccomp = record
            .seccomp
            .as_ref()
            .map(|s| crate::seccomp::Filter::new(s, &self.root))
            .transpose()?;
        let layout = Layout::detect()?;
        let (proxy_socket, console_socket) = match &opts.console_socket {
            Some(path) => (None, Some(console::connect(path)?)),
            None if terminal => {
                let (ours, theirs) =
                    std::os::unix::net::UnixStream::pair().ctx(|| "socketpair".into())?;
                (Some(ours), Some(OwnedFd::from(theirs)))
            }
            None => (None, None),
        };
        let foreground = if opts.detach {
            None
        } else {
            Some(Foreground::block()?)
        };
        let pid = process::spawn_exec(process::ExecConfig {
            process: &opts.process,
            init_pid: record.pid,
            layout: &layout,
            cgroup: &record.cgroup,
            seccomp: seccomp.as_ref(),
            personality: record.personality.as_ref(),
            state_json: state_json(&record, status),

            console_socket,
            preserve_fds: opts.preserve_fds,
        })?;
        if let Some(pid_file) = &opts.pid_file {
            let path = std::path::absolute(pid_file)
                .ctx(|| format!("--pid-file {}", pid_file.display()))?;
            fsutil::write_atomic(&path, pid.to_string().as_bytes())?;
        }
        let Some(mut foreground) = foreground else {
            return Ok(0);
        };
        if let Some(socket) = &proxy_socket {
            foreground.relay_pty(socket)?;
        }
        Ok(foreground.wait(pid))
    }

    /// Freezes every process of the container.
    pub fn pause(&self, id: &str) -> Result<()> {
        let (record, status) = self.load(id)?;
        match status {
            Status::Running | Status::Created => record.cgroup.set_frozen(true),
            Status::Paused => Err(Error::State("container already paused".into())),
            _ => Err(Error::State("container not running".into())),
        }
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        let (record, status) = self.load(id)?;
        match status {
            Status::Paused => record.cgroup.set_frozen(false),
            _ => Err(Error::State("container not paused".into())),
        }
    }

    /// Changes the resource limits of a live container (devices are left as created).
    pub fn update(&self, id: &str, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        let (record, status) = self.load(id)?;
        if status == Status::Stopped {
            return Err(Error::State("container not running".into()));
        }
        if resources.devices().as_ref().is_some_and(|d| !d.is_empty()) {
            tracing::warn!("update: device rules cannot be changed on a live container; ignored");
        }
        let layout = Layout::detect()?;
        cgroups::check_available(&layout, resources)?;
        record
            .cgroup
            .apply(&layout, resources, None)
            .map_err(|e| Error::Config(format!("linux.resources: {e}")))
    }

    /// runc's `events --stats` event: `{"type":"stats","id":…,"data":…}`.
    pub fn stats(&self, id: &str) -> Result<serde_json::Value> {
        let (record, status) = self.load(id)?;
        if status == Status::Stopped {
            return Err(Error::State("container not running".into()));
        }
        Ok(serde_json::json!({"type": "stats", "id": id, "data": record.cgroup.stats()}))
    }

    /// runc's `events`: a stats event every `interval` and an `oom` event whenever the kernel
    /// OOM-kills a process of the container, until it stops.
    pub fn events(
        &self,
        id: &str,
        interval: Duration,
        emit: &mut dyn FnMut(&serde_json::Value),
    ) -> Result<()> {
        let (record, _) = self.load(id)?;
        let mut ooms = record.cgroup.oom_kills();
        let mut next_stats = Instant::now();
        loop {
            let status = record.status(&self.dir(id));
            if status == Status::Stopped || !self.dir(id).dir.exists() {
                return Ok(());
            }
            let now_ooms = record.cgroup.oom_kills();
            if now_ooms > ooms {
                emit(&serde_json::json!({"type": "oom", "id": id}));
                ooms = now_ooms;
            }
            if Instant::now() >= next_stats {
                emit(
                    &serde_json::json!({"type": "stats", "id": id, "data": record.cgroup.stats()}),
                );
                next_stats = Instant::now() + interval;
            }
            std::thread::sleep(Duration::from_millis(100).min(interval));
        }
    }

    pub fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<()> {
        let (record, status) = self.load(id)?;
        // As runc: --all signals whatever is left in the cgroup even once init is gone (a
        // container without its own pid namespace can leave processes behind).
        if matches!(status, Status::Stopped | Status::Creating) && !all {
            return Err(Error::State("container not running".into()));
        }
        if all {
            return record.cgroup.signal_all(signal);
        }
        kill(Pid::from_raw(record.pid), signal).ctx(|| format!("kill container {id}"))
    }

    /// Removes a stopped (or, with `force`, any) container: its process, cgroup and state.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        state::validate_id(id)?;
        let sd = self.dir(id);
        let record = match sd.load(id) {
            Ok(r) => r,
            // A create killed before its first state write leaves only the directory.
            Err(Error::NotFound(_)) if force && sd.dir.is_dir() => {
                return std::fs::remove_dir_all(&sd.dir)
                    .ctx(|| format!("remove {}", sd.dir.display()));
            }
            Err(Error::NotFound(_)) if force => return Ok(()),
            Err(e) => return Err(e),
        };
        self.remove(&sd, &record, force)
    }

    /// delete's work once the record is loaded: processes, cgroup, state, poststop hooks.
    fn remove(&self, sd: &StateDir, record: &Record, force: bool) -> Result<()> {
        let id = &record.id;
        let status = record.status(sd);
        match status {
            // Init is gone, but without a pid namespace of its own other processes may remain.
            Status::Stopped | Status::Created => self.kill_all(record),
            Status::Creating | Status::Running | Status::Paused if force => self.kill_all(record),
            s => {
                return Err(Error::State(format!(
                    "cannot delete container {id} that is not stopped: {s}"
                )));
            }
        }
        // A cgroup that is still there must not be forgotten: keep the state to retry with.
        record.cgroup.remove().map_err(|e| {
            Error::Other(format!(
                "delete container {id}: {e} (its state is kept; retry delete)"
            ))
        })?;
        std::fs::remove_dir_all(&sd.dir).ctx(|| format!("remove {}", sd.dir.display()))?;
        if let Some(h) = record.hooks.as_ref().and_then(|h| h.poststop().as_ref()) {
            let json = state_json(record, Status::Stopped);
            hooks::run_warn("poststop", h, json.as_bytes());
        }
        Ok(())
    }

    /// SIGKILL to every process of the container, then wait until they are gone.
    fn kill_all(&self, record: &Record) {
        let init_alive = record.pid > 0 && state::process_alive(record.pid, record.start_time);
        if init_alive {
            let _ = kill(Pid::from_raw(record.pid), Signal::SIGKILL);
        }
        // An empty cgroup (the usual case after `run`) needs no freeze and signal round trip.
        let leftovers = init_alive || record.cgroup.pids().map_or(true, |p| !p.is_empty());
        if leftovers && let Err(e) = record.cgroup.signal_all(Signal::SIGKILL) {
            tracing::debug!("kill the processes of {}: {e}", record.id);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            // Our own child (run) must be reaped; others are reaped by their parent.
            let _ = nix::sys::wait::waitpid(
                Pid::from_raw(record.pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
            let alive = state::process_alive(record.pid, record.start_time)
                || record.cgroup.pids().is_ok_and(|p| !p.is_empty());
            if !alive {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        tracing::warn!("container {} still has processes after SIGKILL", record.id);
    }

    pub fn list(&self) -> Result<Vec<(Record, Status)>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e).ctx(|| format!("read {}", self.root.display())),
        };
        let mut out = vec![];
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if let Ok(found) = self.load(&id) {
                out.push(found);
            }
        }
        out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        Ok(out)
    }

    /// The pids of every process in the container.
    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        let (record, status) = self.load(id)?;
        if status == Status::Stopped {
            return Err(Error::State("container not running".into()));
        }
        record.cgroup.pids()
    }
}

/// When the program of a created container starts: at `start`, or at once (`run`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    Later,
    AtOnce,
}

/// The poststart hooks; a failing one is logged, the container runs on (runtime-spec).
fn poststart(record: &Record) {
    if let Some(h) = record.hooks.as_ref().and_then(|h| h.poststart().as_ref()) {
        let json = state_json(record, Status::Running);
        hooks::run_warn("poststart", h, json.as_bytes());
    }
}

pub fn state_json(record: &Record, status: Status) -> String {
    serde_json::to_string(&record.oci_state(status)).unwrap_or_default()
}

/// The device rules: config.json's, then runc's default allowed devices, then linux.devices.
fn device_rules(spec: &oci_spec::runtime::Spec) -> Vec<LinuxDeviceCgroup> {
    let linux = spec.linux().as_ref();
    let mut rules: Vec<LinuxDeviceCgroup> = linux
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.devices().clone())
        .unwrap_or_default();
    rules.extend(cgroups::default_device_rules());
    // A fifo is no device to the kernel's device controller: it needs (and takes) no rule.
    for d in linux
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
        .filter(|d| d.typ() != oci_spec::runtime::LinuxDeviceType::P)
    {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(true);
        r.set_typ(Some(d.typ()));
        r.set_major(Some(d.major()));
        r.set_minor(Some(d.minor()));
        r.set_access(Some("rwm".into()));
        rules.push(r);
    }
    rules
}

use std::os::unix::fs::OpenOptionsExt;
