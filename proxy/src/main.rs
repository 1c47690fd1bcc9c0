//! The `skiff-proxy` command line: parses flags and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ipnet::IpNet;
use skiff_proxy::dataplane::Mode;

#[derive(Parser)]
#[command(
    name = "skiff-proxy",
    about = "Service traffic for a skiff node (kube-proxy's job)"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Removes every rule, table and interface either mode installed.
    Cleanup,
    /// Sync time, rule size and connect latency per mode, in a private network namespace.
    Bench {
        /// Service counts to measure (10 endpoints each).
        #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
        services: Vec<usize>,
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "iptables,nftables"
        )]
        modes: Vec<Mode>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kubeconfig naming the API server and the proxy's credentials.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// API server URLs (comma-separated) to use, in turn, in place of the kubeconfig's server,
    /// moving to the next when one cannot be reached (a control plane of several servers).
    #[arg(long, value_delimiter = ',')]
    api_servers: Vec<String>,
    /// This node's name (endpoints with this nodeName are local).
    #[arg(long)]
    node_name: Option<String>,
    #[arg(long, value_enum, default_value = "iptables")]
    mode: Mode,
    /// Pod network (one range per family, `v4,v6`); traffic to a ClusterIP from outside it is
    /// masqueraded.
    #[arg(long, value_delimiter = ',')]
    cluster_cidr: Vec<IpNet>,
    /// Service network (one range per family, `v4,v6`), routed to the skiff-svc dummy
    /// interface; its families are the ones programmed (an IPv6 range: the `ip6 skiff` table
    /// or ip6tables chains).
    #[arg(long, value_delimiter = ',', default_value = "10.96.0.0/12")]
    service_cluster_ip_range: Vec<IpNet>,
    /// Changes closer together than this are programmed in one sync.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    min_sync_period: Duration,
    /// Full resync interval.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    sync_period: Duration,
    #[arg(long, default_value = "0.0.0.0:10256")]
    healthz_bind_address: SocketAddr,
    /// NodePorts answer only on node addresses in these CIDRs (default: all).
    #[arg(long, value_delimiter = ',')]
    nodeport_addresses: Vec<IpNet>,
    /// Masquerade all traffic sent to ClusterIPs.
    #[arg(long)]
    masquerade_all: bool,
    /// Do not answer cluster DNS on this node (when another DNS serves the cluster).
    #[arg(long)]
    disable_dns: bool,
    #[command(flatten)]
    dns: skiff_proxy::dns::DnsArgs,
}

/// Go-style durations as kube-proxy takes them: `250ms`, `1s`, `1m30s`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| format!("{s}: missing unit (ms, s, m, h)"))?;
        let n: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s}: bad number"))?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else {
            return Err(format!("{s}: unknown unit (ms, s, m, h)"));
        };
        rest = &rest[len..];
        total += Duration::from_secs_f64(n * unit);
    }
    Ok(total)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // hickory-server logs every DNS request at INFO.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,hickory_server=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(Command::Bench { services, modes }) = &cli.command {
        // Before any runtime thread exists: the benchmark unshares its network namespace.
        return skiff_proxy::bench::run(modes, services);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Some(Command::Cleanup) => rt.block_on(skiff_proxy::dataplane::cleanup_node()),
        Some(Command::Bench { .. }) => unreachable!("handled before the runtime starts"),
        None => rt.block_on(run(cli.run)),
    }
}

/// At most one range of each family, as kube-proxy takes them.
fn one_per_family(flag: &str, cidrs: &[IpNet]) -> anyhow::Result<()> {
    let v4 = cidrs.iter().filter(|c| matches!(c, IpNet::V4(_))).count();
    anyhow::ensure!(
        v4 <= 1 && cidrs.len() - v4 <= 1,
        "--{flag}: at most one IPv4 and one IPv6 range, got {cidrs:?}"
    );
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    one_per_family("cluster-cidr", &args.cluster_cidr)?;
    one_per_family("service-cluster-ip-range", &args.service_cluster_ip_range)?;
    anyhow::ensure!(
        !args.service_cluster_ip_range.is_empty(),
        "--service-cluster-ip-range: a range is required"
    );
    let kubeconfig = args.kubeconfig.context("--kubeconfig is required")?;
    let node_name = args.node_name.context("--node-name is required")?;
    let client = skiff_client::failover::client(&kubeconfig, &args.api_servers)
        .await
        .context("building the API client")?;
    let dns = if args.disable_dns {
        None
    } else {
        Some(args.dns.config().context("cluster DNS flags")?)
    };
    skiff_proxy::sync::run(
        client,
        skiff_proxy::sync::Config {
            node_name,
            mode: args.mode,
            cluster_cidrs: args.cluster_cidr,
            service_cidrs: args.service_cluster_ip_range,
            min_sync_period: args.min_sync_period,
            sync_period: args.sync_period,
            healthz_bind_address: args.healthz_bind_address,
            nodeport_addresses: args.nodeport_addresses,
            masquerade_all: args.masquerade_all,
            dns,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5x").is_err());
    }
}
