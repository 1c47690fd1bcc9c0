//! Small filesystem helpers: atomic writes and reading single-value files.

use crate::error::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Writes `data` to `path` atomically: a temporary file in the same directory, then rename.
/// A crash of the writer (kill -9) leaves either the old or the new content, never a torn
/// file. No fsync: runtime state lives on /run, which does not survive a reboot anyway, and an
/// fsync costs milliseconds per container on a disk-backed root.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;

        std::fs::rename(&tmp, path)
    };
    write()
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .ctx(|| format!("write {}", path.display()))
}

/// Writes a value to a kernel interface file (cgroupfs, procfs) in one write.
pub fn write_value(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).ctx(|| format!("write {:?} to {}", value, path.display()))
}

pub fn read_trimmed(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .ctx(|| format!("read {}", path.display()))?
        .trim()
        .to_string())
}
