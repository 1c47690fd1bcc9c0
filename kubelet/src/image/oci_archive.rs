//! Writing images as OCI archives (an OCI image layout in a tar file, as `ctr images export`
//! and `skopeo copy … oci-archive:` write them): used by `image build-busybox` and by tests
//! that need images of their own making.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;

use super::digest::sha256_digest;
use super::error::IoContext;
use super::spec::{
    ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, ConfigFile, Descriptor, Index,
    MEDIA_OCI_CONFIG, MEDIA_OCI_INDEX, MEDIA_OCI_LAYER_GZIP, MEDIA_OCI_MANIFEST, Manifest,
    Platform, RootFs,
};
use super::{ImageConfig, ImageError, normalize_reference};

/// A layer being built: an uncompressed tar stream in memory.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    pub fn new() -> Self {
        LayerBuilder {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    fn append(
        &mut self,
        path: &str,
        kind: tar::EntryType,
        mode: u32,
        data: &[u8],
        link: Option<&str>,
    ) -> std::io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        if let Some(link) = link {
            self.tar.append_link(&mut header, path, link)
        } else {
            self.tar.append_data(&mut header, path, data)
        }
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> std::io::Result<&mut Self> {
        self.append(path, tar::EntryType::Directory, mode, &[], None)?;
        Ok(self)
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, contents: &[u8], mode: u32) -> std::io::Result<&mut Self> {
        self.append(path, tar::EntryType::Regular, mode, contents, None)?;
        Ok(self)
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> std::io::Result<&mut Self> {
        self.append(path, tar::EntryType::Symlink, 0o777, &[], Some(target))?;
        Ok(self)
    }

    /// Adds a whiteout: `path` is deleted from the layers below.
    pub fn whiteout(&mut self, path: &str) -> std::io::Result<&mut Self> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let marker = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&marker, &[], 0o644)
    }

    /// Makes directory `dir` opaque: nothing of the layers below shows through it.
    pub fn opaque(&mut self, dir: &str) -> std::io::Result<&mut Self> {
        self.file(
            &format!("{}/.wh..wh..opq", dir.trim_end_matches('/')),
            &[],
            0o644,
        )
    }

    /// The finished, uncompressed tar stream.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        self.tar.into_inner()
    }
}

/// What [`write_oci_archive`] wrote.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// `sha256:<hex>` of the image config: the id the store will give the image.
    pub id: String,
    pub manifest_digest: String,
}

/// Writes an OCI archive holding one linux/amd64 image named `reference` (recorded in both the
/// `io.containerd.image.name` and `org.opencontainers.image.ref.name` annotations) with the
/// given config and layers (uncompressed tar streams, lowest first; each is stored gzipped).
/// The file appears whole or not at all.
pub fn write_oci_archive(
    output: &Path,
    reference: &str,
    config: &ImageConfig,
    layers: &[Vec<u8>],
) -> Result<BuiltImage, ImageError> {
    let name = normalize_reference(reference)?;
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut layer_descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(layer)
            .and_then(|()| gz.finish())
            .map(|compressed| {
                let digest = sha256_digest(&compressed);
                layer_descriptors.push(descriptor(MEDIA_OCI_LAYER_GZIP, &digest, compressed.len()));
                diff_ids.push(sha256_digest(layer));
                blobs.push((digest, compressed));
            })
            .context(|| "compressing a layer".to_string())?;
    }
    let config_file = ConfigFile {
        created: Some("1970-01-01T00:00:00Z".to_string()),
        architecture: "amd64".to_string(),
        os: "linux".to_string(),
        config: config.clone(),
        rootfs: RootFs {
            kind: "layers".to_string(),
            diff_ids,
        },
    };
    let config_bytes = to_json(&config_file)?;
    let config_digest = sha256_digest(&config_bytes);
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_MANIFEST.to_string()),
        config: descriptor(MEDIA_OCI_CONFIG, &config_digest, config_bytes.len()),
        layers: layer_descriptors,
    };
    let manifest_bytes = to_json(&manifest)?;
    let manifest_digest = sha256_digest(&manifest_bytes);
    let mut manifest_descriptor =
        descriptor(MEDIA_OCI_MANIFEST, &manifest_digest, manifest_bytes.len());
    manifest_descriptor.platform = Some(Platform {
        architecture: "amd64".to_string(),
        os: "linux".to_string(),
        variant: None,
    });
    manifest_descriptor.annotations = BTreeMap::from([
        (ANNOTATION_CONTAINERD_NAME.to_string(), name),
        (ANNOTATION_REF_NAME.to_string(), reference.to_string()),
    ]);
    let index = Index {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_INDEX.to_string()),
        manifests: vec![manifest_descriptor],
    };
    blobs.push((config_digest.clone(), config_bytes));
    blobs.push((manifest_digest.clone(), manifest_bytes));

    let partial = output.with_extension("partial");
    let write = || -> std::io::Result<()> {
        let mut tar = tar::Builder::new(File::create(&partial)?);
        let mut add = |path: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            tar.append_data(&mut header, path, data)
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        add("index.json", &serde_json::to_vec(&index)?)?;
        for (digest, data) in &blobs {
            add(
                &format!("blobs/sha256/{}", &digest["sha256:".len()..]),
                data,
            )?;
        }
        let file = tar.into_inner()?;
        file.sync_all()?;
        std::fs::rename(&partial, output)
    };
    write().context(|| {
        let _ = std::fs::remove_file(&partial);
        format!("writing {}", output.display())
    })?;
    Ok(BuiltImage {
        id: config_digest,
        manifest_digest,
    })
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest: digest.to_string(),
        size: size as u64,
        annotations: BTreeMap::new(),
        platform: None,
    }
}

fn to_json(value: &impl serde::Serialize) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(value).map_err(|e| ImageError::content("a generated document", e))
}
