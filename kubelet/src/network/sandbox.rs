//! The pod sandbox: the pod's network, IPC and UTS namespaces, pinned by bind mounts of
//! `/proc/thread-self/ns/{net,ipc,uts}` onto files under `<run-dir>/sandboxes/<pod-uid>/`, so
//! they live as long as the pod does whatever its processes do, and survive a kubelet restart
//! ([`Sandbox::open`] adopts them). The runtime joins them through OCI `linux.namespaces[].path`.
//!
//! The namespaces are made by a short-lived thread that `unshare`s them (net, ipc and uts may be
//! unshared by one thread of a multi-threaded process), sets the pod's hostname in the new UTS
//! namespace, bind-mounts its namespace files and exits. A hostNetwork pod gets neither a net
//! nor a UTS namespace (it keeps the node's, and its hostname, as with the kubelet); hostIPC
//! likewise keeps the node's IPC namespace.
//!
//! On disk: `net`, `ipc`, `uts` (the mount points of the namespaces made) and `sandbox.json`,
//! written last and atomically; a directory without it is half-made and removed on `create`.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};
use serde::{Deserialize, Serialize};

use super::{NetworkError, Result, io_err, sys_err, validate_pod_uid, write_file_atomically};

const MARKER: &str = "sandbox.json";

/// How a pod's sandbox is made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxOptions {
    /// `spec.hostNetwork`: no net and no UTS namespace of its own.
    pub host_network: bool,
    /// `spec.hostIPC`: no IPC namespace of its own.
    pub host_ipc: bool,
    /// The pod's hostname (see [`super::pod_files::pod_hostname`]); unused with host_network.
    pub hostname: String,
}

impl SandboxOptions {
    /// The options of `pod`'s sandbox: `spec.hostNetwork`, `spec.hostIPC` and the hostname the
    /// kubelet gives it ([`super::pod_files::pod_hostname`]).
    pub fn for_pod(pod: &Pod, cluster_domain: &str) -> Result<SandboxOptions> {
        let spec = pod.spec.as_ref();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let hostname = if host_network {
            String::new()
        } else {
            super::pod_files::pod_hostname(pod, cluster_domain)?
        };
        Ok(SandboxOptions {
            host_network,
            host_ipc: spec.and_then(|s| s.host_ipc).unwrap_or(false),
            hostname,
        })
    }
}

/// A namespace kind the sandbox may own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceKind {
    Network,
    Ipc,
    Uts,
}

impl NamespaceKind {
    const ALL: [NamespaceKind; 3] = [Self::Network, Self::Ipc, Self::Uts];

    /// The name of the file under `/proc/<pid>/ns/` and under the sandbox directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Network => "net",
            Self::Ipc => "ipc",
            Self::Uts => "uts",
        }
    }

    /// The OCI `linux.namespaces[].type`.
    pub fn oci_type(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::Ipc => "ipc",
            Self::Uts => "uts",
        }
    }

    fn oci(self) -> LinuxNamespaceType {
        match self {
            Self::Network => LinuxNamespaceType::Network,
            Self::Ipc => LinuxNamespaceType::Ipc,
            Self::Uts => LinuxNamespaceType::Uts,
        }
    }

    fn clone_flag(self) -> CloneFlags {
        match self {
            Self::Network => CloneFlags::CLONE_NEWNET,
            Self::Ipc => CloneFlags::CLONE_NEWIPC,
            Self::Uts => CloneFlags::CLONE_NEWUTS,
        }
    }

    fn wanted(self, options: &SandboxOptions) -> bool {
        match self {
            Self::Network | Self::Uts => !options.host_network,
            Self::Ipc => !options.host_ipc,
        }
    }
}

/// A pod's pinned namespaces.
#[derive(Clone, Debug)]
pub struct Sandbox {
    dir: PathBuf,
    options: SandboxOptions,
}

impl Sandbox {
    /// The directory of the pod's sandbox: `<run_dir>/sandboxes/<uid>`.
    pub fn dir_of(run_dir: &Path, uid: &str) -> Result<PathBuf> {
        validate_pod_uid(uid)?;
        Ok(run_dir.join("sandboxes").join(uid))
    }

    /// Makes the pod's namespaces. A half-made sandbox left by a crash is removed first; a
    /// complete one is an error ([`NetworkError::SandboxExists`]): adopt it with [`Self::open`].
    pub fn create(run_dir: &Path, uid: &str, options: &SandboxOptions) -> Result<Sandbox> {
        let dir = Self::dir_of(run_dir, uid)?;
        if !options.host_network {
            check_hostname(&options.hostname)?;
        }
        if dir.join(MARKER).exists() {
            return Err(NetworkError::SandboxExists(dir));
        }
        remove_dir(&dir)?;
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let sandbox = Sandbox {
            dir,
            options: options.clone(),
        };
        if let Err(e) = sandbox.make_namespaces() {
            let _ = remove_dir(&sandbox.dir);
            return Err(e);
        }
        let marker = serde_json::to_vec(options).expect("options serialize");
        if let Err(e) = write_file_atomically(&sandbox.dir.join(MARKER), &marker) {
            let _ = remove_dir(&sandbox.dir);
            return Err(e);
        }
        tracing::debug!(dir = %sandbox.dir.display(), ?options, "sandbox created");
        Ok(sandbox)
    }

    /// Adopts the sandbox a previous kubelet made: `Ok(None)` when there is none (or only a
    /// half-made one, which [`Self::remove_by_uid`] clears); an error when a namespace it should
    /// hold is no longer mounted.
    pub fn open(run_dir: &Path, uid: &str) -> Result<Option<Sandbox>> {
        let dir = Self::dir_of(run_dir, uid)?;
        let marker = match std::fs::read(dir.join(MARKER)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
        };
        let options: SandboxOptions =
            serde_json::from_slice(&marker).map_err(|e| NetworkError::SandboxBroken {
                dir: dir.clone(),
                reason: format!("{MARKER}: {e}"),
            })?;
        let sandbox = Sandbox { dir, options };
        for (kind, path) in sandbox.namespaces() {
            if !is_namespace_mount(&path) {
                return Err(NetworkError::SandboxBroken {
                    dir: sandbox.dir.clone(),
                    reason: format!("{} namespace is not mounted", kind.file_name()),
                });
            }
        }
        Ok(Some(sandbox))
    }

    /// The pod uids that have a sandbox directory (complete or not), for cleaning up after pods
    /// deleted while the kubelet was down.
    pub fn list_uids(run_dir: &Path) -> Result<Vec<String>> {
        let dir = run_dir.join("sandboxes");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(format!("listing {}", dir.display()))(e)),
        };
        let mut uids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if validate_pod_uid(&name).is_ok() {
                uids.push(name);
            }
        }
        Ok(uids)
    }

    /// Unmounts and deletes the sandbox; idempotent.
    pub fn remove(&self) -> Result<()> {
        remove_dir(&self.dir)
    }

    /// Unmounts and deletes whatever is left of a pod's sandbox, complete or half-made.
    pub fn remove_by_uid(run_dir: &Path, uid: &str) -> Result<()> {
        remove_dir(&Self::dir_of(run_dir, uid)?)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn options(&self) -> &SandboxOptions {
        &self.options
    }

    /// The pinned network namespace; `None` for a hostNetwork pod.
    pub fn net_path(&self) -> Option<PathBuf> {
        self.path_of(NamespaceKind::Network)
    }

    /// The pinned IPC namespace; `None` for a hostIPC pod.
    pub fn ipc_path(&self) -> Option<PathBuf> {
        self.path_of(NamespaceKind::Ipc)
    }

    /// The pinned UTS namespace; `None` for a hostNetwork pod.
    pub fn uts_path(&self) -> Option<PathBuf> {
        self.path_of(NamespaceKind::Uts)
    }

    /// Every namespace the sandbox holds with its path, for OCI `linux.namespaces`
    /// (`{"type": kind.oci_type(), "path": path}`).
    pub fn namespaces(&self) -> Vec<(NamespaceKind, PathBuf)> {
        NamespaceKind::ALL
            .into_iter()
            .filter_map(|kind| self.path_of(kind).map(|path| (kind, path)))
            .collect()
    }

    /// The sandbox's namespaces as OCI `linux.namespaces` entries joining them by path; a
    /// container's spec adds its own (mount, pid, ...) beside these. Leave the spec's
    /// `hostname` unset (or the pod's): runc and crun set it in the joined UTS namespace, i.e.
    /// for the whole pod.
    pub fn oci_namespaces(&self) -> Vec<LinuxNamespace> {
        self.namespaces()
            .into_iter()
            .map(|(kind, path)| {
                let mut namespace = LinuxNamespace::default();
                namespace.set_typ(kind.oci());
                namespace.set_path(Some(path));
                namespace
            })
            .collect()
    }

    fn path_of(&self, kind: NamespaceKind) -> Option<PathBuf> {
        kind.wanted(&self.options)
            .then(|| self.dir.join(kind.file_name()))
    }

    fn make_namespaces(&self) -> Result<()> {
        let kinds: Vec<NamespaceKind> = NamespaceKind::ALL
            .into_iter()
            .filter(|kind| kind.wanted(&self.options))
            .collect();
        if kinds.is_empty() {
            return Ok(());
        }
        for kind in &kinds {
            let target = self.dir.join(kind.file_name());
            std::fs::File::create(&target)
                .map_err(io_err(format!("creating {}", target.display())))?;
        }
        let dir = self.dir.clone();
        let hostname = self.options.hostname.clone();
        // The thread's namespaces die with it unless pinned, so it never runs anything else.
        std::thread::spawn(move || -> Result<()> {
            let flags = kinds
                .iter()
                .fold(CloneFlags::empty(), |flags, kind| flags | kind.clone_flag());
            unshare(flags).map_err(sys_err("unsharing the pod's namespaces"))?;
            if kinds.contains(&NamespaceKind::Uts) {
                nix::unistd::sethostname(&hostname)
                    .map_err(sys_err(format!("setting the hostname {hostname:?}")))?;
            }
            for kind in kinds {
                let source = format!("/proc/thread-self/ns/{}", kind.file_name());
                let target = dir.join(kind.file_name());
                mount(
                    Some(source.as_str()),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(sys_err(format!(
                    "bind-mounting {source} on {}",
                    target.display()
                )))?;
            }
            Ok(())
        })
        .join()
        .expect("the namespace thread does not panic")
    }
}

/// The kernel's limit (64 bytes); [`super::pod_files::pod_hostname`] already truncates to 63.
fn check_hostname(hostname: &str) -> Result<()> {
    if hostname.is_empty() || hostname.len() > 64 {
        return Err(NetworkError::InvalidInput {
            field: "hostname",
            reason: format!("{hostname:?} must be 1-64 bytes"),
        });
    }
    Ok(())
}

fn is_namespace_mount(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Unmounts every namespace file and deletes the directory; tolerates any half-made state.
fn remove_dir(dir: &Path) -> Result<()> {
    // The marker goes first, so a crash half-way leaves a sandbox that `open` will not adopt.
    match std::fs::remove_file(dir.join(MARKER)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("removing {}/{MARKER}", dir.display()))(e)),
    }
    for kind in NamespaceKind::ALL {
        let path = dir.join(kind.file_name());
        // A namespace mounted twice (a racing create) needs two unmounts.
        while is_namespace_mount(&path) {
            umount2(&path, MntFlags::MNT_DETACH)
                .map_err(sys_err(format!("unmounting {}", path.display())))?;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("removing {}", path.display()))(e)),
        }
    }
    // Anything else is ours too (a temporary marker left by a crash).
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if !is_namespace_mount(&path) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("removing {}", dir.display()))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    #[test]
    fn options_from_the_pod() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("web-0".into());
        pod.spec = Some(PodSpec {
            host_ipc: Some(true),
            ..Default::default()
        });
        let options = SandboxOptions::for_pod(&pod, "cluster.local").unwrap();
        assert_eq!(
            options,
            SandboxOptions {
                host_network: false,
                host_ipc: true,
                hostname: "web-0".into()
            }
        );
        pod.spec.as_mut().unwrap().host_network = Some(true);
        let options = SandboxOptions::for_pod(&pod, "cluster.local").unwrap();
        assert!(options.host_network && options.hostname.is_empty());
    }
}
