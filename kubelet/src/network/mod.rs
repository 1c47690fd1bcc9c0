//! The pod sandbox's namespaces and the pod network.
//!
//! - [`sandbox`]: the pinned net/ipc/uts namespaces of a pod (bind mounts under
//!   `<run-dir>/sandboxes/<pod-uid>/`), which the container runtime joins through OCI
//!   `linux.namespaces[].path`.
//! - [`pod_network`]: the node's pod network ([`NodeNetwork`]): bridge `skiff0`, a veth per pod,
//!   addresses from the node's podCIDR ([`ipam`], kept on disk), routes to the other nodes'
//!   podCIDRs ([`routes`]), MASQUERADE and hostPort DNAT ([`iptables`]). Everything but the
//!   iptables rules goes through netlink ([`netlink`]); the pod's end of it is in [`veth`].
//! - [`pod_files`]: the pod's `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname`, and its
//!   hostname, as the kubelet computes them.

pub mod ipam;
pub mod iptables;
mod netlink;
pub mod pod_files;
pub mod pod_network;
pub mod routes;
pub mod sandbox;
pub mod veth;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use pod_network::{HostPortMapping, HostPortProtocol, NetworkConfig, NodeNetwork};
pub use sandbox::{Sandbox, SandboxOptions};

/// What can go wrong in this module; every variant names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid pod uid {0:?}: expected 1-64 characters of [A-Za-z0-9_-]")]
    InvalidPodUid(String),
    #[error("invalid {field}: {reason}")]
    InvalidInput { field: &'static str, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what}: {message}")]
    Iptables { what: String, message: String },
    #[error("no free address left in the pod CIDR {0}")]
    PodCidrExhausted(ipnet::Ipv4Net),
    #[error("sandbox {dir} is broken: {reason}")]
    SandboxBroken { dir: PathBuf, reason: String },
    #[error("sandbox {0} already exists")]
    SandboxExists(PathBuf),
    #[error("routes not synced: {0}")]
    Routes(String),
}

pub type Result<T, E = NetworkError> = std::result::Result<T, E>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Io { what, source }
}

pub(crate) fn sys_err(what: impl Into<String>) -> impl FnOnce(nix::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Sys { what, source }
}

/// A pod uid is used as a file and directory name, so it is checked before any use: Kubernetes
/// uids are UUIDs, static pods get hex hashes.
pub fn validate_pod_uid(uid: &str) -> Result<()> {
    let ok = !uid.is_empty()
        && uid.len() <= 64
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NetworkError::InvalidPodUid(uid.to_string()))
    }
}

/// Writes `path` atomically: a temporary file beside it, fsync, rename, fsync of the directory.
pub fn write_file_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", rand::random::<u64>()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        NetworkError::Io {
            what: format!("writing {}", path.display()),
            source: e,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_uids_are_checked() {
        validate_pod_uid("0d5b7f0e-2f7c-4f57-9a43-6d8e1f0a2b3c").unwrap();
        validate_pod_uid("a1b2c3_static").unwrap();
        for bad in ["", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_pod_uid(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_file_atomically(&path, b"one").unwrap();
        write_file_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
