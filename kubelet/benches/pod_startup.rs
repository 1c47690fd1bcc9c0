//! `cargo bench -p skiff-kubelet --bench pod_startup` (as root, after
//! `cargo build --release -p skiff -p skiff-runtime`): a real node (`skiff server` and
//! `skiff-kubelet` in a network namespace, as the integration tests make it) per OCI runtime —
//! skiff-runc, Debian's runc and crun — printing side by side:
//!
//! - pod startup with the image present, created → Ready (seen on a watch): p50/p99 of 20 pods
//!   one at a time, and the time for a burst of 50 pods to be all Ready;
//! - the kubelet's RSS idle and with 50 pods; the shim's RSS per container, beside conmon's
//!   (a podman container with conmon, run in the same benchmark).
//!
//! `SKIFF_BENCH_RUNTIMES=runc,crun` (comma-separated names) measures only those runtimes.
//!
//! crun refuses this host's hybrid cgroup layout (hugetlb on the cgroup2 mount), so the whole
//! benchmark runs in a private mount namespace with /sys/fs/cgroup/unified unmounted (as the
//! runtime's lifecycle benchmark does): every runtime sees the same plain v1 layout.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};

const SINGLE: usize = 20;
const BURST: usize = 50;
const READY_LIMIT: Duration = Duration::from_secs(120);
/// How long the kubelet may take to stop and remove every pod (50 at once on a busy machine).
const REMOVE_LIMIT: Duration = Duration::from_secs(300);

struct Figures {
    single_p50: Duration,
    single_p99: Duration,
    burst: Duration,
    kubelet_idle_kib: u64,
    kubelet_busy_kib: u64,
    shim_kib: u64,
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the pod startup benchmark runs a node: run it as root"
    );
    // SKIFF_BENCH_RUNTIMES=runc,crun measures only those.
    let wanted = std::env::var("SKIFF_BENCH_RUNTIMES").ok();
    let wanted = |name: &str| {
        wanted
            .as_deref()
            .is_none_or(|w| w.split(',').any(|n| n == name))
    };
    let mut runtimes: Vec<(&str, PathBuf)> = Vec::new();
    if wanted("skiff-runc") {
        runtimes.push((
            "skiff-runc",
            common::binary(
                "skiff-runc",
                "cargo build --release -p skiff-runtime --bin skiff-runc",
            ),
        ));
    }
    for (name, path) in [("runc", "/usr/sbin/runc"), ("crun", "/usr/bin/crun")] {
        if !wanted(name) {
            continue;
        }
        if Path::new(path).exists() {
            runtimes.push((name, PathBuf::from(path)));
        } else {
            eprintln!("{path} missing (apt-get install -y {name}): not compared");
        }
    }
    private_cgroup_v1_view();
    let host_net = OwnedFd::from(std::fs::File::open("/proc/self/ns/net").expect("own netns"));
    let mut rows = Vec::new();
    for (name, path) in &runtimes {
        eprintln!("--- {name} ---");
        nix::sched::setns(&host_net, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns back");
        let runtime_path = path.to_string_lossy().into_owned();
        let node = common::Node::start_with(&["--runtime-path", &runtime_path]);
        let figures = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bench_node(&node)));
        // Out of the node's namespace before it is torn down (its processes are killed).
        nix::sched::setns(&host_net, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns back");
        drop(node);
        match figures {
            Ok(f) => rows.push((name.to_string(), f)),
            Err(_) => eprintln!("{name}: the benchmark failed (above); not in the table"),
        }
    }
    nix::sched::setns(&host_net, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns back");
    let conmon = conmon_rss_kib();

    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
    println!(
        "\n{:<12} {:>12} {:>12} {:>16} {:>14} {:>18} {:>12}",
        "runtime",
        "single p50",
        "single p99",
        format!("{BURST}-pod burst"),
        "kubelet idle",
        format!("kubelet {BURST} pods"),
        "shim RSS"
    );
    for (name, f) in &rows {
        println!(
            "{:<12} {:>12} {:>12} {:>16} {:>14} {:>18} {:>12}",
            name,
            ms(f.single_p50),
            ms(f.single_p99),
            ms(f.burst),
            mib(f.kubelet_idle_kib),
            mib(f.kubelet_busy_kib),
            format!("{} KiB", f.shim_kib)
        );
    }
    match conmon {
        Ok(k) => println!("conmon RSS (podman, same run): {k} KiB"),
        Err(e) => println!("conmon RSS: not measured ({e})"),
    }
}

/// The figures of one node.
fn bench_node(node: &common::Node) -> Figures {
    // This thread's sockets go into the node's namespace, where the API server listens.
    let ns = std::fs::File::open(format!("/var/run/netns/{}", node.netns.name)).expect("netns");
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let client = skiff_client::client(&node.kubeconfig())
            .await
            .expect("kube client");
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let mut ready = ReadyWatch::start(client.clone()).await;
        // Warm-up: the first pod waits for the pod network.
        create(&pods, "warmup").await;
        ready.wait_all(&["warmup".to_string()]).await;
        delete_all(&pods).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pid = node.kubelet_pid().expect("the kubelet runs");
        let kubelet_idle_kib = rss_kib(pid);

        let mut single = Vec::new();
        for i in 0..SINGLE {
            let name = format!("single-{i}");
            let began = Instant::now();
            create(&pods, &name).await;
            ready.wait_all(std::slice::from_ref(&name)).await;
            single.push(began.elapsed());
        }
        delete_all(&pods).await;

        let names: Vec<String> = (0..BURST).map(|i| format!("burst-{i}")).collect();
        let began = Instant::now();
        futures::future::join_all(names.iter().map(|n| create(&pods, n))).await;
        ready.wait_all(&names).await;
        let burst = began.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let kubelet_busy_kib = rss_kib(pid);
        let shims: Vec<u64> = processes_named("skiff-shim")
            .into_iter()
            .filter(|(_, args)| !args.contains(" pause "))
            .map(|(p, _)| rss_kib(p))
            .collect();
        let shim_kib = shims.iter().sum::<u64>() / shims.len().max(1) as u64;
        delete_all(&pods).await;

        single.sort();
        let pick =
            |q: f64| single[((single.len() as f64 * q).ceil() as usize).clamp(1, single.len()) - 1];
        Figures {
            single_p50: pick(0.50),
            single_p99: pick(0.99),
            burst,
            kubelet_idle_kib,
            kubelet_busy_kib,
            shim_kib,
        }
    })
}

/// When each pod of the namespace was first seen Ready, from one watch.
struct ReadyWatch {
    rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    ready: HashMap<String, Instant>,
}

impl ReadyWatch {
    async fn start(client: Client) -> ReadyWatch {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let api: Api<Pod> = Api::namespaced(client, "default");
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default()).boxed();
            while let Some(Ok(e)) = events.next().await {
                if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = e
                    && is_ready(&p)
                    && tx
                        .send(p.metadata.name.clone().unwrap_or_default())
                        .is_err()
                {
                    return;
                }
            }
        });
        ReadyWatch {
            rx,
            ready: HashMap::new(),
        }
    }

    async fn wait_all(&mut self, names: &[String]) {
        let deadline = Instant::now() + READY_LIMIT;
        while !names.iter().all(|n| self.ready.contains_key(n)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(name)) => {
                    self.ready.entry(name).or_insert_with(Instant::now);
                }
                _ => panic!("pods not Ready within {READY_LIMIT:?}"),
            }
        }
    }
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn create(pods: &Api<Pod>, name: &str) {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": "node-1",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": "busybox",
                "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
            }],
        },
    }))
    .expect("a pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("creating a pod");
}

/// Deletes every pod and waits until the kubelet has removed them.
async fn delete_all(pods: &Api<Pod>) {
    let _ = pods
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    let deadline = Instant::now() + REMOVE_LIMIT;
    while pods
        .list(&ListParams::default())
        .await
        .is_ok_and(|l| !l.items.is_empty())
    {
        assert!(Instant::now() < deadline, "pods not removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Processes whose program is `name`, with their command lines.
fn processes_named(name: &str) -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let program = args.split_whitespace().next()?;
            (Path::new(program).file_name()? == name).then_some((pid, args))
        })
        .collect()
}

/// conmon's RSS for one podman container (`sleep` in a busybox root filesystem), with podman's
/// state in temporary directories.
fn conmon_rss_kib() -> Result<u64, String> {
    if !Path::new("/usr/bin/podman").exists() {
        return Err("podman missing (apt-get install -y podman)".into());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).map_err(|e| e.to_string())?;
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sleep")).map_err(|e| e.to_string())?;
    let podman = |args: &[&str]| {
        Command::new("podman")
            .arg("--root")
            .arg(dir.path().join("storage"))
            .arg("--runroot")
            .arg(dir.path().join("run"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .args(args)
            .stdin(Stdio::null())
            .output()
    };
    let out = podman(&[
        "run",
        "-d",
        "--name",
        "skiff-bench-conmon",
        "--network",
        "none",
        // Without CAP_SYS_RESOURCE podman's default nofile limit cannot be set.
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
        "--rootfs",
        &rootfs.to_string_lossy(),
        "/bin/sleep",
        "3600",
    ])
    .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    std::thread::sleep(Duration::from_secs(1));
    let run_dir = dir.path().join("run").to_string_lossy().into_owned();
    let rss = processes_named("conmon")
        .into_iter()
        .find(|(_, args)| args.contains(&run_dir))
        .map(|(pid, _)| rss_kib(pid));
    let _ = podman(&["rm", "-f", "-t", "0", "skiff-bench-conmon"]);
    rss.ok_or_else(|| "no conmon process found for the container".to_string())
}

fn private_cgroup_v1_view() {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare mount namespace");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None::<&str>,
    )
    .expect("make / private");
    if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        umount2("/sys/fs/cgroup/unified", MntFlags::MNT_DETACH)
            .expect("unmount /sys/fs/cgroup/unified");
    }
}
