//! The watch cache: one store watch per resource feeds an in-memory copy of its objects (at the
//! cache's revision) and a bounded ring of its recent events, as kube-apiserver's cacher does.
//! Each event is decoded once and its JSON encoded once; every API watcher it concerns gets the
//! same shared bytes. Watchers that select pods by `spec.nodeName` (every kubelet, and the
//! scheduler with `spec.nodeName=`) or EndpointSlices by their `kubernetes.io/service-name` label
//! (every proxy) are found through an index, so an event costs only the watchers it is for; lists
//! with such a selector read the objects through the same index.
//!
//! Watches from a revision the ring still covers and lists with `resourceVersion=0` are served
//! here; a watch from an older revision is left to the store (which answers 410 once that history
//! is compacted). A watcher's queue is bounded: a watcher that falls that far behind is closed and
//! its client watches again from its last resourceVersion, as kube-apiserver closes it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use futures::StreamExt;
use serde_json::Value;
use skiff_store::{Event, EventKind, KeyValue, Store, WatchStream};
use tokio::sync::mpsc;

use crate::handlers::Shape;
use crate::object::decode_kv;
use crate::resources::ResourceInfo;
use crate::selectors::{FieldSelector, LabelSelector, Labels, field_value};
use crate::status::ApiResult;

/// Events a resource's ring keeps: watches resuming from a revision within them are served from
/// memory.
const RING_EVENTS: usize = 1024;
/// Events queued for one watcher before it counts as unable to keep up and is closed.
const WATCHER_QUEUE: usize = 1024;
/// Objects per read while a cache loads.
const LOAD_PAGE: usize = 500;

/// The selector a resource's objects are indexed by.
#[derive(Debug, Clone, Copy)]
enum IndexOn {
    Field(&'static str),
    Label(&'static str),
}

fn index_of(r: &ResourceInfo) -> Option<IndexOn> {
    match (r.group, r.plural) {
        ("", "pods") => Some(IndexOn::Field("spec.nodeName")),
        ("discovery.k8s.io", "endpointslices") => {
            Some(IndexOn::Label("kubernetes.io/service-name"))
        }
        _ => None,
    }
}

/// The label and field selectors of a list or watch.
#[derive(Debug)]
pub struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    pub fn parse(q: &HashMap<String, String>, r: &ResourceInfo) -> ApiResult<Self> {
        Ok(Self {
            labels: LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?,
            fields: FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str), r)?,
        })
    }

    pub fn matches(&self, o: &CachedObject) -> bool {
        self.selects(&o.selection)
    }

    fn selects(&self, s: &Selection) -> bool {
        self.labels.matches_with(|key| s.labels.get(key))
            && self.fields.matches_with(|field| {
                s.fields
                    .iter()
                    .find(|(f, _)| *f == field)
                    .map_or("", |(_, v)| v)
            })
    }

    /// The index value every object this filter selects has, when the resource is indexed.
    fn index_value(&self, on: Option<IndexOn>) -> Option<String> {
        match on? {
            IndexOn::Field(f) => self.fields.required_value(f).map(str::to_string),
            IndexOn::Label(l) => self.labels.required_value(l).map(str::to_string),
        }
    }
}

/// An object as the cache holds it: its served JSON (with `metadata.resourceVersion`) and what
/// selectors look at.
#[derive(Debug)]
pub struct CachedObject {
    pub key: String,
    selection: Arc<Selection>,
    pub json: Bytes,
}

/// What label and field selectors look at in an object. An event keeps only this of the state
/// it replaced, not that state's JSON.
#[derive(Debug)]
struct Selection {
    labels: Labels,
    /// `metadata.name`, `metadata.namespace` and the resource's selectable fields.
    fields: Box<[(&'static str, Box<str>)]>,
    index: Option<String>,
}

impl Selection {
    /// What selectors look at in `v`, an object of `r` in its served form.
    fn of(r: &ResourceInfo, index: Option<IndexOn>, v: &Value) -> Self {
        let labels = Labels::of(v.pointer("/metadata/labels").and_then(Value::as_object));
        let fields = ["metadata.name", "metadata.namespace"]
            .iter()
            .chain(r.strategy.selectable_fields())
            .map(|f| (*f, field_value(v, f).into()))
            .collect();
        let index = match index {
            Some(IndexOn::Field(f)) => Some(field_value(v, f)),
            Some(IndexOn::Label(l)) => labels.get(l).map(str::to_string),
            None => None,
        };
        Self {
            labels,
            fields,
            index,
        }
    }
}

/// A stored object of `r` in the form it is served.
fn served(r: &ResourceInfo, kv: &KeyValue) -> ApiResult<Value> {
    Ok(r.strategy.served_form(decode_kv(kv)?))
}

impl CachedObject {
    fn decode(r: &ResourceInfo, index: Option<IndexOn>, kv: &KeyValue) -> ApiResult<Self> {
        let v = served(r, kv)?;
        let selection = Arc::new(Selection::of(r, index, &v));
        let json = Bytes::from(serde_json::to_vec(&v).expect("JSON values serialise"));
        Ok(Self {
            key: kv.key.clone(),
            selection,
            json,
        })
    }

    /// A stored object of `r`, decoded as the cache holds it.
    pub fn from_kv(r: &ResourceInfo, kv: &KeyValue) -> ApiResult<Self> {
        Self::decode(r, index_of(r), kv)
    }

    /// The object as a JSON value (for the Table and metadata-only forms).
    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).expect("the cache holds JSON it wrote")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn name(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }

    /// What a watch line of this type has before its object.
    fn line_head(self) -> &'static [u8] {
        match self {
            Self::Added => b"{\"type\":\"ADDED\",\"object\":",
            Self::Modified => b"{\"type\":\"MODIFIED\",\"object\":",
            Self::Deleted => b"{\"type\":\"DELETED\",\"object\":",
        }
    }
}

/// One watch line (`{"type":…,"object":…}` and a newline) as the frames it is sent in.
#[derive(Debug, Clone)]
pub enum Line {
    /// An object's line: its cached JSON between a static head and tail, so that sending it
    /// copies nothing.
    Object(EventType, Bytes),
    /// A line rendered whole (a Table, metadata, a bookmark, an error).
    Whole(Bytes),
}

impl Line {
    pub fn frames(self) -> impl Iterator<Item = Bytes> {
        let frames = match self {
            Self::Object(ty, json) => [
                Some(Bytes::from_static(ty.line_head())),
                Some(json),
                Some(Bytes::from_static(b"}\n")),
            ],
            Self::Whole(line) => [Some(line), None, None],
        };
        frames.into_iter().flatten()
    }
}

/// A change of one object, decoded once and shared by every watcher it concerns.
#[derive(Debug)]
pub struct CachedEvent {
    pub revision: u64,
    kind: EventKind,
    /// The new object; for a delete, the last state (at the delete's revision).
    pub object: Arc<CachedObject>,
    /// What selectors saw of the state this change replaced.
    prev: Option<Arc<Selection>>,
    /// The Table and metadata watch lines of each event type, encoded on first use: every
    /// watcher of the same shape gets the same bytes.
    rendered: [OnceLock<Bytes>; 6],
}

impl CachedEvent {
    fn new(
        revision: u64,
        kind: EventKind,
        object: CachedObject,
        prev: Option<Arc<Selection>>,
    ) -> Self {
        Self {
            revision,
            kind,
            object: Arc::new(object),
            prev,
            rendered: Default::default(),
        }
    }

    /// A store event decoded on its own (a watch the store serves, not the cache).
    pub fn from_store(r: &ResourceInfo, ev: &Event) -> ApiResult<Self> {
        let index = index_of(r);
        let object = CachedObject::decode(r, index, &ev.kv)?;
        let prev = match &ev.prev {
            // Only what selectors look at: the replaced state's JSON is never sent.
            Some(p) => Some(Arc::new(Selection::of(r, index, &served(r, p)?))),
            None => None,
        };
        Ok(Self::new(ev.revision(), ev.kind, object, prev))
    }

    /// What a watcher selecting with `filter` sees of this change: an object entering its
    /// selection is ADDED, one leaving it DELETED, as kube-apiserver reports them.
    pub fn seen_by(&self, filter: &Filter) -> Option<EventType> {
        let was = self.prev.as_ref().is_some_and(|p| filter.selects(p));
        match self.kind {
            EventKind::Delete => was.then_some(EventType::Deleted),
            EventKind::Put => match (was, filter.matches(&self.object)) {
                (false, true) => Some(EventType::Added),
                (true, true) => Some(EventType::Modified),
                (true, false) => Some(EventType::Deleted),
                (false, false) => None,
            },
        }
    }

    /// The watch line of this event as `ty` in response shape `shape`. The object's own line
    /// shares its cached JSON; a Table or metadata line is made by `render` for the first
    /// watcher that asks and shared with the rest.
    pub fn line(&self, ty: EventType, shape: Shape, render: impl FnOnce() -> Bytes) -> Line {
        let row = match shape {
            Shape::Object => return Line::Object(ty, self.object.json.clone()),
            Shape::Table => 0,
            Shape::Metadata => 1,
        };
        let rendered = &self.rendered[row * 3 + ty as usize];
        Line::Whole(rendered.get_or_init(render).clone())
    }
}

type Queued = (Arc<CachedEvent>, EventType);

struct Watcher {
    filter: Arc<Filter>,
    /// Key prefix (the namespace watched, or the whole resource).
    prefix: String,
    /// Events up to this revision are not for this watcher.
    after: u64,
    index: Option<String>,
    tx: mpsc::Sender<Queued>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Arc<CachedObject>>,
    /// Index value → keys of the objects that have it.
    objects_by_index: HashMap<String, BTreeSet<String>>,
    ring: VecDeque<Arc<CachedEvent>>,
    /// Watches from this revision on are served from the ring.
    oldest: u64,
    revision: u64,
    watchers: HashMap<u64, Watcher>,
    /// Watchers without an index value: offered every event.
    unindexed: HashSet<u64>,
    watchers_by_index: HashMap<String, HashSet<u64>>,
    next_id: u64,
}

impl State {
    fn insert_object(&mut self, o: Arc<CachedObject>) -> Option<Arc<CachedObject>> {
        if let Some(i) = &o.selection.index {
            self.objects_by_index
                .entry(i.clone())
                .or_default()
                .insert(o.key.clone());
        }
        let prev = self.objects.insert(o.key.clone(), o.clone());
        if let Some(p) = &prev
            && p.selection.index != o.selection.index
        {
            self.unindex_object(p);
        }
        prev
    }

    fn remove_object(&mut self, key: &str) -> Option<Arc<CachedObject>> {
        let prev = self.objects.remove(key)?;
        self.unindex_object(&prev);
        Some(prev)
    }

    fn unindex_object(&mut self, o: &CachedObject) {
        if let Some(i) = &o.selection.index
            && let Some(keys) = self.objects_by_index.get_mut(i)
        {
            keys.remove(&o.key);
            if keys.is_empty() {
                self.objects_by_index.remove(i);
            }
        }
    }

    fn add_watcher(&mut self, w: Watcher) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        match &w.index {
            Some(i) => {
                self.watchers_by_index
                    .entry(i.clone())
                    .or_default()
                    .insert(id);
            }
            None => {
                self.unindexed.insert(id);
            }
        }
        self.watchers.insert(id, w);
        id
    }

    fn remove_watcher(&mut self, id: u64) {
        let Some(w) = self.watchers.remove(&id) else {
            return;
        };
        match &w.index {
            Some(i) => {
                if let Some(ids) = self.watchers_by_index.get_mut(i) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        self.watchers_by_index.remove(i);
                    }
                }
            }
            None => {
                self.unindexed.remove(&id);
            }
        }
    }

    /// Hands `ev` to every watcher it concerns; closes those whose queue is full.
    fn dispatch(&mut self, ev: &Arc<CachedEvent>) {
        let mut ids: Vec<u64> = self.unindexed.iter().copied().collect();
        let new = ev.object.selection.index.as_ref();
        let old = ev.prev.as_ref().and_then(|p| p.index.as_ref());
        for i in [new, old.filter(|o| Some(*o) != new)].into_iter().flatten() {
            ids.extend(self.watchers_by_index.get(i).into_iter().flatten());
        }
        let mut gone = Vec::new();
        for id in ids {
            let w = &self.watchers[&id];
            if ev.revision <= w.after || !ev.object.key.starts_with(&w.prefix) {
                continue;
            }
            let Some(ty) = ev.seen_by(&w.filter) else {
                continue;
            };
            match w.tx.try_send((ev.clone(), ty)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::info!(
                        prefix = %w.prefix,
                        queued = WATCHER_QUEUE,
                        "closing a watch that cannot keep up; its client watches again"
                    );
                    gone.push(id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => gone.push(id),
            }
        }
        for id in gone {
            self.remove_watcher(id);
        }
    }

    /// The objects under `prefix` that `filter` selects, through the index when it can.
    fn select(
        &self,
        prefix: &str,
        filter: &Filter,
        index: Option<IndexOn>,
    ) -> Vec<Arc<CachedObject>> {
        let matching = |o: &&Arc<CachedObject>| o.key.starts_with(prefix) && filter.matches(o);
        match filter.index_value(index) {
            Some(i) => self
                .objects_by_index
                .get(&i)
                .into_iter()
                .flatten()
                .filter(|k| k.starts_with(prefix))
                .filter_map(|k| self.objects.get(k))
                .filter(matching)
                .cloned()
                .collect(),
            None => self
                .objects
                .range(prefix.to_string()..)
                .map(|(_, o)| o)
                .take_while(|o| o.key.starts_with(prefix))
                .filter(matching)
                .cloned()
                .collect(),
        }
    }
}

/// The cache of one resource.
pub struct ResourceCache {
    r: &'static ResourceInfo,
    index: Option<IndexOn>,
    state: Mutex<State>,
    /// The revision of the last event applied (published after it was dispatched).
    revision: AtomicU64,
    /// Cleared when the store watch feeding the cache ends: the cache is then rebuilt.
    alive: AtomicBool,
}

impl ResourceCache {
    /// Loads every object of `r` at one revision and follows the store from there.
    async fn start(store: &Arc<dyn Store>, r: &'static ResourceInfo) -> ApiResult<Arc<Self>> {
        let prefix = r.prefix(None);
        let index = index_of(r);
        let mut state = State::default();
        let mut page = store.range(&prefix, None, LOAD_PAGE).await?;
        let at = page.revision;
        loop {
            for kv in &page.kvs {
                match CachedObject::decode(r, index, kv) {
                    Ok(o) => {
                        state.insert_object(Arc::new(o));
                    }
                    Err(e) => {
                        tracing::warn!(key = %kv.key, error = %e.message, "not caching an object that does not decode")
                    }
                }
            }
            match page.kvs.last() {
                Some(last) if page.more => {
                    page = store
                        .range_at(&prefix, Some(&last.key), LOAD_PAGE, at)
                        .await?;
                }
                _ => break,
            }
        }
        state.oldest = at;
        state.revision = at;
        let stream = store.watch(&prefix, at).await?;
        let cache = Arc::new(Self {
            r,
            index,
            state: Mutex::new(state),
            revision: AtomicU64::new(at),
            alive: AtomicBool::new(true),
        });
        tokio::spawn(cache.clone().follow(stream));
        tracing::debug!(resource = %r.group_resource(), revision = at, "watch cache ready");
        Ok(cache)
    }

    async fn follow(self: Arc<Self>, mut stream: WatchStream) {
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => self.apply(&ev),
                Err(e) => {
                    tracing::warn!(resource = %self.r.group_resource(), error = %e, "the watch cache lost its store watch; rebuilding");
                    break;
                }
            }
        }
        self.alive.store(false, Ordering::SeqCst);
        // Closing every watcher: each client watches again (from the store or a new cache).
        let mut state = self.lock();
        state.watchers.clear();
        state.unindexed.clear();
        state.watchers_by_index.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self, ev: &Event) {
        let object = match CachedObject::decode(self.r, self.index, &ev.kv) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(key = %ev.kv.key, error = %e.message, "skipping an event whose object does not decode");
                return;
            }
        };
        let mut state = self.lock();
        if ev.revision() <= state.revision {
            return;
        }
        let (event, prev) = match ev.kind {
            EventKind::Put => {
                let object = Arc::new(object);
                let prev = state.insert_object(object.clone());
                (object, prev.map(|p| p.selection.clone()))
            }
            EventKind::Delete => {
                let prev = state.remove_object(&ev.kv.key);
                (Arc::new(object), prev.map(|p| p.selection.clone()))
            }
        };
        let event = Arc::new(CachedEvent {
            revision: ev.revision(),
            kind: ev.kind,
            object: event,
            prev,
            rendered: Default::default(),
        });
        state.dispatch(&event);
        state.ring.push_back(event);
        if state.ring.len() > RING_EVENTS
            && let Some(evicted) = state.ring.pop_front()
        {
            state.oldest = evicted.revision;
        }
        state.revision = ev.revision();
        self.revision.store(ev.revision(), Ordering::Release);
    }

    /// Objects under `prefix` selected by `filter`, with the revision they are at.
    pub fn list(&self, prefix: &str, filter: &Filter) -> (Vec<Arc<CachedObject>>, u64) {
        let state = self.lock();
        (state.select(prefix, filter, self.index), state.revision)
    }

    /// A watch of the events after `after`, or `None` when the ring no longer covers them (or
    /// the cache is being rebuilt): the store serves it then.
    pub fn watch(
        self: &Arc<Self>,
        prefix: &str,
        filter: Arc<Filter>,
        after: u64,
    ) -> Option<CacheWatch> {
        let mut state = self.lock();
        if !self.alive.load(Ordering::SeqCst) || after < state.oldest {
            return None;
        }
        let backlog = state
            .ring
            .iter()
            .filter(|ev| ev.revision > after && ev.object.key.starts_with(prefix))
            .filter_map(|ev| Some((ev.clone(), ev.seen_by(&filter)?)))
            .collect();
        Some(self.register(&mut state, prefix, filter, after, backlog))
    }

    /// The objects under `prefix` selected by `filter` and a watch of what follows them (a
    /// watch with `resourceVersion=0`), or `None` while the cache is being rebuilt.
    pub fn snapshot_and_watch(
        self: &Arc<Self>,
        prefix: &str,
        filter: Arc<Filter>,
    ) -> Option<(Vec<Arc<CachedObject>>, u64, CacheWatch)> {
        let mut state = self.lock();
        if !self.alive.load(Ordering::SeqCst) {
            return None;
        }
        let objects = state.select(prefix, &filter, self.index);
        let at = state.revision;
        let watch = self.register(&mut state, prefix, filter, at, VecDeque::new());
        Some((objects, at, watch))
    }

    fn register(
        self: &Arc<Self>,
        state: &mut State,
        prefix: &str,
        filter: Arc<Filter>,
        after: u64,
        backlog: VecDeque<Queued>,
    ) -> CacheWatch {
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        let index = filter.index_value(self.index);
        let id = state.add_watcher(Watcher {
            filter,
            prefix: prefix.to_string(),
            after,
            index,
            tx,
        });
        CacheWatch {
            cache: self.clone(),
            id,
            backlog,
            rx,
        }
    }

    /// Watchers currently registered (for tests and metrics).
    pub fn watchers(&self) -> usize {
        self.lock().watchers.len()
    }
}

/// One API watcher's registration with a cache; deregistered when dropped.
pub struct CacheWatch {
    cache: Arc<ResourceCache>,
    id: u64,
    backlog: VecDeque<Queued>,
    rx: mpsc::Receiver<Queued>,
}

impl CacheWatch {
    /// The next event for this watcher; `None` once the cache closed it.
    pub async fn next(&mut self) -> Option<Queued> {
        match self.backlog.pop_front() {
            Some(q) => Some(q),
            None => self.rx.recv().await,
        }
    }

    /// A revision every event of this watch up to which has been handed out by [`Self::next`],
    /// when nothing is queued (for bookmarks).
    pub fn progress(&self) -> Option<u64> {
        // The cache publishes its revision after dispatching, so an event at or below the
        // revision read here is already queued, or taken.
        let revision = self.cache.revision.load(Ordering::Acquire);
        (self.backlog.is_empty() && self.rx.is_empty()).then_some(revision)
    }
}

impl Drop for CacheWatch {
    fn drop(&mut self) {
        self.cache.lock().remove_watcher(self.id);
    }
}

/// One resource's cache, once started; locked while it starts.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<ResourceCache>>>>;

/// The caches of every resource, each started on first use (or at server start).
#[derive(Default)]
pub struct WatchCaches {
    caches: Mutex<HashMap<(&'static str, &'static str), Slot>>,
}

impl WatchCaches {
    /// The cache of `r`, started (or restarted after its store watch ended) when needed.
    pub async fn get(
        &self,
        store: &Arc<dyn Store>,
        r: &'static ResourceInfo,
    ) -> ApiResult<Arc<ResourceCache>> {
        let slot = self
            .caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((r.group, r.plural))
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref()
            && c.alive.load(Ordering::SeqCst)
        {
            return Ok(c.clone());
        }
        let c = ResourceCache::start(store, r).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Starts the cache of every resource, so that watches resuming from a list taken since
    /// are served from memory.
    pub async fn start_all(&self, store: &Arc<dyn Store>) {
        for &r in crate::resources::RESOURCES {
            if let Err(e) = self.get(store, r).await {
                tracing::warn!(resource = %r.group_resource(), error = %e.message, "watch cache not started; it starts on first use");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_objects_line_is_its_json_between_static_frames() {
        let json = Bytes::from_static(br#"{"kind":"Pod","metadata":{"name":"p"}}"#);
        for ty in [EventType::Added, EventType::Modified, EventType::Deleted] {
            let frames: Vec<Bytes> = Line::Object(ty, json.clone()).frames().collect();
            assert_eq!(frames.len(), 3);
            assert_eq!(
                frames[1].as_ptr(),
                json.as_ptr(),
                "the JSON is shared, not copied"
            );
            let line = frames.concat();
            assert_eq!(line.last(), Some(&b'\n'));
            let v: Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(v["type"], ty.name());
            assert_eq!(v["object"]["metadata"]["name"], "p");
        }
        let whole = Bytes::from_static(b"{}\n");
        assert_eq!(
            Line::Whole(whole.clone()).frames().collect::<Vec<_>>(),
            [whole]
        );
    }
}
