//! `/attach/<ns>/<pod>/<container>` over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`):
//! the container's output from the moment the client attaches — stdout on channel 1, stderr on
//! channel 2, read from its CRI log as the shim writes it — until the container exits, then its
//! exit status on channel 3, as exec ends.
//!
//! With `stdin=true`, a container started with `stdin: true` gets what the client sends on
//! channel 0 through its shim's attach socket, and the terminal's size from channel 4 when it
//! has a `tty`; closing stdin (v5 channel 255) closes the container's stdin when it is
//! `stdinOnce`. Other containers have /dev/null for stdin: what a client sends is dropped.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::exec::{
    CLOSE, RESIZE, STATUS, STDIN, TerminalSize, V4, V5, client_data, exit_status, failure, frame,
    normal_close,
};
use super::{ApiError, NodeServer, logs, query};
use crate::containers::ContainerRecord;
use crate::shim::{self, attach as socket};

pub(super) async fn attach(
    State(s): State<Arc<NodeServer>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(raw): RawQuery,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let record = s.running_container(&ns, &pod, &container)?;
    let stdin = query::flag(&query::pairs(raw.as_deref()), "stdin");
    let logs_dir = s.pod_logs_dir.clone();
    let ws = ws.protocols([V5, V4]);
    let v5 = ws.selected_protocol().is_some_and(|p| p == V5);
    Ok(ws.on_upgrade(move |socket| run_attach(socket, record, logs_dir, stdin, v5)))
}

/// Forwards one message of the client to the shim's attach socket; false when the socket is
/// gone.
async fn forward(input: &mut UnixStream, data: &[u8], v5: bool) -> bool {
    let bytes = match data.split_first() {
        Some((&STDIN, rest)) => socket::encode_stdin(rest),
        Some((&RESIZE, rest)) => match serde_json::from_slice::<TerminalSize>(rest) {
            Ok(size) => socket::encode_resize(size.width, size.height),
            Err(_) => return true,
        },
        Some((&CLOSE, [STDIN])) if v5 => socket::encode_close_stdin(),
        _ => return true,
    };
    input.write_all(&bytes).await.is_ok()
}

async fn run_attach(
    socket: WebSocket,
    mut record: ContainerRecord,
    logs_dir: std::path::PathBuf,
    stdin: bool,
    v5: bool,
) {
    let (mut sink, mut source) = socket.split();
    let (tx, mut rx) = mpsc::channel::<(u8, Vec<u8>)>(16);
    // The log is opened past its end (reading what is there) before any input is forwarded:
    // output the input causes must not be skipped as old (opening it on the follower thread
    // raced with that).
    let meta = record.meta.clone();
    let output = tokio::task::spawn_blocking(move || logs::new_output(&logs_dir, &meta))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    let dir = record.dir.clone();
    let follower = std::thread::spawn(move || {
        let ended = || !dir.exists() || dir.join(shim::EXIT).exists();
        output?.follow(ended, tx)
    });
    // A container without `stdin: true` has no attach socket: its input is dropped.
    let mut input = match stdin {
        true => UnixStream::connect(record.dir.join(socket::SOCKET))
            .await
            .ok(),
        false => None,
    };
    loop {
        tokio::select! {
            output = rx.recv() => match output {
                Some((stream, text)) => {
                    if sink.send(frame(1 + stream, &text)).await.is_err() {
                        return;
                    }
                }
                // The container ended (or its log could not be read).
                None => break,
            },
            message = source.next() => match message {
                // The client went away: the follower sees the channel closed and stops.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(m)) => {
                    if let (Some(to), Some(data)) = (&mut input, client_data(m))
                        && !forward(to, &data, v5).await
                    {
                        input = None;
                    }
                }
            },
        }
    }
    let status = match follower.join() {
        Ok(Ok(())) => {
            record.refresh();
            match &record.exit {
                Some(exit) => exit_status(exit.exit_code),
                None => failure("the container's exit status was not recorded"),
            }
        }
        Ok(Err(e)) => failure(&format!("reading the container's output: {e}")),
        Err(_) => failure("the output follower failed"),
    };
    let _ = sink
        .send(frame(STATUS, status.to_string().as_bytes()))
        .await;
    let _ = sink.send(normal_close()).await;
}
