//! emptyDir volumes: a directory under the pod's volumes (mode 0777, as the kubelet makes it), or
//! with `medium: Memory` a tmpfs sized by `sizeLimit`. Also the tmpfs that secret and projected
//! volumes live on, so secrets never touch the disk.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use k8s_openapi::api::core::v1::EmptyDirVolumeSource;
use nix::mount::{MsFlags, mount};

use super::VolumeError;
use skiff_k8s::quantity;

/// Makes the emptyDir at `dir` (kept if it is already there, as after a kubelet restart).
pub fn set_up(
    dir: &Path,
    src: &EmptyDirVolumeSource,
    fs_group: Option<u32>,
) -> Result<(), VolumeError> {
    let size = match &src.size_limit {
        Some(q) => {
            Some(quantity::units(q).map_err(|e| VolumeError::Invalid(format!("sizeLimit: {e}")))?)
        }
        None => None,
    };
    match src.medium.as_deref().unwrap_or_default() {
        "" => {
            create_dir(dir)?;
        }
        "Memory" => mount_tmpfs(dir, size.map(|s| s.max(4096) as u64))?,
        other => {
            return Err(VolumeError::Invalid(format!(
                "emptyDir medium {other:?} is not supported (\"\" or Memory)"
            )));
        }
    }
    super::apply_dir_ownership(dir, fs_group, 0o777)
}

fn create_dir(dir: &Path) -> Result<(), VolumeError> {
    let io = |e: std::io::Error| VolumeError::Io(format!("creating {}: {e}", dir.display()));
    if !dir.is_dir() {
        fs::create_dir_all(dir).map_err(io)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).map_err(io)?;
    }
    Ok(())
}

/// Whether `dir` is the root of a mount (its device differs from its parent's).
pub fn is_mount_point(dir: &Path) -> bool {
    let (Ok(d), Some(Ok(p))) = (fs::metadata(dir), dir.parent().map(fs::metadata)) else {
        return false;
    };
    d.dev() != p.dev()
}

/// A tmpfs at `dir` (size in bytes, or the kernel's default of half the memory), unless one is
/// already mounted there.
pub fn mount_tmpfs(dir: &Path, size: Option<u64>) -> Result<(), VolumeError> {
    create_dir(dir)?;
    if is_mount_point(dir) {
        return Ok(());
    }
    let mut data = "mode=0777".to_string();
    if let Some(s) = size {
        data.push_str(&format!(",size={s}"));
    }
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| VolumeError::Io(format!("mounting a tmpfs at {}: {e}", dir.display())))
}
