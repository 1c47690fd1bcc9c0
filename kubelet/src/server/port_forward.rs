//! `/portForward/<ns>/<pod>?ports=P[,P…]` over WebSocket (`v4.channel.k8s.io`): for the i-th
//! port, channel 2i carries its data and 2i+1 its errors; the first message on each channel is
//! the port number (2 bytes, little-endian). Each port is connected on 127.0.0.1 inside the pod's
//! network namespace, from a thread that joins it for the connect only.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use super::exec::V4;
use super::{ApiError, NodeServer, query};
use crate::network::sandbox::Sandbox;

/// At most this many ports per stream.
const MAX_PORTS: usize = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let ports = parse_ports(&query::pairs(raw.as_deref())).map_err(ApiError::bad_request)?;
    let uid = s.pod_uid(&ns, &pod)?;
    let netns = Sandbox::open(&s.run_dir, &uid)
        .map_err(|e| ApiError::internal(format!("the sandbox of pod {ns}/{pod}: {e}")))?
        .ok_or_else(|| ApiError::not_found(format!("pod {ns}/{pod} has no sandbox")))?
        .net_path();
    Ok(ws
        .protocols([V4])
        .on_upgrade(move |socket| tunnel(socket, netns, ports)))
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
        let _ = sink.send(Message::Close(None)).await;
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
