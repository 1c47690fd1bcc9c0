//! The DNS server's settings and the command-line flags that set them.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::DnsError;

/// The node's resolver configuration, read for the default upstreams.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Where to answer, UDP and TCP (the `kube-dns` Service address, held on the node).
    pub listen: SocketAddr,
    /// The cluster domain, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// TTL of the cluster's records.
    pub ttl: u32,
    /// Resolvers for names outside the cluster, asked in order.
    pub upstreams: Vec<SocketAddr>,
    /// How long one upstream gets to answer before the next is asked.
    pub upstream_timeout: Duration,
    /// Bound on the forwarded answers kept.
    pub cache_entries: usize,
}

/// The flags of the DNS server, for the proxy's command line to flatten in.
#[derive(Clone, Debug, clap::Args)]
pub struct DnsArgs {
    /// Address the cluster DNS server answers on (UDP and TCP).
    #[arg(long = "dns-listen", default_value = "10.96.0.10:53")]
    pub listen: SocketAddr,
    /// The cluster's DNS domain.
    #[arg(long = "cluster-domain", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// TTL in seconds of the cluster's records.
    #[arg(long = "dns-ttl", default_value_t = 5)]
    pub ttl: u32,
    /// Upstream resolver for names outside the cluster (address or address:port; repeatable).
    /// Default: the nameservers of /etc/resolv.conf.
    #[arg(long = "dns-upstream")]
    pub upstreams: Vec<String>,
    /// Seconds one upstream gets to answer.
    #[arg(long = "dns-upstream-timeout", default_value_t = 2.0)]
    pub upstream_timeout: f64,
    /// Most forwarded answers kept in the cache.
    #[arg(long = "dns-cache-entries", default_value_t = 10_000)]
    pub cache_entries: usize,
}

impl DnsArgs {
    pub fn config(&self) -> Result<DnsConfig, DnsError> {
        let upstreams = if self.upstreams.is_empty() {
            upstreams_from_resolv_conf(Path::new(RESOLV_CONF))?
        } else {
            self.upstreams
                .iter()
                .map(|u| parse_upstream(u).ok_or_else(|| DnsError::Upstream(u.clone())))
                .collect::<Result<_, _>>()?
        };
        let upstream_timeout = Duration::try_from_secs_f64(self.upstream_timeout)
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or(DnsError::Timeout(self.upstream_timeout))?;
        Ok(DnsConfig {
            listen: self.listen,
            cluster_domain: self.cluster_domain.clone(),
            ttl: self.ttl,
            // Forwarding to ourselves would loop.
            upstreams: upstreams
                .into_iter()
                .filter(|u| *u != self.listen)
                .collect(),
            upstream_timeout,
            cache_entries: self.cache_entries,
        })
    }
}

/// `10.0.0.2`, `10.0.0.2:5353`, `fd00::2` or `[fd00::2]:5353`.
pub fn parse_upstream(value: &str) -> Option<SocketAddr> {
    value.parse::<SocketAddr>().ok().or_else(|| {
        value
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// The `nameserver` lines of a resolv.conf file, on port 53.
pub fn upstreams_from_resolv_conf(path: &Path) -> Result<Vec<SocketAddr>, DnsError> {
    let text = std::fs::read_to_string(path).map_err(|source| DnsError::ResolvConf {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(resolv_conf_nameservers(&text))
}

fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            // A link-local IPv6 nameserver may carry a zone (`fe80::1%eth0`): not supported.
            words.next()?.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_are_the_upstreams() {
        let text = "# generated\nsearch example.org\nnameserver 192.0.2.53\n  nameserver   2001:db8::53 \nnameserver bogus\noptions ndots:5\n";
        assert_eq!(
            resolv_conf_nameservers(text),
            vec![
                "192.0.2.53:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn upstream_flag_takes_an_address_with_or_without_port() {
        assert_eq!(
            parse_upstream("192.0.2.1"),
            Some("192.0.2.1:53".parse().unwrap())
        );
        assert_eq!(
            parse_upstream("192.0.2.1:5353"),
            Some("192.0.2.1:5353".parse().unwrap())
        );
        assert_eq!(
            parse_upstream("2001:db8::1"),
            Some("[2001:db8::1]:53".parse().unwrap())
        );
        assert_eq!(parse_upstream("resolver.example"), None);
    }
}
