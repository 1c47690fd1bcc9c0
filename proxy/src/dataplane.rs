//! What both renderers share: the node facts a render needs beyond the model, the result of a
//! sync, the errors, and running the rule tools (`iptables-restore`, `nft`) with text on stdin.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;

use crate::model::{Family, Model};

/// The mark a packet carries when it must be masqueraded on its way out (kube-proxy's bit).
pub const MASQ_MARK: u32 = 0x4000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Iptables,
    Nftables,
}

/// Node facts the rules of one IP family depend on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderConfig {
    /// The family of the table (nftables) or the tool (iptables, ip6tables) written.
    pub family: Family,
    /// Traffic to a ClusterIP from outside this range (of `family`) is masqueraded.
    pub cluster_cidr: Option<IpNet>,
    pub masquerade_all: bool,
    /// The addresses (of `family`) NodePorts answer on; `None` means every local address.
    pub node_ips: Option<Vec<IpAddr>>,
}

/// What one sync wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Bytes of rule text handed to the tool (0 when nothing changed).
    pub bytes: usize,
    /// Chains (iptables) or chains and map elements (nftables) rewritten.
    pub changes: usize,
}

impl Applied {
    /// Hands `text` (empty when nothing changed) to `apply` and records `want` as installed. A
    /// failed apply forgets what was installed, so the next sync rewrites everything.
    pub fn install<T>(
        last: &mut Option<T>,
        want: T,
        text: &str,
        changes: usize,
        apply: impl FnOnce(&str) -> Result<(), Error>,
    ) -> Result<Applied, Error> {
        if !text.is_empty()
            && let Err(e) = apply(text)
        {
            *last = None;
            return Err(e);
        }
        *last = Some(want);
        Ok(Applied {
            bytes: text.len(),
            changes,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("running {tool}: {source}")]
    Spawn {
        tool: String,
        source: std::io::Error,
    },
    #[error("{tool} failed: {stderr}")]
    Failed { tool: String, stderr: String },
}

/// A data plane renderer: turns the model into rules and installs them atomically.
pub trait DataPlane: Send {
    /// Installs `model`. A partial sync (`full == false`) may rewrite only what changed since the
    /// last successful sync; a full one also reconciles whatever it finds installed.
    fn sync(&mut self, model: &Model, cfg: &RenderConfig, full: bool) -> Result<Applied, Error>;
}

pub fn new(mode: Mode) -> Box<dyn DataPlane> {
    match mode {
        Mode::Iptables => Box::new(crate::iptables::Iptables::default()),
        Mode::Nftables => Box::new(crate::nftables::Nftables::default()),
    }
}

/// Removes everything either mode installed.
pub fn cleanup_all() -> Result<(), Error> {
    crate::iptables::cleanup()?;
    crate::nftables::cleanup()
}

/// Removes everything the proxy set up on the node: the rules of either mode and the
/// `skiff-svc` interface with the Service CIDR route and the cluster DNS address
/// (`skiff-proxy cleanup`, and a node leaving the cluster).
pub async fn cleanup_node() -> anyhow::Result<()> {
    use anyhow::Context;
    tokio::task::spawn_blocking(cleanup_all)
        .await?
        .context("removing rules")?;
    crate::netlink::remove_dummy()
        .await
        .with_context(|| format!("removing the {} interface", crate::netlink::DUMMY))
}

/// Runs `tool args…` with `stdin`, returning its stdout.
pub fn run_tool(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let spawn_err = |source| Error::Spawn {
        tool: tool.to_string(),
        source,
    };
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(text.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(Error::Failed {
            tool: format!("{tool} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
