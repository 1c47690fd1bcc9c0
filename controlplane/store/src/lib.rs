//! skiff-store: the `Store` trait and its backends (`embedded`: redb in one file under the data
//! dir; `etcd`: etcd v3). It knows keys, values and revisions, nothing of
//! Kubernetes objects, and may depend on no other skiff crate; only the API server uses it.
//!
//! The storage interface the API server stands on: a revisioned key-value log with the etcd v3
//! semantics the Kubernetes API machinery needs (get, range by prefix, create-if-absent,
//! update/delete guarded by `mod_revision`, watch from a revision, compaction).
//!
//! Every successful write bumps the store-wide revision by one; that revision becomes the
//! object's `resourceVersion`.

#[cfg(test)]
mod conformance;
pub mod embedded;
pub mod etcd;
#[cfg(any(test, feature = "testing"))]
pub mod test_etcd;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

/// One stored key with its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created this key.
    pub create_revision: u64,
    /// Revision of the last write to this key (for a delete event: the revision of the delete).
    pub mod_revision: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// A change, as a watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For `Put`: the new value. For `Delete`: the last value, with `mod_revision` set to the
    /// revision of the delete.
    pub kv: KeyValue,
    /// The value before this change, if the key existed.
    pub prev: Option<KeyValue>,
}

impl Event {
    pub fn revision(&self) -> u64 {
        self.kv.mod_revision
    }
}

/// A page of a range read, taken at one revision.
#[derive(Debug, Clone)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// More keys match after the last one returned.
    pub more: bool,
    /// The store revision the read was served at.
    pub revision: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0} already exists")]
    AlreadyExists(String),
    #[error("key {0} not found")]
    NotFound(String),
    #[error("key {key} was modified (expected revision {expected}, found {found})")]
    Conflict {
        key: String,
        expected: u64,
        found: u64,
    },
    #[error("revision {requested} has been compacted (oldest available {compacted})")]
    Compacted { requested: u64, compacted: u64 },
    #[error("the value for {key} is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    #[error("storage backend: {0}")]
    Backend(String),
    /// Another process (a running server) holds the embedded store's lock.
    #[error("{0} is in use by another process (a running skiff server holds its lock)")]
    InUse(String),
    /// The backend is out of reach (etcd down or without a leader); retrying later may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// The largest value a key may hold: etcd's default request limit (`--max-request-bytes`),
/// which every backend enforces so that the API server behaves the same on each.
pub const MAX_VALUE_BYTES: usize = 3 * 1024 * 1024 / 2;

/// Refuses a value past [`MAX_VALUE_BYTES`] before it is queued for writing.
pub fn check_value_size(key: &str, value: &[u8]) -> StoreResult<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::TooLarge {
            key: key.to_string(),
            size: value.len(),
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// Present while `skiff store migrate` is filling a store: written before the first object is
/// copied and deleted after the last, so a store it is in was left half-copied. No resource
/// lists it (no resource's keys start with it); the API server refuses to serve such a store.
pub const MIGRATION_MARKER: &str = "/registry/skiff.io-migration-incomplete";

pub type StoreResult<T> = Result<T, StoreError>;
pub type WatchStream = BoxStream<'static, StoreResult<Event>>;

/// The revisioned store. Backends: [`embedded::EmbeddedStore`] (redb) and [`etcd::EtcdStore`].
pub trait Store: Send + Sync + 'static {
    /// The value at `key`, if any.
    fn get(&self, key: &str) -> BoxFuture<'_, StoreResult<Option<KeyValue>>>;

    /// Keys starting with `prefix`, in key order, strictly after `start_after` when given, at most
    /// `limit` of them (0 = no limit).
    fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<RangeResult>>;

    /// As [`Store::range`], but as the keys were at `revision` (a consistent later page of a
    /// list). Fails with `Compacted` when that history is gone.
    fn range_at(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: u64,
    ) -> BoxFuture<'_, StoreResult<RangeResult>>;

    /// Creates `key`; fails with `AlreadyExists` if present. Returns the stored key-value once the
    /// write is durable.
    fn create(&self, key: &str, value: Vec<u8>) -> BoxFuture<'_, StoreResult<KeyValue>>;

    /// Replaces `key` if its `mod_revision` is still `expected_mod_revision`.
    fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: u64,
    ) -> BoxFuture<'_, StoreResult<KeyValue>>;

    /// Deletes `key` (guarded by its `mod_revision` when given). Returns the last value, with
    /// `mod_revision` set to the revision of the delete.
    fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<u64>,
    ) -> BoxFuture<'_, StoreResult<KeyValue>>;

    /// Events on keys under `prefix` with a revision strictly greater than `after_revision`,
    /// in revision order, then live ones. Fails with `Compacted` when that history is gone.
    fn watch(&self, prefix: &str, after_revision: u64) -> BoxFuture<'_, StoreResult<WatchStream>>;

    /// The current revision of the store.
    fn current_revision(&self) -> BoxFuture<'_, StoreResult<u64>>;

    /// The oldest revision after which history is still available.
    fn compacted_revision(&self) -> u64;

    /// Forgets the history up to and including `revision`.
    fn compact(&self, revision: u64) -> BoxFuture<'_, StoreResult<()>>;
}
