//! What the node is made of, read from the kernel: CPUs, memory, disk under the root directory,
//! addresses, kernel and OS names, machine and boot ids. The Node's capacity, addresses, nodeInfo
//! and pressure conditions come from here.

use std::net::IpAddr;
use std::path::Path;

/// Facts that do not change while the kubelet runs.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub hostname: String,
    pub cpus: u64,
    pub memory_bytes: u64,
    pub kernel_version: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
}

/// The node filesystem's size and the process count (PIDPressure); memory and disk pressure
/// come from the eviction manager's signals.
#[derive(Debug, Clone, Copy)]
pub struct HostUsage {
    pub disk_total_bytes: u64,
    pub processes: u64,
    pub pid_max: u64,
}

impl HostFacts {
    pub fn read() -> HostFacts {
        let uname = nix::sys::utsname::uname().ok();
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_string());
        let cpus = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
            .ok()
            .flatten()
            .map(|n| n.max(1) as u64)
            .unwrap_or(1);
        HostFacts {
            hostname,
            cpus,
            memory_bytes: meminfo_kib("MemTotal:").unwrap_or(0) * 1024,
            kernel_version: uname
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            os_image: os_image(),
            machine_id: read_trimmed("/etc/machine-id"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        }
    }
}

impl HostUsage {
    /// Current usage; `root_dir` is where the node keeps its data (its disk is the one that
    /// counts for ephemeral-storage).
    pub fn read(root_dir: &Path) -> HostUsage {
        let disk_total_bytes = nix::sys::statvfs::statvfs(root_dir)
            .map(|s| s.blocks() * s.fragment_size())
            .unwrap_or(0);
        let processes = std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                    .count() as u64
            })
            .unwrap_or(0);
        HostUsage {
            disk_total_bytes,
            processes,
            pid_max: read_trimmed("/proc/sys/kernel/pid_max")
                .parse()
                .unwrap_or(32768),
        }
    }
}

/// The node's InternalIP: the first non-loopback, non-link-local IPv4 address of an interface
/// that is up (IPv6 if there is no IPv4).
pub fn first_host_address() -> Option<IpAddr> {
    let addrs: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|a| {
            a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
                && !a
                    .flags
                    .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
        })
        .filter_map(|a| {
            let addr = a.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
            IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
}

pub(crate) fn meminfo_kib(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_plausible() {
        let f = HostFacts::read();
        assert!(f.cpus >= 1);
        assert!(f.memory_bytes > 0);
        assert!(!f.kernel_version.is_empty());
        let u = HostUsage::read(Path::new("/"));
        assert!(u.disk_total_bytes > 0 && u.processes > 0 && u.pid_max > 0);
    }
}
