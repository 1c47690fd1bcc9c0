//! `skiff-kubelet`: parses flags and starts the node agent, or runs an image command.

use clap::Parser;
use skiff_kubelet::{agent, image};

#[derive(Debug, Parser)]
#[command(name = "skiff-kubelet", version, about = "skiff's node agent")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    agent: agent::AgentArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Manage the node's images.
    #[command(subcommand)]
    Image(image::cli::ImageCommand),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .init();
    match cli.command {
        Some(Command::Image(command)) => image::cli::run(&cli.agent.root_dir, command).await,
        None => agent::run(cli.agent).await,
    }
}
