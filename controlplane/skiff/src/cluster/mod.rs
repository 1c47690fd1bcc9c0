//! `skiff cluster`: a local multi-node cluster for trying and testing. Everything lives in one
//! lab network namespace with no route out (`skiff-<name>`): a bridge `br0` holding the API
//! server's address, where `skiff server` listens, and one network namespace per node
//! (`skiff-<name>-<i>`) joined to the bridge by a veth, where `skiff agent` joins the server with
//! its join token. The host reaches the API server at a 127.0.0.1 port through a forwarder
//! process ([`forward`]) that listens in the host's namespace and connects from the lab's, so
//! that nothing is routed or translated in the host's network namespace. The processes are
//! daemons (their own session, a pid file and a log each) that outlive `skiff cluster up`;
//! `skiff cluster down` stops the agents (which stop their pods and remove what they set up),
//! the server and the forwarder, then deletes the namespaces, any cgroup or mount left and the
//! cluster's directory.

pub mod forward;
mod lab;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Node;
use kube::Api;

use lab::{Lab, ProcessSpec};

/// The API server's address on the lab's bridge; node `i` is `10.250.0.(10+i)`.
const SERVER_IP: &str = "10.250.0.1";
const API_PORT: u16 = 6443;
const MAX_NODES: usize = 50;

/// `skiff cluster` subcommands.
#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// Make a cluster of `--nodes` nodes and start it; returns when every node is Ready.
    Up {
        #[command(flatten)]
        which: Which,
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// A further flag for `skiff server`, e.g. `--server-arg=--node-monitor-grace-period=10`;
        /// repeatable.
        #[arg(long, allow_hyphen_values = true)]
        server_arg: Vec<String>,
    },
    /// Stop a cluster and remove everything it made.
    Down {
        #[command(flatten)]
        which: Which,
    },
    /// List the clusters.
    Ls {
        /// Where the clusters live.
        #[arg(long, default_value = "/var/lib/skiff/clusters")]
        dir: PathBuf,
    },
    /// Import an image archive (OCI or docker-archive) into every node.
    Load {
        #[command(flatten)]
        which: Which,
        archive: PathBuf,
    },
    /// Cut a node off: its agent stopped (its pods with it) and its link down.
    StopNode {
        #[command(flatten)]
        which: Which,
        node: String,
    },
    /// Bring a node cut off by stop-node back.
    StartNode {
        #[command(flatten)]
        which: Which,
        node: String,
    },
    /// (internal) The host-side forwarder to the API server.
    #[command(hide = true)]
    Forward(forward::ForwardArgs),
}

/// Which cluster.
#[derive(clap::Args)]
pub struct Which {
    /// The cluster's name: lowercase letters, digits and `-`, at most 12.
    #[arg(long, value_parser = parse_name)]
    name: String,
    /// Where the clusters live (each in a directory named after it).
    #[arg(long, default_value = "/var/lib/skiff/clusters")]
    dir: PathBuf,
}

fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 12
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s}: a cluster name is 1 to 12 of a-z, 0-9 and - (not first)"
        ))
    }
}

/// A cluster's directory and names.
pub struct Cluster {
    name: String,
    dir: PathBuf,
}

impl Cluster {
    fn new(which: &Which) -> anyhow::Result<Cluster> {
        Cluster::at(&which.dir, &which.name)
    }

    /// Cluster `name` in the clusters' directory `base`.
    pub fn at(base: &Path, name: &str) -> anyhow::Result<Cluster> {
        let name = parse_name(name).map_err(anyhow::Error::msg)?;
        std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
        let base =
            std::fs::canonicalize(base).with_context(|| format!("resolving {}", base.display()))?;
        Ok(Cluster {
            dir: base.join(&name),
            name,
        })
    }

    /// Makes and starts the cluster; returns when every node is Ready.
    pub async fn up(&self, nodes: usize, server_args: &[String]) -> anyhow::Result<()> {
        up(self, nodes, server_args).await
    }

    /// Stops the cluster and removes everything it made.
    pub async fn down(&self) -> anyhow::Result<()> {
        down(self).await
    }

    /// Imports an image archive into every node.
    pub async fn load(&self, archive: &Path) -> anyhow::Result<()> {
        for node in self.nodes() {
            println!("{node}:");
            let root = crate::node::NodeDirs::new(&self.node_dir(&node)).root;
            skiff_kubelet::image::cli::run(
                &root,
                skiff_kubelet::image::cli::ImageCommand::Import {
                    archive: archive.to_path_buf(),
                },
            )
            .await
            .with_context(|| format!("loading {} into {node}", archive.display()))?;
        }
        Ok(())
    }

    /// The cluster's running processes (server, forwarder, each node's agent) and their pids.
    pub fn processes(&self) -> Vec<(String, i32)> {
        let lab = self.lab();
        ["server".to_string(), "forward".to_string()]
            .into_iter()
            .chain(self.nodes())
            .filter_map(|p| lab.running(&p).map(|pid| (p, pid.as_raw())))
            .collect()
    }

    fn lab(&self) -> Lab {
        Lab::new(&self.name, &self.dir)
    }

    /// The kubeconfig for the host (the API server at the forwarder's port).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn server_dir(&self) -> PathBuf {
        self.dir.join("server")
    }

    fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }

    /// The nodes' names, in order.
    fn nodes(&self) -> Vec<String> {
        let mut nodes: Vec<(usize, String)> = std::fs::read_dir(self.dir.join("nodes"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                node_index(&name).map(|i| (i, name))
            })
            .collect();
        nodes.sort();
        nodes.into_iter().map(|(_, n)| n).collect()
    }

    fn cgroup_root(&self, node: &str) -> String {
        format!("/skiff-{}-{node}", self.name)
    }

    fn agent(&self, node: &str, token: &str) -> anyhow::Result<ProcessSpec> {
        let i = node_index(node).with_context(|| format!("{node}: not a node of this cluster"))?;
        let exe = std::env::current_exe().context("finding this binary")?;
        let data_dir = self.node_dir(node);
        Ok(ProcessSpec {
            name: node.to_string(),
            netns: Some(self.lab().node_netns(i)),
            program: exe,
            args: vec![
                "agent".into(),
                "--server".into(),
                format!("https://{SERVER_IP}:{API_PORT}").into(),
                "--data-dir".into(),
                data_dir.into(),
                "--node-name".into(),
                node.into(),
                "--node-ip".into(),
                node_ip(i).into(),
                "--cgroup-root".into(),
                self.cgroup_root(node).into(),
                // The nodes share the host's disk: none of them evicts for its fullness (kind's
                // nodes do the same), memory pressure still counts.
                "--kubelet-arg=--eviction-hard=memory.available<100Mi".into(),
            ],
            env: vec![("SKIFF_TOKEN".into(), token.into())],
        })
    }

    fn token(&self) -> anyhow::Result<String> {
        let path = self.server_dir().join("join-token");
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_string())
            .with_context(|| format!("reading {}", path.display()))
    }
}

fn node_name(i: usize) -> String {
    format!("node-{i}")
}

fn node_index(name: &str) -> Option<usize> {
    name.strip_prefix("node-")?
        .parse()
        .ok()
        .filter(|i| (1..=MAX_NODES).contains(i))
}

fn node_ip(i: usize) -> String {
    format!("10.250.0.{}", 10 + i)
}

/// Runs one `skiff cluster` subcommand.
pub async fn run(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Up {
            which,
            nodes,
            server_arg,
        } => {
            if !(1..=MAX_NODES).contains(&nodes) {
                bail!("--nodes {nodes}: between 1 and {MAX_NODES}");
            }
            let cluster = Cluster::new(&which)?;
            if cluster.dir.exists() {
                bail!(
                    "cluster {} exists ({}): `skiff cluster down --name {}` first",
                    cluster.name,
                    cluster.dir.display(),
                    cluster.name
                );
            }
            let result = up(&cluster, nodes, &server_arg).await;
            if result.is_err() {
                // Nothing half-made is left behind.
                if let Err(e) = down(&cluster).await {
                    tracing::error!("cleaning up the cluster that did not come up: {e:#}");
                }
            }
            result
        }
        ClusterCommand::Down { which } => {
            let cluster = Cluster::new(&which)?;
            if !cluster.dir.exists() && !cluster.lab().exists() {
                bail!("no cluster {} in {}", cluster.name, which.dir.display());
            }
            down(&cluster).await?;
            println!("cluster {} removed", cluster.name);
            Ok(())
        }
        ClusterCommand::Ls { dir } => {
            ls(&dir);
            Ok(())
        }
        ClusterCommand::Load { which, archive } => existing(&which)?.load(&archive).await,
        ClusterCommand::StopNode { which, node } => {
            let cluster = existing(&which)?;
            let i = node_index(&node)
                .filter(|_| cluster.node_dir(&node).exists())
                .with_context(|| format!("{node}: no such node in cluster {}", cluster.name))?;
            let lab = cluster.lab();
            lab.stop(&node, Duration::from_secs(60))?;
            lab.set_node_link(i, false)?;
            println!("{node} stopped and cut off");
            Ok(())
        }
        ClusterCommand::StartNode { which, node } => {
            let cluster = existing(&which)?;
            let i = node_index(&node)
                .filter(|_| cluster.node_dir(&node).exists())
                .with_context(|| format!("{node}: no such node in cluster {}", cluster.name))?;
            let lab = cluster.lab();
            lab.set_node_link(i, true)?;
            if lab.running(&node).is_none() {
                lab.start(&cluster.agent(&node, &cluster.token()?)?)?;
            }
            println!("{node} started");
            Ok(())
        }
        ClusterCommand::Forward(args) => forward::run(args),
    }
}

fn existing(which: &Which) -> anyhow::Result<Cluster> {
    let cluster = Cluster::new(which)?;
    if !cluster.kubeconfig().exists() {
        bail!("no cluster {} in {}", cluster.name, which.dir.display());
    }
    Ok(cluster)
}

async fn up(cluster: &Cluster, nodes: usize, server_args: &[String]) -> anyhow::Result<()> {
    let started = Instant::now();
    let lab = cluster.lab();
    lab.create(SERVER_IP)?;
    let port = lab.start_forwarder(&format!("{SERVER_IP}:{API_PORT}"))?;
    let exe = std::env::current_exe().context("finding this binary")?;
    let mut args: Vec<std::ffi::OsString> = vec![
        "server".into(),
        "--data-dir".into(),
        cluster.server_dir().into(),
        "--listen".into(),
        format!("{SERVER_IP}:{API_PORT}").into(),
    ];
    args.extend(server_args.iter().map(Into::into));
    lab.start(&ProcessSpec {
        name: "server".into(),
        netns: Some(lab.netns()),
        program: exe,
        args,
        env: vec![],
    })?;
    // The admin kubeconfig, pointed at the forwarder, and the join token, once the server made
    // them.
    let admin = cluster.server_dir().join("admin.kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(60);
    let token = loop {
        if let (Ok(kc), Ok(token)) = (std::fs::read_to_string(&admin), cluster.token()) {
            let kc = kc.replace(
                &format!("server: https://{SERVER_IP}:{API_PORT}"),
                &format!("server: https://127.0.0.1:{port}"),
            );
            skiff_apiserver::pki::write(&cluster.kubeconfig(), kc.as_bytes(), true)?;
            break token;
        }
        lab.check_running("server")?;
        if Instant::now() > deadline {
            bail!(
                "the API server did not start within 60s; see {}",
                lab.log("server").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let client = skiff_client::client(&cluster.kubeconfig()).await?;
    println!(
        "server: up at https://{SERVER_IP}:{API_PORT} (from this host: 127.0.0.1:{port}) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let names: Vec<String> = (1..=nodes).map(node_name).collect();
    for (i, node) in names.iter().enumerate() {
        lab.add_node(i + 1, &node_ip(i + 1), SERVER_IP)?;
        std::fs::create_dir_all(cluster.node_dir(node))
            .with_context(|| format!("creating {}", cluster.node_dir(node).display()))?;
        lab.start(&cluster.agent(node, &token)?)?;
    }
    let api: Api<Node> = Api::all(client);
    let mut waiting: Vec<&String> = names.iter().collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !waiting.is_empty() {
        for node in waiting.clone() {
            lab.check_running(node)?;
            if let Ok(n) = api.get(node).await
                && crate::node::node_ready(&n)
            {
                println!(
                    "{node}: Ready at {} in {:.1}s",
                    node_ip(node_index(node).unwrap_or_default()),
                    started.elapsed().as_secs_f64()
                );
                waiting.retain(|w| *w != node);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} not Ready within 120s; see {}",
                waiting
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                lab.log(waiting[0]).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kc = cluster.kubeconfig();
    println!(
        "cluster {} is up: {nodes} nodes Ready in {:.1}s",
        cluster.name,
        started.elapsed().as_secs_f64()
    );
    println!("kubeconfig: {}", kc.display());
    println!(
        "try: kubectl --kubeconfig {} get nodes -o wide",
        kc.display()
    );
    Ok(())
}

/// Stops everything and removes it: agents first (they stop their pods), then the server and
/// the forwarder; then whatever a process killed on the way left (containers, mounts,
/// cgroups), the namespaces and the directory.
async fn down(cluster: &Cluster) -> anyhow::Result<()> {
    let lab = cluster.lab();
    let nodes = cluster.nodes();
    // The agents stop together: each stops its own pods.
    let stops: Vec<_> = nodes
        .iter()
        .map(|n| {
            let lab = cluster.lab();
            let n = n.clone();
            tokio::task::spawn_blocking(move || lab.stop(&n, Duration::from_secs(60)))
        })
        .collect();
    let mut errors = Vec::new();
    for s in stops {
        if let Err(e) = s.await.context("stopping an agent")? {
            errors.push(e);
        }
    }
    for p in ["server", "forward"] {
        if let Err(e) = lab.stop(p, Duration::from_secs(30)) {
            errors.push(e);
        }
    }
    for n in &nodes {
        lab::remove_node_leftovers(&cluster.node_dir(n), &cluster.cgroup_root(n));
    }
    if let Err(e) = lab.delete(nodes.iter().filter_map(|n| node_index(n))) {
        errors.push(e);
    }
    if cluster.dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&cluster.dir)
    {
        errors.push(anyhow::anyhow!("removing {}: {e}", cluster.dir.display()));
    }
    crate::node::combine(errors)
}

fn ls(dir: &Path) {
    println!("{:<14} {:>5}  {:<8} KUBECONFIG", "NAME", "NODES", "SERVER");
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("kubeconfig").exists())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let cluster = Cluster {
            name: name.clone(),
            dir: e.path(),
        };
        let lab = cluster.lab();
        let nodes = cluster.nodes();
        let running = nodes.iter().filter(|n| lab.running(n).is_some()).count();
        let server = if lab.running("server").is_some() {
            "running"
        } else {
            "stopped"
        };
        println!(
            "{name:<14} {:>5}  {server:<8} {}",
            format!("{running}/{}", nodes.len()),
            cluster.kubeconfig().display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names() {
        assert!(parse_name("demo-1").is_ok());
        for bad in ["", "-a", "Demo", "a/b", "a_b", "thirteen-char"] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn node_names() {
        assert_eq!(node_index(&node_name(3)), Some(3));
        assert_eq!(node_index("node-0"), None);
        assert_eq!(node_index("node-x"), None);
        assert_eq!(node_index("other-1"), None);
    }
}
