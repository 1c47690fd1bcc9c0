//! `skiff-proxy bench`: for each mode and Service count (10 endpoints each), the time and rule text
//! size of a full sync and of a partial sync after one EndpointSlice change (the model from the API
//! objects, as the sync loop's [`Builder`] keeps it, + render + install, i.e. a change's path to
//! the rules minus the watch delivery; wall-clock and CPU time), of a restart's first sync (a new
//! process's full sync over the rules the last one left), the time from an EndpointSlice change to
//! the first connection through the rule it makes (a probe connecting in a loop meanwhile), and the
//! connect time to the first and the last Service in rule order.
//!
//! It runs in a network namespace of its own (unshared before any thread starts), so the
//! machine's rules are never touched.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::dataplane::{self, Mode, RenderConfig};
use crate::model::{Builder, Family};

const ENDPOINTS: usize = 10;
/// The address every endpoint of the first and last Services uses (so they have one endpoint
/// each): a listener in the benchmark's namespace.
const LOCAL_ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 244, 255, 1);
const CONNECTS: usize = 200;
/// The endpoint port every Service's slice names, and the one the last Service's slice moves to
/// for the change-to-rule latency.
const ENDPOINT_PORT: u16 = 8080;
const MOVED_PORT: u16 = 8081;

fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn name(i: usize) -> String {
    format!("svc-{i:05}")
}

fn service(i: usize) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "bench", "name": name(i), "resourceVersion": "1"},
        "spec": {"clusterIP": cluster_ip(i).to_string(), "ports": [{"name": "http", "port": 80}]}
    }))
    .expect("service")
}

fn slice(i: usize, n: usize, endpoints: usize) -> EndpointSlice {
    slice_on_port(i, n, endpoints, ENDPOINT_PORT)
}

/// Service `i`'s slice; its resourceVersion tells its versions apart as an API server's would.
fn slice_on_port(i: usize, n: usize, endpoints: usize, port: u16) -> EndpointSlice {
    let eps: Vec<serde_json::Value> = (0..endpoints)
        .map(|e| {
            let ip = if i == 0 || i == n - 1 {
                LOCAL_ENDPOINT
            } else {
                let k = i * ENDPOINTS + e;
                Ipv4Addr::new(10, 244, (k / 250 % 250) as u8, (k % 250 + 1) as u8)
            };
            serde_json::json!({"addresses": [ip.to_string()], "conditions": {"ready": true}, "nodeName": "bench"})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "bench", "name": format!("{}-1", name(i)),
                     "resourceVersion": format!("{endpoints}.{port}"),
                     "labels": {"kubernetes.io/service-name": name(i)}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": eps
    }))
    .expect("slice")
}

struct Row {
    mode: Mode,
    services: usize,
    full: Timed,
    full_bytes: usize,
    partial: Timed,
    partial_bytes: usize,
    /// A new process's first (full) sync over the installed rules.
    restart: Timed,
    /// EndpointSlice change handed over → first connection through the new rule.
    change_to_rule: Duration,
    connect_first: Duration,
    connect_last: Duration,
}

/// Wall-clock and CPU time (ours and the rule tools', user and system) of one step: on a
/// shared, loaded machine the CPU time is the steadier figure.
#[derive(Clone, Copy)]
struct Timed {
    wall: Duration,
    cpu: Duration,
}

fn cpu_time() -> Duration {
    let used = |who| {
        // SAFETY: getrusage fills the zeroed struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut u) };
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        tv(u.ru_utime) + tv(u.ru_stime)
    };
    used(libc::RUSAGE_SELF) + used(libc::RUSAGE_CHILDREN)
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Timed) {
    let (wall, cpu) = (Instant::now(), cpu_time());
    let out = f();
    let t = Timed {
        wall: wall.elapsed(),
        cpu: cpu_time() - cpu,
    };
    (out, t)
}

fn mean_connect(addr: SocketAddr) -> anyhow::Result<Duration> {
    let start = Instant::now();
    for _ in 0..CONNECTS {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    }
    Ok(start.elapsed() / CONNECTS as u32)
}

fn measure(mode: Mode, n: usize) -> anyhow::Result<Row> {
    use anyhow::Context;
    let services: Vec<Service> = (0..n).map(service).collect();
    let mut slices: Vec<EndpointSlice> = (0..n).map(|i| slice(i, n, ENDPOINTS)).collect();
    let cfg = RenderConfig {
        cluster_cidr: Some("10.244.0.0/16".parse().expect("cidr")),
        ..Default::default()
    };
    let mut plane = dataplane::new(mode);
    let mut builder = Builder::new(Family::V4, "bench");

    let (applied, full) = timed(|| {
        let (model, _) = builder.build(&services, &slices);
        plane.sync(model, &cfg, true)
    });
    let full_bytes = applied
        .with_context(|| format!("{mode:?} full sync of {n} Services"))?
        .bytes;

    // One EndpointSlice loses an endpoint.
    slices[n / 2] = slice(n / 2, n, ENDPOINTS - 1);
    let (applied, partial) = timed(|| {
        let (model, _) = builder.build(&services, &slices);
        plane.sync(model, &cfg, false)
    });
    let partial_bytes = applied
        .with_context(|| format!("{mode:?} partial sync of {n} Services"))?
        .bytes;

    // A restart: a new process's first sync over what the last one installed.
    plane = dataplane::new(mode);
    builder = Builder::new(Family::V4, "bench");
    let (applied, restart) = timed(|| {
        let (model, _) = builder.build(&services, &slices);
        plane.sync(model, &cfg, true)
    });
    applied.with_context(|| format!("{mode:?} restart's sync of {n} Services"))?;

    let first = SocketAddr::from((cluster_ip(0), 80));
    let last = SocketAddr::from((cluster_ip(n - 1), 80));
    let connect_first = mean_connect(first).context("connecting to the first Service")?;
    let connect_last = mean_connect(last).context("connecting to the last Service")?;
    let change_to_rule = change_to_rule(last, || {
        slices[n - 1] = slice_on_port(n - 1, n, ENDPOINTS, MOVED_PORT);
        let (model, _) = builder.build(&services, &slices);
        plane.sync(model, &cfg, false).map(|_| ())
    })
    .with_context(|| format!("{mode:?} change-to-rule latency at {n} Services"))?;
    dataplane::cleanup_all()?;
    Ok(Row {
        mode,
        services: n,
        full,
        full_bytes,
        partial,
        partial_bytes,
        restart,
        change_to_rule,
        connect_first,
        connect_last,
    })
}

/// The time from `change` starting (the last Service's endpoint moving to [`MOVED_PORT`]) to
/// the first connection a probe, connecting to `service` in a loop from before the change,
/// makes to the moved endpoint: the rule is then in the kernel.
fn change_to_rule(
    service: SocketAddr,
    change: impl FnOnce() -> Result<(), dataplane::Error>,
) -> anyhow::Result<Duration> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let moved = TcpListener::bind((LOCAL_ENDPOINT, MOVED_PORT))?;
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let probe = {
        let done = done.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let _ = TcpStream::connect_timeout(&service, Duration::from_secs(1));
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let start = Instant::now();
    let changed = change();
    let accepted = changed.map(|()| {
        moved.set_nonblocking(true)?;
        loop {
            match moved.accept() {
                Ok(_) => return Ok(start.elapsed()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() > Duration::from_secs(30) {
                        anyhow::bail!("no connection reached the moved endpoint in 30 s");
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
                Err(e) => return Err(e.into()),
            }
        }
    });
    done.store(true, Ordering::Relaxed);
    let _ = probe.join();
    accepted?
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Runs the benchmark for `sizes` in `modes`, printing a row as each is measured.
pub fn run(modes: &[Mode], sizes: &[usize]) -> anyhow::Result<()> {
    use anyhow::Context;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .context("unsharing a private network namespace (needs root)")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        crate::netlink::set_up_loopback(LOCAL_ENDPOINT).await?;
        crate::netlink::ensure_service_route(&["10.96.0.0/12".parse().expect("cidr")]).await
    })
    .context("setting up the benchmark namespace")?;
    let listener =
        TcpListener::bind((LOCAL_ENDPOINT, ENDPOINT_PORT)).context("endpoint listener")?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });

    println!(
        "{:<9} {:>8} {:>9} {:>12} {:>9} {:>11} {:>15} {:>9} {:>11} {:>15} {:>16} {:>16} {:>15}",
        "mode",
        "services",
        "full ms",
        "full cpu ms",
        "full KiB",
        "partial ms",
        "partial cpu ms",
        "partial B",
        "restart ms",
        "restart cpu ms",
        "slice→rule ms",
        "connect 1st µs",
        "connect last µs"
    );
    for &mode in modes {
        for &n in sizes {
            let r = measure(mode, n.max(2))?;
            println!(
                "{:<9} {:>8} {:>9} {:>12} {:>9} {:>11} {:>15} {:>9} {:>11} {:>15} {:>16} {:>16.0} {:>15.0}",
                format!("{:?}", r.mode).to_lowercase(),
                r.services,
                ms(r.full.wall),
                ms(r.full.cpu),
                r.full_bytes / 1024,
                ms(r.partial.wall),
                ms(r.partial.cpu),
                r.partial_bytes,
                ms(r.restart.wall),
                ms(r.restart.cpu),
                ms(r.change_to_rule),
                r.connect_first.as_secs_f64() * 1e6,
                r.connect_last.as_secs_f64() * 1e6,
            );
        }
    }
    Ok(())
}
