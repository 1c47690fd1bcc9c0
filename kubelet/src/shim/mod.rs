//! The per-container supervisor (`skiff-shim`) and the files through which it and the kubelet
//! talk. The shim detaches from the kubelet (double fork, new session, subreaper), runs
//! `runtime create` with pipes as the container's stdio, `runtime start`, copies the output to the
//! CRI log, waits for the container and records how it ended — so containers and their exit codes
//! outlive a kubelet restart. Everything it leaves is in the container's state directory:
//!
//! - `shim.pid`: the shim's pid (the kubelet watches it with a pidfd);
//! - `started.json`: the container's pid and start time, once `runtime start` succeeded;
//! - `exit.json`: exit code, finish time, OOM kill, or why it could not start;
//! - `container.pid`, `runtime.log`, `shim.log`: the runtime's pid file and logs, the shim's log;
//! - `attach.sock`: for a container with `stdin: true`, where attached clients' input comes in
//!   (`attach`).
//!
//! A container with `tty: true` gets a pty the shim makes as its stdin, stdout and stderr (its
//! output is logged as stdout); one with only `stdin: true` a pipe.

pub mod attach;
pub mod pause;
pub mod supervisor;

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const SHIM_PID: &str = "shim.pid";
pub const STARTED: &str = "started.json";
pub const EXIT: &str = "exit.json";
pub const CONTAINER_PID: &str = "container.pid";
pub const RUNTIME_LOG: &str = "runtime.log";
pub const SHIM_LOG: &str = "shim.log";

/// The container runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StartRecord {
    pub pid: i32,
    pub started_at: DateTime<Utc>,
}

/// How the container ended (or why it never started).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExitRecord {
    /// The exit status, or 128 + the signal that killed it.
    pub exit_code: i32,
    pub finished_at: DateTime<Utc>,
    #[serde(default)]
    pub oom_killed: bool,
    /// Set when the container could not be created or started (`StartError`).
    #[serde(default)]
    pub start_error: Option<String>,
}

/// What the shim needs to run one container.
#[derive(Debug, Clone)]
pub struct ShimArgs {
    pub runtime: PathBuf,
    pub runtime_root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub state_dir: PathBuf,
    pub log_path: PathBuf,
    pub log_max_size: u64,
    /// The container's memory cgroup directory, read for OOM kills when it exits.
    pub memory_cgroup: Option<PathBuf>,
    /// The container's stdin is kept open for attached clients.
    pub stdin: bool,
    /// Its stdin is closed when the first attached client closes it.
    pub stdin_once: bool,
    /// Its stdio is a terminal.
    pub tty: bool,
}

impl ShimArgs {
    /// The shim's command line (parsed back by [`ShimArgs::parse`]).
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = vec![
            "--runtime".into(),
            self.runtime.clone().into(),
            "--runtime-root".into(),
            self.runtime_root.clone().into(),
            "--id".into(),
            self.id.clone().into(),
            "--bundle".into(),
            self.bundle.clone().into(),
            "--state-dir".into(),
            self.state_dir.clone().into(),
            "--log-path".into(),
            self.log_path.clone().into(),
            "--log-max-size".into(),
            self.log_max_size.to_string().into(),
        ];
        if let Some(m) = &self.memory_cgroup {
            v.push("--memory-cgroup".into());
            v.push(m.clone().into());
        }
        for (flag, set) in [
            ("--stdin", self.stdin),
            ("--stdin-once", self.stdin_once),
            ("--tty", self.tty),
        ] {
            if set {
                v.push(flag.into());
                v.push("true".into());
            }
        }
        v
    }

    /// Parses the shim's command line; a hand-rolled parser keeps the shim free of clap.
    pub fn parse(args: impl Iterator<Item = std::ffi::OsString>) -> Result<ShimArgs, String> {
        let mut map = std::collections::HashMap::new();
        let mut it = args;
        while let Some(flag) = it.next() {
            let flag = flag.to_string_lossy().into_owned();
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            map.insert(flag, PathBuf::from(value));
        }
        let mut take = |f: &str| map.remove(f).ok_or_else(|| format!("{f} is required"));
        let parsed = ShimArgs {
            runtime: take("--runtime")?,
            runtime_root: take("--runtime-root")?,
            id: take("--id")?.to_string_lossy().into_owned(),
            bundle: take("--bundle")?,
            state_dir: take("--state-dir")?,
            log_path: take("--log-path")?,
            log_max_size: take("--log-max-size")?
                .to_string_lossy()
                .parse()
                .map_err(|_| "--log-max-size must be a number".to_string())?,
            memory_cgroup: map.remove("--memory-cgroup"),
            stdin: map.remove("--stdin").is_some(),
            stdin_once: map.remove("--stdin-once").is_some(),
            tty: map.remove("--tty").is_some(),
        };
        if let Some(extra) = map.keys().next() {
            return Err(format!("unknown flag {extra}"));
        }
        Ok(parsed)
    }
}

/// Writes `value` as JSON to `dir/name` atomically (temp file, fsync, rename).
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    write_atomic(dir, name, &bytes)
}

/// Writes `bytes` to `dir/name` atomically (temp file, fsync, rename).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

/// Reads `dir/name` as JSON; `None` when it does not exist or is unreadable.
pub fn read_json<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> Option<T> {
    let bytes = std::fs::read(dir.join(name)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let a = ShimArgs {
            runtime: "/bin/runc".into(),
            runtime_root: "/run/r".into(),
            id: "abc".into(),
            bundle: "/b".into(),
            state_dir: "/s".into(),
            log_path: "/l/0.log".into(),
            log_max_size: 1000,
            memory_cgroup: Some("/sys/fs/cgroup/memory/x".into()),
            stdin: true,
            stdin_once: false,
            tty: true,
        };
        let b = ShimArgs::parse(a.to_args().into_iter()).unwrap();
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert!(ShimArgs::parse(vec!["--id".into()].into_iter()).is_err());
    }
}
