//! `skiff bench --mode cluster`: the end-to-end figures on this machine — a 3-node
//! `skiff cluster` brought up (time until every node is Ready), a 30-pod Deployment of the
//! busybox image run to Ready (time from its creation), and the peak resident memory of each
//! process (the server; each node's agent, which carries its kubelet, proxy and DNS). The cluster
//! lives in a scratch directory and is taken down at the end, whatever happened.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::PostParams;

use crate::cluster::Cluster;

/// What was measured.
pub struct ClusterReport {
    pub nodes: usize,
    pub pods: usize,
    pub cluster_ready: Duration,
    pub pods_ready: Duration,
    /// (process, peak RSS in KiB).
    pub peaks: Vec<(String, u64)>,
}

pub async fn run(nodes: usize, pods: usize) -> anyhow::Result<ClusterReport> {
    let base = std::env::temp_dir().join(format!("skiff-bench-{}", std::process::id()));
    let name = format!("b{}", std::process::id() % 100_000);
    let cluster = Cluster::at(&base, &name)?;
    let archive = base.join("busybox.tar");
    skiff_kubelet::image::cli::run(
        &base,
        skiff_kubelet::image::cli::ImageCommand::BuildBusybox {
            output: archive.clone(),
            busybox: "/bin/busybox".into(),
            reference: "busybox:latest".into(),
        },
    )
    .await
    .context("building the busybox image (Debian package busybox-static)")?;
    let measured = measure(&cluster, nodes, pods, &archive).await;
    let removed = cluster.down().await;
    let _ = std::fs::remove_dir_all(&base);
    let report = measured?;
    removed?;
    Ok(report)
}

async fn measure(
    cluster: &Cluster,
    nodes: usize,
    pods: usize,
    archive: &Path,
) -> anyhow::Result<ClusterReport> {
    let started = Instant::now();
    cluster.up(nodes, &[]).await?;
    let cluster_ready = started.elapsed();
    cluster.load(archive).await?;
    let client = skiff_client::client(&cluster.kubeconfig()).await?;
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "bench", "namespace": "default"},
        "spec": {
            "replicas": pods,
            "selector": {"matchLabels": {"app": "bench"}},
            "template": {
                "metadata": {"labels": {"app": "bench"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "sleep", "image": "busybox:latest",
                        "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}]
                }
            }
        }
    }))?;
    let api: Api<Deployment> = Api::namespaced(client, "default");
    let created = Instant::now();
    api.create(&PostParams::default(), &deployment).await?;
    let deadline = created + Duration::from_secs(300);
    loop {
        let ready = api
            .get("bench")
            .await?
            .status
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        if ready as usize >= pods {
            break;
        }
        if Instant::now() > deadline {
            bail!("{ready} of {pods} pods Ready after 300s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pods_ready = created.elapsed();
    let peaks = cluster
        .processes()
        .into_iter()
        .filter_map(|(name, pid)| peak_rss_kib(pid).map(|kib| (name, kib)))
        .collect();
    Ok(ClusterReport {
        nodes,
        pods,
        cluster_ready,
        pods_ready,
        peaks,
    })
}

/// VmHWM of a process, in KiB.
fn peak_rss_kib(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub fn render(r: &ClusterReport) -> String {
    let mut out = format!(
        "{:<34} {:>10}\n{:<34} {:>9.2}s\n{:<34} {:>9.2}s\n",
        "measure",
        "value",
        format!("{} nodes Ready (cluster up)", r.nodes),
        r.cluster_ready.as_secs_f64(),
        format!("{} pods Ready (from create)", r.pods),
        r.pods_ready.as_secs_f64()
    );
    out.push_str(&format!("{:<34} {:>10}\n", "process", "peak MiB"));
    for (name, kib) in &r.peaks {
        out.push_str(&format!("{name:<34} {:>10.1}\n", *kib as f64 / 1024.0));
    }
    out
}
