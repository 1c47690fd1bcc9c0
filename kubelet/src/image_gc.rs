//! Image garbage collection by disk usage, as the kubelet's image GC manager does it: every
//! `--image-gc-period` (the kubelet's fixed five minutes) the usage of the filesystem holding the
//! image store is read, and once it reaches `--image-gc-high-threshold` percent the images no pod
//! and no container on the node uses are removed, least recently used first, until usage is down
//! to `--image-gc-low-threshold` percent. Images that came in less than
//! `--minimum-image-ttl-duration` ago are kept. A high threshold of 100 turns collection off.
//!
//! A collection that cannot get below the low threshold fails with the kubelet's message, which
//! the pod manager also writes as a `FreeDiskSpaceFailed` event on the Node (and, from the second
//! failed collection in a row, `ImageGCFailed`, as the kubelet's garbage collection loop does).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use crate::containers;
use crate::image::{ImageError, ImageStore};

/// Why a collection failed.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Past the high threshold, the unused images were too few to get below the low one (the
    /// kubelet's words, which its FreeDiskSpaceFailed event carries).
    #[error(
        "Failed to garbage collect required amount of images. Attempted to free {attempted} bytes, but only found {freed} bytes eligible to free."
    )]
    NotEnoughFreed { attempted: u64, freed: u64 },
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// When and how far unused images are collected.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageGcPolicy {
    /// Usage (percent of the image filesystem) at which collection starts.
    pub high_threshold_percent: u8,
    /// Usage collection brings the filesystem down to.
    pub low_threshold_percent: u8,
    /// Images younger than this are never collected.
    pub min_age: Duration,
    /// How often usage is checked.
    pub period: Duration,
}

impl ImageGcPolicy {
    /// The kubelet's checks of the two thresholds, with its messages.
    pub fn validate(&self) -> Result<(), String> {
        let (high, low) = (self.high_threshold_percent, self.low_threshold_percent);
        if high > 100 {
            return Err(format!(
                "invalid configuration: imageGCHighThresholdPercent (--image-gc-high-threshold) {high} must be between 0 and 100, inclusive"
            ));
        }
        if low > 100 {
            return Err(format!(
                "invalid configuration: imageGCLowThresholdPercent (--image-gc-low-threshold) {low} must be between 0 and 100, inclusive"
            ));
        }
        if low >= high {
            return Err(format!(
                "invalid configuration: imageGCLowThresholdPercent (--image-gc-low-threshold) {low} must be less than imageGCHighThresholdPercent (--image-gc-high-threshold) {high}"
            ));
        }
        Ok(())
    }

    /// Whether collection runs at all (`--image-gc-high-threshold 100` turns it off).
    pub fn enabled(&self) -> bool {
        self.high_threshold_percent < 100
    }

    /// The bytes to free on a filesystem of `capacity` bytes with `available` free: none below
    /// the high threshold, else enough to reach the low one (the kubelet's integer arithmetic).
    pub fn amount_to_free(&self, available: u64, capacity: u64) -> Option<u64> {
        if capacity == 0 {
            return None;
        }
        let available = available.min(capacity);
        let usage_percent = 100 - available * 100 / capacity;
        (usage_percent >= u64::from(self.high_threshold_percent)).then(|| {
            (capacity * (100 - u64::from(self.low_threshold_percent)) / 100)
                .saturating_sub(available)
        })
    }
}

/// One collection: reads the usage of the image filesystem and, past the high threshold,
/// removes unused images. `pods` are the pods on the node; their images and those of every
/// container on disk (in `run_dir`) are in use. Blocking.
pub fn collect(
    policy: &ImageGcPolicy,
    images: &ImageStore,
    run_dir: &Path,
    pods: &[Arc<Pod>],
) -> Result<(), GcError> {
    let fs = nix::sys::statvfs::statvfs(images.dir()).map_err(|e| ImageError::Io {
        context: format!("statvfs of {}", images.dir().display()),
        source: e.into(),
    })?;
    let frag = fs.fragment_size();
    let (available, capacity) = (fs.blocks_available() * frag, fs.blocks() * frag);
    let Some(needed) = policy.amount_to_free(available, capacity) else {
        return Ok(());
    };
    tracing::info!(
        usage = 100 - available * 100 / capacity,
        high_threshold = policy.high_threshold_percent,
        low_threshold = policy.low_threshold_percent,
        amount_to_free = needed,
        "disk usage on the image filesystem is over the high threshold, freeing bytes down to the low threshold"
    );
    let in_use = images_in_use(images, run_dir, pods);
    let report = images.collect_garbage(&in_use, needed, policy.min_age)?;
    if !report.removed.is_empty() {
        tracing::info!(removed = ?report.removed, freed = report.freed_bytes, "unused images collected");
    }
    if report.freed_bytes < needed {
        return Err(GcError::NotEnoughFreed {
            attempted: needed,
            freed: report.freed_bytes,
        });
    }
    Ok(())
}

/// The ids of the images the pods' containers name and those of the containers on disk.
pub fn images_in_use(images: &ImageStore, run_dir: &Path, pods: &[Arc<Pod>]) -> HashSet<String> {
    let from_pods = pods.iter().flat_map(|p| p.spec.iter()).flat_map(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(&s.containers)
            .filter_map(|c| c.image.clone())
            .chain(
                s.ephemeral_containers
                    .iter()
                    .flatten()
                    .filter_map(|c| c.image.clone()),
            )
    });
    let (records, _) = containers::list(run_dir);
    from_pods
        .chain(records.into_iter().map(|r| r.meta.image))
        .filter_map(|reference| images.lookup(&reference).ok())
        .map(|image| image.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(high: u8, low: u8) -> ImageGcPolicy {
        ImageGcPolicy {
            high_threshold_percent: high,
            low_threshold_percent: low,
            min_age: Duration::ZERO,
            period: Duration::from_secs(300),
        }
    }

    #[test]
    fn frees_down_to_the_low_threshold_once_usage_reaches_the_high_one() {
        let p = policy(85, 80);
        // 84% used: nothing.
        assert_eq!(p.amount_to_free(16, 100), None);
        // 85% used: down to 80%, 20 bytes free.
        assert_eq!(p.amount_to_free(15, 100), Some(5));
        assert_eq!(p.amount_to_free(1000, 10_000), Some(1000));
        assert_eq!(p.amount_to_free(0, 0), None);
        // 100 turns collection off; even a full disk then frees nothing.
        assert!(!policy(100, 80).enabled());
        assert!(p.enabled());
    }

    #[test]
    fn thresholds_are_checked_as_the_kubelet_checks_them() {
        assert!(policy(85, 80).validate().is_ok());
        assert!(policy(100, 0).validate().is_ok());
        assert!(
            policy(101, 80)
                .validate()
                .unwrap_err()
                .contains("between 0 and 100")
        );
        assert!(
            policy(80, 80)
                .validate()
                .unwrap_err()
                .contains("must be less than imageGCHighThresholdPercent")
        );
    }
}
