//! `skiff up`: a whole cluster on this machine — the control plane (API server on its embedded
//! store, scheduler, controllers) and this machine as its node (the kubelet, the proxy with the
//! node's cluster DNS) — in the foreground until SIGINT or SIGTERM, which stops the node as a
//! whole (every pod, then the pod network, the Service rules and the pods' cgroups) before the
//! control plane. Started again on the same data directory it resumes the cluster, whose pods
//! the node then runs again.
//!
//! Every component runs in this process, from its library crate, as k3s does: one binary to
//! install, one log from one subscriber (each line names its component's crate), and a
//! shutdown in the order that leaves nothing behind — the pods stop while the API server still
//! answers their kubelet, the proxy's rules go after them, the API server last. The per-container
//! supervisor stays a process of its own (`skiff-shim`, found with the OCI runtime `skiff-runc`
//! next to `skiff` or on PATH), so that a container never depends on this process's memory.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, FromArgMatches};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};
use skiff_apiserver::server::{self, ServerConfig};
use skiff_kubelet::agent::AgentArgs;
use tokio::sync::oneshot;

use crate::ControllerFlags;
use crate::components::{self, Components};

/// `skiff up`'s flags.
#[derive(clap::Args)]
pub struct UpArgs {
    /// Where the cluster lives: the control plane's store and certificates (`server/`, with
    /// `admin.kubeconfig`), the node's images and pods (`node/`), its volatile state (`run/`)
    /// and the pods' logs (`pod-logs/`).
    #[arg(long, default_value = "/var/lib/skiff")]
    data_dir: PathBuf,
    /// Address and port the API server serves HTTPS on.
    #[arg(long = "listen", default_value = "0.0.0.0:6443", value_parser = server::parse_listen)]
    api_listen: SocketAddr,
    /// Range Service ClusterIPs are allocated from.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: Ipv4Net,
    /// The node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// The node's InternalIP (default: the first non-loopback address).
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// The cgroup under which the pods' cgroups are made, in every hierarchy.
    #[arg(long, default_value = "/kubepods")]
    cgroup_root: String,
    /// Seconds a pod gets at most to stop when skiff up is stopped (its own
    /// terminationGracePeriodSeconds when shorter).
    #[arg(long, default_value_t = 10)]
    shutdown_grace_period: u64,
    /// A further flag for the kubelet, e.g. `--kubelet-arg=--max-pods=50`; repeatable.
    #[arg(long, allow_hyphen_values = true)]
    kubelet_arg: Vec<String>,
    #[command(flatten)]
    dns: skiff_proxy::dns::DnsArgs,
    #[command(flatten)]
    settings: ControllerFlags,
}

/// The directories under `--data-dir`.
pub struct Layout {
    pub server: PathBuf,
    pub node: PathBuf,
    pub run: PathBuf,
    pub pod_logs: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Layout {
        Layout {
            server: data_dir.join("server"),
            node: data_dir.join("node"),
            run: data_dir.join("run"),
            pod_logs: data_dir.join("pod-logs"),
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.server.join("admin.kubeconfig")
    }
}

/// Runs the cluster until SIGINT or SIGTERM; an error when a component failed.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)
        .with_context(|| format!("resolving {}", args.data_dir.display()))?;
    let layout = Layout::new(&data_dir);
    let kubeconfig = layout.kubeconfig();
    let node_name = match &args.node_name {
        Some(n) => n.clone(),
        None => skiff_kubelet::host::HostFacts::read()
            .hostname
            .to_lowercase(),
    };
    // Checked before anything starts, so that a bad flag leaves nothing to undo.
    let kubelet_args = kubelet_args(&args, &layout, &kubeconfig, &node_name)?;
    let dns = args.dns.config().context("cluster DNS flags")?;
    let proxy_config = skiff_proxy::sync::Config {
        node_name: node_name.clone(),
        mode: skiff_proxy::dataplane::Mode::Iptables,
        cluster_cidr: Some(
            args.settings
                .cluster_cidr
                .to_string()
                .parse()
                .expect("a parsed cluster CIDR prints as a CIDR"),
        ),
        service_cidr: args.service_cidr,
        min_sync_period: Duration::from_secs(1),
        sync_period: Duration::from_secs(30),
        healthz_bind_address: SocketAddr::from(([0, 0, 0, 0], 10256)),
        nodeport_addresses: vec![],
        masquerade_all: false,
        dns: Some(dns),
    };

    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let mut server = tokio::spawn(server::run(
        ServerConfig {
            data_dir: layout.server.clone(),
            listen: args.api_listen,
            service_cidr: args.service_cidr.to_string(),
            compaction_interval: Duration::from_secs(300),
            bookmark_interval: Duration::from_secs(60),
            etcd: None,
            limits: Default::default(),
            advertise_address: None,
            cluster_signing_duration: skiff_apiserver::auth::csr::DEFAULT_SIGNING_DURATION,
            endpoint_lease_ttl: server::DEFAULT_ENDPOINT_LEASE_TTL,
        },
        async move {
            let _ = server_stopped.await;
        },
    ));
    let client = tokio::select! {
        client = skiff_client::wait_for_api(&kubeconfig) => client,
        ended = &mut server => return Err(ended_early("the API server", ended)),
        _ = crate::shutdown_signal() => {
            let _ = stop_server.send(());
            return flatten(server.await, "the API server");
        }
    };
    let control = tokio::spawn(components::run(
        client.clone(),
        Components {
            scheduler: true,
            controllers: true,
            settings: args.settings.config(),
        },
    ));

    let (stop_kubelet, kubelet_stopped) = oneshot::channel::<Duration>();
    let grace = Duration::from_secs(args.shutdown_grace_period);
    let mut kubelet = tokio::spawn(skiff_kubelet::agent::run_until(kubelet_args, async move {
        kubelet_stopped.await.unwrap_or(grace)
    }));
    let (stop_proxy, proxy_stopped) = oneshot::channel::<()>();
    let mut proxy = tokio::spawn(run_proxy(client.clone(), proxy_config, proxy_stopped));
    let announce = tokio::spawn(announce(client, node_name, kubeconfig));

    let failed = tokio::select! {
        _ = crate::shutdown_signal() => None,
        ended = &mut kubelet => Some(ended_early("the kubelet", ended)),
        ended = &mut proxy => Some(ended_early("the proxy", ended)),
        ended = &mut server => Some(ended_early("the API server", ended)),
    };
    tracing::info!(
        "stopping: the pods, then the node's network and Service rules, then the control plane (a second signal stops at once)"
    );
    tokio::spawn(async {
        crate::shutdown_signal().await;
        tracing::warn!("second signal: exiting now, leaving what is not yet removed");
        std::process::exit(130);
    });
    announce.abort();
    let mut errors = Vec::new();
    if !kubelet.is_finished() {
        let _ = stop_kubelet.send(grace);
        if let Err(e) = flatten(kubelet.await, "the kubelet") {
            errors.push(e);
        }
    }
    if !proxy.is_finished() {
        let _ = stop_proxy.send(());
        if let Err(e) = flatten(proxy.await, "the proxy") {
            errors.push(e);
        }
    }
    control.abort();
    if !server.is_finished() {
        let _ = stop_server.send(());
        if let Err(e) = flatten(server.await, "the API server") {
            errors.push(e);
        }
    }
    if let Some(e) = failed {
        errors.insert(0, e);
    }
    match errors
        .into_iter()
        .reduce(|a, b| a.context(format!("{b:#}")))
    {
        None => {
            tracing::info!("stopped; `skiff up` on the same data directory resumes the cluster");
            Ok(())
        }
        Some(e) => Err(e),
    }
}

/// The kubelet's flags for this node: its directories under the data directory, the admin
/// credentials (until nodes get credentials of their own) and any `--kubelet-arg`.
fn kubelet_args(
    args: &UpArgs,
    layout: &Layout,
    kubeconfig: &Path,
    node_name: &str,
) -> anyhow::Result<AgentArgs> {
    let mut argv: Vec<OsString> = vec!["skiff-kubelet".into()];
    let mut flag = |name: &str, value: OsString| {
        argv.push(format!("--{name}").into());
        argv.push(value);
    };
    flag("kubeconfig", kubeconfig.into());
    flag("node-name", node_name.into());
    flag("root-dir", layout.node.clone().into());
    flag("run-dir", layout.run.clone().into());
    flag("pod-logs-dir", layout.pod_logs.clone().into());
    flag("cgroup-root", args.cgroup_root.clone().into());
    flag("cluster-domain", args.dns.cluster_domain.clone().into());
    flag("cluster-dns", args.dns.listen.ip().to_string().into());
    if let Some(ip) = args.node_ip {
        flag("node-ip", ip.to_string().into());
    }
    argv.extend(args.kubelet_arg.iter().map(OsString::from));
    let command = AgentArgs::augment_args(clap::Command::new("skiff-kubelet"));
    let matches = command
        .try_get_matches_from(argv)
        .context("the kubelet's flags (--kubelet-arg)")?;
    AgentArgs::from_arg_matches(&matches).context("the kubelet's flags (--kubelet-arg)")
}

/// The proxy until `stop`, then everything it set up removed. A sync in progress finishes
/// first: the rules are written in a blocking section the task is never stopped inside.
async fn run_proxy(
    client: Client,
    config: skiff_proxy::sync::Config,
    stop: oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let result = tokio::select! {
        ended = skiff_proxy::sync::run(client, config) => ended,
        _ = stop => Ok(()),
    };
    let cleaned = skiff_proxy::dataplane::cleanup_node().await;
    tracing::info!("Service rules and cluster DNS address removed");
    result.and(cleaned)
}

/// Prints how to reach the cluster once the node is Ready.
async fn announce(client: Client, node_name: String, kubeconfig: PathBuf) {
    let nodes: Api<Node> = Api::all(client);
    loop {
        if let Ok(node) = nodes.get(&node_name).await
            && node_ready(&node)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let kc = kubeconfig.display();
    println!("skiff is up: node {node_name} is Ready");
    println!("kubeconfig: {kc}");
    println!("try: kubectl --kubeconfig {kc} get pods -A");
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn ended_early<E: std::fmt::Display>(
    what: &str,
    ended: Result<Result<(), E>, tokio::task::JoinError>,
) -> anyhow::Error {
    match ended {
        Ok(Ok(())) => anyhow::anyhow!("{what} stopped"),
        Ok(Err(e)) => anyhow::anyhow!("{what}: {e:#}"),
        Err(e) => anyhow::anyhow!("{what}: {e}"),
    }
}

fn flatten<E: std::fmt::Display>(
    ended: Result<Result<(), E>, tokio::task::JoinError>,
    what: &str,
) -> anyhow::Result<()> {
    match ended {
        Ok(Ok(())) => Ok(()),
        other => Err(ended_early(what, other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        up: UpArgs,
    }

    #[test]
    fn the_kubelet_gets_the_node_directories_and_extra_flags() {
        let cli = Cli::parse_from([
            "skiff",
            "--data-dir",
            "/d",
            "--node-name",
            "n1",
            "--kubelet-arg=--max-pods=7",
        ]);
        let layout = Layout::new(Path::new("/d"));
        let kubelet =
            kubelet_args(&cli.up, &layout, &layout.kubeconfig(), "n1").expect("kubelet flags");
        assert_eq!(kubelet.root_dir, Path::new("/d/node"));
        assert_eq!(kubelet.run_dir, Path::new("/d/run"));
        assert_eq!(kubelet.pod_logs_dir, Path::new("/d/pod-logs"));
        assert_eq!(
            kubelet.kubeconfig.as_deref(),
            Some(Path::new("/d/server/admin.kubeconfig"))
        );
        assert_eq!(kubelet.node_name.as_deref(), Some("n1"));
        assert_eq!(kubelet.max_pods, 7);
        assert_eq!(kubelet.cluster_dns, vec![IpAddr::from([10, 96, 0, 10])]);
    }

    #[test]
    fn a_bad_kubelet_flag_is_refused_naming_it() {
        let cli = Cli::parse_from(["skiff", "--kubelet-arg=--no-such-flag"]);
        let layout = Layout::new(Path::new("/d"));
        let err = kubelet_args(&cli.up, &layout, &layout.kubeconfig(), "n1").unwrap_err();
        assert!(format!("{err:#}").contains("--no-such-flag"), "{err:#}");
    }
}
