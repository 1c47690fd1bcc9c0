//! The proxy's HTTP faces: `/healthz` and `/livez` (sync recency, as kube-proxy reports it),
//! `/metrics` in Prometheus text format, and the per-Service healthCheckNodePort servers that
//! tell a load balancer whether this node has local endpoints (externalTrafficPolicy Local).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::dns::DnsServer;

/// A Prometheus histogram with fixed buckets.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// kube-proxy's buckets: 1 ms doubling to ~16 s.
const SYNC_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384,
];
const PROGRAMMING_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Debug)]
struct Inner {
    sync_duration: Histogram,
    programming: Histogram,
    last_sync: Option<SystemTime>,
    /// When the oldest change not yet in the rules arrived.
    pending_since: Option<Instant>,
    sync_errors: u64,
    rules_bytes: usize,
}

/// What the sync loop reports and the HTTP endpoints read.
#[derive(Debug, Clone)]
pub struct Status {
    inner: Arc<Mutex<Inner>>,
    /// A sync older than this with changes waiting makes the proxy unhealthy.
    health_timeout: Duration,
}

impl Status {
    pub fn new(health_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                sync_duration: Histogram::new(SYNC_BUCKETS),
                programming: Histogram::new(PROGRAMMING_BUCKETS),
                last_sync: None,
                pending_since: None,
                sync_errors: 0,
                rules_bytes: 0,
            })),
            health_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A Service or EndpointSlice changed; the rules now lag behind.
    pub fn changed(&self) {
        self.lock().pending_since.get_or_insert_with(Instant::now);
    }

    /// Takes the arrival time of the oldest change a sync starting now will include.
    pub fn take_pending(&self) -> Option<Instant> {
        self.lock().pending_since.take()
    }

    /// A sync that failed: its changes are pending again.
    pub fn failed(&self, pending: Option<Instant>) {
        let mut s = self.lock();
        s.sync_errors += 1;
        if let Some(p) = pending {
            let earliest = s.pending_since.map_or(p, |q| q.min(p));
            s.pending_since = Some(earliest);
        }
    }

    pub fn synced(&self, took: Duration, pending: Option<Instant>, rules_bytes: usize) {
        let mut s = self.lock();
        s.sync_duration.observe(took.as_secs_f64());
        if let Some(p) = pending {
            s.programming.observe(p.elapsed().as_secs_f64());
        }
        s.last_sync = Some(SystemTime::now());
        if rules_bytes > 0 {
            s.rules_bytes = rules_bytes;
        }
    }

    /// Healthy once a sync happened and no change has waited longer than the timeout.
    fn healthy(&self) -> (bool, f64) {
        let s = self.lock();
        let last = s
            .last_sync
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        let waiting_too_long = s
            .pending_since
            .is_some_and(|p| p.elapsed() > self.health_timeout);
        (s.last_sync.is_some() && !waiting_too_long, last)
    }

    fn metrics(&self) -> String {
        let s = self.lock();
        let mut out = String::new();
        s.sync_duration.render(
            &mut out,
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
        );
        s.programming.render(
            &mut out,
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds (change seen to rules in place)",
        );
        let last = s
            .last_sync
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        let _ = writeln!(
            out,
            "# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds The last time proxy rules were successfully synced\n\
             # TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge\n\
             kubeproxy_sync_proxy_rules_last_timestamp_seconds {last}"
        );
        let _ = writeln!(
            out,
            "# HELP skiff_proxy_sync_errors_total Syncs whose rules could not be installed\n\
             # TYPE skiff_proxy_sync_errors_total counter\n\
             skiff_proxy_sync_errors_total {}",
            s.sync_errors
        );
        let _ = writeln!(
            out,
            "# HELP skiff_proxy_rules_bytes Size of the last rule text written\n\
             # TYPE skiff_proxy_rules_bytes gauge\n\
             skiff_proxy_rules_bytes {}",
            s.rules_bytes
        );
        out
    }
}

async fn healthz(State((status, node, _)): State<HealthState>) -> impl IntoResponse {
    let (ok, last) = status.healthy();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let body = serde_json::json!({"lastUpdated": last, "currentTime": now, "nodeName": node});
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn metrics(State((status, _, dns)): State<HealthState>) -> impl IntoResponse {
    let mut body = status.metrics();
    if let Some(dns) = dns {
        body.push_str(&dns.metrics().render());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// What the health server reads: the sync status, the node's name and the DNS counters.
type HealthState = (Status, String, Option<DnsServer>);

/// Serves /healthz, /livez and /metrics on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    status: Status,
    node: String,
    dns: Option<DnsServer>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/metrics", get(metrics))
        .with_state((status, node, dns));
    axum::serve(listener, app).await
}

/// One Service's healthCheckNodePort answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHealth {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

type Shared = Arc<Mutex<ServiceHealth>>;

async fn service_health(State(h): State<Shared>) -> impl IntoResponse {
    let h = h.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let body = serde_json::json!({
        "service": {"namespace": h.namespace, "name": h.name},
        "localEndpoints": h.local_endpoints,
        "serviceProxyHealthy": true,
    });
    let code = if h.local_endpoints > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body.to_string(),
    )
}

/// The healthCheckNodePort listeners, one per port, kept in line with the model.
#[derive(Default)]
pub struct ServiceHealthServers {
    servers: BTreeMap<u16, (Shared, tokio::task::JoinHandle<()>)>,
}

impl ServiceHealthServers {
    /// Starts, updates and stops listeners so exactly `want` are served.
    pub async fn reconcile(&mut self, want: BTreeMap<u16, ServiceHealth>) {
        self.servers.retain(|port, (_, task)| {
            let keep = want.contains_key(port);
            if !keep {
                task.abort();
            }
            keep
        });
        for (port, health) in want {
            if let Some((shared, _)) = self.servers.get(&port) {
                *shared.lock().unwrap_or_else(|e| e.into_inner()) = health;
                continue;
            }
            // Every address of both families (`::` takes IPv4 too); `0.0.0.0` where the node
            // has no IPv6.
            let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
            let bound = match tokio::net::TcpListener::bind(any6).await {
                Ok(l) => Ok(l),
                Err(_) => {
                    tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await
                }
            };
            let listener = match bound {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(port, error = %e, service = %format!("{}/{}", health.namespace, health.name), "cannot serve healthCheckNodePort");
                    continue;
                }
            };
            let shared = Arc::new(Mutex::new(health));
            let app = Router::new()
                .fallback(service_health)
                .with_state(shared.clone());
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            self.servers.insert(port, (shared, task));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.1\"} 1\n"));
        assert!(out.contains("x_bucket{le=\"1\"} 2\n"));
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count 3\n"));
    }

    #[test]
    fn health_needs_a_sync_and_no_stale_change() {
        let s = Status::new(Duration::from_millis(0));
        assert!(!s.healthy().0);
        s.synced(Duration::from_millis(3), None, 10);
        assert!(s.healthy().0);
        s.changed();
        std::thread::sleep(Duration::from_millis(2));
        assert!(!s.healthy().0);
        let p = s.take_pending();
        s.synced(Duration::from_millis(3), p, 0);
        assert!(s.healthy().0);
        assert!(
            s.metrics()
                .contains("kubeproxy_network_programming_duration_seconds_count 1")
        );
    }
}
