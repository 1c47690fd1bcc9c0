//! The store's record of its images (`images/index.json`): which references name which
//! manifest, and per image its config, layers, sizes and last use. It is the one thing that makes
//! content visible: written last, atomically (temp file, fsync, rename, fsync of the directory),
//! under `index.lock`, so a killed writer leaves either the old record or the new one.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::ImageError;
use super::error::IoContext;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Records {
    /// By manifest digest.
    #[serde(default)]
    pub images: BTreeMap<String, ImageRecord>,
    /// Normalised reference (`docker.io/library/busybox:latest`) → manifest digest.
    #[serde(default)]
    pub references: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    pub config_digest: String,
    /// Lowest first.
    pub layers: Vec<LayerRecord>,
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// Unix milliseconds.
    pub created: i64,
    pub last_used: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LayerRecord {
    pub diff_id: String,
    /// Bytes of file content.
    pub size: u64,
}

impl ImageRecord {
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

impl Records {
    /// The references naming `manifest_digest`.
    pub fn references_to<'a>(
        &'a self,
        manifest_digest: &'a str,
    ) -> impl Iterator<Item = &'a String> + 'a {
        self.references
            .iter()
            .filter(move |(_, m)| m.as_str() == manifest_digest)
            .map(|(r, _)| r)
    }

    /// Removes an image and every reference to it.
    pub fn remove_image(&mut self, manifest_digest: &str) -> Option<ImageRecord> {
        self.references.retain(|_, m| m != manifest_digest);
        self.images.remove(manifest_digest)
    }

    pub fn load(path: &Path) -> Result<Records, ImageError> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ImageError::content(path.display().to_string(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Records::default()),
            Err(e) => Err(e).context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, path: &Path) -> Result<(), ImageError> {
        let temp = path.with_extension("json.tmp");
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|e| ImageError::content("image records", e))?;
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&temp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&temp, path)?;
            File::open(path.parent().unwrap_or(Path::new("/")))?.sync_all()
        };
        write().context(|| format!("writing {}", path.display()))
    }
}

/// Runs `change` on the records with `index.lock` held, saving them when it returns Ok.
pub(crate) fn update<T>(
    dir: &Path,
    change: impl FnOnce(&mut Records) -> Result<T, ImageError>,
) -> Result<T, ImageError> {
    let lock_path = dir.join("index.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .context(|| format!("opening {}", lock_path.display()))?;
    let _lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .context(|| format!("locking {}", lock_path.display()))?;
    let path = dir.join("index.json");
    let mut records = Records::load(&path)?;
    let result = change(&mut records)?;
    records.save(&path)?;
    Ok(result)
}
