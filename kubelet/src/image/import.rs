//! Importing image archives: OCI archives (`ctr images export`, `skopeo copy … oci-archive:`,
//! named by the `io.containerd.image.name` or `org.opencontainers.image.ref.name` annotation)
//! and docker-archives (`docker save`, named by `RepoTags`).

use std::collections::BTreeMap;
use std::path::Path;

use super::archive::ArchiveReader;
use super::digest::{sha256_digest, sha256_hex};
use super::records::LayerRecord;
use super::spec::{
    ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, ConfigFile, Descriptor, Index,
    MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER_TAR, MEDIA_OCI_MANIFEST, Manifest, is_index,
};
use super::store::{Image, ImageStore};
use super::{ImageError, normalize_reference, repository_of};

/// One image found in an archive, before it is stored.
struct ArchiveImage {
    names: Vec<String>,
    manifest_bytes: Vec<u8>,
    config_bytes: Vec<u8>,
    /// Per layer: the archive member and, when the member is named by it, the blob digest.
    layers: Vec<(String, Option<String>)>,
    /// Whether `<repository>@<manifest digest>` names are recorded (not for docker-archives,
    /// whose manifest is made here).
    has_registry_manifest: bool,
}

impl ImageStore {
    /// Imports every image of an OCI archive or docker-archive file and returns them.
    pub fn import(&self, archive: &Path) -> Result<Vec<Image>, ImageError> {
        let reader = ArchiveReader::scan(archive)?;
        let images = if reader.contains("index.json") {
            oci_images(&reader)?
        } else if reader.contains("manifest.json") {
            docker_images(&reader)?
        } else {
            return Err(ImageError::InvalidArchive {
                path: archive.to_path_buf(),
                reason: "neither an OCI archive (index.json) nor a docker-archive (manifest.json)"
                    .into(),
            });
        };
        let staging = self.staging()?;
        let mut imported = Vec::new();
        for image in images {
            let manifest_digest = sha256_digest(&image.manifest_bytes);
            let config_digest = sha256_digest(&image.config_bytes);
            let config: ConfigFile = serde_json::from_slice(&image.config_bytes)
                .map_err(|e| ImageError::content(format!("image config {config_digest}"), e))?;
            if config.rootfs.diff_ids.len() != image.layers.len() {
                return Err(ImageError::content(
                    format!("image config {config_digest}"),
                    format!(
                        "{} diff ids for {} layers",
                        config.rootfs.diff_ids.len(),
                        image.layers.len()
                    ),
                ));
            }
            let mut layers = Vec::new();
            for ((member, blob_digest), diff_id) in image.layers.iter().zip(&config.rootfs.diff_ids)
            {
                sha256_hex(diff_id)?;
                let size = match self.layer_size(diff_id)? {
                    Some(size) => size,
                    None => {
                        tracing::info!(layer = %diff_id, archive = %archive.display(), "unpacking layer");
                        self.add_layer(
                            &staging,
                            diff_id,
                            reader.open(member)?,
                            blob_digest.as_deref(),
                        )?
                    }
                };
                layers.push(LayerRecord {
                    diff_id: diff_id.clone(),
                    size,
                });
            }
            self.add_blob(&staging, &config_digest, &image.config_bytes)?;
            self.add_blob(&staging, &manifest_digest, &image.manifest_bytes)?;
            let repo_digests = if image.has_registry_manifest {
                image
                    .names
                    .iter()
                    .map(|n| format!("{}@{manifest_digest}", repository_of(n)))
                    .collect()
            } else {
                Vec::new()
            };
            let image = self.record_image(
                &manifest_digest,
                &config_digest,
                layers,
                &image.names,
                repo_digests,
            )?;
            tracing::info!(id = %image.id, names = ?image.repo_tags, "imported image");
            imported.push(image);
        }
        Ok(imported)
    }
}

fn blob_member(digest: &str) -> Result<String, ImageError> {
    Ok(format!("blobs/sha256/{}", sha256_hex(digest)?))
}

/// A blob of an OCI layout, checked against its digest.
fn read_blob(reader: &ArchiveReader, digest: &str) -> Result<Vec<u8>, ImageError> {
    let bytes = reader.read_document(&blob_member(digest)?)?;
    let actual = sha256_digest(&bytes);
    if actual != digest {
        return Err(ImageError::DigestMismatch {
            what: format!("{} blob", reader.path().display()),
            expected: digest.to_string(),
            actual,
        });
    }
    Ok(bytes)
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::content(what, e))
}

/// The image's name from its index annotations; a `ref.name` that is only a tag names nothing.
fn annotated_name(annotations: &BTreeMap<String, String>) -> Result<Option<String>, ImageError> {
    if let Some(name) = annotations.get(ANNOTATION_CONTAINERD_NAME) {
        return normalize_reference(name).map(Some);
    }
    match annotations.get(ANNOTATION_REF_NAME) {
        Some(name) if name.contains([':', '/', '@']) => normalize_reference(name).map(Some),
        Some(tag) => {
            tracing::warn!(
                tag,
                "the archive names only a tag; the image is imported without a name"
            );
            Ok(None)
        }
        None => Ok(None),
    }
}

fn oci_images(reader: &ArchiveReader) -> Result<Vec<ArchiveImage>, ImageError> {
    let index: Index = parse("index.json", &reader.read_document("index.json")?)?;
    let mut images = Vec::new();
    for entry in &index.manifests {
        let names: Vec<String> = annotated_name(&entry.annotations)?.into_iter().collect();
        let manifest_descriptor = resolve_platform(reader, entry)?;
        let manifest_bytes = read_blob(reader, &manifest_descriptor.digest)?;
        let manifest: Manifest = parse(
            &format!("manifest {}", manifest_descriptor.digest),
            &manifest_bytes,
        )?;
        let config_bytes = read_blob(reader, &manifest.config.digest)?;
        let layers = manifest
            .layers
            .iter()
            .map(|l| Ok((blob_member(&l.digest)?, Some(l.digest.clone()))))
            .collect::<Result<_, ImageError>>()?;
        images.push(ArchiveImage {
            names,
            manifest_bytes,
            config_bytes,
            layers,
            has_registry_manifest: true,
        });
    }
    Ok(images)
}

/// Follows nested indexes down to the linux/amd64 manifest.
fn resolve_platform(reader: &ArchiveReader, entry: &Descriptor) -> Result<Descriptor, ImageError> {
    let mut descriptor = entry.clone();
    for _ in 0..4 {
        let bytes = read_blob(reader, &descriptor.digest)?;
        let document: serde_json::Value =
            parse(&format!("manifest {}", descriptor.digest), &bytes)?;
        let media_type = Some(descriptor.media_type.as_str())
            .filter(|m| !m.is_empty())
            .or(document.get("mediaType").and_then(|m| m.as_str()));
        if !is_index(media_type, &document) {
            return Ok(descriptor);
        }
        let index: Index = parse(&format!("index {}", descriptor.digest), &bytes)?;
        descriptor = index.linux_amd64().cloned().ok_or_else(|| {
            ImageError::content(
                format!("index {}", descriptor.digest),
                "has no linux/amd64 image",
            )
        })?;
    }
    Err(ImageError::content(
        format!("index {}", entry.digest),
        "nested too deeply",
    ))
}

fn docker_images(reader: &ArchiveReader) -> Result<Vec<ArchiveImage>, ImageError> {
    let entries: Vec<super::spec::DockerArchiveImage> =
        parse("manifest.json", &reader.read_document("manifest.json")?)?;
    let mut images = Vec::new();
    for entry in entries {
        let config_bytes = reader.read_document(&entry.config)?;
        let config_digest = sha256_digest(&config_bytes);
        let config: ConfigFile = parse(&format!("image config {}", entry.config), &config_bytes)?;
        let mut layer_descriptors = Vec::new();
        let mut layers = Vec::new();
        for (member, diff_id) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
            // Newer docker writes layers as OCI blobs, named by their digest.
            let blob_digest = member
                .strip_prefix("blobs/sha256/")
                .map(|hex| format!("sha256:{hex}"));
            let size = reader.open(member)?.limit();
            layer_descriptors.push(Descriptor {
                media_type: MEDIA_OCI_LAYER_TAR.to_string(),
                digest: blob_digest.clone().unwrap_or_else(|| diff_id.clone()),
                size,
                annotations: BTreeMap::new(),
                platform: None,
            });
            layers.push((member.clone(), blob_digest));
        }
        // docker save has no manifest: the store keeps one made from the config and layers.
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_OCI_MANIFEST.to_string()),
            config: Descriptor {
                media_type: MEDIA_OCI_CONFIG.to_string(),
                digest: config_digest,
                size: config_bytes.len() as u64,
                annotations: BTreeMap::new(),
                platform: None,
            },
            layers: layer_descriptors,
        };
        let names = entry
            .repo_tags
            .iter()
            .map(|t| normalize_reference(t))
            .collect::<Result<_, _>>()?;
        images.push(ArchiveImage {
            names,
            manifest_bytes: serde_json::to_vec(&manifest)
                .map_err(|e| ImageError::content("a generated manifest", e))?,
            config_bytes,
            layers,
            has_registry_manifest: false,
        });
    }
    Ok(images)
}
