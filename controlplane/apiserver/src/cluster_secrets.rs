//! The secrets every server of one cluster must share — the cluster CA (`ca.crt`, `ca.key`) and
//! the service-account signing key (`sa.key`) — kept in the store under one key,
//! `/registry/skiff/cluster-secrets`, which no API resource maps to. The first server to start
//! on a store writes its own there (create-if-absent, so of servers starting together exactly one
//! wins); every later one copies them into its data directory before issuing its serving and
//! client certificates from the CA. So a second `skiff server` needs only the etcd endpoints (and
//! the etcd client certificate): no join token, no copied directory.
//!
//! The value is not encrypted: whoever can read the etcd keyspace can read these, as they can
//! every Secret. Protect etcd with client certificates (`--etcd-certfile`), as kube-apiserver's
//! etcd must be.

use std::collections::BTreeMap;
use std::path::Path;

use skiff_store::{Store, StoreError};

use crate::auth::tokens;
use crate::pki::{self, Pki, PkiError};

pub const KEY: &str = "/registry/skiff/cluster-secrets";

/// The files shared, all private but the CA certificate.
const FILES: [(&str, bool); 3] = [
    ("ca.crt", false),
    ("ca.key", true),
    (tokens::KEY_FILE, true),
];

#[derive(Debug, thiserror::Error)]
pub enum SharingError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("the cluster secrets in the store ({KEY}): {0}")]
    Store(#[from] StoreError),
    #[error("the cluster secrets in the store ({KEY}) are corrupt: {0}")]
    Corrupt(String),
}

/// Makes `data_dir` hold the cluster's shared secrets: the store's when it has them, else this
/// server's own (made if missing), which it then publishes.
pub async fn share(store: &dyn Store, data_dir: &Path) -> Result<(), SharingError> {
    let pki = Pki::new(data_dir);
    loop {
        if let Some(kv) = store.get(KEY).await? {
            let files: BTreeMap<String, String> = serde_json::from_slice(&kv.value)
                .map_err(|e| SharingError::Corrupt(e.to_string()))?;
            let mut changed_ca = false;
            for (name, private) in FILES {
                let pem = files
                    .get(name)
                    .ok_or_else(|| SharingError::Corrupt(format!("{name} is missing")))?;
                let path = pki.path(name);
                if std::fs::read_to_string(&path).ok().as_deref() != Some(pem.as_str()) {
                    tracing::info!(file = %path.display(), "taking the cluster's shared secret from the store");
                    pki::write(&path, pem.as_bytes(), private)?;
                    changed_ca |= name.starts_with("ca.");
                }
            }
            if changed_ca {
                pki.forget_issued();
            }
            return Ok(());
        }
        pki.ensure_ca()?;
        tokens::ensure_key(data_dir)?;
        let mut files = BTreeMap::new();
        for (name, _) in FILES {
            let path = pki.path(name);
            let pem = std::fs::read_to_string(&path).map_err(|source| PkiError::Io {
                path: path.clone(),
                source,
            })?;
            files.insert(name.to_string(), pem);
        }
        let value = serde_json::to_vec(&files).expect("strings serialise");
        match store.create(KEY, value).await {
            Ok(_) => {
                tracing::info!(
                    key = KEY,
                    "published the cluster CA and service-account key for other servers"
                );
                return Ok(());
            }
            // Another server published first: take its secrets.
            Err(StoreError::AlreadyExists(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_store::embedded::EmbeddedStore;

    #[tokio::test]
    async fn a_second_server_takes_the_first_ones_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        share(&store, &a).await.unwrap();
        // b had made a CA of its own before: the shared one replaces it.
        Pki::new(&b).ensure_ca().unwrap();
        share(&store, &b).await.unwrap();
        for (name, _) in FILES {
            assert_eq!(
                std::fs::read(a.join(name)).unwrap(),
                std::fs::read(b.join(name)).unwrap(),
                "{name}"
            );
        }
    }
}
