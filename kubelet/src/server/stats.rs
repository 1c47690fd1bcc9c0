//! `/stats/summary` (the Summary API's node, pods and containers) and `/metrics/resource` (the
//! kubelet's resource metrics in Prometheus text), both from the cgroups: cgroup v1's
//! `cpuacct.usage` and `memory.usage_in_bytes`/`memory.stat`, or v2's `cpu.stat` and
//! `memory.current`. The working set is the usage less the inactive file cache, as cAdvisor
//! counts it; the cpu rate is the change since the previous sample of the same cgroup.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::NodeServer;
use crate::cgroups::CgroupMounts;
use crate::containers;

/// The last cpu sample of each cgroup: (when, cumulative nanoseconds).
#[derive(Default)]
pub(super) struct CpuSamples(Mutex<HashMap<String, (DateTime<Utc>, u64)>>);

#[derive(Debug, Clone, Default)]
struct Usage {
    time: DateTime<Utc>,
    cpu_ns: Option<u64>,
    nano_cores: Option<u64>,
    memory: Option<u64>,
    working_set: Option<u64>,
    rss: Option<u64>,
}

struct ContainerUsage {
    name: String,
    start: DateTime<Utc>,
    usage: Usage,
}

struct PodUsage {
    namespace: String,
    name: String,
    uid: String,
    start: DateTime<Utc>,
    usage: Usage,
    containers: Vec<ContainerUsage>,
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A `key value` line of a stat file.
fn stat_field(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The cgroup's directory in the hierarchy of `controller` (v1), else in the v2 one.
fn dir(mounts: &CgroupMounts, controller: &str, cgroup: &str) -> Option<(PathBuf, bool)> {
    let rel = cgroup.trim_start_matches('/');
    match mounts.v1_dir(controller) {
        Some(d) => Some((d.join(rel), true)),
        None => mounts.v2.as_ref().map(|d| (d.join(rel), false)),
    }
}

impl CpuSamples {
    /// The cgroup's usage now; `None` when the cgroup is gone.
    fn usage(&self, mounts: &CgroupMounts, cgroup: &str) -> Option<Usage> {
        let time = Utc::now();
        let cpu_ns = match dir(mounts, "cpuacct", cgroup)? {
            (d, true) => read_u64(&d.join("cpuacct.usage")),
            (d, false) => stat_field(&d.join("cpu.stat"), "usage_usec").map(|us| us * 1000),
        };
        let (memory, inactive_file, rss) = match dir(mounts, "memory", cgroup)? {
            (d, true) => (
                read_u64(&d.join("memory.usage_in_bytes")),
                stat_field(&d.join("memory.stat"), "total_inactive_file"),
                stat_field(&d.join("memory.stat"), "total_rss"),
            ),
            (d, false) => (
                read_u64(&d.join("memory.current")),
                stat_field(&d.join("memory.stat"), "inactive_file"),
                stat_field(&d.join("memory.stat"), "anon"),
            ),
        };
        if cpu_ns.is_none() && memory.is_none() {
            return None;
        }
        let nano_cores = cpu_ns.and_then(|now_ns| {
            let mut samples = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let previous = samples.insert(cgroup.to_string(), (time, now_ns))?;
            let wall = (time - previous.0).num_nanoseconds()?;
            (wall > 0).then(|| {
                (now_ns.saturating_sub(previous.1) as u128 * 1_000_000_000 / wall as u128) as u64
            })
        });
        Some(Usage {
            time,
            cpu_ns,
            nano_cores,
            memory,
            working_set: memory.map(|m| m.saturating_sub(inactive_file.unwrap_or(0))),
            rss,
        })
    }
}

/// The node's and its running pods' usage.
fn collect(s: &NodeServer) -> (Usage, Vec<PodUsage>) {
    let node = s.cpu.usage(&s.cgroups, "/").unwrap_or_default();
    let (found, _) = containers::list(&s.run_dir);
    let mut pods: BTreeMap<String, PodUsage> = BTreeMap::new();
    for record in found {
        let Some(started) = &record.started else {
            continue;
        };
        if !record.running() {
            continue;
        }
        let Some(usage) = s.cpu.usage(&s.cgroups, &record.cgroup()) else {
            continue;
        };
        let meta = &record.meta;
        let pod = pods
            .entry(meta.pod_uid.clone())
            .or_insert_with(|| PodUsage {
                namespace: meta.pod_namespace.clone(),
                name: meta.pod_name.clone(),
                uid: meta.pod_uid.clone(),
                start: started.started_at,
                usage: s
                    .cpu
                    .usage(&s.cgroups, &meta.pod_cgroup)
                    .unwrap_or_default(),
                containers: Vec::new(),
            });
        pod.start = pod.start.min(started.started_at);
        pod.containers.push(ContainerUsage {
            name: meta.name.clone(),
            start: started.started_at,
            usage,
        });
    }
    (node, pods.into_values().collect())
}

fn cpu_json(u: &Usage) -> Value {
    json!({"time": u.time, "usageNanoCores": u.nano_cores, "usageCoreNanoSeconds": u.cpu_ns})
}

fn memory_json(u: &Usage, capacity: Option<u64>) -> Value {
    let mut m = json!({
        "time": u.time, "usageBytes": u.memory, "workingSetBytes": u.working_set,
        "rssBytes": u.rss,
    });
    if let (Some(cap), Some(ws)) = (capacity, u.working_set) {
        m["availableBytes"] = json!(cap.saturating_sub(ws));
    }
    m
}

/// The node's memory (`MemTotal` of /proc/meminfo).
fn node_memory_capacity() -> Option<u64> {
    stat_field(Path::new("/proc/meminfo"), "MemTotal:").map(|kb| kb * 1024)
}

pub(super) async fn summary(State(s): State<Arc<NodeServer>>) -> Response {
    let (node, pods) = collect(&s);
    let pods: Vec<Value> = pods
        .iter()
        .map(|p| {
            json!({
                "podRef": {"name": p.name, "namespace": p.namespace, "uid": p.uid},
                "startTime": p.start,
                "containers": p.containers.iter().map(|c| json!({
                    "name": c.name,
                    "startTime": c.start,
                    "cpu": cpu_json(&c.usage),
                    "memory": memory_json(&c.usage, None),
                })).collect::<Vec<_>>(),
                "cpu": cpu_json(&p.usage),
                "memory": memory_json(&p.usage, None),
            })
        })
        .collect();
    axum::Json(json!({
        "node": {
            "nodeName": s.node_name,
            "cpu": cpu_json(&node),
            "memory": memory_json(&node, node_memory_capacity()),
        },
        "pods": pods,
    }))
    .into_response()
}

fn label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// Appends one metric family: its help, type and samples (`labels`, value, time).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64, i64)]) {
    let _ = writeln!(out, "# HELP {name} [STABLE] {help}\n# TYPE {name} {kind}");
    for (labels, value, millis) in samples {
        let _ = writeln!(out, "{name}{labels} {value} {millis}");
    }
}

pub(super) async fn resource_metrics(State(s): State<Arc<NodeServer>>) -> Response {
    let (node, pods) = collect(&s);
    let at = |u: &Usage| u.time.timestamp_millis();
    let cpu = |u: &Usage| u.cpu_ns.map(|ns| ns as f64 / 1e9);
    let ws = |u: &Usage| u.working_set.map(|b| b as f64);
    let pod_labels = |p: &PodUsage| {
        format!(
            "{{namespace=\"{}\",pod=\"{}\"}}",
            label(&p.namespace),
            label(&p.name)
        )
    };
    let container_labels = |p: &PodUsage, c: &ContainerUsage| {
        format!(
            "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
            label(&c.name),
            label(&p.namespace),
            label(&p.name)
        )
    };
    let containers = |value: &dyn Fn(&ContainerUsage) -> Option<f64>| -> Vec<(String, f64, i64)> {
        pods.iter()
            .flat_map(|p| {
                p.containers.iter().filter_map(move |c| {
                    value(c).map(|v| (container_labels(p, c), v, at(&c.usage)))
                })
            })
            .collect()
    };
    let per_pod = |value: &dyn Fn(&Usage) -> Option<f64>| -> Vec<(String, f64, i64)> {
        pods.iter()
            .filter_map(|p| value(&p.usage).map(|v| (pod_labels(p), v, at(&p.usage))))
            .collect()
    };
    let node_sample = |value: Option<f64>| -> Vec<(String, f64, i64)> {
        value
            .map(|v| (String::new(), v, at(&node)))
            .into_iter()
            .collect()
    };
    let mut out = String::new();
    family(
        &mut out,
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
        &containers(&|c| cpu(&c.usage)),
    );
    family(
        &mut out,
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set of the container in bytes",
        &containers(&|c| ws(&c.usage)),
    );
    family(
        &mut out,
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds",
        &containers(&|c| Some(c.start.timestamp() as f64)),
    );
    family(
        &mut out,
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
        &node_sample(cpu(&node)),
    );
    family(
        &mut out,
        "node_memory_working_set_bytes",
        "gauge",
        "Current working set of the node in bytes",
        &node_sample(ws(&node)),
    );
    family(
        &mut out,
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
        &per_pod(&cpu),
    );
    family(
        &mut out,
        "pod_memory_working_set_bytes",
        "gauge",
        "Current working set of the pod in bytes",
        &per_pod(&ws),
    );
    let _ = writeln!(
        out,
        "# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise\n\
         # TYPE resource_scrape_error gauge\nresource_scrape_error 0"
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stat_fields_and_escapes_labels() {
        let dir = tempfile::tempdir().unwrap();
        let stat = dir.path().join("memory.stat");
        std::fs::write(&stat, "cache 5\ntotal_inactive_file 42\ntotal_rss 7\n").unwrap();
        assert_eq!(stat_field(&stat, "total_inactive_file"), Some(42));
        assert_eq!(stat_field(&stat, "total_rss"), Some(7));
        assert_eq!(stat_field(&stat, "total"), None);
        assert_eq!(label("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
        let mut out = String::new();
        family(&mut out, "m", "gauge", "h", &[("{a=\"1\"}".into(), 2.5, 7)]);
        assert_eq!(
            out,
            "# HELP m [STABLE] h\n# TYPE m gauge\nm{a=\"1\"} 2.5 7\n"
        );
    }
}
