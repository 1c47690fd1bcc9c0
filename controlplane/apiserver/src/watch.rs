//! Watch: a stream of `{"type": ..., "object": ...}` lines from a resourceVersion, with the
//! initial state when asked (`resourceVersion` unset or "0", or `sendInitialEvents=true`),
//! selector transitions turned into ADDED/DELETED as the real API server does, periodic
//! bookmarks, and an `ERROR` event carrying `410 Gone` when the history was compacted.
//!
//! The events come from the watch cache when its ring covers the revision asked for, otherwise
//! from a store watch of this watcher's own; the initial state of a `resourceVersion=0` watch is
//! the cache's, that of an unset one a consistent read of the store.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::ApiServer;
use super::handlers::{Shape, partial};
use super::resources::ResourceInfo;
use super::status::{ApiError, ApiResult};
use super::table;
use super::watch_cache::{CacheWatch, CachedEvent, CachedObject, EventType, Filter, Line};
use skiff_store::{RangeResult, StoreError, WatchStream};

struct Encoder {
    r: &'static ResourceInfo,
    shape: Shape,
}

impl Encoder {
    /// The line of `obj` as `ty`, rendered in this watch's shape.
    fn render(&self, ty: &str, obj: &Value) -> Bytes {
        let object = match self.shape {
            Shape::Table => {
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                table::table_for_objects(self.r, std::slice::from_ref(obj), &rv, None)
            }
            Shape::Metadata => partial(obj),
            Shape::Object => obj.clone(),
        };
        rendered_line(ty, &object)
    }

    /// An `ERROR` line: the Status as it is, whatever the watch's shape.
    fn error(&self, status: &Value) -> Line {
        Line::Whole(rendered_line("ERROR", status))
    }

    /// An event's line: bytes the event shares with every watcher of this shape (a Table or
    /// metadata is rendered once per event, not once per watcher).
    fn event(&self, ev: &CachedEvent, ty: EventType) -> Line {
        ev.line(ty, self.shape, || {
            self.render(ty.name(), &ev.object.value())
        })
    }

    /// The ADDED line of an object of the initial state.
    fn added(&self, o: &CachedObject) -> Line {
        match self.shape {
            Shape::Object => Line::Object(EventType::Added, o.json.clone()),
            _ => Line::Whole(self.render(EventType::Added.name(), &o.value())),
        }
    }

    fn bookmark(&self, rev: u64, initial_end: bool) -> Line {
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.r.kind, "apiVersion": self.r.api_version(), "metadata": meta});
        Line::Whole(rendered_line("BOOKMARK", &obj))
    }
}

/// `{"type": ty, "object": object}` and a newline.
fn rendered_line(ty: &str, object: &Value) -> Bytes {
    let mut s = serde_json::to_vec(&json!({"type": ty, "object": object})).expect("serialisable");
    s.push(b'\n');
    Bytes::from(s)
}

/// What a watch sends before its events.
enum Initial {
    None,
    /// A consistent read of the store, sent a page at a time.
    Store(RangeResult),
    /// The watch cache's objects (`resourceVersion=0`).
    Cached(Vec<Arc<CachedObject>>),
}

/// Where a watch's events come from.
enum Source {
    Cache(CacheWatch),
    /// A store watch of its own (a revision older than the cache's ring); `seen` is the revision
    /// of the last event read, selected or not.
    Store {
        stream: WatchStream,
        seen: u64,
    },
}

impl Source {
    /// The next event the watcher sees; `None` when the watch ends.
    async fn next(
        &mut self,
        r: &ResourceInfo,
        filter: &Filter,
    ) -> Option<ApiResult<(Arc<CachedEvent>, EventType)>> {
        match self {
            Self::Cache(w) => w.next().await.map(Ok),
            Self::Store { stream, seen } => loop {
                let ev = match stream.next().await? {
                    Ok(ev) => ev,
                    Err(e) => return Some(Err(e.into())),
                };
                *seen = ev.revision();
                let Ok(ev) = CachedEvent::from_store(r, &ev) else {
                    continue;
                };
                if let Some(ty) = ev.seen_by(filter) {
                    return Some(Ok((Arc::new(ev), ty)));
                }
            },
        }
    }

    /// A revision up to which every event has been read, for a bookmark, when known.
    fn progress(&self) -> Option<u64> {
        match self {
            Self::Cache(w) => w.progress(),
            Self::Store { seen, .. } => Some(*seen),
        }
    }
}

fn gone(requested: u64, compacted: u64) -> Value {
    ApiError::gone(format!(
        "too old resource version: {requested} ({compacted})"
    ))
    .to_status()
}

/// The events after `after`: from the cache when it covers them, else from the store; the
/// `410 Gone` Status when that history was compacted.
async fn open_events(
    app: &ApiServer,
    r: &'static ResourceInfo,
    prefix: &str,
    filter: &Arc<Filter>,
    after: u64,
) -> ApiResult<Result<Source, Value>> {
    let compacted = app.store.compacted_revision();
    if after < compacted {
        return Ok(Err(gone(after, compacted)));
    }
    if let Ok(cache) = app.watch_cache.get(&app.store, r).await
        && let Some(w) = cache.watch(prefix, filter.clone(), after)
    {
        return Ok(Ok(Source::Cache(w)));
    }
    match app.store.watch(prefix, after).await {
        Ok(stream) => Ok(Ok(Source::Store {
            stream,
            seen: after,
        })),
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => Ok(Err(gone(requested, compacted))),
        Err(e) => Err(e.into()),
    }
}

pub async fn serve(
    app: Arc<ApiServer>,
    r: &'static ResourceInfo,
    namespace: Option<String>,
    q: &HashMap<String, String>,
    shape: Shape,
) -> ApiResult<Response> {
    let filter = Arc::new(Filter::parse(q, r)?);
    let bookmarks = matches!(
        q.get("allowWatchBookmarks").map(String::as_str),
        Some("true" | "1")
    );
    let send_initial = q.get("sendInitialEvents").map(String::as_str);
    let rv_param = q.get("resourceVersion").cloned().unwrap_or_default();
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let prefix = r.prefix(namespace.as_deref());
    let enc = Encoder { r, shape };

    // Initial state: unset/"0" resourceVersion or sendInitialEvents=true.
    let send_initial_events = match send_initial {
        Some("true") => true,
        Some("false") => false,
        _ => rv_param.is_empty() || rv_param == "0",
    };
    let cached = if send_initial_events && rv_param == "0" {
        match app.watch_cache.get(&app.store, r).await {
            Ok(cache) => cache.snapshot_and_watch(&prefix, filter.clone()),
            Err(_) => None,
        }
    } else {
        None
    };
    let (start_rev, initial, source) = match cached {
        Some((objects, at, w)) => (at, Initial::Cached(objects), Ok(Source::Cache(w))),
        None => {
            // The initial state is read and sent a page at a time (later pages at the first
            // page's revision), so that a watch of a large collection never holds all of it.
            let (start_rev, initial) = if send_initial_events {
                let page = app.store.range(&prefix, None, INITIAL_PAGE).await?;
                (page.revision, Initial::Store(page))
            } else {
                let rev = rv_param.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion {rv_param:?}"))
                })?;
                (rev, Initial::None)
            };
            let source = open_events(&app, r, &prefix, &filter, start_rev).await?;
            (start_rev, initial, source)
        }
    };
    let (tx, rx) = mpsc::channel::<Line>(256);
    let interval = app.bookmark_interval;
    let patience = app.slow_watcher_timeout;
    let end_bookmark = send_initial == Some("true") && bookmarks;
    tokio::spawn(async move {
        match initial {
            Initial::None => {}
            Initial::Store(page) => {
                let lines = initial_events(&app, &prefix, page, &filter, &enc);
                tokio::pin!(lines);
                while let Some(line) = lines.next().await {
                    if !deliver(&tx, line, patience).await {
                        return;
                    }
                }
            }
            Initial::Cached(objects) => {
                for o in objects {
                    if !deliver(&tx, enc.added(&o), patience).await {
                        return;
                    }
                }
            }
        }
        if end_bookmark && !deliver(&tx, enc.bookmark(start_rev, true), patience).await {
            return;
        }
        let mut source = match source {
            Ok(s) => s,
            Err(status) => {
                let _ = deliver(&tx, enc.error(&status), patience).await;
                return;
            }
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        let mut last_rev = start_rev;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if bookmarks => {
                    last_rev = last_rev.max(source.progress().unwrap_or(0));
                    if !deliver(&tx, enc.bookmark(last_rev, false), patience).await {
                        return;
                    }
                }
                ev = source.next(r, &filter) => {
                    let (ev, ty) = match ev {
                        None => return,
                        Some(Ok(ev)) => ev,
                        Some(Err(e)) => {
                            let _ = deliver(&tx, enc.error(&e.to_status()), patience).await;
                            return;
                        }
                    };
                    last_rev = last_rev.max(ev.revision);
                    if !deliver(&tx, enc.event(&ev, ty), patience).await {
                        return;
                    }
                }
            }
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (line, rx))
    })
    .flat_map(|line| futures::stream::iter(line.frames().map(Ok::<_, Infallible>)));
    let mut resp = Response::new(Body::from_stream(body));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// Sends one line to the watch's client, or gives up on a client that has taken nothing for
/// `patience` while its buffer is full: the watch ends once the client drains what is buffered
/// (it then watches again from its last resourceVersion), instead of the server holding events
/// for a reader that is gone or too slow.
async fn deliver(tx: &mpsc::Sender<Line>, line: Line, patience: Duration) -> bool {
    match tx.send_timeout(line, patience).await {
        Ok(()) => true,
        Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
            tracing::info!(?patience, "closing a watch whose client stopped reading");
            false
        }
        Err(mpsc::error::SendTimeoutError::Closed(_)) => false,
    }
}

/// Objects per read of a watch's initial state.
const INITIAL_PAGE: usize = 500;

/// The `ADDED` lines of a watch's initial state, from its first page on; later pages are read at
/// the first page's revision. A page that can no longer be read (compacted meanwhile) ends the
/// lines with an `ERROR`: the client lists again.
fn initial_events<'a>(
    app: &'a ApiServer,
    prefix: &'a str,
    first: skiff_store::RangeResult,
    filter: &'a Filter,
    enc: &'a Encoder,
) -> impl futures::Stream<Item = Line> + 'a {
    let at = first.revision;
    futures::stream::unfold(Some(first), move |page| async move {
        let page = page?;
        let lines: Vec<Line> = page
            .kvs
            .iter()
            .filter_map(|kv| CachedObject::from_kv(enc.r, kv).ok())
            .filter(|o| filter.matches(o))
            .map(|o| enc.added(&o))
            .collect();
        let next = match page.kvs.last() {
            Some(last) if page.more => {
                match app
                    .store
                    .range_at(prefix, Some(&last.key), INITIAL_PAGE, at)
                    .await
                {
                    Ok(p) => Some(Ok(p)),
                    Err(e) => Some(Err(enc.error(&ApiError::from(e).to_status()))),
                }
            }
            _ => None,
        };
        let (lines, next) = match next {
            Some(Ok(p)) => (lines, Some(p)),
            Some(Err(error)) => (lines.into_iter().chain([error]).collect(), None),
            None => (lines, None),
        };
        Some((futures::stream::iter(lines), next))
    })
    .flatten()
}
