//! The node agent's command line and its start.

use std::path::PathBuf;

/// The agent's flags (`skiff-kubelet --kubeconfig FILE --node-name NAME …`).
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Per-node data directory (images, checkpoints).
    #[arg(long, default_value = "/var/lib/skiff/kubelet", global = true)]
    pub root_dir: PathBuf,
}

/// Runs the node agent until it is stopped.
pub async fn run(_args: AgentArgs) -> anyhow::Result<()> {
    anyhow::bail!("the node agent is not built yet")
}
