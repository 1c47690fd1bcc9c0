//! Container root filesystems on overlayfs: the image's unpacked layers as lower directories,
//! the container's own `upper` and `work` directories, mounted at `<container_dir>/rootfs`.
//!
//! Mounted with the new mount API (fsopen/fsconfig/fsmount/move_mount) passing each lower
//! directory as its own `lowerdir+` parameter (Linux 6.8+), so the number of layers is not
//! limited by the one-page option string of mount(2); older kernels get mount(2) with
//! `lowerdir=a:b:…`.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::{Image, ImageError};

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// Mounts the container's root filesystem for `image` at `<container_dir>/rootfs` (creating
/// `upper`, `work` and `rootfs` there) and returns that path. Mounting again over a mounted
/// rootfs is a no-op, so a restarted kubelet can call it for containers it adopts.
pub fn mount_rootfs(image: &Image, container_dir: &Path) -> Result<PathBuf, ImageError> {
    let rootfs = container_dir.join("rootfs");
    let failed = |reason: String| ImageError::Mount {
        path: rootfs.clone(),
        reason,
    };
    let upper = container_dir.join("upper");
    let work = container_dir.join("work");
    for dir in [&upper, &work, &rootfs] {
        fs::create_dir_all(dir).map_err(|e| failed(format!("creating {}: {e}", dir.display())))?;
    }
    if is_mountpoint(&rootfs) {
        return Ok(rootfs);
    }
    if image.layers.is_empty() {
        return Err(failed(format!("image {} has no layers", image.id)));
    }
    // overlayfs lists the topmost lower directory first.
    let lowers: Vec<&Path> = image.layers.iter().rev().map(PathBuf::as_path).collect();
    match mount_with_fsconfig(&lowers, &upper, &work, &rootfs) {
        Ok(()) => {}
        Err(Errno::EINVAL) | Err(Errno::ENOSYS) => {
            mount_with_options(&lowers, &upper, &work, &rootfs)
                .map_err(|e| failed(e.to_string()))?
        }
        Err(e) => return Err(failed(format!("overlay mount: {e}"))),
    }
    tracing::debug!(rootfs = %rootfs.display(), image = %image.id, layers = lowers.len(), "mounted root filesystem");
    Ok(rootfs)
}

/// Unmounts `<container_dir>/rootfs` if it is mounted. The container's directories stay for the
/// caller to remove.
pub fn unmount_rootfs(container_dir: &Path) -> Result<(), ImageError> {
    let rootfs = container_dir.join("rootfs");
    if !is_mountpoint(&rootfs) {
        return Ok(());
    }
    umount2(&rootfs, MntFlags::MNT_DETACH).map_err(|e| ImageError::Mount {
        path: rootfs.clone(),
        reason: format!("unmounting: {e}"),
    })
}

fn is_mountpoint(path: &Path) -> bool {
    let (Ok(dir), Some(Ok(parent))) = (fs::metadata(path), path.parent().map(fs::metadata)) else {
        return false;
    };
    dir.dev() != parent.dev() || dir.ino() == parent.ino()
}

fn cstring(path: &Path) -> Result<CString, Errno> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

fn mount_with_fsconfig(
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), Errno> {
    // SAFETY: plain system calls on NUL-terminated strings; returned descriptors are owned here.
    unsafe {
        let fs_fd = Errno::result(libc::syscall(
            libc::SYS_fsopen,
            c"overlay".as_ptr(),
            FSOPEN_CLOEXEC,
        ))?;
        let fs_fd = OwnedFd::from_raw_fd(fs_fd as i32);
        let set = |key: &std::ffi::CStr, value: &Path| -> Result<(), Errno> {
            let value = cstring(value)?;
            Errno::result(libc::syscall(
                libc::SYS_fsconfig,
                fs_fd.as_raw_fd(),
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            ))
            .map(drop)
        };
        for lower in lowers {
            set(c"lowerdir+", lower)?;
        }
        set(c"upperdir", upper)?;
        set(c"workdir", work)?;
        Errno::result(libc::syscall(
            libc::SYS_fsconfig,
            fs_fd.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        ))?;
        let mount_fd = Errno::result(libc::syscall(
            libc::SYS_fsmount,
            fs_fd.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            0,
        ))?;
        let mount_fd = OwnedFd::from_raw_fd(mount_fd as i32);
        let target = cstring(target)?;
        Errno::result(libc::syscall(
            libc::SYS_move_mount,
            mount_fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        ))
        .map(drop)
    }
}

fn mount_with_options(
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), String> {
    let lowerdir = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let options = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| format!("overlay mount ({} bytes of options): {e}", options.len()))
}
