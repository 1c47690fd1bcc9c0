//! /dev inside the container: the default device nodes, linux.devices, and the standard links.

use crate::error::{Context, Error, Result};
use crate::safe_path::{Kind, Root, proc_fd};
use nix::sys::stat::{Mode, SFlag, makedev, mknodat};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};
use std::os::fd::AsFd;
use std::path::Path;

/// (path, major, minor): every container gets these, as runc gives them.
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// Creates the device nodes under `rootfs`. In a user namespace mknod is not allowed: the host's
/// node is bind-mounted instead.
pub fn create(root: &Root, devices: &[LinuxDevice], bind: bool) -> Result<()> {
    for (path, major, minor) in DEFAULT_DEVICES {
        if devices.iter().any(|d| d.path() == Path::new(path)) {
            continue;
        }
        node(
            root,
            Path::new(path),
            SFlag::S_IFCHR,
            major,
            minor,
            0o666,
            None,
            None,
            bind,
        )?;
    }
    for d in devices {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(Error::Config(format!(
                    "linux.devices: {}: type must be c, b, u or p",
                    d.path().display()
                )));
            }
        };
        if !d.path().starts_with("/dev") {
            return Err(Error::Config(format!(
                "linux.devices: {} is not under /dev",
                d.path().display()
            )));
        }
        node(
            root,
            d.path(),
            kind,
            d.major() as u64,
            d.minor() as u64,
            d.file_mode().unwrap_or(0o666),
            d.uid(),
            d.gid(),
            bind,
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn node(
    root: &Root,
    path: &Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
    bind: bool,
) -> Result<()> {
    if bind {
        let dest = root.make(path, Kind::File)?;
        return nix::mount::mount(
            Some(path),
            &proc_fd(dest.as_fd()),
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .ctx(|| format!("bind device {}", path.display()));
    }
    // The node is made by name in its directory, opened inside the root: nothing is followed.
    let parent = root.make(path.parent().unwrap_or(Path::new("/")), Kind::Dir)?;
    let name = path.file_name().unwrap_or_default();
    let _ = nix::unistd::unlinkat(&parent, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
    // The umask must not trim the requested mode.
    let old = nix::sys::stat::umask(Mode::empty());
    let made = mknodat(
        &parent,
        name,
        kind,
        Mode::from_bits_truncate(mode & 0o7777),
        makedev(major, minor),
    );
    nix::sys::stat::umask(old);
    made.ctx(|| format!("mknod {}", path.display()))?;
    if uid.is_some() || gid.is_some() {
        nix::unistd::fchownat(
            &parent,
            name,
            uid.map(Into::into),
            gid.map(Into::into),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ctx(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// /dev/fd, /dev/std{in,out,err}, /dev/ptmx → pts/ptmx (runc's links).
pub fn create_links(root: &Root) -> Result<()> {
    let links = [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ];
    let dev = root.make(Path::new("/dev"), Kind::Dir)?;
    for (target, link) in links {
        if link == "ptmx" {
            let _ = nix::unistd::unlinkat(&dev, link, nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
        match nix::unistd::symlinkat(target, &dev, link) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(e).ctx(|| format!("symlink /dev/{link}")),
        }
    }
    Ok(())
}
