//! `skiff agent`: this machine as a node of a cluster served elsewhere. It joins with a join
//! token (the server's CA checked against the token's hash, the bootstrap token traded for a
//! node client certificate, [`crate::node_credentials`]) and runs the kubelet and the proxy
//! (with cluster DNS) in this process as `skiff up` does, with the node's credentials only,
//! until SIGINT or SIGTERM stops the pods and removes what the node set up.

use std::path::PathBuf;

use anyhow::Context;
use ipnet::Ipv4Net;

use crate::join::JoinToken;
use crate::node::{self, NodeConfig, NodeCredentials, NodeDirs, NodeFlags, RunningNode};
use crate::node_credentials::{self, CredentialFiles};

/// `skiff agent`'s flags.
#[derive(clap::Args)]
pub struct AgentArgs {
    /// The API server: https://HOST:PORT.
    #[arg(long)]
    server: String,
    /// The join token `skiff server` prints (or `skiff token create` makes):
    /// K10<CA hash>::<id>.<secret>.
    #[arg(long, env = "SKIFF_TOKEN", value_parser = parse_token)]
    token: JoinToken,
    /// Where the node lives: its credentials, images and pods (`node/`), volatile state (`run/`)
    /// and the pods' logs (`pod-logs/`).
    #[arg(long, default_value = "/var/lib/skiff/agent")]
    data_dir: PathBuf,
    /// The cluster's pod range (traffic from outside it to Services is masqueraded).
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: Ipv4Net,
    /// The cluster's Service range (two, one per family, on a dual-stack cluster).
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: node::ServiceCidrs,
    #[command(flatten)]
    node: NodeFlags,
}

fn parse_token(s: &str) -> Result<JoinToken, String> {
    s.parse()
}

/// Joins and runs the node until SIGINT or SIGTERM; an error when a component failed.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)
        .with_context(|| format!("resolving {}", args.data_dir.display()))?;
    let server = args.server.trim_end_matches('/').to_string();
    let node_name = args.node.node_name();
    let files = CredentialFiles::new(&data_dir);
    let config = NodeConfig::new(
        &args.node,
        &NodeDirs::new(&data_dir),
        &NodeCredentials::Bootstrap {
            bootstrap_kubeconfig: files.bootstrap_kubeconfig.clone(),
            kubeconfig: files.kubeconfig.clone(),
            cert_dir: files.cert_dir.clone(),
        },
        &node_name,
        args.cluster_cidr,
        args.service_cidr,
    )?;
    tokio::select! {
        joined = node_credentials::ensure(&files, &server, &args.token) => joined?,
        _ = crate::shutdown_signal() => return Ok(()),
    }
    let mut running = RunningNode::start(config);
    tracing::info!(node = %node_name, %server, "node started");
    let failed = tokio::select! {
        _ = crate::shutdown_signal() => None,
        e = running.failed() => Some(e),
    };
    tracing::info!(
        "stopping: the pods, then the node's network and Service rules (a second signal stops at once)"
    );
    node::exit_on_second_signal();
    let mut errors: Vec<anyhow::Error> = failed.into_iter().collect();
    errors.extend(running.stop().await);
    node::combine(errors)?;
    tracing::info!("stopped; `skiff agent` on the same data directory starts the node again");
    Ok(())
}
