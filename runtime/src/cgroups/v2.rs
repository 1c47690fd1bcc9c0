//! cgroup v2 file formats: one directory, controllers enabled from the root down.

use crate::error::{Error, Result};
use crate::fsutil::{read_trimmed, write_value};
use oci_spec::runtime::LinuxResources;
use std::path::Path;

/// Enables every available controller in `cgroup.subtree_control` of each ancestor of `dir`
/// below `mount`, so `dir` gets its own knobs.
pub fn enable_controllers(mount: &Path, dir: &Path, controllers: &[String]) -> Result<()> {
    if controllers.is_empty() {
        return Ok(());
    }
    let rel = dir.strip_prefix(mount).unwrap_or(dir);
    let mut current = mount.to_path_buf();
    let wanted: String = controllers.iter().map(|c| format!("+{c} ")).collect();
    for component in rel.components() {
        let file = current.join("cgroup.subtree_control");
        let enabled = read_trimmed(&file)?;
        if controllers
            .iter()
            .any(|c| !enabled.split(' ').any(|e| e == c))
        {
            write_value(&file, wanted.trim_end())?;
        }
        current.push(component);
    }
    Ok(())
}

/// runc's mapping of cgroup v1 cpu.shares [2, 262144] onto cpu.weight [1, 10000].
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        0
    } else {
        1 + ((shares.saturating_sub(2)) * 9999) / 262142
    }
}

/// blkio.weight [10, 1000] onto io.weight [1, 10000].
pub fn blkio_to_io_weight(weight: u16) -> u64 {
    if weight == 0 {
        0
    } else {
        1 + (u64::from(weight).saturating_sub(10) * 9999) / 990
    }
}

fn limit(v: i64) -> String {
    if v < 0 { "max".into() } else { v.to_string() }
}

/// Writes `res` into `dir` for the controllers `on_v2` says live on cgroup2.
pub fn apply(dir: &Path, res: &LinuxResources, on_v2: &dyn Fn(&str) -> bool) -> Result<()> {
    if on_v2("memory")
        && let Some(mem) = res.memory()
    {
        if let Some(l) = mem.limit() {
            write_value(&dir.join("memory.max"), &limit(l))?;
        }
        if let Some(r) = mem.reservation() {
            write_value(&dir.join("memory.low"), &limit(r))?;
        }
        if let Some(swap) = mem.swap() {
            // OCI's swap is memory+swap; v2's memory.swap.max is swap alone.
            let v = match (swap, mem.limit()) {
                (s, _) if s < 0 => "max".to_string(),
                (s, Some(l)) if l >= 0 => {
                    if s < l {
                        return Err(Error::Config(format!(
                            "linux.resources.memory.swap: {s} is below memory.limit {l}"
                        )));
                    }
                    (s - l).to_string()
                }
                (s, _) => s.to_string(),
            };
            write_value(&dir.join("memory.swap.max"), &v)?;
        }
    }
    if let Some(cpu) = res.cpu() {
        if on_v2("cpu") {
            if let Some(s) = cpu.shares().filter(|s| *s != 0) {
                write_value(&dir.join("cpu.weight"), &shares_to_weight(s).to_string())?;
            }
            if cpu.quota().is_some() || cpu.period().is_some() {
                let quota = cpu
                    .quota()
                    .filter(|q| *q > 0)
                    .map(|q| q.to_string())
                    .unwrap_or("max".into());
                // Without a period only the quota is written: the kernel keeps the period.
                let value = match cpu.period().filter(|p| *p != 0) {
                    Some(period) => format!("{quota} {period}"),
                    None => quota,
                };
                write_value(&dir.join("cpu.max"), &value)?;
            }
            if let Some(idle) = cpu.idle() {
                write_value(&dir.join("cpu.idle"), &idle.to_string())?;
            }
        }
        if on_v2("cpuset") {
            if let Some(c) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
                write_value(&dir.join("cpuset.cpus"), c)?;
            }
            if let Some(m) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
                write_value(&dir.join("cpuset.mems"), m)?;
            }
        }
    }
    if on_v2("pids")
        && let Some(p) = res.pids()
    {
        write_value(
            &dir.join("pids.max"),
            &if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".into()
            },
        )?;
    }
    if on_v2("io")
        && let Some(io) = res.block_io()
    {
        if let Some(w) = io.weight().filter(|w| *w != 0) {
            let bfq = dir.join("io.bfq.weight");
            if bfq.exists() {
                write_value(&bfq, &w.to_string())?;
            } else {
                write_value(&dir.join("io.weight"), &blkio_to_io_weight(w).to_string())?;
            }
        }
        let throttles = [
            ("rbps", io.throttle_read_bps_device()),
            ("wbps", io.throttle_write_bps_device()),
            ("riops", io.throttle_read_iops_device()),
            ("wiops", io.throttle_write_iops_device()),
        ];
        for (key, list) in throttles {
            for d in list.iter().flatten() {
                write_value(
                    &dir.join("io.max"),
                    &format!("{}:{} {key}={}", d.major(), d.minor(), d.rate()),
                )?;
            }
        }
    }
    if on_v2("hugetlb") {
        for h in res.hugepage_limits().iter().flatten() {
            write_value(
                &dir.join(format!("hugetlb.{}.max", h.page_size())),
                &h.limit().to_string(),
            )?;
        }
    }
    for (key, value) in res.unified().iter().flatten() {
        if key.contains('/') || key.starts_with('.') {
            return Err(Error::Config(format!(
                "linux.resources.unified: invalid key {key:?}"
            )));
        }
        write_value(&dir.join(key), value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_match_runc() {
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262144), 10000);
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(1000), 10000);
        assert_eq!(blkio_to_io_weight(500), 4950);
    }
}
