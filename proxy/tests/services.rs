//! Real packets through the rules skiff-proxy installs, in both modes: each scenario is written
//! once and instantiated per mode by `both_modes!`.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;

macro_rules! both_modes {
    ($($scenario:ident),* $(,)?) => {
        mod iptables {
            $(#[test] fn $scenario() { super::$scenario("iptables") })*
        }
        mod nftables {
            $(#[test] fn $scenario() { super::$scenario("nftables") })*
        }
    };
}

both_modes!(
    cluster_ip_and_node_port_reach_ready_endpoints,
    session_affinity_and_local_policy,
    restart_bad_input_and_cleanup,
    node_port_addresses_external_ips_and_switching_modes,
    sctp_and_load_balancer_ips,
    growing_past_the_largest_endpoint_count,
    dual_stack_services_over_ipv6,
);

const WEB: &str = "  type: NodePort\n  ports:\n  - name: tcp\n    port: 80\n    protocol: TCP\n    nodePort: 30080\n  - name: udp\n    port: 53\n    protocol: UDP\n    nodePort: 30053\n";

/// ClusterIP (from the node and from a pod) and NodePort (from outside) over TCP and UDP spread
/// over every ready endpoint; an unready endpoint gets nothing; a UDP flow pinned to an
/// endpoint that goes away moves (its conntrack entry is flushed); with no endpoints left the
/// client is refused at once. The node's cluster DNS answers the Service's name.
fn cluster_ip_and_node_port_reach_ready_endpoints(mode: &'static str) {
    let mut lab = Lab::new(mode);
    lab.start_proxy(&[]);
    let cip = lab.service("web", WEB);
    lab.endpoints("web", &[(POD_A_IP, true, NODE), (POD_B_IP, true, NODE)]);
    let cluster_tcp = format!("{cip}:80");
    let node = lab.node.clone();
    lab.wait_spread(&node, &cluster_tcp, &["pod-a", "pod-b"], 30);
    lab.wait_spread(&lab.pod_a.clone(), &cluster_tcp, &["pod-a", "pod-b"], 30);
    // The node answers the Service's name at the cluster DNS address, to itself and its pods.
    require("dig", &["-v"], "bind9-dnsutils");
    for ns in [lab.node.clone(), lab.pod_a.clone()] {
        eventually(
            "the Service's name resolves",
            Duration::from_secs(10),
            || {
                let out = std::process::Command::new("ip")
                    .args(["netns", "exec", &ns, "dig", "+short", "+time=1", "+tries=1"])
                    .args(["@10.96.0.10", "web.default.svc.cluster.local"])
                    .output()
                    .expect("dig");
                String::from_utf8_lossy(&out.stdout).trim() == cip
            },
        );
    }
    // The control plane's kube-dns Service holds that address, and its own name resolves to it.
    let kube_dns = ["get", "service", "-n", "kube-system", "kube-dns"];
    let dns_ip = lab.kubectl(&[&kube_dns[..], &["-o", "jsonpath={.spec.clusterIP}"]].concat());
    assert_eq!(dns_ip.trim(), "10.96.0.10");
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", &lab.node, "dig", "+short", "+time=1", "+tries=1",
        ])
        .args(["@10.96.0.10", "kube-dns.kube-system.svc.cluster.local"])
        .output()
        .expect("dig");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10.96.0.10");
    lab.wait_spread(
        &lab.outside.clone(),
        &format!("{NODE_OUTSIDE_IP}:30080"),
        &["pod-a", "pod-b"],
        30,
    );
    // UDP from fresh sockets (each a new flow) reaches both, to the ClusterIP and the NodePort.
    for (ns, addr) in [
        (lab.node.clone(), format!("{cip}:53")),
        (lab.outside.clone(), format!("{NODE_OUTSIDE_IP}:30053")),
    ] {
        let answers: std::collections::BTreeSet<_> =
            (0..30).filter_map(|_| lab.udp(&ns, &addr)).collect();
        assert_eq!(
            answers,
            ["pod-a", "pod-b"].map(String::from).into(),
            "UDP to {addr} from {ns}"
        );
    }

    // pod-b goes unready: no new connection reaches it.
    lab.endpoints("web", &[(POD_A_IP, true, NODE), (POD_B_IP, false, NODE)]);
    lab.wait_spread(&node, &cluster_tcp, &["pod-a"], 30);
    lab.wait_spread(
        &lab.outside.clone(),
        &format!("{NODE_OUTSIDE_IP}:30080"),
        &["pod-a"],
        10,
    );

    // A long UDP flow to pod-a moves to pod-b when pod-a's endpoint goes.
    lab.endpoints("web", &[(POD_A_IP, true, NODE), (POD_B_IP, true, NODE)]);
    let udp_addr: std::net::SocketAddr = format!("{cip}:53").parse().unwrap();
    let client = in_netns(&node, || UdpSocket::bind("0.0.0.0:0").unwrap());
    let mut first = udp_exchange(&client, udp_addr).expect("UDP answer");
    // Find a flow pinned on pod-a (conntrack keeps the source port's flow on one endpoint).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut client = client;
    while first != "pod-a" {
        assert!(Instant::now() < deadline, "no UDP flow landed on pod-a");
        client = in_netns(&node, || UdpSocket::bind("0.0.0.0:0").unwrap());
        first = udp_exchange(&client, udp_addr).expect("UDP answer");
    }
    lab.endpoints("web", &[(POD_B_IP, true, NODE)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = udp_exchange(&client, udp_addr);
        if now.as_deref() == Some("pod-b") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the UDP flow stayed on {now:?}: its conntrack entry was not flushed\n{}",
            lab.proxy_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // No endpoints: refused at once (REJECT), not a timeout; the NodePort too.
    lab.endpoints("web", &[]);
    for (ns, addr) in [
        (node.clone(), cluster_tcp.clone()),
        (lab.pod_a.clone(), cluster_tcp.clone()),
        (lab.outside.clone(), format!("{NODE_OUTSIDE_IP}:30080")),
    ] {
        common::eventually("connection refused", Duration::from_secs(10), || {
            let t = Instant::now();
            let r = lab.tcp(&ns, &addr);
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
                && t.elapsed() < Duration::from_secs(1)
        });
    }

    // The Service goes: nothing of it is left in the rules.
    let rules_with = rules(&lab);
    assert!(rules_with.contains(&cip), "{rules_with}");
    lab.kubectl(&["delete", "service", "web"]);
    lab.kubectl(&["delete", "endpointslice", "web-1"]);
    common::eventually("rules of web removed", Duration::from_secs(10), || {
        !rules(&lab).contains(&cip)
    });
    let metrics = lab
        .http(&node, "127.0.0.1:10256", "/metrics")
        .expect("metrics")
        .1;
    for name in [
        "kubeproxy_sync_proxy_rules_duration_seconds_count",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "kubeproxy_network_programming_duration_seconds_bucket",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
}

/// A dual-stack Service's IPv6 ClusterIP (the proxy given an IPv6 Service range) reaches every
/// endpoint over TCP and UDP, from the node and from a pod, its IPv4 one still does, and so does
/// its NodePort on the node's IPv6 address from outside (only on the addresses
/// `--nodeport-addresses` selects) and at an externalIP; ClientIP affinity sticks; a Local
/// policy holds and its healthCheckNodePort answers over IPv6; a UDP flow moves when its endpoint goes (its IPv6 conntrack
/// entry flushed); with no IPv6 endpoints it is refused at once; the IPv6 rules are in their own
/// table (chains) and go with `skiff-proxy cleanup`. A proxy given no IPv6 range writes no IPv6
/// rules at all.
fn dual_stack_services_over_ipv6(mode: &'static str) {
    let mut lab = Lab::new(mode);
    let rules6 = |lab: &Lab| match mode {
        "iptables" => lab.ip6tables_save(),
        _ => lab.nft_ruleset(),
    };
    let ours6 = |rules: &str| match mode {
        "iptables" => rules.contains("SKIFF-SERVICES"),
        _ => rules.contains("table ip6 skiff"),
    };
    lab.start_proxy(&[]);
    assert!(!ours6(&rules6(&lab)), "{}", rules6(&lab));
    lab.start_proxy(&[
        "--cluster-cidr",
        CLUSTER_CIDR6,
        "--service-cluster-ip-range",
        SERVICE_CIDRS,
    ]);
    let dual = format!("  ipFamilyPolicy: RequireDualStack\n{WEB}");
    lab.service("web", &dual);
    let ips = lab.kubectl(&[
        "get",
        "service",
        "web",
        "-o",
        "jsonpath={.spec.clusterIPs[*]}",
    ]);
    let (cip, cip6) = ips.split_once(' ').expect("two ClusterIPs");
    assert!(cip6.starts_with("fd00:10:96::"), "{ips}");
    lab.endpoints("web", &[(POD_A_IP, true, NODE), (POD_B_IP, true, NODE)]);
    lab.endpoints6("web", &[(POD_A_IP6, true, NODE), (POD_B_IP6, true, NODE)]);
    let (tcp4, tcp6, udp6) = (
        format!("{cip}:80"),
        format!("[{cip6}]:80"),
        format!("[{cip6}]:53"),
    );
    for ns in [lab.node.clone(), lab.pod_a.clone()] {
        lab.wait_spread(&ns, &tcp6, &["pod-a", "pod-b"], 30);
        lab.wait_spread(&ns, &tcp4, &["pod-a", "pod-b"], 30);
        let answers: std::collections::BTreeSet<_> =
            (0..30).filter_map(|_| lab.udp(&ns, &udp6)).collect();
        assert_eq!(
            answers,
            ["pod-a", "pod-b"].map(String::from).into(),
            "UDP to {udp6} from {ns}\n{}",
            lab.proxy_log()
        );
    }
    assert!(ours6(&rules6(&lab)), "{}", rules6(&lab));
    let outside = lab.outside.clone();
    let node_port6 = format!("[{NODE_OUTSIDE_IP6}]:30080");
    let elsewhere = format!("[{BRIDGE_IP6}]:30080");
    for addr in [&node_port6, &elsewhere] {
        lab.wait_spread(&outside, addr, &["pod-a", "pod-b"], 20);
    }

    // A long UDP flow to pod-a moves to pod-b when pod-a's endpoint goes.
    let node = lab.node.clone();
    let udp_addr: std::net::SocketAddr = udp6.parse().unwrap();
    let fresh = || in_netns(&node, || UdpSocket::bind("[::]:0").unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut client = fresh();
    while udp_exchange(&client, udp_addr).as_deref() != Some("pod-a") {
        assert!(Instant::now() < deadline, "no UDP flow landed on pod-a");
        client = fresh();
    }
    lab.endpoints6("web", &[(POD_B_IP6, true, NODE)]);
    common::eventually(
        "the UDP flow moves to pod-b",
        Duration::from_secs(10),
        || udp_exchange(&client, udp_addr).as_deref() == Some("pod-b"),
    );
    lab.endpoints6("web", &[(POD_A_IP6, true, NODE), (POD_B_IP6, true, NODE)]);

    // ClientIP affinity holds over IPv6 (the endpoint chains DNAT to `[address]:port`).
    let sticky = lab.service(
        "sticky",
        "  ipFamilies: [IPv6]\n  sessionAffinity: ClientIP\n  ports:\n  - name: tcp\n    port: 80\n",
    );
    lab.endpoints6(
        "sticky",
        &[(POD_A_IP6, true, NODE), (POD_B_IP6, true, NODE)],
    );
    let sticky = format!("[{sticky}]:80");
    common::eventually("sticky service answers", Duration::from_secs(20), || {
        lab.tcp(&node, &sticky).is_ok()
    });
    for ns in [node.clone(), lab.pod_a.clone()] {
        let seen = lab.spread(&ns, &sticky, 20);
        assert_eq!(seen.len(), 1, "affinity did not stick from {ns}: {seen:?}");
    }

    // externalTrafficPolicy Local over IPv6: outside clients reach only this node's endpoint.
    lab.service(
        "local",
        "  ipFamilies: [IPv6]\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32001\n  ports:\n  - name: tcp\n    port: 80\n    nodePort: 30082\n",
    );
    lab.endpoints6(
        "local",
        &[(POD_A_IP6, true, NODE), (POD_B_IP6, true, "node2")],
    );
    lab.wait_spread(
        &outside,
        &format!("[{NODE_OUTSIDE_IP6}]:30082"),
        &["pod-a"],
        20,
    );
    let health = format!("[{NODE_OUTSIDE_IP6}]:32001");
    common::eventually(
        "healthCheckNodePort answers over IPv6",
        Duration::from_secs(10),
        || {
            lab.http(&outside, &health, "/")
                .is_some_and(|(code, body)| code == 200 && body.contains("\"localEndpoints\":1"))
        },
    );

    // An IPv6 externalIP, reached from outside through the node.
    lab.service(
        "ext",
        "  ipFamilies: [IPv6]\n  externalIPs: [\"fd00:300::99\"]\n  ports:\n  - name: tcp\n    port: 80\n",
    );
    lab.endpoints6("ext", &[(POD_A_IP6, true, NODE), (POD_B_IP6, true, NODE)]);
    lab.wait_spread(&outside, "[fd00:300::99]:80", &["pod-a", "pod-b"], 20);

    // NodePorts only on the addresses --nodeport-addresses selects, in either family.
    lab.start_proxy(&[
        "--cluster-cidr",
        CLUSTER_CIDR6,
        "--service-cluster-ip-range",
        SERVICE_CIDRS,
        "--nodeport-addresses",
        "fd00:200::/64,192.168.200.0/24",
    ]);
    lab.wait_spread(&outside, &node_port6, &["pod-a", "pod-b"], 20);
    common::eventually("no NodePort on the bridge", Duration::from_secs(10), || {
        lab.tcp(&outside, &elsewhere).is_err()
    });

    // No IPv6 endpoints: refused at once, not a timeout.
    lab.endpoints6("web", &[]);
    for ns in [lab.node.clone(), lab.pod_a.clone()] {
        common::eventually("connection refused", Duration::from_secs(10), || {
            let t = Instant::now();
            let r = lab.tcp(&ns, &tcp6);
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
                && t.elapsed() < Duration::from_secs(1)
        });
    }
    lab.wait_spread(&lab.node.clone(), &tcp4, &["pod-a", "pod-b"], 10);
    // Every sync went through, partial ones included (a failed one is redone whole).
    let log = lab.proxy_log();
    assert!(!log.contains("installing rules failed"), "{log}");
    // Cleanup removes the rules of both families.
    lab.stop_proxy();
    common::run(std::process::Command::new("ip").args([
        "netns",
        "exec",
        &lab.node,
        env!("CARGO_BIN_EXE_skiff-proxy"),
        "cleanup",
    ]));
    let (after4, after6) = (rules(&lab), rules6(&lab));
    assert!(
        !after4.contains(cip) && !ours6(&after6),
        "{after4}\n{after6}"
    );
}

fn rules(lab: &Lab) -> String {
    match lab.mode {
        "iptables" => lab.iptables_save(),
        _ => lab.nft_ruleset(),
    }
}

/// ClientIP affinity keeps a client on one endpoint; externalTrafficPolicy Local reaches only
/// this node's endpoints and healthCheckNodePort says how many there are.
fn session_affinity_and_local_policy(mode: &'static str) {
    let mut lab = Lab::new(mode);
    lab.start_proxy(&[]);
    let cip = lab.service(
        "sticky",
        "  sessionAffinity: ClientIP\n  ports:\n  - name: tcp\n    port: 80\n",
    );
    lab.endpoints("sticky", &[(POD_A_IP, true, NODE), (POD_B_IP, true, NODE)]);
    let addr = format!("{cip}:80");
    let node = lab.node.clone();
    common::eventually("sticky service answers", Duration::from_secs(20), || {
        lab.tcp(&node, &addr).is_ok()
    });
    let seen = lab.spread(&node, &addr, 30);
    assert_eq!(seen.len(), 1, "affinity did not stick: {seen:?}");
    // Another client (a pod) sticks too, on whichever endpoint it got first.
    let seen = lab.spread(&lab.pod_a.clone(), &addr, 20);
    assert_eq!(
        seen.len(),
        1,
        "affinity did not stick for the pod: {seen:?}"
    );

    // Local: pod-b is on another node, so outside clients reach only pod-a, with their own
    // source address (no masquerade), and the health check port reports one local endpoint.
    lab.service(
        "local",
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n  ports:\n  - name: tcp\n    port: 80\n    nodePort: 30081\n",
    );
    lab.endpoints(
        "local",
        &[(POD_A_IP, true, NODE), (POD_B_IP, true, "node2")],
    );
    let hc_port = lab.kubectl(&[
        "get",
        "service",
        "local",
        "-o",
        "jsonpath={.spec.healthCheckNodePort}",
    ]);
    let outside = lab.outside.clone();
    lab.wait_spread(
        &outside,
        &format!("{NODE_OUTSIDE_IP}:30081"),
        &["pod-a"],
        20,
    );
    let health = format!("{NODE_OUTSIDE_IP}:{hc_port}");
    common::eventually(
        "healthCheckNodePort answers 200",
        Duration::from_secs(10),
        || {
            lab.http(&outside, &health, "/")
                .is_some_and(|(code, body)| code == 200 && body.contains("\"localEndpoints\":1"))
        },
    );
    // From a pod the cluster policy holds: both endpoints.
    lab.wait_spread(
        &lab.pod_b.clone(),
        &format!("{NODE_OUTSIDE_IP}:30081"),
        &["pod-a", "pod-b"],
        30,
    );
    // No local endpoint: outside traffic is dropped (not sent to another node), health is 503.
    lab.endpoints("local", &[(POD_B_IP, true, "node2")]);
    common::eventually(
        "healthCheckNodePort answers 503",
        Duration::from_secs(10),
        || {
            lab.http(&outside, &health, "/")
                .is_some_and(|(code, body)| code == 503 && body.contains("\"localEndpoints\":0"))
        },
    );
    let t = Instant::now();
    let r = lab.tcp(&outside, &format!("{NODE_OUTSIDE_IP}:30081"));
    assert!(r.is_err(), "{r:?}");
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "dropped, not refused"
    );
}

/// A restarted proxy keeps traffic flowing and removes what was deleted while it was down
/// (without replacing the table whole in nftables mode); a
/// bad Service is skipped (an Event says why) while the others keep working; `cleanup` leaves
/// nothing behind.
fn restart_bad_input_and_cleanup(mode: &'static str) {
    let mut lab = Lab::new(mode);
    lab.start_proxy(&[]);
    let cip = lab.service("web", WEB);
    let gone_ip = lab.service("gone", "  ports:\n  - name: tcp\n    port: 80\n");
    lab.endpoints("web", &[(POD_A_IP, true, NODE), (POD_B_IP, true, NODE)]);
    lab.endpoints("gone", &[(POD_A_IP, true, NODE)]);
    let node = lab.node.clone();
    let addr = format!("{cip}:80");
    lab.wait_spread(&node, &addr, &["pod-a", "pod-b"], 20);
    common::eventually("gone programmed", Duration::from_secs(10), || {
        rules(&lab).contains(&gone_ip)
    });

    lab.stop_proxy();
    // Rules stay in place while the proxy is down.
    assert_eq!(lab.spread(&node, &addr, 10).len(), 2);
    lab.kubectl(&["delete", "service", "gone"]);
    // An external IP the proxy must ignore and a port protocol it cannot program: a bad Service.
    lab.service(
        "bad",
        "  externalIPs: [\"255.255.255.255\"]\n  ports:\n  - name: tcp\n    port: 81\n",
    );
    lab.start_proxy(&[]);
    common::eventually(
        "gone removed after restart",
        Duration::from_secs(10),
        || !rules(&lab).contains(&gone_ip),
    );
    lab.wait_spread(&node, &addr, &["pod-a", "pod-b"], 20);
    // The first sync over the table the first run left rewrote it in place.
    let log = lab.proxy_log();
    assert!(!log.contains("replacing the table as text"), "{log}");
    common::eventually(
        "an event about the bad Service",
        Duration::from_secs(10),
        || {
            lab.kubectl(&["get", "events", "-o", "yaml"])
                .contains("255.255.255.255")
        },
    );

    // Cleanup removes both modes' rules and the dummy interface.
    lab.stop_proxy();
    run(std::process::Command::new("ip")
        .args(["netns", "exec", &node])
        .arg(env!("CARGO_BIN_EXE_skiff-proxy"))
        .arg("cleanup"));
    assert!(
        !lab.iptables_save().contains("SKIFF-"),
        "{}",
        lab.iptables_save()
    );
    assert!(
        !lab.nft_ruleset().contains("table ip skiff"),
        "{}",
        lab.nft_ruleset()
    );
    let links = run(std::process::Command::new("ip").args(["-n", &node, "link"])).stdout;
    assert!(!String::from_utf8_lossy(&links).contains("skiff-svc"));
}

/// `--nodeport-addresses` limits NodePorts to the node addresses it names, following address
/// changes; externalIPs reach the endpoints; restarting in the other mode removes this mode's
/// rules and traffic keeps flowing.
fn node_port_addresses_external_ips_and_switching_modes(mode: &'static str) {
    let mut lab = Lab::new(mode);
    lab.start_proxy(&["--nodeport-addresses", "192.168.200.0/24"]);
    lab.service(
        "web",
        "  type: NodePort\n  externalIPs: [\"172.16.0.50\"]\n  ports:\n  - name: tcp\n    port: 80\n    nodePort: 30080\n",
    );
    lab.endpoints("web", &[(POD_A_IP, true, NODE), (POD_B_IP, true, NODE)]);
    let outside = lab.outside.clone();
    let both = ["pod-a", "pod-b"];
    lab.wait_spread(&outside, &format!("{NODE_OUTSIDE_IP}:30080"), &both, 20);
    lab.wait_spread(&outside, "172.16.0.50:80", &both, 20);
    // The bridge address is not a NodePort address: nothing answers there.
    let r = lab.tcp(&lab.pod_a.clone(), "10.244.0.1:30080");
    assert!(r.is_err(), "NodePort answered on 10.244.0.1: {r:?}");
    // A new address in the range becomes a NodePort address.
    let node = lab.node.clone();
    run(std::process::Command::new("ip").args([
        "-n",
        &node,
        "addr",
        "add",
        "192.168.200.77/24",
        "dev",
        "vo",
    ]));
    lab.wait_spread(&outside, "192.168.200.77:30080", &both, 20);

    let other = if mode == "iptables" {
        "nftables"
    } else {
        "iptables"
    };
    lab.mode = other;
    lab.start_proxy(&["--nodeport-addresses", "192.168.200.0/24"]);
    lab.wait_spread(&outside, &format!("{NODE_OUTSIDE_IP}:30080"), &both, 20);
    common::eventually(
        "the old mode's rules removed",
        Duration::from_secs(10),
        || match mode {
            "iptables" => !lab.iptables_save().contains("SKIFF-"),
            _ => !lab.nft_ruleset().contains("table ip skiff"),
        },
    );
}

/// SCTP to a ClusterIP reaches every endpoint (DNATed to the endpoint's port, answered back
/// from the Service address); a LoadBalancer Service's `status.loadBalancer.ingress` IP takes
/// outside traffic to its endpoints, and stops when the IP leaves the status.
fn sctp_and_load_balancer_ips(mode: &'static str) {
    let mut lab = Lab::new(mode);
    lab.listen_sctp(&lab.pod_a.clone(), 7777, "pod-a");
    lab.listen_sctp(&lab.pod_b.clone(), 7777, "pod-b");
    lab.start_proxy(&[]);
    let cip = lab.service(
        "assoc",
        "  ports:\n  - name: sctp\n    port: 9999\n    protocol: SCTP\n",
    );
    lab.apply(&format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: assoc-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: assoc\naddressType: IPv4\nports:\n- name: sctp\n  port: 7777\n  protocol: SCTP\nendpoints:\n- addresses: [\"{POD_A_IP}\"]\n- addresses: [\"{POD_B_IP}\"]\n"
    ));
    let to: std::net::SocketAddrV4 = format!("{cip}:9999").parse().unwrap();
    let node = lab.node.clone();
    common::eventually(
        "SCTP reaches the Service (conntrack and NAT of SCTP: CONFIG_NF_CT_PROTO_SCTP)",
        Duration::from_secs(20),
        || sctp::exchange(&node, to, 40000).is_some(),
    );
    // Each source port is a new association, spread over both endpoints.
    let answers: std::collections::BTreeSet<_> = (40001..40031)
        .filter_map(|port| sctp::exchange(&node, to, port))
        .collect();
    assert_eq!(
        answers,
        ["pod-a", "pod-b"].map(String::from).into(),
        "SCTP INITs to {to}\n{}",
        lab.proxy_log()
    );

    lab.service(
        "lb",
        "  type: LoadBalancer\n  ports:\n  - name: tcp\n    port: 80\n",
    );
    lab.endpoints("lb", &[(POD_A_IP, true, NODE), (POD_B_IP, true, NODE)]);
    let lb_status = |ingress: &str| {
        lab.kubectl(&[
            "patch",
            "service",
            "lb",
            "--subresource=status",
            "--type=merge",
            "-p",
            &format!("{{\"status\":{{\"loadBalancer\":{{\"ingress\":[{ingress}]}}}}}}"),
        ]);
    };
    lb_status("{\"ip\":\"172.16.0.60\"}");
    let outside = lab.outside.clone();
    lab.wait_spread(&outside, "172.16.0.60:80", &["pod-a", "pod-b"], 20);
    lb_status("");
    common::eventually(
        "the load-balancer IP stops answering",
        Duration::from_secs(10),
        || lab.tcp(&outside, "172.16.0.60:80").is_err(),
    );
}

/// A Service growing past the largest endpoint count the rules have held (in nftables mode a
/// new endpoint pick chain, which nft 1.0.6 cannot add over the table it reads back) is
/// programmed by the partial sync itself: no sync fails and no full sync is needed, and
/// traffic to the ClusterIP and the NodePort reaches every endpoint, the new ones too.
fn growing_past_the_largest_endpoint_count(mode: &'static str) {
    let mut lab = Lab::new(mode);
    lab.add_pod(POD_C_IP, "pod-c");
    lab.start_proxy(&[]);
    let cip = lab.service("web", WEB);
    lab.endpoints("web", &[(POD_A_IP, true, NODE)]);
    let node = lab.node.clone();
    let addr = format!("{cip}:80");
    lab.wait_spread(&node, &addr, &["pod-a"], 10);
    lab.endpoints(
        "web",
        &[
            (POD_A_IP, true, NODE),
            (POD_B_IP, true, NODE),
            (POD_C_IP, true, NODE),
        ],
    );
    let all = ["pod-a", "pod-b", "pod-c"];
    lab.wait_spread(&node, &addr, &all, 40);
    lab.wait_spread(
        &lab.outside.clone(),
        &format!("{NODE_OUTSIDE_IP}:30080"),
        &all,
        40,
    );
    let log = lab.proxy_log();
    assert!(
        !log.contains("installing rules failed") && !log.contains("replacing the table as text"),
        "{log}"
    );
}

/// Given several API servers (`--api-servers`), the proxy skips one that refuses connections
/// and programs the Services it reads from the next.
#[test]
fn a_proxy_given_an_unreachable_api_server_first_uses_the_next() {
    let mut lab = Lab::new("iptables");
    let kubeconfig = std::fs::read_to_string(lab.kubeconfig()).expect("admin.kubeconfig");
    let live = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("the kubeconfig names its server")
        .to_string();
    // Nothing listens on port 1 of the node's loopback: refused.
    lab.start_proxy(&["--api-servers", &format!("https://127.0.0.1:1,{live}")]);
    let cip = lab.service("web", WEB);
    lab.endpoints("web", &[(POD_A_IP, true, NODE), (POD_B_IP, true, NODE)]);
    let node = lab.node.clone();
    lab.wait_spread(&node, &format!("{cip}:80"), &["pod-a", "pod-b"], 30);
    let log = lab.proxy_log();
    assert!(
        log.contains("API server unreachable; trying the next"),
        "{log}"
    );
}
