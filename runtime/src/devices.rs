//! /dev inside the container: the default device nodes, linux.devices, and the standard links.

use crate::error::{Context, Error, Result};
use crate::rootfs::secure_join;
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};
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
pub fn create(rootfs: &Path, devices: &[LinuxDevice], bind: bool) -> Result<()> {
    for (path, major, minor) in DEFAULT_DEVICES {
        if devices.iter().any(|d| d.path() == Path::new(path)) {
            continue;
        }
        node(
            rootfs,
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
            rootfs,
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
    rootfs: &Path,
    path: &Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
    bind: bool,
) -> Result<()> {
    let dest = secure_join(rootfs, path)?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).ctx(|| format!("create {}", parent.display()))?;
    }
    if bind {
        if !dest.exists() {
            std::fs::File::create(&dest).ctx(|| format!("create {}", dest.display()))?;
        }
        return nix::mount::mount(
            Some(path),
            &dest,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .ctx(|| format!("bind device {}", path.display()));
    }
    let _ = std::fs::remove_file(&dest);
    // The umask must not trim the requested mode.
    let old = nix::sys::stat::umask(Mode::empty());
    let made = mknod(
        &dest,
        kind,
        Mode::from_bits_truncate(mode & 0o7777),
        makedev(major, minor),
    );
    nix::sys::stat::umask(old);
    made.ctx(|| format!("mknod {}", path.display()))?;
    if uid.is_some() || gid.is_some() {
        nix::unistd::chown(&dest, uid.map(Into::into), gid.map(Into::into))
            .ctx(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// /dev/fd, /dev/std{in,out,err}, /dev/ptmx → pts/ptmx (runc's links).
pub fn create_links(rootfs: &Path) -> Result<()> {
    let links = [
        ("/proc/self/fd", "dev/fd"),
        ("/proc/self/fd/0", "dev/stdin"),
        ("/proc/self/fd/1", "dev/stdout"),
        ("/proc/self/fd/2", "dev/stderr"),
        ("pts/ptmx", "dev/ptmx"),
    ];
    for (target, link) in links {
        let path = rootfs.join(link);
        if link == "dev/ptmx" {
            let _ = std::fs::remove_file(&path);
        }
        match std::os::unix::fs::symlink(target, &path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).ctx(|| format!("symlink {}", path.display())),
        }
    }
    Ok(())
}
