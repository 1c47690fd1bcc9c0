//! The pod network's netfilter rules, in chains of our own in the `nat` table, each chain
//! rewritten whole by one `iptables-restore --noflush` (which flushes only the chains it
//! declares) and reached by one jump from a built-in chain, added only when missing:
//!
//! - `SKIFF-KUBELET-POSTROUTING` (from POSTROUTING): MASQUERADE for traffic from the podCIDR
//!   leaving the cluster CIDR (multicast excepted).
//! - `SKIFF-HOSTPORTS` (from PREROUTING and OUTPUT, for local destinations): hostPort DNAT to
//!   the pod.
//! - `SKIFF-HOSTPORTS-MASQ` (from POSTROUTING): MASQUERADE for a pod reaching its own hostPort
//!   (hairpin), whose reply would otherwise never come back through the node.
//!
//! Nothing else is touched: no built-in chain is flushed, no other chain is read.

use std::net::Ipv4Addr;
use std::process::Stdio;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Pod;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{NetworkError, Result};

pub const POSTROUTING_CHAIN: &str = "SKIFF-KUBELET-POSTROUTING";
pub const HOSTPORTS_CHAIN: &str = "SKIFF-HOSTPORTS";
pub const HOSTPORTS_MASQ_CHAIN: &str = "SKIFF-HOSTPORTS-MASQ";

/// A pod port published on the node (`containers[].ports[].hostPort`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPortMapping {
    /// `hostIP`; `None` for every local address of the node.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub protocol: HostPortProtocol,
    pub pod_ip: Ipv4Addr,
    pub container_port: u16,
}

impl HostPortMapping {
    /// The hostPorts of `pod`'s containers (as the kubelet collects them: `spec.containers`
    /// only), mapped to `pod_ip`. A `hostIP` of `""` or `0.0.0.0` means every local address;
    /// IPv6 host addresses are skipped (the pod network is IPv4).
    pub fn for_pod(pod: &Pod, pod_ip: Ipv4Addr) -> Result<Vec<HostPortMapping>> {
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.as_slice())
            .unwrap_or_default();
        let mut mappings = Vec::new();
        for port in containers.iter().flat_map(|c| c.ports.iter().flatten()) {
            let Some(host_port) = port.host_port.filter(|p| *p != 0) else {
                continue;
            };
            let port_number = |value: i32, field| {
                u16::try_from(value)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| NetworkError::InvalidInput {
                        field,
                        reason: format!("{value} is not a port number"),
                    })
            };
            let host_ip = match port.host_ip.as_deref().unwrap_or_default() {
                "" => None,
                ip => match ip.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V4(ip)) if ip.is_unspecified() => None,
                    Ok(std::net::IpAddr::V4(ip)) => Some(ip),
                    Ok(std::net::IpAddr::V6(_)) => continue,
                    Err(_) => {
                        return Err(NetworkError::InvalidInput {
                            field: "ports.hostIP",
                            reason: format!("{ip:?} is not an IP address"),
                        });
                    }
                },
            };
            mappings.push(HostPortMapping {
                host_ip,
                host_port: port_number(host_port, "ports.hostPort")?,
                protocol: HostPortProtocol::from_k8s(port.protocol.as_deref())?,
                pod_ip,
                container_port: port_number(port.container_port, "ports.containerPort")?,
            });
        }
        Ok(mappings)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPortProtocol {
    Tcp,
    Udp,
    Sctp,
}

impl HostPortProtocol {
    /// From a ContainerPort's `protocol` (default TCP).
    pub fn from_k8s(protocol: Option<&str>) -> Result<Self> {
        match protocol.unwrap_or("TCP") {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "SCTP" => Ok(Self::Sctp),
            other => Err(NetworkError::InvalidInput {
                field: "ports.protocol",
                reason: format!("unknown protocol {other:?}"),
            }),
        }
    }

    fn iptables_name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// The `iptables-restore` input for the masquerade chain.
pub fn masquerade_rules(pod_cidr: Ipv4Net, cluster_cidr: Ipv4Net) -> String {
    let chain = POSTROUTING_CHAIN;
    format!(
        "*nat\n:{chain} - [0:0]\n\
         -A {chain} -s {pod_cidr} -d {cluster_cidr} -j RETURN\n\
         -A {chain} -s {pod_cidr} -d 224.0.0.0/4 -j RETURN\n\
         -A {chain} -s {pod_cidr} -j MASQUERADE\n\
         COMMIT\n"
    )
}

/// The `iptables-restore` input for the hostPort chains (mappings in a stable order).
pub fn host_port_rules(mappings: &[HostPortMapping]) -> String {
    let mut mappings = mappings.to_vec();
    mappings.sort();
    mappings.dedup();
    let mut out = format!("*nat\n:{HOSTPORTS_CHAIN} - [0:0]\n:{HOSTPORTS_MASQ_CHAIN} - [0:0]\n");
    for m in &mappings {
        let proto = m.protocol.iptables_name();
        let dest = m
            .host_ip
            .map(|ip| format!(" -d {ip}/32"))
            .unwrap_or_default();
        out += &format!(
            "-A {HOSTPORTS_CHAIN} -p {proto}{dest} --dport {} -j DNAT --to-destination {}:{}\n",
            m.host_port, m.pod_ip, m.container_port
        );
    }
    let mut hairpins: Vec<_> = mappings
        .iter()
        .map(|m| (m.pod_ip, m.protocol, m.container_port))
        .collect();
    hairpins.sort();
    hairpins.dedup();
    for (pod_ip, protocol, port) in hairpins {
        out += &format!(
            "-A {HOSTPORTS_MASQ_CHAIN} -p {} -s {pod_ip}/32 -d {pod_ip}/32 --dport {port} -j MASQUERADE\n",
            protocol.iptables_name()
        );
    }
    out + "COMMIT\n"
}

/// Installs the masquerade chain and its jump.
pub async fn ensure_masquerade(pod_cidr: Ipv4Net, cluster_cidr: Ipv4Net) -> Result<()> {
    restore(&masquerade_rules(pod_cidr, cluster_cidr)).await?;
    ensure_jump("POSTROUTING", &["-j", POSTROUTING_CHAIN]).await
}

/// Makes the hostPort chains hold exactly `mappings`, and their jumps.
pub async fn set_host_ports(mappings: &[HostPortMapping]) -> Result<()> {
    restore(&host_port_rules(mappings)).await?;
    let local = [
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "-j",
        HOSTPORTS_CHAIN,
    ];
    ensure_jump("PREROUTING", &local).await?;
    ensure_jump("OUTPUT", &local).await?;
    ensure_jump("POSTROUTING", &["-j", HOSTPORTS_MASQ_CHAIN]).await
}

/// Removes the node's chains and the jumps to them (the node leaving the cluster). Idempotent.
pub async fn remove_all() -> Result<()> {
    let local = [
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "-j",
        HOSTPORTS_CHAIN,
    ];
    let jumps: [(&str, &[&str]); 4] = [
        ("POSTROUTING", &["-j", POSTROUTING_CHAIN]),
        ("PREROUTING", &local),
        ("OUTPUT", &local),
        ("POSTROUTING", &["-j", HOSTPORTS_MASQ_CHAIN]),
    ];
    for (chain, rule) in jumps {
        // A jump added twice (by a crash between check and append) goes too.
        while iptables(&["-t", "nat", "-D", chain], rule)
            .await?
            .status
            .success()
        {}
    }
    for chain in [POSTROUTING_CHAIN, HOSTPORTS_CHAIN, HOSTPORTS_MASQ_CHAIN] {
        if !iptables(&["-t", "nat", "-S", chain], &[])
            .await?
            .status
            .success()
        {
            continue;
        }
        for op in ["-F", "-X"] {
            let out = iptables(&["-t", "nat", op, chain], &[]).await?;
            if !out.status.success() {
                return Err(iptables_failure(chain, &out));
            }
        }
    }
    Ok(())
}

async fn restore(input: &str) -> Result<()> {
    let what = "iptables-restore --noflush".to_string();
    let mut child = Command::new("iptables-restore")
        .args(["--noflush", "-w"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetworkError::Iptables {
            what: what.clone(),
            message: format!("cannot run iptables-restore (package iptables): {e}"),
        })?;
    let mut stdin = child.stdin.take().expect("piped");
    let written = stdin.write_all(input.as_bytes()).await;
    drop(stdin);
    let output = child
        .wait_with_output()
        .await
        .map_err(super::io_err(what.clone()))?;
    if !output.status.success() || written.is_err() {
        return Err(NetworkError::Iptables {
            what,
            message: format!(
                "{}; input:\n{input}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// Appends `rule` to the built-in `chain` of the nat table unless it is there (`iptables -C`).
async fn ensure_jump(chain: &str, rule: &[&str]) -> Result<()> {
    let check = iptables(&["-t", "nat", "-C", chain], rule).await?;
    match check.status.code() {
        Some(0) => return Ok(()),
        Some(1) => {}
        _ => return Err(iptables_failure(chain, &check)),
    }
    let add = iptables(&["-t", "nat", "-A", chain], rule).await?;
    if !add.status.success() {
        return Err(iptables_failure(chain, &add));
    }
    Ok(())
}

async fn iptables(head: &[&str], rule: &[&str]) -> Result<std::process::Output> {
    Command::new("iptables")
        .arg("-w")
        .args(head)
        .args(rule)
        .output()
        .await
        .map_err(|e| NetworkError::Iptables {
            what: format!("iptables {}", head.join(" ")),
            message: format!("cannot run iptables (package iptables): {e}"),
        })
}

fn iptables_failure(chain: &str, output: &std::process::Output) -> NetworkError {
    NetworkError::Iptables {
        what: format!("jump from nat {chain}"),
        message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerade_chain() {
        let rules = masquerade_rules(
            "10.244.1.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
        );
        assert_eq!(
            rules,
            "*nat\n:SKIFF-KUBELET-POSTROUTING - [0:0]\n\
             -A SKIFF-KUBELET-POSTROUTING -s 10.244.1.0/24 -d 10.244.0.0/16 -j RETURN\n\
             -A SKIFF-KUBELET-POSTROUTING -s 10.244.1.0/24 -d 224.0.0.0/4 -j RETURN\n\
             -A SKIFF-KUBELET-POSTROUTING -s 10.244.1.0/24 -j MASQUERADE\n\
             COMMIT\n"
        );
    }

    #[test]
    fn host_ports_from_the_pod() {
        use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec};
        let port = |container_port,
                    host_port: Option<i32>,
                    host_ip: Option<&str>,
                    protocol: Option<&str>| ContainerPort {
            container_port,
            host_port,
            host_ip: host_ip.map(Into::into),
            protocol: protocol.map(Into::into),
            name: None,
        };
        let pod_with = |ports| Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(ports),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod_ip: Ipv4Addr = "10.244.1.5".parse().unwrap();
        let pod = pod_with(vec![
            port(80, Some(8080), None, None),
            port(53, Some(5353), Some("192.0.2.10"), Some("UDP")),
            port(443, Some(8443), Some("0.0.0.0"), None),
            port(9000, None, None, None),
            port(9001, Some(9001), Some("::1"), None),
        ]);
        let mappings = HostPortMapping::for_pod(&pod, pod_ip).unwrap();
        let summary: Vec<_> = mappings
            .iter()
            .map(|m| (m.host_ip, m.host_port, m.protocol, m.container_port))
            .collect();
        assert_eq!(
            summary,
            [
                (None, 8080, HostPortProtocol::Tcp, 80),
                (
                    Some("192.0.2.10".parse().unwrap()),
                    5353,
                    HostPortProtocol::Udp,
                    53
                ),
                (None, 8443, HostPortProtocol::Tcp, 443),
            ]
        );
        for bad in [
            port(80, Some(70000), None, None),
            port(80, Some(1), Some("nope"), None),
        ] {
            assert!(HostPortMapping::for_pod(&pod_with(vec![bad]), pod_ip).is_err());
        }
    }

    #[test]
    fn host_port_chains() {
        let web = HostPortMapping {
            host_ip: None,
            host_port: 8080,
            protocol: HostPortProtocol::Tcp,
            pod_ip: "10.244.1.5".parse().unwrap(),
            container_port: 80,
        };
        let dns = HostPortMapping {
            host_ip: Some("192.0.2.10".parse().unwrap()),
            host_port: 5353,
            protocol: HostPortProtocol::from_k8s(Some("UDP")).unwrap(),
            pod_ip: "10.244.1.6".parse().unwrap(),
            container_port: 53,
        };
        assert_eq!(
            host_port_rules(&[web.clone(), dns, web]),
            "*nat\n:SKIFF-HOSTPORTS - [0:0]\n:SKIFF-HOSTPORTS-MASQ - [0:0]\n\
             -A SKIFF-HOSTPORTS -p tcp --dport 8080 -j DNAT --to-destination 10.244.1.5:80\n\
             -A SKIFF-HOSTPORTS -p udp -d 192.0.2.10/32 --dport 5353 -j DNAT --to-destination 10.244.1.6:53\n\
             -A SKIFF-HOSTPORTS-MASQ -p tcp -s 10.244.1.5/32 -d 10.244.1.5/32 --dport 80 -j MASQUERADE\n\
             -A SKIFF-HOSTPORTS-MASQ -p udp -s 10.244.1.6/32 -d 10.244.1.6/32 --dport 53 -j MASQUERADE\n\
             COMMIT\n"
        );
        assert_eq!(
            host_port_rules(&[]),
            "*nat\n:SKIFF-HOSTPORTS - [0:0]\n:SKIFF-HOSTPORTS-MASQ - [0:0]\nCOMMIT\n"
        );
        assert!(HostPortProtocol::from_k8s(Some("ICMP")).is_err());
    }
}
