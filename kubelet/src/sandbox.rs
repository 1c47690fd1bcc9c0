//! The pod sandbox as the pod worker sees it: the pod's directory under `<root-dir>/pods/<uid>`
//! with the files bind-mounted into every container (/etc/hosts, /etc/resolv.conf,
//! /etc/hostname) and the namespaces containers join.
//!
//! Interim: host-network pods only, with the node's own hosts and resolv.conf files, until the
//! pod network (`network`, another branch: pinned namespaces, veth, IPAM, generated resolv.conf
//! and hosts) lands; a pod on the pod network is refused with a clear reason until then.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

use crate::oci_config::SandboxView;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the pod network is not available on this node yet; only hostNetwork pods run")]
    NoPodNetwork,
    #[error("sandbox file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A pod's sandbox, ready for its containers.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub view: SandboxView,
    pub pod_ip: String,
}

pub fn pod_dir(root_dir: &Path, uid: &str) -> PathBuf {
    root_dir.join("pods").join(uid)
}

/// Makes (or finds again) the pod's sandbox.
pub fn ensure(root_dir: &Path, node_ip: &str, pod: &Pod) -> Result<Sandbox, SandboxError> {
    let spec = pod.spec.as_ref();
    if !spec.and_then(|s| s.host_network).unwrap_or(false) {
        return Err(SandboxError::NoPodNetwork);
    }
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let dir = pod_dir(root_dir, uid);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SandboxError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let files = [
        ("hosts", std::fs::read("/etc/hosts").unwrap_or_default()),
        (
            "resolv.conf",
            std::fs::read("/etc/resolv.conf").unwrap_or_default(),
        ),
        ("hostname", format!("{hostname}\n").into_bytes()),
    ];
    for (name, content) in files {
        let path = dir.join(name);
        if !path.exists() {
            crate::shim::write_atomic(&dir, name, &content).map_err(io(&path))?;
        }
    }
    Ok(Sandbox {
        view: SandboxView {
            hostname,
            hosts_file: dir.join("hosts"),
            resolv_conf: dir.join("resolv.conf"),
            hostname_file: dir.join("hostname"),
            namespaces: vec![("ipc".to_string(), None)],
        },
        pod_ip: node_ip.to_string(),
    })
}

/// Removes the pod's sandbox directory.
pub fn remove(root_dir: &Path, uid: &str) {
    let dir = pod_dir(root_dir, uid);
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("removing {}: {e}", dir.display());
    }
}
