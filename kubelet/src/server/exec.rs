//! `/exec/<ns>/<pod>/<container>` over WebSocket, as the API server and kubectl speak it: the
//! `v5.channel.k8s.io` or `v4.channel.k8s.io` subprotocol, each binary message prefixed by its
//! channel — 0 stdin, 1 stdout, 2 stderr, 3 the final `metav1.Status` (exit code), 4 terminal
//! resize, and in v5 255 to close stdin. The command runs through the OCI runtime's `exec`; when
//! the client goes away the command's process is killed, so nothing is left behind. With `tty`
//! the command's stdio is a pty the kubelet makes (its output on channel 1, resized from channel
//! 4); the command does not get it as its controlling terminal.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{ApiError, NodeServer, query};
use crate::runtime::Runtime;

pub(super) const V5: &str = "v5.channel.k8s.io";
pub(super) const V4: &str = "v4.channel.k8s.io";

pub(super) const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
pub(super) const STATUS: u8 = 3;
pub(super) const RESIZE: u8 = 4;
pub(super) const CLOSE: u8 = 255;

/// How long a command with a terminal waits for the client's first terminal size before it
/// starts (kubectl sends it right after connecting; a client without a terminal sends none).
const FIRST_RESIZE: Duration = Duration::from_millis(500);

/// How long the output is drained after the command ended (a background child of the command
/// may hold its pipes open).
const DRAIN: Duration = Duration::from_secs(2);

/// A close with code 1000: client-go takes any other (even none) for a broken stream.
pub(super) fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: Default::default(),
    }))
}

/// The final message of the status channel for an exit code.
pub(super) fn exit_status(code: i32) -> serde_json::Value {
    if code == 0 {
        return serde_json::json!({"metadata": {}, "status": "Success"});
    }
    serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: exit status {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

pub(super) fn failure(message: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {}, "status": "Failure", "message": message, "reason": "InternalError",
    })
}

pub(super) fn frame(channel: u8, data: &[u8]) -> Message {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(channel);
    out.extend_from_slice(data);
    Message::Binary(Bytes::from(out))
}

/// The channel-prefixed data of a client's message: binary, or text as the Python client
/// sends stdin given as a string (the kubelet reads both alike).
pub(super) fn client_data(message: Message) -> Option<Bytes> {
    match message {
        Message::Binary(data) => Some(data),
        Message::Text(text) => Some(Bytes::from(text.as_str().as_bytes().to_vec())),
        _ => None,
    }
}

/// What the client asked for.
struct ExecRequest {
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

/// A terminal size as the resize channel sends it.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

fn resize(master: &OwnedFd, size: &TerminalSize) {
    let ws = libc::winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ on a pty master we own, with a valid winsize.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// The file of a pty master descriptor, for async reads or writes.
fn pty_file(master: &OwnedFd) -> std::io::Result<tokio::fs::File> {
    Ok(tokio::fs::File::from_std(std::fs::File::from(
        master.try_clone()?,
    )))
}

pub(super) async fn exec(
    State(s): State<Arc<NodeServer>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(raw): RawQuery,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let pairs = query::pairs(raw.as_deref());
    let request = ExecRequest {
        command: query::all(&pairs, "command").map(str::to_string).collect(),
        stdin: query::flag(&pairs, "stdin"),
        stdout: query::flag(&pairs, "stdout"),
        stderr: query::flag(&pairs, "stderr"),
        tty: query::flag(&pairs, "tty"),
    };
    if request.command.is_empty() {
        return Err(ApiError::bad_request("command is required"));
    }
    let record = s.running_container(&ns, &pod, &container)?;
    let ws = ws.protocols([V5, V4]);
    let v5 = ws.selected_protocol().is_some_and(|p| p == V5);
    let runtime = s.runtime.clone();
    let pid_file = record
        .dir
        .join(format!("exec-{}.pid", crate::containers::new_id()));
    let id = record.meta.id.clone();
    Ok(ws.on_upgrade(move |socket| async move {
        let finished = run_exec(socket, &runtime, &id, &pid_file, request, v5).await;
        if let Err(e) = finished {
            tracing::debug!(container = %id, "exec: {e}");
        }
        let _ = std::fs::remove_file(&pid_file);
    }))
}

/// Copies `from` to the socket as `channel` messages until it ends.
fn pump(
    from: Option<impl AsyncRead + Unpin + Send + 'static>,
    channel: u8,
    tx: mpsc::Sender<Message>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(mut from) = from else { return };
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 || tx.send(frame(channel, &buf[..n])).await.is_err() {
                return;
            }
        }
    })
}

async fn run_exec(
    socket: WebSocket,
    runtime: &Runtime,
    id: &str,
    pid_file: &PathBuf,
    request: ExecRequest,
    v5: bool,
) -> anyhow::Result<()> {
    let piped = |wanted: bool| {
        if wanted {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    let (mut sink, mut source) = socket.split();
    let pty = if request.tty {
        Some(nix::pty::openpty(None, None)?)
    } else {
        None
    };
    // The terminal has its size before the command starts (a program reading it at once sees
    // it); what comes before that size is replayed once the command runs.
    let mut early = Vec::new();
    if let Some(pty) = &pty {
        let wait = tokio::time::sleep(FIRST_RESIZE);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                message = source.next() => match message {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Ok(()),
                    Some(Ok(m)) => match client_data(m) {
                        Some(data) if data.first() == Some(&RESIZE) => {
                            if let Ok(size) = serde_json::from_slice::<TerminalSize>(&data[1..]) {
                                resize(&pty.master, &size);
                            }
                            break;
                        }
                        Some(data) => early.push(data),
                        None => {}
                    },
                },
            }
        }
    }
    let stdio = |wanted: bool| -> std::io::Result<Stdio> {
        match &pty {
            Some(pty) => Ok(Stdio::from(pty.slave.try_clone()?)),
            None => Ok(piped(wanted)),
        }
    };
    let spawned = tokio::process::Command::new(&runtime.path)
        .arg("--root")
        .arg(&runtime.root)
        .arg("exec")
        .arg("--pid-file")
        .arg(pid_file)
        .arg(id)
        .args(&request.command)
        .stdin(stdio(request.stdin)?)
        .stdout(stdio(request.stdout)?)
        .stderr(stdio(request.stderr)?)
        .kill_on_drop(true)
        .spawn();
    // Only the command holds the pty's slave: its end is the output's end.
    let master = pty.map(|p| p.master);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let status = failure(&format!("running {}: {e}", runtime.path.display()));
            sink.send(frame(STATUS, status.to_string().as_bytes()))
                .await?;
            return Ok(());
        }
    };
    let (tx, mut rx) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        let _ = sink.send(normal_close()).await;
    });
    let (stdout, mut stdin): (_, Option<Box<dyn AsyncWrite + Unpin + Send>>) = match &master {
        Some(m) => (
            pump(Some(pty_file(m)?), STDOUT, tx.clone()),
            request.stdin.then_some(Box::new(pty_file(m)?)),
        ),
        None => (
            pump(child.stdout.take(), STDOUT, tx.clone()),
            child.stdin.take().map(|s| Box::new(s) as _),
        ),
    };
    let stderr = pump(child.stderr.take(), STDERR, tx.clone());
    for data in early {
        client_message(&data, &mut stdin, master.as_ref(), v5).await;
    }
    let exited = loop {
        tokio::select! {
            status = child.wait() => break Some(status),
            message = source.next() => match message {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
                Some(Ok(m)) => {
                    if let Some(data) = client_data(m) {
                        client_message(&data, &mut stdin, master.as_ref(), v5).await;
                    }
                }
            },
        }
    };
    drop(stdin);
    let Some(status) = exited else {
        // The client went away: the command must not outlive its stream.
        kill_exec_process(pid_file);
        let _ = child.kill().await;
        stdout.abort();
        stderr.abort();
        writer.abort();
        return Ok(());
    };
    for output in [stdout, stderr] {
        let abort = output.abort_handle();
        if tokio::time::timeout(DRAIN, output).await.is_err() {
            abort.abort();
        }
    }
    let status = match status {
        Ok(s) => exit_status(s.code().unwrap_or(128 + 9)),
        Err(e) => failure(&format!("waiting for the command: {e}")),
    };
    let _ = tx.send(frame(STATUS, status.to_string().as_bytes())).await;
    drop(tx);
    let _ = writer.await;
    Ok(())
}

/// Applies one binary message of the client: stdin, a terminal size, stdin closed (v5).
async fn client_message(
    data: &[u8],
    stdin: &mut Option<Box<dyn AsyncWrite + Unpin + Send>>,
    master: Option<&OwnedFd>,
    v5: bool,
) {
    match data.first() {
        Some(&STDIN) => {
            if let Some(input) = stdin
                && (input.write_all(&data[1..]).await.is_err() || input.flush().await.is_err())
            {
                *stdin = None;
            }
        }
        Some(&RESIZE) => {
            if let (Some(m), Ok(size)) =
                (master, serde_json::from_slice::<TerminalSize>(&data[1..]))
            {
                resize(m, &size);
            }
        }
        Some(&CLOSE) if v5 && data.get(1) == Some(&STDIN) => *stdin = None,
        _ => {}
    }
}

/// SIGKILL to the process the runtime started in the container.
fn kill_exec_process(pid_file: &PathBuf) {
    let pid = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    if let Some(pid) = pid.filter(|p| *p > 0) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(exit_status(0)["status"], "Success");
        let failed = exit_status(3);
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
    }
}
