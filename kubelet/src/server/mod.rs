//! The kubelet's own API on port 10250 (HTTPS): `/healthz`, `/pods`, `/containerLogs`, `/exec`,
//! `/attach`, `/portForward`, `/run`, `/stats/summary`, `/metrics/resource` and `/configz`.
//!
//! Only clients presenting a certificate from the client CA are served; a client without one is
//! answered 401 and one with a certificate from another CA fails the TLS handshake. The server
//! reads the containers from their on-disk records (`containers`), so it needs nothing from the
//! pod workers.
//!
//! - `tls`: the serving certificate (files or self-signed) and the client-certificate check.
//! - `logs`: the CRI log files read as `kubectl logs` shows them (follow across rotation).
//! - `exec`: exec over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`).
//! - `attach`: the container's output from now on, over the same protocol, and its stdin (the
//!   shim's attach socket) for a container with `stdin: true`.
//! - `run`: a command's output in one answer.
//! - `port_forward`: port-forward into the pod's network namespace (SPDY/3.1 or WebSocket).
//! - `spdy`: SPDY/3.1 framing, which kubectl's port-forward speaks.
//! - `stats`: `/stats/summary` and `/metrics/resource` from the cgroups.
//! - `query`: the URL query as repeated key/value pairs.
//! - `configz`: the kubelet's configuration as `/configz` shows it.

mod attach;
pub mod configz;
mod exec;
mod logs;
mod port_forward;
mod query;
mod run;
mod spdy;
mod stats;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::cgroups::CgroupMounts;
use crate::containers::{self, ContainerRecord};
use crate::runtime::Runtime;

/// How long a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the node API serves from.
pub struct NodeServerConfig {
    pub addr: SocketAddr,
    pub tls: Arc<rustls::ServerConfig>,
    pub node_name: String,
    pub run_dir: PathBuf,
    pub pod_logs_dir: PathBuf,
    pub runtime: Arc<Runtime>,
    pub client: kube::Client,
    /// What `/configz` answers.
    pub configz: serde_json::Value,
}

/// The handlers' shared state.
struct NodeServer {
    node_name: String,
    run_dir: PathBuf,
    pod_logs_dir: PathBuf,
    runtime: Arc<Runtime>,
    client: kube::Client,
    cgroups: CgroupMounts,
    cpu: stats::CpuSamples,
    configz: serde_json::Value,
}

type Shared = State<Arc<NodeServer>>;

/// An error answered as plain text with its status, as the kubelet does.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl ApiError {
    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::NOT_FOUND, message.into())
    }
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }
    fn internal(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

impl NodeServer {
    /// The uid of the newest pod `ns/pod` with containers on the node (a re-created pod has a
    /// new uid).
    fn pod_uid(&self, ns: &str, pod: &str) -> Result<String, ApiError> {
        let (found, _) = containers::list(&self.run_dir);
        found
            .into_iter()
            .filter(|r| r.meta.pod_namespace == ns && r.meta.pod_name == pod)
            .max_by_key(|r| r.meta.created_at)
            .map(|r| r.meta.pod_uid)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "pod {ns}/{pod} has no containers on node {}",
                    self.node_name
                ))
            })
    }

    /// Every attempt of the pod's container `name`, oldest first.
    fn attempts(&self, ns: &str, pod: &str, name: &str) -> Result<Vec<ContainerRecord>, ApiError> {
        let uid = self.pod_uid(ns, pod)?;
        let (found, _) = containers::list(&self.run_dir);
        let mut mine: Vec<ContainerRecord> = found
            .into_iter()
            .filter(|r| r.meta.pod_uid == uid && r.meta.name == name)
            .collect();
        if mine.is_empty() {
            return Err(ApiError::not_found(format!(
                "container {name} is not valid for pod {pod}"
            )));
        }
        mine.sort_by_key(|r| r.meta.attempt);
        Ok(mine)
    }

    /// The container's newest attempt.
    fn container(&self, ns: &str, pod: &str, name: &str) -> Result<ContainerRecord, ApiError> {
        let mut attempts = self.attempts(ns, pod, name)?;
        Ok(attempts.pop().expect("attempts is never empty"))
    }

    /// The newest attempt, which must be running.
    fn running_container(
        &self,
        ns: &str,
        pod: &str,
        name: &str,
    ) -> Result<ContainerRecord, ApiError> {
        let c = self.container(ns, pod, name)?;
        if !c.running() || c.started.is_none() {
            return Err(ApiError::bad_request(format!(
                "container {name} in pod {ns}/{pod} is not running"
            )));
        }
        Ok(c)
    }
}

/// Binds the node API on `config.addr` and serves it in the background.
pub async fn start(config: NodeServerConfig) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding the node API on {}", config.addr))?;
    tracing::info!(addr = %config.addr, "serving the node API");
    let state = Arc::new(NodeServer {
        node_name: config.node_name,
        run_dir: config.run_dir,
        pod_logs_dir: config.pod_logs_dir,
        runtime: config.runtime,
        client: config.client,
        cgroups: CgroupMounts::read(),
        cpu: stats::CpuSamples::default(),
        configz: config.configz,
    });
    tokio::spawn(serve(
        listener,
        TlsAcceptor::from(config.tls),
        router(state),
    ));
    Ok(())
}

fn router(state: Arc<NodeServer>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/pods", get(pods))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(logs::container_logs),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(exec::exec).post(exec::exec),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            get(attach::attach).post(attach::attach),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            get(port_forward::port_forward).post(port_forward::port_forward),
        )
        .route(
            "/run/{namespace}/{pod}/{container}",
            axum::routing::post(run::run),
        )
        .route("/stats/summary", get(stats::summary))
        .route("/metrics/resource", get(stats::resource_metrics))
        .route(
            "/configz",
            get(|State(s): Shared| async move { axum::Json(s.configz.clone()) }),
        )
        .with_state(state)
}

/// The answer to a client without a certificate.
fn unauthorized() -> Router {
    Router::new().fallback(|| async { (StatusCode::UNAUTHORIZED, "Unauthorized") })
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, app: Router) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("node API accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "node API TLS handshake: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "node API TLS handshake timed out");
                    return;
                }
            };
            let authenticated = tls
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            let app = if authenticated { app } else { unauthorized() };
            let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(app))
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, "node API connection: {e}");
            }
        });
    }
}

/// `/pods`: the pods bound to this node, as a PodList.
async fn pods(State(s): Shared) -> Result<Response, ApiError> {
    let api: Api<Pod> = Api::all(s.client.clone());
    let list = api
        .list(&ListParams::default().fields(&format!("spec.nodeName={}", s.node_name)))
        .await
        .map_err(|e| ApiError::internal(format!("listing the node's pods: {e}")))?;
    let body = serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": list.items,
    });
    Ok(axum::Json(body).into_response())
}
