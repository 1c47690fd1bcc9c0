//! The UDP side without a task per request. hickory-server's UDP loop spawns a task (and a
//! channel send to its socket writer) for every datagram; for a cluster name, answered from the
//! in-memory index, that bookkeeping costs more than the answer. Here each socket's loop
//! decodes a request and runs the [`Handler`] on it in place: an answer that needs nothing
//! else (every cluster name) is encoded and sent before the next datagram is read, and only a
//! request that has to wait (a name forwarded upstream) continues as a task of its own.
//!
//! What hickory-server does for UDP is kept: datagrams shorter than a header and responses are
//! dropped, undecodable requests get FORMERR, nothing is sent to port 0 or an unspecified or
//! broadcast address, and a response larger than the client's EDNS buffer (512 bytes without
//! EDNS) is truncated with TC set so the client retries over TCP.
//!
//! Cluster answers are kept encoded ([`ResponseCache`]): a request byte-identical to an earlier
//! one after its ID is answered with the same bytes, without decoding it at all.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::NetError;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use tokio::net::UdpSocket;
use tracing::{debug, warn};

use super::metrics::Source;
use super::response_cache::ResponseCache;
use super::server::Handler;

/// The largest request read: a DNS message over UDP cannot be larger.
const MAX_REQUEST: usize = 65_535;
/// A DNS header's length: the ID and the fields the cache keys on begin within it.
const HEADER_LEN: usize = 12;

/// Serves requests arriving on `socket` until it fails.
pub(super) async fn serve(socket: UdpSocket, handler: Handler) -> std::io::Result<()> {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut cache = ResponseCache::new();
    loop {
        let (len, src) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            // An ICMP error for an earlier response, a datagram truncated by a full buffer:
            // neither concerns the next request.
            Err(error) if recoverable(&error) => {
                debug!(%error, "receiving a DNS request");
                continue;
            }
            Err(error) => return Err(error),
        };
        if !answerable(src) {
            continue;
        }
        let start = Instant::now();
        let metrics = &handler.shared.metrics;
        let generation = handler.shared.generation();
        let request = &buf[..len];
        if len >= HEADER_LEN
            && let Some((response, code)) = cache.answer(request, generation)
        {
            if let Err(error) = send(&socket, &response, src).await {
                debug!(%error, "sending a cached DNS response");
            }
            metrics.record(false, code, Source::Cluster, start.elapsed());
            continue;
        }
        let sent = Arc::new(OnceLock::new());
        let responder = Responder {
            socket: socket.clone(),
            dst: src,
            sent: sent.clone(),
        };
        let decoded = match Request::from_bytes(request.to_vec(), src, Protocol::Udp) {
            Ok(decoded) => decoded,
            Err(error) => {
                if form_error(request, responder, error).await {
                    metrics.record(false, ResponseCode::FormErr, Source::None, start.elapsed());
                }
                continue;
            }
        };
        if decoded.metadata.message_type == MessageType::Response {
            continue;
        }
        let handler = handler.clone();
        let mut answer = Box::pin(async move {
            let (info, source) = handler.respond(&decoded, responder).await;
            let code = info.response_code;
            handler
                .shared
                .metrics
                .record(false, code, source, start.elapsed());
            (source == Source::Cluster).then_some(code)
        });
        match poll_once(answer.as_mut()) {
            Poll::Ready(Some(code)) => {
                if let Some(response) = sent.get() {
                    cache.insert(request, generation, response, code);
                }
            }
            Poll::Ready(None) => {}
            Poll::Pending => {
                tokio::spawn(answer);
            }
        }
    }
}

/// Polls `future` once without a waker to remember: whatever it waits on is registered again
/// with the task's own waker when the caller spawns it.
fn poll_once<T>(future: Pin<&mut (impl Future<Output = T> + ?Sized)>) -> Poll<T> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

fn recoverable(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionRefused | ConnectionReset | Interrupted | WouldBlock
    ) || error.raw_os_error() == Some(libc::EMSGSIZE)
}

/// Whether a response may be sent to `src` (not port 0, an unspecified or broadcast address).
fn answerable(src: SocketAddr) -> bool {
    src.port() != 0
        && !src.ip().is_unspecified()
        && !matches!(src.ip(), std::net::IpAddr::V4(v4) if v4.is_broadcast())
}

/// FORMERR for a request whose header decodes and whose body does not; nothing for one shorter
/// than a header. Whether it answered.
async fn form_error(raw: &[u8], mut responder: Responder, error: impl std::fmt::Display) -> bool {
    let Ok(header) = Header::from_bytes(raw) else {
        return false;
    };
    if header.metadata.message_type == MessageType::Response {
        return false;
    }
    debug!(id = header.metadata.id, %error, "undecodable DNS request");
    let Ok(queries) = Queries::read(&mut BinDecoder::new(&[]), 0) else {
        return false;
    };
    let response = MessageResponseBuilder::new(&queries, None)
        .error_msg(&header.metadata, ResponseCode::FormErr);
    match responder.send_response(response).await {
        Ok(_) => true,
        Err(error) => {
            warn!(%error, "failed to send FORMERR");
            false
        }
    }
}

/// Sends `bytes` to `dst`, waiting only when the socket's buffer is full.
async fn send(socket: &UdpSocket, bytes: &[u8], dst: SocketAddr) -> std::io::Result<()> {
    match socket.try_send_to(bytes, dst) {
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
            socket.send_to(bytes, dst).await?;
        }
        sent => {
            sent?;
        }
    }
    Ok(())
}

/// Sends a response to the client it answers over the shared socket, and keeps what it sent
/// for the response cache.
#[derive(Clone)]
struct Responder {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
    sent: Arc<OnceLock<Vec<u8>>>,
}

#[async_trait::async_trait]
impl ResponseHandler for Responder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let (info, bytes) = encode(response)?;
        send(&self.socket, &bytes, self.dst).await?;
        let _ = self.sent.set(bytes);
        Ok(info)
    }
}

/// The response's wire form within the client's UDP limit (its EDNS payload size, or 512 bytes
/// without EDNS; the encoder truncates and sets TC beyond it), or a bare SERVFAIL if it cannot
/// be encoded.
fn encode<'a>(
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> Result<(ResponseInfo, Vec<u8>), NetError> {
    let id = response.metadata().id;
    let limit = response.edns().map_or(512, |e| e.max_payload());
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(limit);
    match response.destructive_emit(&mut encoder) {
        Ok(info) => Ok((info, bytes)),
        Err(error) => {
            warn!(%error, id, "encoding a DNS response");
            bytes.clear();
            let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
            metadata.response_code = ResponseCode::ServFail;
            let header = Header {
                metadata,
                counts: HeaderCounts::default(),
            };
            header
                .emit(&mut BinEncoder::new(&mut bytes))
                .map_err(NetError::from)?;
            Ok((ResponseInfo::from(header), bytes))
        }
    }
}
