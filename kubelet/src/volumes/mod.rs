//! The pod's volumes, as the kubelet's volume manager sets them up: each under
//! `<root-dir>/pods/<uid>/volumes/kubernetes.io~<kind>/<name>` (hostPath aside), one module per
//! kind — `empty_dir` (disk or tmpfs), `host_path` (type checks), `projection` (configMap, secret,
//! downwardAPI, projected files) written by `atomic_writer` (the `..data` symlink swap) — and
//! `subpath` for volumeMounts' subPath resolved without leaving the volume. Secret and projected
//! volumes live on a tmpfs, never on disk. Setting up is idempotent, so a restarted kubelet finds
//! its volumes and keeps them, and [`VolumeSync`] repeats it periodically to keep the files
//! current. mountPropagation is not supported: every volume is bound private (None).

pub mod atomic_writer;
pub mod empty_dir;
pub mod host_path;
pub mod projection;
pub mod service_account_token;
pub mod subpath;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Volume};
use kube::{Api, Client};
use nix::mount::{MntFlags, umount2};
use oci_spec::runtime::{Mount, MountBuilder};

use crate::container_env::{self, NodeView};
use atomic_writer::Ownership;
use projection::Sources;

/// Secret and projected tmpfs volumes are bounded: the API bounds each object to 1 MiB, and the
/// atomic swap briefly holds two copies.
const SECRET_TMPFS_SIZE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{kind} {name:?} not found")]
    Missing { kind: &'static str, name: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(String),
    /// A volume that could not be set up, as the kubelet's FailedMount event words it.
    #[error("MountVolume.SetUp failed for volume {volume:?} : {source}")]
    SetUp {
        volume: String,
        source: Box<VolumeError>,
    },
}

/// The pod's directory of volumes: `<root-dir>/pods/<uid>`.
fn pod_dir(root_dir: &Path, uid: &str) -> PathBuf {
    root_dir.join("pods").join(uid)
}

/// The volumes set up for a pod: volume name → the directory (or hostPath) containers bind, and
/// whether it is always bound read-only (the API-data volumes are, as in the kubelet).
#[derive(Debug, Clone)]
pub struct PodVolumes {
    pod_dir: PathBuf,
    paths: BTreeMap<String, (PathBuf, bool)>,
}

/// Fetches what the pod's volumes refer to and sets them all up.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    node: &NodeView,
    root_dir: &Path,
    tokens: &mut service_account_token::TokenCache,
) -> Result<PodVolumes, VolumeError> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let (cms, secrets) = projection::referenced(&volumes);
    let mut sources = Sources::default();
    let api_error = |kind: &str, name: &str, e: kube::Error| {
        VolumeError::Io(format!("getting {kind} {name:?}: {e}"))
    };
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    for name in cms {
        let cm = cm_api
            .get_opt(&name)
            .await
            .map_err(|e| api_error("configmap", &name, e))?;
        sources.config_maps.insert(name, cm);
    }
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for name in secrets {
        let s = secret_api
            .get_opt(&name)
            .await
            .map_err(|e| api_error("secret", &name, e))?;
        sources.secrets.insert(name, s);
    }
    sources.tokens = tokens.tokens(client, pod, &volumes).await?;
    crate::blocking::run(|| set_up(pod, node, &sources, root_dir))
}

/// Sets up every volume of the pod from already fetched sources.
pub fn set_up(
    pod: &Pod,
    node: &NodeView,
    sources: &Sources,
    root_dir: &Path,
) -> Result<PodVolumes, VolumeError> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if uid.is_empty() || uid.contains('/') || uid.starts_with('.') {
        return Err(VolumeError::Invalid(format!(
            "pod uid {uid:?} is not usable as a directory"
        )));
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let fs_group = spec
        .security_context
        .as_ref()
        .and_then(|s| s.fs_group)
        .map(|g| g as u32);
    let pod_dir = pod_dir(root_dir, &uid);
    let mut paths = BTreeMap::new();
    for v in spec.volumes.iter().flatten() {
        let path = set_up_one(v, pod, node, sources, &pod_dir, fs_group).map_err(|e| {
            VolumeError::SetUp {
                volume: v.name.clone(),
                source: Box::new(e),
            }
        })?;
        let api_data = v.config_map.is_some()
            || v.secret.is_some()
            || v.downward_api.is_some()
            || v.projected.is_some();
        paths.insert(v.name.clone(), (path, api_data));
    }
    Ok(PodVolumes { pod_dir, paths })
}

fn set_up_one(
    v: &Volume,
    pod: &Pod,
    node: &NodeView,
    sources: &Sources,
    pod_dir: &Path,
    fs_group: Option<u32>,
) -> Result<PathBuf, VolumeError> {
    let name = &v.name;
    if name.is_empty()
        || name.len() > 63
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(VolumeError::Invalid(format!(
            "volume name {name:?} is not a DNS label"
        )));
    }
    let dir = |kind: &str| {
        pod_dir
            .join("volumes")
            .join(format!("kubernetes.io~{kind}"))
            .join(name)
    };
    if let Some(h) = &v.host_path {
        return host_path::set_up(h);
    }
    if let Some(e) = &v.empty_dir {
        let d = dir("empty-dir");
        empty_dir::set_up(&d, e, fs_group)?;
        return Ok(d);
    }
    let (kind, on_tmpfs) = if v.config_map.is_some() {
        ("configmap", false)
    } else if v.secret.is_some() {
        ("secret", true)
    } else if v.downward_api.is_some() {
        ("downward-api", false)
    } else if v.projected.is_some() {
        ("projected", true)
    } else {
        return Err(VolumeError::Invalid(
            "only emptyDir, hostPath, configMap, secret, downwardAPI and projected volumes are supported"
                .into(),
        ));
    };
    let payload = projection::payload(v, pod, node, sources).expect("a projected kind")?;
    let d = dir(kind);
    if on_tmpfs {
        empty_dir::mount_tmpfs(&d, Some(SECRET_TMPFS_SIZE))?;
    } else {
        fs::create_dir_all(&d)
            .map_err(|e| VolumeError::Io(format!("creating {}: {e}", d.display())))?;
    }
    apply_dir_ownership(&d, fs_group, 0o755)?;
    if atomic_writer::write(&d, &payload, Ownership { fs_group })? {
        tracing::info!(pod = ?pod.metadata.uid, volume = %name, "volume files written");
    }
    Ok(d)
}

/// Sets a volume directory's mode; with an fsGroup, its group and setgid (and group access) as
/// the kubelet's SetVolumeOwnership does. Only the directory itself: what a container made below
/// it keeps its modes.
pub(crate) fn apply_dir_ownership(
    dir: &Path,
    fs_group: Option<u32>,
    mode: u32,
) -> Result<(), VolumeError> {
    let io =
        |e: std::io::Error| VolumeError::Io(format!("setting the owner of {}: {e}", dir.display()));
    let mode = match fs_group {
        Some(g) => {
            std::os::unix::fs::lchown(dir, None, Some(g)).map_err(io)?;
            mode | 0o2050
        }
        None => mode,
    };
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io)
}

impl PodVolumes {
    /// The container's volumeMounts as OCI bind mounts (subPaths bound safely first), shallower
    /// destinations first.
    pub fn mounts_for(
        &self,
        c: &Container,
        env: &[(String, String)],
    ) -> Result<Vec<Mount>, VolumeError> {
        let env: BTreeMap<String, String> = env.iter().cloned().collect();
        let mut mounts = vec![];
        if c.name.is_empty() || c.name.contains('/') || c.name.starts_with('.') {
            return Err(VolumeError::Invalid(format!(
                "container name {:?} is not usable as a directory",
                c.name
            )));
        }
        for (i, vm) in c.volume_mounts.iter().flatten().enumerate() {
            let bad = |m: String| VolumeError::Invalid(format!("volumeMount {:?}: {m}", vm.name));
            let dest = &vm.mount_path;
            if !dest.starts_with('/') || dest.split('/').any(|p| p == "..") {
                return Err(bad(format!(
                    "mountPath {dest:?} must be absolute without '..'"
                )));
            }
            let (source, always_ro) = self
                .paths
                .get(&vm.name)
                .ok_or_else(|| bad("no volume of that name in the pod".into()))?;
            let sub = match (&vm.sub_path, &vm.sub_path_expr) {
                (Some(s), _) if !s.is_empty() => s.clone(),
                (_, Some(e)) if !e.is_empty() => container_env::expand(e, &env),
                _ => String::new(),
            };
            let source = if sub.is_empty() {
                source.clone()
            } else {
                let fd = subpath::open(source, &sub)?;
                let target = self
                    .pod_dir
                    .join("volume-subpaths")
                    .join(&vm.name)
                    .join(&c.name)
                    .join(i.to_string());
                subpath::bind(&fd, &target)?;
                target
            };
            let ro = *always_ro || vm.read_only.unwrap_or(false);
            let mount = MountBuilder::default()
                .destination(dest)
                .typ("bind")
                .source(source)
                .options(vec![
                    "rbind".to_string(),
                    "rprivate".to_string(),
                    if ro { "ro" } else { "rw" }.to_string(),
                ])
                .build()
                .map_err(|e| bad(e.to_string()))?;
            mounts.push(mount);
        }
        mounts.sort_by_key(|m| m.destination().components().count());
        Ok(mounts)
    }
}

/// Whether the pod has volumes whose files follow API objects or the pod's metadata.
fn has_projected_files(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .any(|v| {
            v.config_map.is_some()
                || v.secret.is_some()
                || v.downward_api.is_some()
                || v.projected.is_some()
        })
}

/// The pod worker's view of its volumes: set up before the first container, then again every
/// `period` and whenever the pod changes, so configMap, secret and downwardAPI files stay current.
#[derive(Debug, Default)]
pub struct VolumeSync {
    volumes: Option<PodVolumes>,
    /// When the volumes were last set up, and the pod's labels and annotations then.
    last: Option<(Instant, String)>,
    tokens: service_account_token::TokenCache,
}

impl VolumeSync {
    pub fn ready(&self) -> Option<&PodVolumes> {
        self.volumes.as_ref()
    }

    /// Sets the volumes up if due; returns when to look again. The first failure is the pod's
    /// (its containers wait); a later one keeps the files as they were, as the kubelet does.
    pub async fn sync(
        &mut self,
        client: &Client,
        pod: &Pod,
        node: &NodeView,
        root_dir: &Path,
        period: Duration,
    ) -> Result<Option<Duration>, VolumeError> {
        // Status writes change the resourceVersion; only the metadata the files show matters.
        let rv = serde_json::json!([pod.metadata.labels, pod.metadata.annotations]).to_string();
        let due = match &self.last {
            None => true,
            Some((at, last_rv)) => at.elapsed() >= period || *last_rv != rv,
        };
        let again = has_projected_files(pod).then_some(period);
        if !due && self.volumes.is_some() {
            return Ok(again.map(|p| {
                p.saturating_sub(
                    self.last
                        .as_ref()
                        .map(|(at, _)| at.elapsed())
                        .unwrap_or_default(),
                )
            }));
        }
        self.last = Some((Instant::now(), rv));
        match prepare(client, pod, node, root_dir, &mut self.tokens).await {
            Ok(v) => {
                self.volumes = Some(v);
                Ok(again)
            }
            Err(e) if self.volumes.is_some() => {
                tracing::warn!(pod = ?pod.metadata.uid, "refreshing volumes: {e}");
                Ok(again)
            }
            Err(e) => Err(e),
        }
    }
}

/// The mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts the pod's tmpfs volumes and subPath binds and removes its volume directories. Fails
/// (removing nothing) if a mount stays, so nothing is ever deleted through a mount.
pub fn cleanup(root_dir: &Path, uid: &str) -> Result<(), VolumeError> {
    if uid.is_empty() || uid.contains('/') || uid.starts_with('.') {
        return Err(VolumeError::Invalid(format!("pod uid {uid:?}")));
    }
    let dir = pod_dir(root_dir, uid);
    for m in mounts_under(&dir) {
        if let Err(e) = umount2(&m, MntFlags::MNT_DETACH) {
            tracing::warn!("unmounting {}: {e}", m.display());
        }
    }
    let left = mounts_under(&dir);
    if !left.is_empty() {
        return Err(VolumeError::Io(format!(
            "still mounted under {}: {left:?}",
            dir.display()
        )));
    }
    for sub in ["volume-subpaths", "volumes"] {
        let d = dir.join(sub);
        if let Err(e) = fs::remove_dir_all(&d)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(VolumeError::Io(format!("removing {}: {e}", d.display())));
        }
    }
    Ok(())
}

/// [`cleanup`] for every pod directory under the root (tests and node teardown).
pub fn cleanup_all(root_dir: &Path) {
    for e in fs::read_dir(root_dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Err(err) = cleanup(root_dir, &e.file_name().to_string_lossy()) {
            tracing::warn!("{err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume_mount(
        name: &str,
        path: &str,
        ro: Option<bool>,
    ) -> k8s_openapi::api::core::v1::VolumeMount {
        k8s_openapi::api::core::v1::VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            read_only: ro,
            ..Default::default()
        }
    }

    #[test]
    fn mounts_are_binds_shallow_first_and_api_data_read_only() {
        let vols = PodVolumes {
            pod_dir: "/r/pods/u".into(),
            paths: [
                ("cfg".to_string(), (PathBuf::from("/r/cfg"), true)),
                ("data".to_string(), (PathBuf::from("/r/data"), false)),
            ]
            .into(),
        };
        let c = Container {
            name: "c".into(),
            volume_mounts: Some(vec![
                volume_mount("cfg", "/etc/app/conf", Some(false)),
                volume_mount("data", "/data", None),
                volume_mount("data", "/ro", Some(true)),
            ]),
            ..Default::default()
        };
        let m = vols.mounts_for(&c, &[]).unwrap();
        let dests: Vec<_> = m.iter().map(|m| m.destination().clone()).collect();
        assert_eq!(
            dests,
            [PathBuf::from("/data"), "/ro".into(), "/etc/app/conf".into()]
        );
        let opts = |i: usize| m[i].options().clone().unwrap();
        assert!(opts(0).contains(&"rw".to_string()));
        assert!(opts(1).contains(&"ro".to_string()));
        assert!(
            opts(2).contains(&"ro".to_string()),
            "configMap volumes are read-only"
        );
        assert_eq!(m[2].source().as_deref(), Some(Path::new("/r/cfg")));

        let bad = |vm| {
            let c = Container {
                name: "c".into(),
                volume_mounts: Some(vec![vm]),
                ..Default::default()
            };
            vols.mounts_for(&c, &[]).unwrap_err().to_string()
        };
        assert!(bad(volume_mount("nope", "/x", None)).contains("no volume of that name"));
        assert!(bad(volume_mount("data", "relative", None)).contains("must be absolute"));
        assert!(bad(volume_mount("data", "/a/../b", None)).contains("without '..'"));
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
