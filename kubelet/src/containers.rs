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
}

impl ContainerRecord {
    /// Re-reads the shim's records.
    pub fn refresh(&mut self) {
        if self.started.is_none() {
            self.started = shim::read_json(&self.dir, shim::STARTED);
        }
        if self.exit.is_none() {
            self.exit = shim::read_json(&self.dir, shim::EXIT);
        }
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
