//! Image garbage collection: under disk pressure the kubelet frees space by removing the
//! images no container uses, least recently used first, and the layers only they used.

use std::collections::HashSet;
use std::time::Duration;

use nix::fcntl::FlockArg;

use super::records::{self, Durability};
use super::store::now;
use super::{ImageError, ImageStore};

/// What [`ImageStore::collect_garbage`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Ids of the images removed, in the order they went.
    pub removed: Vec<String>,
    /// Bytes of layer content deleted.
    pub freed_bytes: u64,
}

impl ImageStore {
    /// Bytes of layer content the store holds (every unpacked layer, named by an image or not).
    pub fn disk_usage(&self) -> Result<u64, ImageError> {
        let layers = self.dir().join("layers");
        let mut total = 0;
        for entry in std::fs::read_dir(&layers).map_err(|e| ImageError::Io {
            context: format!("reading {}", layers.display()),
            source: e,
        })? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            total += self
                .layer_size(&format!("sha256:{name}"))
                .ok()
                .flatten()
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// Frees at least `bytes_to_free` bytes if it can: first layers no image names (left by
    /// interrupted imports), then images whose id is not in `in_use` and that have been in the
    /// store for at least `min_age`, least recently used first, with the layers no remaining
    /// image shares. Waits for running imports and pulls to end, so it must not be called while
    /// this thread holds a staging directory.
    pub fn collect_garbage(
        &self,
        in_use: &HashSet<String>,
        bytes_to_free: u64,
        min_age: Duration,
    ) -> Result<GcReport, ImageError> {
        let _exclusive = self.lock(FlockArg::LockExclusive)?;
        let mut report = GcReport {
            removed: Vec::new(),
            freed_bytes: self.prune()?,
        };
        let mut expected = report.freed_bytes;
        let snapshot = self.records()?;
        let newest = now().saturating_sub(i64::try_from(min_age.as_millis()).unwrap_or(i64::MAX));
        let mut candidates: Vec<(&String, &records::ImageRecord)> = snapshot
            .images
            .iter()
            .filter(|(_, r)| !in_use.contains(&r.config_digest) && r.created <= newest)
            .collect();
        candidates.sort_by_key(|(manifest, r)| (r.last_used, manifest.as_str()));
        let mut remaining = snapshot.images.clone();
        for (manifest, record) in candidates {
            if expected >= bytes_to_free {
                break;
            }
            remaining.remove(manifest);
            let shared: HashSet<&str> = remaining
                .values()
                .flat_map(|r| r.layers.iter().map(|l| l.diff_id.as_str()))
                .collect();
            let frees: u64 = record
                .layers
                .iter()
                .filter(|l| !shared.contains(l.diff_id.as_str()))
                .map(|l| l.size)
                .sum();
            records::update(self.dir(), Durability::Synced, |records| {
                records.remove_image(manifest);
                Ok(())
            })?;
            tracing::info!(image = %record.config_digest, bytes = frees, "image garbage collection removes an unused image");
            expected += frees;
            report.removed.push(record.config_digest.clone());
        }
        report.freed_bytes += self.prune()?;
        Ok(report)
    }
}
