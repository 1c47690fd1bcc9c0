//! A container's on-disk state under `--root/<id>/`: `state.json` (written atomically) and the
//! `exec.fifo` that holds a created container's process until `start`.
//!
//! The status is never stored: it is derived from the process (alive? same start time as
//! recorded, so a recycled pid is not mistaken for ours), the fifo and the freezer.

use crate::cgroups::CgroupPaths;
use crate::error::{Context, Error, Result};
use crate::fsutil;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.json";
pub const EXEC_FIFO: &str = "exec.fifo";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

/// What the runtime remembers about a container between invocations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// 0 until the init process exists.
    pub pid: i32,
    /// The init's start time in clock ticks since boot (/proc/<pid>/stat field 22).
    pub start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    pub cgroup: CgroupPaths,
    /// The hooks of config.json at create time (poststart and poststop run later).
    #[serde(default)]
    pub hooks: Option<oci_spec::runtime::Hooks>,
    /// linux.seccomp at create time: `exec` puts its processes under the same filter.
    #[serde(default)]
    pub seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
    /// linux.personality at create time, for `exec` too.
    #[serde(default)]
    pub personality: Option<oci_spec::runtime::LinuxPersonality>,
}

/// runc's `state` JSON.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState<'a> {
    pub oci_version: &'static str,
    pub id: &'a str,
    pub pid: i32,
    pub status: Status,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub created: &'a str,
    pub owner: &'a str,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: &'a HashMap<String, String>,
}

pub const OCI_VERSION: &str = "1.2.0";

/// The state directory of one container.
pub struct StateDir {
    pub dir: PathBuf,
}

impl StateDir {
    pub fn new(root: &Path, id: &str) -> StateDir {
        StateDir { dir: root.join(id) }
    }

    pub fn fifo(&self) -> PathBuf {
        self.dir.join(EXEC_FIFO)
    }

    pub fn load(&self, id: &str) -> Result<Record> {
        let path = self.dir.join(STATE_FILE);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(id.to_string()));
            }
            Err(e) => return Err(e).ctx(|| format!("read {}", path.display())),
        };
        serde_json::from_slice(&data)
            .map_err(|e| Error::Other(format!("{}: corrupt state: {e}", path.display())))
    }

    pub fn save(&self, record: &Record) -> Result<()> {
        let data = serde_json::to_vec(record)
            .map_err(|e| Error::Other(format!("serialize state: {e}")))?;
        fsutil::write_atomic(&self.dir.join(STATE_FILE), &data)
    }
}

impl Record {
    /// The container's status as the kernel sees it now.
    pub fn status(&self, state_dir: &StateDir) -> Status {
        if self.pid <= 0 {
            return Status::Creating;
        }
        if !process_alive(self.pid, self.start_time) {
            return Status::Stopped;
        }
        if state_dir.fifo().exists() {
            return Status::Created;
        }
        if self.cgroup.is_frozen() {
            return Status::Paused;
        }
        Status::Running
    }

    pub fn oci_state(&self, status: Status) -> OciState<'_> {
        OciState {
            oci_version: OCI_VERSION,
            id: &self.id,
            pid: if status == Status::Stopped {
                0
            } else {
                self.pid
            },
            status,
            bundle: &self.bundle,
            rootfs: &self.rootfs,
            created: &self.created,
            owner: &self.owner,
            annotations: &self.annotations,
        }
    }
}

/// Start time (field 22 of /proc/<pid>/stat) and whether the process is a zombie.
pub fn process_start_time(pid: i32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let zombie = matches!(fields.first(), Some(&"Z") | Some(&"X"));
    Some((fields.get(19)?.parse().ok()?, zombie))
}

pub fn process_alive(pid: i32, start_time: u64) -> bool {
    matches!(process_start_time(pid), Some((t, zombie)) if t == start_time && !zombie)
}

/// Container ids are path components under --root: refuse anything that could escape it.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "invalid container id format: {id:?}"
        )))
    }
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}
