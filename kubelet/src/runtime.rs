//! The OCI runtime, driven through runc's command line (`--root DIR state|kill|delete|list|exec`)
//! so that skiff-runc, runc and crun are interchangeable. Creating and starting containers is
//! the shim's job (it must own their stdio); the kubelet asks about them and signals them here.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("running {runtime} {verb}: {source}")]
    Spawn {
        runtime: String,
        verb: String,
        source: std::io::Error,
    },
    #[error("{runtime} {verb} failed: {message}")]
    Failed {
        runtime: String,
        verb: String,
        message: String,
    },
    #[error("{runtime} {verb}: unreadable answer: {source}")]
    Answer {
        runtime: String,
        verb: String,
        source: serde_json::Error,
    },
}

/// The container's state as `runtime state` reports it (the fields the kubelet uses).
#[derive(Debug, Clone, Deserialize)]
pub struct ContainerState {
    pub id: String,
    /// creating, created, running, paused or stopped.
    pub status: String,
    #[serde(default)]
    pub pid: i64,
}

/// One OCI runtime binary and the state root it keeps its containers under.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub path: PathBuf,
    pub root: PathBuf,
}

impl Runtime {
    pub fn new(path: PathBuf, root: PathBuf) -> Runtime {
        Runtime { path, root }
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }

    async fn run(&self, verb: &str, args: &[&str]) -> Result<Output, RuntimeError> {
        let out = Command::new(&self.path)
            .arg("--root")
            .arg(&self.root)
            .arg(verb)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| RuntimeError::Spawn {
                runtime: self.name(),
                verb: verb.to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(RuntimeError::Failed {
                runtime: self.name(),
                verb: format!("{verb} {}", args.join(" ")),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(out)
    }

    /// The runtime's version line (`runc version 1.1.12` → `1.1.12`).
    pub async fn version(&self) -> Result<String, RuntimeError> {
        let out = Command::new(&self.path)
            .arg("--version")
            .output()
            .await
            .map_err(|source| RuntimeError::Spawn {
                runtime: self.name(),
                verb: "--version".to_string(),
                source,
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let first = text.lines().next().unwrap_or_default();
        Ok(first
            .split_whitespace()
            .last()
            .unwrap_or("unknown")
            .to_string())
    }

    /// The container's state; `None` when the runtime does not know it.
    pub async fn state(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        match self.run("state", &[id]).await {
            Ok(out) => serde_json::from_slice(&out.stdout)
                .map(Some)
                .map_err(|source| RuntimeError::Answer {
                    runtime: self.name(),
                    verb: "state".to_string(),
                    source,
                }),
            Err(RuntimeError::Failed { message, .. })
                if message.contains("does not exist") || message.contains("not found") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the container's processes.
    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        self.run("kill", &["--all", id, signal]).await.map(|_| ())
    }

    /// Removes the container (killing it if it still runs); a container the runtime does not
    /// know is already removed.
    pub async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        match self.run("delete", &["--force", id]).await {
            Err(RuntimeError::Failed { message, .. })
                if message.contains("does not exist") || message.contains("not found") =>
            {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// Runs `command` in the container and returns its exit code and output (probes' and
    /// hooks' exec). A command that outlives `limit` is killed with everything it started (its
    /// process group: the runtimes start an exec'd process in a session of its own) so that no
    /// probe leaves processes behind in the container.
    pub async fn exec(
        &self,
        id: &str,
        command: &[String],
        limit: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        static N: AtomicU64 = AtomicU64::new(0);
        let pids = self.exec_pid_dir();
        let spawn_err = |source| RuntimeError::Spawn {
            runtime: self.name(),
            verb: "exec".to_string(),
            source,
        };
        std::fs::create_dir_all(&pids).map_err(spawn_err)?;
        let pid_file = pids.join(format!("{id}.{}.pid", N.fetch_add(1, Ordering::Relaxed)));
        let mut child = Command::new(&self.path)
            .arg("--root")
            .arg(&self.root)
            .arg("exec")
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .args(command)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // Its own group, so that a runtime that does not make a session for the command
            // still leaves it in a group the kubelet can kill whole.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_err)?;
        let runtime_pid = child.id();
        let stdout = tokio::spawn(read_all(child.stdout.take()));
        let stderr = tokio::spawn(read_all(child.stderr.take()));
        let status = tokio::select! {
            s = child.wait() => Some(s.map_err(spawn_err)?),
            _ = tokio::time::sleep(limit) => None,
        };
        let result = match status {
            Some(status) => {
                let mut output = stdout.await.unwrap_or_default();
                output.extend(stderr.await.unwrap_or_default());
                ExecResult::Exited(status.code().unwrap_or(-1), output)
            }
            None => {
                kill_exec(&pid_file, runtime_pid, &mut child).await;
                stdout.abort();
                stderr.abort();
                ExecResult::TimedOut
            }
        };
        let _ = std::fs::remove_file(&pid_file);
        Ok(result)
    }

    /// Where exec'd commands' pid files go (beside the runtime's state root, not in it: the
    /// runtime takes every entry of its root for a container).
    fn exec_pid_dir(&self) -> PathBuf {
        let mut name = self.root.file_name().unwrap_or_default().to_os_string();
        name.push("-exec");
        self.root.with_file_name(name)
    }
}

/// How an exec'd command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecResult {
    /// Its exit code and its output (stdout, then stderr).
    Exited(i32, Vec<u8>),
    /// It outlived its time and was killed.
    TimedOut,
}

/// Everything a child's pipe gives until it closes.
async fn read_all<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut p) = pipe {
        let _ = p.read_to_end(&mut buf).await;
    }
    buf
}

/// How long a timed-out exec's process is waited for to be named in its pid file.
const PID_FILE_WAIT: Duration = Duration::from_secs(2);

/// SIGKILL to a timed-out exec: the command's process group (named by the pid file the runtime
/// writes once the command runs), the runtime's own group, then the runtime process itself.
async fn kill_exec(pid_file: &Path, runtime_pid: Option<u32>, child: &mut tokio::process::Child) {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let deadline = tokio::time::Instant::now() + PID_FILE_WAIT;
    let pid = loop {
        let pid = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .filter(|p| *p > 0);
        if pid.is_some() || tokio::time::Instant::now() >= deadline {
            break pid;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if let Some(pid) = pid {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    if let Some(rp) = runtime_pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = killpg(Pid::from_raw(rp), Signal::SIGKILL);
    }
    let _ = child.kill().await;
}
