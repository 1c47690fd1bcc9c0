//! The node subresources: `pods/log`, `pods/exec`, `pods/attach`, `pods/portforward` and
//! `nodes/proxy`. Each is located by the pod's node (or the named node) and proxied to that
//! node's kubelet (`status.addresses`, port `status.daemonEndpoints.kubeletEndpoint.Port`) over
//! TLS with the API server's kubelet-client certificate. Bodies are streamed both ways, never
//! buffered whole; an upgrade (WebSocket, SPDY) is passed to the kubelet and, once both sides
//! switched protocols, the two connections are joined byte for byte.
//!
//! As kube-apiserver without `--kubelet-certificate-authority`, the kubelet's serving certificate
//! is not checked against a CA (kubelets serve self-signed certificates until the cluster signs
//! theirs); the kubelet checks ours.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde_json::Value;
use tokio::net::TcpStream;

use crate::auth::attributes::{Attributes, ResourceAttributes};
use crate::pki::PkiError;
use crate::status::{ApiError, ApiResult, Reason};
use crate::{ApiServer, parse_query, resources};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_KUBELET_PORT: u16 = 10250;
/// How much of a kubelet's error answer is shown to the client.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// The node addresses tried, in order (kube-apiserver's `--kubelet-preferred-address-types`
/// as kubeadm sets it, without names that would need DNS).
const ADDRESS_TYPES: [&str; 2] = ["InternalIP", "ExternalIP"];

/// A pod subresource served by the pod's kubelet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodSubresource {
    Log,
    Exec,
    Attach,
    PortForward,
}

impl PodSubresource {
    fn from_segment(s: &str) -> Option<Self> {
        match s {
            "log" => Some(Self::Log),
            "exec" => Some(Self::Exec),
            "attach" => Some(Self::Attach),
            "portforward" => Some(Self::PortForward),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Exec => "exec",
            Self::Attach => "attach",
            Self::PortForward => "portforward",
        }
    }
}

/// A request the API server answers from a kubelet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRequest {
    Pod {
        namespace: String,
        name: String,
        sub: PodSubresource,
    },
    /// `/api/v1/nodes/NAME[:PORT]/proxy/PATH`.
    NodeProxy {
        node: String,
        port: Option<u16>,
        path: String,
    },
}

impl NodeRequest {
    /// The node subresource `path` names, if it names one.
    pub fn parse(path: &str) -> Option<Self> {
        let rest = path.strip_prefix("/api/v1/")?;
        let segs: Vec<&str> = rest.split('/').collect();
        match segs.as_slice() {
            ["namespaces", ns, "pods", name, sub] if !ns.is_empty() && !name.is_empty() => {
                Some(Self::Pod {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    sub: PodSubresource::from_segment(sub)?,
                })
            }
            ["nodes", node, "proxy", ..] if !node.is_empty() => {
                let tail = rest
                    .split_once("/proxy")
                    .map(|(_, t)| t)
                    .unwrap_or_default();
                let (node, port) = match node.split_once(':') {
                    Some((n, p)) => (n, Some(p.parse().ok().filter(|p| *p > 0)?)),
                    None => (*node, None),
                };
                Some(Self::NodeProxy {
                    node: node.to_string(),
                    port,
                    path: if tail.is_empty() { "/" } else { tail }.to_string(),
                })
            }
            _ => None,
        }
    }

    /// The request as an authorizer sees it: `get pods/log`, `create pods/exec` (kubectl's
    /// WebSocket GETs included, as Kubernetes 1.32 checks them), `get|create|… nodes/proxy`.
    pub fn attributes(&self, method: &Method) -> Attributes {
        let (verb, resource, subresource, namespace, name) = match self {
            Self::Pod {
                namespace,
                name,
                sub,
            } => {
                let verb = if *sub == PodSubresource::Log {
                    "get"
                } else {
                    "create"
                };
                (verb, "pods", sub.name(), namespace.as_str(), name.as_str())
            }
            Self::NodeProxy { node, .. } => {
                let verb = match *method {
                    Method::GET | Method::HEAD => "get",
                    Method::PUT => "update",
                    Method::PATCH => "patch",
                    Method::DELETE => "delete",
                    _ => "create",
                };
                (verb, "nodes", "proxy", "", node.as_str())
            }
        };
        Attributes::Resource(ResourceAttributes {
            verb: verb.into(),
            group: String::new(),
            version: "v1".into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
        })
    }
}

/// The API server's TLS client for kubelets; its certificate is replaced in place when renewed.
pub struct KubeletClient {
    connector: std::sync::RwLock<tokio_rustls::TlsConnector>,
}

impl KubeletClient {
    /// A client presenting the certificate `cert_pem` with `key_pem`.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        Ok(Self {
            connector: std::sync::RwLock::new(connector(cert_pem, key_pem)?),
        })
    }

    /// Presents `cert_pem` with `key_pem` from the next connection on.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), PkiError> {
        let renewed = connector(cert_pem, key_pem)?;
        *self.connector.write().unwrap_or_else(|e| e.into_inner()) = renewed;
        Ok(())
    }

    async fn connect(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            let connector = self
                .connector
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            connector
                .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                .await
        })
        .await;
        connected.unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "i/o timeout",
            ))
        })
    }
}

/// A TLS connector presenting `cert_pem` with `key_pem` to kubelets.
fn connector(cert_pem: &str, key_pem: &str) -> Result<tokio_rustls::TlsConnector, PkiError> {
    let pem_err = |what: &str, e: rustls::pki_types::pem::Error| PkiError::Pem {
        path: what.into(),
        detail: e.to_string(),
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err("kubelet-client.crt", e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| pem_err("kubelet-client.key", e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(KubeletServing(provider)))
        .with_client_auth_cert(chain, key)
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    // Upgrades are HTTP/1.1's.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Accepts the kubelet's serving certificate whatever signed it, checking the handshake's
/// signatures (see the module comment).
#[derive(Debug)]
struct KubeletServing(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for KubeletServing {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn error(reason: Reason, message: impl Into<String>) -> ApiError {
    ApiError {
        reason,
        message: message.into(),
        details: None,
    }
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn names<'a>(pod: &'a Value, list: &str) -> impl Iterator<Item = &'a str> {
    pod["spec"][list]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
}

/// The container the request is for: `container`, or the pod's only container.
fn container_of(pod: &Value, pod_name: &str, wanted: Option<&str>) -> ApiResult<String> {
    let all: Vec<&str> = names(pod, "containers")
        .chain(names(pod, "initContainers"))
        .chain(names(pod, "ephemeralContainers"))
        .collect();
    match wanted.filter(|c| !c.is_empty()) {
        Some(c) if all.contains(&c) => Ok(c.to_string()),
        Some(c) => Err(error(
            Reason::BadRequest,
            format!("container {c} is not valid for pod {pod_name}"),
        )),
        None => {
            let regular: Vec<&str> = names(pod, "containers").collect();
            match regular.as_slice() {
                [only] => Ok(only.to_string()),
                _ => Err(error(
                    Reason::BadRequest,
                    format!(
                        "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                        all.join(" ")
                    ),
                )),
            }
        }
    }
}

/// A log that cannot be read yet (or never was) is answered here, as the kubelet would.
fn check_log_status(pod: &Value, pod_name: &str, container: &str, previous: bool) -> ApiResult<()> {
    let status = [
        "containerStatuses",
        "initContainerStatuses",
        "ephemeralContainerStatuses",
    ]
    .iter()
    .flat_map(|k| pod["status"][k].as_array().into_iter().flatten())
    .find(|s| s["name"] == container);
    if previous {
        if status.is_some_and(|s| s["lastState"]["terminated"].is_object()) {
            return Ok(());
        }
        return Err(error(
            Reason::BadRequest,
            format!(
                "previous terminated container \"{container}\" in pod \"{pod_name}\" not found"
            ),
        ));
    }
    let waiting = match status {
        None => Some("ContainerCreating"),
        Some(s)
            if s["state"]["waiting"].is_object() && !s["lastState"]["terminated"].is_object() =>
        {
            Some(
                s["state"]["waiting"]["reason"]
                    .as_str()
                    .unwrap_or("ContainerCreating"),
            )
        }
        Some(_) => None,
    };
    match waiting {
        Some(reason) => Err(error(
            Reason::BadRequest,
            format!(
                "container \"{container}\" in pod \"{pod_name}\" is waiting to start: {reason}"
            ),
        )),
        None => Ok(()),
    }
}

/// The kubelet's `containerLogs` query for a `pods/log` query, checked.
fn log_query(q: &HashMap<String, String>) -> ApiResult<String> {
    let mut out = Vec::new();
    for flag in ["follow", "previous", "timestamps"] {
        match q.get(flag).map(String::as_str) {
            None | Some("" | "false" | "0") => {}
            Some("true" | "1") => out.push(format!("{flag}=true")),
            Some(v) => {
                return Err(error(
                    Reason::BadRequest,
                    format!("{flag}: invalid boolean {v:?}"),
                ));
            }
        }
    }
    for (field, min) in [("tailLines", 0), ("sinceSeconds", 1), ("limitBytes", 1)] {
        if let Some(v) = q.get(field) {
            match v.parse::<i64>() {
                Ok(n) if n >= min => out.push(format!("{field}={n}")),
                _ => {
                    return Err(error(
                        Reason::BadRequest,
                        format!("{field}: {v:?} must be an integer of at least {min}"),
                    ));
                }
            }
        }
    }
    if let Some(t) = q.get("sinceTime") {
        if q.contains_key("sinceSeconds") {
            return Err(error(
                Reason::BadRequest,
                "at most one of sinceTime or sinceSeconds may be specified",
            ));
        }
        chrono::DateTime::parse_from_rfc3339(t).map_err(|e| {
            error(
                Reason::BadRequest,
                format!("sinceTime: {t:?} is not RFC 3339: {e}"),
            )
        })?;
        out.push(format!("sinceTime={}", encode(t)));
    }
    Ok(out.join("&"))
}

fn with_query(path: String, query: &str) -> String {
    if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    }
}

/// The kubelet path and the node for a pod subresource.
async fn pod_location(
    app: &ApiServer,
    namespace: &str,
    name: &str,
    sub: PodSubresource,
    raw_query: &str,
) -> ApiResult<(String, String)> {
    let pods = resources::find("", "v1", "pods").expect("served");
    let (_, pod) = app.get(pods, Some(namespace), name).await?;
    let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    if node.is_empty() {
        return Err(error(
            Reason::BadRequest,
            format!("pod {name} does not have a host assigned"),
        ));
    }
    let q = parse_query(Some(raw_query));
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    let completed = matches!(phase, "Succeeded" | "Failed");
    let path = match sub {
        PodSubresource::Log => {
            let container = container_of(&pod, name, q.get("container").map(String::as_str))?;
            let previous = matches!(q.get("previous").map(String::as_str), Some("true" | "1"));
            check_log_status(&pod, name, &container, previous)?;
            with_query(
                format!("/containerLogs/{namespace}/{name}/{container}"),
                &log_query(&q)?,
            )
        }
        PodSubresource::Exec | PodSubresource::Attach => {
            let container = container_of(&pod, name, q.get("container").map(String::as_str))?;
            if completed {
                let what = if sub == PodSubresource::Exec {
                    "exec into"
                } else {
                    "attach to"
                };
                return Err(error(
                    Reason::BadRequest,
                    format!(
                        "cannot {what} a container in a completed pod; current phase is {phase}"
                    ),
                ));
            }
            let verb = sub.name();
            with_query(format!("/{verb}/{namespace}/{name}/{container}"), raw_query)
        }
        PodSubresource::PortForward => {
            if completed {
                return Err(error(
                    Reason::BadRequest,
                    format!("cannot port-forward to a completed pod; current phase is {phase}"),
                ));
            }
            with_query(format!("/portForward/{namespace}/{name}"), raw_query)
        }
    };
    Ok((node.to_string(), path))
}

/// The kubelet endpoint of node `name`.
async fn kubelet_address(app: &ApiServer, name: &str, port: Option<u16>) -> ApiResult<SocketAddr> {
    let nodes = resources::find("", "v1", "nodes").expect("served");
    let (_, node) = app.get(nodes, None, name).await?;
    let addresses = node["status"]["addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ip = ADDRESS_TYPES
        .iter()
        .flat_map(|t| addresses.iter().filter(move |a| a["type"] == *t))
        .find_map(|a| a["address"].as_str()?.parse::<IpAddr>().ok())
        .ok_or_else(|| {
            error(
                Reason::InternalError,
                format!(
                    "node {name}: no preferred addresses found; known addresses: {addresses:?}"
                ),
            )
        })?;
    let port = port.unwrap_or_else(|| {
        node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .unwrap_or(DEFAULT_KUBELET_PORT)
    });
    Ok(SocketAddr::new(ip, port))
}

/// An HTTP/1.1 connection to the kubelet of node `name` (upgrades allowed).
async fn kubelet_connection(
    app: &ApiServer,
    name: &str,
    port: Option<u16>,
) -> ApiResult<(SocketAddr, SendRequest<Body>)> {
    let addr = kubelet_address(app, name, port).await?;
    let client = app.kubelet_client.get().ok_or_else(|| {
        error(
            Reason::InternalError,
            "the API server has no kubelet client certificate",
        )
    })?;
    let tls = client.connect(addr).await.map_err(|e| {
        error(
            Reason::InternalError,
            format!("error dialing backend: dial tcp {addr}: {e}"),
        )
    })?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| error(Reason::InternalError, format!("kubelet {addr}: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "kubelet connection");
        }
    });
    Ok((addr, sender))
}

/// GETs `path` from the kubelet of node `name`, the whole answer (at most `limit` bytes).
pub async fn kubelet_get(
    app: &ApiServer,
    name: &str,
    path: &str,
    limit: usize,
) -> ApiResult<axum::body::Bytes> {
    let (addr, mut sender) = kubelet_connection(app, name, None).await?;
    let request = Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(Body::empty())
        .map_err(|e| error(Reason::InternalError, e.to_string()))?;
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| error(Reason::InternalError, format!("kubelet {addr}: {e}")))?;
    let (head, body) = answer.into_parts();
    if !head.status.is_success() {
        return Err(kubelet_error(head.status, body).await);
    }
    axum::body::to_bytes(Body::new(body), limit)
        .await
        .map_err(|e| error(Reason::InternalError, format!("kubelet {addr}{path}: {e}")))
}

/// The protocol a request asks to switch to, if it does.
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection = headers.get(header::CONNECTION)?.to_str().ok()?;
    connection
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

fn is_hop_by_hop(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// A kubelet's error answer as a Status.
async fn kubelet_error(status: StatusCode, body: hyper::body::Incoming) -> ApiError {
    let text = axum::body::to_bytes(Body::new(body), MAX_ERROR_BODY)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_else(|e| format!("reading the kubelet's answer: {e}"));
    let reason = match status.as_u16() {
        400 => Reason::BadRequest,
        401 => Reason::Unauthorized,
        403 => Reason::Forbidden,
        404 => Reason::NotFound,
        _ => Reason::InternalError,
    };
    error(reason, text)
}

/// Serves a node subresource from the kubelet.
pub async fn serve(
    app: &Arc<ApiServer>,
    request: NodeRequest,
    parts: Parts,
    body: hyper::body::Incoming,
) -> Response {
    match proxy(app, request, parts, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn proxy(
    app: &Arc<ApiServer>,
    request: NodeRequest,
    parts: Parts,
    body: hyper::body::Incoming,
) -> ApiResult<Response> {
    let raw_query = parts.uri.query().unwrap_or_default().to_string();
    let (node, port, path, is_pod) = match &request {
        NodeRequest::Pod {
            namespace,
            name,
            sub,
        } => {
            let (node, path) = pod_location(app, namespace, name, *sub, &raw_query).await?;
            (node, None, path, true)
        }
        NodeRequest::NodeProxy { node, port, path } => (
            node.clone(),
            *port,
            with_query(path.clone(), &raw_query),
            false,
        ),
    };
    let (addr, mut sender) = kubelet_connection(app, &node, port).await?;

    let upgrade = upgrade_protocol(&parts.headers);
    let mut incoming = Request::from_parts(parts, body);
    let downstream = upgrade.is_some().then(|| hyper::upgrade::on(&mut incoming));
    let (parts, body) = incoming.into_parts();
    let mut out = Request::builder().method(parts.method).uri(&path);
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) && name != header::HOST && name != header::AUTHORIZATION {
            out = out.header(name, value);
        }
    }
    out = out.header(header::HOST, addr.to_string());
    let body = match &upgrade {
        Some(protocol) => {
            out = out
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, protocol);
            Body::empty()
        }
        None => Body::new(body),
    };
    let out = out.body(body).map_err(|e| {
        error(
            Reason::BadRequest,
            format!("the request to the kubelet: {e}"),
        )
    })?;
    tracing::debug!(%node, %addr, %path, upgrade = upgrade.is_some(), "proxying to the kubelet");
    let mut answer = sender.send_request(out).await.map_err(|e| {
        error(
            Reason::InternalError,
            format!("error proxying to node {node} ({addr}): {e}"),
        )
    })?;
    let status = answer.status();
    if let (StatusCode::SWITCHING_PROTOCOLS, Some(downstream)) = (status, downstream) {
        let upstream = hyper::upgrade::on(&mut answer);
        let mut switched = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (name, value) in answer.headers() {
            switched = switched.header(name, value);
        }
        tokio::spawn(async move {
            let (upstream, downstream) = tokio::join!(upstream, downstream);
            match (upstream, downstream) {
                (Ok(up), Ok(down)) => {
                    let (mut up, mut down) = (TokioIo::new(up), TokioIo::new(down));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                        tracing::debug!(%addr, error = %e, "upgraded stream ended");
                    }
                }
                (up, down) => {
                    tracing::debug!(%addr, upstream = up.is_ok(), downstream = down.is_ok(), "upgrade failed")
                }
            }
        });
        return switched
            .body(Body::empty())
            .map_err(|e| error(Reason::InternalError, e.to_string()));
    }
    let (mut head, body) = answer.into_parts();
    if is_pod && !status.is_success() {
        return Err(kubelet_error(status, body).await);
    }
    let hop: Vec<_> = head
        .headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for name in hop {
        head.headers.remove(name);
    }
    Ok(Response::from_parts(head, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        assert_eq!(
            NodeRequest::parse("/api/v1/namespaces/default/pods/web/exec"),
            Some(NodeRequest::Pod {
                namespace: "default".into(),
                name: "web".into(),
                sub: PodSubresource::Exec
            })
        );
        assert_eq!(
            NodeRequest::parse("/api/v1/namespaces/default/pods/web/status"),
            None
        );
        assert_eq!(
            NodeRequest::parse("/api/v1/nodes/n1/proxy/stats/summary"),
            Some(NodeRequest::NodeProxy {
                node: "n1".into(),
                port: None,
                path: "/stats/summary".into()
            })
        );
        assert_eq!(
            NodeRequest::parse("/api/v1/nodes/n1:10255/proxy"),
            Some(NodeRequest::NodeProxy {
                node: "n1".into(),
                port: Some(10255),
                path: "/".into()
            })
        );
        assert_eq!(NodeRequest::parse("/api/v1/nodes/n1:x/proxy/"), None);
        assert_eq!(NodeRequest::parse("/api/v1/nodes/n1"), None);
        let log = NodeRequest::parse("/api/v1/namespaces/a/pods/b/log").unwrap();
        let Attributes::Resource(attrs) = log.attributes(&Method::GET) else {
            panic!("a resource request");
        };
        assert_eq!(
            (attrs.verb.as_str(), attrs.subresource.as_str()),
            ("get", "log")
        );
        let exec = NodeRequest::parse("/api/v1/namespaces/a/pods/b/exec").unwrap();
        let Attributes::Resource(attrs) = exec.attributes(&Method::GET) else {
            panic!("a resource request");
        };
        assert_eq!(attrs.verb, "create");
    }

    #[test]
    fn containers() {
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}],
            "initContainers": [{"name": "init"}]}});
        assert_eq!(container_of(&pod, "p", Some("init")).unwrap(), "init");
        let e = container_of(&pod, "p", None).unwrap_err();
        assert!(e.message.contains("choose one of: [a b init]"), "{e}");
        let e = container_of(&pod, "p", Some("x")).unwrap_err();
        assert_eq!(e.message, "container x is not valid for pod p");
        let one = json!({"spec": {"containers": [{"name": "only"}]}});
        assert_eq!(container_of(&one, "p", None).unwrap(), "only");
    }

    #[test]
    fn log_queries() {
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let mut got = log_query(&q(&[
            ("follow", "true"),
            ("tailLines", "3"),
            ("container", "x"),
        ]))
        .unwrap()
        .split('&')
        .map(str::to_string)
        .collect::<Vec<_>>();
        got.sort();
        assert_eq!(got, ["follow=true", "tailLines=3"]);
        assert!(log_query(&q(&[("tailLines", "-1")])).is_err());
        assert!(log_query(&q(&[("sinceSeconds", "0")])).is_err());
        assert_eq!(
            log_query(&q(&[("sinceTime", "2026-01-01T00:00:00+01:00")])).unwrap(),
            "sinceTime=2026-01-01T00%3A00%3A00%2B01%3A00"
        );
    }

    #[test]
    fn log_status() {
        let pod = json!({"status": {"containerStatuses": [
            {"name": "w", "state": {"waiting": {"reason": "ContainerCreating"}}},
            {"name": "r", "state": {"running": {}}, "lastState": {"terminated": {"exitCode": 1}}},
        ]}});
        let e = check_log_status(&pod, "p", "w", false).unwrap_err();
        assert!(
            e.message.contains("is waiting to start: ContainerCreating"),
            "{e}"
        );
        assert!(check_log_status(&pod, "p", "r", false).is_ok());
        assert!(check_log_status(&pod, "p", "r", true).is_ok());
        assert!(check_log_status(&pod, "p", "w", true).is_err());
    }
}
