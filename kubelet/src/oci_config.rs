//! A container's OCI runtime config (`config.json`), made from the pod spec and the image's
//! config as containerd's CRI plugin makes it: the process (command/args over the image's
//! entrypoint/cmd with `$(VAR)` expansion, environment, working directory, user, capabilities),
//! the mounts (/proc, /dev, /sys…, the pod's /etc/hosts, /etc/resolv.conf and /etc/hostname, the
//! termination log), the namespaces joined from the pod sandbox, and the container's cgroup
//! with its resources.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, SecurityContext};
use serde_json::{Value, json};

use crate::cgroups;
use crate::container_env::expand;
use crate::image::ImageConfig;
use skiff_k8s::qos::Resources;

/// The capabilities a container gets by default (containerd's and Docker's set).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

fn config_error(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// The pod-level files and namespaces a container joins.
#[derive(Debug, Clone)]
pub struct SandboxView {
    pub hostname: String,
    pub hosts_file: PathBuf,
    pub resolv_conf: PathBuf,
    pub hostname_file: PathBuf,
    /// OCI namespace type → the path to join, or `None` for a new one. Types absent here are the
    /// host's.
    pub namespaces: Vec<(String, Option<PathBuf>)>,
}

/// Everything the config is made from.
pub struct ContainerSetup<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub image: &'a ImageConfig,
    /// The container's own environment (after the image's), already resolved.
    pub env: &'a [(String, String)],
    /// The mounted root filesystem (read for /etc/passwd and /etc/group).
    pub rootfs: &'a Path,
    pub sandbox: &'a SandboxView,
    pub termination_log: &'a Path,
    pub cgroups_path: &'a str,
    /// The container's volumeMounts (from `volumes::PodVolumes::mounts_for`).
    pub volume_mounts: &'a [oci_spec::runtime::Mount],
    /// Where `Localhost` seccomp profiles are (`<root-dir>/seccomp`).
    pub seccomp_dir: &'a Path,
    /// The PID namespace to join (an ephemeral container's target's), or `None` for a new one.
    pub pid_namespace: Option<PathBuf>,
    /// A cgroup namespace of the container's own, as containerd gives every container on a
    /// unified (cgroup v2) host: /sys/fs/cgroup shows the container's cgroup as its root.
    pub cgroup_namespace: bool,
}

/// The container's args: `command` replaces the entrypoint, `args` the cmd; both expanded.
pub fn process_args(
    c: &Container,
    image: &ImageConfig,
    env: &BTreeMap<String, String>,
) -> Result<Vec<String>, ConfigError> {
    let entry = image.entrypoint.clone().unwrap_or_default();
    let cmd = image.cmd.clone().unwrap_or_default();
    let expanded = |v: &Vec<String>| v.iter().map(|a| expand(a, env)).collect::<Vec<_>>();
    let args = match (&c.command, &c.args) {
        (Some(command), args) if !command.is_empty() => {
            let mut a = expanded(command);
            a.extend(args.as_ref().map(expanded).unwrap_or_default());
            a
        }
        (_, Some(args)) if !args.is_empty() => {
            let mut a = entry;
            a.extend(expanded(args));
            a
        }
        _ => {
            let mut a = entry;
            a.extend(cmd);
            a
        }
    };
    if args.is_empty() {
        return Err(config_error(
            "command",
            "no command specified: the container has none and neither has its image",
        ));
    }
    Ok(args)
}

/// The user (uid, gid, additional gids) the process runs as: runAsUser/runAsGroup (container,
/// then pod), else the image's USER looked up in the root's /etc/passwd and /etc/group.
fn user(setup: &ContainerSetup) -> Result<(u32, u32, Vec<u32>), ConfigError> {
    let c_sc = setup.container.security_context.as_ref();
    let p_sc = setup
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref());
    let run_as_user = c_sc
        .and_then(|s| s.run_as_user)
        .or(p_sc.and_then(|s| s.run_as_user));
    let run_as_group = c_sc
        .and_then(|s| s.run_as_group)
        .or(p_sc.and_then(|s| s.run_as_group));
    let non_root = c_sc
        .and_then(|s| s.run_as_non_root)
        .or(p_sc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    let passwd = std::fs::read_to_string(setup.rootfs.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(setup.rootfs.join("etc/group")).unwrap_or_default();
    let find = |text: &str, key: &str, by_name: bool| -> Option<(u32, u32)> {
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            let matches = if by_name { f[0] == key } else { f[2] == key };
            matches.then(|| {
                (
                    f[2].parse().unwrap_or(0),
                    f.get(3).and_then(|g| g.parse().ok()).unwrap_or(0),
                )
            })
        })
    };
    let (uid, mut gid) = match run_as_user {
        Some(u) if u < 0 => {
            return Err(config_error(
                "securityContext.runAsUser",
                "must not be negative",
            ));
        }
        Some(u) => {
            let gid = find(&passwd, &u.to_string(), false)
                .map(|(_, g)| g)
                .unwrap_or(0);
            (u as u32, gid)
        }
        None => {
            let spec = setup.image.user.clone().unwrap_or_default();
            let (u, g) = spec.split_once(':').unwrap_or((&spec, ""));
            let (uid, pgid) = if u.is_empty() {
                (0, 0)
            } else if let Ok(n) = u.parse::<u32>() {
                (n, find(&passwd, u, false).map(|(_, g)| g).unwrap_or(0))
            } else {
                find(&passwd, u, true).ok_or_else(|| {
                    config_error(
                        "image USER",
                        format!("user {u:?} is not in the image's /etc/passwd"),
                    )
                })?
            };
            let gid = if g.is_empty() {
                pgid
            } else if let Ok(n) = g.parse::<u32>() {
                n
            } else {
                find(&group, g, true).map(|(id, _)| id).ok_or_else(|| {
                    config_error(
                        "image USER",
                        format!("group {g:?} is not in the image's /etc/group"),
                    )
                })?
            };
            (uid, gid)
        }
    };
    if let Some(g) = run_as_group {
        if g < 0 {
            return Err(config_error(
                "securityContext.runAsGroup",
                "must not be negative",
            ));
        }
        gid = g as u32;
    }
    if non_root && uid == 0 {
        return Err(config_error(
            "securityContext.runAsNonRoot",
            "container has runAsNonRoot and image will run as root",
        ));
    }
    let mut extra: Vec<u32> = p_sc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|g| u32::try_from(g).ok())
        .collect();
    if let Some(fs_group) = p_sc
        .and_then(|s| s.fs_group)
        .and_then(|g| u32::try_from(g).ok())
    {
        extra.push(fs_group);
    }
    extra.sort();
    extra.dedup();
    Ok((uid, gid, extra))
}

fn capabilities(sc: Option<&SecurityContext>) -> Vec<String> {
    let norm = |c: &String| {
        let up = c.to_uppercase();
        if up.starts_with("CAP_") {
            up
        } else {
            format!("CAP_{up}")
        }
    };
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    let drop: Vec<String> = caps
        .and_then(|c| c.drop.clone())
        .unwrap_or_default()
        .iter()
        .map(norm)
        .collect();
    if drop.iter().any(|d| d == "CAP_ALL") {
        let mut add: Vec<String> = caps
            .and_then(|c| c.add.clone())
            .unwrap_or_default()
            .iter()
            .map(norm)
            .collect();
        add.dedup();
        return add;
    }
    let mut set: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
    for a in caps
        .and_then(|c| c.add.clone())
        .unwrap_or_default()
        .iter()
        .map(norm)
    {
        if !set.contains(&a) {
            set.push(a);
        }
    }
    set.retain(|c| !drop.contains(c));
    set
}

fn bind(destination: &str, source: &Path, readonly: bool) -> Value {
    let mut options = vec!["rbind", "rprivate"];
    if readonly {
        options.push("ro");
    }
    json!({"destination": destination, "type": "bind", "source": source, "options": options})
}

/// The container's config.json content.
pub fn generate(setup: &ContainerSetup) -> Result<Value, ConfigError> {
    let c = setup.container;
    let sc = c.security_context.as_ref();
    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
    let mut env: Vec<String> = vec![];
    let image_env = setup.image.env.clone();
    if !image_env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.to_string());
    }
    env.extend(image_env);
    let mut env_map: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in setup.env {
        let entry = format!("{k}={v}");
        match env
            .iter_mut()
            .find(|e| e.split('=').next() == Some(k.as_str()))
        {
            Some(slot) => *slot = entry,
            None => env.push(entry),
        }
        env_map.insert(k.clone(), v.clone());
    }
    env.push(format!("HOSTNAME={}", setup.sandbox.hostname));
    let args = process_args(c, setup.image, &env_map)?;
    let cwd = c
        .working_dir
        .clone()
        .or_else(|| setup.image.working_dir.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/".to_string());
    if !cwd.starts_with('/') {
        return Err(config_error(
            "workingDir",
            format!("{cwd:?} is not absolute"),
        ));
    }
    let (uid, gid, additional) = user(setup)?;
    let caps = if privileged {
        all_capabilities()
    } else {
        capabilities(sc)
    };
    let no_new_privs = sc
        .and_then(|s| s.allow_privilege_escalation)
        .map(|a| !a)
        .unwrap_or(false);

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
    ];
    for m in setup.volume_mounts {
        mounts.push(
            serde_json::to_value(m).map_err(|e| config_error("volumeMounts", e.to_string()))?,
        );
    }
    mounts.extend([
        bind("/etc/hosts", &setup.sandbox.hosts_file, false),
        bind("/etc/hostname", &setup.sandbox.hostname_file, false),
        bind("/etc/resolv.conf", &setup.sandbox.resolv_conf, false),
    ]);
    let termination_path = c
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".to_string());
    if !termination_path.starts_with('/') || termination_path.split('/').any(|p| p == "..") {
        return Err(config_error(
            "terminationMessagePath",
            format!("{termination_path:?} must be absolute without '..'"),
        ));
    }
    mounts.push(bind(&termination_path, setup.termination_log, false));

    // The pid namespace: a container's it was told to join (an ephemeral container's target),
    // the sandbox's shared one (shareProcessNamespace), the node's (hostPID) or a new one of
    // the container's own.
    let joined_pid = setup
        .pid_namespace
        .clone()
        .map(|path| ("pid".to_string(), Some(path)));
    let shared_pid = setup.sandbox.namespaces.iter().any(|(t, _)| t == "pid");
    let host_pid = setup
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.host_pid)
        .unwrap_or(false);
    let own_pid = (!shared_pid && !host_pid).then(|| ("pid".to_string(), None));
    let sandbox_namespaces = setup
        .sandbox
        .namespaces
        .iter()
        .filter(|(t, _)| setup.pid_namespace.is_none() || t != "pid")
        .cloned();
    let namespaces: Vec<Value> = joined_pid
        .or(own_pid)
        .into_iter()
        .chain(std::iter::once(("mount".to_string(), None)))
        .chain(setup.cgroup_namespace.then(|| ("cgroup".to_string(), None)))
        .chain(sandbox_namespaces)
        .map(|(t, path)| match path {
            Some(p) => json!({"type": t, "path": p}),
            None => json!({"type": t}),
        })
        .collect();

    let res = Resources::of(c);
    let mut cpu = json!({"shares": cgroups::cpu_shares(res.cpu_request)});
    if let Some(limit) = res.cpu_limit {
        cpu["quota"] = json!(cgroups::cpu_quota(limit));
        cpu["period"] = json!(cgroups::CPU_PERIOD);
    }
    let mut resources = json!({
        "devices": [{"allow": privileged, "access": "rwm"}],
        "cpu": cpu,
    });
    if let Some(limit) = res.memory_limit {
        resources["memory"] = json!({"limit": limit as i64});
    }

    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": setup.cgroups_path,
        "resources": resources,
    });
    // procMount Unmasked: /proc as the kernel shows it (meant for containers in a user
    // namespace that run their own nested containers).
    let unmasked = sc.and_then(|s| s.proc_mount.as_deref()) == Some("Unmasked");
    if !privileged && !unmasked {
        linux["maskedPaths"] = json!([
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/proc/scsi",
            "/sys/firmware",
            "/sys/devices/virtual/powercap"
        ]);
        linux["readonlyPaths"] = json!([
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger"
        ]);
    }
    let sysctls: BTreeMap<String, String> = setup
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.sysctls.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.name, s.value))
        .collect();
    if let Some(profile) = crate::seccomp::profile(setup.pod, c, setup.seccomp_dir)
        .map_err(|m| config_error("securityContext.seccompProfile", m))?
    {
        linux["seccomp"] = profile;
    }
    if !sysctls.is_empty() {
        linux["sysctl"] = json!(sysctls);
    }

    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid, "additionalGids": additional},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": no_new_privs,
            "oomScoreAdj": oom_score_adj(setup),
        },
        "root": {
            "path": setup.rootfs,
            "readonly": sc.and_then(|s| s.read_only_root_filesystem).unwrap_or(false),
        },
        "mounts": mounts,
        "linux": linux,
    });
    let mut spec = spec;
    // Only a container with a UTS namespace of its pod's may be given a hostname; host-network
    // pods keep the node's.
    if setup.sandbox.namespaces.iter().any(|(t, _)| t == "uts") {
        spec["hostname"] = json!(setup.sandbox.hostname);
    }
    // Checked against the OCI types so a malformed config never reaches the runtime.
    serde_json::from_value::<oci_spec::runtime::Spec>(spec.clone())
        .map_err(|e| config_error("config.json", e.to_string()))?;
    Ok(spec)
}

/// The kubelet's OOM score policy: Guaranteed -997, BestEffort 1000, Burstable in between by
/// the memory request's share of the node.
fn oom_score_adj(setup: &ContainerSetup) -> i32 {
    let Some(spec) = setup.pod.spec.as_ref() else {
        return 1000;
    };
    match skiff_k8s::qos::qos_class(spec) {
        skiff_k8s::qos::QosClass::Guaranteed => -997,
        skiff_k8s::qos::QosClass::BestEffort => 1000,
        skiff_k8s::qos::QosClass::Burstable => 500,
    }
}

fn all_capabilities() -> Vec<String> {
    caps_all().into_iter().map(|c| format!("CAP_{c}")).collect()
}

/// Every capability the kernel knows (up to CAP_CHECKPOINT_RESTORE).
fn caps_all() -> Vec<&'static str> {
    vec![
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(container: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"containers": [container]}
        }))
        .unwrap()
    }

    fn sandbox() -> SandboxView {
        SandboxView {
            hostname: "p".into(),
            hosts_file: "/pods/u/hosts".into(),
            resolv_conf: "/pods/u/resolv.conf".into(),
            hostname_file: "/pods/u/hostname".into(),
            namespaces: vec![("network".into(), Some("/run/netns/x".into()))],
        }
    }

    #[test]
    fn args_follow_kubernetes_rules() {
        let image = ImageConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["default".into()]),
            ..Default::default()
        };
        let env = BTreeMap::from([("X".to_string(), "1".to_string())]);
        let c = |v: Value| -> Container { serde_json::from_value(v).unwrap() };
        assert_eq!(
            process_args(&c(json!({"name": "a"})), &image, &env).unwrap(),
            vec!["/entry", "default"]
        );
        assert_eq!(
            process_args(&c(json!({"name": "a", "args": ["$(X)"]})), &image, &env).unwrap(),
            vec!["/entry", "1"]
        );
        assert_eq!(
            process_args(
                &c(json!({"name": "a", "command": ["sh", "-c"], "args": ["echo $(X)"]})),
                &image,
                &env
            )
            .unwrap(),
            vec!["sh", "-c", "echo 1"]
        );
        assert!(process_args(&c(json!({"name": "a"})), &ImageConfig::default(), &env).is_err());
    }

    #[test]
    fn generates_a_valid_config() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww:x:33:44::/:/bin/sh\n",
        )
        .unwrap();
        let p = pod(json!({
            "name": "c", "image": "busybox", "command": ["sh"],
            "env": [{"name": "A", "value": "b"}],
            "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
            "securityContext": {"capabilities": {"add": ["NET_ADMIN"], "drop": ["MKNOD"]}}
        }));
        let image = ImageConfig {
            user: Some("www".into()),
            env: vec!["PATH=/bin".into(), "A=old".into()],
            ..Default::default()
        };
        let sb = sandbox();
        let setup = ContainerSetup {
            pod: &p,
            container: &p.spec.as_ref().unwrap().containers[0],
            image: &image,
            env: &[("A".into(), "b".into())],
            rootfs: root.path(),
            sandbox: &sb,
            termination_log: Path::new("/pods/u/c/termination-log"),
            cgroups_path: "/kubepods/podu/abc",
            volume_mounts: &[],
            seccomp_dir: Path::new("/var/lib/kubelet/seccomp"),
            pid_namespace: None,
            cgroup_namespace: false,
        };
        let spec = generate(&setup).unwrap();
        assert_eq!(spec["process"]["user"]["uid"], 33);
        assert_eq!(spec["process"]["user"]["gid"], 44);
        assert_eq!(spec["process"]["env"][0], "PATH=/bin");
        assert_eq!(spec["process"]["env"][1], "A=b");
        let caps = spec["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert!(caps.contains(&json!("CAP_NET_ADMIN")));
        assert!(!caps.contains(&json!("CAP_MKNOD")));
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(spec["linux"]["cgroupsPath"], "/kubepods/podu/abc");
        assert_eq!(spec["linux"]["namespaces"][2]["path"], "/run/netns/x");
        let non_root = pod(json!({"name": "c", "command": ["sh"],
            "securityContext": {"runAsNonRoot": true}}));
        let setup = ContainerSetup {
            pod: &non_root,
            container: &non_root.spec.as_ref().unwrap().containers[0],
            image: &ImageConfig::default(),
            ..setup
        };
        assert_eq!(
            generate(&setup).unwrap_err().field,
            "securityContext.runAsNonRoot"
        );
    }

    #[test]
    fn pid_namespace_own_shared_joined_or_the_hosts() {
        let root = tempfile::tempdir().unwrap();
        let joined = |pod: &Pod, sandbox: &SandboxView, join: Option<PathBuf>| -> Vec<Value> {
            let setup = ContainerSetup {
                pod,
                container: &pod.spec.as_ref().unwrap().containers[0],
                image: &ImageConfig::default(),
                env: &[],
                rootfs: root.path(),
                sandbox,
                termination_log: Path::new("/pods/u/c/termination-log"),
                cgroups_path: "/kubepods/podu/abc",
                volume_mounts: &[],
                seccomp_dir: Path::new("/var/lib/kubelet/seccomp"),
                pid_namespace: join,
                cgroup_namespace: false,
            };
            let spec = generate(&setup).unwrap();
            spec["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["type"] == "pid")
                .cloned()
                .collect()
        };
        let pid_namespaces = |pod: &Pod, sandbox: &SandboxView| joined(pod, sandbox, None);
        let plain = pod(json!({"name": "c", "command": ["sh"]}));
        assert_eq!(pid_namespaces(&plain, &sandbox()), [json!({"type": "pid"})]);
        let mut shared = sandbox();
        shared
            .namespaces
            .push(("pid".into(), Some("/proc/42/ns/pid".into())));
        assert_eq!(
            pid_namespaces(&plain, &shared),
            [json!({"type": "pid", "path": "/proc/42/ns/pid"})]
        );
        let mut host = plain.clone();
        host.spec.as_mut().unwrap().host_pid = Some(true);
        assert!(pid_namespaces(&host, &sandbox()).is_empty());
        // An ephemeral container joins its target's, in place of the sandbox's shared one.
        let target = Some(PathBuf::from("/proc/77/ns/pid"));
        let path = json!({"type": "pid", "path": "/proc/77/ns/pid"});
        assert_eq!(
            joined(&plain, &sandbox(), target.clone()),
            std::slice::from_ref(&path)
        );
        assert_eq!(joined(&plain, &shared, target), [path]);
    }
}
