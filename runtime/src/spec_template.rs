//! `skiff-runc spec`: the default config.json runc writes, and its `--rootless` variant.

use serde_json::{Value, json};

pub fn default_spec() -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": crate::state::OCI_VERSION,
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// runc's rootless rewrite: a user namespace mapping the caller to root, no network namespace,
/// /sys bind-mounted, no uid=/gid= mount options, no resources.
pub fn rootless_spec(uid: u32, gid: u32) -> Value {
    let mut spec = default_spec();
    let linux = &mut spec["linux"];
    let mut namespaces: Vec<Value> = linux["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| !matches!(n["type"].as_str(), Some("network") | Some("user")))
        .cloned()
        .collect();
    namespaces.push(json!({"type": "user"}));
    linux["namespaces"] = Value::Array(namespaces);
    linux["uidMappings"] = json!([{"containerID": 0, "hostID": uid, "size": 1}]);
    linux["gidMappings"] = json!([{"containerID": 0, "hostID": gid, "size": 1}]);
    if let Some(obj) = linux.as_object_mut() {
        obj.remove("resources");
    }
    let mounts: Vec<Value> = spec["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            if m["destination"] == "/sys" {
                return json!({"destination": "/sys", "type": "none", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]});
            }
            let mut m = m.clone();
            if let Some(opts) = m["options"].as_array() {
                let kept: Vec<Value> = opts
                    .iter()
                    .filter(|o| !o.as_str().is_some_and(|s| s.starts_with("uid=") || s.starts_with("gid=")))
                    .cloned()
                    .collect();
                m["options"] = Value::Array(kept);
            }
            m
        })
        .collect();
    spec["mounts"] = Value::Array(mounts);
    spec
}
