//! `skiff store migrate`: copies every object from one store to another — the embedded store
//! of a data directory to etcd (`etcd://HOST:PORT[,HOST:PORT…][?prefix=/registry]`) or back.
//!
//! Stored values are copied byte for byte, so objects keep their content (uid,
//! creationTimestamp…); their resourceVersions become the destination's revisions. The copy
//! refuses to run while a server uses either store: the embedded store's file lock, or on etcd
//! a Lease in kube-system renewed within its duration (the leader Leases of the scheduler and
//! controller manager a running server holds). [`MIGRATION_MARKER`] is written into the
//! destination before the first object and deleted after the last: a copy killed midway
//! leaves a store the API server refuses to serve, and running the migration again replaces it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use skiff_store::embedded::EmbeddedStore;
use skiff_store::etcd::{EtcdConfig, EtcdStore};
use skiff_store::{MIGRATION_MARKER, Store, StoreError};

/// Every key the API server stores starts with this.
const ROOT: &str = "/registry/";
/// Keys read per page and written concurrently.
const PAGE: usize = 100;
const WRITES_IN_FLIGHT: usize = 32;
/// Where Leases of kube-system are kept (the layout of resources.rs: `/registry/leases/NS/NAME`).
const SYSTEM_LEASES: &str = "/registry/leases/kube-system/";

/// One end of a migration, as given on the command line.
#[derive(Debug, Clone)]
pub enum Location {
    /// A server data directory; the embedded store is `DIR/store.redb`.
    Dir(PathBuf),
    Etcd(EtcdConfig),
}

impl std::str::FromStr for Location {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let Some(rest) = s.strip_prefix("etcd://") else {
            if s.contains("://") {
                return Err(format!("{s}: expected a directory or etcd://HOST:PORT[,…]"));
            }
            return Ok(Location::Dir(PathBuf::from(s)));
        };
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let endpoints: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("http://{h}"))
            .collect();
        if endpoints.is_empty() {
            return Err(format!("{s}: no etcd HOST:PORT"));
        }
        let mut cfg = EtcdConfig::new(endpoints);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("prefix", p)) if p.starts_with('/') => cfg.prefix = p.to_string(),
                _ => {
                    return Err(format!(
                        "{s}: unknown or bad parameter {pair:?} (prefix=/…)"
                    ));
                }
            }
        }
        Ok(Location::Etcd(cfg))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Dir(d) => write!(f, "{}", d.join("store.redb").display()),
            Location::Etcd(c) => write!(f, "etcd {} (prefix {})", c.endpoints.join(","), c.prefix),
        }
    }
}

/// Opens the store at `loc`, refusing one a live server uses.
async fn open(loc: &Location, create: bool) -> anyhow::Result<Arc<dyn Store>> {
    match loc {
        Location::Dir(dir) => {
            let path = dir.join("store.redb");
            if !create && !path.is_file() {
                bail!("{} does not exist", path.display());
            }
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            match EmbeddedStore::open(&path) {
                Ok(s) => Ok(Arc::new(s)),
                Err(e @ StoreError::InUse(_)) => {
                    bail!("refusing to migrate: {e}; stop the server first")
                }
                Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
            }
        }
        Location::Etcd(cfg) => {
            let store =
                tokio::time::timeout(std::time::Duration::from_secs(30), EtcdStore::connect(cfg))
                    .await
                    .with_context(|| format!("{loc}: not reachable within 30s"))??;
            if let Some(lease) = live_lease(&store).await? {
                bail!(
                    "refusing to migrate: {loc} is in use by a running server (Lease \
                     kube-system/{lease} was renewed within its duration); stop every server first"
                );
            }
            Ok(Arc::new(store))
        }
    }
}

/// The name of a kube-system Lease whose holder renewed it within its duration, if any.
async fn live_lease(store: &EtcdStore) -> anyhow::Result<Option<String>> {
    let now = chrono::Utc::now();
    let leases = store.range(SYSTEM_LEASES, None, 0).await?;
    for kv in leases.kvs {
        let Ok(lease) = serde_json::from_slice::<serde_json::Value>(&kv.value) else {
            continue;
        };
        let spec = &lease["spec"];
        let renewed = spec["renewTime"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        let duration = spec["leaseDurationSeconds"].as_i64();
        if let (Some(renewed), Some(duration)) = (renewed, duration)
            && renewed + chrono::Duration::seconds(duration) > now
        {
            return Ok(Some(kv.key[SYSTEM_LEASES.len()..].to_string()));
        }
    }
    Ok(None)
}

/// Runs the migration; `force` replaces a destination that holds objects.
pub async fn migrate(from: &Location, to: &Location, force: bool) -> anyhow::Result<()> {
    if let (Location::Dir(a), Location::Dir(b)) = (from, to)
        && let (Ok(a), Ok(b)) = (a.canonicalize(), b.canonicalize())
        && a == b
    {
        bail!("--from and --to are the same directory");
    }
    let source = open(from, false).await?;
    if source.get(MIGRATION_MARKER).await?.is_some() {
        bail!("{from} holds a migration that did not finish; it is no source to copy from");
    }
    if source.range(ROOT, None, 1).await?.kvs.is_empty() {
        bail!("{from} holds no objects (a wrong directory or prefix?); nothing to migrate");
    }
    let dest = open(to, true).await?;
    let existing = dest.range(ROOT, None, 2).await?;
    let resumed = dest.get(MIGRATION_MARKER).await?.is_some();
    if !existing.kvs.is_empty() && !resumed && !force {
        bail!("{to} already holds objects; pass --force to replace them");
    }
    // The marker first: from here until it is deleted the destination is incomplete.
    match dest
        .create(MIGRATION_MARKER, format!("from {from}").into_bytes())
        .await
    {
        Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
        Err(e) => return Err(e).context("writing the migration marker"),
    }
    if resumed {
        eprintln!("{to} holds a migration that did not finish; replacing it");
    }
    let cleared = clear(&*dest).await?;
    if cleared > 0 {
        eprintln!("removed {cleared} keys from {to}");
    }
    let copied = copy(&*source, &*dest).await?;
    dest.delete(MIGRATION_MARKER, None)
        .await
        .context("deleting the migration marker")?;
    eprintln!("migrated {copied} keys from {from} to {to}");
    Ok(())
}

/// Deletes every key of `store` but the marker; returns how many.
async fn clear(store: &dyn Store) -> anyhow::Result<usize> {
    let mut removed = 0;
    loop {
        let page = store.range(ROOT, None, PAGE).await?;
        let keys: Vec<String> = page
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .filter(|k| k != MIGRATION_MARKER)
            .collect();
        if keys.is_empty() {
            return Ok(removed);
        }
        removed += keys.len();
        futures::stream::iter(keys)
            .map(|k| async move {
                match store.delete(&k, None).await {
                    Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
                    Err(e) => Err(e).with_context(|| format!("deleting {k}")),
                }
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .try_collect::<()>()
            .await?;
    }
}

/// Copies every key of `source` (as of one revision) into `dest`; returns how many.
async fn copy(source: &dyn Store, dest: &dyn Store) -> anyhow::Result<usize> {
    let first = source.range(ROOT, None, PAGE).await?;
    let revision = first.revision;
    let mut page = first;
    let mut copied = 0;
    loop {
        let last = page.kvs.last().map(|kv| kv.key.clone());
        let more = page.more;
        let n = page.kvs.len();
        futures::stream::iter(page.kvs)
            .map(|kv| async move {
                dest.create(&kv.key, kv.value)
                    .await
                    .with_context(|| format!("writing {}", kv.key))
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .try_for_each(|_| async { Ok(()) })
            .await?;
        copied += n;
        eprintln!("copied {copied} keys");
        let Some(last) = last.filter(|_| more) else {
            return Ok(copied);
        };
        page = source
            .range_at(ROOT, Some(&last), PAGE, revision)
            .await
            .context("reading the source (was it compacted meanwhile?)")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        let Ok(Location::Etcd(c)) = "etcd://127.0.0.1:2379,127.0.0.1:2380?prefix=/r".parse() else {
            panic!("an etcd location");
        };
        assert_eq!(
            c.endpoints,
            ["http://127.0.0.1:2379", "http://127.0.0.1:2380"]
        );
        assert_eq!(c.prefix, "/r");
        assert!(matches!(
            "/var/lib/skiff/server".parse(),
            Ok(Location::Dir(_))
        ));
        assert!("etcd://".parse::<Location>().is_err());
        assert!("etcd://h:1?prefix=r".parse::<Location>().is_err());
        assert!("http://h:1".parse::<Location>().is_err());
    }
}
