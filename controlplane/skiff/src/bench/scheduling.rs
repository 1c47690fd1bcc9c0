//! `skiff bench --mode scheduling`: scheduling throughput in the shape of kube-scheduler's
//! scheduler_perf `SchedulingBasic` — N nodes (4 CPU, 32 Gi, 110 pods, as its node template),
//! some initial pods, then M measured pods (100m CPU, 500 Mi); pods per second from the first
//! creation to the last binding, seen through the real API server by a watch. The server and the
//! scheduler run in this process, the server on a loopback port in a scratch directory.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::Mutex;

use skiff_apiserver::server::{self, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Setup(String),
}

#[derive(Debug, Clone)]
pub struct PerfConfig {
    pub nodes: usize,
    pub init_pods: usize,
    pub pods: usize,
    pub concurrency: usize,
}

#[derive(Debug, Clone)]
pub struct PerfResult {
    pub nodes: usize,
    pub pods: usize,
    pub wall: Duration,
    pub pods_per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// The largest number of pods on one node, against the even share.
    pub max_per_node: usize,
}

pub fn render(r: &PerfResult) -> String {
    format!(
        "{:<34} {:>7} {:>7} {:>10} {:>9} {:>9} {:>9} {:>12}\n{:<34} {:>7} {:>7} {:>10.1} {:>9.1} {:>9.1} {:>9.2} {:>12}\n",
        "workload",
        "nodes",
        "pods",
        "pods/s",
        "p50 ms",
        "p99 ms",
        "wall s",
        "max/node",
        "SchedulingBasic (create→bound)",
        r.nodes,
        r.pods,
        r.pods_per_second,
        r.p50.as_secs_f64() * 1000.0,
        r.p99.as_secs_f64() * 1000.0,
        r.wall.as_secs_f64(),
        format!(
            "{} (even {})",
            r.max_per_node,
            r.pods.div_ceil(r.nodes.max(1))
        ),
    )
}

fn node(i: usize) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": format!("perf-node-{i:05}"), "labels": {"kubernetes.io/hostname": format!("perf-node-{i:05}")}},
    }))
    .expect("a node")
}

fn pod(name: String) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}, "limits": {"cpu": "100m", "memory": "500Mi"}}}]},
    }))
    .expect("a pod")
}

async fn parallel<F, Fut>(n: usize, concurrency: usize, f: F) -> Result<(), PerfError>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), PerfError>>,
{
    futures::stream::iter(0..n)
        .map(f)
        .buffer_unordered(concurrency.max(1))
        .try_collect::<()>()
        .await
}

/// Creates `count` pods named `prefix-i` and waits until they are all bound; returns when each
/// was created and bound.
async fn schedule(
    client: &Client,
    ns: &str,
    prefix: &str,
    count: usize,
    concurrency: usize,
) -> Result<(Vec<Duration>, Duration, HashMap<String, usize>), PerfError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let bound: Arc<Mutex<HashMap<String, (Instant, String)>>> = Arc::default();
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(0usize);
    let watch = {
        let (bound, api) = (bound.clone(), api.clone());
        let prefix = format!("{prefix}-");
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(
                watcher(api, watcher::Config::default())
                    .default_backoff()
                    .applied_objects()
            );
            while let Ok(Some(p)) = stream.try_next().await {
                let name = p.metadata.name.clone().unwrap_or_default();
                if !name.starts_with(&prefix) {
                    continue;
                }
                if let Some(n) = p.spec.and_then(|s| s.node_name) {
                    let mut b = bound.lock().await;
                    b.entry(name).or_insert((Instant::now(), n));
                    let _ = done_tx.send(b.len());
                }
            }
        })
    };
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let start = Instant::now();
    parallel(count, concurrency, |i| {
        let (api, created) = (api.clone(), created.clone());
        let name = format!("{prefix}-{i:06}");
        async move {
            let t = Instant::now();
            api.create(&PostParams::default(), &pod(name.clone()))
                .await?;
            created.lock().await.insert(name, t);
            Ok(())
        }
    })
    .await?;
    let deadline = Duration::from_secs(600);
    tokio::time::timeout(deadline, done_rx.wait_for(|n| *n >= count))
        .await
        .map_err(|_| {
            PerfError::Setup(format!(
                "not all {count} pods were bound within {deadline:?}"
            ))
        })?
        .map_err(|_| PerfError::Setup("the pod watch ended".into()))?;
    watch.abort();
    let bound = bound.lock().await;
    let created = created.lock().await;
    let last = bound.values().map(|(t, _)| *t).max().unwrap_or(start);
    let mut lat: Vec<Duration> = bound
        .iter()
        .filter_map(|(name, (t, _))| created.get(name).map(|c| t.saturating_duration_since(*c)))
        .collect();
    lat.sort();
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for (_, n) in bound.values() {
        *per_node.entry(n.clone()).or_default() += 1;
    }
    Ok((lat, last.duration_since(start), per_node))
}

/// Measures scheduling through `client`, whose server runs a scheduler.
pub async fn measure(client: Client, cfg: &PerfConfig) -> Result<PerfResult, PerfError> {
    let nodes: Api<Node> = Api::all(client.clone());
    parallel(cfg.nodes, cfg.concurrency, |i| {
        let nodes = nodes.clone();
        async move {
            let n = nodes.create(&PostParams::default(), &node(i)).await?;
            let status = json!({"status": {
                "capacity": {"cpu": "4", "memory": "32Gi", "pods": "110"},
                "allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}});
            nodes
                .patch_status(
                    n.metadata.name.as_deref().unwrap_or_default(),
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                )
                .await?;
            Ok(())
        }
    })
    .await?;
    if cfg.init_pods > 0 {
        schedule(&client, "default", "init", cfg.init_pods, cfg.concurrency).await?;
    }
    let (lat, wall, per_node) =
        schedule(&client, "default", "measured", cfg.pods, cfg.concurrency).await?;
    let pick = |q: f64| {
        lat.get(((lat.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    Ok(PerfResult {
        nodes: cfg.nodes,
        pods: cfg.pods,
        pods_per_second: cfg.pods as f64 / wall.as_secs_f64(),
        wall,
        p50: pick(0.5),
        p99: pick(0.99),
        max_per_node: per_node.values().copied().max().unwrap_or(0),
    })
}

/// Starts a server and a scheduler in this process, measures, and removes the scratch directory.
pub async fn run(cfg: &PerfConfig) -> Result<PerfResult, PerfError> {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| PerfError::Setup(format!("picking a port: {e}")))?
        .port();
    let dir = std::env::temp_dir().join(format!("skiff-schedbench-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let scfg = ServerConfig {
        data_dir: dir.clone(),
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        service_cidr: "10.96.0.0/12".into(),
        compaction_interval: Duration::from_secs(300),
        etcd: None,
        bookmark_interval: Duration::from_secs(60),
        limits: Default::default(),
        endpoint_lease_ttl: server::DEFAULT_ENDPOINT_LEASE_TTL,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(scfg, async move {
        let _ = stop_rx.await;
    }));
    let client = tokio::time::timeout(
        Duration::from_secs(30),
        skiff_client::wait_for_api(&dir.join("admin.kubeconfig")),
    )
    .await
    .map_err(|_| PerfError::Setup("the server did not start".into()))?;
    let scheduler = tokio::spawn(crate::components::run_scheduler(client.clone()));
    let result = measure(client, cfg).await;
    scheduler.abort();
    let _ = stop_tx.send(());
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}
