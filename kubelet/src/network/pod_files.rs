//! The files the kubelet writes for a pod's network identity — `/etc/resolv.conf`,
//! `/etc/hosts`, `/etc/hostname` — and the pod's hostname, computed as the kubelet does
//! (pkg/kubelet/network/dns, kubelet_pods.go) and written as containerd's CRI plugin writes them.
//! Pure functions of the pod and the node's settings; [`PodFiles::write_to`] stores them.
//!
//! Everything taken from the pod spec is checked before it reaches a file: a newline or blank in
//! a host alias, search domain or option would inject lines into the pod's resolver config.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use k8s_openapi::api::core::v1::{HostAlias, Pod, PodDNSConfig};

use super::{NetworkError, Result, write_file_atomically};

/// The limits kube-apiserver's validation uses and the kubelet enforces on what it composes.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCH_PATHS: usize = 32;
const MAX_SEARCH_LINE_CHARS: usize = 2048;
const MAX_SEARCH_DOMAIN_LEN: usize = 253;
const HOSTNAME_MAX_LEN: usize = 63;

/// The contents of a resolv.conf: what the kubelet composes and what it parses from the node's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parses a resolv.conf as the kubelet parses the node's (`--resolv-conf`): comments
    /// (`#`, `;`) skipped, the last `search` line wins (trailing dots dropped, `.` ignored),
    /// options merged by name with the later one winning.
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("nameserver") => {
                    if let Some(server) = fields.next() {
                        conf.nameservers.push(server.to_string());
                    }
                }
                Some("search") => {
                    conf.searches = fields
                        .filter(|s| *s != ".")
                        .map(|s| s.trim_end_matches('.').to_string())
                        .collect();
                }
                Some("options") => {
                    for option in fields {
                        merge_option(&mut conf.options, option.to_string());
                    }
                }
                _ => {}
            }
        }
        conf
    }

    /// The file as containerd writes it: `search`, then one `nameserver` line each, then
    /// `options`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() {
            out += &format!("search {}\n", self.searches.join(" "));
        }
        for server in &self.nameservers {
            out += &format!("nameserver {server}\n");
        }
        if !self.options.is_empty() {
            out += &format!("options {}\n", self.options.join(" "));
        }
        out
    }
}

/// The node's DNS settings (kubelet flags `--cluster-dns`, `--cluster-domain`, `--resolv-conf`).
#[derive(Clone, Debug, Default)]
pub struct DnsSettings {
    pub cluster_dns: Vec<IpAddr>,
    /// e.g. `cluster.local`; empty for none.
    pub cluster_domain: String,
    /// The node's resolv.conf, parsed.
    pub host: ResolvConf,
}

/// How the pod's resolver is set up, from `spec.dnsPolicy` and `spec.hostNetwork`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DnsType {
    Cluster,
    Host,
    None,
}

fn dns_type(pod: &Pod) -> Result<DnsType> {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    match spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst")
    {
        "None" => Ok(DnsType::None),
        "ClusterFirstWithHostNet" => Ok(DnsType::Cluster),
        // A hostNetwork pod with ClusterFirst falls back to Default, as with the kubelet.
        "ClusterFirst" if !host_network => Ok(DnsType::Cluster),
        "ClusterFirst" | "Default" => Ok(DnsType::Host),
        other => Err(NetworkError::InvalidInput {
            field: "spec.dnsPolicy",
            reason: format!("unknown policy {other:?}"),
        }),
    }
}

/// The pod's resolv.conf (kubelet `GetPodDNS`): ClusterFirst uses `--cluster-dns`, the search
/// path `<ns>.svc.<domain> svc.<domain> <domain>` followed by the node's, and `ndots:5`;
/// without a cluster DNS address it falls back to Default, the node's resolv.conf; None starts
/// empty. `spec.dnsConfig` is then merged in, and the result cut to the resolver's limits.
pub fn pod_resolv_conf(pod: &Pod, settings: &DnsSettings) -> Result<ResolvConf> {
    let mut conf = settings.host.clone();
    match dns_type(pod)? {
        DnsType::None => conf = ResolvConf::default(),
        DnsType::Cluster if !settings.cluster_dns.is_empty() => {
            conf.nameservers = settings
                .cluster_dns
                .iter()
                .map(|ip| ip.to_string())
                .collect();
            conf.searches = cluster_searches(pod, &settings.cluster_domain, &conf.searches);
            conf.options = vec!["ndots:5".to_string()];
        }
        DnsType::Cluster => {
            tracing::warn!(
                "ClusterFirst policy specified but no cluster DNS IP configured; falling back to Default"
            );
        }
        DnsType::Host => {}
    }
    if let Some(dns_config) = pod.spec.as_ref().and_then(|s| s.dns_config.as_ref()) {
        merge_dns_config(&mut conf, dns_config)?;
    }
    fit_limits(&mut conf);
    Ok(conf)
}

fn cluster_searches(pod: &Pod, domain: &str, host: &[String]) -> Vec<String> {
    if domain.is_empty() {
        return host.to_vec();
    }
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let cluster = [
        format!("{ns}.svc.{domain}"),
        format!("svc.{domain}"),
        domain.to_string(),
    ];
    dedup(cluster.into_iter().chain(host.iter().cloned()))
}

fn merge_dns_config(conf: &mut ResolvConf, dns_config: &PodDNSConfig) -> Result<()> {
    let nameservers = dns_config.nameservers.iter().flatten();
    for server in nameservers.clone() {
        server
            .parse::<IpAddr>()
            .map_err(|_| invalid("spec.dnsConfig.nameservers", server))?;
    }
    let searches = dns_config.searches.iter().flatten();
    for search in searches.clone() {
        check_word("spec.dnsConfig.searches", search)?;
    }
    conf.nameservers = dedup(conf.nameservers.drain(..).chain(nameservers.cloned()));
    conf.searches = dedup(conf.searches.drain(..).chain(searches.cloned()));
    for option in dns_config.options.iter().flatten() {
        let Some(name) = option.name.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        check_word("spec.dnsConfig.options.name", name)?;
        let merged = match option.value.as_deref() {
            Some(value) if !value.is_empty() => {
                check_word("spec.dnsConfig.options.value", value)?;
                format!("{name}:{value}")
            }
            _ => name.to_string(),
        };
        merge_option(&mut conf.options, merged);
    }
    Ok(())
}

/// Replaces the option of the same name (the part before `:`) in place, or appends it.
fn merge_option(options: &mut Vec<String>, option: String) {
    let name = |o: &str| o.split(':').next().unwrap_or_default().to_string();
    let new_name = name(&option);
    match options.iter_mut().find(|o| name(o) == new_name) {
        Some(existing) => *existing = option,
        None => options.push(option),
    }
}

/// The kubelet's `formDNSConfigFitsLimits`.
fn fit_limits(conf: &mut ResolvConf) {
    if conf.nameservers.len() > MAX_NAMESERVERS {
        tracing::warn!(nameservers = ?conf.nameservers, "nameserver limits were exceeded, some nameservers have been omitted");
        conf.nameservers.truncate(MAX_NAMESERVERS);
    }
    conf.searches.truncate(MAX_SEARCH_PATHS);
    conf.searches.retain(|s| s.len() <= MAX_SEARCH_DOMAIN_LEN);
    while conf.searches.join(" ").len() > MAX_SEARCH_LINE_CHARS {
        conf.searches.pop();
    }
}

fn dedup(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = HashSet::new();
    items.filter(|item| seen.insert(item.clone())).collect()
}

fn invalid(field: &'static str, value: &str) -> NetworkError {
    NetworkError::InvalidInput {
        field,
        reason: format!("{value:?} is not valid"),
    }
}

/// A value written into a resolv.conf or hosts line: no blanks or control characters.
fn check_word(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty()
        || value.len() > MAX_SEARCH_DOMAIN_LEN
        || value.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(field, value));
    }
    Ok(())
}

fn is_dns1123_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A pod's hostname and, with `spec.subdomain`, its domain `<subdomain>.<ns>.svc.<domain>`
/// (kubelet `GeneratePodHostNameAndDomain`): `spec.hostname` or the pod's name, cut to 63
/// characters without a trailing `-` or `.`.
pub fn pod_hostname_and_domain(
    pod: &Pod,
    cluster_domain: &str,
) -> Result<(String, Option<String>)> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let mut hostname = name.to_string();
    if let Some(h) = spec
        .and_then(|s| s.hostname.as_deref())
        .filter(|h| !h.is_empty())
    {
        if !is_dns1123_label(h) {
            return Err(invalid("spec.hostname", h));
        }
        hostname = h.to_string();
    }
    if hostname.len() > HOSTNAME_MAX_LEN {
        hostname.truncate(HOSTNAME_MAX_LEN);
        let trimmed = hostname.trim_end_matches(['-', '.']).len();
        hostname.truncate(trimmed);
        tracing::warn!(pod = name, %hostname, "hostname for pod was too long, truncated it");
    }
    if hostname.is_empty()
        || hostname
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid("metadata.name", name));
    }
    let domain = match spec
        .and_then(|s| s.subdomain.as_deref())
        .filter(|s| !s.is_empty())
    {
        Some(sub) if !is_dns1123_label(sub) => return Err(invalid("spec.subdomain", sub)),
        Some(sub) => {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            Some(format!("{sub}.{ns}.svc.{cluster_domain}"))
        }
        None => None,
    };
    Ok((hostname, domain))
}

/// The hostname the pod's UTS namespace gets: with `spec.setHostnameAsFQDN` and a subdomain
/// the FQDN (at most 64 characters), else the short hostname.
pub fn pod_hostname(pod: &Pod, cluster_domain: &str) -> Result<String> {
    let (hostname, domain) = pod_hostname_and_domain(pod, cluster_domain)?;
    let as_fqdn = pod
        .spec
        .as_ref()
        .and_then(|s| s.set_hostname_as_fqdn)
        .unwrap_or(false);
    match domain {
        Some(domain) if as_fqdn => {
            let fqdn = format!("{hostname}.{domain}");
            if fqdn.len() > 64 {
                return Err(NetworkError::InvalidInput {
                    field: "spec.setHostnameAsFQDN",
                    reason: format!(
                        "FQDN {fqdn} is too long (64 characters is the max, {} characters requested)",
                        fqdn.len()
                    ),
                });
            }
            Ok(fqdn)
        }
        _ => Ok(hostname),
    }
}

/// The `/etc/hosts` of a pod with its own network (kubelet `managedHostsFileContent`).
pub fn pod_hosts(pod: &Pod, pod_ips: &[IpAddr], cluster_domain: &str) -> Result<String> {
    let (hostname, domain) = pod_hostname_and_domain(pod, cluster_domain)?;
    let mut out = String::from("# Kubernetes-managed hosts file.\n");
    out += "127.0.0.1\tlocalhost\n";
    out += "::1\tlocalhost ip6-localhost ip6-loopback\n";
    out += "fe00::0\tip6-localnet\n";
    out += "fe00::0\tip6-mcastprefix\n";
    out += "fe00::1\tip6-allnodes\n";
    out += "fe00::2\tip6-allrouters\n";
    for ip in pod_ips {
        match &domain {
            Some(domain) => out += &format!("{ip}\t{hostname}.{domain}\t{hostname}\n"),
            None => out += &format!("{ip}\t{hostname}\n"),
        }
    }
    out += &host_alias_entries(pod)?;
    Ok(out)
}

/// The `/etc/hosts` of a hostNetwork pod (kubelet `nodeHostsFileContent`): the node's, then the
/// pod's host aliases.
pub fn host_network_pod_hosts(pod: &Pod, node_hosts: &str) -> Result<String> {
    let mut out = String::from("# Kubernetes-managed hosts file (host network).\n");
    out += node_hosts;
    out += &host_alias_entries(pod)?;
    Ok(out)
}

fn host_alias_entries(pod: &Pod) -> Result<String> {
    let aliases: &[HostAlias] = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_aliases.as_deref())
        .unwrap_or_default();
    if aliases.is_empty() {
        return Ok(String::new());
    }
    let mut out = String::from("\n# Entries added by HostAliases.\n");
    for alias in aliases {
        alias
            .ip
            .parse::<IpAddr>()
            .map_err(|_| invalid("spec.hostAliases.ip", &alias.ip))?;
        let hostnames = alias.hostnames.as_deref().unwrap_or_default();
        for hostname in hostnames {
            check_word("spec.hostAliases.hostnames", hostname)?;
        }
        out += &format!("{}\t{}\n", alias.ip, hostnames.join("\t"));
    }
    Ok(out)
}

/// What a node knows that a pod's files are made from.
#[derive(Clone, Debug, Default)]
pub struct NodeFilesSettings {
    pub dns: DnsSettings,
    /// The node's hostname, which hostNetwork pods keep.
    pub node_hostname: String,
    /// The node's `/etc/hosts`, which hostNetwork pods get.
    pub node_hosts: String,
}

/// A pod's `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFiles {
    pub resolv_conf: String,
    pub hosts: String,
    pub hostname: String,
}

impl PodFiles {
    /// The files for `pod` with its addresses (`pod_ips`: none yet for a hostNetwork pod's
    /// own entry, which uses the node's hosts file).
    pub fn for_pod(pod: &Pod, pod_ips: &[IpAddr], node: &NodeFilesSettings) -> Result<PodFiles> {
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let resolv_conf = pod_resolv_conf(pod, &node.dns)?.render();
        let (hosts, hostname) = if host_network {
            (
                host_network_pod_hosts(pod, &node.node_hosts)?,
                node.node_hostname.clone(),
            )
        } else {
            (
                pod_hosts(pod, pod_ips, &node.dns.cluster_domain)?,
                pod_hostname(pod, &node.dns.cluster_domain)?,
            )
        };
        Ok(PodFiles {
            resolv_conf,
            hosts,
            hostname: format!("{hostname}\n"),
        })
    }

    /// Writes `resolv.conf`, `hosts` and `hostname` into `dir` (created if missing), each
    /// atomically, for bind-mounting into the pod's containers.
    pub fn write_to(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(super::io_err(format!("creating {}", dir.display())))?;
        write_file_atomically(&dir.join("resolv.conf"), self.resolv_conf.as_bytes())?;
        write_file_atomically(&dir.join("hosts"), self.hosts.as_bytes())?;
        write_file_atomically(&dir.join("hostname"), self.hostname.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodDNSConfigOption, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str, ns: &str, spec: PodSpec) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        }
    }

    fn settings() -> DnsSettings {
        DnsSettings {
            cluster_dns: vec!["10.96.0.10".parse().unwrap()],
            cluster_domain: "cluster.local".into(),
            host: ResolvConf::parse(
                "# generated\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n; old\nsearch corp.example. .\noptions timeout:2 attempts:3\noptions timeout:1\n",
            ),
        }
    }

    #[test]
    fn host_resolv_conf_is_parsed_as_the_kubelet_does() {
        let host = settings().host;
        assert_eq!(host.nameservers, ["192.0.2.53", "192.0.2.54"]);
        assert_eq!(host.searches, ["corp.example"]);
        assert_eq!(host.options, ["timeout:1", "attempts:3"]);
    }

    #[test]
    fn cluster_first_uses_the_cluster_dns_and_search_path() {
        let conf = pod_resolv_conf(&pod("web", "shop", PodSpec::default()), &settings()).unwrap();
        assert_eq!(
            conf.render(),
            "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\n\
             nameserver 10.96.0.10\n\
             options ndots:5\n"
        );
    }

    #[test]
    fn default_and_host_network_cluster_first_use_the_node_resolv_conf() {
        let default = PodSpec {
            dns_policy: Some("Default".into()),
            ..Default::default()
        };
        let host_net = PodSpec {
            host_network: Some(true),
            ..Default::default()
        };
        let expected = "search corp.example\nnameserver 192.0.2.53\nnameserver 192.0.2.54\noptions timeout:1 attempts:3\n";
        for spec in [default, host_net] {
            let conf = pod_resolv_conf(&pod("p", "default", spec), &settings()).unwrap();
            assert_eq!(conf.render(), expected);
        }
        // ClusterFirstWithHostNet keeps the cluster DNS.
        let with_host_net = PodSpec {
            host_network: Some(true),
            dns_policy: Some("ClusterFirstWithHostNet".into()),
            ..Default::default()
        };
        let conf = pod_resolv_conf(&pod("p", "default", with_host_net), &settings()).unwrap();
        assert_eq!(conf.nameservers, ["10.96.0.10"]);
    }

    #[test]
    fn cluster_first_without_cluster_dns_falls_back_to_default() {
        let mut s = settings();
        s.cluster_dns.clear();
        let conf = pod_resolv_conf(&pod("p", "default", PodSpec::default()), &s).unwrap();
        assert_eq!(conf, s.host);
    }

    #[test]
    fn none_takes_only_dns_config_and_dns_config_merges() {
        let dns_config = PodDNSConfig {
            nameservers: Some(vec!["203.0.113.1".into(), "10.96.0.10".into()]),
            searches: Some(vec!["my.dns.search".into(), "svc.cluster.local".into()]),
            options: Some(vec![
                PodDNSConfigOption {
                    name: Some("ndots".into()),
                    value: Some("2".into()),
                },
                PodDNSConfigOption {
                    name: Some("edns0".into()),
                    value: None,
                },
            ]),
        };
        let none = PodSpec {
            dns_policy: Some("None".into()),
            dns_config: Some(dns_config.clone()),
            ..Default::default()
        };
        let conf = pod_resolv_conf(&pod("p", "default", none), &settings()).unwrap();
        assert_eq!(
            conf.render(),
            "search my.dns.search svc.cluster.local\nnameserver 203.0.113.1\nnameserver 10.96.0.10\noptions ndots:2 edns0\n"
        );
        let merged = PodSpec {
            dns_config: Some(dns_config),
            ..Default::default()
        };
        let conf = pod_resolv_conf(&pod("p", "ns1", merged), &settings()).unwrap();
        assert_eq!(conf.nameservers, ["10.96.0.10", "203.0.113.1"]);
        assert_eq!(
            conf.searches,
            [
                "ns1.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example",
                "my.dns.search"
            ]
        );
        assert_eq!(conf.options, ["ndots:2", "edns0"]);
    }

    #[test]
    fn limits_and_hostile_values() {
        let many = PodSpec {
            dns_policy: Some("None".into()),
            dns_config: Some(PodDNSConfig {
                nameservers: Some((1..=5).map(|i| format!("192.0.2.{i}")).collect()),
                searches: Some((0..40).map(|i| format!("{i}.{}", "a".repeat(60))).collect()),
                options: None,
            }),
            ..Default::default()
        };
        let conf = pod_resolv_conf(&pod("p", "default", many), &settings()).unwrap();
        assert_eq!(conf.nameservers.len(), 3);
        assert!(conf.searches.len() <= 32);
        assert!(conf.searches.join(" ").len() <= 2048);
        for (nameservers, searches) in [
            (vec!["not-an-ip".to_string()], vec![]),
            (vec![], vec!["evil\nnameserver 6.6.6.6".to_string()]),
        ] {
            let spec = PodSpec {
                dns_config: Some(PodDNSConfig {
                    nameservers: Some(nameservers),
                    searches: Some(searches),
                    options: None,
                }),
                ..Default::default()
            };
            assert!(pod_resolv_conf(&pod("p", "default", spec), &settings()).is_err());
        }
    }

    #[test]
    fn hosts_file_as_the_kubelet_writes_it() {
        let spec = PodSpec {
            hostname: Some("db-0".into()),
            subdomain: Some("db".into()),
            host_aliases: Some(vec![
                HostAlias {
                    ip: "123.45.67.89".into(),
                    hostnames: Some(vec!["foo".into(), "bar".into()]),
                },
                HostAlias {
                    ip: "::1".into(),
                    hostnames: Some(vec!["baz".into()]),
                },
            ]),
            ..Default::default()
        };
        let hosts = pod_hosts(
            &pod("web", "shop", spec),
            &["10.244.1.5".parse().unwrap()],
            "cluster.local",
        )
        .unwrap();
        assert_eq!(
            hosts,
            "# Kubernetes-managed hosts file.\n\
             127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\n\
             fe00::0\tip6-mcastprefix\n\
             fe00::1\tip6-allnodes\n\
             fe00::2\tip6-allrouters\n\
             10.244.1.5\tdb-0.db.shop.svc.cluster.local\tdb-0\n\
             \n\
             # Entries added by HostAliases.\n\
             123.45.67.89\tfoo\tbar\n\
             ::1\tbaz\n"
        );
        let plain = pod_hosts(
            &pod("web", "shop", PodSpec::default()),
            &["10.244.1.6".parse().unwrap()],
            "cluster.local",
        )
        .unwrap();
        assert!(plain.ends_with("fe00::2\tip6-allrouters\n10.244.1.6\tweb\n"));
        let evil = PodSpec {
            host_aliases: Some(vec![HostAlias {
                ip: "1.2.3.4".into(),
                hostnames: Some(vec!["a\n6.6.6.6 bank".into()]),
            }]),
            ..Default::default()
        };
        assert!(pod_hosts(&pod("web", "shop", evil), &[], "cluster.local").is_err());
    }

    #[test]
    fn hostnames_are_truncated_and_checked() {
        let long = format!("{}-.{}", "a".repeat(61), "b".repeat(10));
        let (hostname, domain) =
            pod_hostname_and_domain(&pod(&long, "default", PodSpec::default()), "cluster.local")
                .unwrap();
        assert_eq!(hostname, "a".repeat(61));
        assert_eq!(domain, None);
        let bad = PodSpec {
            hostname: Some("Not_A_Label".into()),
            ..Default::default()
        };
        assert!(pod_hostname(&pod("p", "default", bad), "cluster.local").is_err());
        let fqdn = PodSpec {
            hostname: Some("h".into()),
            subdomain: Some("s".into()),
            set_hostname_as_fqdn: Some(true),
            ..Default::default()
        };
        assert_eq!(
            pod_hostname(&pod("p", "ns", fqdn), "cluster.local").unwrap(),
            "h.s.ns.svc.cluster.local"
        );
    }

    #[test]
    fn pod_files_for_host_network_and_write() {
        let node = NodeFilesSettings {
            dns: settings(),
            node_hostname: "node-1".into(),
            node_hosts: "127.0.0.1 localhost\n".into(),
        };
        let spec = PodSpec {
            host_network: Some(true),
            ..Default::default()
        };
        let files = PodFiles::for_pod(&pod("p", "default", spec), &[], &node).unwrap();
        assert_eq!(files.hostname, "node-1\n");
        assert_eq!(
            files.hosts,
            "# Kubernetes-managed hosts file (host network).\n127.0.0.1 localhost\n"
        );
        let dir = tempfile::tempdir().unwrap();
        files.write_to(&dir.path().join("etc")).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc/hostname")).unwrap(),
            "node-1\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc/resolv.conf")).unwrap(),
            files.resolv_conf
        );
    }
}
