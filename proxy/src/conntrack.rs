//! Deleting conntrack entries through netlink (NETLINK_NETFILTER, ctnetlink): when a UDP
//! endpoint goes away, its entries would keep steering a client's datagrams to the dead address
//! until they time out, since UDP has no connection to break. We dump the IPv4 table and delete
//! every UDP entry whose reply comes from a stale endpoint (it was DNATed to it).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("conntrack netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("conntrack netlink: {0}")]
    Decode(String),
    #[error("conntrack netlink: kernel answered error {0}")]
    Kernel(i32),
}

fn send(socket: &Socket, msg: ConntrackMessage, flags: u16) -> Result<(), Error> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut packet = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
            msg,
        )),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    Ok(())
}

/// Reads answers until the end of a dump or an acknowledgement, handing each conntrack entry
/// to `each`.
fn receive(socket: &Socket, mut each: impl FnMut(Vec<ConntrackAttribute>)) -> Result<(), Error> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        let mut offset = 0;
        while offset < n {
            let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[offset..n])
                .map_err(|e| Error::Decode(e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(()),
                        // ENOENT: the entry went away by itself meanwhile.
                        Some(c) if c.get() == -libc::ENOENT => Ok(()),
                        Some(c) => Err(Error::Kernel(c.get())),
                    };
                }
                NetlinkPayload::InnerMessage(m) => {
                    if let netlink_packet_netfilter::NetfilterMessageInner::Conntrack(
                        ConntrackMessage::New(attrs),
                    ) = m.inner
                    {
                        each(attrs);
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

fn reply_source(attrs: &[ConntrackAttribute]) -> Option<(Ipv4Addr, u16, Protocol)> {
    let tuples = attrs.iter().find_map(|a| match a {
        ConntrackAttribute::CtaTupleReply(t) => Some(t),
        _ => None,
    })?;
    let mut ip = None;
    let mut port = None;
    let mut proto = None;
    for t in tuples {
        match t {
            Tuple::Ip(ips) => {
                for i in ips {
                    if let IPTuple::SourceAddress(IpAddr::V4(a)) = i {
                        ip = Some(*a);
                    }
                }
            }
            Tuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::SourcePort(sp) => port = Some(*sp),
                        ProtoTuple::Protocol(pr) => proto = Some(*pr),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((ip?, port?, proto?))
}

/// Deletes every UDP conntrack entry DNATed to one of `endpoints`; returns how many.
pub fn flush_udp_to(endpoints: &BTreeSet<(Ipv4Addr, u16)>) -> Result<usize, Error> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    send(
        &socket,
        ConntrackMessage::Get(vec![]),
        NLM_F_REQUEST | NLM_F_DUMP,
    )?;
    let mut doomed = Vec::new();
    receive(&socket, |attrs| {
        if let Some((ip, port, Protocol::Udp)) = reply_source(&attrs)
            && endpoints.contains(&(ip, port))
        {
            let orig = attrs.into_iter().find_map(|a| match a {
                ConntrackAttribute::CtaTupleOrig(t) => Some(t),
                _ => None,
            });
            doomed.extend(orig);
        }
    })?;
    for orig in &doomed {
        send(
            &socket,
            ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(orig.clone())]),
            NLM_F_REQUEST | NLM_F_ACK,
        )?;
        receive(&socket, |_| {})?;
    }
    Ok(doomed.len())
}
