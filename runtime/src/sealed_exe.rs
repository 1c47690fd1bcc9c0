//! CVE-2019-5736: a container must never be able to open the runtime binary for writing through
//! /proc/<pid>/exe. Instead of copying the binary into a sealed memfd on every run, we re-exec
//! once from a *detached read-only bind mount* of ourselves (open_tree + mount_setattr): the new
//! /proc/self/exe points into a mount that is read-only and attached nowhere, so opening it for
//! writing fails with EROFS. When the binary already sits on a read-only mount nothing is done
//! (as crun skips its copy then). Cost: one execveat, no copy. Where the new mount API is
//! missing or refused (kernels before 5.12, a seccomp profile that denies open_tree), the
//! binary is copied into a memfd sealed against any change (F_SEAL_SEAL|SHRINK|GROW|WRITE),
//! as runc does, and run from there.
//!
//! `run` of a container in a new pid namespace, without seccomp and without hooks inside the
//! container, needs no re-exec at all: until its last execve the init is the only process in
//! its pid namespace, and our own process sits outside it, so no container process can reach
//! either through /proc. What is left is that last execve: a program that is (or whose `#!` or
//! ELF interpreter is) `/proc/self/exe` would run our binary inside the container. So the init
//! execs the program through a trampoline (`trampoline`): a 300-byte static program in a
//! sealed memfd that only execs its argv[0] with the rest of its arguments. Anything that
//! resolves `/proc/self/exe` then finds the sealed trampoline. (runc 1.2's release candidates
//! had the same idea, its "dmz" binary.) Cost: a memfd and an execve of one page, instead of
//! re-running the whole runtime.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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
    let mut exe = std::fs::File::open("/proc/self/exe").map_err(|e| format!("open exe: {e}"))?;
    sealed_memfd(c"skiff-runc", |copy| {
        std::io::copy(&mut exe, copy).map(|_| ())
    })
}

/// A memfd filled by `fill`, then sealed against any change (F_SEAL_SEAL|SHRINK|GROW|WRITE).
fn sealed_memfd(
    name: &std::ffi::CStr,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<OwnedFd, String> {
    let create = |flags| {
        // SAFETY: memfd_create with a valid name; returns a new fd or -1.
        unsafe { libc::memfd_create(name.as_ptr(), flags) }
    };
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // MFD_EXEC (6.3+) keeps it executable where vm.memfd_noexec would make it non-executable;
    // older kernels reject the flag.
    let mut fd = create(flags | MFD_EXEC);
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        fd = create(flags);
    }
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel just returned this fd.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    fill(&mut file).map_err(|e| format!("fill memfd: {e}"))?;
    // SAFETY: F_ADD_SEALS on the memfd we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
        return Err(format!("seal: {}", std::io::Error::last_os_error()));
    }
    Ok(OwnedFd::from(file))
}

const MFD_EXEC: libc::c_uint = 0x10;

/// Whether `run` of this container may skip the re-exec and exec its program through the
/// trampoline (see the module's comment): a new pid namespace, no seccomp filter (it could
/// deny the trampoline's execveat or its execve), no createContainer or startContainer hooks
/// (they run in the container's namespaces while the init is still our binary).
pub fn trampoline_suits(spec: &oci_spec::runtime::Spec) -> bool {
    let Some(linux) = spec.linux() else {
        return false;
    };
    let new_pid_ns =
        linux.namespaces().iter().flatten().any(|ns| {
            ns.typ() == oci_spec::runtime::LinuxNamespaceType::Pid && ns.path().is_none()
        });
    let in_container_hooks = spec.hooks().as_ref().is_some_and(|h| {
        h.create_container().as_ref().is_some_and(|v| !v.is_empty())
            || h.start_container().as_ref().is_some_and(|v| !v.is_empty())
    });
    cfg!(target_arch = "x86_64") && new_pid_ns && linux.seccomp().is_none() && !in_container_hooks
}

/// The trampoline in a sealed memfd (close-on-exec: execveat of it still works, and the
/// program does not inherit it).
pub struct Trampoline {
    pub exe: OwnedFd,
    /// The fd the init moves its channel to before the trampoline: left open by that exec,
    /// marked close-on-exec by the trampoline, so that the channel ends exactly when the
    /// program replaces it (the parent's sign that the program runs, and no earlier: a signal
    /// sent before the program set its handlers would be lost, pid-namespace init as it is).
    pub channel_fd: RawFd,
}

/// A trampoline for a program given `preserve_fds` (its channel fd goes right after them).
pub fn trampoline(preserve_fds: u32) -> Result<Trampoline, String> {
    if !cfg!(target_arch = "x86_64") {
        return Err("no trampoline for this architecture".into());
    }
    let first_free = RawFd::try_from(preserve_fds)
        .ok()
        .and_then(|n| n.checked_add(3))
        .ok_or("--preserve-fds too large for the trampoline")?;
    let mut channel_fd = first_free;
    let exe = sealed_memfd(c"skiff-runc-exec", |f| {
        if f.as_raw_fd() == channel_fd {
            channel_fd += 1;
        }
        std::io::Write::write_all(f, &trampoline_elf(channel_fd))
    })?;
    Ok(Trampoline { exe, channel_fd })
}

/// A static x86-64 ELF executable that marks `channel_fd` close-on-exec and runs
/// `execve(argv[0], &argv[1], envp)`; if that fails it writes "skiff-runc: exec failed" to
/// stderr and exits 127. One PT_LOAD segment (the whole file, read and execute) and a
/// PT_GNU_STACK one (a stack that is not executable).
fn trampoline_elf(channel_fd: RawFd) -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const HEADERS: u64 = 64 + 2 * 56;
    let fd = channel_fd.to_le_bytes();
    #[rustfmt::skip]
    let code: [u8; 84] = [
        0xbf, fd[0], fd[1], fd[2], fd[3],   // mov edi, channel_fd
        0xbe, 2, 0, 0, 0,                   // mov esi, F_SETFD
        0xba, 1, 0, 0, 0,                   // mov edx, FD_CLOEXEC
        0xb8, 72, 0, 0, 0,                  // mov eax, SYS_fcntl
        0x0f, 0x05,                         // syscall
        0x48, 0x8b, 0x04, 0x24,             // mov rax, [rsp]           argc
        0x48, 0x8d, 0x54, 0xc4, 0x10,       // lea rdx, [rsp+rax*8+16]  envp
        0x48, 0x8d, 0x74, 0x24, 0x10,       // lea rsi, [rsp+16]        &argv[1]
        0x48, 0x8b, 0x7c, 0x24, 0x08,       // mov rdi, [rsp+8]         argv[0]
        0xb8, 59, 0, 0, 0,                  // mov eax, SYS_execve
        0x0f, 0x05,                         // syscall
        0xbf, 2, 0, 0, 0,                   // mov edi, 2
        0x48, 0x8d, 0x35, 0x18, 0, 0, 0,    // lea rsi, [rip+24]        MESSAGE
        0xba, MESSAGE.len() as u8, 0, 0, 0, // mov edx, len
        0xb8, 1, 0, 0, 0,                   // mov eax, SYS_write
        0x0f, 0x05,                         // syscall
        0xbf, 127, 0, 0, 0,                 // mov edi, 127
        0xb8, 231, 0, 0, 0,                 // mov eax, SYS_exit_group
        0x0f, 0x05,                         // syscall
    ];
    const MESSAGE: &[u8] = b"skiff-runc: exec failed\n";
    let size = HEADERS + (code.len() + MESSAGE.len()) as u64;
    let mut elf = Vec::with_capacity(size as usize);
    // ELF header: 64-bit, little endian, version 1, ET_EXEC for x86-64.
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // e_entry: the code
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for half in [64u16, 56, 2, 64, 0, 0] {
        // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
        elf.extend_from_slice(&half.to_le_bytes());
    }
    // (p_type, p_flags, p_offset, p_vaddr, p_filesz, p_memsz, p_align)
    let segments = [
        (1u32, 5u32, 0u64, BASE, size, size, 0x1000u64), // PT_LOAD, R+X
        (0x6474_e551, 6, 0, 0, 0, 0, 16),                // PT_GNU_STACK, R+W
    ];
    for (typ, flags, offset, vaddr, filesz, memsz, align) in segments {
        elf.extend_from_slice(&typ.to_le_bytes());
        elf.extend_from_slice(&flags.to_le_bytes());
        for word in [offset, vaddr, vaddr, filesz, memsz, align] {
            elf.extend_from_slice(&word.to_le_bytes());
        }
    }
    elf.extend_from_slice(&code);
    elf.extend_from_slice(MESSAGE);
    elf
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(edit: impl FnOnce(&mut serde_json::Value)) -> oci_spec::runtime::Spec {
        let mut v = serde_json::to_value(oci_spec::runtime::Spec::default()).unwrap();
        v["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "mount"}]);
        edit(&mut v);
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_trampoline_only_where_no_container_process_can_see_the_init() {
        let x86 = cfg!(target_arch = "x86_64");
        assert_eq!(trampoline_suits(&spec(|_| {})), x86);
        let joined = spec(|v| v["linux"]["namespaces"][0]["path"] = json!("/proc/1/ns/pid"));
        assert!(!trampoline_suits(&joined));
        let host_pid = spec(|v| v["linux"]["namespaces"] = json!([{"type": "mount"}]));
        assert!(!trampoline_suits(&host_pid));
        let seccomp = spec(|v| v["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW"}));
        assert!(!trampoline_suits(&seccomp));
        for hook in ["createContainer", "startContainer"] {
            let hooked = spec(|v| v["hooks"] = json!({hook: [{"path": "/bin/true"}]}));
            assert!(!trampoline_suits(&hooked), "{hook}");
        }
        let host_hooks = spec(|v| v["hooks"] = json!({"prestart": [{"path": "/bin/true"}]}));
        assert_eq!(trampoline_suits(&host_hooks), x86);
    }

    #[test]
    fn the_trampoline_is_sealed_and_names_its_channel_fd_after_the_preserved_ones() {
        if !cfg!(target_arch = "x86_64") {
            return;
        }
        let t = trampoline(4).unwrap();
        assert!(t.channel_fd >= 7 && t.channel_fd != t.exe.as_raw_fd());
        // SAFETY: F_GET_SEALS on an fd we own.
        let seals = unsafe { libc::fcntl(t.exe.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(seals & SEALS, SEALS);
        let elf = trampoline_elf(t.channel_fd);
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(&elf[177..181], &t.channel_fd.to_le_bytes());
    }
}
