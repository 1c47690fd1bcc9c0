//! CVE-2019-5736: a container must never be able to open the runtime binary for writing through
//! /proc/<pid>/exe. Instead of copying the binary into a sealed memfd on every run, we re-exec
//! once from a *detached read-only bind mount* of ourselves (open_tree + mount_setattr): the new
//! /proc/self/exe points into a mount that is read-only and attached nowhere, so opening it for
//! writing fails with EROFS. When the binary already sits on a read-only mount nothing is done
//! (as crun skips its copy then). Cost: one execveat, no copy. Where the new mount API is
//! missing or refused (kernels before 5.12, a seccomp profile that denies open_tree), the
//! binary is copied into a memfd sealed against any change (F_SEAL_SEAL|SHRINK|GROW|WRITE),
//! as runc does, and run from there.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 1;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// True when /proc/self/exe cannot be written through: on a read-only mount, or a memfd
/// sealed against writes.
pub fn exe_is_read_only() -> bool {
    if nix::sys::statvfs::statvfs("/proc/self/exe")
        .is_ok_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
    {
        return true;
    }
    std::fs::File::open("/proc/self/exe").is_ok_and(|f| {
        // SAFETY: F_GET_SEALS on an fd we own.
        let seals = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
        seals >= 0 && seals & SEALS == SEALS
    })
}

/// Re-executes the current command from a read-only detached mount of our binary, unless the
/// binary is already read-only. Returns only if that cannot be done (old kernel), with a reason.
pub fn ensure() -> Result<(), String> {
    if exe_is_read_only() {
        return Ok(());
    }
    // Rootless: a binary we cannot write cannot be written by our containers either (they run
    // as us or as less), and open_tree needs privileges we do not have.
    if !nix::unistd::geteuid().is_root()
        && nix::unistd::access("/proc/self/exe", nix::unistd::AccessFlags::W_OK).is_err()
    {
        return Ok(());
    }

    let exe = match read_only_mount() {
        Ok(tree) => tree,
        Err(mount_err) => sealed_copy().map_err(|e| format!("{mount_err}; sealed copy: {e}"))?,
    };
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(std::os::unix::ffi::OsStringExt::into_vec(a)).unwrap_or_default())
        .collect();
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = std::os::unix::ffi::OsStringExt::into_vec(k);
            kv.push(b'=');
            kv.extend(std::os::unix::ffi::OsStringExt::into_vec(v));
            CString::new(kv).unwrap_or_default()
        })
        .collect();
    let err = nix::unistd::execveat(&exe, c"", &args, &env, nix::fcntl::AtFlags::AT_EMPTY_PATH);
    Err(format!("execveat from the read-only copy: {err:?}"))
}

/// A detached read-only bind mount of our binary (open_tree + mount_setattr).
fn read_only_mount() -> Result<OwnedFd, String> {
    // SAFETY: open_tree with a valid path; returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c"/proc/self/exe".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(format!("open_tree: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel just returned this fd.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr on our detached tree with AT_EMPTY_PATH.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(format!(
            "mount_setattr: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(tree)
}

/// Our binary copied into a memfd, then sealed so that nothing can change it any more.
fn sealed_copy() -> Result<OwnedFd, String> {
    // SAFETY: memfd_create with a valid name; returns a new fd or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"skiff-runc".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel just returned this fd.
    let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut copy = std::fs::File::from(memfd);
    let mut exe = std::fs::File::open("/proc/self/exe").map_err(|e| format!("open exe: {e}"))?;
    std::io::copy(&mut exe, &mut copy).map_err(|e| format!("copy exe: {e}"))?;
    // SAFETY: F_ADD_SEALS on the memfd we own.
    if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
        return Err(format!("seal: {}", std::io::Error::last_os_error()));
    }
    Ok(OwnedFd::from(copy))
}
