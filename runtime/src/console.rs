//! process.terminal: a pty allocated inside the container (from its own devpts), whose master
//! is sent over --console-socket with SCM_RIGHTS, as runc does; or, for a foreground `run`
//! without a socket, proxied to our own stdio.

use crate::error::{Context, Error, Result};
use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

/// Inside the container: opens a pty pair, makes the slave our controlling terminal and stdio,
/// returns the master.
pub fn setup_pty(console_size: Option<(u64, u64)>) -> Result<OwnedFd> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .ctx(|| "open /dev/ptmx".into())?;
    grantpt(&master).ctx(|| "grantpt".into())?;
    unlockpt(&master).ctx(|| "unlockpt".into())?;
    let name = ptsname_r(&master).ctx(|| "ptsname".into())?;
    if let Some((h, w)) = console_size {
        let ws = libc::winsize {
            ws_row: h as u16,
            ws_col: w as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a valid winsize.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&name)
        .ctx(|| format!("open {name}"))?;
    bind_console(&slave)?;
    let fd = slave.into_raw_fd();
    // SAFETY: TIOCSCTTY on a terminal we just opened; we are a session leader.
    if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } < 0 {
        return Err(Error::Other(format!(
            "TIOCSCTTY: {}",
            std::io::Error::last_os_error()
        )));
    }
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors.
        if unsafe { libc::dup2(fd, target) } < 0 {
            return Err(Error::Other(format!(
                "dup2 the pty: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    if fd > 2 {
        // SAFETY: fd is ours and no longer needed beyond stdio.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    // SAFETY: the master's raw fd is owned by `master`, which we convert.
    Ok(unsafe { OwnedFd::from_raw_fd(master.into_raw_fd()) })
}

use std::os::unix::fs::OpenOptionsExt;

/// /dev/console is the pty too, as runc arranges. The slave must be a devpts character device,
/// and /dev/console is made and opened by name in the container's /dev without following a
/// link: an image whose /dev/console points elsewhere (a /proc file, CVE-2025-52565) is refused.
fn bind_console(slave: &std::fs::File) -> Result<()> {
    use crate::safe_path::{Kind, Root, file_kind, proc_fd};
    use std::os::fd::AsFd;
    let devpts = nix::sys::statfs::fstatfs(slave)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::DEVPTS_SUPER_MAGIC);
    if !devpts || file_kind(slave.as_fd())?.0 != libc::S_IFCHR {
        return Err(Error::Config(
            "process.terminal: the pty slave is not on devpts (is /dev/pts a devpts mount?)".into(),
        ));
    }
    let dev =
        Root::open(std::path::Path::new("/"))?.make(std::path::Path::new("/dev"), Kind::Dir)?;
    match nix::fcntl::openat(
        &dev,
        "console",
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    ) {
        Ok(_) | Err(nix::errno::Errno::EEXIST) => {}
        // A read-only /dev without a console: nothing to bind onto, as before.
        Err(nix::errno::Errno::EROFS) => return Ok(()),
        Err(e) => return Err(e).ctx(|| "create /dev/console".into()),
    }
    let how = nix::fcntl::OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            nix::fcntl::ResolveFlag::RESOLVE_BENEATH | nix::fcntl::ResolveFlag::RESOLVE_NO_SYMLINKS,
        );
    let target = nix::fcntl::openat2(&dev, "console", how).ctx(|| "open /dev/console".into())?;
    let kind = file_kind(target.as_fd())?.0;
    if kind != libc::S_IFREG && kind != libc::S_IFCHR {
        return Err(Error::Config(format!(
            "/dev/console in the container is not a file or a device (mode {kind:o}): refusing to bind the console onto it"
        )));
    }
    nix::mount::mount(
        Some(&proc_fd(slave.as_fd())),
        &proc_fd(target.as_fd()),
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .ctx(|| "bind the pty onto /dev/console".into())
}

/// Sends `fd` over the unix socket `socket`, with the pty's name as data (runc's format).
pub fn send_fd(socket: RawFd, fd: RawFd, name: &str) -> Result<()> {
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(name.as_bytes())];
    sendmsg::<()>(socket, &iov, &cmsg, MsgFlags::empty(), None)
        .ctx(|| "send the pty over --console-socket".into())?;
    Ok(())
}

/// Connects to the --console-socket path.
pub fn connect(path: &std::path::Path) -> Result<OwnedFd> {
    let stream = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| Error::Config(format!("--console-socket {}: {e}", path.display())))?;
    Ok(OwnedFd::from(stream))
}

/// A foreground `run` with a terminal and no --console-socket: we receive the master ourselves
/// and copy between it and our stdio, with our terminal in raw mode meanwhile.
pub struct Proxy {
    saved: Option<nix::sys::termios::Termios>,
}

impl Proxy {
    pub fn start(socket: &std::os::unix::net::UnixStream) -> Result<Proxy> {
        let master = recv_fd(socket)?;
        let stdin = std::io::stdin();
        let saved = nix::sys::termios::tcgetattr(&stdin).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            nix::sys::termios::cfmakeraw(&mut raw);
            let _ = nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &raw);
        }
        let mut to_master = std::fs::File::from(master.try_clone().ctx(|| "dup the pty".into())?);
        let mut from_master = std::fs::File::from(master);
        std::thread::spawn(move || std::io::copy(&mut std::io::stdin(), &mut to_master));
        std::thread::spawn(move || std::io::copy(&mut from_master, &mut std::io::stdout()));
        Ok(Proxy { saved })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}

/// Receives one fd sent with SCM_RIGHTS.
pub fn recv_fd(socket: &std::os::unix::net::UnixStream) -> Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, recvmsg};
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .ctx(|| "receive the pty".into())?;
    for cmsg in msg.cmsgs().ctx(|| "receive the pty".into())? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(fd) = fds.first()
        {
            // SAFETY: the kernel installed this fd for us.
            return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
    Err(Error::Other("no pty received from the container".into()))
}
