//! Writes into the container's procfs through fds that are checked to be procfs.
//!
//! A write to `/proc/sys/...` by path can be redirected by whatever the container mounted or
//! linked there (CVE-2025-52881 class): here `/proc` is opened inside the root and must be the
//! root of a procfs mount, and each file is opened beneath it without following a symlink or
//! crossing into another mount, then checked again before the write.

use crate::error::{Context, Error, Result};
use crate::safe_path::Root;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::statfs::{PROC_SUPER_MAGIC, fstatfs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The inode number of every procfs root.
const PROC_ROOT_INO: u64 = 1;

pub struct Proc {
    fd: OwnedFd,
}

fn is_procfs(fd: BorrowedFd) -> bool {
    fstatfs(fd).is_ok_and(|s| s.filesystem_type() == PROC_SUPER_MAGIC)
}

impl Proc {
    /// The container's `/proc`, which must be the root of a procfs mount.
    pub fn open(root: &Root) -> Result<Proc> {
        let fd = root.open_with(Path::new("/proc"), OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        let ino = nix::sys::stat::fstat(&fd)
            .ctx(|| "fstat /proc".into())?
            .st_ino;
        if !is_procfs(fd.as_fd()) || ino != PROC_ROOT_INO {
            return Err(Error::Config(
                "/proc in the container is not a procfs mount: refusing to write to it".into(),
            ));
        }
        Ok(Proc { fd })
    }

    /// Opens `rel` (below /proc) for writing, within the procfs mount itself.
    pub fn open_write(&self, rel: &Path) -> Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
        let fd = openat2(&self.fd, rel, how)
            .ctx(|| format!("open /proc/{} without leaving procfs", rel.display()))?;
        if !is_procfs(fd.as_fd()) {
            return Err(Error::Config(format!(
                "/proc/{} is not on procfs",
                rel.display()
            )));
        }
        Ok(fd)
    }

    /// linux.sysctl: `key=value` to /proc/sys/<key with dots as slashes>.
    pub fn write_sysctl(&self, key: &str, value: &str) -> Result<()> {
        if key.is_empty() || key.contains('/') || key.split('.').any(|p| p.is_empty() || p == "..")
        {
            return Err(Error::Config(format!("linux.sysctl: invalid key {key:?}")));
        }
        let rel = PathBuf::from("sys").join(key.replace('.', "/"));
        let fd = self
            .open_write(&rel)
            .map_err(|e| Error::Config(format!("linux.sysctl: {key}: {e}")))?;
        nix::unistd::write(&fd, value.as_bytes())
            .map_err(|e| Error::Config(format!("linux.sysctl: {key}={value}: {e}")))?;
        Ok(())
    }
}
