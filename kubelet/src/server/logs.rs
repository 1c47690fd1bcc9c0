//! `/containerLogs/<ns>/<pod>/<container>`: a container's CRI log file shown as `kubectl logs`
//! shows it — the message of each record, `P` pieces joined with the record that ends the line —
//! with `follow` (new lines as they come, across rotation, until the container ends),
//! `tailLines`, `sinceSeconds`/`sinceTime`, `timestamps`, `previous` and `limitBytes`.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::{ApiError, NodeServer, query};
use crate::containers::ContainerMeta;
use crate::shim;

/// How often a followed log is looked at for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Default, PartialEq)]
struct LogOptions {
    follow: bool,
    tail_lines: Option<usize>,
    since: Option<DateTime<Utc>>,
    timestamps: bool,
    previous: bool,
    limit_bytes: Option<u64>,
}

impl LogOptions {
    fn parse(pairs: &[(String, String)], now: DateTime<Utc>) -> Result<LogOptions, String> {
        let number = |key: &str| -> Result<Option<i64>, String> {
            query::first(pairs, key)
                .map(|v| {
                    v.parse::<i64>()
                        .ok()
                        .filter(|n| *n >= 0)
                        .ok_or_else(|| format!("{key}: {v:?} is not a non-negative integer"))
                })
                .transpose()
        };
        let since_seconds = number("sinceSeconds")?;
        let since_time = query::first(pairs, "sinceTime")
            .map(|v| {
                DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| format!("sinceTime: {v:?}: {e}"))
            })
            .transpose()?;
        if since_seconds.is_some() && since_time.is_some() {
            return Err("at most one of sinceSeconds or sinceTime may be specified".into());
        }
        Ok(LogOptions {
            follow: query::flag(pairs, "follow"),
            tail_lines: number("tailLines")?.map(|n| n as usize),
            since: since_time.or(since_seconds.map(|s| now - chrono::Duration::seconds(s))),
            timestamps: query::flag(pairs, "timestamps"),
            previous: query::flag(pairs, "previous"),
            limit_bytes: number("limitBytes")?.map(|n| n as u64),
        })
    }
}

/// The log file of one attempt of a container: `<pod-logs-dir>/<ns>_<pod>_<uid>/<name>/<N>.log`
/// (the layout `pod_worker::pod_log_dir` makes).
fn log_path(logs_dir: &Path, meta: &ContainerMeta, attempt: u32) -> PathBuf {
    logs_dir
        .join(format!(
            "{}_{}_{}",
            meta.pod_namespace, meta.pod_name, meta.pod_uid
        ))
        .join(&meta.name)
        .join(format!("{attempt}.log"))
}

/// One complete line of the log.
#[derive(Debug, PartialEq)]
struct LogLine {
    /// The timestamp of its first record, as written.
    timestamp: String,
    time: DateTime<Utc>,
    /// 0 for stdout, 1 for stderr.
    stream: u8,
    /// The message with its newline.
    text: Vec<u8>,
}

impl LogLine {
    fn render(&self, timestamps: bool) -> Vec<u8> {
        if !timestamps {
            return self.text.clone();
        }
        let mut out = Vec::with_capacity(self.timestamp.len() + 1 + self.text.len());
        out.extend_from_slice(self.timestamp.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.text);
        out
    }
}

/// Joins records into lines, per stream (a `P` piece waits for the record that ends it).
#[derive(Default)]
struct Assembler {
    pending: [Option<LogLine>; 2],
}

impl Assembler {
    /// Takes one record (a line of the file without its newline); a malformed one is skipped.
    fn push(&mut self, record: &[u8]) -> Option<LogLine> {
        let mut fields = record.splitn(4, |&b| b == b' ');
        let timestamp = std::str::from_utf8(fields.next()?).ok()?;
        let stream = match fields.next()? {
            b"stdout" => 0,
            b"stderr" => 1,
            _ => return None,
        };
        let partial = match fields.next()? {
            b"P" => true,
            b"F" => false,
            _ => return None,
        };
        let message = fields.next().unwrap_or_default();
        let time = DateTime::parse_from_rfc3339(timestamp)
            .ok()?
            .with_timezone(&Utc);
        let line = self.pending[stream].get_or_insert_with(|| LogLine {
            timestamp: timestamp.to_string(),
            time,
            stream: stream as u8,
            text: Vec::new(),
        });
        line.text.extend_from_slice(message);
        if partial {
            return None;
        }
        let mut line = self.pending[stream].take()?;
        line.text.push(b'\n');
        Some(line)
    }
}

/// A log file read as it grows; after a rotation the rest of the old file is read, then the new
/// one from its start.
struct LogReader {
    path: PathBuf,
    file: File,
    inode: u64,
    /// Bytes of a record not yet ended by a newline.
    unfinished: Vec<u8>,
    lines: Assembler,
}

impl LogReader {
    fn open(path: &Path) -> io::Result<LogReader> {
        let file = File::open(path)?;
        let inode = file.metadata()?.ino();
        Ok(LogReader {
            path: path.to_path_buf(),
            file,
            inode,
            unfinished: Vec::new(),
            lines: Assembler::default(),
        })
    }

    /// The lines completed by what was written since the last call.
    fn read_new(&mut self) -> io::Result<Vec<LogLine>> {
        let start = self.unfinished.len();
        self.file.read_to_end(&mut self.unfinished)?;
        let mut lines = Vec::new();
        let Some(end) = self.unfinished[start..]
            .iter()
            .rposition(|&b| b == b'\n')
            .map(|i| start + i)
        else {
            return Ok(lines);
        };
        let rest = self.unfinished.split_off(end + 1);
        let complete = std::mem::replace(&mut self.unfinished, rest);
        for record in complete.split(|&b| b == b'\n') {
            if let Some(line) = self.lines.push(record) {
                lines.push(line);
            }
        }
        Ok(lines)
    }

    /// Whether the file at the path is no longer the one being read.
    fn rotated(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.ino() != self.inode)
    }

    fn reopen(&mut self) -> io::Result<()> {
        self.file = File::open(&self.path)?;
        self.inode = self.file.metadata()?.ino();
        self.unfinished.clear();
        Ok(())
    }
}

/// Sends rendered lines to the response until the client goes or the byte limit is reached.
struct Sender {
    tx: mpsc::Sender<io::Result<Bytes>>,
    timestamps: bool,
    remaining: Option<u64>,
}

impl Sender {
    /// False when nothing more is to be sent.
    fn send(&mut self, line: &LogLine) -> bool {
        let mut out = line.render(self.timestamps);
        if let Some(left) = &mut self.remaining {
            out.truncate((*left).min(out.len() as u64) as usize);
            *left -= out.len() as u64;
        }
        if !out.is_empty() && self.tx.blocking_send(Ok(Bytes::from(out))).is_err() {
            return false;
        }
        self.remaining != Some(0)
    }
}

/// Writes the log to `out` as the options say; blocking (runs on its own thread).
fn stream_log(
    mut reader: LogReader,
    options: LogOptions,
    container_ended: impl Fn() -> bool,
    mut out: Sender,
) {
    let wanted = |line: &LogLine| options.since.is_none_or(|since| line.time >= since);
    let first: Vec<LogLine> = match reader.read_new() {
        Ok(lines) => lines.into_iter().filter(|l| wanted(l)).collect(),
        Err(e) => {
            let _ = out.tx.blocking_send(Err(e));
            return;
        }
    };
    let skip = options
        .tail_lines
        .map_or(0, |n| first.len().saturating_sub(n));
    for line in &first[skip..] {
        if !out.send(line) {
            return;
        }
    }
    if !options.follow {
        return;
    }
    let client = out.tx.clone();
    let followed = follow(
        &mut reader,
        container_ended,
        || client.is_closed(),
        |line| !wanted(&line) || out.send(&line),
    );
    if let Err(e) = followed {
        let _ = out.tx.blocking_send(Err(e));
    }
}

/// Passes each line written to the log from now on to `each` until the container has ended
/// and its last line was read, the client is gone or `each` says to stop; blocking.
fn follow(
    reader: &mut LogReader,
    container_ended: impl Fn() -> bool,
    client_gone: impl Fn() -> bool,
    mut each: impl FnMut(LogLine) -> bool,
) -> io::Result<()> {
    loop {
        if client_gone() {
            return Ok(());
        }
        // Looked at before reading, so the lines written before the end are all read.
        let ended = container_ended();
        let lines = reader.read_new()?;
        if lines.is_empty() {
            if reader.rotated() {
                reader.reopen()?;
                continue;
            }
            if ended {
                return Ok(());
            }
            std::thread::sleep(FOLLOW_POLL);
        }
        for line in lines {
            if !each(line) {
                return Ok(());
            }
        }
    }
}

/// The container's output written from now on, as (stream, line) with stream 0 for stdout and
/// 1 for stderr, until it ends or `tx` closes; blocking. What `attach` shows.
/// A container's log opened past what is written already: attach shows only the output that
/// comes after its client.
pub(super) struct NewOutput(LogReader);

pub(super) fn new_output(logs_dir: &Path, meta: &ContainerMeta) -> io::Result<NewOutput> {
    let mut reader = LogReader::open(&log_path(logs_dir, meta, meta.attempt))?;
    reader.read_new()?;
    Ok(NewOutput(reader))
}

impl NewOutput {
    /// Sends each new line to `tx` until the container ended or the receiver is gone.
    pub(super) fn follow(
        mut self,
        container_ended: impl Fn() -> bool,
        tx: mpsc::Sender<(u8, Vec<u8>)>,
    ) -> io::Result<()> {
        let client = tx.clone();
        follow(
            &mut self.0,
            container_ended,
            || client.is_closed(),
            |line| tx.blocking_send((line.stream, line.text)).is_ok(),
        )
    }
}

pub(super) async fn container_logs(
    State(s): State<Arc<NodeServer>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let options = LogOptions::parse(&query::pairs(raw.as_deref()), Utc::now())
        .map_err(ApiError::bad_request)?;
    let current = s.container(&ns, &pod, &container)?;
    let (attempt, ended): (u32, Box<dyn Fn() -> bool + Send>) = if options.previous {
        let Some(previous) = current.meta.attempt.checked_sub(1) else {
            return Err(ApiError::bad_request(format!(
                "previous terminated container \"{container}\" in pod \"{pod}\" not found"
            )));
        };
        (previous, Box::new(|| true))
    } else {
        let dir = current.dir.clone();
        let ended = move || !dir.exists() || dir.join(shim::EXIT).exists();
        (current.meta.attempt, Box::new(ended))
    };
    let path = log_path(&s.pod_logs_dir, &current.meta, attempt);
    let reader = LogReader::open(&path).map_err(|e| {
        ApiError::not_found(format!(
            "the log of container {container} (restart {attempt}): {}: {e}",
            path.display()
        ))
    })?;
    let (tx, rx) = mpsc::channel(16);
    let out = Sender {
        tx,
        timestamps: options.timestamps,
        remaining: options.limit_bytes,
    };
    std::thread::spawn(move || stream_log(reader, options, ended, out));
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    Ok(([(header::CONTENT_TYPE, "text/plain")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn collect(path: &Path, options: LogOptions) -> String {
        let (tx, mut rx) = mpsc::channel(1024);
        let out = Sender {
            tx,
            timestamps: options.timestamps,
            remaining: options.limit_bytes,
        };
        stream_log(LogReader::open(path).unwrap(), options, || true, out);
        let mut text = String::new();
        while let Ok(chunk) = rx.try_recv() {
            text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
        text
    }

    #[test]
    fn renders_as_kubectl_logs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut f = File::create(&path).unwrap();
        write!(
            f,
            "2026-01-01T00:00:01.000000001Z stdout F one\n\
             2026-01-01T00:00:02Z stdout P tw\n\
             2026-01-01T00:00:02.5Z stderr F err\n\
             2026-01-01T00:00:03Z stdout F o\n\
             garbage\n\
             2026-01-01T00:00:04Z stdout F three\n\
             2026-01-01T00:00:05Z stdout F unfinish"
        )
        .unwrap();
        assert_eq!(
            collect(&path, LogOptions::default()),
            "one\nerr\ntwo\nthree\n"
        );
        let tail = LogOptions {
            tail_lines: Some(2),
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            collect(&path, tail),
            "2026-01-01T00:00:02Z two\n2026-01-01T00:00:04Z three\n"
        );
        let since = LogOptions::parse(
            &query::pairs(Some("sinceTime=2026-01-01T00:00:02.4Z&limitBytes=6")),
            Utc::now(),
        )
        .unwrap();
        assert_eq!(collect(&path, since), "err\nth");
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:05Z")
            .unwrap()
            .to_utc();
        let secs = LogOptions::parse(&query::pairs(Some("sinceSeconds=2")), now).unwrap();
        assert_eq!(collect(&path, secs), "three\n");
        assert!(LogOptions::parse(&query::pairs(Some("tailLines=-1")), now).is_err());
    }

    #[test]
    fn follows_across_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(
            &path,
            "2026-01-01T00:00:01Z stdout F a\n2026-01-01T00:00:01Z stdout P b",
        )
        .unwrap();
        let mut reader = LogReader::open(&path).unwrap();
        let texts = |lines: Vec<LogLine>| -> Vec<String> {
            lines
                .into_iter()
                .map(|l| String::from_utf8(l.text).unwrap())
                .collect()
        };
        assert_eq!(texts(reader.read_new().unwrap()), ["a\n"]);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"\n2026-01-01T00:00:02Z stdout F c\n").unwrap();
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        std::fs::write(&path, "2026-01-01T00:00:03Z stdout F d\n").unwrap();
        assert_eq!(texts(reader.read_new().unwrap()), ["bc\n"]);
        assert!(reader.rotated());
        reader.reopen().unwrap();
        assert_eq!(texts(reader.read_new().unwrap()), ["d\n"]);
    }
}
