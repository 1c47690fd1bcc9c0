//! Deleting conntrack entries through netlink (NETLINK_NETFILTER, ctnetlink): when a UDP
//! endpoint goes away, its entries would keep steering a client's datagrams to the dead address
//! until they time out, since UDP has no connection to break. Likewise a UDP Service that gets
//! its first endpoint: datagrams sent while it had none left entries that bypass the new DNAT.
//! We dump the IPv4 and the IPv6 table and delete every UDP entry whose reply comes from a stale
//! endpoint (it was DNATed to it) or whose original destination is such a Service.

use std::collections::BTreeSet;
use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::model::ServiceDst;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("conntrack netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("conntrack netlink: {0}")]
    Decode(String),
    #[error("conntrack netlink: kernel answered error {0}")]
    Kernel(i32),
}

fn send(
    socket: &Socket,
    family: NetfilterProtoFamily,
    msg: ConntrackMessage,
    flags: u16,
) -> Result<(), Error> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut packet = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
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

/// (source, destination, source port, destination port, protocol) of a tuple.
type Fields = (IpAddr, IpAddr, u16, u16, Protocol);

fn tuple_fields(tuples: &[Tuple]) -> Option<Fields> {
    let (mut src, mut dst, mut sport, mut dport, mut proto) = (None, None, None, None, None);
    for t in tuples {
        match t {
            Tuple::Ip(ips) => {
                for i in ips {
                    match i {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::SourcePort(p) => sport = Some(*p),
                        ProtoTuple::DestinationPort(p) => dport = Some(*p),
                        ProtoTuple::Protocol(p) => proto = Some(*p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((src?, dst?, sport?, dport?, proto?))
}

/// Deletes every UDP conntrack entry DNATed to one of `endpoints` or sent to one of
/// `services`; returns how many.
pub fn flush_udp(
    endpoints: &BTreeSet<(IpAddr, u16)>,
    services: &BTreeSet<ServiceDst>,
) -> Result<usize, Error> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut deleted = 0;
    for family in [NetfilterProtoFamily::IPv4, NetfilterProtoFamily::IPv6] {
        deleted += flush_family(&socket, family, endpoints, services)?;
    }
    Ok(deleted)
}

/// [`flush_udp`] over the table of one family.
fn flush_family(
    socket: &Socket,
    family: NetfilterProtoFamily,
    endpoints: &BTreeSet<(IpAddr, u16)>,
    services: &BTreeSet<ServiceDst>,
) -> Result<usize, Error> {
    send(
        socket,
        family,
        ConntrackMessage::Get(vec![]),
        NLM_F_REQUEST | NLM_F_DUMP,
    )?;
    let mut doomed = Vec::new();
    receive(socket, |attrs| {
        let mut orig = None;
        let mut reply = None;
        for a in attrs {
            match a {
                ConntrackAttribute::CtaTupleOrig(t) => orig = Some(t),
                ConntrackAttribute::CtaTupleReply(t) => reply = Some(t),
                _ => {}
            }
        }
        let (Some(orig), Some(reply)) = (orig, reply) else {
            return;
        };
        let (Some(o), Some(r)) = (tuple_fields(&orig), tuple_fields(&reply)) else {
            return;
        };
        if o.4 != Protocol::Udp {
            return;
        }
        let to_endpoint = endpoints.contains(&(r.0, r.2));
        let to_service = services.contains(&ServiceDst::Addr(o.1, o.3))
            || services.contains(&ServiceDst::NodePort(o.3));
        if to_endpoint || to_service {
            doomed.push(orig);
        }
    })?;
    for orig in &doomed {
        send(
            socket,
            family,
            ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(orig.clone())]),
            NLM_F_REQUEST | NLM_F_ACK,
        )?;
        receive(socket, |_| {})?;
    }
    Ok(doomed.len())
}
