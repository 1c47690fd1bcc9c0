//! List bodies written as a stream of chunks while the objects are read, never built whole:
//! `{"kind":…,"apiVersion":…,"metadata":{…},"items":[` then the items' JSON, then `]}`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use skiff_store::Store;

use crate::resources::ResourceInfo;
use crate::status::ApiResult;
use crate::watch_cache::{CachedObject, Filter};

/// Bytes gathered into one chunk of the body before it is handed to the connection.
const CHUNK: usize = 64 * 1024;

/// The opening of a list, up to its first item.
fn head(r: &ResourceInfo, metadata: &serde_json::Value) -> Vec<u8> {
    format!(
        "{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
        r.list_kind(),
        r.api_version(),
        metadata
    )
    .into_bytes()
}

/// Packs the items' JSON, comma separated, into chunks of about [`CHUNK`] bytes.
struct Chunker {
    buf: Vec<u8>,
    first: bool,
}

impl Chunker {
    fn new(head: Vec<u8>) -> Self {
        Self {
            buf: head,
            first: true,
        }
    }

    /// Adds an item; returns a full chunk when there is one.
    fn push(&mut self, item: &[u8]) -> Option<Bytes> {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        self.buf.extend_from_slice(item);
        (self.buf.len() >= CHUNK).then(|| Bytes::from(std::mem::take(&mut self.buf)))
    }

    /// The last chunk, closing the list.
    fn finish(mut self) -> Bytes {
        self.buf.extend_from_slice(b"]}");
        Bytes::from(self.buf)
    }
}

fn json_response(body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A list of objects of the watch cache at `revision`.
pub fn from_cache(r: &ResourceInfo, revision: u64, objects: Vec<Arc<CachedObject>>) -> Response {
    let metadata = serde_json::json!({"resourceVersion": revision.to_string()});
    let mut chunker = Some(Chunker::new(head(r, &metadata)));
    let mut items = objects.into_iter();
    let chunks = std::iter::from_fn(move || {
        let c = chunker.as_mut()?;
        for o in items.by_ref() {
            if let Some(full) = c.push(&o.json) {
                return Some(full);
            }
        }
        chunker.take().map(Chunker::finish)
    });
    json_response(Body::from_stream(futures::stream::iter(
        chunks.map(Ok::<_, Infallible>),
    )))
}

/// Objects per store read of a streamed list.
const STORE_PAGE: usize = 500;

/// A list of everything under `prefix` that `filter` selects, read from the store a page at a
/// time (at `revision`, or the latest one) and written as it is read. The first page is read
/// before answering, so that a compacted or future revision still gets its Status; a later
/// page that fails (compacted meanwhile, store lost) cuts the body short, which the client sees
/// as a failed request.
pub async fn from_store(
    store: Arc<dyn Store>,
    r: &'static ResourceInfo,
    prefix: String,
    filter: Filter,
    revision: Option<u64>,
) -> ApiResult<Response> {
    let filter = Arc::new(filter);
    let first = match revision {
        Some(at) => store.range_at(&prefix, None, STORE_PAGE, at).await?,
        None => store.range(&prefix, None, STORE_PAGE).await?,
    };
    let at = first.revision;
    let metadata = serde_json::json!({"resourceVersion": at.to_string()});
    let chunker = Chunker::new(head(r, &metadata));
    let state = Some((chunker, Some(first)));
    let chunks = futures::stream::unfold(state, move |state| {
        let (store, prefix, filter) = (store.clone(), prefix.clone(), filter.clone());
        async move {
            let (mut chunker, page) = state?;
            let Some(page) = page else {
                return Some((Ok(chunker.finish()), None));
            };
            let mut out = Vec::new();
            for kv in &page.kvs {
                match CachedObject::from_kv(r, kv) {
                    Ok(o) if filter.matches(&o) => out.extend(chunker.push(&o.json)),
                    Ok(_) => {}
                    Err(e) => return Some((Err(std::io::Error::other(e.message)), None)),
                }
            }
            let next = match page.kvs.last() {
                Some(last) if page.more => {
                    match store
                        .range_at(&prefix, Some(&last.key), STORE_PAGE, at)
                        .await
                    {
                        Ok(p) => Some(p),
                        Err(e) => return Some((Err(std::io::Error::other(e.to_string())), None)),
                    }
                }
                _ => None,
            };
            let bytes = Bytes::from(out.concat());
            Some((Ok(bytes), Some((chunker, next))))
        }
    });
    Ok(json_response(Body::from_stream(chunks)))
}
