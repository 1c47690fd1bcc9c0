//! The `Store` contract, checked against every backend: each case is written once against
//! `&dyn Store` and run on the embedded store and on a real etcd (`both_backends!`). Revisions
//! are compared relative to the store's revision at the start, since etcd begins at 1 with no
//! writes and the embedded store at 0.

use std::sync::Arc;

use futures::StreamExt;

use crate::embedded::EmbeddedStore;
use crate::etcd::{EtcdConfig, EtcdStore};
use crate::test_etcd::TestEtcd;
use crate::{EventKind, Store, StoreError};

/// What keeps a backend alive for one test.
#[allow(dead_code)] // held only for its Drop
pub(crate) enum Guard {
    Dir(tempfile::TempDir),
    Etcd(TestEtcd),
}

pub(crate) fn embedded() -> (Guard, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).expect("open");
    (Guard::Dir(dir), Arc::new(store))
}

pub(crate) async fn etcd() -> (Guard, Arc<dyn Store>) {
    let etcd = tokio::task::spawn_blocking(TestEtcd::start)
        .await
        .expect("starting etcd");
    let store = EtcdStore::connect(&EtcdConfig::new(vec![etcd.endpoint()]))
        .await
        .expect("connect to etcd");
    (Guard::Etcd(etcd), Arc::new(store))
}

/// One `#[tokio::test]` per backend for each named case.
macro_rules! both_backends {
    ($($case:ident),* $(,)?) => {
        mod on_embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (_guard, store) = super::embedded();
                    super::$case(store).await;
                }
            )*
        }
        mod on_etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (_guard, store) = super::etcd().await;
                    super::$case(store).await;
                }
            )*
        }
    };
}

both_backends!(
    create_update_delete_with_revisions,
    range_pages_by_prefix,
    range_at_an_old_revision_is_a_snapshot,
    watch_replays_then_follows_and_compaction_refuses_old,
    concurrent_creates_get_unique_revisions,
);

async fn create_update_delete_with_revisions(s: Arc<dyn Store>) {
    let base = s.current_revision().await.unwrap();
    let k = "/registry/pods/ns/a";
    let a = s.create(k, b"1".to_vec()).await.unwrap();
    assert_eq!((a.create_revision, a.mod_revision), (base + 1, base + 1));
    assert!(matches!(
        s.create(k, b"x".to_vec()).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let b = s.update(k, b"2".to_vec(), base + 1).await.unwrap();
    assert_eq!((b.create_revision, b.mod_revision), (base + 1, base + 2));
    assert_eq!(s.get(k).await.unwrap().unwrap(), b);
    match s.update(k, b"3".to_vec(), base + 1).await {
        Err(StoreError::Conflict {
            expected, found, ..
        }) => assert_eq!((expected, found), (base + 1, base + 2)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(
        s.update("/registry/pods/ns/none", vec![], base + 1).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.delete(k, Some(base + 1)).await,
        Err(StoreError::Conflict { .. })
    ));
    let d = s.delete(k, Some(base + 2)).await.unwrap();
    assert_eq!(d.value, b"2");
    assert_eq!((d.create_revision, d.mod_revision), (base + 1, base + 3));
    assert!(s.get(k).await.unwrap().is_none());
    assert!(matches!(
        s.delete(k, None).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.current_revision().await.unwrap(), base + 3);
}

async fn range_pages_by_prefix(s: Arc<dyn Store>) {
    for n in ["a", "b", "c"] {
        s.create(&format!("/registry/cm/ns/{n}"), n.as_bytes().to_vec())
            .await
            .unwrap();
    }
    s.create("/registry/cmx/ns/z", vec![]).await.unwrap();
    let p1 = s.range("/registry/cm/", None, 2).await.unwrap();
    let keys: Vec<&str> = p1.kvs.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["/registry/cm/ns/a", "/registry/cm/ns/b"]);
    assert!(p1.more);
    assert_eq!(p1.revision, s.current_revision().await.unwrap());
    let p2 = s
        .range("/registry/cm/", Some(&p1.kvs[1].key), 2)
        .await
        .unwrap();
    assert_eq!(p2.kvs.len(), 1);
    assert!(!p2.more);
    assert_eq!(p2.kvs[0].key, "/registry/cm/ns/c");
    assert_eq!(p2.kvs[0].value, b"c");
    let all = s.range("/registry/", None, 0).await.unwrap();
    assert_eq!(all.kvs.len(), 4);
}

async fn range_at_an_old_revision_is_a_snapshot(s: Arc<dyn Store>) {
    for n in ["a", "b", "c", "d"] {
        s.create(&format!("/registry/r/{n}"), b"1".to_vec())
            .await
            .unwrap();
    }
    let at = s.current_revision().await.unwrap();
    // After the snapshot: b changes, c goes, aa and e appear.
    let b = s.get("/registry/r/b").await.unwrap().unwrap();
    s.update("/registry/r/b", b"2".to_vec(), b.mod_revision)
        .await
        .unwrap();
    s.delete("/registry/r/c", None).await.unwrap();
    s.create("/registry/r/aa", b"new".to_vec()).await.unwrap();
    s.create("/registry/r/e", b"new".to_vec()).await.unwrap();
    let page = s
        .range_at("/registry/r/", Some("/registry/r/a"), 2, at)
        .await
        .unwrap();
    let keys: Vec<&str> = page.kvs.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["/registry/r/b", "/registry/r/c"]);
    assert_eq!(page.kvs[0].value, b"1");
    assert!(page.more);
    assert_eq!(page.revision, at);
    let rest = s
        .range_at("/registry/r/", Some("/registry/r/c"), 2, at)
        .await
        .unwrap();
    let keys: Vec<&str> = rest.kvs.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["/registry/r/d"]);
    assert!(!rest.more);
    assert_eq!(
        s.range_at("/registry/r/", None, 0, at)
            .await
            .unwrap()
            .kvs
            .len(),
        4
    );
    s.compact(at + 1).await.unwrap();
    assert!(s.compacted_revision() > at);
    assert!(matches!(
        s.range_at("/registry/r/", None, 0, at).await,
        Err(StoreError::Compacted { .. })
    ));
    assert!(s.range_at("/registry/r/", None, 0, at + 1).await.is_ok());
}

async fn watch_replays_then_follows_and_compaction_refuses_old(s: Arc<dyn Store>) {
    let base = s.current_revision().await.unwrap();
    s.create("/registry/a/x", b"1".to_vec()).await.unwrap();
    s.create("/registry/b/y", b"1".to_vec()).await.unwrap();
    let mut w = s.watch("/registry/a/", base).await.unwrap();
    let ev = w.next().await.unwrap().unwrap();
    assert_eq!((ev.kind, ev.revision()), (EventKind::Put, base + 1));
    assert_eq!(ev.kv.key, "/registry/a/x");
    assert!(ev.prev.is_none());
    s.update("/registry/a/x", b"2".to_vec(), base + 1)
        .await
        .unwrap();
    let ev = w.next().await.unwrap().unwrap();
    assert_eq!(ev.revision(), base + 3);
    assert_eq!(ev.prev.unwrap().value, b"1");
    s.delete("/registry/a/x", None).await.unwrap();
    let ev = w.next().await.unwrap().unwrap();
    assert_eq!((ev.kind, ev.revision()), (EventKind::Delete, base + 4));
    assert_eq!(ev.kv.value, b"2");
    assert_eq!(ev.prev.unwrap().mod_revision, base + 3);
    // A watch from a revision not yet written waits for it.
    let mut later = s.watch("/registry/", base + 5).await.unwrap();
    s.create("/registry/a/skipped", vec![]).await.unwrap();
    s.create("/registry/a/seen", vec![]).await.unwrap();
    let ev = later.next().await.unwrap().unwrap();
    assert_eq!(ev.kv.key, "/registry/a/seen");
    s.compact(base + 2).await.unwrap();
    assert!(matches!(
        s.watch("/registry/", base).await,
        Err(StoreError::Compacted { .. })
    ));
    assert!(s.watch("/registry/", base + 2).await.is_ok());
}

async fn concurrent_creates_get_unique_revisions(s: Arc<dyn Store>) {
    let base = s.current_revision().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = s.clone();
        // Ten writers race for the same key: exactly one may create it.
        let key = if i < 10 {
            "/registry/x/same".to_string()
        } else {
            format!("/registry/x/k{i}")
        };
        tasks.push(tokio::spawn(async move { s.create(&key, vec![1]).await }));
    }
    let mut revs = Vec::new();
    let mut same_ok = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(kv) => {
                revs.push(kv.mod_revision);
                if i < 10 {
                    same_ok += 1;
                }
            }
            Err(StoreError::AlreadyExists(_)) => assert!(i < 10),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(same_ok, 1);
    revs.sort();
    assert_eq!(revs, ((base + 1)..=(base + 31)).collect::<Vec<u64>>());
}
