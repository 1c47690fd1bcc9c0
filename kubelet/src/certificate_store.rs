//! The node's certificates on disk, kept as the kubelet's certificate store keeps them in
//! `--cert-dir`: each certificate and its key in one PEM file `<prefix>-<timestamp>.pem` (mode
//! 0600), and `<prefix>-current.pem` a symlink to the one in use. A new pair is written in full
//! (temp file, fsync, rename) before the link is swapped by a rename, so a crash at any point
//! leaves either the old pair or the new one current, never half of one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

/// One certificate (and key) in the store.
#[derive(Debug, Clone)]
pub struct StoredPair {
    /// The `-current.pem` link it was read through (what kubeconfigs point at).
    pub path: PathBuf,
    /// The file's text: the certificate chain and the key, PEM.
    pub pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl StoredPair {
    /// Whether the certificate is valid now.
    pub fn is_current(&self) -> bool {
        let now = SystemTime::now();
        self.not_before <= now && now < self.not_after
    }

    /// The chain and key as rustls takes them.
    pub fn rustls(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), StoreError> {
        let invalid = |detail: String| StoreError::Invalid {
            path: self.path.clone(),
            detail,
        };
        let pem = std::fs::read(&self.path).map_err(|source| StoreError::Io {
            what: "reading",
            path: self.path.clone(),
            source,
        })?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| invalid(e.to_string()))?;
        Ok((chain, key))
    }
}

/// The pairs under `dir` named `<prefix>-…` (`kubelet-client`, `kubelet-server`).
#[derive(Debug, Clone)]
pub struct CertificateStore {
    dir: PathBuf,
    prefix: &'static str,
}

impl CertificateStore {
    pub fn new(dir: &Path, prefix: &'static str) -> CertificateStore {
        CertificateStore {
            dir: dir.to_path_buf(),
            prefix,
        }
    }

    /// Removes every pair of this store and its link (none kept), as for a node that joins
    /// another cluster.
    pub fn clear(&self) -> Result<(), StoreError> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(());
        };
        let prefix = format!("{}-", self.prefix);
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                match std::fs::remove_file(entry.path()) {
                    Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                        return Err(StoreError::Io {
                            what: "removing",
                            path: entry.path(),
                            source,
                        });
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The link to the pair in use (whether or not one exists yet).
    pub fn current_path(&self) -> PathBuf {
        self.dir.join(format!("{}-current.pem", self.prefix))
    }

    /// The pair in use, if there is one that parses.
    pub fn current(&self) -> Option<StoredPair> {
        let path = self.current_path();
        let pem = std::fs::read_to_string(&path).ok()?;
        match skiff_client::certificates::validity(&pem) {
            Ok((not_before, not_after)) => Some(StoredPair {
                path,
                pem,
                not_before,
                not_after,
            }),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable certificate in the store");
                None
            }
        }
    }

    /// Stores a new pair and makes it current; the previous one is removed.
    pub fn update(&self, certificate_pem: &str, key_pem: &str) -> Result<StoredPair, StoreError> {
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { what, path, source }
        };
        let (not_before, not_after) = skiff_client::certificates::validity(certificate_pem)
            .map_err(|e| StoreError::Invalid {
                path: self.dir.clone(),
                detail: e.to_string(),
            })?;
        std::fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))?;
        let stamp = chrono::Utc::now().format("%Y-%m-%d-%H-%M-%S-%f");
        let name = format!("{}-{stamp}.pem", self.prefix);
        let file = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let pem = format!("{}\n{}\n", certificate_pem.trim_end(), key_pem.trim_end());
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(pem.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &file)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io("writing", &file)(e)
        })?;
        let current = self.current_path();
        let previous = std::fs::read_link(&current).ok();
        let link_tmp = self.dir.join(format!(".{}-current.tmp", self.prefix));
        let _ = std::fs::remove_file(&link_tmp);
        std::os::unix::fs::symlink(&name, &link_tmp).map_err(io("linking", &link_tmp))?;
        std::fs::rename(&link_tmp, &current).map_err(io("replacing", &current))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", &self.dir))?;
        if let Some(old) = previous.filter(|old| old.as_os_str() != name.as_str()) {
            let _ = std::fs::remove_file(self.dir.join(old));
        }
        Ok(StoredPair {
            path: current,
            pem,
            not_before,
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(days: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["n1".to_string()]).unwrap();
        p.not_after = rcgen::date_time_ymd(2000 + days as i32, 1, 1);
        (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn an_update_replaces_the_current_pair_and_drops_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertificateStore::new(&dir.path().join("pki"), "kubelet-client");
        assert!(store.current().is_none());
        let (cert, key) = pair(90);
        let first = store.update(&cert, &key).unwrap();
        assert!(first.is_current());
        let (chain, _) = store.current().unwrap().rustls().unwrap();
        assert_eq!(chain.len(), 1);
        let (cert2, key2) = pair(80);
        store.update(&cert2, &key2).unwrap();
        let now = store.current().unwrap();
        assert_eq!(now.pem.split("-----BEGIN CERTIFICATE").count(), 2);
        assert!(now.pem.contains(cert2.trim()));
        let files: Vec<_> = std::fs::read_dir(dir.path().join("pki"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files.len(), 2, "{files:?}");
        let mode = std::fs::metadata(store.current_path()).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
    }

    #[test]
    fn an_expired_pair_is_not_current() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertificateStore::new(dir.path(), "kubelet-client");
        let (cert, key) = pair(1);
        assert!(!store.update(&cert, &key).unwrap().is_current());
    }

    #[test]
    fn clearing_removes_this_stores_pairs_only() {
        let dir = tempfile::tempdir().unwrap();
        let client = CertificateStore::new(dir.path(), "kubelet-client");
        let server = CertificateStore::new(dir.path(), "kubelet-server");
        let (cert, key) = pair(90);
        client.update(&cert, &key).unwrap();
        server.update(&cert, &key).unwrap();
        client.clear().unwrap();
        assert!(client.current().is_none());
        assert!(server.current().is_some());
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            left.iter().all(|n| n.starts_with("kubelet-server-")),
            "{left:?}"
        );
        CertificateStore::new(&dir.path().join("missing"), "kubelet-client")
            .clear()
            .unwrap();
    }
}
