//! Watch: a stream of `{"type": ..., "object": ...}` lines from a resourceVersion, with the
//! initial state when asked (`resourceVersion` unset or "0", or `sendInitialEvents=true`),
//! selector transitions turned into ADDED/DELETED as the real API server does, periodic
//! bookmarks, and an `ERROR` event carrying `410 Gone` when the history was compacted.

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
use super::object::decode_kv;
use super::resources::ResourceInfo;
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{ApiError, ApiResult};
use super::table;
use skiff_store::{EventKind, KeyValue};

struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, o: &Value) -> bool {
        self.labels
            .matches(o.pointer("/metadata/labels").and_then(Value::as_object))
            && self.fields.matches(o)
    }
}

struct Encoder {
    r: &'static ResourceInfo,
    shape: Shape,
}

impl Encoder {
    fn line(&self, ty: &str, obj: &Value) -> Bytes {
        let object = match self.shape {
            _ if ty == "ERROR" || ty == "BOOKMARK" => obj.clone(),
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
        let mut s =
            serde_json::to_vec(&json!({"type": ty, "object": object})).expect("serialisable");
        s.push(b'\n');
        Bytes::from(s)
    }

    fn bookmark(&self, rev: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.r.kind, "apiVersion": self.r.api_version(), "metadata": meta});
        let mut s =
            serde_json::to_vec(&json!({"type": "BOOKMARK", "object": obj})).expect("serialisable");
        s.push(b'\n');
        Bytes::from(s)
    }
}

fn decode_event_kv(r: &ResourceInfo, kv: &KeyValue) -> Option<Value> {
    decode_kv(kv).ok().map(|o| r.strategy.served_form(o))
}

pub async fn serve(
    app: Arc<ApiServer>,
    r: &'static ResourceInfo,
    namespace: Option<String>,
    q: &HashMap<String, String>,
    shape: Shape,
) -> ApiResult<Response> {
    let filter = Filter {
        labels: LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?,
        fields: FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str), r)?,
    };
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
    let initial = match send_initial {
        Some("true") => true,
        Some("false") => false,
        _ => rv_param.is_empty() || rv_param == "0",
    };
    let mut first: Vec<Bytes> = Vec::new();
    let start_rev;
    // The initial state is read and sent a page at a time (later pages at the first page's
    // revision), so that a watch of a large collection never holds all of it.
    let mut initial_page = None;
    if initial {
        let page = app.store.range(&prefix, None, INITIAL_PAGE).await?;
        start_rev = page.revision;
        initial_page = Some(page);
    } else {
        start_rev = rv_param
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv_param:?}")))?;
    }
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let stream = match app.store.watch(&prefix, start_rev).await {
        Ok(s) => Some(s),
        Err(skiff_store::StoreError::Compacted {
            requested,
            compacted,
        }) => {
            let status = ApiError::gone(format!(
                "too old resource version: {requested} ({compacted})"
            ))
            .to_status();
            first.push(enc.line("ERROR", &status));
            None
        }
        Err(e) => return Err(e.into()),
    };
    let interval = app.bookmark_interval;
    let patience = app.slow_watcher_timeout;
    let end_bookmark = send_initial == Some("true") && bookmarks;
    tokio::spawn(async move {
        if let Some(page) = initial_page {
            let lines = initial_events(&app, &prefix, page, &filter, &enc);
            tokio::pin!(lines);
            while let Some(line) = lines.next().await {
                if !deliver(&tx, line, patience).await {
                    return;
                }
            }
            if end_bookmark && !deliver(&tx, enc.bookmark(start_rev, true), patience).await {
                return;
            }
        }
        for b in first {
            if !deliver(&tx, b, patience).await {
                return;
            }
        }
        let Some(mut stream) = stream else { return };
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
                    if !deliver(&tx, enc.bookmark(last_rev, false), patience).await {
                        return;
                    }
                }
                ev = stream.next() => {
                    let Some(ev) = ev else { return };
                    let ev = match ev {
                        Ok(ev) => ev,
                        Err(e) => {
                            let status = ApiError::from(e).to_status();
                            let _ = deliver(&tx, enc.line("ERROR", &status), patience).await;
                            return;
                        }
                    };
                    last_rev = ev.revision();
                    let new = decode_event_kv(r, &ev.kv);
                    let old = ev.prev.as_ref().and_then(|p| decode_event_kv(r, p));
                    let old_match = old.as_ref().is_some_and(|o| filter.matches(o));
                    let line = match (ev.kind, new) {
                        (EventKind::Delete, Some(o)) if old_match => Some(enc.line("DELETED", &o)),
                        (EventKind::Put, Some(o)) => {
                            match (old_match, filter.matches(&o)) {
                                (false, true) => Some(enc.line("ADDED", &o)),
                                (true, true) => Some(enc.line("MODIFIED", &o)),
                                (true, false) => Some(enc.line("DELETED", &o)),
                                (false, false) => None,
                            }
                        }
                        _ => None,
                    };
                    if let Some(line) = line
                        && !deliver(&tx, line, patience).await
                    {
                        return;
                    }
                }
            }
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
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
async fn deliver(tx: &mpsc::Sender<Bytes>, line: Bytes, patience: Duration) -> bool {
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
) -> impl futures::Stream<Item = Bytes> + 'a {
    let at = first.revision;
    futures::stream::unfold(Some(first), move |page| async move {
        let page = page?;
        let lines: Vec<Bytes> = page
            .kvs
            .iter()
            .filter_map(|kv| decode_event_kv(enc.r, kv))
            .filter(|o| filter.matches(o))
            .map(|o| enc.line("ADDED", &o))
            .collect();
        let next = match page.kvs.last() {
            Some(last) if page.more => {
                match app
                    .store
                    .range_at(prefix, Some(&last.key), INITIAL_PAGE, at)
                    .await
                {
                    Ok(p) => Some(Ok(p)),
                    Err(e) => Some(Err(enc.line("ERROR", &ApiError::from(e).to_status()))),
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
