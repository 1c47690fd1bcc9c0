//! `/run/<ns>/<pod>/<container>?cmd=…` (POST): runs the command (split at whitespace, as the
//! kubelet does) in the container through the runtime's `exec` and answers its output, stdout
//! then stderr. Bounded in time; the command is killed if it outlasts [`RUN_TIMEOUT`].

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, RawQuery, State};

use super::{ApiError, NodeServer, query};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) async fn run(
    State(s): State<Arc<NodeServer>>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Vec<u8>, ApiError> {
    let pairs = query::pairs(raw.as_deref());
    let command: Vec<&str> = query::first(&pairs, "cmd")
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    if command.is_empty() {
        return Err(ApiError::bad_request("cmd is required"));
    }
    let record = s.running_container(&ns, &pod, &container)?;
    let ran = tokio::process::Command::new(&s.runtime.path)
        .arg("--root")
        .arg(&s.runtime.root)
        .arg("exec")
        .arg(&record.meta.id)
        .args(&command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_TIMEOUT, ran)
        .await
        .map_err(|_| ApiError::internal(format!("{command:?} ran longer than {RUN_TIMEOUT:?}")))?
        .map_err(|e| ApiError::internal(format!("running {}: {e}", s.runtime.path.display())))?;
    let mut body = out.stdout;
    body.extend_from_slice(&out.stderr);
    Ok(body)
}
