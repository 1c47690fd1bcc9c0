//! `events --stats`: the container's cgroup counters in runc's stats JSON (types.Stats), read
//! from whichever hierarchy holds each controller, and the OOM-kill counter for OOM events.

use super::CgroupPaths;
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// "key value" lines (memory.stat, cpu.stat, memory.events, cpuacct.stat).
fn read_kv(path: &Path) -> Map<String, Value> {
    let mut out = Map::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        if let Some((k, v)) = line.split_once(' ')
            && let Ok(n) = v.trim().parse::<u64>()
        {
            out.insert(k.to_string(), n.into());
        }
    }
    out
}

fn num(m: &Map<String, Value>, k: &str) -> u64 {
    m.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// "max" (v2) and v1's "unlimited" huge number both read as runc reports them.
fn read_limit(path: &Path) -> u64 {
    match std::fs::read_to_string(path).map(|s| s.trim().to_string()) {
        Ok(s) if s == "max" => u64::MAX,
        Ok(s) => s.parse().unwrap_or(0),
        Err(_) => 0,
    }
}

impl CgroupPaths {
    /// The v2 directory, when it has `file` (that controller is enabled there).
    fn v2_with(&self, file: &str) -> Option<&PathBuf> {
        self.v2.as_ref().filter(|d| d.join(file).exists())
    }

    pub fn stats(&self) -> Value {
        let mut cpu = json!({"usage": {}, "throttling": {}});
        if let Some(d) = self.v1_dir("cpuacct") {
            let stat = read_kv(&d.join("cpuacct.stat"));
            // cpuacct.stat is in USER_HZ ticks (100/s).
            cpu["usage"] = json!({
                "total": read_u64(&d.join("cpuacct.usage")),
                "percpu": std::fs::read_to_string(d.join("cpuacct.usage_percpu")).unwrap_or_default()
                    .split_whitespace().filter_map(|n| n.parse::<u64>().ok()).collect::<Vec<_>>(),
                "kernel": num(&stat, "system") * 10_000_000,
                "user": num(&stat, "user") * 10_000_000,
            });
        }
        if let Some(d) = self.v1_dir("cpu") {
            let s = read_kv(&d.join("cpu.stat"));
            cpu["throttling"] = json!({"periods": num(&s, "nr_periods"), "throttledPeriods": num(&s, "nr_throttled"), "throttledTime": num(&s, "throttled_time")});
        } else if let Some(d) = self.v2_with("cpu.stat") {
            let s = read_kv(&d.join("cpu.stat"));
            cpu["usage"] = json!({"total": num(&s, "usage_usec") * 1000, "kernel": num(&s, "system_usec") * 1000, "user": num(&s, "user_usec") * 1000});
            cpu["throttling"] = json!({"periods": num(&s, "nr_periods"), "throttledPeriods": num(&s, "nr_throttled"), "throttledTime": num(&s, "throttled_usec") * 1000});
        }
        let mut memory = json!({});
        if let Some(d) = self.v1_dir("memory") {
            let entry = |prefix: &str| {
                json!({
                    "limit": read_limit(&d.join(format!("{prefix}limit_in_bytes"))),
                    "usage": read_u64(&d.join(format!("{prefix}usage_in_bytes"))),
                    "max": read_u64(&d.join(format!("{prefix}max_usage_in_bytes"))),
                    "failcnt": read_u64(&d.join(format!("{prefix}failcnt"))),
                })
            };
            let raw = read_kv(&d.join("memory.stat"));
            memory = json!({"cache": num(&raw, "cache"), "usage": entry("memory."), "swap": entry("memory.memsw."), "kernel": entry("memory.kmem."), "raw": raw});
        } else if let Some(d) = self.v2_with("memory.current") {
            let raw = read_kv(&d.join("memory.stat"));
            let events = read_kv(&d.join("memory.events"));
            memory = json!({
                "cache": num(&raw, "file"),
                "usage": {"limit": read_limit(&d.join("memory.max")), "usage": read_u64(&d.join("memory.current")), "max": read_u64(&d.join("memory.peak")), "failcnt": num(&events, "max")},
                // As runc and cgroup v1: swap counts memory+swap.
                "swap": {
                    "limit": match (read_limit(&d.join("memory.max")), read_limit(&d.join("memory.swap.max"))) {
                        (m, s) if m == u64::MAX || s == u64::MAX => u64::MAX,
                        (m, s) => m + s,
                    },
                    "usage": read_u64(&d.join("memory.current")) + read_u64(&d.join("memory.swap.current")),
                    "failcnt": 0,
                },
                "raw": raw,
            });
        }
        let pids_dir = self.v1_dir("pids").or_else(|| self.v2_with("pids.current"));
        // No pids limit reads as 0 (runc leaves it out), unlike memory where "max" is u64::MAX.
        let pids = pids_dir
            .map(|d| json!({"current": read_u64(&d.join("pids.current")), "limit": match read_limit(&d.join("pids.max")) { u64::MAX => 0, n => n }}))
            .unwrap_or(json!({}));
        let mut hugetlb = Map::new();
        let huge_dir = self
            .v1_dir("hugetlb")
            .map(|d| (d, true))
            .or_else(|| self.v2.as_ref().map(|d| (d, false)));
        if let Some((d, v1)) = huge_dir {
            for entry in std::fs::read_dir(d).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let size = if v1 {
                    name.strip_prefix("hugetlb.")
                        .and_then(|n| n.strip_suffix(".usage_in_bytes"))
                } else {
                    name.strip_prefix("hugetlb.")
                        .and_then(|n| n.strip_suffix(".current"))
                };
                if let Some(size) = size.filter(|s| !s.ends_with(".rsvd")) {
                    let v = if v1 {
                        json!({"usage": read_u64(&entry.path()), "max": read_u64(&d.join(format!("hugetlb.{size}.max_usage_in_bytes"))), "failcnt": read_u64(&d.join(format!("hugetlb.{size}.failcnt")))})
                    } else {
                        json!({"usage": read_u64(&entry.path()), "failcnt": num(&read_kv(&d.join(format!("hugetlb.{size}.events"))), "max")})
                    };
                    hugetlb.insert(size.to_string(), v);
                }
            }
        }
        json!({"cpu": cpu, "memory": memory, "pids": pids, "blkio": {}, "hugetlb": hugetlb, "intel_rdt": {}, "network_interfaces": null})
    }

    /// How many times the kernel OOM-killed a process of this cgroup.
    pub fn oom_kills(&self) -> u64 {
        if let Some(d) = self.v1_dir("memory") {
            return num(&read_kv(&d.join("memory.oom_control")), "oom_kill");
        }
        self.v2_with("memory.events")
            .map(|d| num(&read_kv(&d.join("memory.events")), "oom_kill"))
            .unwrap_or(0)
    }
}
