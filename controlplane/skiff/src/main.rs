//! skiff: the `skiff` command — parses flags and starts the components (API server, scheduler,
//! controllers) from their crates; it depends on all of them and nothing depends on it. Also
//! `skiff bench`, which measures the API server and the scheduler in this process, and
//! `skiff up` ([`up`]), the control plane and this machine as its node in one process.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod agent;
mod bench;
mod cluster;
mod components;
mod install;
mod join;
mod node;
mod node_credentials;
mod store_migrate;
mod token;
mod up;

use components::Components;
use skiff_apiserver::pki;
use skiff_apiserver::server::{self, ServerConfig};
use skiff_controllers::{
    self as controllers, Selection, nodeipam::ClusterCidr, nodelifecycle::LifecycleConfig,
    podgc::PodGcConfig,
};

#[derive(Parser)]
#[command(name = "skiff", about = "skiff: a small Kubernetes", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Kubernetes API from an embedded store or etcd.
    Server {
        /// Where the store, certificates and admin.kubeconfig live.
        #[arg(long, default_value = "/var/lib/skiff/server")]
        data_dir: PathBuf,
        /// Address and port to serve HTTPS on.
        #[arg(long, default_value = "0.0.0.0:6443", value_parser = server::parse_listen)]
        listen: std::net::SocketAddr,
        /// Range Service ClusterIPs are allocated from; two of different families
        /// (`10.96.0.0/12,fd00:10:96::/108`) for dual-stack Services, the first the primary.
        #[arg(long, default_value = "10.96.0.0/12")]
        service_cidr: String,
        /// Seconds between compactions of the store's history.
        #[arg(long, default_value_t = 300)]
        compaction_interval: u64,
        /// Seconds between bookmarks on watches that asked for them.
        #[arg(long, default_value_t = 60)]
        bookmark_interval: u64,
        /// Seconds a server stays in the `kubernetes` Service's endpoints after its last renewal
        /// (each server renews its Lease every third of this).
        #[arg(long, default_value_t = 15)]
        endpoint_lease_duration: u64,
        #[command(flatten)]
        limits: LimitFlags,
        /// The address the `kubernetes` Service's endpoints and the kubeconfigs name, and the
        /// serving certificate holds (default: the --listen address; when that is 0.0.0.0, the
        /// host's first address for the Service and 127.0.0.1 for the kubeconfigs).
        #[arg(long)]
        advertise_address: Option<std::net::IpAddr>,
        /// The longest lifetime of a certificate signed for a CertificateSigningRequest (as
        /// kube-controller-manager's flag): 8760h, 30m, 90s.
        #[arg(long, default_value = "8760h", value_parser = parse_duration)]
        cluster_signing_duration: Duration,
        /// Do not run the scheduler inside the server.
        #[arg(long)]
        disable_scheduler: bool,
        /// Do not run the controllers inside the server.
        #[arg(long)]
        disable_controllers: bool,
        #[command(flatten)]
        settings: ControllerFlags,
        #[command(flatten)]
        etcd: EtcdFlags,
    },
    /// Run a whole cluster on this machine in the foreground: the control plane and this
    /// machine as its node (kubelet, proxy, cluster DNS). Ctrl-C stops everything it started.
    Up(up::UpArgs),
    /// Write systemd units (and an environment file) that run `skiff server` or `skiff agent`
    /// on this machine.
    Install {
        #[command(subcommand)]
        command: InstallCommand,
    },
    /// Join a cluster as a node: check the server's CA against the join token, trade the token
    /// for node credentials, and run the kubelet and the proxy (with cluster DNS) here.
    Agent(agent::AgentArgs),
    /// A local multi-node cluster: nodes in network namespaces of one isolated lab namespace,
    /// each joined through `skiff agent`.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Manage the images of `skiff up`'s node (e.g. the busybox image the quick start runs).
    Image {
        /// `skiff up`'s data directory.
        #[arg(long, default_value = "/var/lib/skiff", global = true)]
        data_dir: PathBuf,
        #[command(subcommand)]
        command: skiff_kubelet::image::cli::ImageCommand,
    },
    /// Run the scheduler against an API server.
    Scheduler {
        /// Credentials and address of the API server.
        #[arg(long)]
        kubeconfig: PathBuf,
    },
    /// Run the controllers against an API server.
    Controllers {
        /// Credentials and address of the API server.
        #[arg(long)]
        kubeconfig: PathBuf,
        #[command(flatten)]
        settings: ControllerFlags,
    },
    /// Issue a kubeconfig for a user: a client certificate (CN = the user, O = each group)
    /// signed by the cluster CA in the server's data directory.
    Kubeconfig {
        /// The server's data directory (where ca.crt and ca.key are).
        #[arg(long, default_value = "/var/lib/skiff/server")]
        data_dir: PathBuf,
        /// The user name.
        #[arg(long)]
        user: String,
        /// A group of the user (at most two).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// The API server's URL (default: the one admin.kubeconfig names).
        #[arg(long)]
        server: Option<String>,
        /// Write the kubeconfig here (mode 0600) instead of printing it.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Operations on a server's store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Bootstrap tokens for joining nodes.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Measure an API server (started on a loopback port in a scratch directory) through a
    /// Kubernetes client and print a table.
    Bench {
        /// Collection sizes to create, get from and list.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        sizes: Vec<usize>,
        /// Watchers a change is fanned out to.
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        /// Concurrent clients for create and get.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// What to measure: the API server (`api`), RBAC's cost over `--bindings` RoleBindings
        /// (`rbac`), scheduling throughput (`scheduling`, scheduler_perf's SchedulingBasic
        /// shape), a server process under `--writers` patching `--pods` pods and `--watchers`
        /// following them for `--duration` seconds (`soak`), or the time from killing the
        /// server leading the scheduler to a pod bound by the other, over `--kills` kills
        /// (`failover`, needs `--etcd-endpoints`).
        #[arg(long, value_enum, default_value = "api")]
        mode: BenchMode,
        /// RBAC: RoleBindings of other users in the namespace.
        #[arg(long, default_value_t = 1000)]
        bindings: usize,
        /// Scheduling: simulated nodes (default 5000); cluster: nodes (default 3).
        #[arg(long)]
        nodes: Option<usize>,
        /// Scheduling: pods bound before measuring.
        #[arg(long, default_value_t = 1000)]
        init_pods: usize,
        /// Scheduling: measured pods (default 10000); soak: pods (default 10000); cluster: the
        /// Deployment's replicas (default 30).
        #[arg(long)]
        pods: Option<usize>,
        /// API and scheduling: also run the workload on a server keeping its objects in this
        /// etcd (client URLs, comma-separated), each store's figures side by side. Failover:
        /// the etcd the two servers share.
        #[arg(long, value_delimiter = ',')]
        etcd_endpoints: Vec<String>,
        /// Failover: how many times the leader is killed.
        #[arg(long, default_value_t = 5)]
        kills: usize,
        /// Soak: seconds of load.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Soak: clients patching pods.
        #[arg(long, default_value_t = 100)]
        writers: usize,
        /// Soak: patches per second from all writers together, evenly paced (0: each writer
        /// patches again as soon as its last patch is answered, which saturates the server and
        /// measures its throughput; its latencies are then mostly queueing).
        #[arg(long, default_value_t = 0)]
        write_rate: u32,
        /// Soak: the `skiff` binary whose server is measured (default: this one), to compare
        /// builds.
        #[arg(long)]
        server_binary: Option<PathBuf>,
    },
}

/// The API server's bounds on requests and connections.
#[derive(clap::Args)]
struct LimitFlags {
    /// Read-only requests in flight at most; more get 429.
    #[arg(long, default_value_t = 400)]
    max_requests_inflight: usize,
    /// Mutating requests in flight at most; more get 429.
    #[arg(long, default_value_t = 200)]
    max_mutating_requests_inflight: usize,
    /// The longest a non-streaming request may take (a duration: 60s, 1m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// The longest a TLS handshake may take (for tests).
    #[arg(long, default_value = "10s", value_parser = parse_duration, hide = true)]
    tls_handshake_timeout: Duration,
    /// The longest a client may take to send a request's headers (for tests).
    #[arg(long, default_value = "10s", value_parser = parse_duration, hide = true)]
    request_header_timeout: Duration,
}

impl LimitFlags {
    fn limits(&self) -> skiff_apiserver::limits::Limits {
        skiff_apiserver::limits::Limits {
            max_requests_inflight: self.max_requests_inflight.max(1),
            max_mutating_requests_inflight: self.max_mutating_requests_inflight.max(1),
            request_timeout: self.request_timeout,
            tls_handshake_timeout: self.tls_handshake_timeout,
            request_header_timeout: self.request_header_timeout,
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    skiff_apiserver::limits::parse_go_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s}: expected a positive duration such as 10s or 1m"))
}

#[derive(Subcommand)]
enum InstallCommand {
    /// skiff-server.service: the control plane.
    Server(install::ServerArgs),
    /// skiff-agent.service: this machine as a node joining `--server` with `--token`.
    Agent(install::AgentArgs),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a bootstrap token (a `kube-system/bootstrap-token-<id>` Secret) and print it.
    Create {
        /// The server's data directory (its admin.kubeconfig is used).
        #[arg(long, default_value = "/var/lib/skiff/server")]
        data_dir: PathBuf,
        /// How long the token is valid: `90s`, `30m`, `24h`, `7d`.
        #[arg(long, default_value = "24h", value_parser = token::parse_ttl)]
        ttl: Duration,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copy every object from one store to another: a server data directory (its embedded
    /// store) or `etcd://HOST:PORT[,HOST:PORT…][?prefix=/registry]` (over TLS: add
    /// `&cacert=FILE&cert=FILE&key=FILE`). Objects keep their content;
    /// resourceVersions are the destination's. Every server using either store must be stopped.
    Migrate {
        /// The store to copy from.
        #[arg(long)]
        from: store_migrate::Location,
        /// The store to copy into (created if absent).
        #[arg(long)]
        to: store_migrate::Location,
        /// Replace the objects a destination already holds.
        #[arg(long)]
        force: bool,
    },
}

/// Settings of the controllers.
#[derive(clap::Args)]
struct ControllerFlags {
    /// Range (a /16) node pod CIDRs are allocated from.
    #[arg(long, default_value = "10.244.0.0/16", value_parser = parse_cluster_cidr)]
    cluster_cidr: ClusterCidr,
    /// Seconds without a heartbeat before a node is marked Ready=Unknown and tainted.
    #[arg(long, default_value_t = 50)]
    node_monitor_grace_period: u64,
    /// Seconds pods stay on an unreachable or not-ready node unless they tolerate it otherwise.
    #[arg(long, default_value_t = 300)]
    default_toleration_seconds: u64,
    /// Finished pods kept before the oldest are deleted (0 keeps them all).
    #[arg(long, default_value_t = 12500)]
    terminated_pod_gc_threshold: usize,
    /// Seconds a node must be missing before the pods bound to it are deleted.
    #[arg(long, default_value_t = 40)]
    pod_gc_quarantine: u64,
    /// Controllers to run: `*` for all, `name` to enable one, `-name` to disable one
    /// (kube-controller-manager's names, e.g. garbage-collector-controller).
    #[arg(long, value_delimiter = ',', default_value = "*", value_parser = parse_controller_name)]
    controllers: Vec<String>,
}

impl ControllerFlags {
    fn config(&self) -> controllers::Config {
        controllers::Config {
            cluster_cidr: self.cluster_cidr,
            lifecycle: LifecycleConfig {
                grace_period: Duration::from_secs(self.node_monitor_grace_period.max(1)),
                default_toleration: Duration::from_secs(self.default_toleration_seconds),
            },
            pod_gc: PodGcConfig {
                terminated_pod_threshold: self.terminated_pod_gc_threshold,
                quarantine: Duration::from_secs(self.pod_gc_quarantine.max(1)),
            },
            selection: Selection::parse(&self.controllers)
                .expect("each name was checked when the flag was parsed"),
        }
    }
}

/// Where `skiff server` keeps objects when not in its embedded store.
#[derive(clap::Args)]
struct EtcdFlags {
    /// etcd client URLs (http:// or https://), comma-separated; objects are kept in that etcd
    /// cluster instead of the embedded store.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// CA bundle that signed the etcd server certificates.
    #[arg(long, requires = "etcd_endpoints")]
    etcd_cafile: Option<PathBuf>,
    /// Client certificate for etcd.
    #[arg(long, requires_all = ["etcd_endpoints", "etcd_keyfile"])]
    etcd_certfile: Option<PathBuf>,
    /// Key of the client certificate for etcd.
    #[arg(long, requires_all = ["etcd_endpoints", "etcd_certfile"])]
    etcd_keyfile: Option<PathBuf>,
    /// The etcd key prefix objects are kept under (`PREFIX/pods/NAMESPACE/NAME`).
    #[arg(long, default_value = "/registry")]
    etcd_prefix: String,
}

impl EtcdFlags {
    fn config(self) -> Option<server::EtcdConfig> {
        (!self.etcd_endpoints.is_empty()).then_some(server::EtcdConfig {
            endpoints: self.etcd_endpoints,
            prefix: self.etcd_prefix,
            ca_file: self.etcd_cafile,
            cert_file: self.etcd_certfile,
            key_file: self.etcd_keyfile,
        })
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchMode {
    Api,
    Rbac,
    Scheduling,
    /// A server process under writers and watchers for `--duration` seconds.
    Soak,
    /// Scheduler hand-over after the leading server is killed.
    Failover,
    /// A `skiff cluster` of `--nodes` (default 3 here) nodes brought up and a Deployment of
    /// `--pods` (default 30 here) run to Ready: the times and each process's peak memory.
    Cluster,
}

/// Lifts the soft limit on open files to the hard one, as Go programs such as kube-apiserver do
/// at start: a server holding thousands of connections (and a node's kubelet its pods' logs)
/// must not fail at the soft default of 1,024.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "could not raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the open-file limit"),
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    raise_open_file_limit();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match cli.command {
        Command::Server {
            data_dir,
            listen,
            service_cidr,
            compaction_interval,
            bookmark_interval,
            endpoint_lease_duration,
            limits,
            advertise_address,
            cluster_signing_duration,
            disable_scheduler,
            disable_controllers,
            settings,
            etcd,
        } => {
            let which = Components {
                scheduler: !disable_scheduler,
                controllers: !disable_controllers,
                settings: settings.config(),
            };
            let cfg = ServerConfig {
                data_dir,
                listen,
                service_cidr,
                compaction_interval: Duration::from_secs(compaction_interval.max(1)),
                bookmark_interval: Duration::from_secs(bookmark_interval.max(1)),
                etcd: etcd.config(),
                limits: limits.limits(),
                advertise_address,
                cluster_signing_duration,
                endpoint_lease_ttl: Duration::from_secs(endpoint_lease_duration.max(3)),
            };
            let admin_kubeconfig = cfg.data_dir.join("admin.kubeconfig");
            let (join_data_dir, join_listen) = (cfg.data_dir.clone(), cfg.listen);
            let components_dir = cfg.data_dir.clone();
            rt.block_on(async {
                tokio::spawn(async move {
                    let client = skiff_client::wait_for_api(&admin_kubeconfig).await;
                    join::print_join_line(client, &join_data_dir, join_listen).await;
                });
                tokio::spawn(async move {
                    components::run_as_their_users(&components_dir, which).await
                });
                server::run(cfg, shutdown_signal()).await
            })
            .context("skiff server")?;
        }
        Command::Up(args) => rt.block_on(up::run(args)).context("skiff up")?,
        Command::Install {
            command: InstallCommand::Server(args),
        } => install::server(args).context("skiff install server")?,
        Command::Install {
            command: InstallCommand::Agent(args),
        } => install::agent(args).context("skiff install agent")?,
        Command::Agent(args) => rt.block_on(agent::run(args)).context("skiff agent")?,
        Command::Cluster { command } => rt
            .block_on(cluster::run(command))
            .context("skiff cluster")?,
        Command::Image { data_dir, command } => rt
            .block_on(skiff_kubelet::image::cli::run(
                &up::Layout::new(&data_dir).node.root,
                command,
            ))
            .context("skiff image")?,
        Command::Scheduler { kubeconfig } => {
            rt.block_on(async {
                let client = skiff_client::client(&kubeconfig).await?;
                tokio::select! {
                    _ = components::run(client, Components { scheduler: true, controllers: false, settings: controllers::Config::default() }) => {}
                    _ = shutdown_signal() => {}
                }
                anyhow::Ok(())
            })
            .context("skiff scheduler")?;
        }
        Command::Controllers {
            kubeconfig,
            settings,
        } => {
            let settings = settings.config();
            rt.block_on(async {
                let client = skiff_client::client(&kubeconfig).await?;
                tokio::select! {
                    _ = components::run(client, Components { scheduler: false, controllers: true, settings }) => {}
                    _ = shutdown_signal() => {}
                }
                anyhow::Ok(())
            })
            .context("skiff controllers")?;
        }
        Command::Kubeconfig {
            data_dir,
            user,
            groups,
            server,
            output,
        } => {
            let kubeconfig = pki::Pki::new(&data_dir)
                .user_kubeconfig(&user, &groups, server.as_deref())
                .with_context(|| format!("issuing a kubeconfig from {}", data_dir.display()))?;
            match output {
                Some(path) => pki::write(&path, kubeconfig.as_bytes(), true)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{kubeconfig}"),
            }
        }
        Command::Store {
            command: StoreCommand::Migrate { from, to, force },
        } => rt
            .block_on(store_migrate::migrate(&from, &to, force))
            .context("skiff store migrate")?,
        Command::Token {
            command: TokenCommand::Create { data_dir, ttl },
        } => {
            let kubeconfig = data_dir.join("admin.kubeconfig");
            let ca_hash = join::ca_hash_of_file(&data_dir.join("ca.crt"))?;
            let bootstrap = rt
                .block_on(async {
                    let client = skiff_client::client(&kubeconfig).await?;
                    token::create(client, Some(ttl)).await
                })
                .context("skiff token create")?;
            println!("{}", join::JoinToken { ca_hash, bootstrap });
        }
        Command::Bench {
            mode: BenchMode::Cluster,
            nodes,
            pods,
            ..
        } => {
            // The general defaults are sized for the scheduler bench.
            let report = rt
                .block_on(bench::cluster::run(
                    nodes.unwrap_or(3).max(1),
                    pods.unwrap_or(30).max(1),
                ))
                .context("skiff bench --mode cluster")?;
            print!("{}", bench::cluster::render(&report));
        }
        Command::Bench {
            mode: BenchMode::Failover,
            etcd_endpoints,
            kills,
            ..
        } => {
            anyhow::ensure!(
                !etcd_endpoints.is_empty(),
                "skiff bench --mode failover needs --etcd-endpoints (the servers share an etcd)"
            );
            let cfg = bench::failover::FailoverConfig {
                etcd_endpoints,
                kills: kills.max(1),
            };
            let times = rt
                .block_on(bench::failover::run(&cfg))
                .context("skiff bench --mode failover")?;
            let lease = skiff_client::leader::Election::new("kube-scheduler").lease_duration;
            print!("{}", bench::failover::render(&times, lease));
        }
        Command::Bench {
            mode: BenchMode::Soak,
            watchers,
            pods,
            duration,
            writers,
            write_rate,
            server_binary,
            ..
        } => {
            let server_binary = match server_binary {
                Some(b) => b,
                None => std::env::current_exe().context("finding this binary")?,
            };
            let cfg = bench::soak::SoakConfig {
                duration: Duration::from_secs(duration.max(1)),
                writers,
                write_rate,
                watchers,
                pods: pods.unwrap_or(10000),
                server_binary,
            };
            let report = rt
                .block_on(bench::soak::run(&cfg))
                .context("skiff bench --mode soak")?;
            print!("{}", bench::soak::render(&report));
        }
        Command::Bench {
            concurrency,
            mode: BenchMode::Scheduling,
            nodes,
            init_pods,
            pods,
            etcd_endpoints,
            ..
        } => {
            let mut runs = Vec::new();
            for (store, etcd) in bench_stores(etcd_endpoints) {
                let cfg = bench::scheduling::PerfConfig {
                    nodes: nodes.unwrap_or(5000).max(1),
                    init_pods,
                    pods: pods.unwrap_or(10000).max(1),
                    concurrency: concurrency.max(1),
                    etcd,
                };
                let result = rt
                    .block_on(bench::scheduling::run(&cfg))
                    .with_context(|| format!("skiff bench --mode scheduling on {store}"))?;
                runs.push((store, result));
            }
            print!("{}", bench::scheduling::render(&runs));
        }
        Command::Bench {
            sizes,
            concurrency,
            bindings,
            mode: BenchMode::Rbac,
            ..
        } => {
            let cfg = bench::rbac::RbacBenchConfig {
                bindings,
                objects: sizes.first().copied().unwrap_or(1000).max(1),
                concurrency: concurrency.max(1),
                rounds: 10,
            };
            let rows = rt
                .block_on(bench::rbac::run(&cfg))
                .context("skiff bench --mode rbac")?;
            print!("{}", bench::rbac::render(&rows));
        }
        Command::Bench {
            sizes,
            watchers,
            concurrency,
            mode: BenchMode::Api,
            etcd_endpoints,
            ..
        } => {
            let mut runs = Vec::new();
            for (store, etcd) in bench_stores(etcd_endpoints) {
                let cfg = bench::api::BenchConfig {
                    sizes: sizes.clone(),
                    watchers,
                    concurrency: concurrency.max(1),
                    etcd,
                    ..Default::default()
                };
                let rows = rt
                    .block_on(bench::api::run(&cfg))
                    .with_context(|| format!("skiff bench on {store}"))?;
                runs.push((store, rows));
            }
            print!("{}", bench::api::render_side_by_side(&runs));
        }
    }
    Ok(())
}

/// The stores a benchmark runs on: the embedded one, and etcd when endpoints are given.
fn bench_stores(etcd_endpoints: Vec<String>) -> Vec<(&'static str, Option<server::EtcdConfig>)> {
    let mut stores = vec![("embedded", None)];
    if !etcd_endpoints.is_empty() {
        stores.push(("etcd", Some(server::EtcdConfig::new(etcd_endpoints))));
    }
    stores
}

fn parse_controller_name(s: &str) -> Result<String, String> {
    Selection::parse(&[s.to_string()]).map(|_| s.to_string())
}

fn parse_cluster_cidr(s: &str) -> Result<ClusterCidr, String> {
    ClusterCidr::parse(s).map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
