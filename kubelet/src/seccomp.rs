//! A container's seccomp profile from `securityContext.seccompProfile` (the container's, else
//! the pod's): `Unconfined` (and no profile at all, the kubelet's default) is none,
//! `RuntimeDefault` the runtime default below, `Localhost` a JSON profile file under the node's
//! seccomp directory (`<root-dir>/seccomp`), named by a path that must stay inside it.

use std::path::{Component, Path};

use k8s_openapi::api::core::v1::{Container, Pod, SeccompProfile};
use serde_json::{Value, json};

/// Profiles larger than this are refused.
const MAX_PROFILE_BYTES: u64 = 1 << 20;

/// The syscalls the runtime default refuses (EPERM): kernel modules, kexec, reboot, swap, the
/// clock, keyrings, bpf, perf, other processes' memory, quotas and a few obsolete ones — what
/// containerd's default leaves out for a container without extra capabilities.
const DENIED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "delete_module",
    "finit_module",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "move_pages",
    "open_by_handle_at",
    "perf_event_open",
    "process_vm_readv",
    "process_vm_writev",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "uselib",
    "userfaultfd",
    "ustat",
];

/// The runtime default profile (OCI `linux.seccomp`).
fn runtime_default() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": DENIED, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    })
}

/// The OCI seccomp section for the container, if it gets one; the error names the field.
pub fn profile(pod: &Pod, c: &Container, seccomp_dir: &Path) -> Result<Option<Value>, String> {
    let chosen: Option<&SeccompProfile> = c
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.security_context.as_ref())
                .and_then(|s| s.seccomp_profile.as_ref())
        });
    let Some(p) = chosen else {
        return Ok(None);
    };
    match p.type_.as_str() {
        "Unconfined" => Ok(None),
        "RuntimeDefault" => Ok(Some(runtime_default())),
        "Localhost" => {
            let name = p
                .localhost_profile
                .as_deref()
                .filter(|n| !n.is_empty())
                .ok_or("localhostProfile is required for type Localhost")?;
            let rel = Path::new(name);
            if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
                return Err(format!(
                    "localhostProfile {name:?} must be a relative path inside the seccomp directory"
                ));
            }
            let path = seccomp_dir.join(rel);
            let size = std::fs::metadata(&path)
                .map_err(|e| format!("localhostProfile {}: {e}", path.display()))?
                .len();
            if size > MAX_PROFILE_BYTES {
                return Err(format!("localhostProfile {}: too large", path.display()));
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("localhostProfile {}: {e}", path.display()))?;
            let mut v: Value = serde_json::from_str(&text)
                .map_err(|e| format!("localhostProfile {}: {e}", path.display()))?;
            if !v.is_object() || v.get("defaultAction").is_none() {
                return Err(format!(
                    "localhostProfile {}: not a seccomp profile (no defaultAction)",
                    path.display()
                ));
            }
            // Docker's per-architecture map is not part of the OCI format.
            if let Some(o) = v.as_object_mut() {
                o.remove("archMap");
            }
            Ok(Some(v))
        }
        other => Err(format!("unknown type {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(sc: Value) -> (Pod, Container) {
        let p: Pod = serde_json::from_value(json!({"spec": {
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": sc}]
        }}))
        .unwrap();
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        (p, c)
    }

    #[test]
    fn profiles() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("deny.json"),
            r#"{"defaultAction":"SCMP_ACT_ALLOW","archMap":[],"syscalls":[]}"#,
        )
        .unwrap();
        let (p, c) = pod(json!({}));
        let v = profile(&p, &c, dir.path()).unwrap().unwrap();
        assert_eq!(v["syscalls"][0]["names"][0], "acct");
        let (p, c) = pod(json!({"seccompProfile": {"type": "Unconfined"}}));
        assert_eq!(profile(&p, &c, dir.path()), Ok(None));
        let (p, c) =
            pod(json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "deny.json"}}));
        let v = profile(&p, &c, dir.path()).unwrap().unwrap();
        assert!(v.get("archMap").is_none());
        for bad in ["../deny.json", "/etc/passwd", "missing.json"] {
            let (p, c) =
                pod(json!({"seccompProfile": {"type": "Localhost", "localhostProfile": bad}}));
            assert!(profile(&p, &c, dir.path()).is_err(), "{bad}");
        }
    }
}
