//! The parent↔child channel during create: a SOCK_SEQPACKET socketpair, one message per
//! datagram: a tag byte and a UTF-8 payload.

use crate::error::{Context, Error, Result};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use std::os::fd::{AsRawFd, OwnedFd};

#[derive(Debug, PartialEq, Eq)]
pub enum Msg {
    /// parent → child: uid/gid maps and oom_score_adj written; go on.
    Go,
    /// child → parent: setup done, now blocked on the exec fifo.
    Ready,
    /// child → parent: run the prestart/createRuntime hooks now.
    Hook,
    /// parent → child: hooks done; payload: the state JSON for the container's own hooks.
    HookDone(String),
    /// child → parent: setup failed.
    Failed(String),
}

pub struct Channel {
    fd: OwnedFd,
}

pub fn pair() -> Result<(Channel, Channel)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .ctx(|| "socketpair".into())?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

impl Channel {
    pub fn send(&self, msg: &Msg) -> Result<()> {
        let (tag, payload): (u8, &str) = match msg {
            Msg::Go => (b'g', ""),
            Msg::Ready => (b'r', ""),
            Msg::Hook => (b'h', ""),
            Msg::HookDone(s) => (b'd', s),
            Msg::Failed(e) => (b'f', e),
        };
        let mut buf = Vec::with_capacity(1 + payload.len());
        buf.push(tag);
        buf.extend_from_slice(payload.as_bytes());
        nix::unistd::write(&self.fd, &buf).ctx(|| "write to the init channel".into())?;
        Ok(())
    }

    /// The next message; `None` when the other side closed without a word (it died).
    pub fn recv(&self) -> Result<Option<Msg>> {
        let mut buf = vec![0u8; 65536];
        let n = loop {
            match nix::unistd::read(&self.fd, &mut buf) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r.ctx(|| "read from the init channel".into())?,
            }
        };
        if n == 0 {
            return Ok(None);
        }
        let payload = String::from_utf8_lossy(&buf[1..n]).into_owned();
        Ok(Some(match buf[0] {
            b'g' => Msg::Go,
            b'r' => Msg::Ready,
            b'h' => Msg::Hook,
            b'd' => Msg::HookDone(payload),
            b'f' => Msg::Failed(payload),
            t => return Err(Error::Other(format!("unexpected init message tag {t}"))),
        }))
    }

    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}
