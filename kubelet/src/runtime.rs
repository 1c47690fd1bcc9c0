//! The OCI runtime, driven through runc's command line (`--root DIR state|kill|delete|list|exec`)
//! so that skiff-runc, runc and crun are interchangeable. Creating and starting containers is
//! the shim's job (it must own their stdio); the kubelet asks about them and signals them here.

use std::path::PathBuf;
use std::process::Output;

use serde::Deserialize;
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

    /// Runs `command` in the container and returns its exit code and output (probes' exec).
    pub async fn exec(&self, id: &str, command: &[String]) -> Result<(i32, Vec<u8>), RuntimeError> {
        let out = Command::new(&self.path)
            .arg("--root")
            .arg(&self.root)
            .arg("exec")
            .arg(id)
            .args(command)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| RuntimeError::Spawn {
                runtime: self.name(),
                verb: "exec".to_string(),
                source,
            })?;
        let mut output = out.stdout;
        output.extend_from_slice(&out.stderr);
        Ok((out.status.code().unwrap_or(-1), output))
    }
}
