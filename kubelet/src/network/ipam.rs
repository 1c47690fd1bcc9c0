//! Pod addresses from the node's podCIDR, kept on disk so that no address leaks or is used
//! twice across kubelet crashes.
//!
//! One file per allocated address, `<dir>/<a.b.c.d>`, holding the owning pod's uid. A file is
//! claimed by writing the uid to a temporary file and hard-linking it to the address's name:
//! `link` fails with EEXIST when the name is taken, exactly like an `O_EXCL` create, and the file
//! appears with its contents complete, so a crash never leaves an allocation without an owner.
//! Temporary files left by a crash are removed by [`Ipam::open`].
//!
//! The network address, the first address (the bridge's, the pods' gateway) and the broadcast
//! address are never handed out. Allocation goes round the range from the address after the
//! last one handed out, so a freed address is not reused at once.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::Ipv4Net;

use super::{NetworkError, Result, io_err, validate_pod_uid};

const TEMP_PREFIX: &str = ".tmp-";

#[derive(Debug)]
pub struct Ipam {
    dir: PathBuf,
    cidr: Ipv4Net,
    /// Where the next search starts (an offset into the CIDR).
    next: Mutex<u32>,
}

impl Ipam {
    /// Opens (creating) the allocation directory for `cidr`, clearing temporary files a crash
    /// left.
    pub fn open(dir: &Path, cidr: Ipv4Net) -> Result<Ipam> {
        if cidr.prefix_len() > 30 {
            return Err(NetworkError::InvalidInput {
                field: "podCIDR",
                reason: format!("{cidr} has no room for pods (at most /30)"),
            });
        }
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let ipam = Ipam {
            dir: dir.to_path_buf(),
            cidr: cidr.trunc(),
            next: Mutex::new(2),
        };
        for entry in ipam.entries()? {
            if entry.starts_with(TEMP_PREFIX) {
                let path = dir.join(&entry);
                std::fs::remove_file(&path)
                    .map_err(io_err(format!("removing {}", path.display())))?;
            }
        }
        let last = ipam
            .allocations()?
            .into_iter()
            .filter_map(|(ip, _)| ipam.offset_of(ip))
            .max();
        if let Some(last) = last {
            *ipam.next.lock().unwrap() = last + 1;
        }
        Ok(ipam)
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The bridge's address: the first address of the CIDR.
    pub fn gateway(&self) -> Ipv4Addr {
        self.address_at(1)
    }

    /// The address held by `uid`, if any.
    pub fn lookup(&self, uid: &str) -> Result<Option<Ipv4Addr>> {
        Ok(self
            .allocations()?
            .into_iter()
            .find(|(_, owner)| owner == uid)
            .map(|(ip, _)| ip))
    }

    /// The address held by `uid`, claiming a free one when it holds none; `true` when new.
    pub fn allocate(&self, uid: &str) -> Result<(Ipv4Addr, bool)> {
        validate_pod_uid(uid)?;
        if let Some(ip) = self.lookup(uid)? {
            return Ok((ip, false));
        }
        let taken: std::collections::HashSet<String> = self.entries()?.into_iter().collect();
        let tmp = self
            .dir
            .join(format!("{TEMP_PREFIX}{uid}-{}", rand::random::<u64>()));
        write_synced(&tmp, format!("{uid}\n").as_bytes())?;
        let result = self.claim_free(&tmp, &taken);
        let _ = std::fs::remove_file(&tmp);
        let ip = result?;
        sync_dir(&self.dir)?;
        tracing::debug!(%ip, uid, "address allocated");
        Ok((ip, true))
    }

    fn claim_free(
        &self,
        tmp: &Path,
        taken: &std::collections::HashSet<String>,
    ) -> Result<Ipv4Addr> {
        let first = 2;
        // Offsets 1..=size-2 are hosts; 1 is the gateway.
        let last = (1u32 << (32 - self.cidr.prefix_len())) - 2;
        let span = last - first + 1;
        let mut next = self.next.lock().unwrap();
        let start = if (first..=last).contains(&*next) {
            *next
        } else {
            first
        };
        for step in 0..span {
            let offset = first + (start - first + step) % span;
            let ip = self.address_at(offset);
            let name = ip.to_string();
            if taken.contains(&name) {
                continue;
            }
            match std::fs::hard_link(tmp, self.dir.join(&name)) {
                Ok(()) => {
                    *next = offset + 1;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(io_err(format!("claiming {name} in {}", self.dir.display()))(e));
                }
            }
        }
        Err(NetworkError::PodCidrExhausted(self.cidr))
    }

    /// Frees every address `uid` holds; returns them.
    pub fn release(&self, uid: &str) -> Result<Vec<Ipv4Addr>> {
        let mut freed = Vec::new();
        for (ip, owner) in self.allocations()? {
            if owner == uid {
                let path = self.dir.join(ip.to_string());
                match std::fs::remove_file(&path) {
                    Ok(()) => freed.push(ip),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(format!("removing {}", path.display()))(e)),
                }
            }
        }
        if !freed.is_empty() {
            sync_dir(&self.dir)?;
            tracing::debug!(?freed, uid, "addresses released");
        }
        Ok(freed)
    }

    /// Every allocation on disk: (address, owning pod uid). Files that are not allocations
    /// (unparsable names or owners) are skipped.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>> {
        let mut allocations = Vec::new();
        for name in self.entries()? {
            let Ok(ip) = name.parse::<Ipv4Addr>() else {
                continue;
            };
            let path = self.dir.join(&name);
            let owner = match std::fs::read_to_string(&path) {
                Ok(owner) => owner.trim().to_string(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
            };
            if validate_pod_uid(&owner).is_ok() {
                allocations.push((ip, owner));
            }
        }
        Ok(allocations)
    }

    fn entries(&self) -> Result<Vec<String>> {
        let what = format!("listing {}", self.dir.display());
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_err(what.clone()))? {
            let entry = entry.map_err(io_err(what.clone()))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn address_at(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + offset)
    }

    fn offset_of(&self, ip: Ipv4Addr) -> Option<u32> {
        self.cidr
            .contains(&ip)
            .then(|| u32::from(ip) - u32::from(self.cidr.network()))
    }
}

fn write_synced(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        file.write_all(contents)?;
        file.sync_all()
    };
    write().map_err(io_err(format!("writing {}", path.display())))
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("syncing {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn allocations_are_unique_idempotent_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), cidr("10.244.1.0/24")).unwrap();
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        let (a, new_a) = ipam.allocate("pod-a").unwrap();
        let (b, _) = ipam.allocate("pod-b").unwrap();
        assert_eq!((a, new_a), (Ipv4Addr::new(10, 244, 1, 2), true));
        assert_eq!(b, Ipv4Addr::new(10, 244, 1, 3));
        assert_eq!(ipam.allocate("pod-a").unwrap(), (a, false));

        // A crash mid-claim leaves a temporary file; a new Ipam clears it and sees the same
        // allocations, continuing after the last one.
        std::fs::write(dir.path().join(".tmp-pod-c-1"), "pod-c\n").unwrap();
        let reopened = Ipam::open(dir.path(), cidr("10.244.1.0/24")).unwrap();
        assert!(!dir.path().join(".tmp-pod-c-1").exists());
        assert_eq!(reopened.lookup("pod-b").unwrap(), Some(b));
        assert_eq!(reopened.release("pod-a").unwrap(), vec![a]);
        let (c, _) = reopened.allocate("pod-c").unwrap();
        assert_eq!(
            c,
            Ipv4Addr::new(10, 244, 1, 4),
            "a freed address is not reused at once"
        );
        assert!(reopened.release("pod-a").unwrap().is_empty());
    }

    #[test]
    fn a_small_cidr_runs_out_and_frees_round() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), cidr("10.0.0.0/30")).unwrap();
        let (only, _) = ipam.allocate("one").unwrap();
        assert_eq!(only, Ipv4Addr::new(10, 0, 0, 2));
        assert!(matches!(
            ipam.allocate("two"),
            Err(NetworkError::PodCidrExhausted(_))
        ));
        ipam.release("one").unwrap();
        assert_eq!(ipam.allocate("two").unwrap().0, only);
        assert!(Ipam::open(dir.path(), cidr("10.0.0.0/31")).is_err());
    }

    #[test]
    fn concurrent_claims_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = std::sync::Arc::new(Ipam::open(dir.path(), cidr("10.9.0.0/27")).unwrap());
        // Two Ipam values over one directory (two kubelets racing) and threads in each.
        let other = std::sync::Arc::new(Ipam::open(dir.path(), cidr("10.9.0.0/27")).unwrap());
        let threads: Vec<_> = (0..28)
            .map(|i| {
                let ipam = if i % 2 == 0 {
                    ipam.clone()
                } else {
                    other.clone()
                };
                std::thread::spawn(move || ipam.allocate(&format!("pod-{i}")).unwrap().0)
            })
            .collect();
        let mut ips: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 28);
        assert_eq!(ipam.allocations().unwrap().len(), 28);
    }
}
