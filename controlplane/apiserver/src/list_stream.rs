//! List bodies written as a stream of chunks while the objects are read, never built whole:
//! `{"kind":…,"apiVersion":…,"metadata":{…},"items":[` then the items' JSON, then `]}`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use crate::resources::ResourceInfo;
use crate::watch_cache::CachedObject;

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
