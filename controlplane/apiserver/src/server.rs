//! `skiff server`: PKI, the store, the HTTPS listener (rustls with the ring provider, h2 and
//! HTTP/1.1 by ALPN), authentication and authorization of every request (`auth`), routing,
//! bootstrap objects and periodic compaction.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::alloc::NetworkConfig;
use crate::auth::authn::{self, Identity};
use crate::auth::{self, Attributes, UserInfo};
use crate::handlers::{FieldValidation, WriteOptions, parse_target};
use crate::limits::{self, Limits, RequestBounds};
use crate::pki::{Pki, PkiError};
use crate::status::{ApiError, Reason};
use crate::{ApiServer, discovery, metrics, node_proxy, parse_query, resources};
use skiff_store::embedded::EmbeddedStore;
pub use skiff_store::etcd::EtcdConfig;
use skiff_store::etcd::EtcdStore;
use skiff_store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] ApiError),
    #[error(transparent)]
    Secrets(#[from] crate::cluster_secrets::SharingError),
}

/// kube-apiserver's master lease duration.
pub const DEFAULT_ENDPOINT_LEASE_TTL: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub service_cidr: String,
    pub compaction_interval: Duration,
    pub bookmark_interval: Duration,
    /// The etcd cluster to keep objects in; `None`: the embedded store under `data_dir`.
    pub etcd: Option<EtcdConfig>,
    pub limits: Limits,
    /// The address the kubernetes Service's endpoints and the kubeconfigs name (and the
    /// serving certificate holds); `None`: the listening address, or when that is unspecified
    /// the host's first non-loopback address (Service) and 127.0.0.1 (kubeconfigs).
    pub advertise_address: Option<IpAddr>,
    /// The longest lifetime of a certificate the cluster signs for a CertificateSigningRequest
    /// (kube-controller-manager's `--cluster-signing-duration`).
    pub cluster_signing_duration: Duration,
    /// How long a server stays in the `kubernetes` Service's endpoints without renewing its
    /// Lease.
    pub endpoint_lease_ttl: Duration,
}

fn text(code: StatusCode, body: &'static str) -> Response {
    let mut r = (code, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(v: &Value, content_type: &'static str) -> Response {
    let mut r = (StatusCode::OK, serde_json::to_vec(v).expect("serialisable")).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Routes one request. `certificate_user` is the user the TLS client's certificate (signed by
/// the cluster CA) names, if it presented one. The request is authenticated first, then admitted
/// into the in-flight limits as its user's (the fair share is per user), then served.
pub async fn route(
    app: Arc<ApiServer>,
    server_address: Arc<String>,
    certificate_user: Option<Arc<authn::CertificateUser>>,
    bounds: Arc<RequestBounds>,
    req: Request<hyper::body::Incoming>,
) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let method = parts.method.clone();
    let started = std::time::Instant::now();
    // Health probes and the version answer whatever credentials come with them, outside the
    // in-flight limits (kube-apiserver's exempt priority level serves the probes).
    match path.as_str() {
        "/healthz" | "/livez" | "/readyz" => return text(StatusCode::OK, "ok"),
        "/version" => return json_response(&discovery::version(), "application/json"),
        _ => {}
    }
    let user = match authn::authenticate(&app, certificate_user.as_deref(), &parts.headers).await {
        Identity::User(u) => u,
        Identity::Anonymous => UserInfo::anonymous(),
        Identity::Invalid => return ApiError::unauthorized().into_response(),
    };
    let user = match auth::impersonation::resolve(&app, user, &parts.headers) {
        Ok(u) => Arc::new(u),
        Err(e) => return e.into_response(),
    };
    let query = parse_query(parts.uri.query());
    let resp = match bounds.admit(&method, &path, &query, &user.name).await {
        Ok(admitted) => {
            admitted
                .run(route_inner(&app, &server_address, user, parts, body))
                .await
        }
        Err(e) => e.into_response(),
    };
    tracing::debug!(%method, %path, status = resp.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
    resp
}

async fn route_inner(
    app: &Arc<ApiServer>,
    server_address: &str,
    user: Arc<UserInfo>,
    parts: axum::http::request::Parts,
    body: hyper::body::Incoming,
) -> Response {
    let path = parts.uri.path();
    let query = parse_query(parts.uri.query());
    let target = parse_target(path);
    let node_request = node_proxy::NodeRequest::parse(path);
    let attributes = match (&node_request, &target) {
        (Some(n), _) => n.attributes(&parts.method),
        (None, Some(Ok(t))) => Attributes::resource(&parts.method, t, &query),
        _ => Attributes::non_resource(&parts.method, path),
    };
    let decision = app.authorize(&user, &attributes);
    if !decision.allowed {
        // Anonymous requests are refused as unauthenticated, not as forbidden.
        return if user.is_anonymous() {
            ApiError::unauthorized().into_response()
        } else {
            auth::forbidden(&user, &attributes, &decision.reason).into_response()
        };
    }
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let get = parts.method == Method::GET;
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (get, segs.as_slice()) {
        (true, ["api"]) => {
            return if discovery::wants_aggregated(&accept) {
                json_response(
                    &discovery::aggregated(true),
                    discovery::AGGREGATED_CONTENT_TYPE,
                )
            } else {
                json_response(&discovery::api_versions(server_address), "application/json")
            };
        }
        (true, ["apis"]) => {
            return if discovery::wants_aggregated(&accept) {
                json_response(
                    &discovery::aggregated(false),
                    discovery::AGGREGATED_CONTENT_TYPE,
                )
            } else {
                json_response(&discovery::api_group_list(), "application/json")
            };
        }
        (true, ["api", v]) => {
            return match discovery::resource_list("", v) {
                Some(d) => json_response(&d, "application/json"),
                None => ApiError::not_found_path().into_response(),
            };
        }
        (true, ["apis", g]) => {
            return match discovery::api_group_doc(g) {
                Some(d) => json_response(&d, "application/json"),
                None => ApiError::not_found_path().into_response(),
            };
        }
        (true, ["apis", g, v]) => {
            return match discovery::resource_list(g, v) {
                Some(d) => json_response(&d, "application/json"),
                None => ApiError::not_found_path().into_response(),
            };
        }
        (true, [".well-known", "openid-configuration"] | ["openid", "v1", "jwks"]) => {
            return match app.tokens.get() {
                Some(t) if segs[0] == "openid" => {
                    json_response(&t.jwks(), "application/jwk-set+json")
                }
                Some(t) => json_response(&t.openid_configuration(), "application/json"),
                None => ApiError::not_found_path().into_response(),
            };
        }
        (true, ["openapi", "v3"]) => {
            return json_response(&app.openapi.index(), "application/json");
        }
        (true, ["openapi", "v3", rest @ ..]) => {
            return match app.openapi.document(&rest.join("/")) {
                Some(doc) => {
                    let mut r = (StatusCode::OK, doc.to_vec()).into_response();
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    r
                }
                None => ApiError::not_found_path().into_response(),
            };
        }
        _ => {}
    }
    if let Some(request) = metrics::MetricsRequest::parse(path) {
        return if get {
            metrics::serve(app, request).await
        } else {
            ApiError::method_not_allowed().into_response()
        };
    }
    if let Some(request) = node_request {
        return node_proxy::serve(app, request, parts, body).await;
    }
    let target = match target {
        Some(Ok(t)) => t,
        Some(Err(e)) => return e.into_response(),
        None => return ApiError::not_found_path().into_response(),
    };
    let bytes = match limits::read_body(&parts.headers, Body::new(body)).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if let Some(resp) =
        auth::reviews::serve(app, &user, &target, &parts.method, &parts.headers, &bytes).await
    {
        return resp;
    }
    auth::as_user(
        user,
        app.serve_resource(target, parts.method, query, parts.headers, bytes),
    )
    .await
}

/// The namespaces, system PriorityClasses and the `kubernetes` and `kube-dns` Services every
/// cluster starts with.
async fn bootstrap(app: &Arc<ApiServer>, listen: SocketAddr) -> Result<(), ApiError> {
    let opts = WriteOptions {
        field_validation: FieldValidation::Strict,
        ..Default::default()
    };
    let nsr = resources::find("", "v1", "namespaces").expect("served");
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        match app.create(nsr, None, obj, &opts).await {
            Ok(_) => tracing::info!(namespace = ns, "created namespace"),
            Err(e) if e.reason == Reason::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let pcr = resources::find("scheduling.k8s.io", "v1", "priorityclasses").expect("served");
    for (name, value, description) in crate::priority::SYSTEM_CLASSES {
        let obj = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name}, "value": value, "description": description});
        match app.create(pcr, None, obj, &opts).await {
            Ok(_) => {}
            Err(e) if e.reason == Reason::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let svc = resources::find("", "v1", "services").expect("served");
    // Another server may have made them: then creating again fails, on their name or on their
    // addresses.
    let exists = |ns: &'static str, name: &'static str| async move {
        match app.get(svc, Some(ns), name).await {
            Ok(_) => Ok(true),
            Err(e) if e.reason == Reason::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    };
    let ip = app.network.first_service_ip().to_string();
    let obj = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": listen.port()}]},
    });
    if let Err(e) = app.create(svc, Some("default"), obj, &opts).await
        && !exists("default", "kubernetes").await?
    {
        return Err(e);
    }
    // Every node's skiff-proxy answers cluster DNS at this address itself; the Service is there
    // so that tools and charts looking for `kube-dns` find it. It has no selector: no pods.
    let dns_ip = app.network.cluster_dns_ip().to_string();
    let obj = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS", "kubernetes.io/cluster-service": "true"}},
        "spec": {"clusterIP": dns_ip, "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]},
    });
    if let Err(e) = app.create(svc, Some("kube-system"), obj, &opts).await
        && !exists("kube-system", "kube-dns").await?
    {
        // A cluster whose tenth Service address a user Service took before kube-dns existed
        // keeps working; only the name is missing.
        tracing::warn!(error = %e.message, address = %dns_ip, "cannot create the kube-dns Service")
    }
    Ok(())
}

/// How often the Service allocation bitmaps are checked against the Services (kube-apiserver's
/// repair interval).
const SERVICE_REPAIR_INTERVAL: Duration = Duration::from_secs(180);

/// How often a running server checks whether its certificates are due for renewal.
const CERTIFICATE_CHECK_INTERVAL: Duration = Duration::from_secs(12 * 3600);

/// Re-issues what is due under the data directory twice a day, presents the renewed serving
/// certificate from the next handshake on and the renewed kubelet client certificate from the
/// next connection to a kubelet on, so that a server running for a year never presents an
/// expired one. (The in-server components follow their re-issued kubeconfigs themselves.)
fn renew_certificates(
    pki: Pki,
    serving: Arc<crate::pki::RotatingServingCert>,
    app: Arc<ApiServer>,
    (named, first_service_ip, server_url): (SocketAddr, IpAddr, String),
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CERTIFICATE_CHECK_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            let renewed = pki
                .renew_certificates(named, first_service_ip, &server_url)
                .and_then(|m| {
                    serving.replace(&m)?;
                    match app.kubelet_client.get() {
                        Some(c) => c.replace(&m.kubelet_client_cert_pem, &m.kubelet_client_key_pem),
                        None => Ok(()),
                    }
                });
            if let Err(e) = renewed {
                tracing::error!(error = %e, "renewing the certificates");
            }
        }
    });
}

/// Compacts the history every `interval`, keeping what was written during the last one.
fn spawn_compactor(store: Arc<dyn Store>, interval: Duration) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        let mut previous: Option<u64> = None;
        loop {
            ticker.tick().await;
            let current = match store.current_revision().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the revision for compaction");
                    continue;
                }
            };
            if let Some(rev) = previous {
                match store.compact(rev).await {
                    Ok(()) => tracing::debug!(revision = rev, "compacted"),
                    Err(e) => tracing::warn!(error = %e, "compaction failed"),
                }
            }
            previous = Some(current);
        }
    });
}

/// Runs the API server until `shutdown` completes.
pub async fn run(
    cfg: ServerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let network = NetworkConfig::default()
        .with_service_cidr(&cfg.service_cidr)
        .map_err(ServerError::Config)?;
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| ServerError::Io {
        context: format!("creating {}", cfg.data_dir.display()),
        source,
    })?;
    // Bind first: with port 0 the kernel picks the port the kubeconfig must name.
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServerError::Io {
            context: format!("listening on {}", cfg.listen),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServerError::Io {
        context: "reading the listening address".into(),
        source,
    })?;
    let host = match cfg.advertise_address {
        Some(ip) => ip,
        None if local.ip().is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        None => local.ip(),
    };
    let server_url = match host {
        IpAddr::V6(v6) => format!("https://[{v6}]:{}", local.port()),
        IpAddr::V4(v4) => format!("https://{v4}:{}", local.port()),
    };
    // The serving certificate holds the advertised address too.
    let named = match cfg.advertise_address {
        Some(ip) => SocketAddr::new(ip, local.port()),
        None => local,
    };
    let store: Arc<dyn Store> = match &cfg.etcd {
        Some(etcd) => Arc::new(EtcdStore::connect(etcd).await?),
        None => Arc::new(EmbeddedStore::open(&cfg.data_dir.join("store.redb"))?),
    };
    if store.get(skiff_store::MIGRATION_MARKER).await?.is_some() {
        return Err(ServerError::Config(
            "the store holds a migration that did not finish (`skiff store migrate` was \
             stopped midway); run it again before serving from this store"
                .into(),
        ));
    }
    crate::cluster_secrets::share(store.as_ref(), &cfg.data_dir).await?;
    let first_service_ip = network.first_service_ip();
    let material =
        Pki::new(&cfg.data_dir).renew_certificates(named, first_service_ip, &server_url)?;
    let (tls_config, serving) = material.server_config()?;
    let tls = tokio_rustls::TlsAcceptor::from(tls_config);
    let app = ApiServer::new(store.clone(), network, cfg.bookmark_interval);
    if app
        .tokens
        .set(auth::tokens::TokenIssuer::load_or_create(
            &cfg.data_dir,
            &server_url,
        )?)
        .is_err()
    {
        unreachable!("the issuer is set once, here");
    }
    let kubelet_client = node_proxy::KubeletClient::new(
        &material.kubelet_client_cert_pem,
        &material.kubelet_client_key_pem,
    )?;
    // The server was just made: nothing set it before.
    let _ = app.kubelet_client.set(kubelet_client);
    renew_certificates(
        Pki::new(&cfg.data_dir),
        serving,
        app.clone(),
        (named, first_service_ip, server_url.clone()),
    );
    crate::ranges::start_repair(store.clone(), app.network.clone(), SERVICE_REPAIR_INTERVAL)
        .await?;
    bootstrap(&app, local).await?;
    let advertised = cfg
        .advertise_address
        .unwrap_or_else(|| crate::kubernetes_service::advertise_address(local));
    let endpoint_lease = crate::kubernetes_service::start(
        app.clone(),
        advertised,
        local.port(),
        cfg.endpoint_lease_ttl,
    )
    .await?;
    auth::policy::reconcile(&app).await?;
    auth::rbac::Rbac::start(app.clone()).await?;
    auth::node::NodeGraph::start(app.clone()).await?;
    auth::service_accounts::start(app.clone(), material.ca_pem.clone()).await?;
    auth::csr::start(
        app.clone(),
        Pki::new(&cfg.data_dir).ca_issuer()?,
        cfg.cluster_signing_duration,
    );
    // Every resource's watch cache, started before the first request (so that a watch resuming
    // from a list taken since is served from memory).
    app.watch_cache.start_all(&app.store).await;
    spawn_compactor(store, cfg.compaction_interval);
    crate::scavenger::spawn();
    let server_address = Arc::new(format!("{host}:{}", local.port()));
    let bounds = Arc::new(RequestBounds::new(cfg.limits.clone()));
    tracing::info!(listen = %local, kubeconfig = %cfg.data_dir.join("admin.kubeconfig").display(), "serving the Kubernetes API");
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                endpoint_lease.abort();
                if let Err(e) = crate::kubernetes_service::withdraw(&app, advertised, local.port()).await {
                    tracing::warn!(error = %e.message, "leaving the kubernetes endpoints");
                }
                return Ok(());
            }
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (tls, app, addr) = (tls.clone(), app.clone(), server_address.clone());
        let bounds = bounds.clone();
        tokio::spawn(async move {
            let handshake_timeout = bounds.limits().tls_handshake_timeout;
            let stream = match tokio::time::timeout(handshake_timeout, tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let certificate_user = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| authn::from_certificate(c))
                .map(Arc::new);
            let header_timeout = bounds.limits().request_header_timeout;
            let first_request = Arc::new(tokio::sync::Notify::new());
            let seen = first_request.clone();
            let service = hyper::service::service_fn(move |req| {
                seen.notify_one();
                let (app, addr, user, bounds) = (
                    app.clone(),
                    addr.clone(),
                    certificate_user.clone(),
                    bounds.clone(),
                );
                async move { Ok::<_, Infallible>(route(app, addr, user, bounds, req).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(header_timeout)
                .keep_alive_timeout(header_timeout);
            let served = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(served);
            // The header timeout also bounds the wait for the first request, which hyper does
            // not: a client that sends nothing, or half an HTTP/2 preface, after its handshake.
            let result = tokio::select! {
                r = &mut served => r,
                _ = first_request.notified() => served.await,
                _ = tokio::time::sleep(header_timeout) => {
                    tracing::debug!(%peer, "no request within the header timeout");
                    return;
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

/// Parses `--listen`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|e| format!("{s}: expected ADDRESS:PORT ({e})"))
}
