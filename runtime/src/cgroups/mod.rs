//! Control groups, v1 and v2, and the hybrid layout between them.
//!
//! A thin cgroupfs layer of our own rather than cgroups-rs: that crate picks v1 *or* v2 for the
//! whole machine, while real nodes (this one included) run hybrids where some controllers sit on
//! the v1 hierarchies and others (hugetlb here) on the cgroup2 mount. Each controller goes to the
//! hierarchy that has it; `v1.rs` and `v2.rs` hold the per-version file formats and
//! `bpf_devices.rs` the v2 device program. Every write is a single write(2) to a cgroupfs file.

pub mod bpf_devices;
pub mod stats;
pub mod v1;
pub mod v2;

use crate::error::{Context, Error, Result};
use crate::fsutil;
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One mounted v1 hierarchy.
#[derive(Debug, Clone)]
pub struct V1Hierarchy {
    /// Controllers (e.g. ["cpu", "cpuacct"]) or a name ("name=systemd").
    pub controllers: Vec<String>,
    pub mountpoint: PathBuf,
    /// The cgroup path of this process in the hierarchy, relative to the mount.
    pub own: PathBuf,
}

/// The machine's cgroup layout, read once from /proc/self/mountinfo and /proc/self/cgroup.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub v1: Vec<V1Hierarchy>,
    /// The cgroup2 mount, its enabled controllers and this process's cgroup in it.
    pub v2: Option<(PathBuf, Vec<String>, PathBuf)>,
}

impl Layout {
    pub fn detect() -> Result<Layout> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .ctx(|| "read /proc/self/mountinfo".into())?;
        let own =
            std::fs::read_to_string("/proc/self/cgroup").ctx(|| "read /proc/self/cgroup".into())?;
        Ok(Self::parse(&mountinfo, &own))
    }

    fn parse(mountinfo: &str, own: &str) -> Layout {
        // /proc/self/cgroup: "4:memory:/a/b" (v1) or "0::/a" (v2).
        let mut own_v1: BTreeMap<String, String> = BTreeMap::new();
        let mut own_v2 = String::from("/");
        for line in own.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, ctrls, path) = match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), Some(c)) => (a, b, c),
                _ => continue,
            };
            if ctrls.is_empty() {
                own_v2 = path.to_string();
            } else {
                own_v1.insert(ctrls.to_string(), path.to_string());
            }
        }
        let mut layout = Layout::default();
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.len() < 5 || post.len() < 3 {
                continue;
            }
            let (root, mountpoint) = (pre[3], PathBuf::from(unescape(pre[4])));
            match post[0] {
                "cgroup" => {
                    let controllers: Vec<String> = post[2]
                        .split(',')
                        .filter(|o| {
                            !matches!(*o, "rw" | "ro" | "xattr" | "clone_children" | "noprefix")
                                && !o.starts_with("release_agent=")
                        })
                        .map(str::to_string)
                        .collect();
                    if controllers.is_empty()
                        || layout.v1.iter().any(|h| h.controllers == controllers)
                    {
                        continue;
                    }
                    let key = controllers.join(",");
                    let own = own_v1.get(&key).map(String::as_str).unwrap_or("/");
                    layout.v1.push(V1Hierarchy {
                        controllers,
                        mountpoint,
                        own: relative_to_mount(own, root),
                    });
                }
                "cgroup2" if layout.v2.is_none() => {
                    let controllers =
                        std::fs::read_to_string(mountpoint.join("cgroup.controllers"))
                            .unwrap_or_default()
                            .split_whitespace()
                            .map(str::to_string)
                            .collect();
                    layout.v2 = Some((mountpoint, controllers, relative_to_mount(&own_v2, root)));
                }
                _ => {}
            }
        }
        layout
    }

    /// True when cgroup2 is the only hierarchy (a "unified" host).
    pub fn is_unified(&self) -> bool {
        self.v1.is_empty() && self.v2.is_some()
    }

    /// Where a controller lives: on a v1 hierarchy (its mount) or on cgroup2.
    pub fn controller(&self, name: &str) -> Option<Hierarchy> {
        if let Some(h) = self
            .v1
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == name))
        {
            return Some(Hierarchy::V1(h.mountpoint.clone()));
        }
        match &self.v2 {
            Some((_, ctrls, _)) if ctrls.iter().any(|c| c == name) => Some(Hierarchy::V2),
            _ => None,
        }
    }
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn relative_to_mount(path: &str, mount_root: &str) -> PathBuf {
    let rel = Path::new(path)
        .strip_prefix(mount_root)
        .unwrap_or(Path::new(path));
    rel.strip_prefix("/").unwrap_or(rel).to_path_buf()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// The v1 hierarchy mounted there.
    V1(PathBuf),
    V2,
}

/// Where one container's cgroup lives in every hierarchy; kept in the container's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CgroupPaths {
    /// v1 mountpoint → the container's directory in it.
    pub v1: BTreeMap<PathBuf, PathBuf>,
    pub v2: Option<PathBuf>,
    /// Directories this container created, parents first (removed in reverse on delete).
    pub created: Vec<PathBuf>,
}

/// The default devices every container may use (runc's list): mknod of anything, and
/// null, zero, full, random, urandom, tty, console, ptmx, the pts and tun.
pub fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    let rule = |typ, major, minor, access: &str| {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(true);
        r.set_typ(Some(typ));
        r.set_major(major);
        r.set_minor(minor);
        r.set_access(Some(access.to_string()));
        r
    };
    use LinuxDeviceType::{B, C};
    vec![
        rule(C, None, None, "m"),
        rule(B, None, None, "m"),
        rule(C, Some(1), Some(3), "rwm"),
        rule(C, Some(1), Some(8), "rwm"),
        rule(C, Some(1), Some(7), "rwm"),
        rule(C, Some(5), Some(0), "rwm"),
        rule(C, Some(5), Some(1), "rwm"),
        rule(C, Some(1), Some(5), "rwm"),
        rule(C, Some(1), Some(9), "rwm"),
        rule(C, Some(136), None, "rwm"),
        rule(C, Some(5), Some(2), "rwm"),
        rule(C, Some(10), Some(200), "rwm"),
    ]
}

impl CgroupPaths {
    /// Resolves `linux.cgroupsPath` (absolute, relative to our own cgroup, or `/<id>` when
    /// unset) in every hierarchy and creates the directories. On error nothing is left behind.
    pub fn create(layout: &Layout, cgroups_path: Option<&Path>, id: &str) -> Result<CgroupPaths> {
        let default = PathBuf::from("/").join(id);
        let wanted = cgroups_path
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(&default);
        if wanted
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(Error::Config(format!(
                "linux.cgroupsPath: {} must not contain '..'",
                wanted.display()
            )));
        }
        let place = |mount: &Path, own: &Path| -> PathBuf {
            match wanted.strip_prefix("/") {
                Ok(abs) => mount.join(abs),
                Err(_) => mount.join(own).join(wanted),
            }
        };
        let mut paths = CgroupPaths::default();
        for h in &layout.v1 {
            paths
                .v1
                .insert(h.mountpoint.clone(), place(&h.mountpoint, &h.own));
        }
        if let Some((mount, _, own)) = &layout.v2 {
            // Our own v2 cgroup holds processes, so (no internal processes) it cannot enable
            // controllers for a child: a relative path goes under its parent, as runc does.
            paths.v2 = Some(place(mount, own.parent().unwrap_or(Path::new(""))));
        }
        let result = paths.make_dirs(layout);
        if result.is_err() {
            let _ = paths.remove();
        }
        result.map(|_| paths)
    }

    fn make_dirs(&mut self, layout: &Layout) -> Result<()> {
        let targets: Vec<(PathBuf, bool)> = self
            .v1
            .iter()
            .map(|(mount, dir)| (dir.clone(), is_cpuset(layout, mount)))
            .chain(self.v2.iter().map(|d| (d.clone(), false)))
            .collect();
        for (dir, cpuset) in targets {
            // Containers started and removed side by side share their parents (a pod's, a QoS
            // class's): one made first is theirs, and one removed under us is made again.
            let mut attempts = 0;
            while let Err(e) = self.make_dir(&dir, cpuset) {
                attempts += 1;
                if attempts == 5 || dir.exists() {
                    return Err(e);
                }
            }
        }
        if let (Some(dir), Some((mount, ctrls, _))) = (&self.v2, &layout.v2) {
            v2::enable_controllers(mount, dir, ctrls)?;
        }
        Ok(())
    }

    /// Makes `dir` and its missing parents, remembering the ones it made.
    fn make_dir(&mut self, dir: &Path, cpuset: bool) -> Result<()> {
        let mut missing = vec![];
        let mut p = dir;
        while !p.exists() {
            missing.push(p.to_path_buf());
            p = p.parent().unwrap_or(Path::new("/"));
        }
        for d in missing.into_iter().rev() {
            match std::fs::create_dir(&d) {
                Ok(()) => self.created.push(d.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).ctx(|| format!("create cgroup {}", d.display())),
            }
            if cpuset {
                v1::inherit_cpuset(&d)?;
            }
        }
        Ok(())
    }

    /// Removes the directories this container created, deepest first. Waits briefly for
    /// exiting processes to leave (rmdir answers EBUSY until they have). A container directory
    /// that cannot be removed is an error: the caller keeps the container's state.
    pub fn remove(&self) -> Result<()> {
        let leaves: Vec<&PathBuf> = self.v1.values().chain(self.v2.iter()).collect();
        let mut failed = None;
        for dir in self.created.iter().rev() {
            // A parent we made may be shared by other containers by now: one try only.
            let attempts = if leaves.contains(&dir) { 2000 } else { 1 };
            for attempt in 1..=attempts {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < attempts => {
                        std::thread::sleep(std::time::Duration::from_millis(1))
                    }
                    Err(e) if attempts == 1 => {
                        tracing::debug!("keep cgroup parent {}: {e}", dir.display());
                        break;
                    }
                    Err(e) => {
                        failed.get_or_insert(Error::Io {
                            context: format!("remove cgroup {}", dir.display()),
                            source: e,
                        });
                        break;
                    }
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Sends `signal` to every process of the container without letting one escape by
    /// forking meanwhile: cgroup.kill for SIGKILL where cgroup2 has it; otherwise the cgroup
    /// is frozen while its processes are listed and signalled, then thawed (runc's way).
    /// Without either, the list is re-read until a pass finds no process it has not signalled.
    pub fn signal_all(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        if signal == Signal::SIGKILL
            && let Some(dir) = &self.v2
            && fsutil::write_value(&dir.join("cgroup.kill"), "1").is_ok()
        {
            // A task frozen by the v1 freezer only dies once thawed.
            if self.is_frozen() {
                self.set_frozen(false)?;
            }
            return Ok(());
        }
        if self.freezer().is_some() {
            self.set_frozen(true)?;
            let pids = self.pids();
            if let Ok(pids) = &pids {
                for pid in pids {
                    let _ = kill(Pid::from_raw(*pid), signal);
                }
            }
            // Thawed even after a failed listing; a frozen process only takes its signal then.
            self.set_frozen(false)?;
            return pids.map(drop);
        }
        let mut signalled = std::collections::HashSet::new();
        loop {
            let fresh: Vec<i32> = self
                .pids()?
                .into_iter()
                .filter(|p| signalled.insert(*p))
                .collect();
            if fresh.is_empty() {
                return Ok(());
            }
            for pid in fresh {
                let _ = kill(Pid::from_raw(pid), signal);
            }
        }
    }

    /// The `tasks` file of the container's cgroup in every v1 hierarchy, opened by the runtime
    /// for a child to join with `join_v1` (cgroup2 is joined at birth, with CLONE_INTO_CGROUP).
    pub fn open_v1_tasks(&self) -> Result<Vec<(PathBuf, std::fs::File)>> {
        self.v1
            .values()
            .map(|dir| {
                let path = dir.join("tasks");
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .ctx(|| format!("open {}", path.display()))?;
                Ok((path, file))
            })
            .collect()
    }
}

/// Moves the calling process, which must be single-threaded, into the v1 cgroups whose
/// `tasks` files the runtime opened for it. Written by the process itself, "0" to `tasks`
/// (its only thread): the kernel then skips the global threadgroup lock that a write of a pid
/// to `cgroup.procs` takes for writing, and whose RCU grace period (milliseconds) was the
/// largest single cost of a container start on a v1 host. The kernel checks the opener's
/// credentials, so this works inside a new user namespace too.
pub fn join_v1(tasks: Vec<(PathBuf, std::fs::File)>) -> Result<()> {
    use std::io::Write;
    for (path, mut file) in tasks {
        file.write_all(b"0")
            .ctx(|| format!("join cgroup {}", path.display()))?;
    }
    Ok(())
}

impl CgroupPaths {
    /// Every process in the container's cgroup.
    /// The container's directory in the v1 hierarchy of `controller`. Mounts are named after
    /// their controllers: "memory", "cpu,cpuacct".
    fn v1_dir(&self, controller: &str) -> Option<&PathBuf> {
        self.v1
            .iter()
            .find(|(m, _)| {
                m.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.split(',').any(|c| c == controller))
            })
            .map(|(_, d)| d)
    }

    pub fn pids(&self) -> Result<Vec<i32>> {
        let dir = self
            .v1_dir("pids")
            .or_else(|| self.v1_dir("memory"))
            .or(self.v2.as_ref())
            .or_else(|| self.v1.values().next())
            .ok_or_else(|| Error::Other("container has no cgroup".into()))?;
        let procs = std::fs::read_to_string(dir.join("cgroup.procs"))
            .ctx(|| format!("read {}/cgroup.procs", dir.display()))?;
        Ok(procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    fn freezer(&self) -> Option<(PathBuf, bool)> {
        if let Some(d) = self.v1_dir("freezer") {
            return Some((d.join("freezer.state"), true));
        }
        self.v2.as_ref().map(|d| (d.join("cgroup.freeze"), false))
    }

    /// Freezes or thaws every process of the container and waits until the kernel is done.
    pub fn set_frozen(&self, frozen: bool) -> Result<()> {
        let Some((file, v1)) = self.freezer() else {
            return if frozen {
                Err(Error::Other(
                    "no freezer cgroup controller on this host".into(),
                ))
            } else {
                Ok(())
            };
        };
        let value = match (v1, frozen) {
            (true, true) => "FROZEN",
            (true, false) => "THAWED",
            (false, true) => "1",
            (false, false) => "0",
        };
        fsutil::write_value(&file, value)?;
        for _ in 0..10_000 {
            let done = if v1 {
                fsutil::read_trimmed(&file)? == value
            } else {
                let events = fsutil::read_trimmed(&file.with_file_name("cgroup.events"))?;
                events
                    .lines()
                    .any(|l| l == if frozen { "frozen 1" } else { "frozen 0" })
            };
            if done {
                return Ok(());
            }
            if v1 && frozen {
                // A v1 freeze can stall in FREEZING: asking again makes progress.
                fsutil::write_value(&file, value)?;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        Err(Error::Other(format!(
            "{} did not reach {value}",
            file.display()
        )))
    }

    pub fn is_frozen(&self) -> bool {
        match self.freezer() {
            Some((file, true)) => fsutil::read_trimmed(&file).is_ok_and(|s| s == "FROZEN"),
            Some((file, false)) => fsutil::read_trimmed(&file).is_ok_and(|s| s == "1"),
            None => false,
        }
    }

    /// Applies linux.resources plus the device rules, each controller on its own hierarchy.
    pub fn apply(
        &self,
        layout: &Layout,
        res: &LinuxResources,
        devices: Option<&[LinuxDeviceCgroup]>,
    ) -> Result<()> {
        for (mount, dir) in &self.v1 {
            let ctrls = layout
                .v1
                .iter()
                .find(|h| &h.mountpoint == mount)
                .map(|h| h.controllers.clone());
            for ctrl in ctrls.iter().flatten() {
                v1::apply(ctrl, dir, res, devices.unwrap_or_default())?;
            }
        }
        if let (Some(dir), Some((_, ctrls, _))) = (&self.v2, &layout.v2) {
            let on_v2 = |c: &str| {
                ctrls.iter().any(|x| x == c) && layout.controller(c) == Some(Hierarchy::V2)
            };
            v2::apply(dir, res, &on_v2)?;
            if layout.is_unified()
                && let Some(devices) = devices
            {
                bpf_devices::apply(dir, devices)?;
            }
        }
        Ok(())
    }
}

fn is_cpuset(layout: &Layout, mount: &Path) -> bool {
    layout
        .v1
        .iter()
        .any(|h| h.mountpoint == mount && h.controllers.iter().any(|c| c == "cpuset"))
}

/// A limit whose controller no hierarchy has is an error, not a silent no-op.
pub fn check_available(layout: &Layout, res: &LinuxResources) -> Result<()> {
    let mut wanted = vec![];
    if res.memory().is_some() {
        wanted.push(("memory", "memory"));
    }
    if res.pids().is_some() {
        wanted.push(("pids", "pids"));
    }
    if res
        .hugepage_limits()
        .as_ref()
        .is_some_and(|h| !h.is_empty())
    {
        wanted.push(("hugepageLimits", "hugetlb"));
    }
    if let Some(cpu) = res.cpu() {
        if cpu.shares().is_some() || cpu.quota().is_some() || cpu.period().is_some() {
            wanted.push(("cpu", "cpu"));
        }
        if cpu.cpus().is_some() || cpu.mems().is_some() {
            wanted.push(("cpu.cpus", "cpuset"));
        }
    }
    if let Some(net) = res.network() {
        if net.class_id().is_some() {
            wanted.push(("network.classID", "net_cls"));
        }
        if net.priorities().as_ref().is_some_and(|p| !p.is_empty()) {
            wanted.push(("network.priorities", "net_prio"));
        }
    }
    for (field, ctrl) in wanted {
        if layout.controller(ctrl).is_none() {
            return Err(Error::Config(format!(
                "linux.resources.{field}: the {ctrl} cgroup controller is not available on this host"
            )));
        }
    }
    Ok(())
}
