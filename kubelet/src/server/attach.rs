//! `/attach/<ns>/<pod>/<container>` over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`):
//! the container's output from the moment the client attaches — stdout on channel 1, stderr on
//! channel 2, read from its CRI log as the shim writes it — until the container exits, then its
//! exit status on channel 3, as exec ends.
//!
//! Output only: the shim starts the container with /dev/null for stdin and no terminal, so there
//! is no stdin to attach to (what a client sends on channel 0 is dropped, as for a container
//! without `stdin: true`). Attaching stdin needs the shim to keep the container's stdin open
//! and hand it out (conmon's attach socket).

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::exec::{STATUS, V4, V5, exit_status, failure, frame, normal_close};
use super::{ApiError, NodeServer, logs};
use crate::containers::ContainerRecord;
use crate::shim;

pub(super) async fn attach(
    State(s): State<Arc<NodeServer>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let record = s.running_container(&ns, &pod, &container)?;
    let logs_dir = s.pod_logs_dir.clone();
    Ok(ws
        .protocols([V5, V4])
        .on_upgrade(move |socket| run_attach(socket, record, logs_dir)))
}

async fn run_attach(socket: WebSocket, mut record: ContainerRecord, logs_dir: std::path::PathBuf) {
    let (mut sink, mut source) = socket.split();
    let (tx, mut rx) = mpsc::channel::<(u8, Vec<u8>)>(16);
    let (meta, dir) = (record.meta.clone(), record.dir.clone());
    let follower = std::thread::spawn(move || {
        let ended = || !dir.exists() || dir.join(shim::EXIT).exists();
        logs::follow_new_output(&logs_dir, &meta, ended, tx)
    });
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
                Some(Ok(_)) => {}
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
