//! Cluster DNS benchmark: `dnsperf` against the proxy's DNS server and, in the same run, against
//! `unbound` serving the same names as a local zone, inside a network namespace of its own.
//!
//! Prints queries/s at saturation and p50/p99 latency at a fixed rate, for cluster names and for
//! outside names (cached by the proxy after the first query, local data for unbound), the
//! heap the records of 1,000 Services hold, and the wall and CPU time of one rebuild.
//!
//! `cargo bench -p skiff-proxy --bench dns` (root; Debian packages dnsperf, unbound,
//! bind9-dnsutils). `DNS_BENCH_SERVICES` (default 1000), `DNS_BENCH_SECONDS` per run (default 3) and
//! `DNS_BENCH_ROUNDS` (default 3).

#[path = "../tests/dns_support/mod.rs"]
mod dns_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dns_support::{Netns, Unbound, require, start_unbound, text};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use skiff_proxy::dns::{DnsConfig, DnsServer};

const PROXY_DNS: &str = "10.96.0.10";
const UNBOUND: &str = "10.96.0.11";
const OUTSIDE_NAMES: usize = 100;

fn main() {
    require("dnsperf", &["-h"], "Debian package dnsperf");
    let services: usize = env_or("DNS_BENCH_SERVICES", 1000);
    let seconds: u64 = env_or("DNS_BENCH_SECONDS", 3);
    let rounds: usize = env_or("DNS_BENCH_ROUNDS", 3).max(1);
    let ns = Netns::new("skiff-dnsbench", &[PROXY_DNS, UNBOUND]);
    let dir = tempfile::tempdir().expect("temporary directory");

    let objects = synthetic_services(services);
    let _unbound = start_unbound(
        &ns,
        dir.path(),
        Unbound {
            addr: UNBOUND,
            threads: 2,
            local_data: &unbound_zone(&objects),
            probe: "host-0.example.test",
        },
    );

    // The proxy's DNS server on a two-worker runtime inside the namespace (unbound gets two
    // threads too); the records are handed over as the proxy's sync loop would.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = ns.thread(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let dns = DnsServer::new(DnsConfig {
                listen: format!("{PROXY_DNS}:53").parse().unwrap(),
                cluster_domain: "cluster.local".into(),
                ttl: 5,
                upstreams: vec![format!("{UNBOUND}:53").parse().unwrap()],
                upstream_timeout: Duration::from_secs(1),
                cache_entries: 10_000,
            })
            .expect("dns server");
            let records = records_of_10000_services(&dns);
            dns.update(&objects, &[] as &[EndpointSlice]);
            let listening = dns.bind().await.expect("binding");
            ready_tx.send(records).expect("ready");
            tokio::select! {
                served = listening.run() => panic!("DNS server stopped: {served:?}"),
                _ = stop_rx => {}
            }
        })
    });
    let (memory, rebuild, rebuild_cpu) = ready_rx.recv().expect("server started");

    let cluster = query_file(
        dir.path(),
        "cluster",
        (0..services).map(|i| format!("svc-{i}.bench.svc.cluster.local A")),
    );
    let outside = query_file(
        dir.path(),
        "outside",
        (0..OUTSIDE_NAMES).map(|i| format!("host-{i}.example.test A")),
    );
    // Warm the proxy's cache with every outside name.
    dnsperf(&ns, PROXY_DNS, &outside, &["-n", "1"]);

    println!(
        "cluster DNS: {services} Services, {OUTSIDE_NAMES} outside names, median of {rounds} runs of {seconds} s"
    );
    println!(
        "{:<32} {:>10} {:>10} {:>10}",
        "server / names", "queries/s", "p50 µs", "p99 µs"
    );
    // The runs alternate between the servers, round after round, so a change in the machine's
    // load falls on both; each figure is the median of its rounds.
    let runs = [
        ("skiff-proxy", PROXY_DNS, "cluster names", &cluster),
        ("unbound", UNBOUND, "cluster names", &cluster),
        ("skiff-proxy", PROXY_DNS, "cached outside names", &outside),
        ("unbound", UNBOUND, "cached outside names", &outside),
    ];
    let mut qps: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    for _ in 0..rounds {
        for (i, (_, addr, _, file)) in runs.iter().enumerate() {
            qps[i].push(throughput(&ns, addr, file, seconds));
        }
    }
    for ((server, addr, label, file), mut rounds) in runs.into_iter().zip(qps) {
        rounds.sort_by(f64::total_cmp);
        let median = rounds[rounds.len() / 2];
        let (p50, p99) = latency(&ns, addr, file, seconds, median);
        println!(
            "{:<32} {median:>10.0} {p50:>10.0} {p99:>10.0}",
            format!("{server}, {label}")
        );
    }
    println!("heap held by the records: {memory:.0} KiB per 1,000 Services");
    println!(
        "one rebuild of the records of 10,000 Services: {rebuild:?} wall, {rebuild_cpu:?} CPU"
    );

    let _ = stop_tx.send(());
    let _ = server.join();
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// ClusterIP Services `svc-<i>` in namespace `bench`, each with a named port.
fn synthetic_services(count: usize) -> Vec<Service> {
    (0..count)
        .map(|i| Service {
            metadata: ObjectMeta {
                namespace: Some("bench".into()),
                name: Some(format!("svc-{i}")),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(cluster_ip(i)),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

fn cluster_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 96 + i / 65_000, (i / 250) % 256, i % 250 + 1)
}

/// The same names for unbound: the cluster zone with the Services' A records, and the outside
/// names.
fn unbound_zone(services: &[Service]) -> String {
    let mut zone = String::from("    local-zone: \"cluster.local.\" static\n");
    for (i, _) in services.iter().enumerate() {
        zone += &format!(
            "    local-data: \"svc-{i}.bench.svc.cluster.local. 5 IN A {}\"\n",
            cluster_ip(i)
        );
    }
    zone += "    local-zone: \"example.test.\" static\n";
    for i in 0..OUTSIDE_NAMES {
        zone += &format!(
            "    local-data: \"host-{i}.example.test. 300 IN A 192.0.2.{}\"\n",
            i % 250 + 1
        );
    }
    zone
}

/// The records of 10,000 Services: the heap they hold, per 1,000 Services, and the wall and CPU
/// time one rebuild of the index takes (CPU time does not depend on the machine's load).
fn records_of_10000_services(dns: &DnsServer) -> (f64, Duration, Duration) {
    let many = synthetic_services(10_000);
    let none: &[EndpointSlice] = &[];
    let before = HEAP.live();
    let start = Instant::now();
    let cpu_start = thread_cpu_time();
    dns.update(&many, none);
    let cpu = thread_cpu_time() - cpu_start;
    let wall = start.elapsed();
    let after = HEAP.live();
    dns.update(&[] as &[Service], none);
    ((after - before) as f64 / 1024.0 / 10.0, wall, cpu)
}

fn thread_cpu_time() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("thread CPU clock");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// The system allocator, counting the bytes live on the heap.
struct CountingAllocator {
    live: AtomicI64,
}

#[global_allocator]
static HEAP: CountingAllocator = CountingAllocator {
    live: AtomicI64::new(0),
};

impl CountingAllocator {
    fn live(&self) -> i64 {
        self.live.load(Ordering::Relaxed)
    }
}

// SAFETY: every call is passed to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.live.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.live.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.live
            .fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn query_file(dir: &Path, name: &str, lines: impl Iterator<Item = String>) -> String {
    let path = dir.join(format!("{name}.queries"));
    let body: Vec<String> = lines.collect();
    std::fs::write(&path, body.join("\n") + "\n").expect("query file");
    path.to_str().expect("UTF-8 path").to_string()
}

fn dnsperf(ns: &Netns, server: &str, file: &str, extra: &[&str]) -> String {
    let out = ns
        .cmd("dnsperf")
        .args(["-s", server, "-d", file])
        .args(extra)
        .stderr(Stdio::null())
        .output()
        .expect("running dnsperf");
    text(&out.stdout)
}

/// Queries/s with as many queries in flight as dnsperf keeps by default and 4 clients.
fn throughput(ns: &Netns, server: &str, file: &str, seconds: u64) -> f64 {
    let out = dnsperf(
        ns,
        server,
        file,
        &["-l", &seconds.to_string(), "-c", "4", "-q", "200"],
    );
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Queries per second:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no queries/s in dnsperf's output:\n{out}"))
}

/// p50 and p99 latency (µs) at half the measured saturation rate, from dnsperf's per-query
/// report (`-v`).
fn latency(ns: &Netns, server: &str, file: &str, seconds: u64, qps: f64) -> (f64, f64) {
    let rate = ((qps / 2.0) as u64).max(100).to_string();
    let out = dnsperf(
        ns,
        server,
        file,
        &["-l", &seconds.to_string(), "-Q", &rate, "-v"],
    );
    // Lines such as `> NOERROR svc-1.bench.svc.cluster.local A 0.000123`.
    let mut micros: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with('>'))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1e6)
        .collect();
    assert!(
        !micros.is_empty(),
        "no per-query latencies in dnsperf's output"
    );
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}
