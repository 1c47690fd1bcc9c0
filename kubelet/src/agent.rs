//! The node agent's command line and its start: the kube client, the node's record and lease,
//! and the pod manager.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kube::Client;

use crate::node::{NodeAgent, NodeConfig};

/// The agent's flags (`skiff-kubelet --kubeconfig FILE --node-name NAME …`).
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Per-node data directory (images, checkpoints).
    #[arg(long, default_value = "/var/lib/skiff/kubelet", global = true)]
    pub root_dir: PathBuf,
    /// Kubeconfig of the API server the node joins (written by the TLS bootstrap when
    /// --bootstrap-kubeconfig is given and this one is missing or its certificate expired).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// A kubeconfig with a bootstrap token, traded for the node's client certificate (a CSR
    /// the cluster approves and signs) when --kubeconfig holds no valid one.
    #[arg(long)]
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// Where the node's certificates and keys are kept (default: ROOT_DIR/pki).
    #[arg(long)]
    pub cert_dir: Option<PathBuf>,
    /// Renew the client certificate of the store (from the TLS bootstrap) before it expires.
    #[arg(long)]
    pub rotate_certificates: bool,
    /// Serve the node API with a certificate the cluster signs (a kubelet-serving CSR for the
    /// node's name and address), renewed before it expires, in place of --tls-cert-file or a
    /// self-signed one.
    #[arg(long, conflicts_with = "tls_cert_file")]
    pub rotate_server_certificates: bool,
    /// API server URLs (comma-separated) to use, in turn, in place of the kubeconfig's server,
    /// moving to the next when one cannot be reached (a control plane of several servers).
    #[arg(long, value_delimiter = ',')]
    pub api_servers: Vec<String>,
    /// The node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Per-node volatile state (containers' shim files, the runtime's state).
    #[arg(long, default_value = "/run/skiff/kubelet")]
    pub run_dir: PathBuf,
    /// The OCI runtime with runc's command line (default: skiff-runc next to the kubelet or on
    /// PATH; runc and crun work too).
    #[arg(long)]
    pub runtime_path: Option<PathBuf>,
    /// The container supervisor (default: skiff-shim next to the kubelet or on PATH).
    #[arg(long)]
    pub shim_path: Option<PathBuf>,
    /// The cgroup under which pods' cgroups are made, in every hierarchy.
    #[arg(long, default_value = "/kubepods")]
    pub cgroup_root: String,
    /// The most processes a pod may have (its cgroup's pids.max); -1: no limit.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub pod_max_pids: i64,
    /// A directory of static pod manifests.
    #[arg(long)]
    pub pod_manifest_path: Option<PathBuf>,
    /// The node's InternalIP (default: the first non-loopback address).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// The cluster DNS server's address, written into pods' resolv.conf (the `kube-dns`
    /// Service's, which every node's skiff-proxy answers).
    #[arg(long, default_value = "10.96.0.10", value_delimiter = ',')]
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// How many pods the node runs at most.
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// A registry reached over plain HTTP (HOST:PORT); repeatable.
    #[arg(long)]
    pub insecure_registry: Vec<String>,
    /// Where the containers' CRI-format logs are written.
    #[arg(long, default_value = "/var/log/pods")]
    pub pod_logs_dir: PathBuf,
    /// A container's log is rotated when it grows past this many bytes.
    #[arg(long, default_value_t = 10 << 20)]
    pub container_log_max_size: u64,
    /// How often (seconds) a pod's configMap, secret and downwardAPI volume files are refreshed
    /// (the kubelet's sync frequency, one minute by default).
    #[arg(long, default_value_t = 60)]
    pub volume_sync_seconds: u64,
    /// The port of the node API (HTTPS, on the node IP).
    #[arg(long, default_value_t = 10250)]
    pub port: u16,
    /// The node API's serving certificate (PEM; default: a self-signed one).
    #[arg(long, requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The key of --tls-cert-file (PEM).
    #[arg(long, requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,
    /// The CA whose client certificates the node API serves (default: the kubeconfig's CA).
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// Hard eviction thresholds: `SIGNAL<QUANTITY` or `SIGNAL<PERCENT%`, comma-separated, for the
    /// signals memory.available and nodefs.available.
    #[arg(long, default_value = crate::eviction::DEFAULT_EVICTION_HARD)]
    pub eviction_hard: crate::eviction::Thresholds,
    /// Soft eviction thresholds, as --eviction-hard; each counts once its signal has stayed past
    /// it for its --eviction-soft-grace-period.
    #[arg(long, default_value = "")]
    pub eviction_soft: crate::eviction::Thresholds,
    /// The soft thresholds' grace periods: `SIGNAL=DURATION`, comma-separated
    /// (`memory.available=1m30s`).
    #[arg(long, default_value = "")]
    pub eviction_soft_grace_period: crate::eviction::GracePeriods,
    /// The longest termination grace period (seconds) a pod evicted by a soft threshold gets
    /// (less if its own terminationGracePeriodSeconds is shorter).
    #[arg(long, default_value_t = 0)]
    pub eviction_max_pod_grace_period: u32,
    /// How long a pressure condition stays True after its threshold was last met.
    #[arg(long, default_value = "5m", value_parser = crate::eviction::parse_duration)]
    pub eviction_pressure_transition_period: std::time::Duration,
    /// How often the eviction signals are observed (and at most one pod evicted).
    #[arg(long, default_value = "10s", value_parser = crate::eviction::parse_duration)]
    pub eviction_monitoring_period: std::time::Duration,
    /// The percent of the image filesystem's disk in use at which unused images are collected;
    /// 100 turns image garbage collection off.
    #[arg(long, default_value_t = 85)]
    pub image_gc_high_threshold: u8,
    /// The percent of disk usage image garbage collection brings the image filesystem down to.
    #[arg(long, default_value_t = 80)]
    pub image_gc_low_threshold: u8,
    /// How long an image stays unused before it may be collected.
    #[arg(long, default_value = "2m", value_parser = crate::eviction::parse_duration)]
    pub minimum_image_ttl_duration: std::time::Duration,
    /// How often the image filesystem's usage is checked (fixed at five minutes in the kubelet).
    #[arg(long, default_value = "5m", value_parser = crate::eviction::parse_duration)]
    pub image_gc_period: std::time::Duration,
    /// How often the QoS tiers' cpu weights are put back: fixed at one minute in the kubelet,
    /// so hidden; tests shorten it.
    #[arg(long, hide = true, default_value = "1m", value_parser = crate::eviction::parse_duration)]
    pub qos_update_period: std::time::Duration,
}

/// Finds `name` next to the running kubelet, then on PATH.
pub fn find_companion(name: &str) -> anyhow::Result<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .filter(|p| p.is_file());
    if let Some(p) = beside {
        return Ok(p);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is neither next to the kubelet nor on PATH"))
}

/// Runs the node agent until it is stopped. Its pods outlive it: a kubelet started again
/// adopts them.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    run_until(args, std::future::pending(), None).await
}

/// Runs the node agent until `stop` yields a grace period, then stops the node as a whole:
/// every pod stopped within that grace period at most and cleaned up, then the pod network
/// (bridge, routes, rules) and the pods' cgroup root removed. The pods' API objects stay, so a
/// node started again with the same directories runs them again. `share_client`, when given,
/// receives the node's API client once the node has its credentials: a process running the
/// node's other components (the proxy) uses it, and so follows its certificate's rotation.
pub async fn run_until(
    args: AgentArgs,
    stop: impl std::future::Future<Output = std::time::Duration>,
    share_client: Option<tokio::sync::oneshot::Sender<kube::Client>>,
) -> anyhow::Result<()> {
    let kubeconfig = args
        .kubeconfig
        .clone()
        .context("--kubeconfig is required to run the node agent")?;
    let facts = crate::host::HostFacts::read();
    let node_name = args
        .node_name
        .clone()
        .unwrap_or_else(|| facts.hostname.to_lowercase());
    let node_ip = match args.node_ip {
        Some(ip) => ip,
        None => crate::host::first_host_address()
            .context("the host has no non-loopback address; pass --node-ip")?,
    };
    let runtime_path = match &args.runtime_path {
        Some(p) => p.clone(),
        None => find_companion("skiff-runc")?,
    };
    let shim_path = match &args.shim_path {
        Some(p) => p.clone(),
        None => find_companion("skiff-shim")?,
    };
    for dir in [&args.root_dir, &args.run_dir, &args.pod_logs_dir]
        .into_iter()
        .chain(&args.pod_manifest_path)
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let cert_dir = args
        .cert_dir
        .clone()
        .unwrap_or_else(|| args.root_dir.join("pki"));
    let certificates = crate::client_certificate::ClientCertificateConfig {
        node_name: node_name.clone(),
        kubeconfig: kubeconfig.clone(),
        bootstrap_kubeconfig: args.bootstrap_kubeconfig.clone(),
        cert_dir: cert_dir.clone(),
        api_servers: args.api_servers.clone(),
    };
    crate::client_certificate::bootstrap(&certificates).await?;
    let rotating = skiff_client::rotating::RotatingClient::new(
        skiff_client::failover::client(&kubeconfig, &args.api_servers).await?,
    );
    let client = rotating.client();
    if let Some(share) = share_client {
        let _ = share.send(client.clone());
    }
    let rotation = args.rotate_certificates.then(|| {
        tokio::spawn(crate::client_certificate::run_rotation(
            certificates,
            rotating,
        ))
    });
    let runtime = crate::runtime::Runtime::new(runtime_path, args.run_dir.join("runtime"));
    let runtime_version = runtime
        .version()
        .await
        .context("asking the OCI runtime for its version")?;

    let images =
        crate::image::ImageStore::open(&args.root_dir).context("opening the image store")?;
    let eviction_config = crate::eviction::EvictionConfig {
        thresholds: args.eviction_hard.clone(),
        soft: args.eviction_soft.clone(),
        soft_grace: args.eviction_soft_grace_period.clone(),
        max_pod_grace_period: Duration::from_secs(args.eviction_max_pod_grace_period.into()),
        monitoring_period: args
            .eviction_monitoring_period
            .max(Duration::from_millis(100)),
        pressure_transition_period: args.eviction_pressure_transition_period,
    };
    eviction_config.validate().map_err(anyhow::Error::msg)?;
    let image_gc = crate::image_gc::ImageGcPolicy {
        high_threshold_percent: args.image_gc_high_threshold,
        low_threshold_percent: args.image_gc_low_threshold,
        min_age: args.minimum_image_ttl_duration,
        period: args.image_gc_period.max(Duration::from_millis(100)),
    };
    image_gc.validate().map_err(anyhow::Error::msg)?;
    let eviction = crate::eviction::EvictionManager::new(eviction_config);
    let node = Arc::new(NodeAgent::new(
        client.clone(),
        NodeConfig {
            name: node_name.clone(),
            node_ip,
            max_pods: args.max_pods,
            root_dir: args.root_dir.clone(),
            runtime_version,
            kubelet_port: args.port,
        },
        images.clone(),
        eviction.subscribe(),
    ));
    let registered = node.register().await?;
    let node_uid = registered.metadata.uid.clone().unwrap_or_default();
    let lease = tokio::spawn({
        let node = node.clone();
        async move { node.run_lease(node_uid).await }
    });
    let status = tokio::spawn({
        let node = node.clone();
        async move { node.run_status().await }
    });

    let config = crate::pod_worker::KubeletConfig {
        node_name,
        node_ip,
        root_dir: args.root_dir.clone(),
        run_dir: args.run_dir.clone(),
        pod_logs_dir: args.pod_logs_dir.clone(),
        cgroup_root: args.cgroup_root.clone(),
        pod_pids_limit: (args.pod_max_pids >= 0).then_some(args.pod_max_pids),
        shim_path,
        container_log_max_size: args.container_log_max_size,
        cluster_dns: args.cluster_dns.clone(),
        cluster_domain: args.cluster_domain.clone(),
        insecure_registries: args.insecure_registry.clone(),
        node_cpus: facts.cpus,
        node_memory_bytes: facts.memory_bytes,
        volume_sync_period: std::time::Duration::from_secs(args.volume_sync_seconds.max(1)),
        pod_manifest_path: args.pod_manifest_path.clone(),
        image_gc,
        qos_update_period: args.qos_update_period.max(Duration::from_millis(100)),
    };
    let serving = args.rotate_server_certificates.then(|| {
        let serving_config = crate::serving_certificate::ServingConfig {
            node_name: config.node_name.clone(),
            node_ip,
            cert_dir: cert_dir.clone(),
        };
        let serving = crate::serving_certificate::load(&serving_config);
        let task = tokio::spawn(crate::serving_certificate::run(
            serving_config,
            client.clone(),
            serving.clone(),
        ));
        (serving, task)
    });
    let (serving, serving_task) = serving.unzip();
    start_node_api(
        &args,
        &kubeconfig,
        &config,
        serving,
        client.clone(),
        runtime.clone(),
    )
    .await?;
    let (network, network_task) =
        crate::node_network::start(crate::node_network::NodeNetworkConfig {
            client: client.clone(),
            node_name: config.node_name.clone(),
            state_dir: args.root_dir.join("network"),
        });
    let cgroup_root = config.cgroup_root.clone();
    crate::pod_manager::run_until(
        client,
        Arc::new(config),
        Arc::new(runtime),
        images,
        network.clone(),
        eviction,
        stop,
    )
    .await?;
    for task in [lease, status, network_task]
        .into_iter()
        .chain(rotation)
        .chain(serving_task)
    {
        task.abort();
    }
    crate::node_network::remove(&network)
        .await
        .context("removing the pod network")?;
    crate::cgroups::remove_root(&crate::cgroups::CgroupMounts::read(), &cgroup_root);
    tracing::info!("node stopped");
    Ok(())
}

/// Starts the node API (`--port`) in the background.
async fn start_node_api(
    args: &AgentArgs,
    kubeconfig: &Path,
    config: &crate::pod_worker::KubeletConfig,
    serving: Option<Arc<crate::serving_certificate::ServingCertificate>>,
    client: Client,
    runtime: crate::runtime::Runtime,
) -> anyhow::Result<()> {
    use crate::server::tls;
    let client_ca = match &args.client_ca_file {
        Some(path) => tls::read_certs(path)?,
        None => tls::kubeconfig_ca(kubeconfig).await?,
    };
    let tls = tls::server_config(tls::TlsOptions {
        cert_file: args.tls_cert_file.clone(),
        key_file: args.tls_private_key_file.clone(),
        resolver: serving.map(|s| s as Arc<dyn rustls::server::ResolvesServerCert>),
        client_ca,
        names: vec![config.node_name.clone(), config.node_ip.to_string()],
    })
    .context("the node API's TLS")?;
    crate::server::start(crate::server::NodeServerConfig {
        addr: std::net::SocketAddr::new(config.node_ip, args.port),
        tls,
        node_name: config.node_name.clone(),
        run_dir: config.run_dir.clone(),
        pod_logs_dir: config.pod_logs_dir.clone(),
        runtime: Arc::new(runtime),
        client,
        configz: crate::server::configz::document(config, args.port, args.max_pods),
    })
    .await
}
