//! `skiff-kubelet image …`: the node operator's view of the image store.

use std::path::Path;

/// `skiff-kubelet image` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {}

/// Runs one `image` subcommand against the image store under `root_dir`.
pub async fn run(_root_dir: &Path, command: ImageCommand) -> anyhow::Result<()> {
    match command {}
}
