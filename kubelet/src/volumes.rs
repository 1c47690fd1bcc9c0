//! Pod volumes on the node, under `<root-dir>/pods/<uid>/volumes/<kind>/<name>`: emptyDir (a
//! directory, or a tmpfs for `medium: Memory` with its sizeLimit), hostPath (with its type
//! checks), and the files of configMap, secret, downwardAPI and projected volumes — written as
//! the kubelet's atomic writer does: a fresh timestamped directory, the `..data` symlink swapped
//! to it by rename, and one symlink per top-level entry through `..data`, so a reader never sees
//! a half-updated volume. They are rewritten when their source changes (each pod sync).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume, VolumeMount,
};
use kube::{Api, Client};

use crate::container_env::{self, NodeView};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("MountVolume.SetUp failed for volume {volume:?} : {message}")]
    SetUp { volume: String, message: String },
    #[error("volumeMount {mount:?}: {message}")]
    Mount { mount: String, message: String },
}

fn setup(volume: &str, message: impl Into<String>) -> VolumeError {
    VolumeError::SetUp {
        volume: volume.to_string(),
        message: message.into(),
    }
}

/// A relative path inside a volume: no `..`, not absolute, not empty.
fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Where the pod's volumes live.
pub fn volumes_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("volumes")
}

/// Makes every volume of the pod ready; volume name → its directory (or file) on the node.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    pod_dir: &Path,
    node: &NodeView,
) -> Result<HashMap<String, PathBuf>, VolumeError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = HashMap::new();
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default()
    {
        let path = prepare_one(client, &ns, pod, pod_dir, node, &v).await?;
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

async fn prepare_one(
    client: &Client,
    ns: &str,
    pod: &Pod,
    pod_dir: &Path,
    node: &NodeView,
    v: &Volume,
) -> Result<PathBuf, VolumeError> {
    let name = &v.name;
    if !safe_relative(name) {
        return Err(setup(name, "invalid volume name"));
    }
    let dir = |kind: &str| volumes_dir(pod_dir).join(kind).join(name);
    let io = |e: std::io::Error| setup(name, e.to_string());
    if let Some(e) = &v.empty_dir {
        let d = dir("empty-dir");
        std::fs::create_dir_all(&d).map_err(io)?;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).map_err(io)?;
        if e.medium.as_deref() == Some("Memory") && !is_mountpoint(&d) {
            let size = e
                .size_limit
                .as_ref()
                .map(|q| crate::quantity::units(q).map_err(|err| setup(name, err.to_string())))
                .transpose()?;
            let opts = match size {
                Some(bytes) => format!("mode=1777,size={bytes}"),
                None => "mode=1777".to_string(),
            };
            nix::mount::mount(
                Some("tmpfs"),
                &d,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                Some(opts.as_str()),
            )
            .map_err(|err| setup(name, format!("tmpfs: {err}")))?;
        }
        return Ok(d);
    }
    if let Some(h) = &v.host_path {
        return host_path(name, &h.path, h.type_.as_deref().unwrap_or(""));
    }
    let mut files: BTreeMap<String, (Vec<u8>, u32)> = BTreeMap::new();
    let kind;
    if let Some(c) = &v.config_map {
        kind = "configmap";
        let data = config_map(client, ns, &c.name)
            .await
            .map_err(|m| setup(name, m))?;
        add_keyed(
            &mut files,
            name,
            data,
            c.items.as_deref(),
            c.default_mode.unwrap_or(0o644),
            c.optional.unwrap_or(false),
            "configmap",
            &c.name,
        )?;
    } else if let Some(s) = &v.secret {
        kind = "secret";
        let secret_name = s.secret_name.clone().unwrap_or_default();
        let data = secret(client, ns, &secret_name)
            .await
            .map_err(|m| setup(name, m))?;
        add_keyed(
            &mut files,
            name,
            data,
            s.items.as_deref(),
            s.default_mode.unwrap_or(0o644),
            s.optional.unwrap_or(false),
            "secret",
            &secret_name,
        )?;
    } else if let Some(d) = &v.downward_api {
        kind = "downward-api";
        add_downward(
            &mut files,
            name,
            pod,
            node,
            d.items.as_deref().unwrap_or_default(),
            d.default_mode.unwrap_or(0o644),
        )?;
    } else if let Some(p) = &v.projected {
        kind = "projected";
        let mode = p.default_mode.unwrap_or(0o644);
        for source in p.sources.iter().flatten() {
            if let Some(c) = &source.config_map {
                let data = config_map(client, ns, &c.name)
                    .await
                    .map_err(|m| setup(name, m))?;
                add_keyed(
                    &mut files,
                    name,
                    data,
                    c.items.as_deref(),
                    mode,
                    c.optional.unwrap_or(false),
                    "configmap",
                    &c.name,
                )?;
            }
            if let Some(s) = &source.secret {
                let data = secret(client, ns, &s.name)
                    .await
                    .map_err(|m| setup(name, m))?;
                add_keyed(
                    &mut files,
                    name,
                    data,
                    s.items.as_deref(),
                    mode,
                    s.optional.unwrap_or(false),
                    "secret",
                    &s.name,
                )?;
            }
            if let Some(d) = &source.downward_api {
                add_downward(
                    &mut files,
                    name,
                    pod,
                    node,
                    d.items.as_deref().unwrap_or_default(),
                    mode,
                )?;
            }
        }
    } else {
        return Err(setup(
            name,
            "this volume type is not supported by skiff-kubelet",
        ));
    }
    let d = dir(kind);
    write_atomic_volume(&d, &files).map_err(io)?;
    Ok(d)
}

async fn config_map(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await {
        Ok(Some(cm)) => {
            let mut m: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (k, v) in cm.binary_data.unwrap_or_default() {
                m.insert(k, v.0);
            }
            Ok(Some(m))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(format!("configmap {name:?}: {e}")),
    }
}

async fn secret(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await {
        Ok(Some(s)) => Ok(Some(
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
        )),
        Ok(None) => Ok(None),
        Err(e) => Err(format!("secret {name:?}: {e}")),
    }
}

#[allow(clippy::too_many_arguments)]
fn add_keyed(
    files: &mut BTreeMap<String, (Vec<u8>, u32)>,
    volume: &str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    optional: bool,
    kind: &str,
    source: &str,
) -> Result<(), VolumeError> {
    let Some(data) = data else {
        if optional {
            return Ok(());
        }
        return Err(setup(volume, format!("{kind} {source:?} not found")));
    };
    let mode = |m: Option<i32>| (m.unwrap_or(default_mode) & 0o777) as u32;
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                let Some(value) = data.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(setup(
                        volume,
                        format!("key {:?} not found in {kind} {source:?}", item.key),
                    ));
                };
                if !safe_relative(&item.path) {
                    return Err(setup(volume, format!("invalid item path {:?}", item.path)));
                }
                files.insert(item.path.clone(), (value.clone(), mode(item.mode)));
            }
        }
        _ => {
            for (k, v) in data {
                if !safe_relative(&k) {
                    return Err(setup(volume, format!("invalid key {k:?}")));
                }
                files.insert(k, (v, mode(None)));
            }
        }
    }
    Ok(())
}

fn add_downward(
    files: &mut BTreeMap<String, (Vec<u8>, u32)>,
    volume: &str,
    pod: &Pod,
    node: &NodeView,
    items: &[DownwardAPIVolumeFile],
    default_mode: i32,
) -> Result<(), VolumeError> {
    let container = |name: &str| {
        pod.spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == name).cloned())
    };
    for item in items {
        if !safe_relative(&item.path) {
            return Err(setup(volume, format!("invalid item path {:?}", item.path)));
        }
        let value = if let Some(f) = &item.field_ref {
            container_env::field_value(pod, node, &f.field_path)
        } else if let Some(r) = &item.resource_field_ref {
            let c = container(r.container_name.as_deref().unwrap_or_default())
                .or_else(|| {
                    pod.spec
                        .as_ref()
                        .and_then(|s| s.containers.first().cloned())
                })
                .unwrap_or_default();
            container_env::resource_value(&c, node, &r.resource, r.divisor.as_ref())
        } else {
            Err("an item needs fieldRef or resourceFieldRef".to_string())
        }
        .map_err(|m| setup(volume, m))?;
        let mode = (item.mode.unwrap_or(default_mode) & 0o777) as u32;
        files.insert(item.path.clone(), (value.into_bytes(), mode));
    }
    Ok(())
}

fn host_path(volume: &str, path: &str, kind: &str) -> Result<PathBuf, VolumeError> {
    let p = PathBuf::from(path);
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err(setup(
            volume,
            format!("hostPath {path:?} must be absolute without '..'"),
        ));
    }
    let meta = std::fs::metadata(&p);
    let ok = match kind {
        "" => true,
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::create_dir_all(&p).map_err(|e| setup(volume, e.to_string()))?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| setup(volume, e.to_string()))?;
            }
            std::fs::metadata(&p).is_ok_and(|m| m.is_dir())
        }
        "FileOrCreate" => {
            if meta.is_err() {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .map_err(|e| setup(volume, e.to_string()))?;
            }
            std::fs::metadata(&p).is_ok_and(|m| m.is_file())
        }
        "Directory" => meta.as_ref().is_ok_and(|m| m.is_dir()),
        "File" => meta.as_ref().is_ok_and(|m| m.is_file()),
        "Socket" => meta.as_ref().is_ok_and(|m| m.file_type().is_socket()),
        "CharDevice" => meta.as_ref().is_ok_and(|m| m.file_type().is_char_device()),
        "BlockDevice" => meta.as_ref().is_ok_and(|m| m.file_type().is_block_device()),
        other => return Err(setup(volume, format!("unknown hostPath type {other:?}"))),
    };
    if !ok {
        return Err(setup(
            volume,
            format!("hostPath type check failed: {path} is not a {kind}"),
        ));
    }
    Ok(p)
}

/// Writes `files` into `dir` as the kubelet's atomic writer does, unless `..data` already holds
/// exactly them.
fn write_atomic_volume(
    dir: &Path,
    files: &BTreeMap<String, (Vec<u8>, u32)>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let data_link = dir.join("..data");
    let unchanged = files
        .iter()
        .all(|(p, (content, _))| std::fs::read(data_link.join(p)).is_ok_and(|c| &c == content))
        && std::fs::read_link(&data_link).is_ok()
        && count_files(&data_link) == files.len();
    if unchanged {
        return Ok(());
    }
    let stamp = format!("..{}", chrono::Utc::now().format("%Y_%m_%d_%H_%M_%S.%f"));
    let fresh = dir.join(&stamp);
    std::fs::create_dir(&fresh)?;
    for (path, (content, mode)) in files {
        let target = fresh.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, content)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode))?;
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&stamp, &tmp_link)?;
    let old = std::fs::read_link(&data_link).ok();
    std::fs::rename(&tmp_link, &data_link)?;
    // One symlink per top-level entry, through ..data.
    let tops: std::collections::BTreeSet<String> = files
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_string))
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(top), &link)?;
        }
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !n.starts_with("..") && !tops.contains(&n) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        count_files(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn is_mountpoint(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) {
        (Ok(d), Some(Ok(p))) => d.dev() != p.dev(),
        _ => false,
    }
}

/// The bind mounts (destination, source, read-only) of a container's volumeMounts.
pub fn container_mounts(
    mounts: &[VolumeMount],
    volumes: &HashMap<String, PathBuf>,
) -> Result<Vec<(String, PathBuf, bool)>, VolumeError> {
    let mut out = vec![];
    for m in mounts {
        let bad = |message: String| VolumeError::Mount {
            mount: m.mount_path.clone(),
            message,
        };
        let src = volumes
            .get(&m.name)
            .ok_or_else(|| bad(format!("no volume named {:?}", m.name)))?;
        if !m.mount_path.starts_with('/') || m.mount_path.split('/').any(|c| c == "..") {
            return Err(bad("mountPath must be absolute without '..'".to_string()));
        }
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            None => src.clone(),
            Some(sub) => {
                if !safe_relative(sub) {
                    return Err(bad(format!(
                        "subPath {sub:?} must be relative without '..'"
                    )));
                }
                let p = src.join(sub);
                if !p.exists() {
                    std::fs::create_dir_all(&p).map_err(|e| bad(e.to_string()))?;
                }
                // A symlink inside the volume must not lead out of it.
                let real = p.canonicalize().map_err(|e| bad(e.to_string()))?;
                let base = src.canonicalize().map_err(|e| bad(e.to_string()))?;
                if !real.starts_with(&base) {
                    return Err(bad(format!("subPath {sub:?} leads out of the volume")));
                }
                real
            }
        };
        out.push((m.mount_path.clone(), source, m.read_only.unwrap_or(false)));
    }
    Ok(out)
}

/// Unmounts the pod's memory-backed emptyDirs (the directories go with the pod's directory).
pub fn teardown(pod_dir: &Path) {
    let dir = volumes_dir(pod_dir).join("empty-dir");
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if is_mountpoint(&e.path())
            && let Err(err) = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH)
        {
            tracing::warn!("unmount {}: {err}", e.path().display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writer_swaps_data() {
        let dir = tempfile::tempdir().unwrap();
        let v = dir.path().join("cm");
        let mut files = BTreeMap::from([
            ("a".to_string(), (b"1".to_vec(), 0o644)),
            ("sub/b".to_string(), (b"2".to_vec(), 0o600)),
        ]);
        write_atomic_volume(&v, &files).unwrap();
        assert_eq!(std::fs::read(v.join("a")).unwrap(), b"1");
        assert_eq!(std::fs::read(v.join("sub/b")).unwrap(), b"2");
        let first = std::fs::read_link(v.join("..data")).unwrap();
        write_atomic_volume(&v, &files).unwrap();
        assert_eq!(std::fs::read_link(v.join("..data")).unwrap(), first);
        files.remove("sub/b");
        files.insert("a".to_string(), (b"3".to_vec(), 0o644));
        write_atomic_volume(&v, &files).unwrap();
        assert_eq!(std::fs::read(v.join("a")).unwrap(), b"3");
        assert!(!v.join("sub").exists());
        assert!(!v.join(first).exists());
    }

    #[test]
    fn paths_are_checked() {
        assert!(safe_relative("a/b"));
        assert!(!safe_relative("../x"));
        assert!(!safe_relative("/etc"));
        assert!(host_path("v", "relative", "").is_err());
        assert!(host_path("v", "/nonexistent-skiff", "Directory").is_err());
        let vols = HashMap::from([("v".to_string(), PathBuf::from("/tmp"))]);
        let m: VolumeMount = serde_json::from_value(
            serde_json::json!({"name": "v", "mountPath": "/x", "subPath": "../etc"}),
        )
        .unwrap();
        assert!(container_mounts(&[m], &vols).is_err());
    }
}
