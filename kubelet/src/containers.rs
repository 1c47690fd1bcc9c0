//! The node's containers as the kubelet knows them: one state directory per container under
//! `<run-dir>/containers/<id>/` with the kubelet's `meta.json` (which pod and container, which
//! attempt) written before the shim starts, and the shim's records beside it. A restarted kubelet
//! rebuilds its view of every pod from these directories alone.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::shim::{self, ExitRecord, StartRecord};

pub const META: &str = "meta.json";

/// Who a container is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerMeta {
    pub id: String,
    pub pod_uid: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub name: String,
    pub init: bool,
    /// 0 for the first run; the restart count of the container's status.
    pub attempt: u32,
    pub image: String,
    pub image_id: String,
    pub created_at: DateTime<Utc>,
    /// The pod's cgroup the container's cgroup sits in.
    pub pod_cgroup: String,
    /// The container's writable layer and root mount (`<root-dir>/containers/<id>`).
    pub layer_dir: PathBuf,
}

/// A container and what its shim has recorded so far.
#[derive(Debug, Clone)]
pub struct ContainerRecord {
    pub meta: ContainerMeta,
    pub dir: PathBuf,
    pub started: Option<StartRecord>,
    pub exit: Option<ExitRecord>,
    /// What the container wrote to its termination log, read once when its exit is first seen:
    /// the state directory (and the file) goes when the pod's resources are reclaimed, while the
    /// status keeps reporting the terminated container.
    pub termination_message: Option<String>,
}

/// The longest termination message read from a container's termination log.
const MAX_TERMINATION_MESSAGE: usize = 4096;

impl ContainerRecord {
    /// Re-reads the shim's records.
    pub fn refresh(&mut self) {
        if self.started.is_none() {
            self.started = shim::read_json(&self.dir, shim::STARTED);
        }
        if self.exit.is_none() {
            self.exit = shim::read_json(&self.dir, shim::EXIT);
            if self.exit.is_some() {
                self.termination_message = self.read_termination_log();
            }
        }
    }

    /// The path of the file bound to the container's terminationMessagePath.
    pub fn termination_log(&self) -> PathBuf {
        self.dir.join("termination-log")
    }

    fn read_termination_log(&self) -> Option<String> {
        let bytes = std::fs::read(self.termination_log()).ok()?;
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_TERMINATION_MESSAGE)]);
        (!text.is_empty()).then(|| text.into_owned())
    }

    pub fn running(&self) -> bool {
        self.exit.is_none()
    }

    /// The shim's pid, if it recorded one.
    pub fn shim_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join(shim::SHIM_PID))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }

    /// The mounted root filesystem (config.json's `root.path`).
    pub fn rootfs(&self) -> PathBuf {
        self.meta.layer_dir.join("rootfs")
    }

    /// The container's cgroup.
    pub fn cgroup(&self) -> String {
        format!("{}/{}", self.meta.pod_cgroup, self.meta.id)
    }
}

/// Where container state directories live.
pub fn containers_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("containers")
}

/// Reads one container's directory; `None` when it has no (complete) meta.json — a container
/// whose kubelet died before the shim was started.
pub fn load(dir: &Path) -> Option<ContainerRecord> {
    let meta: ContainerMeta = shim::read_json(dir, META)?;
    let mut r = ContainerRecord {
        meta,
        dir: dir.to_path_buf(),
        started: None,
        exit: None,
        termination_message: None,
    };
    r.refresh();
    Some(r)
}

/// Every container the node has, and the directories that hold no container (to remove).
pub fn list(run_dir: &Path) -> (Vec<ContainerRecord>, Vec<PathBuf>) {
    let mut found = vec![];
    let mut stray = vec![];
    let Ok(entries) = std::fs::read_dir(containers_dir(run_dir)) else {
        return (found, stray);
    };
    for e in entries.flatten() {
        let dir = e.path();
        match load(&dir) {
            Some(r) => found.push(r),
            None => stray.push(dir),
        }
    }
    (found, stray)
}

/// A fresh container id: 32 random hex digits.
pub fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_termination_message_outlives_the_state_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c1");
        std::fs::create_dir(&dir).unwrap();
        let meta = ContainerMeta {
            id: "c1".to_string(),
            pod_uid: "u".to_string(),
            pod_namespace: "default".to_string(),
            pod_name: "p".to_string(),
            name: "main".to_string(),
            init: false,
            attempt: 0,
            image: "busybox".to_string(),
            image_id: String::new(),
            created_at: Utc::now(),
            pod_cgroup: "/pods/u".to_string(),
            layer_dir: tmp.path().join("layer"),
        };
        shim::write_json(&dir, META, &meta).unwrap();
        let mut r = load(&dir).unwrap();
        std::fs::write(r.termination_log(), "bye\n").unwrap();
        assert!(r.running() && r.termination_message.is_none());
        let exit = ExitRecord {
            exit_code: 137,
            finished_at: Utc::now(),
            oom_killed: false,
            start_error: None,
        };
        shim::write_json(&dir, shim::EXIT, &exit).unwrap();
        r.refresh();
        // The pod's resources reclaimed: the status still has the message.
        std::fs::remove_dir_all(&dir).unwrap();
        r.refresh();
        assert_eq!(r.exit, Some(exit));
        assert_eq!(r.termination_message.as_deref(), Some("bye\n"));
    }
}
