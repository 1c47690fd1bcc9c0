//! `skiff bench --mode failover`: two `skiff server` processes (this binary) with their
//! schedulers on one etcd; `--kills` times, the one leading the scheduler is killed with
//! SIGKILL, a pod is created at once through the other, and the time from the kill to that pod
//! being bound (by the new leader, once the dead one's Lease expired) is measured; the killed
//! server is restarted as a follower before the next round. Prints each time and the p50.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use super::api::BenchError;

#[derive(Debug, Clone)]
pub struct FailoverConfig {
    pub etcd_endpoints: Vec<String>,
    pub kills: usize,
}

/// One server process: its data directory and port survive restarts.
struct ServerProcess {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    etcd: Vec<String>,
    prefix: String,
    child: Option<Child>,
}

fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::Setup(format!("finding a free port: {e}")))
}

impl ServerProcess {
    fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// Starts the process (a fresh log each start) and waits until it serves.
    async fn start(&mut self) -> Result<Client, BenchError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| BenchError::Setup(e.to_string()))?;
        let log =
            std::fs::File::create(self.log()).map_err(|e| BenchError::Setup(e.to_string()))?;
        let child = Command::new(&self.binary)
            .arg("server")
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--etcd-endpoints", &self.etcd.join(",")])
            .args(["--etcd-prefix", &self.prefix])
            .arg("--disable-controllers")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| BenchError::Setup(format!("starting {}: {e}", self.binary.display())))?;
        self.child = Some(child);
        let kubeconfig = self.dir.join("admin.kubeconfig");
        tokio::time::timeout(
            Duration::from_secs(60),
            skiff_client::wait_for_api(&kubeconfig),
        )
        .await
        .map_err(|_| {
            BenchError::Setup(format!(
                "the server in {} did not serve",
                self.dir.display()
            ))
        })
    }

    fn leads_scheduling(&self) -> bool {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("became leader") && l.contains("kube-scheduler"))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pod(name: &str) -> Result<Pod, BenchError> {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/pause:3"}]},
    }))
    .map_err(|e| BenchError::Setup(e.to_string()))
}

/// A Ready node for the pods to land on (no kubelet: the controllers are off, so nothing marks
/// it unreachable).
async fn make_node(client: &Client) -> Result<(), BenchError> {
    let api: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "failover-node",
        "labels": {"kubernetes.io/hostname": "failover-node"}}}))
    .map_err(|e| BenchError::Setup(e.to_string()))?;
    api.create(&PostParams::default(), &node).await?;
    let res = json!({"cpu": "64", "memory": "256Gi", "pods": "110"});
    api.patch_status(
        "failover-node",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"capacity": res, "allocatable": res,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}})),
    )
    .await?;
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}}))
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    match Api::<ServiceAccount>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &sa)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn wait_bound(api: &Api<Pod>, name: &str) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(p) = api.get(name).await
            && p.spec.and_then(|s| s.node_name).is_some()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!(
                "{name} was not bound within 2 minutes"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The time from each kill to the first pod bound after it.
pub async fn run(cfg: &FailoverConfig) -> Result<Vec<Duration>, BenchError> {
    let binary = std::env::current_exe().map_err(|e| BenchError::Setup(e.to_string()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let base = std::env::temp_dir().join(format!("skiff-failover-{}-{stamp}", std::process::id()));
    let mut servers = Vec::new();
    for i in 0..2 {
        servers.push(ServerProcess {
            binary: binary.clone(),
            dir: base.join(format!("server-{i}")),
            port: free_port()?,
            etcd: cfg.etcd_endpoints.clone(),
            prefix: format!("/skiff-failover-{stamp}"),
            child: None,
        });
    }
    let result = measure(cfg, &mut servers).await;
    drop(servers);
    let _ = std::fs::remove_dir_all(&base);
    result
}

async fn measure(
    cfg: &FailoverConfig,
    servers: &mut [ServerProcess],
) -> Result<Vec<Duration>, BenchError> {
    let mut clients = Vec::new();
    for s in servers.iter_mut() {
        clients.push(s.start().await?);
    }
    make_node(&clients[0]).await?;
    // The first leader: whichever took the Lease.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut leader = loop {
        if let Some(i) = servers.iter().position(ServerProcess::leads_scheduling) {
            break i;
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(
                "no server took the scheduler's Lease".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut times = Vec::new();
    for k in 0..cfg.kills {
        let survivor = 1 - leader;
        let pods: Api<Pod> = Api::namespaced(clients[survivor].clone(), "default");
        servers[leader].kill();
        let killed = Instant::now();
        let name = format!("failover-{k}");
        pods.create(&PostParams::default(), &pod(&name)?).await?;
        wait_bound(&pods, &name).await?;
        let took = killed.elapsed();
        eprintln!(
            "kill {}: bound {:.2} s after the kill",
            k + 1,
            took.as_secs_f64()
        );
        times.push(took);
        if !servers[survivor].leads_scheduling() {
            return Err(BenchError::Setup(
                "the pod was bound, but not by the surviving server".into(),
            ));
        }
        // The killed one comes back as a follower (with a fresh log) for the next round.
        clients[leader] = servers[leader].start().await?;
        leader = survivor;
    }
    Ok(times)
}

pub fn render(times: &[Duration], lease: Duration) -> String {
    let mut sorted = times.to_vec();
    sorted.sort();
    let secs = |d: &Duration| format!("{:.2}", d.as_secs_f64());
    let mut out = format!(
        "leader kill -> first pod bound by the new leader (scheduler Lease {} s)\n",
        lease.as_secs()
    );
    out += &format!(
        "  each: {}\n",
        times.iter().map(secs).collect::<Vec<_>>().join(" s, ") + " s"
    );
    if let Some(p50) = sorted.get(sorted.len().saturating_sub(1) / 2) {
        out += &format!(
            "  p50: {} s   min: {} s   max: {} s   over {} kills\n",
            secs(p50),
            secs(&sorted[0]),
            secs(&sorted[sorted.len() - 1]),
            sorted.len()
        );
    }
    out
}
