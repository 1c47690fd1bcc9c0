//! Conntrack entries deleted over netlink in both families: real UDP flows over loopback leave
//! IPv4 and IPv6 entries, and `flush_udp` deletes exactly the ones to the endpoints or Service
//! addresses it is given. Run as root in a network namespace of its own (the test's thread
//! unshares it; `nft`, which makes the namespace track connections, inherits it).

use std::collections::BTreeSet;
use std::net::{IpAddr, UdpSocket};
use std::process::{Command, Stdio};

use skiff_proxy::conntrack::flush_udp;
use skiff_proxy::model::ServiceDst;

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    if let Some(s) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success(), "{cmd} {args:?}");
}

/// A UDP datagram from a fresh port to `to`, which leaves a conntrack entry.
fn send(to: (IpAddr, u16)) {
    let bind: IpAddr = if to.0.is_ipv4() {
        "127.0.0.1".parse().unwrap()
    } else {
        "::1".parse().unwrap()
    };
    let s = UdpSocket::bind((bind, 0)).unwrap();
    s.send_to(b"x", to).unwrap();
}

#[test]
fn udp_entries_of_both_families_are_deleted_by_endpoint_and_by_service() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unsharing a network namespace (this test needs root)");
    run("ip", &["link", "set", "lo", "up"], None);
    // A table of this namespace's own whose ct rule makes the kernel track its connections.
    run(
        "nft",
        &["-f", "-"],
        Some(
            "table inet ct-test {\n chain out {\n  type filter hook output priority 0;\n  ct state new counter\n }\n}\n",
        ),
    );
    let v4: IpAddr = "127.0.0.1".parse().unwrap();
    let v6: IpAddr = "::1".parse().unwrap();
    let listeners: Vec<UdpSocket> = [v4, v6]
        .iter()
        .map(|ip| UdpSocket::bind((*ip, 0)).unwrap())
        .collect();
    let port = |i: usize| listeners[i].local_addr().unwrap().port();
    let (p4, p6) = (port(0), port(1));
    for _ in 0..3 {
        send((v4, p4));
        send((v6, p6));
    }
    let none = BTreeSet::new();
    // By endpoint (the entries' reply source): only the IPv6 endpoint's three go.
    let endpoint = BTreeSet::from([(v6, p6)]);
    assert_eq!(flush_udp(&endpoint, &none).unwrap(), 3);
    assert_eq!(flush_udp(&endpoint, &none).unwrap(), 0);
    // By Service address (the entries' original destination), in either family.
    send((v6, p6));
    let services = BTreeSet::from([ServiceDst::Addr(v4, p4), ServiceDst::Addr(v6, p6)]);
    assert_eq!(flush_udp(&BTreeSet::new(), &services).unwrap(), 4);
    assert_eq!(flush_udp(&BTreeSet::new(), &services).unwrap(), 0);
}
