//! A container's log in the CRI format the kubelet and `kubectl logs` read:
//! `<RFC3339Nano> stdout|stderr F|P <line>`, one record per line, `P` for a piece of a line longer
//! than [`MAX_LINE`] and `F` for the piece that ends it. Rotated by size: past the limit the file
//! becomes `<path>.1` (replacing the previous one) and a new file starts.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{SecondsFormat, Utc};

/// The longest line written as one record; longer lines are split into `P` records.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

pub struct CriLog {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    /// The unfinished line of each stream.
    pending: [Vec<u8>; 2],
}

impl CriLog {
    /// Opens (appending to) the log at `path`.
    pub fn open(path: &Path, max_size: u64) -> io::Result<CriLog> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(CriLog {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// Writes what the container wrote on `stream`: every complete line, and a `P` record for
    /// an unfinished line once it is [`MAX_LINE`] long.
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) -> io::Result<()> {
        let slot = stream as usize;
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.pending[slot]);
            line.extend_from_slice(&data[..nl]);
            self.emit_line(stream, &line)?;
            data = &data[nl + 1..];
        }
        self.pending[slot].extend_from_slice(data);
        while self.pending[slot].len() >= MAX_LINE {
            let rest = self.pending[slot].split_off(MAX_LINE);
            let piece = std::mem::replace(&mut self.pending[slot], rest);
            self.record(stream, 'P', &piece)?;
        }
        Ok(())
    }

    /// Writes the unfinished line of `stream` (the stream ended without a newline).
    pub fn finish(&mut self, stream: Stream) -> io::Result<()> {
        let line = std::mem::take(&mut self.pending[stream as usize]);
        if line.is_empty() {
            return Ok(());
        }
        self.record(stream, 'F', &line)
    }

    fn emit_line(&mut self, stream: Stream, line: &[u8]) -> io::Result<()> {
        let mut chunks = line.chunks(MAX_LINE).peekable();
        if chunks.peek().is_none() {
            return self.record(stream, 'F', b"");
        }
        while let Some(chunk) = chunks.next() {
            let tag = if chunks.peek().is_some() { 'P' } else { 'F' };
            self.record(stream, tag, chunk)?;
        }
        Ok(())
    }

    fn record(&mut self, stream: Stream, tag: char, text: &[u8]) -> io::Result<()> {
        let ts = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
        let mut rec = Vec::with_capacity(ts.len() + text.len() + 12);
        rec.extend_from_slice(ts.as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(stream.name().as_bytes());
        rec.push(b' ');
        rec.push(tag as u8);
        rec.push(b' ');
        rec.extend_from_slice(text);
        rec.push(b'\n');
        self.file.write_all(&rec)?;
        self.size += rec.len() as u64;
        if self.size >= self.max_size {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(path: &Path) -> Vec<(String, String, String)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let mut it = l.splitn(4, ' ');
                let ts = it.next().unwrap();
                assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
                (
                    it.next().unwrap().to_string(),
                    it.next().unwrap().to_string(),
                    it.next().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn lines_partials_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = CriLog::open(&path, 1 << 20).unwrap();
        log.write(Stream::Stdout, b"hello\nwor").unwrap();
        log.write(Stream::Stderr, b"oops\n").unwrap();
        log.write(Stream::Stdout, b"ld\n\n").unwrap();
        log.write(Stream::Stdout, &vec![b'x'; MAX_LINE + 5])
            .unwrap();
        log.finish(Stream::Stdout).unwrap();
        let r = records(&path);
        let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(r[0], s("stdout", "F", "hello"));
        assert_eq!(r[1], s("stderr", "F", "oops"));
        assert_eq!(r[2], s("stdout", "F", "world"));
        assert_eq!(r[3], s("stdout", "F", ""));
        assert_eq!(r[4].1, "P");
        assert_eq!(r[4].2.len(), MAX_LINE);
        assert_eq!(r[5], s("stdout", "F", "xxxxx"));

        let mut small = CriLog::open(&dir.path().join("1.log"), 200).unwrap();
        for i in 0..10 {
            small
                .write(Stream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        // Each file stays near the limit; together they end with the newest line.
        let mut kept = records(&dir.path().join("1.log.1"));
        kept.extend(records(&dir.path().join("1.log")));
        assert!(kept.len() < 10);
        assert_eq!(kept.last().unwrap().2, "line 9");
    }
}
