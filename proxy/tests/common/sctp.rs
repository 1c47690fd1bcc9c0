//! SCTP packets through the Service rules without an SCTP stack: this kernel may be built
//! without one (CONFIG_IP_SCTP), but conntrack and NAT handle SCTP on their own, and raw IP
//! sockets of protocol 132 send and receive SCTP packets either way. A client sends an INIT to
//! the Service; the endpoint that receives it (on its own port, so the DNAT is seen) answers an
//! INIT ACK carrying its name in the state cookie; the client reads the answer coming back
//! from the Service address (so the reverse NAT is seen too).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::in_netns;

const IPPROTO_SCTP: i32 = 132;
const INIT: u8 = 1;
const INIT_ACK: u8 = 2;
const STATE_COOKIE: u16 = 7;

/// CRC32c (Castagnoli), the SCTP checksum, stored little-endian as the kernel does.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An SCTP packet: common header and one INIT or INIT ACK chunk (with `cookie` as its state
/// cookie parameter when not empty).
fn packet(src: u16, dst: u16, vtag: u32, chunk: u8, own_tag: u32, cookie: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend(src.to_be_bytes());
    p.extend(dst.to_be_bytes());
    p.extend(vtag.to_be_bytes());
    p.extend([0u8; 4]);
    let param_len = if cookie.is_empty() {
        0
    } else {
        4 + cookie.len()
    };
    p.push(chunk);
    p.push(0);
    p.extend(((20 + param_len) as u16).to_be_bytes());
    p.extend(own_tag.to_be_bytes());
    p.extend(65535u32.to_be_bytes()); // a_rwnd
    p.extend(1u16.to_be_bytes()); // outbound streams
    p.extend(1u16.to_be_bytes()); // inbound streams
    p.extend(1u32.to_be_bytes()); // initial TSN
    if !cookie.is_empty() {
        p.extend(STATE_COOKIE.to_be_bytes());
        p.extend((param_len as u16).to_be_bytes());
        p.extend(cookie);
        while p.len() % 4 != 0 {
            p.push(0);
        }
    }
    let sum = crc32c(&p);
    p[8..12].copy_from_slice(&sum.to_le_bytes());
    p
}

/// What the tests read of an incoming SCTP packet.
struct Received {
    from: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    chunk: u8,
    own_tag: u32,
    cookie: Vec<u8>,
}

fn parse(buf: &[u8]) -> Option<Received> {
    let ihl = usize::from(buf.first()? & 0x0f) * 4;
    let ip = buf.get(..ihl)?;
    let s = buf.get(ihl..)?;
    if s.len() < 32 {
        return None;
    }
    let be16 = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let chunk_len = usize::from(be16(&s[14..16]));
    let cookie = if chunk_len > 20 && s.len() >= 12 + chunk_len && be16(&s[32..34]) == STATE_COOKIE
    {
        let len = usize::from(be16(&s[34..36]));
        s.get(36..32 + len)?.to_vec()
    } else {
        Vec::new()
    };
    Some(Received {
        from: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        src_port: be16(&s[0..2]),
        dst_port: be16(&s[2..4]),
        chunk: s[12],
        own_tag: be32(&s[16..20]),
        cookie,
    })
}

fn raw_socket() -> OwnedFd {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, IPPROTO_SCTP) };
    assert!(
        fd >= 0,
        "raw SCTP socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: a valid socket and a timeval of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    fd
}

/// Sends `pkt` to `to`; an error is what the rules said (EPERM: rejected on the way out).
fn send(fd: &OwnedFd, to: Ipv4Addr, pkt: &[u8]) -> std::io::Result<()> {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(to).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the buffer and address are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn recv(fd: &OwnedFd) -> Option<Received> {
    let mut buf = [0u8; 1500];
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n <= 0 {
        return None;
    }
    parse(&buf[..n as usize])
}

/// An SCTP "listener" in `ns` on `port`: every INIT to that port is answered with an INIT ACK
/// naming `name`, until `stop`.
pub fn answer(ns: &str, port: u16, name: &'static str, stop: Arc<AtomicBool>) {
    let fd = in_netns(ns, raw_socket);
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Some(p) = recv(&fd) else { continue };
            if p.chunk == INIT && p.dst_port == port {
                let reply = packet(
                    port,
                    p.src_port,
                    p.own_tag,
                    INIT_ACK,
                    0x5eed,
                    name.as_bytes(),
                );
                let _ = send(&fd, p.from, &reply);
            }
        }
    });
}

/// Sends an INIT from `ns` (source port `src_port`) to `to` and returns the name in the INIT
/// ACK that comes back from `to`, if one does within a second.
pub fn exchange(ns: &str, to: SocketAddrV4, src_port: u16) -> Option<String> {
    in_netns(ns, move || {
        let fd = raw_socket();
        let tag = 0x1000_0000 | u32::from(src_port);
        let init = packet(src_port, to.port(), 0, INIT, tag, &[]);
        send(&fd, *to.ip(), &init).ok()?;
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if let Some(p) = recv(&fd)
                && p.chunk == INIT_ACK
                && p.from == *to.ip()
                && p.src_port == to.port()
                && p.dst_port == src_port
            {
                return Some(String::from_utf8_lossy(&p.cookie).into_owned());
            }
        }
        None
    })
}
