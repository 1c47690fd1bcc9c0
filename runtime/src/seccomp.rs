//! linux.seccomp, compiled with libseccomp (seccompiler cannot express NOTIFY or multi-arch
//! profiles). Rules follow runc: syscall names unknown to this architecture are skipped, a rule
//! whose action equals the default is dropped, several conditions on the same argument become
//! separate rules (OR), conditions on different arguments one rule (AND). With SCMP_ACT_NOTIFY the
//! listener fd goes to `listenerPath` with the container state, as the spec's seccomp state.

use crate::error::{Error, Result};
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use std::collections::BTreeMap;
use std::str::FromStr;

fn err(what: impl std::fmt::Display) -> Error {
    Error::Config(format!("linux.seccomp: {what}"))
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> ScmpAction {
    use LinuxSeccompAction::*;
    match a {
        ScmpActKill | ScmpActKillThread => ScmpAction::KillThread,
        ScmpActKillProcess => ScmpAction::KillProcess,
        ScmpActTrap => ScmpAction::Trap,
        ScmpActErrno => ScmpAction::Errno(errno.unwrap_or(libc::EPERM as u32) as i32),
        ScmpActNotify => ScmpAction::Notify,
        ScmpActTrace => ScmpAction::Trace(errno.unwrap_or(libc::EPERM as u32) as u16),
        ScmpActLog => ScmpAction::Log,
        ScmpActAllow => ScmpAction::Allow,
    }
}

fn compare(arg: &oci_spec::runtime::LinuxSeccompArg) -> ScmpArgCompare {
    use LinuxSeccompOperator::*;
    let (op, datum) = match arg.op() {
        ScmpCmpNe => (ScmpCompareOp::NotEqual, arg.value()),
        ScmpCmpLt => (ScmpCompareOp::Less, arg.value()),
        ScmpCmpLe => (ScmpCompareOp::LessOrEqual, arg.value()),
        ScmpCmpEq => (ScmpCompareOp::Equal, arg.value()),
        ScmpCmpGe => (ScmpCompareOp::GreaterEqual, arg.value()),
        ScmpCmpGt => (ScmpCompareOp::Greater, arg.value()),
        // The spec's masked equality: value is the mask, valueTwo the datum.
        ScmpCmpMaskedEq => (
            ScmpCompareOp::MaskedEqual(arg.value()),
            arg.value_two().unwrap_or(0),
        ),
    };
    ScmpArgCompare::new(arg.index() as u32, op, datum)
}

/// Builds the filter for `config` (not loaded yet).
pub fn build(config: &LinuxSeccomp) -> Result<ScmpFilterContext> {
    let default = action(config.default_action(), config.default_errno_ret());
    let mut ctx = ScmpFilterContext::new(default).map_err(err)?;
    for arch in config.architectures().iter().flatten() {
        let name = serde_json::to_value(arch)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let arch =
            ScmpArch::from_str(&name).map_err(|_| err(format!("unknown architecture {name}")))?;
        ctx.add_arch(arch)
            .map_err(|e| err(format!("architecture {name}: {e}")))?;
    }
    // The filter flags are seccomp(2)'s, given when the exported program is loaded (Filter).
    for (i, rule) in config.syscalls().iter().flatten().enumerate() {
        let act = action(rule.action(), rule.errno_ret());
        if act == default {
            continue;
        }
        // Conditions on the same argument are alternatives: one rule per combination index.
        let mut by_index: BTreeMap<usize, Vec<ScmpArgCompare>> = BTreeMap::new();
        for a in rule.args().iter().flatten() {
            by_index.entry(a.index()).or_default().push(compare(a));
        }
        let alternatives = by_index.values().map(Vec::len).max().unwrap_or(0);
        for name in rule.names() {
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                tracing::debug!("seccomp: syscall {name} unknown on this architecture; skipped");
                continue;
            };
            if alternatives <= 1 {
                let conds: Vec<ScmpArgCompare> = by_index.values().flatten().copied().collect();
                add(&mut ctx, act, syscall, &conds)
                    .map_err(|e| err(format!("syscalls[{i}] {name}: {e}")))?;
            } else {
                for k in 0..alternatives {
                    let conds: Vec<ScmpArgCompare> = by_index
                        .values()
                        .filter_map(|v| v.get(k).or(v.first()).copied())
                        .collect();
                    add(&mut ctx, act, syscall, &conds)
                        .map_err(|e| err(format!("syscalls[{i}] {name}: {e}")))?;
                }
            }
        }
    }
    Ok(ctx)
}

fn add(
    ctx: &mut ScmpFilterContext,
    act: ScmpAction,
    syscall: ScmpSyscall,
    conds: &[ScmpArgCompare],
) -> std::result::Result<(), libseccomp::error::SeccompError> {
    if conds.is_empty() {
        ctx.add_rule(act, syscall).map(|_| ())
    } else {
        ctx.add_rule_conditional(act, syscall, conds).map(|_| ())
    }
}

/// True when the profile uses SCMP_ACT_NOTIFY anywhere.
fn uses_notify(config: &LinuxSeccomp) -> bool {
    config.default_action() == LinuxSeccompAction::ScmpActNotify
        || config
            .syscalls()
            .iter()
            .flatten()
            .any(|s| s.action() == LinuxSeccompAction::ScmpActNotify)
}

/// A compiled profile, as classic BPF: compiled by the runtime before the clone (so a bad
/// profile fails early) and cached by the SHA-256 of the profile under `<root>/seccomp/`, as crun
/// does — libseccomp's compilation of a 300-syscall profile costs ~10 ms a container. The
/// container's process loads it with seccomp(2) itself.
pub struct Filter {
    program: Vec<u8>,
    flags: libc::c_ulong,
    /// A connection to listenerPath (made by the runtime, where the host path means what it
    /// says) and listenerMetadata, when the profile uses SCMP_ACT_NOTIFY.
    notify: Option<(std::os::unix::net::UnixStream, String)>,
}

const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
const SECCOMP_FILTER_FLAG_TSYNC: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_LOG: libc::c_ulong = 2;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: libc::c_ulong = 4;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 8;
const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: libc::c_ulong = 32;

impl Filter {
    pub fn new(config: &LinuxSeccomp, cache_root: &std::path::Path) -> Result<Filter> {
        let notify = if uses_notify(config) {
            let path = config
                .listener_path()
                .clone()
                .ok_or_else(|| err("SCMP_ACT_NOTIFY needs listenerPath"))?;
            // Connected by the runtime, where the host path means what it says.
            let sock = std::os::unix::net::UnixStream::connect(&path)
                .map_err(|e| err(format!("listenerPath {}: {e}", path.display())))?;
            Some((sock, config.listener_metadata().clone().unwrap_or_default()))
        } else {
            None
        };
        let mut flags = 0;
        for flag in config.flags().iter().flatten() {
            flags |= match flag {
                LinuxSeccompFilterFlag::SeccompFilterFlagLog => SECCOMP_FILTER_FLAG_LOG,
                LinuxSeccompFilterFlag::SeccompFilterFlagTsync => SECCOMP_FILTER_FLAG_TSYNC,
                LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                    SECCOMP_FILTER_FLAG_SPEC_ALLOW
                }
                LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                    SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
                }
            };
        }
        if notify.is_some() {
            flags |= SECCOMP_FILTER_FLAG_NEW_LISTENER;
        }
        Ok(Filter {
            program: compiled(config, cache_root)?,
            flags,
            notify,
        })
    }

    /// True when loading needs the container's state (to tell the NOTIFY listener).
    pub fn wants_state(&self) -> bool {
        self.notify.is_some()
    }

    /// Loads the filter into this process. With NOTIFY, sends the listener fd over the
    /// listener connection with the seccomp state JSON (`state_json` is the container's state).
    pub fn load(&self, state_json: &str) -> Result<()> {
        #[repr(C)]
        struct SockFprog {
            len: libc::c_ushort,
            filter: *const u8,
        }
        let prog = SockFprog {
            len: (self.program.len() / 8) as libc::c_ushort,
            filter: self.program.as_ptr(),
        };
        // SAFETY: seccomp(2) with a valid sock_fprog over our program bytes.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const SockFprog,
            )
        };
        if r < 0 {
            return Err(err(format!("load: {}", std::io::Error::last_os_error())));
        }
        if let Some((sock, metadata)) = &self.notify {
            let state: serde_json::Value = serde_json::from_str(state_json).unwrap_or_default();
            let msg = serde_json::json!({
                "ociVersion": crate::state::OCI_VERSION,
                "fds": ["seccompFd"],
                "pid": state["pid"],
                "metadata": metadata,
                "state": state,
            });
            crate::console::send_fd(
                std::os::fd::AsRawFd::as_raw_fd(sock),
                r as i32,
                &msg.to_string(),
            )?;
        }
        Ok(())
    }
}

/// The profile's BPF from the cache, or compiled by libseccomp and cached.
fn compiled(config: &LinuxSeccomp, cache_root: &std::path::Path) -> Result<Vec<u8>> {
    use sha2::Digest;
    let profile = serde_json::to_vec(config).map_err(|e| err(e.to_string()))?;
    let mut hasher = sha2::Sha256::new();
    hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
    hasher.update(&profile);
    let key: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = cache_root.join("seccomp");
    let path = dir.join(format!("{key}.bpf"));
    if let Ok(program) = std::fs::read(&path)
        && !program.is_empty()
        && program.len() % 8 == 0
    {
        return Ok(program);
    }
    let ctx = build(config)?;
    let mut out = tempfile_in(&dir)?;
    ctx.export_bpf(&out.1)
        .map_err(|e| err(format!("compile: {e}")))?;
    let program = std::fs::read(&out.0).map_err(|e| err(format!("compile: {e}")))?;
    // A cache write that fails only costs the next container a compilation.
    if std::fs::rename(&out.0, &path).is_err() {
        let _ = std::fs::remove_file(&out.0);
    }
    out.0.clear();
    Ok(program)
}

/// A new file in `dir` (created 0700 if missing) for the exported program.
fn tempfile_in(dir: &std::path::Path) -> Result<(std::path::PathBuf, std::fs::File)> {
    use std::os::unix::fs::DirBuilderExt;
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir);
    let path = dir.join(format!(
        ".tmp-{}-{:?}",
        std::process::id(),
        std::time::Instant::now()
    ));
    let file = std::fs::File::create(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    Ok((path, file))
}
