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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};
use skiff_apiserver::pki;
use skiff_apiserver::server::{self, ServerConfig};
use tokio::sync::oneshot;

use crate::ControllerFlags;
use crate::components::{self, Components};
use crate::node::{self, NodeConfig, NodeCredentials, NodeDirs, NodeFlags, RunningNode};

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
    /// Range Service ClusterIPs are allocated from; two of different families
    /// (`10.96.0.0/12,fd00:10:96::/108`) for dual-stack Services, the first the primary.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: crate::node::ServiceCidrs,
    #[command(flatten)]
    node: NodeFlags,
    #[command(flatten)]
    settings: ControllerFlags,
}

/// The directories under `--data-dir`.
pub struct Layout {
    pub server: PathBuf,
    pub node: NodeDirs,
    /// The node's own credentials (`system:node:<name>` in `system:nodes`), as a joined node's.
    pub node_kubeconfig: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Layout {
        Layout {
            server: data_dir.join("server"),
            node: NodeDirs::new(data_dir),
            node_kubeconfig: data_dir.join("kubelet.kubeconfig"),
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.server.join("admin.kubeconfig")
    }
}

/// Writes the node's kubeconfig: a client certificate for `system:node:<node_name>` from the
/// cluster CA, issued at each start, so that the kubelet and the proxy run with a node's rights
/// (the Node authorizer's), not the administrator's.
fn write_node_kubeconfig(layout: &Layout, node_name: &str) -> anyhow::Result<()> {
    let kubeconfig = pki::Pki::new(&layout.server).user_kubeconfig(
        &format!("system:node:{node_name}"),
        &["system:nodes".to_string()],
        None,
    )?;
    let path = &layout.node_kubeconfig;
    pki::write(path, kubeconfig.as_bytes(), true)
        .with_context(|| format!("writing {}", path.display()))
}

/// Runs the cluster until SIGINT or SIGTERM; an error when a component failed.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)
        .with_context(|| format!("resolving {}", args.data_dir.display()))?;
    let layout = Layout::new(&data_dir);
    let kubeconfig = layout.kubeconfig();
    let node_name = args.node.node_name();
    let node_config = NodeConfig::new(
        &args.node,
        &layout.node,
        &NodeCredentials::Issued {
            kubeconfig: layout.node_kubeconfig.clone(),
        },
        &node_name,
        args.settings
            .cluster_cidr
            .to_string()
            .parse()
            .expect("a parsed cluster CIDR prints as a CIDR"),
        args.service_cidr.clone(),
    )?;

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
        ended = &mut server => return Err(node::ended_early("the API server", ended)),
        _ = crate::shutdown_signal() => {
            let _ = stop_server.send(());
            return node::flatten(server.await, "the API server");
        }
    };
    crate::join::print_join_line(client.clone(), &layout.server, args.api_listen).await;
    let components = Components {
        scheduler: true,
        controllers: true,
        settings: args.settings.config(),
    };
    let server_dir = layout.server.clone();
    let control =
        tokio::spawn(async move { components::run_as_their_users(&server_dir, components).await });

    if let Err(e) = write_node_kubeconfig(&layout, &node_name) {
        control.abort();
        let _ = stop_server.send(());
        let _ = server.await;
        return Err(e.context("the node's credentials"));
    }
    let mut node = RunningNode::start(node_config);
    let announce = tokio::spawn(announce(client, node_name, kubeconfig));

    let failed = tokio::select! {
        _ = crate::shutdown_signal() => None,
        e = node.failed() => Some(e),
        ended = &mut server => Some(node::ended_early("the API server", ended)),
    };
    tracing::info!(
        "stopping: the pods, then the node's network and Service rules, then the control plane (a second signal stops at once)"
    );
    node::exit_on_second_signal();
    announce.abort();
    let mut errors: Vec<anyhow::Error> = failed.into_iter().collect();
    errors.extend(node.stop().await);
    control.abort();
    if !server.is_finished() {
        let _ = stop_server.send(());
        if let Err(e) = node::flatten(server.await, "the API server") {
            errors.push(e);
        }
    }
    node::combine(errors)?;
    tracing::info!("stopped; `skiff up` on the same data directory resumes the cluster");
    Ok(())
}

/// Prints how to reach the cluster once the node is Ready.
async fn announce(client: Client, node_name: String, kubeconfig: PathBuf) {
    let nodes: Api<Node> = Api::all(client);
    loop {
        if let Ok(node) = nodes.get(&node_name).await
            && node::node_ready(&node)
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
