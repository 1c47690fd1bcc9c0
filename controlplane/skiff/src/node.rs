//! A node in this process, as `skiff up` and `skiff agent` run it: the kubelet and the proxy
//! (with the node's cluster DNS) from their library crates, until told to stop, which stops every
//! pod, then the pod network and the pods' cgroups, then the Service rules and the DNS address.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, FromArgMatches};
use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use skiff_kubelet::agent::AgentArgs;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The node's flags, shared by `skiff up` and `skiff agent`.
#[derive(clap::Args)]
pub struct NodeFlags {
    /// The node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The node's InternalIP (default: the first non-loopback address).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// The cgroup under which the pods' cgroups are made, in every hierarchy.
    #[arg(long, default_value = "/kubepods")]
    pub cgroup_root: String,
    /// Seconds a pod gets at most to stop when the node is stopped (its own
    /// terminationGracePeriodSeconds when shorter).
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace_period: u64,
    /// A further flag for the kubelet, e.g. `--kubelet-arg=--max-pods=50`; repeatable.
    #[arg(long, allow_hyphen_values = true)]
    pub kubelet_arg: Vec<String>,
    #[command(flatten)]
    pub dns: skiff_proxy::dns::DnsArgs,
}

impl NodeFlags {
    /// `--node-name`, or the host name.
    pub fn node_name(&self) -> String {
        match &self.node_name {
            Some(n) => n.clone(),
            None => skiff_kubelet::host::HostFacts::read()
                .hostname
                .to_lowercase(),
        }
    }
}

/// The node's directories under a data directory.
pub struct NodeDirs {
    /// Images and pods.
    pub root: PathBuf,
    /// Volatile state (shims, the runtime's state).
    pub run: PathBuf,
    pub pod_logs: PathBuf,
}

impl NodeDirs {
    pub fn new(data_dir: &Path) -> NodeDirs {
        NodeDirs {
            root: data_dir.join("node"),
            run: data_dir.join("run"),
            pod_logs: data_dir.join("pod-logs"),
        }
    }
}

/// Everything a node needs to start, checked before anything starts so that a bad flag leaves
/// nothing to undo.
pub struct NodeConfig {
    pub kubelet: AgentArgs,
    pub proxy: skiff_proxy::sync::Config,
    pub grace: Duration,
}

impl NodeConfig {
    pub fn new(
        flags: &NodeFlags,
        dirs: &NodeDirs,
        credentials: &NodeCredentials,
        node_name: &str,
        cluster_cidr: Ipv4Net,
        service_cidrs: ServiceCidrs,
    ) -> anyhow::Result<NodeConfig> {
        let kubelet = kubelet_args(flags, dirs, credentials, node_name)?;
        let dns = flags.dns.config().context("cluster DNS flags")?;
        let proxy = skiff_proxy::sync::Config {
            node_name: node_name.to_string(),
            mode: skiff_proxy::dataplane::Mode::Iptables,
            cluster_cidrs: vec![cluster_cidr.into()],
            service_cidrs: service_cidrs.0,
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
            healthz_bind_address: SocketAddr::from(([0, 0, 0, 0], 10256)),
            nodeport_addresses: vec![],
            masquerade_all: false,
            dns: Some(dns),
        };
        Ok(NodeConfig {
            kubelet,
            proxy,
            grace: Duration::from_secs(flags.shutdown_grace_period),
        })
    }
}

/// Where the node's kubelet gets its credentials.
pub enum NodeCredentials {
    /// A kubeconfig with a node certificate, as `skiff up` issues it.
    Issued { kubeconfig: PathBuf },
    /// The kubelet's TLS bootstrap from a bootstrap kubeconfig, then its client certificate
    /// renewed before it expires (`--rotate-certificates`), kept in `cert_dir`: a joined node.
    Bootstrap {
        bootstrap_kubeconfig: PathBuf,
        kubeconfig: PathBuf,
        cert_dir: PathBuf,
    },
}

/// The kubelet's flags for this node: its directories, its credentials and any `--kubelet-arg`.
fn kubelet_args(
    flags: &NodeFlags,
    dirs: &NodeDirs,
    credentials: &NodeCredentials,
    node_name: &str,
) -> anyhow::Result<AgentArgs> {
    let mut argv: Vec<OsString> = vec!["skiff-kubelet".into()];
    match credentials {
        NodeCredentials::Issued { kubeconfig } => {
            argv.extend(["--kubeconfig".into(), kubeconfig.into()]);
        }
        NodeCredentials::Bootstrap {
            bootstrap_kubeconfig,
            kubeconfig,
            cert_dir,
        } => argv.extend([
            "--kubeconfig".into(),
            kubeconfig.into(),
            "--bootstrap-kubeconfig".into(),
            bootstrap_kubeconfig.into(),
            "--cert-dir".into(),
            cert_dir.into(),
            "--rotate-certificates".into(),
        ]),
    }
    let mut flag = |name: &str, value: OsString| {
        argv.push(format!("--{name}").into());
        argv.push(value);
    };
    flag("node-name", node_name.into());
    flag("root-dir", dirs.root.clone().into());
    flag("run-dir", dirs.run.clone().into());
    flag("pod-logs-dir", dirs.pod_logs.clone().into());
    flag("cgroup-root", flags.cgroup_root.clone().into());
    flag("cluster-domain", flags.dns.cluster_domain.clone().into());
    flag("cluster-dns", flags.dns.listen.ip().to_string().into());
    if let Some(ip) = flags.node_ip {
        flag("node-ip", ip.to_string().into());
    }
    argv.extend(flags.kubelet_arg.iter().map(OsString::from));
    let command = AgentArgs::augment_args(clap::Command::new("skiff-kubelet"));
    let matches = command
        .try_get_matches_from(argv)
        .context("the kubelet's flags (--kubelet-arg)")?;
    AgentArgs::from_arg_matches(&matches).context("the kubelet's flags (--kubelet-arg)")
}

/// The kubelet and the proxy, running.
pub struct RunningNode {
    kubelet: JoinHandle<anyhow::Result<()>>,
    stop_kubelet: oneshot::Sender<Duration>,
    proxy: JoinHandle<anyhow::Result<()>>,
    stop_proxy: oneshot::Sender<()>,
    grace: Duration,
}

impl RunningNode {
    /// Starts the kubelet (with its own credentials, from its `--kubeconfig` or its TLS
    /// bootstrap) and the proxy, with the kubelet's API client once it has one: one identity for
    /// the node, renewed in place for both.
    pub fn start(config: NodeConfig) -> RunningNode {
        let (stop_kubelet, kubelet_stopped) = oneshot::channel::<Duration>();
        let (share_client, node_client) = oneshot::channel::<Client>();
        let grace = config.grace;
        let kubelet = tokio::spawn(skiff_kubelet::agent::run_until(
            config.kubelet,
            async move { kubelet_stopped.await.unwrap_or(grace) },
            Some(share_client),
        ));
        let (stop_proxy, proxy_stopped) = oneshot::channel::<()>();
        let proxy = tokio::spawn(run_proxy(node_client, config.proxy, proxy_stopped));
        RunningNode {
            kubelet,
            stop_kubelet,
            proxy,
            stop_proxy,
            grace,
        }
    }

    /// Resolves when the kubelet or the proxy ended by itself, with why.
    pub async fn failed(&mut self) -> anyhow::Error {
        tokio::select! {
            ended = &mut self.kubelet => ended_early("the kubelet", ended),
            ended = &mut self.proxy => ended_early("the proxy", ended),
        }
    }

    /// Stops every pod, then the proxy, and returns what went wrong on the way.
    pub async fn stop(self) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();
        if !self.kubelet.is_finished() {
            let _ = self.stop_kubelet.send(self.grace);
            if let Err(e) = flatten(self.kubelet.await, "the kubelet") {
                errors.push(e);
            }
        }
        if !self.proxy.is_finished() {
            let _ = self.stop_proxy.send(());
            if let Err(e) = flatten(self.proxy.await, "the proxy") {
                errors.push(e);
            }
        }
        errors
    }
}

/// The proxy until `stop`, then everything it set up removed. A sync in progress finishes
/// first: the rules are written in a blocking section the task is never stopped inside.
async fn run_proxy(
    client: oneshot::Receiver<Client>,
    config: skiff_proxy::sync::Config,
    mut stop: oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let client = tokio::select! {
        client = client => Some(client),
        _ = &mut stop => None,
    };
    let result = match client {
        Some(Ok(client)) => tokio::select! {
            ended = skiff_proxy::sync::run(client, config) => ended,
            _ = stop => Ok(()),
        },
        // The kubelet ended before it had credentials; its own error says why.
        Some(Err(_)) => {
            let _ = stop.await;
            Ok(())
        }
        None => Ok(()),
    };
    let cleaned = skiff_proxy::dataplane::cleanup_node().await;
    tracing::info!("Service rules and cluster DNS address removed");
    result.and(cleaned)
}

/// After the first SIGINT or SIGTERM, a second one exits at once.
pub fn exit_on_second_signal() {
    tokio::spawn(async {
        crate::shutdown_signal().await;
        tracing::warn!("second signal: exiting now, leaving what is not yet removed");
        std::process::exit(130);
    });
}

pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

pub fn ended_early<E: std::fmt::Display>(
    what: &str,
    ended: Result<Result<(), E>, tokio::task::JoinError>,
) -> anyhow::Error {
    match ended {
        Ok(Ok(())) => anyhow::anyhow!("{what} stopped"),
        Ok(Err(e)) => anyhow::anyhow!("{what}: {e:#}"),
        Err(e) => anyhow::anyhow!("{what}: {e}"),
    }
}

pub fn flatten<E: std::fmt::Display>(
    ended: Result<Result<(), E>, tokio::task::JoinError>,
    what: &str,
) -> anyhow::Result<()> {
    match ended {
        Ok(Ok(())) => Ok(()),
        other => Err(ended_early(what, other)),
    }
}

/// Joins errors into one, the first as the outermost.
pub fn combine(errors: Vec<anyhow::Error>) -> anyhow::Result<()> {
    match errors
        .into_iter()
        .reduce(|a, b| a.context(format!("{b:#}")))
    {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// `--service-cidr` of `skiff up` and `skiff agent`: the Service range, or two of different
/// families (`10.96.0.0/12,fd00:10:96::/108`) for dual-stack Services, the first the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCidrs(pub Vec<IpNet>);

impl std::str::FromStr for ServiceCidrs {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let cidrs = s
            .split(',')
            .map(|c| c.trim().parse::<IpNet>().map_err(|e| format!("{c}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        match cidrs.as_slice() {
            [_] => {}
            [IpNet::V4(_), IpNet::V6(_)] | [IpNet::V6(_), IpNet::V4(_)] => {}
            _ => return Err(format!("{s}: one range, or one IPv4 and one IPv6")),
        }
        Ok(Self(cidrs))
    }
}

impl std::fmt::Display for ServiceCidrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<String> = self.0.iter().map(IpNet::to_string).collect();
        f.write_str(&all.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn service_cidrs_are_one_range_or_one_per_family() {
        let dual: ServiceCidrs = "10.96.0.0/12,fd00:10:96::/108".parse().unwrap();
        assert_eq!(dual.0.len(), 2);
        assert_eq!(dual.to_string(), "10.96.0.0/12,fd00:10:96::/108");
        assert_eq!("10.96.0.0/12".parse::<ServiceCidrs>().unwrap().0.len(), 1);
        for bad in [
            "10.96.0.0/12,10.100.0.0/16",
            "fd00::/108,fd01::/108",
            "x",
            "",
        ] {
            assert!(bad.parse::<ServiceCidrs>().is_err(), "{bad}");
        }
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        node: NodeFlags,
    }

    #[test]
    fn the_kubelet_gets_the_node_directories_and_extra_flags() {
        let cli = Cli::parse_from(["skiff", "--node-name", "n1", "--kubelet-arg=--max-pods=7"]);
        let dirs = NodeDirs::new(Path::new("/d"));
        let issued = NodeCredentials::Issued {
            kubeconfig: "/d/k.kubeconfig".into(),
        };
        let kubelet = kubelet_args(&cli.node, &dirs, &issued, "n1").expect("kubelet flags");
        assert_eq!(kubelet.root_dir, Path::new("/d/node"));
        assert_eq!(kubelet.run_dir, Path::new("/d/run"));
        assert_eq!(kubelet.pod_logs_dir, Path::new("/d/pod-logs"));
        assert_eq!(
            kubelet.kubeconfig.as_deref(),
            Some(Path::new("/d/k.kubeconfig"))
        );
        assert_eq!(kubelet.node_name.as_deref(), Some("n1"));
        assert_eq!(kubelet.max_pods, 7);
        assert_eq!(kubelet.cluster_dns, vec![IpAddr::from([10, 96, 0, 10])]);
        assert!(kubelet.bootstrap_kubeconfig.is_none() && !kubelet.rotate_certificates);
        let joined = NodeCredentials::Bootstrap {
            bootstrap_kubeconfig: "/d/b.kubeconfig".into(),
            kubeconfig: "/d/k.kubeconfig".into(),
            cert_dir: "/d/pki".into(),
        };
        let kubelet = kubelet_args(&cli.node, &dirs, &joined, "n1").expect("kubelet flags");
        assert_eq!(
            kubelet.bootstrap_kubeconfig.as_deref(),
            Some(Path::new("/d/b.kubeconfig"))
        );
        assert_eq!(kubelet.cert_dir.as_deref(), Some(Path::new("/d/pki")));
        assert!(kubelet.rotate_certificates);
    }

    #[test]
    fn a_bad_kubelet_flag_is_refused_naming_it() {
        let cli = Cli::parse_from(["skiff", "--kubelet-arg=--no-such-flag"]);
        let dirs = NodeDirs::new(Path::new("/d"));
        let issued = NodeCredentials::Issued {
            kubeconfig: "/k".into(),
        };
        let err = kubelet_args(&cli.node, &dirs, &issued, "n1").unwrap_err();
        assert!(format!("{err:#}").contains("--no-such-flag"), "{err:#}");
    }
}
