//! `/portForward/<ns>/<pod>`, two ways:
//! - over SPDY/3.1 (`portforward.k8s.io`), as kubectl speaks it: each forwarded connection is a
//!   pair of streams, data and error, naming the port in their headers;
//! - `?ports=P[,P…]` over WebSocket (`v4.channel.k8s.io`): for the i-th port, channel 2i carries
//!   its data and 2i+1 its errors; the first message on each channel is the port number (2
//!   bytes, little-endian).
//!
//! Each port is connected on 127.0.0.1 inside the pod's network namespace, from a thread that
//! joins it for the connect only.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path as UrlPath, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use super::exec::{V4, normal_close};
use super::spdy::{self, Frame, OutFrame};
use super::{ApiError, NodeServer, query};
use crate::network::sandbox::Sandbox;

/// At most this many ports per stream.
const MAX_PORTS: usize = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the client's side of a forward may stay open once the pod's side closed.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

const SPDY: &str = "SPDY/3.1";
const STREAM_PROTOCOL: &str = "X-Stream-Protocol-Version";
const PORT_FORWARD_V1: &str = "portforward.k8s.io";

fn parse_ports(pairs: &[(String, String)]) -> Result<Vec<u16>, String> {
    let ports: Vec<u16> = query::all(pairs, "ports")
        .flat_map(|v| v.split(','))
        .map(|p| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("ports: {p:?} is not a port number"))
        })
        .collect::<Result<_, _>>()?;
    if ports.is_empty() || ports.len() > MAX_PORTS {
        return Err(format!(
            "ports: between 1 and {MAX_PORTS} ports are required"
        ));
    }
    Ok(ports)
}

pub(super) async fn port_forward(
    State(s): State<Arc<NodeServer>>,
    UrlPath((ns, pod)): UrlPath<(String, String)>,
    RawQuery(raw): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let spdy = is_spdy_upgrade(request.headers())?;
    // With SPDY the ports come in each stream's headers.
    let ports = if spdy {
        Vec::new()
    } else {
        parse_ports(&query::pairs(raw.as_deref())).map_err(ApiError::bad_request)?
    };
    let uid = s.pod_uid(&ns, &pod)?;
    let netns = Sandbox::open(&s.run_dir, &uid)
        .map_err(|e| ApiError::internal(format!("the sandbox of pod {ns}/{pod}: {e}")))?
        .ok_or_else(|| ApiError::not_found(format!("pod {ns}/{pod} has no sandbox")))?
        .net_path();
    if spdy {
        return spdy_upgrade(request, netns);
    }
    let (mut parts, _) = request.into_parts();
    let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| ApiError::bad_request(e.body_text()))?;
    // kubectl's SPDY-over-WebSocket tunnel is refused before the upgrade: kubectl then falls
    // back to SPDY itself.
    if !offers(&parts.headers, header::SEC_WEBSOCKET_PROTOCOL, V4) {
        return Err(ApiError::bad_request(format!(
            "port-forward over WebSocket speaks {V4} only"
        )));
    }
    Ok(ws
        .protocols([V4])
        .on_upgrade(move |socket| tunnel(socket, netns, ports)))
}

/// Whether the comma-separated header `name` lists `value`.
fn offers(headers: &HeaderMap, name: header::HeaderName, value: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(value))
}

/// Whether the request asks for SPDY/3.1 (then it must offer the port-forward protocol).
fn is_spdy_upgrade(headers: &HeaderMap) -> Result<bool, ApiError> {
    if !offers(headers, header::UPGRADE, SPDY) {
        return Ok(false);
    }
    if !offers(
        headers,
        STREAM_PROTOCOL.parse().expect("a header name"),
        PORT_FORWARD_V1,
    ) {
        return Err(ApiError::bad_request(format!(
            "unable to negotiate a port-forward protocol: {PORT_FORWARD_V1} is the one served"
        )));
    }
    Ok(true)
}

/// Answers 101 and serves the SPDY session once the connection switched.
fn spdy_upgrade(mut request: Request, netns: Option<PathBuf>) -> Result<Response, ApiError> {
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => spdy_session(hyper_util::rt::TokioIo::new(upgraded), netns).await,
            Err(e) => tracing::debug!("port-forward: SPDY upgrade: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, SPDY)
        .header(STREAM_PROTOCOL, PORT_FORWARD_V1)
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// The streams of one forwarded connection, as they arrive (kubectl opens the error stream,
/// then the data stream).
#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<(u32, mpsc::Receiver<Bytes>)>,
}

/// One kubectl port-forward session: each connection kubectl accepts locally arrives as a pair
/// of streams (`streamtype` error and data, one `requestid`, the `port`), forwarded to the port
/// in the pod. When the connection goes, every forward it carried is closed.
async fn spdy_session<S: AsyncRead + AsyncWrite + Send + 'static>(io: S, netns: Option<PathBuf>) {
    let (read, write) = tokio::io::split(io);
    let mut reader = spdy::FrameReader::new(read);
    let (tx, mut rx) = mpsc::channel::<OutFrame>(64);
    let writer = tokio::spawn(async move {
        let mut frames = spdy::FrameWriter::new(write);
        while let Some(reply) = rx.recv().await {
            if let Err(e) = frames.send(reply).await {
                tracing::debug!("port-forward: writing: {e}");
                return;
            }
        }
    });
    let mut inbound: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = tokio::task::JoinSet::new();
    loop {
        let frame = match reader.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!("port-forward: reading: {e}");
                break;
            }
        };
        match frame {
            Frame::SynStream { stream, headers } => {
                if tx.send(OutFrame::SynReply { stream }).await.is_err() {
                    break;
                }
                let header = |name: &str| {
                    headers
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.as_str())
                };
                let port = header("port")
                    .and_then(|p| p.parse::<u16>().ok())
                    .filter(|p| *p > 0);
                let kind = header("streamtype");
                let (Some(port), Some(kind @ ("error" | "data"))) = (port, kind) else {
                    let _ = tx.send(fin(stream)).await;
                    continue;
                };
                // Clients before Kubernetes 1.1 sent no request id: the stream ids pair them.
                let id = header("requestid").map(str::to_string).unwrap_or_else(|| {
                    let base = if kind == "data" {
                        stream.wrapping_sub(2)
                    } else {
                        stream
                    };
                    base.to_string()
                });
                let pair = pairs.entry(id.clone()).or_default();
                if kind == "error" {
                    pair.error = Some(stream);
                } else {
                    let (data_tx, data_rx) = mpsc::channel(16);
                    inbound.insert(stream, data_tx);
                    pair.data = Some((stream, data_rx));
                }
                if pair.error.is_some() && pair.data.is_some() {
                    let Pair {
                        error: Some(error),
                        data: Some(data),
                    } = pairs.remove(&id).expect("the pair")
                    else {
                        unreachable!("both streams are there")
                    };
                    forwards.spawn(forward(netns.clone(), port, error, data, tx.clone()));
                }
            }
            Frame::Data { stream, data, fin } => {
                if let Some(to_pod) = inbound.get(&stream)
                    && !data.is_empty()
                    && to_pod.send(data).await.is_err()
                {
                    inbound.remove(&stream);
                }
                if fin {
                    inbound.remove(&stream);
                }
            }
            Frame::RstStream { stream } => {
                inbound.remove(&stream);
            }
            Frame::Ping(id) => {
                let _ = tx.send(OutFrame::Ping(id)).await;
            }
            Frame::GoAway => break,
            Frame::Ignored => {}
        }
        while forwards.try_join_next().is_some() {}
    }
    // The client is gone: so are its connections into the pod.
    forwards.abort_all();
    drop(tx);
    let _ = writer.await;
}

/// An empty DATA frame closing our side of `stream`.
fn fin(stream: u32) -> OutFrame {
    OutFrame::Data {
        stream,
        data: Bytes::new(),
        fin: true,
    }
}

/// Forwards one connection: the data stream to and from `port` in the pod; a failure to connect
/// is told on the error stream. Ends when the pod's side has (and the client's has, or had a
/// second to), closing both streams, as the container runtimes' port-forward does.
async fn forward(
    netns: Option<PathBuf>,
    port: u16,
    error_stream: u32,
    (data_stream, mut from_client): (u32, mpsc::Receiver<Bytes>),
    tx: mpsc::Sender<OutFrame>,
) {
    let tcp = match connect(netns, port).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let message = format!("error forwarding port {port} to pod: {e}");
            let _ = tx
                .send(OutFrame::Data {
                    stream: error_stream,
                    data: Bytes::from(message),
                    fin: true,
                })
                .await;
            let _ = tx.send(fin(data_stream)).await;
            return;
        }
    };
    let (mut read, mut write) = tcp.into_split();
    let mut up = tokio::spawn(async move {
        let mut open = true;
        // Read to the end even after the pod stopped taking data, so the session's reader
        // never waits on this stream.
        while let Some(data) = from_client.recv().await {
            if open && write.write_all(&data).await.is_err() {
                open = false;
            }
        }
        let _ = write.shutdown().await;
    });
    let to_client = tx.clone();
    let down = async move {
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n) = read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let data = Bytes::copy_from_slice(&buf[..n]);
            let frame = OutFrame::Data {
                stream: data_stream,
                data,
                fin: false,
            };
            if to_client.send(frame).await.is_err() {
                return;
            }
        }
        let _ = to_client.send(fin(data_stream)).await;
    };
    down.await;
    if tokio::time::timeout(CLOSE_GRACE, &mut up).await.is_err() {
        up.abort();
    }
    let _ = tx.send(fin(error_stream)).await;
}

/// Connects to `port` on the loopback of the namespace at `netns` (the node's own for a
/// hostNetwork pod).
async fn connect(netns: Option<PathBuf>, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own: it leaves the node's network namespace and then ends.
    std::thread::spawn(move || {
        let connected = (|| -> std::io::Result<std::net::TcpStream> {
            if let Some(path) = netns {
                let ns = std::fs::File::open(&path)?;
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            }
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let stream = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
            stream.set_nonblocking(true)?;
            Ok(stream)
        })();
        let _ = tx.send(connected);
    });
    let stream = rx
        .await
        .map_err(|_| std::io::Error::other("the connecting thread died"))??;
    tokio::net::TcpStream::from_std(stream)
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(channel);
    out.extend_from_slice(data);
    Message::Binary(out.into())
}

async fn tunnel(socket: WebSocket, netns: Option<PathBuf>, ports: Vec<u16>) {
    let (mut sink, mut source) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        let _ = sink.send(normal_close()).await;
    });
    let mut writers: Vec<Option<OwnedWriteHalf>> = Vec::new();
    let mut readers = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().enumerate() {
        let (data, error) = (2 * i as u8, 2 * i as u8 + 1);
        let _ = tx.send(frame(data, &port.to_le_bytes())).await;
        let _ = tx.send(frame(error, &port.to_le_bytes())).await;
        match connect(netns.clone(), *port).await {
            Ok(stream) => {
                let (mut read, write) = stream.into_split();
                writers.push(Some(write));
                let tx = tx.clone();
                readers.spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    while let Ok(n) = read.read(&mut buf).await {
                        if n == 0 || tx.send(frame(data, &buf[..n])).await.is_err() {
                            return;
                        }
                    }
                });
            }
            Err(e) => {
                writers.push(None);
                let message = format!("error forwarding port {port} to pod: {e}");
                let _ = tx.send(frame(error, message.as_bytes())).await;
            }
        }
    }
    loop {
        tokio::select! {
            message = source.next() => match message {
                Some(Ok(Message::Binary(data))) if data.len() > 1 => {
                    let channel = data[0] as usize;
                    if channel.is_multiple_of(2)
                        && let Some(slot) = writers.get_mut(channel / 2)
                        && let Some(write) = slot
                        && write.write_all(&data[1..]).await.is_err()
                    {
                        *slot = None;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            done = readers.join_next(), if !readers.is_empty() => {
                // Every connection into the pod has ended: so does the stream.
                if done.is_some() && readers.is_empty() {
                    break;
                }
            }
        }
    }
    readers.abort_all();
    drop(writers);
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        let p = query::pairs(Some("ports=80,8080&ports=9000"));
        assert_eq!(parse_ports(&p).unwrap(), [80, 8080, 9000]);
        assert!(parse_ports(&query::pairs(Some("ports=0"))).is_err());
        assert!(parse_ports(&query::pairs(Some("x=1"))).is_err());
    }
}
