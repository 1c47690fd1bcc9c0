//! The container's filesystem: propagation, config.json's mounts in order, /dev, pivot_root
//! (or MS_MOVE+chroot with --no-pivot), then masked and read-only paths.
//! Everything runs in the container's mount namespace before its process gets control.

use crate::cgroups::{CgroupPaths, Layout};
use crate::devices;
use crate::error::{Context, Error, Result};
use crate::procfs;
use crate::safe_path::{Kind, Root, file_kind, proc_fd};
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::Mode;
use oci_spec::runtime::{Mount, Spec};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// What a mount's options mean to mount(2): flags to set, flags to clear, propagation, data.
#[derive(Debug)]
pub struct MountOptions {
    pub flags: MsFlags,
    pub clear: MsFlags,
    pub propagation: MsFlags,
    pub data: Vec<String>,
}

pub fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        clear: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: vec![],
    };
    for opt in options {
        let (set, flag) = match opt.as_str() {
            "defaults" => continue,
            "ro" => (true, MsFlags::MS_RDONLY),
            "rw" => (false, MsFlags::MS_RDONLY),
            "nosuid" => (true, MsFlags::MS_NOSUID),
            "suid" => (false, MsFlags::MS_NOSUID),
            "nodev" => (true, MsFlags::MS_NODEV),
            "dev" => (false, MsFlags::MS_NODEV),
            "noexec" => (true, MsFlags::MS_NOEXEC),
            "exec" => (false, MsFlags::MS_NOEXEC),
            "sync" => (true, MsFlags::MS_SYNCHRONOUS),
            "async" => (false, MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (true, MsFlags::MS_DIRSYNC),
            "remount" => (true, MsFlags::MS_REMOUNT),
            "mand" => (true, MsFlags::MS_MANDLOCK),
            "nomand" => (false, MsFlags::MS_MANDLOCK),
            "noatime" => (true, MsFlags::MS_NOATIME),
            "atime" => (false, MsFlags::MS_NOATIME),
            "nodiratime" => (true, MsFlags::MS_NODIRATIME),
            "diratime" => (false, MsFlags::MS_NODIRATIME),
            "relatime" => (true, MsFlags::MS_RELATIME),
            "norelatime" => (false, MsFlags::MS_RELATIME),
            "strictatime" => (true, MsFlags::MS_STRICTATIME),
            "nostrictatime" => (false, MsFlags::MS_STRICTATIME),
            "bind" => (true, MsFlags::MS_BIND),
            "rbind" => (true, MsFlags::MS_BIND | MsFlags::MS_REC),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                o.propagation |= propagation(opt).unwrap_or(MsFlags::empty());
                continue;
            }
            // Accepted for compatibility, nothing to do for them here.
            "tmpcopyup" | "idmap" | "ridmap" => continue,
            _ => {
                o.data.push(opt.clone());
                continue;
            }
        };
        if set {
            o.flags |= flag;
            o.clear.remove(flag);
        } else {
            o.flags.remove(flag);
            o.clear |= flag;
        }
    }
    o
}

pub fn propagation(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Everything the mount setup needs besides the spec.
pub struct RootfsContext<'a> {
    pub rootfs: &'a Path,
    pub layout: &'a Layout,
    pub cgroup: &'a CgroupPaths,
    pub new_cgroup_ns: bool,
    pub in_user_ns: bool,
    /// False when the container shares the runtime's mount namespace: then nothing outside
    /// the rootfs is touched and the root is entered with chroot.
    pub own_mount_ns: bool,
}

/// Prepares the root filesystem in place (before pivot_root). Returns the opened root, through
/// which every later path inside it is resolved.
pub fn prepare(spec: &Spec, ctx: &RootfsContext) -> Result<Root> {
    let linux = spec.linux().as_ref();
    // Nothing we mount may leak back to the host: make / a slave unless told otherwise.
    let root_prop = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        Some(p) if !p.is_empty() => propagation(p).ok_or_else(|| {
            Error::Config(format!("linux.rootfsPropagation: unknown value {p:?}"))
        })?,
        _ => MsFlags::MS_SLAVE | MsFlags::MS_REC,
    };
    // Shared would propagate into the host: start as slave, the final value is set after pivot.
    // An unbindable / would forbid the bind of the rootfs below: that one is set on the rootfs.
    let first = if root_prop.intersects(MsFlags::MS_SHARED | MsFlags::MS_UNBINDABLE) {
        MsFlags::MS_SLAVE | MsFlags::MS_REC
    } else {
        root_prop
    };
    if ctx.own_mount_ns {
        mount(None::<&str>, "/", None::<&str>, first, None::<&str>)
            .ctx(|| "set propagation of /".into())?;
    }
    // pivot_root needs the new root to be a mount point (and a read-only root is this mount,
    // never the filesystem the bundle sits on).
    mount(
        Some(ctx.rootfs),
        ctx.rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| format!("bind mount rootfs {}", ctx.rootfs.display()))?;
    if root_prop.contains(MsFlags::MS_UNBINDABLE) {
        mount(
            None::<&str>,
            ctx.rootfs,
            None::<&str>,
            root_prop,
            None::<&str>,
        )
        .ctx(|| "linux.rootfsPropagation: set it on the rootfs".into())?;
    }
    let root = Root::open(ctx.rootfs)?;
    let mut dev_bound = false;
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        mount_one(m, &root, ctx).map_err(|e| {
            Error::Config(format!("mounts[{i}] ({}): {e}", m.destination().display()))
        })?;
        let opts = parse_options(m.options().as_deref().unwrap_or_default());
        dev_bound |= m.destination() == Path::new("/dev") && opts.flags.contains(MsFlags::MS_BIND);
    }
    if !dev_bound {
        let devs = linux.and_then(|l| l.devices().clone()).unwrap_or_default();
        devices::create(&root, &devs, ctx.in_user_ns)?;
        devices::create_links(&root)?;
    }
    Ok(root)
}

fn mount_one(m: &Mount, root: &Root, ctx: &RootfsContext) -> Result<()> {
    let opts = parse_options(m.options().as_deref().unwrap_or_default());
    let typ = m.typ().as_deref().unwrap_or("");
    let is_bind = opts.flags.contains(MsFlags::MS_BIND) || typ == "bind";
    let dest_path = Path::new("/").join(m.destination());
    let source = m.source().clone().unwrap_or_default();
    // The mount point, opened once: the mount lands on exactly what was opened.
    let kind = if is_bind && typ != "cgroup" {
        let meta = std::fs::metadata(&source)
            .map_err(|e| Error::Config(format!("bind source {}: {e}", source.display())))?;
        if meta.is_dir() { Kind::Dir } else { Kind::File }
    } else {
        Kind::Dir
    };
    let dest = root.make(&dest_path, kind)?;
    let target = proc_fd(dest.as_fd());
    if typ == "cgroup" {
        return mount_cgroup(root, &dest_path, &target, &opts, ctx);
    }
    if is_bind {
        mount(
            Some(&source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC),
            None::<&str>,
        )
        .ctx(|| format!("bind {} to {}", source.display(), dest_path.display()))?;
    } else {
        let data = opts.data.join(",");
        let flags = opts.flags & !MsFlags::MS_REMOUNT;
        let mut result = mount(
            Some(&source),
            &target,
            Some(typ),
            flags,
            Some(data.as_str()),
        );
        if result == Err(nix::errno::Errno::EPERM) && typ == "sysfs" && ctx.in_user_ns {
            // A user namespace without its own network namespace may not mount sysfs: bind it.
            result = mount(
                Some("/sys"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            );
        }
        result.ctx(|| format!("mount {typ} on {}", dest_path.display()))?;
    }
    let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
    let remount_extra = is_bind && !extra.is_empty();
    if !remount_extra && opts.propagation.is_empty() {
        return Ok(());
    }
    // `dest` is the covered directory: the new mount is reached by resolving again, still
    // confined to the root.
    let mounted = root.open_path(&dest_path)?;
    let mounted = proc_fd(mounted.as_fd());
    if remount_extra {
        remount(&mounted, extra)?;
    }
    if !opts.propagation.is_empty() {
        mount(
            None::<&str>,
            &mounted,
            None::<&str>,
            opts.propagation,
            None::<&str>,
        )
        .ctx(|| format!("set propagation of {}", dest_path.display()))?;
    }
    Ok(())
}

/// Re-applies flags to a bind mount, keeping the flags the kernel locks in a user namespace.
fn remount(dest: &Path, flags: MsFlags) -> Result<()> {
    let locked = locked_flags(dest);
    mount(
        None::<&str>,
        dest,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | locked,
        None::<&str>,
    )
    .ctx(|| format!("remount {} with {flags:?}", dest.display()))
}

fn locked_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::{FsFlags, statvfs};
    let Ok(st) = statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    out
}

/// `type: cgroup`: the container's own cgroup, whatever the layout and whether it has a cgroup
/// namespace. Unified: cgroup2 inside its cgroup namespace, a bind of its directory without one.
/// v1: a tmpfs with one directory per hierarchy (a cgroup mount inside its cgroup namespace, or
/// a bind of its directory when it has none).
fn mount_cgroup(
    root: &Root,
    dest_path: &Path,
    dest: &Path,
    opts: &MountOptions,
    ctx: &RootfsContext,
) -> Result<()> {
    let flags = (opts.flags & !MsFlags::MS_BIND & !MsFlags::MS_REC)
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    if ctx.cgroup.v1.is_empty() && ctx.cgroup.v2.is_none() {
        // Rootless without a cgroup of its own: the host's hierarchies, read-only.
        mount(
            Some("/sys/fs/cgroup"),
            dest,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .ctx(|| format!("bind /sys/fs/cgroup on {}", dest_path.display()))?;
        let mounted = root.open_path(dest_path)?;
        return remount(
            &proc_fd(mounted.as_fd()),
            MsFlags::MS_RDONLY | MsFlags::MS_REC,
        );
    }
    if ctx.layout.is_unified() {
        if ctx.new_cgroup_ns
            && fresh_cgroup_mount(dest, "cgroup2", flags, None)
                .ctx(|| format!("mount cgroup2 on {}", dest_path.display()))?
        {
            return Ok(());
        }
        // Without a cgroup namespace a cgroup2 mount would show the whole host (what runc and
        // crun mount there): bind our own.
        if let Some(dir) = &ctx.cgroup.v2 {
            bind_cgroup(dir, dest, flags, || root.open_path(dest_path))?;
        }
        return Ok(());
    }
    mount(
        Some("tmpfs"),
        dest,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .ctx(|| format!("mount tmpfs on {}", dest_path.display()))?;
    // The fresh tmpfs, reached through its own fd: nothing in it can have been swapped.
    let tmpfs = root.open_path(dest_path)?;
    let dest = proc_fd(tmpfs.as_fd());
    let dest = dest.as_path();
    for h in &ctx.layout.v1 {
        let opts = h.controllers.join(",");
        let name = opts.strip_prefix("name=").unwrap_or(&opts).to_string();
        let target = dest.join(&name);
        std::fs::create_dir_all(&target).ctx(|| format!("create {}", target.display()))?;
        let mounted = ctx.new_cgroup_ns
            && fresh_cgroup_mount(&target, "cgroup", flags, Some(&opts))
                .ctx(|| format!("mount cgroup {opts} on {}", target.display()))?;
        if !mounted && let Some(dir) = ctx.cgroup.v1.get(&h.mountpoint) {
            bind_cgroup(dir, &target, flags, || open_mounted(&target))?;
        }
        // "cpu,cpuacct" is also reachable as "cpu" and "cpuacct".
        if h.controllers.len() > 1 {
            for c in &h.controllers {
                let _ = std::os::unix::fs::symlink(&name, dest.join(c));
            }
        }
    }
    // Hybrid hosts: the cgroup2 mount (hugetlb here) appears as "unified", as on the host.
    if let Some((_, _, _)) = &ctx.layout.v2 {
        let target = dest.join("unified");
        std::fs::create_dir_all(&target).ctx(|| format!("create {}", target.display()))?;
        let mounted = ctx.new_cgroup_ns
            && fresh_cgroup_mount(&target, "cgroup2", flags, None)
                .ctx(|| format!("mount cgroup2 on {}", target.display()))?;
        if !mounted && let Some(dir) = &ctx.cgroup.v2 {
            bind_cgroup(dir, &target, flags, || open_mounted(&target))?;
        }
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        remount(
            dest,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )?;
    }
    Ok(())
}

/// A fresh cgroup filesystem (`fstype` cgroup or cgroup2) at `target`, for a container in its
/// own cgroup namespace. Ok(false) when the kernel refuses it with EPERM or EBUSY, as inside a
/// user namespace that does not own our cgroup namespace, under a nested container's LSM or
/// seccomp profile, or where a v1 hierarchy's options clash: the caller then binds the
/// container's own cgroup directory instead, which shows the container the same tree.
fn fresh_cgroup_mount(
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    opts: Option<&str>,
) -> nix::Result<bool> {
    match mount(Some(fstype), target, Some(fstype), flags, opts) {
        Ok(()) => Ok(true),
        Err(e @ (nix::errno::Errno::EPERM | nix::errno::Errno::EBUSY)) => {
            tracing::debug!(
                "mount {fstype} on {}: {e}; binding the container's cgroup instead",
                target.display()
            );
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// A path under the fresh tmpfs of a v1 /sys/fs/cgroup, opened: it is ours, nothing in it can
/// have been swapped.
fn open_mounted(path: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .ctx(|| format!("open {}", path.display()))
}

/// Binds the container's own cgroup directory at `target`, read-only when asked; `mounted`
/// opens the new mount once it is there (the fd must stay open while it is remounted through
/// /proc/self/fd).
fn bind_cgroup(
    dir: &Path,
    target: &Path,
    flags: MsFlags,
    mounted: impl FnOnce() -> Result<OwnedFd>,
) -> Result<()> {
    mount(
        Some(dir),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .ctx(|| format!("bind cgroup {}", dir.display()))?;
    if flags.contains(MsFlags::MS_RDONLY) {
        let mounted = mounted()?;
        remount(
            &proc_fd(mounted.as_fd()),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )?;
    }
    Ok(())
}

/// Makes `rootfs` the container's `/`.
/// Without a mount namespace of its own, the container only gets a chroot: moving or pivoting
/// would rearrange the runtime's (the host's) mounts.
pub fn pivot(rootfs: &Path, no_pivot: bool, own_mount_ns: bool) -> Result<()> {
    nix::unistd::chdir(rootfs).ctx(|| format!("chdir {}", rootfs.display()))?;
    if !own_mount_ns {
        nix::unistd::chroot(".").ctx(|| "chroot".into())?;
    } else if no_pivot {
        mount(
            Some(rootfs),
            "/",
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .ctx(|| "move rootfs to /".into())?;
        nix::unistd::chroot(".").ctx(|| "chroot".into())?;
    } else {
        // pivot_root(".", ".") stacks the old root on top of the new one; detach it. The old
        // root is already a slave (see `prepare`), so the unmount does not reach the host.
        nix::unistd::pivot_root(".", ".")
            .ctx(|| format!("pivot_root into {}", rootfs.display()))?;
        umount2(".", MntFlags::MNT_DETACH).ctx(|| "unmount the old root".into())?;
    }
    nix::unistd::chdir("/").ctx(|| "chdir /".into())
}

/// The host's null device, opened before anything of the container is visible and checked to
/// be the character device 1:3: what masks files is never something the image planted
/// (CVE-2025-31133).
pub fn host_null() -> Result<OwnedFd> {
    let fd = nix::fcntl::open(
        "/dev/null",
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| "open the host's /dev/null".into())?;
    check_null(fd.as_fd(), "the host's /dev/null")?;
    Ok(fd)
}

fn check_null(fd: BorrowedFd, what: &str) -> Result<()> {
    match file_kind(fd)? {
        (libc::S_IFCHR, 1, 3) => Ok(()),
        (kind, major, minor) => Err(Error::Config(format!(
            "{what} is not the null device (mode {kind:o}, {major}:{minor})"
        ))),
    }
}

/// Sysctls, read-only and masked paths, inside the root before pivot_root: every path is
/// resolved in the root, every write and mount goes through an fd that was checked.
pub fn protect(spec: &Spec, root: &Root, null: BorrowedFd) -> Result<()> {
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    let sysctls = linux.sysctl().clone().unwrap_or_default();
    if !sysctls.is_empty() {
        let proc = procfs::Proc::open(root)?;
        for (key, value) in &sysctls {
            proc.write_sysctl(key, value)?;
        }
    }
    for p in linux.readonly_paths().iter().flatten() {
        let path = Path::new(p);
        let fd = match root.open_path(path) {
            Err(Error::Sys {
                source: nix::errno::Errno::ENOENT,
                ..
            }) => continue,
            r => r.map_err(|e| Error::Config(format!("linux.readonlyPaths: {e}")))?,
        };
        let at = proc_fd(fd.as_fd());
        mount(
            Some(&at),
            &at,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .ctx(|| format!("linux.readonlyPaths: bind {p}"))?;
        let mounted = root.open_path(path)?;
        remount(
            &proc_fd(mounted.as_fd()),
            MsFlags::MS_RDONLY | MsFlags::MS_REC,
        )?;
    }
    for p in linux.masked_paths().iter().flatten() {
        let fd = match root.open_path(Path::new(p)) {
            Err(Error::Sys {
                source: nix::errno::Errno::ENOENT,
                ..
            }) => continue,
            r => r.map_err(|e| Error::Config(format!("linux.maskedPaths: {e}")))?,
        };
        let at = proc_fd(fd.as_fd());
        let r = if file_kind(fd.as_fd())?.0 == libc::S_IFDIR {
            mount(
                Some("tmpfs"),
                &at,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0k"),
            )
        } else {
            mount(
                Some(&proc_fd(null)),
                &at,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        r.ctx(|| format!("linux.maskedPaths: mask {p}"))?;
    }
    Ok(())
}

/// After pivot_root: read-only root, final propagation.
pub fn finalize(spec: &Spec) -> Result<()> {
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        remount(Path::new("/"), MsFlags::MS_RDONLY)?;
    }
    if let Some(p) = linux.rootfs_propagation().as_deref().and_then(propagation)
        && p.contains(MsFlags::MS_SHARED)
    {
        mount(None::<&str>, "/", None::<&str>, p, None::<&str>)
            .ctx(|| "set propagation of /".into())?;
    }
    Ok(())
}
