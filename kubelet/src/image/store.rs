//! The image store on disk, under `<root-dir>/images`:
//!
//! ```text
//! blobs/sha256/<hex>   manifests and image configs, by digest (verified before they are kept)
//! layers/<hex>/fs      each layer unpacked once (by diff id) in overlayfs form, shared by images
//! layers/<hex>/size    its bytes of file content
//! index.json           the records: references → manifest digest, per image config and layers
//! tmp/                 staging; everything is built here and renamed into place
//! lock                 shared by writers of new content, exclusive to whoever deletes content
//! ```
//!
//! Compressed layer blobs are not kept: a layer is verified while it is unpacked (both the blob
//! digest and the diff id) and only the unpacked form stays. A kill -9 at any point leaves
//! staging debris (removed when the store is next opened with no writer running) or complete
//! blobs and layers that no record names yet (reused by the next import or pull, or pruned);
//! an image is visible only once its record is written, which is done last.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::digest::{is_hex64, sha256_digest, sha256_hex};
use super::error::IoContext;
use super::layer::unpack_verified;
use super::records::{self, ImageRecord, LayerRecord, Records};
use super::spec::{ConfigFile, MAX_DOCUMENT_BYTES};
use super::{ImageConfig, ImageError, normalize_reference};

/// An image in the store.
#[derive(Debug, Clone)]
pub struct Image {
    /// `sha256:<hex>` of the image config: the image id (`crictl images` IMAGE ID).
    pub id: String,
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    /// Normalised references naming it (`docker.io/library/busybox:1.36`).
    pub repo_tags: Vec<String>,
    /// `repository@sha256:<hex>` names: what the kubelet reports as a container's `imageID`.
    pub repo_digests: Vec<String>,
    /// The defaults for a container: entrypoint, cmd, env, working dir, user, exposed ports.
    pub config: ImageConfig,
    /// The unpacked layers, lowest first: the overlayfs lower directories.
    pub layers: Vec<PathBuf>,
    /// Bytes of file content in its layers.
    pub size: u64,
    /// Unix milliseconds of the last pull, import or [`ImageStore::mark_used`].
    pub last_used: i64,
}

/// The node's image store. Cheap to clone; every method works on the files, so several
/// processes (the kubelet and `skiff-kubelet image …`) may use one store at once. Methods
/// block on file I/O: call them from `spawn_blocking` in async code.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

/// A private staging directory for one import or pull. It holds the store's lock shared (so no
/// one deletes content under it) and is removed when dropped.
pub(crate) struct Staging {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Staging {
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// Unix milliseconds.
pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl ImageStore {
    /// Opens (creating if needed) the store under `<root_dir>/images`, removing the staging
    /// debris of killed writers when none is running.
    pub fn open(root_dir: &Path) -> Result<ImageStore, ImageError> {
        let store = ImageStore {
            dir: root_dir.join("images"),
        };
        for sub in ["blobs/sha256", "layers", "tmp"] {
            let path = store.dir.join(sub);
            fs::create_dir_all(&path).context(|| format!("creating {}", path.display()))?;
        }
        if let Some(_exclusive) = store.lock(FlockArg::LockExclusiveNonblock)? {
            store.clear_staging()?;
        }
        Ok(store)
    }

    /// The store's directory (`<root-dir>/images`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn clear_staging(&self) -> Result<(), ImageError> {
        let tmp = self.dir.join("tmp");
        for entry in fs::read_dir(&tmp).context(|| format!("reading {}", tmp.display()))? {
            let path = entry
                .context(|| format!("reading {}", tmp.display()))?
                .path();
            tracing::info!(path = %path.display(), "removing an interrupted import's staging directory");
            fs::remove_dir_all(&path)
                .or_else(|_| fs::remove_file(&path))
                .context(|| format!("removing {}", path.display()))?;
        }
        Ok(())
    }

    /// Takes the store lock; None when a non-blocking request finds it held.
    pub(crate) fn lock(&self, how: FlockArg) -> Result<Option<Flock<File>>, ImageError> {
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .context(|| format!("opening {}", path.display()))?;
        match Flock::lock(file, how) {
            Ok(lock) => Ok(Some(lock)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(errno).context(|| format!("locking {}", path.display())),
        }
    }

    pub(crate) fn staging(&self) -> Result<Staging, ImageError> {
        let lock = self
            .lock(FlockArg::LockShared)?
            .expect("a blocking lock is always taken");
        let dir = self
            .dir
            .join("tmp")
            .join(format!("{:016x}", rand::random::<u64>()));
        fs::create_dir(&dir).context(|| format!("creating {}", dir.display()))?;
        Ok(Staging { dir, _lock: lock })
    }

    fn layer_dir(&self, diff_id: &str) -> Result<PathBuf, ImageError> {
        Ok(self.dir.join("layers").join(sha256_hex(diff_id)?))
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.dir.join("blobs/sha256").join(sha256_hex(digest)?))
    }

    /// The unpacked layer's size if the store has it.
    pub(crate) fn layer_size(&self, diff_id: &str) -> Result<Option<u64>, ImageError> {
        let size_file = self.layer_dir(diff_id)?.join("size");
        match fs::read_to_string(&size_file) {
            Ok(text) => Ok(text.trim().parse().ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context(|| format!("reading {}", size_file.display())),
        }
    }

    /// Unpacks a layer blob (unless the store already has the layer) after verifying it, and
    /// moves it into place. Returns its size.
    pub(crate) fn add_layer(
        &self,
        staging: &Staging,
        diff_id: &str,
        blob: impl Read,
        blob_digest: Option<&str>,
    ) -> Result<u64, ImageError> {
        if let Some(size) = self.layer_size(diff_id)? {
            return Ok(size);
        }
        let final_dir = self.layer_dir(diff_id)?;
        let work = staging.path().join(sha256_hex(diff_id)?);
        let fs_dir = work.join("fs");
        fs::create_dir_all(&fs_dir).context(|| format!("creating {}", fs_dir.display()))?;
        let size = unpack_verified(blob, blob_digest, diff_id, &fs_dir)?;
        let size_file = work.join("size");
        fs::write(&size_file, size.to_string())
            .context(|| format!("writing {}", size_file.display()))?;
        sync_filesystem(&work)?;
        match fs::rename(&work, &final_dir) {
            Ok(()) => {}
            // Another writer put the same layer in place first.
            Err(e) if final_dir.join("size").exists() => {
                tracing::debug!(layer = diff_id, error = %e, "layer already in place");
            }
            Err(e) => {
                return Err(e).context(|| format!("moving the layer into {}", final_dir.display()));
            }
        }
        Ok(size)
    }

    /// Stores a manifest or config whose digest must be `digest`.
    pub(crate) fn add_blob(
        &self,
        staging: &Staging,
        digest: &str,
        bytes: &[u8],
    ) -> Result<(), ImageError> {
        let actual = sha256_digest(bytes);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                what: "blob".to_string(),
                expected: digest.to_string(),
                actual,
            });
        }
        let path = self.blob_path(digest)?;
        if path.exists() {
            return Ok(());
        }
        let temp = staging.path().join(sha256_hex(digest)?);
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&temp, &path)
        };
        write().context(|| format!("writing {}", path.display()))
    }

    fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest)?;
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|f| f.take(MAX_DOCUMENT_BYTES).read_to_end(&mut bytes))
            .context(|| format!("reading {}", path.display()))?;
        Ok(bytes)
    }

    /// Makes an image visible: records it under `names` (moving each name from the image it
    /// named before). Called last, once its blobs and layers are in place.
    pub(crate) fn record_image(
        &self,
        manifest_digest: &str,
        config_digest: &str,
        layers: Vec<LayerRecord>,
        names: &[String],
        repo_digests: Vec<String>,
    ) -> Result<Image, ImageError> {
        for layer in &layers {
            if self.layer_size(&layer.diff_id)?.is_none() {
                return Err(ImageError::content(
                    format!("layer {}", layer.diff_id),
                    "missing from the store",
                ));
            }
        }
        records::update(&self.dir, |records| {
            let now = now();
            let record = records
                .images
                .entry(manifest_digest.to_string())
                .or_insert_with(|| ImageRecord {
                    config_digest: config_digest.to_string(),
                    layers,
                    repo_digests: Vec::new(),
                    created: now,
                    last_used: now,
                });
            record.last_used = now;
            for digest in repo_digests {
                if !record.repo_digests.contains(&digest) {
                    record.repo_digests.push(digest);
                }
            }
            for name in names {
                records
                    .references
                    .insert(name.clone(), manifest_digest.to_string());
            }
            Ok(())
        })?;
        self.image(
            &Records::load(&self.dir.join("index.json"))?,
            manifest_digest,
        )
    }

    pub(crate) fn records(&self) -> Result<Records, ImageError> {
        Records::load(&self.dir.join("index.json"))
    }

    fn image(&self, records: &Records, manifest_digest: &str) -> Result<Image, ImageError> {
        let record = records
            .images
            .get(manifest_digest)
            .ok_or_else(|| ImageError::NotFound(manifest_digest.to_string()))?;
        let config_bytes = self.read_blob(&record.config_digest)?;
        let config: ConfigFile = serde_json::from_slice(&config_bytes).map_err(|e| {
            ImageError::content(format!("image config {}", record.config_digest), e)
        })?;
        Ok(Image {
            id: record.config_digest.clone(),
            manifest_digest: manifest_digest.to_string(),
            repo_tags: records.references_to(manifest_digest).cloned().collect(),
            repo_digests: record.repo_digests.clone(),
            config: config.config,
            layers: record
                .layers
                .iter()
                .map(|l| Ok(self.layer_dir(&l.diff_id)?.join("fs")))
                .collect::<Result<_, ImageError>>()?,
            size: record.size(),
            last_used: record.last_used,
        })
    }

    /// The manifest digests `reference` names (the forms [`ImageStore::lookup`] takes).
    fn resolve(&self, records: &Records, reference: &str) -> Result<Vec<String>, ImageError> {
        let id_hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if id_hex.len() >= 12 && id_hex.len() <= 64 && id_hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            let matches: Vec<String> = records
                .images
                .iter()
                .filter(|(_, r)| r.config_digest["sha256:".len()..].starts_with(id_hex))
                .map(|(m, _)| m.clone())
                .collect();
            let ids: HashSet<&str> = matches
                .iter()
                .map(|m| records.images[m].config_digest.as_str())
                .collect();
            if ids.len() > 1 {
                return Err(ImageError::InvalidReference {
                    reference: reference.to_string(),
                    reason: "the id prefix names more than one image".to_string(),
                });
            }
            if !matches.is_empty() || is_hex64(id_hex) || reference.starts_with("sha256:") {
                return Ok(matches);
            }
        }
        let name = normalize_reference(reference)?;
        if let Some((repository, digest)) = name.split_once('@') {
            let repository = repository.split(':').next().unwrap_or(repository);
            let wanted = format!("{repository}@{digest}");
            return Ok(records
                .images
                .iter()
                .filter(|(m, r)| m.as_str() == digest || r.repo_digests.contains(&wanted))
                .map(|(m, _)| m.clone())
                .collect());
        }
        Ok(records.references.get(&name).cloned().into_iter().collect())
    }

    /// The image `reference` names: a reference (`busybox`, `busybox:1`,
    /// `reg:5000/app@sha256:…`), an image id (`sha256:<hex>`), or an unambiguous id prefix of at
    /// least 12 hex digits.
    pub fn lookup(&self, reference: &str) -> Result<Image, ImageError> {
        let records = self.records()?;
        let manifest = self
            .resolve(&records, reference)?
            .into_iter()
            .next()
            .ok_or_else(|| ImageError::NotFound(reference.to_string()))?;
        self.image(&records, &manifest)
    }

    /// Every image, ordered by their first name (unnamed ones last).
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let records = self.records()?;
        let mut images = records
            .images
            .keys()
            .map(|m| self.image(&records, m))
            .collect::<Result<Vec<_>, _>>()?;
        images.sort_by(|a, b| {
            (a.repo_tags.is_empty(), a.repo_tags.first(), &a.id).cmp(&(
                b.repo_tags.is_empty(),
                b.repo_tags.first(),
                &b.id,
            ))
        });
        Ok(images)
    }

    /// Notes that an image was used now (for the garbage collector's least-recently-used order).
    pub fn mark_used(&self, id: &str) -> Result<(), ImageError> {
        records::update(&self.dir, |records| {
            let now = now();
            for record in records
                .images
                .values_mut()
                .filter(|r| r.config_digest == id)
            {
                record.last_used = now;
            }
            Ok(())
        })
    }

    /// Removes a name, or a whole image when `reference` is an id or a digest reference. An
    /// image left without names is removed, and the layers and blobs no image uses any more are
    /// deleted (unless an import or pull is running; the next removal or GC gets them). Returns
    /// the ids of the images removed.
    pub fn remove(&self, reference: &str) -> Result<Vec<String>, ImageError> {
        let by_name = !reference.contains('@') && {
            let records = self.records()?;
            normalize_reference(reference).is_ok_and(|n| records.references.contains_key(&n))
        };
        let removed = records::update(&self.dir, |records| {
            let targets = self.resolve(records, reference)?;
            if targets.is_empty() {
                return Err(ImageError::NotFound(reference.to_string()));
            }
            let mut removed = Vec::new();
            if by_name {
                let name = normalize_reference(reference)?;
                let manifest = records.references.remove(&name).unwrap_or_default();
                if records.references_to(&manifest).next().is_none() {
                    removed.extend(records.remove_image(&manifest).map(|r| r.config_digest));
                }
            } else {
                for manifest in targets {
                    removed.extend(records.remove_image(&manifest).map(|r| r.config_digest));
                }
            }
            Ok(removed)
        })?;
        if !removed.is_empty() {
            match self.lock(FlockArg::LockExclusiveNonblock)? {
                Some(_exclusive) => {
                    self.prune()?;
                }
                None => {
                    tracing::info!("an import or pull is running: unused layers are left for later")
                }
            }
        }
        Ok(removed)
    }

    /// Deletes the layers and blobs no record names, and staging debris, except layers that a
    /// mounted overlay still uses. The caller holds the store lock exclusively. Returns the
    /// bytes of layer content freed.
    pub(crate) fn prune(&self) -> Result<u64, ImageError> {
        self.clear_staging()?;
        let records = self.records()?;
        let mut keep: HashSet<String> = HashSet::new();
        for (manifest, record) in &records.images {
            keep.insert(sha256_hex(manifest)?.to_string());
            keep.insert(sha256_hex(&record.config_digest)?.to_string());
            for layer in &record.layers {
                keep.insert(sha256_hex(&layer.diff_id)?.to_string());
            }
        }
        let mounted = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut freed = 0;
        for sub in ["layers", "blobs/sha256"] {
            let dir = self.dir.join(sub);
            for entry in fs::read_dir(&dir).context(|| format!("reading {}", dir.display()))? {
                let path = entry
                    .context(|| format!("reading {}", dir.display()))?
                    .path();
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                if keep.contains(&name) {
                    continue;
                }
                if sub == "layers" {
                    if mounted.contains(&format!("{}/fs", path.display())) {
                        tracing::warn!(layer = %name, "unused layer still under a mounted root filesystem: kept");
                        continue;
                    }
                    freed += self.layer_size(&format!("sha256:{name}")).ok().flatten().unwrap_or(0);
                    tracing::info!(layer = %name, "removing an unused layer");
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                }
                .context(|| format!("removing {}", path.display()))?;
            }
        }
        Ok(freed)
    }
}

/// Flushes the filesystem holding `path` (one syncfs instead of an fsync per unpacked file)
/// before the content is renamed into place.
fn sync_filesystem(path: &Path) -> Result<(), ImageError> {
    let dir = File::open(path).context(|| format!("opening {}", path.display()))?;
    // SAFETY: syncfs takes any open descriptor on the filesystem.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    nix::errno::Errno::result(rc)
        .map(drop)
        .context(|| format!("syncing the filesystem of {}", path.display()))
}
