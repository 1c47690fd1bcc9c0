//! cgroup v1 file formats: one directory per hierarchy, one file per knob.

use crate::error::Result;
use crate::fsutil::{read_trimmed, write_value};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxResources};
use std::path::Path;

/// A new cpuset cgroup starts with empty cpus/mems and refuses tasks: copy the parent's. A
/// parent that another runtime made a moment ago may not be filled in yet (containers created
/// side by side share their parents): it is filled in first, up to the first ancestor that is.
pub fn inherit_cpuset(dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if read_trimmed(&dir.join(file))?.is_empty() {
            let mut value = read_trimmed(&parent.join(file))?;
            if value.is_empty() {
                inherit_cpuset(parent)?;
                value = read_trimmed(&parent.join(file))?;
            }
            write_value(&dir.join(file), &value)?;
        }
    }
    Ok(())
}

/// Writes the part of `res` that belongs to `controller` into `dir`.
pub fn apply(
    controller: &str,
    dir: &Path,
    res: &LinuxResources,
    devices: &[LinuxDeviceCgroup],
) -> Result<()> {
    match controller {
        "memory" => memory(dir, res),
        "cpu" => cpu(dir, res),
        "cpuset" => cpuset(dir, res),
        "pids" => pids(dir, res),
        "blkio" => blkio(dir, res),
        "hugetlb" => hugetlb(dir, res),
        "devices" => self::devices(dir, devices),
        "net_cls" => net_cls(dir, res),
        "net_prio" => net_prio(dir, res),
        _ => Ok(()),
    }
}

fn net_cls(dir: &Path, res: &LinuxResources) -> Result<()> {
    if let Some(id) = res.network().as_ref().and_then(|n| n.class_id()) {
        write_value(&dir.join("net_cls.classid"), &id.to_string())?;
    }
    Ok(())
}

fn net_prio(dir: &Path, res: &LinuxResources) -> Result<()> {
    for p in res
        .network()
        .as_ref()
        .and_then(|n| n.priorities().as_ref())
        .into_iter()
        .flatten()
    {
        write_value(
            &dir.join("net_prio.ifpriomap"),
            &format!("{} {}", p.name(), p.priority()),
        )?;
    }
    Ok(())
}

fn memory(dir: &Path, res: &LinuxResources) -> Result<()> {
    let Some(mem) = res.memory() else {
        return Ok(());
    };
    if let Some(limit) = mem.limit() {
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        // The kernel keeps limit <= memsw.limit: raising, memsw goes first; lowering, limit first.
        if write_value(&dir.join("memory.limit_in_bytes"), &limit.to_string()).is_err() {
            if let Some(swap) = mem.swap() {
                write_value(&memsw, &swap.to_string())?;
            }
            write_value(&dir.join("memory.limit_in_bytes"), &limit.to_string())?;
        }
    }
    if let Some(swap) = mem.swap() {
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            write_value(&memsw, &swap.to_string())?;
        } else {
            tracing::warn!(
                "linux.resources.memory.swap: swap accounting is not enabled on this host; ignored"
            );
        }
    }
    if let Some(r) = mem.reservation() {
        write_value(&dir.join("memory.soft_limit_in_bytes"), &r.to_string())?;
    }
    if let Some(s) = mem.swappiness() {
        write_value(&dir.join("memory.swappiness"), &s.to_string())?;
    }
    if let Some(true) = mem.disable_oom_killer() {
        write_value(&dir.join("memory.oom_control"), "1")?;
    }
    if let Some(tcp) = mem.kernel_tcp() {
        write_value(
            &dir.join("memory.kmem.tcp.limit_in_bytes"),
            &tcp.to_string(),
        )?;
    }
    // memory.kernel: kernels since 5.16 accept and ignore memory.kmem.limit_in_bytes (runc
    // ignores the field as well): nothing to write.
    Ok(())
}

fn cpu(dir: &Path, res: &LinuxResources) -> Result<()> {
    let Some(cpu) = res.cpu() else { return Ok(()) };
    if let Some(s) = cpu.shares().filter(|s| *s != 0) {
        write_value(&dir.join("cpu.shares"), &s.to_string())?;
    }
    if let Some(p) = cpu.period().filter(|p| *p != 0) {
        write_value(&dir.join("cpu.cfs_period_us"), &p.to_string())?;
    }
    if let Some(q) = cpu.quota().filter(|q| *q != 0) {
        write_value(&dir.join("cpu.cfs_quota_us"), &q.to_string())?;
    }
    if let Some(p) = cpu.realtime_period().filter(|p| *p != 0) {
        write_value(&dir.join("cpu.rt_period_us"), &p.to_string())?;
    }
    if let Some(r) = cpu.realtime_runtime().filter(|r| *r != 0) {
        write_value(&dir.join("cpu.rt_runtime_us"), &r.to_string())?;
    }
    Ok(())
}

fn cpuset(dir: &Path, res: &LinuxResources) -> Result<()> {
    let Some(cpu) = res.cpu() else { return Ok(()) };
    if let Some(c) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
        write_value(&dir.join("cpuset.cpus"), c)?;
    }
    if let Some(m) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
        write_value(&dir.join("cpuset.mems"), m)?;
    }
    Ok(())
}

fn pids(dir: &Path, res: &LinuxResources) -> Result<()> {
    let Some(p) = res.pids() else { return Ok(()) };
    let limit = if p.limit() > 0 {
        p.limit().to_string()
    } else {
        "max".into()
    };
    write_value(&dir.join("pids.max"), &limit)
}

fn blkio(dir: &Path, res: &LinuxResources) -> Result<()> {
    let Some(io) = res.block_io() else {
        return Ok(());
    };
    if let Some(w) = io.weight().filter(|w| *w != 0) {
        let file = ["blkio.weight", "blkio.bfq.weight"]
            .iter()
            .map(|f| dir.join(f))
            .find(|f| f.exists())
            .ok_or_else(|| crate::error::Error::Config("linux.resources.blockIO.weight: no blkio.weight or blkio.bfq.weight on this host (no proportional I/O scheduler)".into()))?;
        write_value(&file, &w.to_string())?;
    }
    if let Some(lw) = io.leaf_weight().filter(|w| *w != 0) {
        write_value(&dir.join("blkio.leaf_weight"), &lw.to_string())?;
    }
    for d in io.weight_device().iter().flatten() {
        if let Some(w) = d.weight() {
            write_value(
                &dir.join("blkio.weight_device"),
                &format!("{}:{} {w}", d.major(), d.minor()),
            )?;
        }
    }
    let throttles = [
        (
            "blkio.throttle.read_bps_device",
            io.throttle_read_bps_device(),
        ),
        (
            "blkio.throttle.write_bps_device",
            io.throttle_write_bps_device(),
        ),
        (
            "blkio.throttle.read_iops_device",
            io.throttle_read_iops_device(),
        ),
        (
            "blkio.throttle.write_iops_device",
            io.throttle_write_iops_device(),
        ),
    ];
    for (file, list) in throttles {
        for d in list.iter().flatten() {
            write_value(
                &dir.join(file),
                &format!("{}:{} {}", d.major(), d.minor(), d.rate()),
            )?;
        }
    }
    Ok(())
}

fn hugetlb(dir: &Path, res: &LinuxResources) -> Result<()> {
    for h in res.hugepage_limits().iter().flatten() {
        write_value(
            &dir.join(format!("hugetlb.{}.limit_in_bytes", h.page_size())),
            &h.limit().to_string(),
        )?;
    }
    Ok(())
}

/// Device rules in order: "a" denied first is the usual start, later rules refine it.
fn devices(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    for rule in rules {
        let file = if rule.allow() {
            "devices.allow"
        } else {
            "devices.deny"
        };
        write_value(&dir.join(file), &device_rule(rule))?;
    }
    Ok(())
}

/// "c 1:3 rwm" / "a *:* rwm".
pub fn device_rule(rule: &LinuxDeviceCgroup) -> String {
    let typ = rule
        .typ()
        .map(|t| t.as_str().to_string())
        .unwrap_or_else(|| "a".into());
    let num = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or_else(|| "*".into());
    let access = rule.access().clone().unwrap_or_else(|| "rwm".into());
    format!("{typ} {}:{} {access}", num(rule.major()), num(rule.minor()))
}
