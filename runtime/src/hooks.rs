//! OCI hooks: run a program with the container's state JSON on stdin, honouring path, args,
//! env and timeout. Which namespace a hook runs in is decided by the caller (the phase).

use crate::error::{Error, Result};
use oci_spec::runtime::Hook;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `hooks` in order; the first failure stops the rest and names the hook.
pub fn run(phase: &str, hooks: &[Hook], state_json: &[u8]) -> Result<()> {
    for hook in hooks {
        run_one(hook, state_json)
            .map_err(|e| Error::Other(format!("{phase} hook {}: {e}", hook.path().display())))?;
    }
    Ok(())
}

/// Runs every one of `hooks` in order, a failure logged as a warning: for poststart and
/// poststop, whose failures must not stop the remaining hooks or the lifecycle (runtime-spec,
/// runtime.md "Lifecycle").
pub fn run_warn(phase: &str, hooks: &[Hook], state_json: &[u8]) {
    for hook in hooks {
        if let Err(e) = run_one(hook, state_json) {
            tracing::warn!("{phase} hook {}: {e}", hook.path().display());
        }
    }
}

fn run_one(hook: &Hook, state_json: &[u8]) -> std::result::Result<(), String> {
    let args = hook.args().clone().unwrap_or_default();
    let mut cmd = Command::new(hook.path());
    if let Some((argv0, rest)) = args.split_first() {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is not an error.
        let _ = stdin.write_all(state_json);
    }
    let Some(timeout) = hook.timeout() else {
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        return check(out.status, &String::from_utf8_lossy(&out.stderr));
    };
    let deadline = Instant::now() + Duration::from_secs(timeout.max(1) as u64);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            return check(status, &stderr);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {timeout}s"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn check(status: std::process::ExitStatus, stderr: &str) -> std::result::Result<(), String> {
    if status.success() {
        return Ok(());
    }
    let stderr = stderr.trim();
    Err(if stderr.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {stderr}")
    })
}
