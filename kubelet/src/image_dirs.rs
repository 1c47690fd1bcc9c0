//! Interim image source until the node's image store (`image`, another branch) lands: an image
//! is a directory `<root-dir>/image-dirs/<name>` holding `rootfs/` and an optional OCI image
//! `config.json`, where `<name>` is the normalised reference with `/` and `:` replaced by `_`
//! (`busybox` → `docker.io_library_busybox_latest`). A container's root is an overlay of that
//! directory with a writable layer of its own.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use serde::Deserialize;
use sha2::Digest;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {0:?} is not present on the node")]
    NotPresent(String),
    #[error("image {image:?}: {message}")]
    Bad { image: String, message: String },
    #[error("rootfs {path}: {message}")]
    Mount { path: PathBuf, message: String },
}

/// The parts of an OCI image config the kubelet uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ImageConfigFile {
    #[serde(default)]
    config: ImageConfig,
}

/// An image present on the node.
#[derive(Debug, Clone)]
pub struct Image {
    /// `sha256:<hex>` of its config (the imageID of container statuses).
    pub id: String,
    pub config: ImageConfig,
    dir: PathBuf,
}

/// `busybox` → `docker.io/library/busybox:latest`.
pub fn normalise(reference: &str) -> String {
    let (name, tag) = match reference.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n.to_string(), format!(":{t}")),
        _ if reference.contains('@') => (reference.to_string(), String::new()),
        _ => (reference.to_string(), ":latest".to_string()),
    };
    let first = name.split('/').next().unwrap_or_default();
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_registry {
        name
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    format!("{full}{tag}")
}

pub struct ImageDirs {
    dir: PathBuf,
}

impl ImageDirs {
    pub fn new(root_dir: &Path) -> ImageDirs {
        ImageDirs {
            dir: root_dir.join("image-dirs"),
        }
    }

    /// The directory an image reference lives in.
    pub fn dir_of(&self, reference: &str) -> PathBuf {
        self.dir
            .join(normalise(reference).replace(['/', ':', '@'], "_"))
    }

    /// The image, if the node has it.
    pub fn get(&self, reference: &str) -> Result<Image, ImageError> {
        let dir = self.dir_of(reference);
        if !dir.join("rootfs").is_dir() {
            return Err(ImageError::NotPresent(reference.to_string()));
        }
        let raw = std::fs::read(dir.join("config.json")).unwrap_or_else(|_| b"{}".to_vec());
        let file: ImageConfigFile = serde_json::from_slice(&raw).map_err(|e| ImageError::Bad {
            image: reference.to_string(),
            message: format!("config.json: {e}"),
        })?;
        let digest = sha2::Sha256::digest(&raw);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Image {
            id: format!("sha256:{hex}"),
            config: file.config,
            dir,
        })
    }

    /// Mounts the container's root at `target`: the image read-only below, `layer_dir`'s
    /// `upper`/`work` above.
    pub fn mount_rootfs(
        &self,
        image: &Image,
        layer_dir: &Path,
        target: &Path,
    ) -> Result<(), ImageError> {
        let err = |message: String| ImageError::Mount {
            path: target.to_path_buf(),
            message,
        };
        let upper = layer_dir.join("upper");
        let work = layer_dir.join("work");
        for d in [&upper, &work, &target.to_path_buf()] {
            std::fs::create_dir_all(d).map_err(|e| err(format!("{}: {e}", d.display())))?;
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            image.dir.join("rootfs").display(),
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(|e| err(format!("overlay mount: {e}")))
    }
}

/// Unmounts a container's root (nothing to do when it is not mounted).
pub fn unmount_rootfs(target: &Path) {
    match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => tracing::warn!("unmount {}: {e}", target.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_references() {
        assert_eq!(normalise("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalise("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normalise("me/app"), "docker.io/me/app:latest");
        assert_eq!(normalise("localhost:5000/app:v1"), "localhost:5000/app:v1");
        assert_eq!(normalise("reg.io/a/b"), "reg.io/a/b:latest");
    }
}
