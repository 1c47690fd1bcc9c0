//! The etcd v3 backend. Each guarded write is one etcd transaction whose compare is on the key's
//! `mod_revision` (or, for a create, on its absence), so the etcd revision of the write is the
//! object's `resourceVersion`, as in kube-apiserver.
//!
//! Keys: the API server keeps everything under `/registry`; in etcd that root becomes the
//! configured prefix (default `/registry`, kube-apiserver's layout), so several clusters can
//! share one etcd. Compaction is coordinated through one key beside the prefix
//! (`compact_rev_key<prefix>`): a server compacts only if its transaction on that key wins, so
//! several servers on one etcd compact once per interval between them.
//!
//! Watches survive etcd going away: a watch whose stream breaks reopens from the revision after
//! the last event it delivered, so its reader sees every event once. Progress notifications
//! move that revision on while the prefix is quiet.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::{Event, EventKind, KeyValue, RangeResult, Store, StoreError, StoreResult, WatchStream};

/// The root every key the store is given starts with.
const ROOT: &str = "/registry";

/// Where and how to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, one per member.
    pub endpoints: Vec<String>,
    /// The etcd key that stands for the store's `/registry` root.
    pub prefix: String,
    /// CA bundle that signed the etcd server certificates.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, for etcd with `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl EtcdConfig {
    /// Plain-text endpoints with the kube-apiserver layout.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: ROOT.to_string(),
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }

    fn connect_options(&self) -> StoreResult<ConnectOptions> {
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).map_err(|e| {
                StoreError::Backend(format!("reading the etcd {what} {}: {e}", p.display()))
            })
        };
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            // Without a leader a request fails at once instead of waiting out the timeout.
            .with_require_leader(true);
        let tls_wanted = self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.endpoints.iter().any(|e| e.starts_with("https://"));
        if tls_wanted {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca, "CA file")?));
            }
            match (&self.cert_file, &self.key_file) {
                (Some(c), Some(k)) => {
                    tls = tls.identity(Identity::from_pem(
                        read(c, "certificate file")?,
                        read(k, "key file")?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(StoreError::Backend(
                        "--etcd-certfile and --etcd-keyfile go together".into(),
                    ));
                }
            }
            opts = opts.with_tls(tls);
        }
        Ok(opts)
    }
}

/// Maps the store's keys to etcd keys and back.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn etcd_key(&self, key: &str) -> StoreResult<Vec<u8>> {
        match key.strip_prefix(ROOT) {
            Some(rest) => Ok(format!("{}{rest}", self.prefix).into_bytes()),
            None => Err(StoreError::Backend(format!(
                "key {key} is outside the store root {ROOT}"
            ))),
        }
    }

    fn store_key(&self, key: &[u8]) -> StoreResult<String> {
        let key = std::str::from_utf8(key)
            .map_err(|_| StoreError::Backend("an etcd key is not UTF-8".into()))?;
        match key.strip_prefix(self.prefix.as_str()) {
            Some(rest) => Ok(format!("{ROOT}{rest}")),
            None => Err(StoreError::Backend(format!(
                "etcd key {key} is outside the prefix {}",
                self.prefix
            ))),
        }
    }

    fn kv(&self, kv: &etcd_client::KeyValue) -> StoreResult<KeyValue> {
        Ok(KeyValue {
            key: self.store_key(kv.key())?,
            value: kv.value().to_vec(),
            create_revision: kv.create_revision() as u64,
            mod_revision: kv.mod_revision() as u64,
        })
    }

    /// The key that records the last compaction, outside the prefix so no range sees it.
    fn compaction(&self) -> Vec<u8> {
        format!("compact_rev_key{}", self.prefix).into_bytes()
    }
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only 0xff bytes: to the end of the keyspace.
    vec![0]
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("required revision has been compacted"))
}

/// gRPC status codes (numbered by the gRPC spec) that mean etcd, or its leader, is out of reach.
const GRPC_UNAVAILABLE: [i32; 4] = [
    1,  // CANCELLED (a request timeout)
    2,  // UNKNOWN (a connection reset mid-call)
    4,  // DEADLINE_EXCEEDED
    14, // UNAVAILABLE
];

/// An etcd error as a store error: etcd (or its leader) out of reach is `Unavailable`, which the
/// API answers 503 and the caller may retry.
fn etcd_error(e: etcd_client::Error) -> StoreError {
    match &e {
        etcd_client::Error::GRpcStatus(s) if GRPC_UNAVAILABLE.contains(&i32::from(s.code())) => {
            StoreError::Unavailable(format!("etcd: {}", s.message()))
        }
        etcd_client::Error::GRpcStatus(s) => StoreError::Backend(format!("etcd: {}", s.message())),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            StoreError::Unavailable(format!("etcd: {e}"))
        }
        _ => StoreError::Backend(format!("etcd: {e}")),
    }
}

/// Whether a call failed before etcd took it (no connection to the member it was sent to, or
/// a member without a leader refused it), so sending it again cannot apply it twice.
fn never_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            i32::from(s.code()) == 14
                && (s.message().contains("connect") || s.message().contains("no leader"))
        }
        etcd_client::Error::TransportError(_) => e.to_string().contains("connect"),
        _ => false,
    }
}

/// How long a call that never reached etcd is tried again: long enough to ride out a member's
/// death or a leader election, short enough that a request without quorum fails promptly.
const UNSENT_RETRY_FOR: Duration = Duration::from_secs(3);

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> StoreResult<u64> {
    header
        .map(|h| h.revision() as u64)
        .ok_or_else(|| StoreError::Backend("etcd response without a header".into()))
}

struct Inner {
    client: Client,
    keys: Keys,
    /// The newest compaction this server knows of (its own or another server's).
    compacted: AtomicU64,
}

/// The etcd-backed [`Store`].
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

/// First wait before retrying etcd, doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

fn next_backoff(d: Duration) -> Duration {
    (d * 2).min(MAX_BACKOFF)
}

impl EtcdStore {
    /// Connects to etcd, waiting (with backoff, logging each failure) until it answers: a
    /// server started before its etcd comes up once etcd does. Bad configuration (unreadable
    /// certificate files, no endpoints) fails at once.
    pub async fn connect(cfg: &EtcdConfig) -> StoreResult<Self> {
        if cfg.endpoints.is_empty() {
            return Err(StoreError::Backend("no etcd endpoints given".into()));
        }
        let opts = cfg.connect_options()?;
        let client = Client::connect(&cfg.endpoints, Some(opts))
            .await
            .map_err(|e| StoreError::Backend(format!("etcd endpoints {:?}: {e}", cfg.endpoints)))?;
        let store = Self {
            inner: Arc::new(Inner {
                client,
                keys: Keys {
                    prefix: cfg.prefix.trim_end_matches('/').to_string(),
                },
                compacted: AtomicU64::new(0),
            }),
        };
        let mut wait = FIRST_BACKOFF;
        loop {
            match store.inner.last_compaction().await {
                Ok(_) => break,
                Err(StoreError::Unavailable(e)) => {
                    tracing::warn!(endpoints = ?cfg.endpoints, error = %e, retry_in_ms = wait.as_millis() as u64, "etcd is unreachable; retrying");
                    tokio::time::sleep(wait).await;
                    wait = next_backoff(wait);
                }
                Err(e) => return Err(e),
            }
        }
        tracing::info!(endpoints = ?cfg.endpoints, prefix = %store.inner.keys.prefix, "connected to etcd");
        Ok(store)
    }
}

impl Inner {
    /// Runs `call` again while it fails without reaching etcd (for [`UNSENT_RETRY_FOR`]): the
    /// client spreads calls over every endpoint, and one sent to a dead member fails to connect
    /// while the others serve; during an election members refuse calls for lack of a leader.
    async fn unsent_retried<T, F, Fut>(&self, call: F) -> Result<T, etcd_client::Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + UNSENT_RETRY_FOR;
        let mut wait = Duration::from_millis(20);
        loop {
            match call().await {
                Err(e) if never_sent(&e) && tokio::time::Instant::now() + wait < deadline => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(500));
                }
                r => return r,
            }
        }
    }

    async fn etcd_get(
        &self,
        key: Vec<u8>,
        opts: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, etcd_client::Error> {
        self.unsent_retried(|| {
            let (mut kv, key, opts) = (self.client.kv_client(), key.clone(), opts.clone());
            async move { kv.get(key, opts).await }
        })
        .await
    }

    async fn etcd_txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
        self.unsent_retried(|| {
            let (mut kv, txn) = (self.client.kv_client(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
    }

    /// Reads the compaction record: (last compacted revision, the record's mod_revision).
    async fn last_compaction(&self) -> StoreResult<(u64, i64)> {
        let key = self.keys.compaction();
        let resp = self.etcd_get(key, None).await.map_err(etcd_error)?;
        let Some(kv) = resp.kvs().first() else {
            return Ok((0, 0));
        };
        let revision = std::str::from_utf8(kv.value())
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        self.compacted.fetch_max(revision, Ordering::SeqCst);
        Ok((revision, kv.mod_revision()))
    }

    fn compacted_error(&self, requested: u64) -> StoreError {
        StoreError::Compacted {
            requested,
            compacted: self.compacted.load(Ordering::SeqCst).max(requested + 1),
        }
    }

    async fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<u64>,
    ) -> StoreResult<RangeResult> {
        let etcd_prefix = self.keys.etcd_key(prefix)?;
        let start = match start_after {
            Some(s) if s >= prefix => {
                let mut k = self.keys.etcd_key(s)?;
                k.push(0);
                k
            }
            _ => etcd_prefix.clone(),
        };
        let mut opts = GetOptions::new()
            .with_range(prefix_end(&etcd_prefix))
            .with_limit(limit as i64);
        if let Some(r) = revision {
            opts = opts.with_revision(r as i64);
        }
        let resp = match self.etcd_get(start, Some(opts)).await {
            Ok(r) => r,
            Err(e) if is_compacted(&e) => {
                return Err(self.compacted_error(revision.unwrap_or(0)));
            }
            Err(e) => return Err(etcd_error(e)),
        };
        let kvs = resp
            .kvs()
            .iter()
            .map(|kv| self.keys.kv(kv))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(RangeResult {
            kvs,
            more: resp.more(),
            revision: match revision {
                Some(r) => r,
                None => revision_of(resp.header())?,
            },
        })
    }

    /// Runs `then` if every compare holds, else reads the key; returns the transaction's
    /// revision and the op responses, or the key's current value when a compare failed.
    async fn guarded(
        &self,
        key: &[u8],
        compares: Vec<Compare>,
        then: TxnOp,
    ) -> StoreResult<Result<(u64, Vec<TxnOpResponse>), Option<KeyValue>>> {
        let txn = Txn::new()
            .when(compares)
            .and_then(vec![then])
            .or_else(vec![TxnOp::get(key.to_vec(), None)]);
        let resp = self.etcd_txn(txn).await.map_err(etcd_error)?;
        let revision = revision_of(resp.header())?;
        let ops = resp.op_responses();
        if resp.succeeded() {
            return Ok(Ok((revision, ops)));
        }
        let current = match ops.first() {
            Some(TxnOpResponse::Get(g)) => {
                g.kvs().first().map(|kv| self.keys.kv(kv)).transpose()?
            }
            _ => None,
        };
        Ok(Err(current))
    }

    async fn put(&self, key: &str, value: Vec<u8>, expected: Option<u64>) -> StoreResult<KeyValue> {
        crate::check_value_size(key, &value)?;
        let ek = self.keys.etcd_key(key)?;
        let compares = match expected {
            None => vec![Compare::create_revision(ek.clone(), CompareOp::Equal, 0)],
            Some(rev) => vec![
                Compare::version(ek.clone(), CompareOp::Greater, 0),
                Compare::mod_revision(ek.clone(), CompareOp::Equal, rev as i64),
            ],
        };
        let put = TxnOp::put(
            ek.clone(),
            value.clone(),
            Some(PutOptions::new().with_prev_key()),
        );
        match self.guarded(&ek, compares, put).await? {
            Ok((revision, ops)) => {
                let create_revision = match ops.first() {
                    Some(TxnOpResponse::Put(p)) => p
                        .prev_key()
                        .map_or(revision, |prev| prev.create_revision() as u64),
                    _ => revision,
                };
                Ok(KeyValue {
                    key: key.to_string(),
                    value,
                    create_revision,
                    mod_revision: revision,
                })
            }
            Err(current) => Err(match (expected, current) {
                (None, _) => StoreError::AlreadyExists(key.to_string()),
                (Some(_), None) => StoreError::NotFound(key.to_string()),
                (Some(expected), Some(c)) => StoreError::Conflict {
                    key: key.to_string(),
                    expected,
                    found: c.mod_revision,
                },
            }),
        }
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> StoreResult<KeyValue> {
        let ek = self.keys.etcd_key(key)?;
        let mut compares = vec![Compare::version(ek.clone(), CompareOp::Greater, 0)];
        if let Some(rev) = expected {
            compares.push(Compare::mod_revision(
                ek.clone(),
                CompareOp::Equal,
                rev as i64,
            ));
        }
        let delete = TxnOp::delete(ek.clone(), Some(DeleteOptions::new().with_prev_key()));
        match self.guarded(&ek, compares, delete).await? {
            Ok((revision, ops)) => {
                let prev = match ops.first() {
                    Some(TxnOpResponse::Delete(d)) => d.prev_kvs().first().cloned(),
                    _ => None,
                };
                let prev = prev.ok_or_else(|| {
                    StoreError::Backend(format!("etcd deleted {key} without its last value"))
                })?;
                let mut kv = self.keys.kv(&prev)?;
                kv.mod_revision = revision;
                Ok(kv)
            }
            Err(current) => Err(match (expected, current) {
                (_, None) => StoreError::NotFound(key.to_string()),
                (Some(expected), Some(c)) => StoreError::Conflict {
                    key: key.to_string(),
                    expected,
                    found: c.mod_revision,
                },
                (None, Some(_)) => {
                    StoreError::Backend(format!("etcd refused to delete {key} with no condition"))
                }
            }),
        }
    }

    async fn current_revision(&self) -> StoreResult<u64> {
        let key = self.keys.compaction();
        let resp = self
            .etcd_get(key, Some(GetOptions::new().with_count_only()))
            .await
            .map_err(etcd_error)?;
        revision_of(resp.header())
    }

    /// Compacts unless another server recorded a compaction at or past `revision` already, or
    /// wins the race to record this one.
    async fn compact(&self, revision: u64) -> StoreResult<()> {
        let (last, record_rev) = self.last_compaction().await?;
        if revision <= last {
            return Ok(());
        }
        let key = self.keys.compaction();
        let record = Txn::new()
            .when(vec![Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                record_rev,
            )])
            .and_then(vec![TxnOp::put(key, revision.to_string(), None)]);
        let won = self.etcd_txn(record).await.map_err(etcd_error)?.succeeded();
        if !won {
            tracing::debug!(revision, "another server is compacting");
            return Ok(());
        }
        match self.client.kv_client().compact(revision as i64, None).await {
            Ok(_) => {}
            Err(e) if is_compacted(&e) => {}
            Err(e) => return Err(etcd_error(e)),
        }
        self.compacted.fetch_max(revision, Ordering::SeqCst);
        Ok(())
    }

    /// Fails with `Compacted` if the state at `revision` is gone (the same bound the embedded
    /// store keeps: a watch after `revision` needs the state at `revision`).
    async fn check_history(&self, revision: u64, etcd_key: &[u8]) -> StoreResult<()> {
        let opts = GetOptions::new()
            .with_count_only()
            .with_revision(revision.max(1) as i64);
        match self.etcd_get(etcd_key.to_vec(), Some(opts)).await {
            Ok(_) => Ok(()),
            Err(e) if is_compacted(&e) => Err(self.compacted_error(revision)),
            // A watch from a revision not yet written is allowed.
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("future revision") => {
                Ok(())
            }
            Err(e) => Err(etcd_error(e)),
        }
    }

    fn event(&self, ev: &etcd_client::Event) -> StoreResult<Option<Event>> {
        let Some(kv) = ev.kv() else { return Ok(None) };
        let prev = ev.prev_kv().map(|p| self.keys.kv(p)).transpose()?;
        let revision = kv.mod_revision() as u64;
        Ok(Some(match ev.event_type() {
            EventType::Put => Event {
                kind: EventKind::Put,
                kv: self.keys.kv(kv)?,
                prev,
            },
            EventType::Delete => {
                // etcd's delete event carries only the key; the last value is the previous one.
                let mut last = prev.clone().unwrap_or(KeyValue {
                    key: self.keys.store_key(kv.key())?,
                    value: Vec::new(),
                    create_revision: 0,
                    mod_revision: 0,
                });
                last.mod_revision = revision;
                Event {
                    kind: EventKind::Delete,
                    kv: last,
                    prev,
                }
            }
        }))
    }
}

/// Why one etcd watch stream ended.
enum WatchEnd {
    /// The reader went away.
    ReaderGone,
    /// The stream broke (etcd restarted or unreachable): reopen from where it stopped.
    Broken(StoreError),
    /// A failure the reader must see (history compacted, bad data).
    Fatal(StoreError),
}

/// Feeds one reader from etcd, reopening the etcd watch after the last delivered revision each
/// time the stream breaks, until the reader goes away or a fatal error.
async fn follow(
    inner: Arc<Inner>,
    etcd_prefix: Vec<u8>,
    mut last: u64,
    tx: mpsc::Sender<StoreResult<Event>>,
) {
    let mut wait = FIRST_BACKOFF;
    loop {
        let started = last;
        match follow_once(&inner, &etcd_prefix, &mut last, &tx).await {
            WatchEnd::ReaderGone => return,
            WatchEnd::Fatal(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            WatchEnd::Broken(e) => {
                if last > started {
                    wait = FIRST_BACKOFF;
                }
                tracing::warn!(error = %e, after_revision = last, retry_in_ms = wait.as_millis() as u64, "etcd watch broke; reopening");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = tx.closed() => return,
                }
                wait = next_backoff(wait);
            }
        }
    }
}

async fn follow_once(
    inner: &Inner,
    etcd_prefix: &[u8],
    last: &mut u64,
    tx: &mpsc::Sender<StoreResult<Event>>,
) -> WatchEnd {
    let opts = WatchOptions::new()
        .with_range(prefix_end(etcd_prefix))
        .with_start_revision(*last as i64 + 1)
        .with_prev_key()
        .with_progress_notify();
    let mut stream = match inner
        .client
        .watch_client()
        .watch(etcd_prefix.to_vec(), Some(opts))
        .await
    {
        Ok(s) => s,
        Err(e) => return WatchEnd::Broken(etcd_error(e)),
    };
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = tx.closed() => return WatchEnd::ReaderGone,
        };
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => {
                return WatchEnd::Broken(StoreError::Unavailable("etcd ended the watch".into()));
            }
            Err(e) => return WatchEnd::Broken(etcd_error(e)),
        };
        if resp.compact_revision() > 0 {
            inner
                .compacted
                .fetch_max(resp.compact_revision() as u64, Ordering::SeqCst);
            return WatchEnd::Fatal(StoreError::Compacted {
                requested: *last,
                compacted: resp.compact_revision() as u64,
            });
        }
        if resp.canceled() {
            return WatchEnd::Broken(StoreError::Unavailable(format!(
                "etcd cancelled the watch: {}",
                resp.cancel_reason()
            )));
        }
        if resp.events().is_empty() {
            // A progress notification: nothing under the prefix up to the header's revision.
            // (The created response's header is no such promise.)
            if !resp.created()
                && let Some(h) = resp.header()
            {
                *last = (*last).max(h.revision() as u64);
            }
            continue;
        }
        for ev in resp.events() {
            let ev = match inner.event(ev) {
                Ok(Some(ev)) => ev,
                Ok(None) => continue,
                Err(e) => return WatchEnd::Fatal(e),
            };
            if ev.revision() <= *last {
                continue;
            }
            *last = ev.revision();
            if tx.send(Ok(ev)).await.is_err() {
                return WatchEnd::ReaderGone;
            }
        }
    }
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> BoxFuture<'_, StoreResult<Option<KeyValue>>> {
        let key = key.to_string();
        async move {
            let ek = self.inner.keys.etcd_key(&key)?;
            let resp = self.inner.etcd_get(ek, None).await.map_err(etcd_error)?;
            resp.kvs()
                .first()
                .map(|kv| self.inner.keys.kv(kv))
                .transpose()
        }
        .boxed()
    }

    fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> BoxFuture<'_, StoreResult<RangeResult>> {
        let (prefix, start) = (prefix.to_string(), start_after.map(str::to_string));
        async move {
            self.inner
                .range(&prefix, start.as_deref(), limit, None)
                .await
        }
        .boxed()
    }

    fn range_at(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: u64,
    ) -> BoxFuture<'_, StoreResult<RangeResult>> {
        let (prefix, start) = (prefix.to_string(), start_after.map(str::to_string));
        async move {
            self.inner
                .range(&prefix, start.as_deref(), limit, Some(revision))
                .await
        }
        .boxed()
    }

    fn create(&self, key: &str, value: Vec<u8>) -> BoxFuture<'_, StoreResult<KeyValue>> {
        let key = key.to_string();
        async move { self.inner.put(&key, value, None).await }.boxed()
    }

    fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: u64,
    ) -> BoxFuture<'_, StoreResult<KeyValue>> {
        let key = key.to_string();
        async move {
            self.inner
                .put(&key, value, Some(expected_mod_revision))
                .await
        }
        .boxed()
    }

    fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<u64>,
    ) -> BoxFuture<'_, StoreResult<KeyValue>> {
        let key = key.to_string();
        async move { self.inner.delete(&key, expected_mod_revision).await }.boxed()
    }

    fn watch(&self, prefix: &str, after_revision: u64) -> BoxFuture<'_, StoreResult<WatchStream>> {
        let prefix = prefix.to_string();
        async move {
            let etcd_prefix = self.inner.keys.etcd_key(&prefix)?;
            self.inner
                .check_history(after_revision, &etcd_prefix)
                .await?;
            let (tx, rx) = mpsc::channel(1024);
            tokio::spawn(follow(self.inner.clone(), etcd_prefix, after_revision, tx));
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            Ok(Box::pin(stream) as WatchStream)
        }
        .boxed()
    }

    fn current_revision(&self) -> BoxFuture<'_, StoreResult<u64>> {
        async move { self.inner.current_revision().await }.boxed()
    }

    fn compacted_revision(&self) -> u64 {
        self.inner.compacted.load(Ordering::SeqCst)
    }

    fn compact(&self, revision: u64) -> BoxFuture<'_, StoreResult<()>> {
        async move { self.inner.compact(revision).await }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_etcd::TestEtcd;
    use futures::StreamExt;

    async fn start_etcd() -> TestEtcd {
        tokio::task::spawn_blocking(TestEtcd::start).await.unwrap()
    }

    /// Kills etcd, runs `while_down`, then starts etcd again.
    async fn outage<F: std::future::Future<Output = ()>>(
        mut etcd: TestEtcd,
        while_down: F,
    ) -> TestEtcd {
        let mut etcd = tokio::task::spawn_blocking(move || {
            etcd.kill();
            etcd
        })
        .await
        .unwrap();
        while_down.await;
        tokio::task::spawn_blocking(move || {
            etcd.restart();
            etcd
        })
        .await
        .unwrap()
    }

    /// Creates `key`, retrying while etcd is still coming back.
    async fn create_retrying(s: &EtcdStore, key: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match s.create(key, key.as_bytes().to_vec()).await {
                Ok(_) => return,
                Err(StoreError::Unavailable(e)) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "etcd not back yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("creating {key}: {e}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_across_an_etcd_restart_sees_every_event_once() {
        let etcd = start_etcd().await;
        let s = EtcdStore::connect(&EtcdConfig::new(vec![etcd.endpoint()]))
            .await
            .unwrap();
        let base = s.current_revision().await.unwrap();
        let mut w = s.watch("/registry/c/", base).await.unwrap();
        for i in 0..20 {
            create_retrying(&s, &format!("/registry/c/k{i:02}")).await;
        }
        // Read some before the outage, leave the rest for the reopened watch.
        for i in 0..10 {
            let ev = w.next().await.unwrap().unwrap();
            assert_eq!(ev.kv.key, format!("/registry/c/k{i:02}"));
        }
        let _etcd = outage(etcd, async {
            // While etcd is down a write fails as Unavailable (the API's 503), not otherwise.
            match s.create("/registry/c/down", vec![]).await {
                Err(StoreError::Unavailable(_)) => {}
                other => panic!("expected Unavailable while etcd is down, got {other:?}"),
            }
        })
        .await;
        for i in 20..40 {
            create_retrying(&s, &format!("/registry/c/k{i:02}")).await;
        }
        let mut last = 0;
        for i in 10..40 {
            let ev = tokio::time::timeout(Duration::from_secs(30), w.next())
                .await
                .expect("the watch resumes after the restart")
                .unwrap()
                .unwrap();
            assert_eq!(ev.kv.key, format!("/registry/c/k{i:02}"));
            assert!(ev.revision() > last);
            last = ev.revision();
        }
        // Nothing twice, nothing more.
        assert!(
            tokio::time::timeout(Duration::from_millis(800), w.next())
                .await
                .is_err()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_three_member_cluster_serves_with_one_down_and_refuses_without_quorum() {
        let mut etcd = tokio::task::spawn_blocking(|| TestEtcd::cluster(3))
            .await
            .unwrap();
        let s = EtcdStore::connect(&EtcdConfig::new(etcd.endpoints()))
            .await
            .unwrap();
        create_retrying(&s, "/registry/k0").await;
        etcd = tokio::task::spawn_blocking(move || {
            etcd.kill_member(0);
            etcd
        })
        .await
        .unwrap();
        // One member down: writes go on (a request that met the dead member is retried).
        for i in 1..=5 {
            create_retrying(&s, &format!("/registry/k{i}")).await;
        }
        etcd = tokio::task::spawn_blocking(move || {
            etcd.kill_member(1);
            etcd
        })
        .await
        .unwrap();
        // Two of three down: no quorum, so a write fails as Unavailable, never succeeds.
        match s.create("/registry/no-quorum", vec![]).await {
            Err(StoreError::Unavailable(_)) => {}
            other => panic!("expected Unavailable without quorum, got {other:?}"),
        }
        let _etcd = tokio::task::spawn_blocking(move || {
            // Member 0 with the survivor is a quorum again.
            etcd.restart_member(0);
            etcd.restart_member(1);
            etcd
        })
        .await
        .unwrap();
        create_retrying(&s, "/registry/k6").await;
        let keys: Vec<String> = s
            .range("/registry/k", None, 0)
            .await
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        let expected: Vec<String> = (0..=6).map(|i| format!("/registry/k{i}")).collect();
        assert_eq!(keys, expected);
    }

    /// A CA, a server certificate for 127.0.0.1 and a client certificate, written to `dir`.
    fn certificates(dir: &std::path::Path) -> (crate::test_etcd::ServerTls, PathBuf, PathBuf) {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        };
        let write = |name: &str, pem: String| {
            let p = dir.join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let ca_file = write("ca.pem", ca_cert.pem());
        let issuer = Issuer::new(ca, ca_key);
        let issue = |name: &str, usage: ExtendedKeyUsagePurpose| {
            let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
            p.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &issuer).unwrap();
            (
                write(&format!("{name}.pem"), cert.pem()),
                write(&format!("{name}-key.pem"), key.serialize_pem()),
            )
        };
        let (cert, key) = issue("server", ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) = issue("client", ExtendedKeyUsagePurpose::ClientAuth);
        (
            crate::test_etcd::ServerTls {
                ca: ca_file,
                cert,
                key,
            },
            client_cert,
            client_key,
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_tls_with_a_client_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (tls, client_cert, client_key) = certificates(dir.path());
        let ca = tls.ca.clone();
        let etcd = tokio::task::spawn_blocking(move || TestEtcd::start_tls(tls))
            .await
            .unwrap();
        assert!(etcd.endpoint().starts_with("https://"));
        let mut cfg = EtcdConfig::new(vec![etcd.endpoint()]);
        cfg.ca_file = Some(ca);
        cfg.cert_file = Some(client_cert);
        cfg.key_file = Some(client_key);
        let s = tokio::time::timeout(Duration::from_secs(30), EtcdStore::connect(&cfg))
            .await
            .expect("connecting over TLS")
            .unwrap();
        let kv = s.create("/registry/secure", b"v".to_vec()).await.unwrap();
        assert_eq!(s.get("/registry/secure").await.unwrap(), Some(kv));
        // A certificate file that is not there is bad input, named at once, not retried.
        cfg.cert_file = Some(dir.path().join("missing.pem"));
        match EtcdStore::connect(&cfg).await {
            Err(StoreError::Backend(e)) => assert!(e.contains("missing.pem"), "{e}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("connected with a missing certificate file"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connecting_waits_for_etcd_to_come_up() {
        let etcd = start_etcd().await;
        let cfg = EtcdConfig::new(vec![etcd.endpoint()]);
        let connecting = tokio::spawn(async move { EtcdStore::connect(&cfg).await });
        let _etcd = outage(etcd, tokio::time::sleep(Duration::from_millis(1500))).await;
        let s = tokio::time::timeout(Duration::from_secs(20), connecting)
            .await
            .expect("connect succeeds once etcd is up")
            .unwrap()
            .unwrap();
        s.create("/registry/x", vec![]).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_servers_compact_once_and_both_know_it() {
        let etcd = start_etcd().await;
        let cfg = EtcdConfig::new(vec![etcd.endpoint()]);
        let (a, b) = (
            EtcdStore::connect(&cfg).await.unwrap(),
            EtcdStore::connect(&cfg).await.unwrap(),
        );
        for i in 0..5 {
            a.create(&format!("/registry/k{i}"), vec![]).await.unwrap();
        }
        let rev = a.current_revision().await.unwrap();
        a.compact(rev - 1).await.unwrap();
        // The second server's compaction of the same interval is a no-op, not an error.
        b.compact(rev - 1).await.unwrap();
        assert_eq!(b.compacted_revision(), rev - 1);
        assert!(matches!(
            b.range_at("/registry/", None, 0, rev - 2).await,
            Err(StoreError::Compacted { .. })
        ));
        // A separate prefix on the same etcd is a separate cluster.
        let mut other = cfg.clone();
        other.prefix = "/other".into();
        let c = EtcdStore::connect(&other).await.unwrap();
        assert!(c.range("/registry/", None, 0).await.unwrap().kvs.is_empty());
        assert_eq!(c.compacted_revision(), 0);
    }

    #[test]
    fn keys_map_the_root_to_the_prefix_and_back() {
        let keys = Keys {
            prefix: "/skiff".into(),
        };
        let ek = keys.etcd_key("/registry/pods/ns/a").unwrap();
        assert_eq!(ek, b"/skiff/pods/ns/a");
        assert_eq!(keys.store_key(&ek).unwrap(), "/registry/pods/ns/a");
        assert!(keys.etcd_key("/elsewhere/x").is_err());
        assert!(keys.store_key(b"/other/pods").is_err());
        assert!(!keys.compaction().starts_with(b"/skiff"));
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
