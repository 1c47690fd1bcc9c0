//! `skiff bench --mode soak`: a server started as a process of its own (this binary, or another
//! build given with `--server-binary` to compare against), loaded for a bounded time by writers
//! patching pods (paced at `--write-rate`, or each as fast as it is answered) while watchers
//! follow them — half by `spec.nodeName` (as kubelets watch), half by a label — and measured
//! from outside: write throughput and latency, event delivery latency
//! (from the write being sent to a watcher reading its event) and the server's resident memory
//! (current and peak) at the start, the middle and the end of the load.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchParams};
use kube::core::Request;
use kube::{Api, Client};

use super::api::{BenchError, Row, concurrently, namespace, row};

#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub duration: Duration,
    pub writers: usize,
    /// Patches per second from all writers together; 0 for as fast as answered.
    pub write_rate: u32,
    pub watchers: usize,
    pub pods: usize,
    /// The `skiff` binary whose `server` is measured.
    pub server_binary: PathBuf,
}

/// The server's memory at one moment, in KiB, with the machine's load and the CPU time the
/// server and this bench process have used so far (both share the machine's cores: a bench
/// process using most of a core distorts delivery latency).
#[derive(Debug, Clone)]
pub struct Memory {
    pub when: &'static str,
    pub rss_kib: u64,
    pub peak_kib: u64,
    /// The 1-minute load average.
    pub load: f64,
    pub server_cpu: Duration,
    pub bench_cpu: Duration,
}

#[derive(Debug, Clone)]
pub struct SoakReport {
    pub rows: Vec<Row>,
    pub memory: Vec<Memory>,
    /// Events expected by the watchers (two per write) and read by them.
    pub expected_events: usize,
    pub delivered_events: usize,
    /// Watches the server ended (closed as too slow, or timed out) and the client reopened.
    pub rewatches: usize,
    pub write_errors: usize,
}

const NAMESPACE: &str = "soak";
const SENT: &str = "bench.skiff.dev/sent-ns";

/// The server process, killed when dropped.
struct ServerProcess {
    child: Child,
    dir: PathBuf,
}

impl ServerProcess {
    fn start(binary: &PathBuf) -> Result<Self, BenchError> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!("skiff-soak-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| BenchError::Setup(e.to_string()))?;
        let log = std::fs::File::create(dir.join("server.log"))
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        let child = Command::new(binary)
            .arg("server")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--disable-scheduler", "--disable-controllers"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| BenchError::Setup(format!("starting {}: {e}", binary.display())))?;
        Ok(Self { child, dir })
    }

    fn memory(&self, when: &'static str) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Memory {
            when,
            rss_kib: field("VmRSS:"),
            peak_kib: field("VmHWM:"),
            load,
            server_cpu: cpu_time(&self.child.id().to_string()),
            bench_cpu: cpu_time("self"),
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// User and system CPU time of a process (`self` or a pid).
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command (which may hold spaces), from the third on: utime and stime
    // are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn pod(i: usize, nodes: usize, shards: usize) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("pod-{i:06}")),
            labels: Some([("shard".to_string(), (i % shards).to_string())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(format!("node-{}", i % nodes)),
            containers: vec![Container {
                name: "c".into(),
                image: Some("busybox".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The part of a watch line a watcher reads. The rest of the object is skipped unparsed: with a
/// thousand watchers in this one process, decoding whole Pods would make the bench, not the
/// server, the bottleneck of delivery.
#[derive(serde::Deserialize)]
struct Line {
    #[serde(rename = "type")]
    ty: String,
    object: Head,
}

#[derive(serde::Deserialize)]
struct Head {
    #[serde(default)]
    metadata: Meta,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Meta {
    resource_version: Option<String>,
    annotations: Option<std::collections::HashMap<String, String>>,
}

/// Follows one selection of pods until `stop`, recording how long each change took to arrive;
/// reopens the watch (from the last resourceVersion read) whenever the server ends it.
async fn follow(
    client: Client,
    params: WatchParams,
    mut rv: String,
    base: Instant,
    stop: Arc<AtomicBool>,
    latencies: Arc<Mutex<Vec<Duration>>>,
    rewatches: Arc<AtomicUsize>,
) {
    let pods = Request::new(format!("/api/v1/namespaces/{NAMESPACE}/pods"));
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    while !stop.load(Ordering::Relaxed) {
        let opened = match pods.watch(&params, &rv) {
            Ok(req) => client.request_stream(req).await.ok(),
            Err(_) => None,
        };
        let Some(body) = opened else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            // Too old a revision (or the server busy): start again from now.
            if let Ok(l) = api.list_metadata(&ListParams::default().limit(1)).await {
                rv = l.metadata.resource_version.unwrap_or(rv);
            }
            continue;
        };
        let mut lines = std::pin::pin!(body.lines());
        while let Some(Ok(line)) = lines.next().await {
            let now = base.elapsed();
            let Ok(ev) = serde_json::from_str::<Line>(&line) else {
                break;
            };
            if ev.ty == "ERROR" {
                break;
            }
            let meta = ev.object.metadata;
            if let Some(sent) = meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(SENT))
                .and_then(|s| s.parse::<u64>().ok())
            {
                let sent = Duration::from_nanos(sent);
                latencies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(now.saturating_sub(sent));
            }
            if let Some(v) = meta.resource_version {
                rv = v;
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
        if !stop.load(Ordering::Relaxed) {
            rewatches.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub async fn run(cfg: &SoakConfig) -> Result<SoakReport, BenchError> {
    let server = ServerProcess::start(&cfg.server_binary)?;
    let client = tokio::time::timeout(
        Duration::from_secs(60),
        skiff_client::wait_for_api(&server.dir.join("admin.kubeconfig")),
    )
    .await
    .map_err(|_| BenchError::Setup("the server did not start".into()))?;
    measure(client, &server, cfg).await
}

async fn measure(
    client: Client,
    server: &ServerProcess,
    cfg: &SoakConfig,
) -> Result<SoakReport, BenchError> {
    let writers = cfg.writers.max(1);
    let pods = cfg.pods.max(1);
    let nodes = (cfg.watchers / 2).max(1);
    let shards = (cfg.watchers - cfg.watchers / 2).max(1);
    namespace(&client, NAMESPACE).await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let a = api.clone();
    let (lat, wall) = concurrently(pods, writers.min(32), move |i| {
        let a = a.clone();
        async move {
            a.create(&PostParams::default(), &pod(i, nodes, shards))
                .await?;
            Ok(())
        }
    })
    .await?;
    let mut rows = vec![row(format!("create {pods} pods (setup)"), lat, wall)];
    let rv = api
        .list_metadata(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();

    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let deliveries = Arc::new(Mutex::new(Vec::new()));
    let rewatches = Arc::new(AtomicUsize::new(0));
    let mut watchers = Vec::new();
    let selections = (0..nodes)
        .map(|n| WatchParams::default().fields(&format!("spec.nodeName=node-{n}")))
        .chain((0..shards).map(|s| WatchParams::default().labels(&format!("shard={s}"))));
    for params in selections {
        watchers.push(tokio::spawn(follow(
            client.clone(),
            params.timeout(290),
            rv.clone(),
            base,
            stop.clone(),
            deliveries.clone(),
            rewatches.clone(),
        )));
    }
    // Let the watches open before the load starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut memory = vec![server.memory("start")];

    let deadline = Instant::now() + cfg.duration;
    let write_errors = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    // Paced writers take turns: writer k starts k/rate seconds in, then writes every
    // writers/rate seconds; a writer whose patch outlasts its period skips the missed turns.
    let period = (cfg.write_rate > 0)
        .then(|| Duration::from_secs_f64(writers as f64 / f64::from(cfg.write_rate)));
    for k in 0..writers {
        let (api, next, errors) = (api.clone(), next.clone(), write_errors.clone());
        let mut pace = period.map(|p| {
            let first = tokio::time::Instant::now() + p.mul_f64(k as f64 / writers as f64);
            let mut pace = tokio::time::interval_at(first, p);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            pace
        });
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                if let Some(pace) = pace.as_mut() {
                    pace.tick().await;
                }
                let i = next.fetch_add(1, Ordering::Relaxed) % pods;
                let sent = base.elapsed().as_nanos().to_string();
                let patch = serde_json::json!({"metadata": {"annotations": {SENT: sent}}});
                let t = Instant::now();
                match api
                    .patch(
                        &format!("pod-{i:06}"),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(_) => lat.push(t.elapsed()),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            lat
        }));
    }
    tokio::time::sleep(cfg.duration / 2).await;
    memory.push(server.memory("middle"));
    let mut writes = Vec::new();
    for t in tasks {
        writes.extend(t.await.map_err(|e| BenchError::Setup(e.to_string()))?);
    }
    let wall = started.elapsed();
    memory.push(server.memory("end"));
    // The last events still on their way.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for w in watchers {
        w.abort();
    }
    let written = writes.len();
    let pace = match cfg.write_rate {
        0 => "unpaced".to_string(),
        r => format!("{r}/s"),
    };
    rows.push(row(
        format!("patch a pod ({writers} writers, {pace})"),
        writes,
        wall,
    ));
    let delivered = std::mem::take(&mut *deliveries.lock().unwrap_or_else(|p| p.into_inner()));
    let delivered_events = delivered.len();
    rows.push(row(
        format!("event delivery ({} watchers)", nodes + shards),
        delivered,
        wall,
    ));
    Ok(SoakReport {
        rows,
        memory,
        expected_events: written * 2,
        delivered_events,
        rewatches: rewatches.load(Ordering::Relaxed),
        write_errors: write_errors.load(Ordering::Relaxed),
    })
}

pub fn render(r: &SoakReport) -> String {
    let mut out = super::api::render(&r.rows);
    out.push_str(&format!(
        "events delivered {} of {} expected; watches reopened {}; failed writes {}\n",
        r.delivered_events, r.expected_events, r.rewatches, r.write_errors
    ));
    out.push_str(&format!(
        "{:<10} {:>12} {:>12} {:>8} {:>14} {:>13}\n",
        "server", "RSS MiB", "peak MiB", "load 1m", "server CPU s", "bench CPU s"
    ));
    for m in &r.memory {
        out.push_str(&format!(
            "{:<10} {:>12.1} {:>12.1} {:>8.2} {:>14.1} {:>13.1}\n",
            m.when,
            m.rss_kib as f64 / 1024.0,
            m.peak_kib as f64 / 1024.0,
            m.load,
            m.server_cpu.as_secs_f64(),
            m.bench_cpu.as_secs_f64()
        ));
    }
    out
}
