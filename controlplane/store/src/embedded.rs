//! The embedded backend: one redb file. Three tables hold the current keys (`kv`), the
//! revisioned change log that watches replay (`log`) and the store's counters (`meta`). Each
//! write is one redb transaction committed with `Durability::Immediate` before it is
//! acknowledged, so a crash loses nothing that a client was told succeeded.
//!
//! Live watchers are fed from a broadcast channel filled, in revision order, after each commit;
//! a watcher that falls behind re-reads the missed revisions from the log. History is read a
//! page at a time, each page checking compaction in its own read transaction, and each watcher
//! buffers at most 1,024 events: a slow or stalled watcher holds bounded memory.
//!
//! Compaction drops the log up to a revision; when most of the file is then free, the file is
//! compacted too, giving the space back.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::FutureExt;
use futures::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    Event, EventKind, KeyValue, RangeResult, Store, StoreError, StoreResult, WatchStream,
    check_value_size,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
/// Bytes of keys and values the KV and LOG tables hold, kept with every write: whether the file
/// is worth compacting is judged from it, where redb's own statistics walk every page.
const META_STORED: &str = "stored_bytes";

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The writer thread is gone, so nothing queued will be answered.
fn writer_stopped() -> StoreError {
    StoreError::Backend("store writer stopped".into())
}

type Decide = Box<dyn FnOnce(Option<&KeyValue>) -> StoreResult<WriteOp> + Send>;

/// One guarded write waiting for the writer thread.
struct WriteRequest {
    key: String,
    decide: Decide,
    reply: oneshot::Sender<StoreResult<Event>>,
}

/// What the writer thread is asked to do. Every change to the file is made there, compaction
/// included: its scan of the log turns redb's page cache over, and on the thread that allocated
/// most of the cache's pages the memory freed is used again at once, where on another thread
/// each compaction grew the process by twice the cache for the seconds until the heap was
/// trimmed.
enum Request {
    Write(WriteRequest),
    /// Drop one batch of the log, up to `revision` at most; answers the revision reached, or
    /// `None` once the log is compacted that far already.
    CompactBatch {
        revision: u64,
        reply: std::sync::mpsc::Sender<StoreResult<Option<u64>>>,
    },
}

/// Most writes one transaction carries.
const MAX_BATCH: usize = 512;

/// redb's page cache. Its default, 1 GiB, keeps every page written (the log included) until it
/// is full, so the server's memory grew with each write; the kernel caches the file anyway.
/// 4 MiB holds the trees' branch pages and the log's tail: under the soak benchmark (10,000
/// pods, 500 patches/s) writes keep their latency, and each halving from 32 MiB left the server
/// that much smaller.
const CACHE_BYTES: usize = 4 << 20;

/// The database, shared by the writer thread and the readers; taken alone only to give the
/// file's free space back (redb's compaction wants no transaction open meanwhile).
type SharedDb = Arc<RwLock<Database>>;

fn shared(db: &SharedDb) -> std::sync::RwLockReadGuard<'_, Database> {
    db.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Inner {
    db: SharedDb,
    path: std::path::PathBuf,
    writer: Mutex<Option<std::sync::mpsc::Sender<Request>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    events: broadcast::Sender<Arc<Event>>,
    compacted: AtomicU64,
    /// When the file was last compacted: requests wait while it is, so not too often.
    last_reclaim: Mutex<Option<std::time::Instant>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the writer thread; wait for it so the file is released.
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
        if let Some(t) = self.writer_thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

/// The redb-backed [`Store`].
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path`.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    StoreError::InUse(path.display().to_string())
                }
                e => backend(e),
            })?;
        let txn = db.begin_write().map_err(backend)?;
        let compacted;
        {
            let kv = txn.open_table(KV).map_err(backend)?;
            let log = txn.open_table(LOG).map_err(backend)?;
            let mut meta = txn.open_table(META).map_err(backend)?;
            compacted = meta_value(&meta, META_COMPACTED)?;
            // A file written before the count was kept is counted once.
            if meta.get(META_STORED).map_err(backend)?.is_none() {
                meta.insert(META_STORED, count_stored(&kv, &log)?)
                    .map_err(backend)?;
            }
        }
        txn.commit().map_err(backend)?;
        let (events, _) = broadcast::channel(4096);
        let db = Arc::new(RwLock::new(db));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let (db, events) = (db.clone(), events.clone());
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || writer_loop(&db, &events, rx))
                .map_err(backend)?
        };
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                path: path.to_path_buf(),
                writer: Mutex::new(Some(tx)),
                writer_thread: Mutex::new(Some(thread)),
                events,
                compacted: AtomicU64::new(compacted),
                last_reclaim: Mutex::new(None),
            }),
        })
    }
}

/// A META entry, 0 when absent.
fn meta_value(meta: &impl ReadableTable<&'static str, u64>, name: &str) -> StoreResult<u64> {
    Ok(meta
        .get(name)
        .map_err(backend)?
        .map(|v| v.value())
        .unwrap_or(0))
}

/// What one log entry adds to the stored bytes: its 8-byte revision and the entry.
fn log_entry_bytes(entry: &[u8]) -> u64 {
    8 + entry.len() as u64
}

/// Counts the bytes the KV and LOG tables hold, reading every entry.
fn count_stored(
    kv: &impl ReadableTable<&'static str, &'static [u8]>,
    log: &impl ReadableTable<u64, &'static [u8]>,
) -> StoreResult<u64> {
    let mut total = 0;
    for item in kv.iter().map_err(backend)? {
        let (k, v) = item.map_err(backend)?;
        total += (k.value().len() + v.value().len()) as u64;
    }
    for item in log.iter().map_err(backend)? {
        total += log_entry_bytes(item.map_err(backend)?.1.value());
    }
    Ok(total)
}

fn encode_kv(create: u64, modr: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&modr.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode_kv(key: &str, raw: &[u8]) -> StoreResult<KeyValue> {
    if raw.len() < 16 {
        return Err(StoreError::Backend(format!("corrupt record for {key}")));
    }
    Ok(KeyValue {
        key: key.to_string(),
        create_revision: u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes")),
        mod_revision: u64::from_le_bytes(raw[8..16].try_into().expect("8 bytes")),
        value: raw[16..].to_vec(),
    })
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u64(&mut self) -> StoreResult<u64> {
        if self.0.len() < 8 {
            return Err(StoreError::Backend("corrupt log entry".into()));
        }
        let (a, b) = self.0.split_at(8);
        self.0 = b;
        Ok(u64::from_le_bytes(a.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> StoreResult<&'a [u8]> {
        let n = self.u64()? as usize;
        if self.0.len() < n {
            return Err(StoreError::Backend("corrupt log entry".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
}

fn encode_event(ev: &Event) -> Vec<u8> {
    let mut out = Vec::new();
    out.push(match ev.kind {
        EventKind::Put => 0,
        EventKind::Delete => 1,
    });
    put_bytes(&mut out, ev.kv.key.as_bytes());
    out.extend_from_slice(&ev.kv.create_revision.to_le_bytes());
    put_bytes(&mut out, &ev.kv.value);
    match &ev.prev {
        Some(p) => {
            out.push(1);
            out.extend_from_slice(&p.create_revision.to_le_bytes());
            out.extend_from_slice(&p.mod_revision.to_le_bytes());
            put_bytes(&mut out, &p.value);
        }
        None => out.push(0),
    }
    out
}

fn decode_event(revision: u64, raw: &[u8]) -> StoreResult<Event> {
    let corrupt = || StoreError::Backend(format!("corrupt log entry at revision {revision}"));
    let (&kind, rest) = raw.split_first().ok_or_else(corrupt)?;
    let mut r = Reader(rest);
    let key = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| corrupt())?;
    let create_revision = r.u64()?;
    let value = r.bytes()?.to_vec();
    let (&has_prev, rest) = r.0.split_first().ok_or_else(corrupt)?;
    r.0 = rest;
    let prev = if has_prev == 1 {
        let create_revision = r.u64()?;
        let mod_revision = r.u64()?;
        Some(KeyValue {
            key: key.clone(),
            value: r.bytes()?.to_vec(),
            create_revision,
            mod_revision,
        })
    } else {
        None
    };
    Ok(Event {
        kind: if kind == 0 {
            EventKind::Put
        } else {
            EventKind::Delete
        },
        kv: KeyValue {
            key,
            value,
            create_revision,
            mod_revision: revision,
        },
        prev,
    })
}

/// What a guarded write wants to do, decided from the key's current value.
enum WriteOp {
    Put(Vec<u8>),
    Delete,
}

/// Applies one request inside the batch's transaction; an error leaves the tables untouched.
fn apply_one(
    kv: &mut redb::Table<&str, &[u8]>,
    log: &mut redb::Table<u64, &[u8]>,
    revision: u64,
    key: &str,
    decide: Decide,
    stored: &mut u64,
) -> StoreResult<Event> {
    let (current, current_bytes) = match kv.get(key).map_err(backend)? {
        Some(raw) => (
            Some(decode_kv(key, raw.value())?),
            (key.len() + raw.value().len()) as u64,
        ),
        None => (None, 0),
    };
    let event = match decide(current.as_ref())? {
        WriteOp::Put(value) => {
            let create = current.as_ref().map_or(revision, |c| c.create_revision);
            let record = encode_kv(create, revision, &value);
            kv.insert(key, record.as_slice()).map_err(backend)?;
            *stored += (key.len() + record.len()) as u64;
            Event {
                kind: EventKind::Put,
                kv: KeyValue {
                    key: key.to_string(),
                    value,
                    create_revision: create,
                    mod_revision: revision,
                },
                prev: current,
            }
        }
        WriteOp::Delete => {
            let prev = current.ok_or_else(|| StoreError::NotFound(key.to_string()))?;
            kv.remove(key).map_err(backend)?;
            Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key.to_string(),
                    value: prev.value.clone(),
                    create_revision: prev.create_revision,
                    mod_revision: revision,
                },
                prev: Some(prev),
            }
        }
    };
    let entry = encode_event(&event);
    log.insert(revision, entry.as_slice()).map_err(backend)?;
    *stored = stored.saturating_sub(current_bytes) + log_entry_bytes(&entry);
    Ok(event)
}

/// Commits one batch; returns each request's outcome, in order.
fn commit_batch(
    db: &Database,
    batch: Vec<(String, Decide)>,
) -> StoreResult<Vec<StoreResult<Event>>> {
    let txn = db.begin_write().map_err(backend)?;
    let mut out = Vec::with_capacity(batch.len());
    {
        let mut kv = txn.open_table(KV).map_err(backend)?;
        let mut log = txn.open_table(LOG).map_err(backend)?;
        let mut meta = txn.open_table(META).map_err(backend)?;
        let mut revision = meta_value(&meta, META_REVISION)?;
        let mut stored = meta_value(&meta, META_STORED)?;
        for (key, decide) in batch {
            let r = apply_one(&mut kv, &mut log, revision + 1, &key, decide, &mut stored);
            if r.is_ok() {
                revision += 1;
            }
            out.push(r);
        }
        meta.insert(META_REVISION, revision).map_err(backend)?;
        meta.insert(META_STORED, stored).map_err(backend)?;
    }
    txn.commit().map_err(backend)?;
    Ok(out)
}

/// Serves the writer's queue in order: queued writes go in one transaction (up to
/// [`MAX_BATCH`]), a compaction batch in its own.
fn writer_loop(
    db: &SharedDb,
    events: &broadcast::Sender<Arc<Event>>,
    rx: std::sync::mpsc::Receiver<Request>,
) {
    let mut next = None;
    while let Some(request) = next.take().or_else(|| rx.recv().ok()) {
        match request {
            Request::CompactBatch { revision, reply } => {
                let _ = reply.send(compact_batch(&shared(db), revision));
            }
            Request::Write(first) => {
                let mut writes = vec![first];
                while writes.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(Request::Write(w)) => writes.push(w),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit_writes(db, events, writes);
            }
        }
    }
}

/// Commits queued writes in one transaction and answers each.
fn commit_writes(
    db: &SharedDb,
    events: &broadcast::Sender<Arc<Event>>,
    requests: Vec<WriteRequest>,
) {
    let (batch, replies): (Vec<_>, Vec<_>) = requests
        .into_iter()
        .map(|r| ((r.key, r.decide), r.reply))
        .unzip();
    match commit_batch(&shared(db), batch) {
        Ok(results) => {
            for (result, reply) in results.into_iter().zip(replies) {
                if let Ok(ev) = &result {
                    // No receivers is fine: nobody is watching.
                    let _ = events.send(Arc::new(ev.clone()));
                }
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "store commit failed");
            for reply in replies {
                let _ = reply.send(Err(StoreError::Backend(e.to_string())));
            }
        }
    }
}

/// Drops the log up to `revision`, [`COMPACT_BATCH`] revisions at most, in one transaction
/// that records the compacted revision it reached, so a reader never finds a gap. `None` when
/// the log is compacted that far already.
fn compact_batch(db: &Database, revision: u64) -> StoreResult<Option<u64>> {
    let txn = db.begin_write().map_err(backend)?;
    let upto = {
        let mut log = txn.open_table(LOG).map_err(backend)?;
        let mut meta = txn.open_table(META).map_err(backend)?;
        let current = meta_value(&meta, META_COMPACTED)?;
        if revision <= current {
            return Ok(None);
        }
        let upto = revision.min(current + COMPACT_BATCH);
        let mut dropped = 0;
        log.retain_in(..=upto, |_, entry| {
            dropped += log_entry_bytes(entry);
            false
        })
        .map_err(backend)?;
        let stored = meta_value(&meta, META_STORED)?.saturating_sub(dropped);
        meta.insert(META_COMPACTED, upto).map_err(backend)?;
        meta.insert(META_STORED, stored).map_err(backend)?;
        upto
    };
    txn.commit().map_err(backend)?;
    Ok(Some(upto))
}

impl Inner {
    /// Queues one guarded write: `decide` sees the current value and returns the operation (or
    /// an error, which leaves the store unchanged). Resolves once the write is durable.
    async fn write(
        &self,
        key: &str,
        decide: impl FnOnce(Option<&KeyValue>) -> StoreResult<WriteOp> + Send + 'static,
    ) -> StoreResult<Event> {
        let (reply, rx) = oneshot::channel();
        self.queue(Request::Write(WriteRequest {
            key: key.to_string(),
            decide: Box::new(decide),
            reply,
        }))?;
        rx.await.map_err(|_| writer_stopped())?
    }

    fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        let db = shared(&self.db);
        let txn = db.begin_read().map_err(backend)?;
        let kv = txn.open_table(KV).map_err(backend)?;
        match kv.get(key).map_err(backend)? {
            Some(raw) => Ok(Some(decode_kv(key, raw.value())?)),
            None => Ok(None),
        }
    }

    fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> StoreResult<RangeResult> {
        let db = shared(&self.db);
        let txn = db.begin_read().map_err(backend)?;
        let kv = txn.open_table(KV).map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        let revision = meta_value(&meta, META_REVISION)?;
        let lower = match start_after {
            Some(s) if s >= prefix => Bound::Excluded(s),
            _ => Bound::Included(prefix),
        };
        let mut kvs = Vec::new();
        let mut more = false;
        for item in kv
            .range::<&str>((lower, Bound::Unbounded))
            .map_err(backend)?
        {
            let (k, v) = item.map_err(backend)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            if limit > 0 && kvs.len() == limit {
                more = true;
                break;
            }
            kvs.push(decode_kv(key, v.value())?);
        }
        Ok(RangeResult {
            kvs,
            more,
            revision,
        })
    }

    fn range_at(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        at: u64,
    ) -> StoreResult<RangeResult> {
        let db = shared(&self.db);
        let txn = db.begin_read().map_err(backend)?;
        let kv = txn.open_table(KV).map_err(backend)?;
        let log = txn.open_table(LOG).map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        history_available(&meta, at)?;
        let current = meta_value(&meta, META_REVISION)?;
        let after = |k: &str| k.starts_with(prefix) && start_after.is_none_or(|s| k > s);
        // The state at `at` of every key changed since: what its first later event replaced.
        let mut changed: BTreeMap<String, Option<KeyValue>> = BTreeMap::new();
        if at < current {
            for item in log.range((at + 1)..=current).map_err(backend)? {
                let (rev, raw) = item.map_err(backend)?;
                let ev = decode_event(rev.value(), raw.value())?;
                if after(&ev.kv.key) {
                    changed.entry(ev.kv.key.clone()).or_insert(ev.prev);
                }
            }
        }
        let lower = match start_after {
            Some(s) if s >= prefix => Bound::Excluded(s),
            _ => Bound::Included(prefix),
        };
        let mut then = changed.into_values().flatten().peekable();
        let want = if limit == 0 { usize::MAX } else { limit + 1 };
        let mut kvs: Vec<KeyValue> = Vec::new();
        for item in kv
            .range::<&str>((lower, Bound::Unbounded))
            .map_err(backend)?
        {
            let (k, v) = item.map_err(backend)?;
            let key = k.value();
            if !key.starts_with(prefix) || kvs.len() >= want {
                break;
            }
            while then.peek().is_some_and(|h| h.key.as_str() < key) && kvs.len() < want {
                kvs.extend(then.next());
            }
            let cur = decode_kv(key, v.value())?;
            if cur.mod_revision <= at {
                kvs.push(cur);
            } else if then.peek().is_some_and(|h| h.key == key) {
                // Changed since `at`: the historical value stands in for it.
                kvs.extend(then.next());
            }
        }
        while kvs.len() < want {
            match then.next() {
                Some(h) => kvs.push(h),
                None => break,
            }
        }
        let more = kvs.len() > limit && limit > 0;
        if more {
            kvs.truncate(limit);
        }
        Ok(RangeResult {
            kvs,
            more,
            revision: at,
        })
    }

    fn current_revision(&self) -> StoreResult<u64> {
        let db = shared(&self.db);
        let txn = db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        meta_value(&meta, META_REVISION)
    }

    /// One page of the log under `prefix`: entries with revision > `after`, up to `upto` (the
    /// current revision when `None`), at most [`HISTORY_PAGE`] of them scanned. Returns the
    /// matching events, the last revision scanned and `upto`. Paging keeps a watcher that
    /// replays a long history from holding all of it at once.
    fn history_page(
        &self,
        prefix: &str,
        after: u64,
        upto: Option<u64>,
    ) -> StoreResult<(Vec<Event>, u64, u64)> {
        let db = shared(&self.db);
        let txn = db.begin_read().map_err(backend)?;
        let log = txn.open_table(LOG).map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        history_available(&meta, after)?;
        let upto = match upto {
            Some(u) => u,
            None => meta_value(&meta, META_REVISION)?,
        };
        let mut out = Vec::new();
        if after >= upto {
            return Ok((out, after, upto));
        }
        let (mut read, mut last) = (0, after);
        for item in log
            .range((after + 1)..=upto)
            .map_err(backend)?
            .take(HISTORY_PAGE)
        {
            let (rev, raw) = item.map_err(backend)?;
            (read, last) = (read + 1, rev.value());
            let ev = decode_event(last, raw.value())?;
            if ev.kv.key.starts_with(prefix) {
                out.push(ev);
            }
        }
        // A short page read the rest of the range.
        let scanned = if read < HISTORY_PAGE { upto } else { last };
        Ok((out, scanned, upto))
    }

    /// Drops the log up to `revision`, one batch at a time on the writer thread: the writes
    /// queued meanwhile go in between the batches.
    fn compact(&self, revision: u64) -> StoreResult<()> {
        loop {
            let (reply, rx) = std::sync::mpsc::channel();
            self.queue(Request::CompactBatch { revision, reply })?;
            let reached = rx.recv().map_err(|_| writer_stopped())??;
            match reached {
                Some(upto) => self.compacted.store(upto, Ordering::SeqCst),
                None => break,
            }
        }
        self.reclaim_space()?;
        Ok(())
    }

    /// Hands a request to the writer thread.
    fn queue(&self, request: Request) -> StoreResult<()> {
        self.writer
            .lock()
            .map_err(backend)?
            .as_ref()
            .ok_or_else(|| StoreError::Backend("store is closed".into()))?
            .send(request)
            .map_err(|_| writer_stopped())
    }

    /// Gives the file's free space back to the filesystem once most of it is free: redb reuses
    /// freed pages but never shrinks the file itself. Compacting the file needs the database
    /// alone, so requests wait meanwhile; it is done only when it is worth that. redb compacts
    /// with a two-phase commit, so a crash in the middle leaves the last committed state.
    fn reclaim_space(&self) -> StoreResult<bool> {
        let stored = {
            let db = shared(&self.db);
            let txn = db.begin_read().map_err(backend)?;
            meta_value(&txn.open_table(META).map_err(backend)?, META_STORED)?
        };
        let size = std::fs::metadata(&self.path).map_err(backend)?.len();
        let mut last = self
            .last_reclaim
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let recent = last.is_some_and(|t| t.elapsed() < RECLAIM_MIN_INTERVAL);
        if recent || !worth_reclaiming(size, stored) {
            return Ok(false);
        }
        *last = Some(std::time::Instant::now());
        tracing::info!(size, stored, "compacting the store file");
        let started = std::time::Instant::now();
        let mut db = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        db.compact().map_err(backend)?;
        drop(db);
        let after = std::fs::metadata(&self.path).map_err(backend)?.len();
        tracing::info!(
            before = size,
            after,
            took_ms = started.elapsed().as_millis() as u64,
            "store file compacted"
        );
        Ok(true)
    }
}

/// Revisions a compaction drops per transaction: five minutes of history at 500 writes/s is
/// 150,000, which in one transaction held every write for as long as it took.
const COMPACT_BATCH: u64 = 2048;

/// Files smaller than this are left as they are.
const RECLAIM_MIN_BYTES: u64 = 16 * 1024 * 1024;

/// The least time between two file compactions, each of which holds every request for as long
/// as it takes (about a second per 100 MiB in a debug build).
const RECLAIM_MIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether a file of `size` bytes holding `stored` bytes of keys and values is worth compacting:
/// big enough, and more than three quarters of it free. The pages the data takes are counted as
/// twice the data, the most redb's pages and trees were seen to add (1.0–1.6 times). redb grows
/// a file by doubling it, so a busy file is often half free; compacting it then would only have
/// it grow again.
fn worth_reclaiming(size: u64, stored: u64) -> bool {
    size >= RECLAIM_MIN_BYTES && stored.saturating_mul(2 * 4) < size
}

/// Fails with `Compacted` unless the log after `requested` is whole, read from the same
/// transaction as the history it guards: a compaction committed between a check and a later read
/// would otherwise drop events silently.
fn history_available(meta: &redb::ReadOnlyTable<&str, u64>, requested: u64) -> StoreResult<()> {
    let compacted = meta_value(meta, META_COMPACTED)?;
    if requested < compacted {
        return Err(StoreError::Compacted {
            requested,
            compacted,
        });
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> StoreResult<T> + Send + 'static,
) -> StoreResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(backend)?
}

/// Log entries one read of history scans at most.
const HISTORY_PAGE: usize = 256;

/// Sends the history under `prefix` after `after` up to `upto`, a page at a time, starting with
/// `first` (already read); returns the last revision sent, or `None` when the watcher is gone or
/// was told the history is compacted.
async fn replay(
    inner: &Arc<Inner>,
    prefix: &str,
    first: (Vec<Event>, u64, u64),
    tx: &mpsc::Sender<StoreResult<Event>>,
) -> Option<u64> {
    let (mut events, mut scanned, upto) = first;
    loop {
        for ev in events {
            if tx.send(Ok(ev)).await.is_err() {
                return None;
            }
        }
        if scanned >= upto {
            return Some(upto);
        }
        let (inner, p) = (inner.clone(), prefix.to_string());
        match blocking(move || inner.history_page(&p, scanned, Some(upto))).await {
            Ok((next, s, _)) => (events, scanned) = (next, s),
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return None;
            }
        }
    }
}

/// Feeds one watcher: replayed history first, then live events, replaying the log again if
/// the broadcast channel overflowed.
async fn pump(
    inner: Arc<Inner>,
    prefix: String,
    mut rx: broadcast::Receiver<Arc<Event>>,
    first: (Vec<Event>, u64, u64),
    after: u64,
    tx: mpsc::Sender<StoreResult<Event>>,
) {
    // A watch from a future revision skips what happens up to it.
    let Some(replayed) = replay(&inner, &prefix, first, &tx).await else {
        return;
    };
    let mut last = replayed.max(after);
    loop {
        let received = tokio::select! {
            r = rx.recv() => r,
            _ = tx.closed() => return,
        };
        match received {
            Ok(ev) => {
                if ev.revision() <= last {
                    continue;
                }
                last = ev.revision();
                if ev.kv.key.starts_with(&prefix) && tx.send(Ok((*ev).clone())).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let (i2, p2) = (inner.clone(), prefix.clone());
                let first = match blocking(move || i2.history_page(&p2, last, None)).await {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                match replay(&inner, &prefix, first, &tx).await {
                    Some(upto) => last = upto,
                    None => return,
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

impl Store for EmbeddedStore {
    fn get(&self, key: &str) -> BoxFuture<'_, StoreResult<Option<KeyValue>>> {
        let (inner, key) = (self.inner.clone(), key.to_string());
        blocking(move || inner.get(&key)).boxed()
    }

    fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<RangeResult>> {
        let (inner, prefix, start) = (
            self.inner.clone(),
            prefix.to_string(),
            start_after.map(str::to_string),
        );
        blocking(move || inner.range(&prefix, start.as_deref(), limit)).boxed()
    }

    fn range_at(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: u64,
    ) -> BoxFuture<'_, StoreResult<RangeResult>> {
        let (inner, prefix, start) = (
            self.inner.clone(),
            prefix.to_string(),
            start_after.map(str::to_string),
        );
        blocking(move || inner.range_at(&prefix, start.as_deref(), limit, revision)).boxed()
    }

    fn create(&self, key: &str, value: Vec<u8>) -> BoxFuture<'_, StoreResult<KeyValue>> {
        let k = key.to_string();
        async move {
            check_value_size(&k, &value)?;
            self.inner
                .write(&k.clone(), move |cur| match cur {
                    Some(_) => Err(StoreError::AlreadyExists(k)),
                    None => Ok(WriteOp::Put(value)),
                })
                .await
                .map(|e| e.kv)
        }
        .boxed()
    }

    fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: u64,
    ) -> BoxFuture<'_, StoreResult<KeyValue>> {
        let k = key.to_string();
        async move {
            check_value_size(&k, &value)?;
            self.inner
                .write(&k.clone(), move |cur| match cur {
                    None => Err(StoreError::NotFound(k)),
                    Some(c) if c.mod_revision != expected_mod_revision => {
                        Err(StoreError::Conflict {
                            key: k,
                            expected: expected_mod_revision,
                            found: c.mod_revision,
                        })
                    }
                    Some(_) => Ok(WriteOp::Put(value)),
                })
                .await
                .map(|e| e.kv)
        }
        .boxed()
    }

    fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<u64>,
    ) -> BoxFuture<'_, StoreResult<KeyValue>> {
        let k = key.to_string();
        async move {
            self.inner
                .write(&k.clone(), move |cur| match (cur, expected_mod_revision) {
                    (None, _) => Err(StoreError::NotFound(k)),
                    (Some(c), Some(expected)) if c.mod_revision != expected => {
                        Err(StoreError::Conflict {
                            key: k,
                            expected,
                            found: c.mod_revision,
                        })
                    }
                    _ => Ok(WriteOp::Delete),
                })
                .await
                .map(|e| e.kv)
        }
        .boxed()
    }

    fn watch(&self, prefix: &str, after_revision: u64) -> BoxFuture<'_, StoreResult<WatchStream>> {
        let inner = self.inner.clone();
        let prefix = prefix.to_string();
        async move {
            // Subscribe before reading history so that nothing falls between the two.
            let rx = inner.events.subscribe();
            let (i2, p2) = (inner.clone(), prefix.clone());
            // The first page is read here, so that a compacted revision fails the call.
            let first = blocking(move || i2.history_page(&p2, after_revision, None)).await?;
            let (tx, out) = mpsc::channel(1024);
            tokio::spawn(pump(inner, prefix, rx, first, after_revision, tx));
            let stream = futures::stream::unfold(out, |mut out| async move {
                out.recv().await.map(|item| (item, out))
            });
            Ok(Box::pin(stream) as WatchStream)
        }
        .boxed()
    }

    fn current_revision(&self) -> BoxFuture<'_, StoreResult<u64>> {
        let inner = self.inner.clone();
        blocking(move || inner.current_revision()).boxed()
    }

    fn compacted_revision(&self) -> u64 {
        self.inner.compacted.load(Ordering::SeqCst)
    }

    fn compact(&self, revision: u64) -> BoxFuture<'_, StoreResult<()>> {
        let inner = self.inner.clone();
        blocking(move || inner.compact(revision)).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn open() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).expect("open");
        (dir, store)
    }

    #[test]
    fn a_store_open_elsewhere_is_named_in_use() {
        let (dir, _store) = open();
        match EmbeddedStore::open(&dir.path().join("store.redb")) {
            Err(StoreError::InUse(path)) => assert!(path.ends_with("store.redb"), "{path}"),
            Err(e) => panic!("expected InUse, got {e}"),
            Ok(_) => panic!("opened a store twice"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_gives_the_files_free_space_back() {
        let (dir, s) = open();
        let path = dir.path().join("store.redb");
        let value = vec![7u8; 256 * 1024];
        for i in 0..120 {
            s.create(&format!("/registry/big/{i}"), value.clone())
                .await
                .unwrap();
        }
        for i in 0..120 {
            s.delete(&format!("/registry/big/{i}"), None).await.unwrap();
        }
        s.create("/registry/small/kept", b"kept".to_vec())
            .await
            .unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        let rev = s.current_revision().await.unwrap();
        s.compact(rev).await.unwrap();
        let after = std::fs::metadata(&path).unwrap().len();
        assert!(
            after * 4 < before,
            "the file went from {before} to {after} bytes"
        );
        // Still whole, and still written to.
        assert_eq!(
            s.get("/registry/small/kept").await.unwrap().unwrap().value,
            b"kept"
        );
        s.create("/registry/small/new", b"new".to_vec())
            .await
            .unwrap();
        drop(s);
        let s = EmbeddedStore::open(&path).unwrap();
        assert_eq!(s.range("/registry/", None, 0).await.unwrap().kvs.len(), 2);
    }

    /// The process's resident memory, in MiB.
    fn rss_mib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib / 1024
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_do_not_grow_memory_past_the_page_cache() {
        let (_d, s) = open();
        let value = vec![7u8; 1024 * 1024];
        let mut rev = s.create("/big", value.clone()).await.unwrap().mod_revision;
        let start = rss_mib();
        // 300 MiB into the file: the value and, in the log, each write with its previous value.
        for _ in 0..150 {
            rev = s
                .update("/big", value.clone(), rev)
                .await
                .unwrap()
                .mod_revision;
        }
        let grown = rss_mib().saturating_sub(start);
        assert!(
            grown < 150,
            "the process grew by {grown} MiB for a 1 MiB value"
        );
    }

    #[test]
    fn only_big_mostly_free_files_are_compacted() {
        let mib = 1024 * 1024;
        assert!(worth_reclaiming(64 * mib, 6 * mib));
        assert!(!worth_reclaiming(64 * mib, 10 * mib));
        assert!(!worth_reclaiming(8 * mib, mib / 2));
    }

    /// The stored-bytes count as kept, and as counted afresh from the tables.
    fn stored_kept_and_counted(s: &EmbeddedStore) -> (u64, u64) {
        let db = shared(&s.inner.db);
        let txn = db.begin_read().unwrap();
        let kept = meta_value(&txn.open_table(META).unwrap(), META_STORED).unwrap();
        let counted =
            count_stored(&txn.open_table(KV).unwrap(), &txn.open_table(LOG).unwrap()).unwrap();
        (kept, counted)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_stored_bytes_are_counted_through_writes_compaction_and_reopening() {
        let (dir, s) = open();
        let mut revs = Vec::new();
        for i in 0..50 {
            let kv = s
                .create(&format!("/registry/pods/p{i}"), vec![b'a'; 100 + i])
                .await
                .unwrap();
            revs.push(kv.mod_revision);
        }
        for (i, rev) in revs.iter().enumerate().step_by(2) {
            s.update(&format!("/registry/pods/p{i}"), vec![b'b'; 3000], *rev)
                .await
                .unwrap();
        }
        for i in (1..50).step_by(7) {
            s.delete(&format!("/registry/pods/p{i}"), None)
                .await
                .unwrap();
        }
        // A refused write changes nothing.
        assert!(s.create("/registry/pods/p0", vec![1]).await.is_err());
        let (kept, counted) = stored_kept_and_counted(&s);
        assert_eq!(kept, counted);
        assert!(kept > 50 * 3000, "{kept}");

        let rev = s.current_revision().await.unwrap();
        s.compact(rev - 5).await.unwrap();
        let (kept, counted) = stored_kept_and_counted(&s);
        assert_eq!(kept, counted);

        // A file from before the count was kept is counted when opened.
        {
            let db = shared(&s.inner.db);
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().remove(META_STORED).unwrap();
            txn.commit().unwrap();
        }
        drop(s);
        let s = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
        assert_eq!(stored_kept_and_counted(&s), (counted, counted));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_history_is_compacted_in_batches_each_without_a_gap() {
        let (_d, s) = open();
        let n = 3 * COMPACT_BATCH + 100;
        futures::future::join_all((0..n).map(|i| s.create(&format!("/r/{i}"), vec![1])))
            .await
            .into_iter()
            .for_each(|r| assert!(r.is_ok()));
        let target = s.current_revision().await.unwrap() - 10;
        let compactor = tokio::spawn({
            let s = s.clone();
            async move { s.compact(target).await }
        });
        loop {
            let done = compactor.is_finished();
            let c = s.compacted_revision();
            // A watch from the compacted revision starts right after it, or is refused when a
            // batch went past it meanwhile; it never skips revisions.
            match s.watch("/r/", c).await {
                Ok(mut w) => {
                    let first = w.next().await.expect("an event");
                    match first {
                        Ok(ev) => assert_eq!(ev.revision(), c + 1, "a gap after {c}"),
                        Err(StoreError::Compacted { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                Err(StoreError::Compacted { .. }) => {}
                Err(e) => panic!("{e}"),
            }
            if done {
                break;
            }
        }
        compactor.await.unwrap().unwrap();
        assert_eq!(s.compacted_revision(), target);
        assert!(matches!(
            s.watch("/r/", target - 1).await,
            Err(StoreError::Compacted { .. })
        ));
        let mut w = s.watch("/r/", target).await.unwrap();
        for rev in target + 1..=target + 10 {
            assert_eq!(w.next().await.unwrap().unwrap().revision(), rev);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_racing_watches_from_old_revisions_never_leaves_a_gap() {
        let (_d, s) = open();
        const N: u64 = 300;
        for i in 0..N {
            s.create(&format!("/r/{i}"), vec![1]).await.unwrap();
        }
        let compactor = tokio::spawn({
            let s = s.clone();
            async move {
                for rev in (0..N / 2).step_by(3) {
                    s.compact(rev).await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
        });
        let (mut refused, mut replayed) = (0, 0);
        let mut last_round = false;
        while !last_round {
            last_round = compactor.is_finished();
            // Around the compaction point, where a check outside the read would let a gap in.
            let c = s.compacted_revision();
            for after in [c.saturating_sub(1), c, c + 1, c + 2] {
                match s.watch("/r/", after).await {
                    Err(StoreError::Compacted { requested, .. }) => {
                        assert_eq!(requested, after);
                        refused += 1;
                    }
                    Err(e) => panic!("{e}"),
                    Ok(mut w) => {
                        let mut expect = after + 1;
                        while expect <= N {
                            let next =
                                tokio::time::timeout(std::time::Duration::from_secs(10), w.next());
                            match next.await.expect("an event").expect("an open stream") {
                                Ok(ev) => {
                                    assert_eq!(ev.revision(), expect, "a gap after {after}");
                                    expect += 1;
                                }
                                // Falling behind into compacted history ends the stream.
                                Err(StoreError::Compacted { .. }) => break,
                                Err(e) => panic!("{e}"),
                            }
                        }
                        replayed += 1;
                    }
                }
            }
        }
        compactor.await.unwrap();
        assert!(
            refused > 0 && replayed > 0,
            "{refused} refused, {replayed} replayed"
        );
        // range_at checks in its own transaction too.
        assert!(matches!(
            s.range_at("/r/", None, 0, 1).await,
            Err(StoreError::Compacted { .. })
        ));
    }

    #[tokio::test]
    async fn a_long_history_replays_page_by_page_then_follows() {
        let (_d, s) = open();
        let n = HISTORY_PAGE * 3 + 7;
        for i in 0..n {
            let dir = if i % 3 == 0 { "a" } else { "b" };
            s.create(&format!("/{dir}/{i}"), vec![]).await.unwrap();
        }
        let mut w = s.watch("/a/", 0).await.unwrap();
        let want: Vec<u64> = (0..n as u64)
            .filter(|i| i % 3 == 0)
            .map(|i| i + 1)
            .collect();
        let mut got = Vec::new();
        while got.len() < want.len() {
            got.push(w.next().await.unwrap().unwrap().revision());
        }
        assert_eq!(got, want);
        s.create("/a/live", vec![]).await.unwrap();
        assert_eq!(w.next().await.unwrap().unwrap().revision(), n as u64 + 1);
        // From the middle of a page, and from the present.
        let mut w = s.watch("/b/", 500).await.unwrap();
        assert_eq!(w.next().await.unwrap().unwrap().revision(), 501);
        let mut w = s.watch("/", n as u64 + 1).await.unwrap();
        s.create("/c", vec![]).await.unwrap();
        assert_eq!(w.next().await.unwrap().unwrap().revision(), n as u64 + 2);
    }

    #[tokio::test]
    async fn values_past_the_limit_are_refused() {
        let (_d, s) = open();
        let big = vec![0u8; crate::MAX_VALUE_BYTES + 1];
        assert!(matches!(
            s.create("/big", big.clone()).await,
            Err(StoreError::TooLarge { .. })
        ));
        let kv = s.create("/big", vec![1]).await.unwrap();
        assert!(matches!(
            s.update("/big", big, kv.mod_revision).await,
            Err(StoreError::TooLarge { .. })
        ));
        assert_eq!(s.current_revision().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn reopen_keeps_data_and_revision() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let s = EmbeddedStore::open(&path).unwrap();
            s.create("/k", b"v".to_vec()).await.unwrap();
        }
        let s = EmbeddedStore::open(&path).unwrap();
        assert_eq!(s.get("/k").await.unwrap().unwrap().value, b"v");
        assert_eq!(s.current_revision().await.unwrap(), 1);
    }
}
