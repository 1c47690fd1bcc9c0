//! `skiff bench`: starts an API server on a loopback port in a scratch directory and measures it
//! through a real Kubernetes client (kube-rs over HTTPS with the admin certificate): create, get
//! and list throughput and latency, and the time to fan one change out to many watchers.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use tokio::sync::mpsc;

use skiff_apiserver::server::{self, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Setup(String),
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Sizes of the collections to create and list.
    pub sizes: Vec<usize>,
    pub watchers: usize,
    pub concurrency: usize,
    pub fanout_rounds: usize,
    /// Keep the objects in this etcd (under a prefix of their own) instead of the embedded store.
    pub etcd: Option<server::EtcdConfig>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            sizes: vec![1000, 10_000],
            watchers: 100,
            concurrency: 16,
            fanout_rounds: 20,
            etcd: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub operation: String,
    pub count: usize,
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
}

pub(crate) fn row(operation: String, mut lat: Vec<Duration>, wall: Duration) -> Row {
    lat.sort();
    let pick = |q: f64| {
        lat.get(((lat.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    Row {
        count: lat.len(),
        per_second: lat.len() as f64 / wall.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
        operation,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// The results as a text table.
pub fn render(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<34} {:>7} {:>10} {:>9} {:>9}\n",
        "operation", "count", "ops/s", "p50 ms", "p99 ms"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<34} {:>7} {:>10.1} {:>9} {:>9}\n",
            r.operation,
            r.count,
            r.per_second,
            ms(r.p50),
            ms(r.p99)
        ));
    }
    out
}

pub(crate) fn configmap(name: String) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some([("bench".to_string(), "yes".to_string())].into()),
            ..Default::default()
        },
        data: Some([("key".to_string(), "value".repeat(8))].into()),
        ..Default::default()
    }
}

pub(crate) async fn concurrently<F, Fut>(
    n: usize,
    concurrency: usize,
    op: F,
) -> Result<(Vec<Duration>, Duration), BenchError>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), BenchError>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, BenchError>(lat);
                }
                let t = Instant::now();
                op(i).await?;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.map_err(|e| BenchError::Setup(e.to_string()))??);
    }
    Ok((all, start.elapsed()))
}

pub(crate) async fn namespace(client: &Client, name: &str) -> Result<(), BenchError> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

/// Measures the API server through `client`.
pub async fn measure(client: Client, cfg: &BenchConfig) -> Result<Vec<Row>, BenchError> {
    let mut rows = Vec::new();
    for &size in &cfg.sizes {
        let ns = format!("bench-{size}");
        namespace(&client, &ns).await?;
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let a = api.clone();
        let (lat, wall) = concurrently(size, cfg.concurrency, move |i| {
            let a = a.clone();
            async move {
                a.create(&PostParams::default(), &configmap(format!("cm-{i:06}")))
                    .await?;
                Ok(())
            }
        })
        .await?;
        rows.push(row(
            format!("create ({size} objects, {} clients)", cfg.concurrency),
            lat,
            wall,
        ));
        let gets = size.min(2000);
        let a = api.clone();
        let (lat, wall) = concurrently(gets, cfg.concurrency, move |i| {
            let a = a.clone();
            async move {
                a.get(&format!("cm-{:06}", (i * 7919) % size)).await?;
                Ok(())
            }
        })
        .await?;
        rows.push(row(
            format!("get (of {size}, {} clients)", cfg.concurrency),
            lat,
            wall,
        ));
        let lists = if size >= 10_000 { 10 } else { 50 };
        let a = api.clone();
        let (lat, wall) = concurrently(lists, 1, move |_| {
            let a = a.clone();
            async move {
                let l = a.list(&ListParams::default()).await?;
                // Every namespace also holds the cluster CA's ConfigMap.
                let listed = l
                    .items
                    .iter()
                    .filter(|c| c.metadata.name.as_deref() != Some("kube-root-ca.crt"))
                    .count();
                if listed != size {
                    return Err(BenchError::Setup(format!("listed {listed} of {size}")));
                }
                Ok(())
            }
        })
        .await?;
        rows.push(row(format!("list {size} objects"), lat, wall));
    }

    // Fan-out: one change, many watchers.
    let ns = "bench-watch";
    namespace(&client, ns).await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let created = api
        .create(&PostParams::default(), &configmap("target".into()))
        .await?;
    let start_rv = created
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let mut watchers = Vec::new();
    for _ in 0..cfg.watchers {
        let stream = api.watch(&WatchParams::default(), &start_rv).await?;
        let tx = tx.clone();
        watchers.push(tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(ev)) = stream.next().await {
                if let WatchEvent::Modified(cm) = ev {
                    let rv = cm.metadata.resource_version.unwrap_or_default();
                    if tx.send(rv).is_err() {
                        return;
                    }
                }
            }
        }));
    }
    let mut lat = Vec::new();
    let start = Instant::now();
    for round in 0..cfg.fanout_rounds {
        let t = Instant::now();
        let patch = serde_json::json!({"data": {"round": round.to_string()}});
        let cm = api
            .patch("target", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let rv = cm.metadata.resource_version.unwrap_or_default();
        let mut seen = 0;
        while seen < cfg.watchers {
            let got = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .map_err(|_| BenchError::Setup("watchers stopped receiving".into()))?
                .ok_or_else(|| BenchError::Setup("all watchers ended".into()))?;
            if got == rv {
                seen += 1;
            }
        }
        lat.push(t.elapsed());
    }
    let wall = start.elapsed();
    rows.push(row(
        format!("fan-out 1 change to {} watchers", cfg.watchers),
        lat,
        wall,
    ));
    for w in watchers {
        w.abort();
    }
    Ok(rows)
}

/// Starts a server in a scratch directory, measures it, stops it, and removes the directory.
pub async fn run(cfg: &BenchConfig) -> Result<Vec<Row>, BenchError> {
    let cfg = cfg.clone();
    let etcd = cfg.etcd.clone();
    with_server(
        etcd,
        move |client, _| async move { measure(client, &cfg).await },
    )
    .await
}

/// Starts a server in a scratch directory (its objects in `etcd` under a prefix of their own,
/// or in the embedded store), runs `f` with an administrator's client and the data directory,
/// stops the server, and removes the directory.
pub(crate) async fn with_server<T, F, Fut>(
    etcd: Option<server::EtcdConfig>,
    f: F,
) -> Result<T, BenchError>
where
    F: FnOnce(Client, PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<T, BenchError>>,
{
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir: PathBuf =
        std::env::temp_dir().join(format!("skiff-bench-{}-{stamp}", std::process::id()));
    let scfg = ServerConfig {
        data_dir: dir.clone(),
        // Port 0: the server picks a free one and names it in the kubeconfig.
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        service_cidr: "10.96.0.0/12".into(),
        compaction_interval: Duration::from_secs(300),
        etcd: etcd.map(|mut e| {
            e.prefix = format!("/skiff-bench-{stamp}");
            e
        }),
        bookmark_interval: Duration::from_secs(60),
        limits: Default::default(),
        advertise_address: None,
        cluster_signing_duration: skiff_apiserver::auth::csr::DEFAULT_SIGNING_DURATION,
        endpoint_lease_ttl: server::DEFAULT_ENDPOINT_LEASE_TTL,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(scfg, async move {
        let _ = stop_rx.await;
    }));
    let kubeconfig = dir.join("admin.kubeconfig");
    let client = tokio::time::timeout(
        Duration::from_secs(30),
        skiff_client::wait_for_api(&kubeconfig),
    )
    .await
    .map_err(|_| BenchError::Setup("the server did not start".into()))?;
    let result = f(client, dir.clone()).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Runs of the same workload on several stores as one table: each store's ops/s, p50 and p99
/// side by side, a row per operation (the rows of the first run name them).
pub fn render_side_by_side(runs: &[(&str, Vec<Row>)]) -> String {
    let mut out = format!("{:<34} {:>7}", "", "");
    for (store, _) in runs {
        out.push_str(&format!(" | {store:<28}"));
    }
    out.push_str(&format!("\n{:<34} {:>7}", "operation", "count"));
    for _ in runs {
        out.push_str(&format!(
            " | {:>10} {:>8} {:>8}",
            "ops/s", "p50 ms", "p99 ms"
        ));
    }
    out.push('\n');
    let Some((_, first)) = runs.first() else {
        return out;
    };
    for (i, r) in first.iter().enumerate() {
        out.push_str(&format!("{:<34} {:>7}", r.operation, r.count));
        for (_, rows) in runs {
            match rows.get(i) {
                Some(r) => out.push_str(&format!(
                    " | {:>10.1} {:>8} {:>8}",
                    r.per_second,
                    ms(r.p50),
                    ms(r.p99)
                )),
                None => out.push_str(&format!(" | {:>28}", "-")),
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_table() {
        let lat: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let r = row("x".into(), lat, Duration::from_secs(1));
        assert_eq!(
            (r.count, r.p50, r.p99),
            (100, Duration::from_millis(50), Duration::from_millis(99))
        );
        assert!(render(std::slice::from_ref(&r)).contains("100.0"));
        let both = render_side_by_side(&[("embedded", vec![r.clone()]), ("etcd", vec![r])]);
        assert!(both.contains("embedded") && both.contains("etcd"), "{both}");
        assert_eq!(
            both.lines().nth(2).unwrap().matches("100.0").count(),
            2,
            "{both}"
        );
    }
}
