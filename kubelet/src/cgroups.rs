//! Pod cgroups in QoS tiers: `<root>/pod<uid>` for Guaranteed pods, `<root>/burstable/pod<uid>`
//! and `<root>/besteffort/pod<uid>` for the others, as the kubelet lays them out. The kubelet
//! writes the pod-level limits (cpu shares and quota, memory limit, pids) and the runtime puts each
//! container in a child `<pod cgroup>/<container id>` through `linux.cgroupsPath`.
//!
//! The Burstable tier's cpu weight follows its pods' requests ([`BurstableTier`]).
//!
//! A thin cgroupfs layer of our own rather than cgroups-rs: the kubelet only makes directories and
//! writes a handful of files, in hierarchies the runtime also manages; cgroups-rs' hierarchy
//! objects would add nothing but another view of the same mounts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use skiff_k8s::qos::{QosClass, Resources};

/// cgroup v1's CFS period the quota is expressed against (the kubelet's 100 ms).
const CFS_PERIOD_US: i128 = 100_000;

/// The cgroup mounts of the machine.
#[derive(Debug, Clone, Default)]
pub struct CgroupMounts {
    /// v1 hierarchy mountpoint → its controllers.
    pub v1: Vec<(PathBuf, Vec<String>)>,
    pub v2: Option<PathBuf>,
}

impl CgroupMounts {
    pub fn read() -> CgroupMounts {
        Self::parse(&std::fs::read_to_string("/proc/self/mounts").unwrap_or_default())
    }

    fn parse(mounts: &str) -> CgroupMounts {
        let mut m = CgroupMounts::default();
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            let (dir, fstype, opts) = (PathBuf::from(f[1]), f[2], f[3]);
            match fstype {
                "cgroup" => {
                    let ctrls: Vec<String> = opts
                        .split(',')
                        .filter(|o| {
                            !matches!(*o, "rw" | "ro" | "nosuid" | "nodev" | "noexec" | "relatime")
                                && !o.contains('=')
                        })
                        .map(str::to_string)
                        .collect();
                    if !m.v1.iter().any(|(d, _)| d == &dir) {
                        m.v1.push((dir, ctrls));
                    }
                }
                "cgroup2" if m.v2.is_none() => m.v2 = Some(dir),
                _ => {}
            }
        }
        m
    }

    /// The v1 mountpoint holding `controller`.
    pub fn v1_dir(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(_, c)| c.iter().any(|x| x == controller))
            .map(|(d, _)| d.as_path())
    }

    /// A unified (v2) host: a cgroup2 mount and no v1 cpu or memory hierarchy.
    pub fn unified(&self) -> bool {
        self.v2.is_some() && self.v1_dir("cpu").is_none() && self.v1_dir("memory").is_none()
    }

    /// Every hierarchy's mountpoint (v1 ones and the v2 one).
    fn all(&self) -> impl Iterator<Item = &Path> {
        self.v1
            .iter()
            .map(|(d, _)| d.as_path())
            .chain(self.v2.as_deref())
    }

    /// The container's memory cgroup directory (for the shim's OOM check).
    pub fn memory_dir(&self, cgroup: &str) -> Option<PathBuf> {
        self.v1_dir("memory")
            .or(self.v2.as_deref())
            .map(|d| d.join(cgroup.trim_start_matches('/')))
    }
}

/// The pod's cgroup path (absolute within each hierarchy).
pub fn pod_cgroup(root: &str, qos: QosClass, uid: &str) -> String {
    let root = root.trim_end_matches('/');
    match qos {
        QosClass::Guaranteed => format!("{root}/pod{uid}"),
        QosClass::Burstable => format!("{root}/burstable/pod{uid}"),
        QosClass::BestEffort => format!("{root}/besteffort/pod{uid}"),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("pod cgroup {path}: {source}")]
pub struct CgroupError {
    path: PathBuf,
    source: std::io::Error,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError {
        path: path.to_path_buf(),
        source,
    })
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(path).map_err(|source| CgroupError {
        path: path.to_path_buf(),
        source,
    })
}

/// cpu.shares for a cpu request in millicores (the kubelet's MilliCPUToShares).
pub fn cpu_shares(milli: Option<i128>) -> u64 {
    match milli {
        None | Some(0) => 2,
        Some(m) => (m * 1024 / 1000).clamp(2, 262_144) as u64,
    }
}

/// cfs quota for a cpu limit in millicores (at least 1 ms).
pub fn cpu_quota(milli: i128) -> i64 {
    (milli * CFS_PERIOD_US / 1000).max(1000) as i64
}

pub const CPU_PERIOD: u64 = CFS_PERIOD_US as u64;

/// Makes the pod's cgroup with its limits in the cpu, memory and pids hierarchies (v1), or on a
/// unified (v2) host — no v1 cpu or memory hierarchy — in the v2 tree; the runtime makes the
/// container's directories in the others. Tier directories are made on the way (BestEffort's
/// gets the minimum cpu weight).
pub fn ensure_pod_cgroup(
    mounts: &CgroupMounts,
    root: &str,
    qos: QosClass,
    uid: &str,
    res: &Resources,
    pids_limit: Option<i64>,
) -> Result<String, CgroupError> {
    let path = pod_cgroup(root, qos, uid);
    let rel = path.trim_start_matches('/');
    if mounts.unified()
        && let Some(v2) = &mounts.v2
    {
        ensure_pod_cgroup_v2(v2, rel, qos, res, pids_limit)?;
        return Ok(path);
    }
    if let Some(cpu) = mounts.v1_dir("cpu") {
        if qos == QosClass::BestEffort {
            let tier = cpu.join(root.trim_start_matches('/')).join("besteffort");
            mkdir(&tier)?;
            write(&tier.join("cpu.shares"), "2")?;
        }
        let dir = cpu.join(rel);
        mkdir(&dir)?;
        write(
            &dir.join("cpu.shares"),
            &cpu_shares(res.cpu_request).to_string(),
        )?;
        if let Some(limit) = res.cpu_limit {
            write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD.to_string())?;
            write(&dir.join("cpu.cfs_quota_us"), &cpu_quota(limit).to_string())?;
        }
    }
    if let Some(memory) = mounts.v1_dir("memory") {
        let dir = memory.join(rel);
        mkdir(&dir)?;
        if let Some(limit) = res.memory_limit {
            write(&dir.join("memory.limit_in_bytes"), &limit.to_string())?;
        }
    }
    if let (Some(pids), Some(limit)) = (mounts.v1_dir("pids"), pids_limit) {
        let dir = pids.join(rel);
        mkdir(&dir)?;
        write(&dir.join("pids.max"), &limit.to_string())?;
    }
    Ok(path)
}

/// The Burstable tier's cpu weight, as the kubelet's QoS container manager keeps it: cpu.shares
/// from the sum of the active Burstable pods' cpu requests (millicores → shares, 2 at least) on
/// v1, the matching cpu.weight on v2. Written when that sum changes (a Burstable pod admitted,
/// its cgroup made or removed) and put back by [`BurstableTier::reapply`], which the pod manager
/// calls periodically (the kubelet's one minute) so that a stale or hand-edited value does not
/// last. (BestEffort's tier always has the minimum, put back the same way; Guaranteed pods sit
/// under the root.)
#[derive(Debug, Default)]
pub struct BurstableTier {
    state: Mutex<TierState>,
}

#[derive(Debug, Default)]
struct TierState {
    /// Pod uid → its cpu request in millicores.
    requests: HashMap<String, i128>,
    /// The shares last written.
    written: Option<u64>,
}

/// The tier's cpu weight file and its value for `shares` (v2: cpu.weight, v1: cpu.shares);
/// `None` without a cpu hierarchy or before the tier exists (it is made with its first pod's
/// cgroup).
fn tier_weight(
    mounts: &CgroupMounts,
    root: &str,
    tier: &str,
    shares: u64,
) -> Option<(PathBuf, u64)> {
    let tier = format!("{}/{tier}", root.trim_matches('/'));
    let (file, value) = match (&mounts.v2, mounts.v1_dir("cpu")) {
        (Some(v2), _) if mounts.unified() => {
            (v2.join(&tier).join("cpu.weight"), cpu_weight(shares))
        }
        (_, Some(cpu)) => (cpu.join(&tier).join("cpu.shares"), shares),
        _ => return None,
    };
    file.parent()
        .is_some_and(Path::exists)
        .then_some((file, value))
}

impl BurstableTier {
    /// Records the cpu request of the Burstable pod `uid` (`None`: it finished or is gone) and
    /// writes the tier's weight if it changed.
    pub fn set(
        &self,
        mounts: &CgroupMounts,
        root: &str,
        uid: &str,
        request: Option<i128>,
    ) -> Result<(), CgroupError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match request {
            Some(milli) => state.requests.insert(uid.to_string(), milli),
            None => state.requests.remove(uid),
        };
        let shares = state.shares();
        if state.written == Some(shares) {
            return Ok(());
        }
        let Some((file, value)) = tier_weight(mounts, root, "burstable", shares) else {
            return Ok(());
        };
        write(&file, &value.to_string())?;
        tracing::debug!(
            shares,
            pods = state.requests.len(),
            "burstable tier cpu weight"
        );
        state.written = Some(shares);
        Ok(())
    }

    /// Puts the Burstable and BestEffort tiers' weights back where they differ from what they
    /// should be (someone wrote the file, or a write was lost).
    pub fn reapply(&self, mounts: &CgroupMounts, root: &str) -> Result<(), CgroupError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let burstable = state.shares();
        for (tier, shares) in [("burstable", burstable), ("besteffort", cpu_shares(None))] {
            let Some((file, value)) = tier_weight(mounts, root, tier, shares) else {
                continue;
            };
            let found = std::fs::read_to_string(&file).unwrap_or_default();
            if found.trim() != value.to_string() {
                tracing::info!(
                    file = %file.display(),
                    found = found.trim(),
                    value,
                    "QoS tier cpu weight put back"
                );
                write(&file, &value.to_string())?;
            }
            if tier == "burstable" {
                state.written = Some(burstable);
            }
        }
        Ok(())
    }
}

impl TierState {
    fn shares(&self) -> u64 {
        cpu_shares(Some(self.requests.values().sum()))
    }
}

/// cgroup v2's cpu.weight for v1 cpu.shares (the kubelet's CpuSharesToCpuWeight: 2 → 1,
/// 1024 → 39, 262144 → 10000).
pub fn cpu_weight(shares: u64) -> u64 {
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// The controllers the pod cgroups use, enabled for the children of every directory from the v2
/// mount down to the pod's parent (as far as each directory has them), then the pod's limits:
/// cpu.weight, cpu.max, memory.max, pids.max.
fn ensure_pod_cgroup_v2(
    mount: &Path,
    rel: &str,
    qos: QosClass,
    res: &Resources,
    pids_limit: Option<i64>,
) -> Result<(), CgroupError> {
    let dir = mount.join(rel);
    mkdir(&dir)?;
    let mut parent = mount.to_path_buf();
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        let available =
            std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
        let enable: Vec<String> = ["cpu", "memory", "pids"]
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if !enable.is_empty() {
            write(&parent.join("cgroup.subtree_control"), &enable.join(" "))?;
        }
        parent = parent.join(part);
        let is_tier = i + 2 == parts.len() && qos == QosClass::BestEffort;
        if is_tier {
            write(&parent.join("cpu.weight"), "1")?;
        }
    }
    write(
        &dir.join("cpu.weight"),
        &cpu_weight(cpu_shares(res.cpu_request)).to_string(),
    )?;
    if let Some(limit) = res.cpu_limit {
        write(
            &dir.join("cpu.max"),
            &format!("{} {CPU_PERIOD}", cpu_quota(limit)),
        )?;
    }
    if let Some(limit) = res.memory_limit {
        write(&dir.join("memory.max"), &limit.to_string())?;
    }
    if let Some(limit) = pids_limit {
        write(&dir.join("pids.max"), &limit.to_string())?;
    }
    Ok(())
}

/// Removes the pod's cgroup (and any directory left under it) from every hierarchy. Processes
/// must be gone; a busy directory is retried briefly, then left with a warning.
pub fn remove_pod_cgroup(mounts: &CgroupMounts, path: &str) {
    for mount in mounts.all() {
        let dir = mount.join(path.trim_start_matches('/'));
        if dir.exists() {
            remove_tree(&dir);
        }
    }
}

/// Removes the QoS tier directories and `root` itself from every hierarchy once no pod cgroup is
/// left under them (the node leaving the cluster); a directory still in use is left with a
/// warning.
pub fn remove_root(mounts: &CgroupMounts, root: &str) {
    let root = root.trim_matches('/');
    if root.is_empty() {
        return;
    }
    for mount in mounts.all() {
        let base = mount.join(root);
        for dir in [base.join("besteffort"), base.join("burstable"), base] {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("leaving cgroup {}: {e}", dir.display()),
            }
        }
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    for attempt in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if attempt == 49 => {
                tracing::warn!("leaving cgroup {}: {e}", dir.display());
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mounts_and_paths() {
        let m = CgroupMounts::parse(
            "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0\n\
             cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n\
             cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,xattr,name=systemd 0 0\n\
             cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n",
        );
        assert_eq!(
            m.v1_dir("cpu"),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(m.v1.len(), 3);
        assert_eq!(m.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(
            pod_cgroup("/kubepods", QosClass::Burstable, "u1"),
            "/kubepods/burstable/podu1"
        );
        assert_eq!(
            pod_cgroup("/kubepods/", QosClass::Guaranteed, "u1"),
            "/kubepods/podu1"
        );
        assert_eq!(cpu_shares(Some(100)), 102);
        assert_eq!(cpu_shares(None), 2);
        assert_eq!(cpu_quota(500), 50_000);
    }

    #[test]
    fn unified_host_gets_v2_pod_limits() {
        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(
            v2.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let mounts = CgroupMounts {
            v1: vec![],
            v2: Some(v2.path().to_path_buf()),
        };
        let res = Resources {
            cpu_request: Some(250),
            cpu_limit: Some(500),
            memory_limit: Some(64 << 20),
            ..Resources::default()
        };
        let path = ensure_pod_cgroup(
            &mounts,
            "/kubepods",
            QosClass::Burstable,
            "u1",
            &res,
            Some(100),
        )
        .unwrap();
        assert_eq!(path, "/kubepods/burstable/podu1");
        let read = |p: &str| std::fs::read_to_string(v2.path().join(p)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "+cpu +memory +pids");
        let pod = "kubepods/burstable/podu1";
        assert_eq!(
            read(&format!("{pod}/cpu.weight")),
            cpu_weight(256).to_string()
        );
        assert_eq!(read(&format!("{pod}/cpu.max")), "50000 100000");
        assert_eq!(
            read(&format!("{pod}/memory.max")),
            (64u64 << 20).to_string()
        );
        assert_eq!(read(&format!("{pod}/pids.max")), "100");
        assert!(!v2.path().join(pod).join("memory.limit_in_bytes").exists());

        ensure_pod_cgroup(
            &mounts,
            "/kubepods",
            QosClass::BestEffort,
            "u2",
            &Resources::default(),
            None,
        )
        .unwrap();
        assert_eq!(read("kubepods/besteffort/cpu.weight"), "1");
        assert_eq!(read("kubepods/besteffort/podu2/cpu.weight"), "1");
        assert!(
            !v2.path()
                .join("kubepods/besteffort/podu2/memory.max")
                .exists()
        );
        assert_eq!(
            (cpu_weight(2), cpu_weight(1024), cpu_weight(262_144)),
            (1, 39, 10_000)
        );
    }

    #[test]
    fn burstable_tier_weight_follows_its_pods_requests() {
        let cpu = tempfile::tempdir().unwrap();
        let v1 = CgroupMounts {
            v1: vec![(cpu.path().to_path_buf(), vec!["cpu".to_string()])],
            v2: None,
        };
        let tier = BurstableTier::default();
        let shares = || std::fs::read_to_string(cpu.path().join("kubepods/burstable/cpu.shares"));
        // No tier yet: nothing is written (nor made).
        tier.set(&v1, "/kubepods", "a", Some(250)).unwrap();
        assert!(shares().is_err());
        std::fs::create_dir_all(cpu.path().join("kubepods/burstable")).unwrap();
        tier.set(&v1, "/kubepods", "a", Some(250)).unwrap();
        assert_eq!(shares().unwrap(), "256");
        tier.set(&v1, "/kubepods", "b", Some(500)).unwrap();
        assert_eq!(shares().unwrap(), "768");
        tier.set(&v1, "/kubepods", "a", None).unwrap();
        assert_eq!(shares().unwrap(), "512");
        // A hand-edited value (and BestEffort's) is put back by the periodic pass only.
        let best_effort = cpu.path().join("kubepods/besteffort");
        std::fs::create_dir_all(&best_effort).unwrap();
        std::fs::write(cpu.path().join("kubepods/burstable/cpu.shares"), "1000").unwrap();
        std::fs::write(best_effort.join("cpu.shares"), "50").unwrap();
        tier.set(&v1, "/kubepods", "b", Some(500)).unwrap();
        assert_eq!(shares().unwrap(), "1000");
        tier.reapply(&v1, "/kubepods").unwrap();
        assert_eq!(shares().unwrap(), "512");
        let best_effort_shares = std::fs::read_to_string(best_effort.join("cpu.shares"));
        assert_eq!(best_effort_shares.unwrap(), "2");
        // A Burstable pod requesting no cpu (only memory), then none left: the minimum.
        tier.set(&v1, "/kubepods", "b", None).unwrap();
        tier.set(&v1, "/kubepods", "c", Some(0)).unwrap();
        assert_eq!(shares().unwrap(), "2");

        let v2dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(v2dir.path().join("kubepods/burstable")).unwrap();
        let v2 = CgroupMounts {
            v1: vec![],
            v2: Some(v2dir.path().to_path_buf()),
        };
        let tier = BurstableTier::default();
        tier.set(&v2, "/kubepods", "a", Some(1000)).unwrap();
        let weight = || std::fs::read_to_string(v2dir.path().join("kubepods/burstable/cpu.weight"));
        assert_eq!(weight().unwrap(), "39");
        std::fs::write(v2dir.path().join("kubepods/burstable/cpu.weight"), "100\n").unwrap();
        tier.reapply(&v2, "/kubepods").unwrap();
        assert_eq!(weight().unwrap(), "39");
    }
}
