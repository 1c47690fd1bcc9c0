//! The node's image store: images imported from archives or pulled from registries, their
//! layers unpacked once and shared, and container root filesystems on overlayfs.
//!
//! - [`ImageStore`]: `open(root_dir)`, `import(archive)`, `lookup(reference)`, `list()`,
//!   `remove(reference)`, `mark_used(id)` (store layout and crash safety in `store.rs`);
//!   `pull` and `ensure` with [`PullOptions`] and [`PullPolicy`]; `collect_garbage`.
//! - [`mount_rootfs`] / [`unmount_rootfs`]: a container's overlayfs root.
//! - [`busybox::BusyboxImage`] and [`oci_archive`]: images of our own making, for examples and
//!   tests.
//!
//! How the agent uses it:
//! - start of a container: `PullPolicy::from_spec(container.image_pull_policy, &image)`, then
//!   `store.ensure(&image, policy, &options).await`, where `options` carries
//!   `--insecure-registry` and the pod's imagePullSecrets (`add_docker_config_json`). An
//!   [`ImageError::NeverPull`] is `ErrImageNeverPull`; any other error is `ErrImagePull`, its
//!   text the message. Then `mount_rootfs(&image, &container_dir)` gives the bundle's root, and
//!   the container's process defaults come from `image.config`.
//! - container status: `image` is the pod spec's name, `imageID` is
//!   `image.repo_digests.first()` (else `image.id`).
//! - node status: `store.list()` — names are `repo_tags` and `repo_digests`, `sizeBytes` is
//!   `size`.
//! - disk pressure and image GC: `store.collect_garbage(&ids_in_use, bytes_to_free, min_age)` in
//!   `spawn_blocking`; `store.disk_usage()` is the store's share of the disk.
//! - container removal: `unmount_rootfs(&container_dir)`, then remove the directory.
//!
//! The synchronous methods do file I/O: call them from `spawn_blocking` in async code.

mod archive;
pub mod busybox;
pub mod cli;
mod digest;
mod error;
mod gc;
mod import;
mod layer;
pub mod oci_archive;
mod pull;
mod records;
mod reference;
mod rootfs;
mod spec;
mod store;

pub use error::ImageError;
pub use gc::GcReport;
pub use pull::{PullOptions, PullPolicy};
pub use rootfs::{mount_rootfs, unmount_rootfs};
pub use spec::ImageConfig;
pub use store::{Image, ImageStore};

/// The full form of an image reference, as the store keys it: `busybox` →
/// `docker.io/library/busybox:latest`, `reg:5000/app@sha256:…` unchanged.
pub fn normalize_reference(reference: &str) -> Result<String, ImageError> {
    parse_reference(reference).map(|r| r.whole())
}

pub(crate) fn parse_reference(reference: &str) -> Result<oci_client::Reference, ImageError> {
    reference::parse(reference).map_err(|reason| ImageError::InvalidReference {
        reference: reference.to_string(),
        reason,
    })
}

/// `registry/repository` of a normalised reference (its tag and digest dropped).
pub(crate) fn repository_of(name: &str) -> String {
    match parse_reference(name) {
        Ok(r) => format!("{}/{}", r.registry(), r.repository()),
        Err(_) => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_as_docker_does() {
        assert_eq!(
            normalize_reference("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize_reference("127.0.0.1:5000/app:1").unwrap(),
            "127.0.0.1:5000/app:1"
        );
        assert_eq!(
            repository_of("docker.io/library/busybox:1"),
            "docker.io/library/busybox"
        );
        assert!(normalize_reference("no spaces allowed").is_err());
        let digest = format!("sha256:{}", "0".repeat(64));
        let by_digest = parse_reference(&format!("busybox@{digest}")).unwrap();
        assert_eq!(
            (by_digest.tag(), by_digest.digest()),
            (None, Some(digest.as_str()))
        );
    }
}
