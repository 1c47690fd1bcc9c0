//! skiff-apiserver: the Kubernetes API server — the TLS listener and the PKI behind it (`server`,
//! `pki`), authentication and RBAC authorization (`auth`), routing, discovery and OpenAPI, and the
//! generic registry (CRUD, list, watch, patch and server-side apply, subresources, deletion,
//! Table printing) over a [`Store`](skiff_store::Store), with what is particular to each resource
//! in one module of `registry/` behind a [`registry::Strategy`]. It may depend on skiff-store and
//! skiff-k8s; nothing but the `skiff` binary depends on it.

pub mod alloc;
pub mod apply;
pub mod auth;
pub mod cluster_secrets;
pub mod convert;
pub mod defaults;
pub mod deletion;
pub mod discovery;
pub mod handlers;
pub mod kubernetes_service;
pub mod limits;
pub mod list_stream;
pub mod metrics;
pub mod node_proxy;
pub mod object;
pub mod openapi;
pub mod patch;
pub mod pki;
pub mod priority;
pub mod protobuf;
mod protobuf_fields;
pub mod ranges;
pub mod registry;
pub mod resources;
pub mod revisions;
mod scavenger;
pub mod schema;
pub mod selectors;
pub mod server;
pub mod status;
pub mod table;
pub mod validation;
pub mod watch;
pub mod watch_cache;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use skiff_store::Store;

/// The API server's state, shared by every request.
pub struct ApiServer {
    pub store: Arc<dyn Store>,
    pub schemas: schema::Schemas,
    pub openapi: openapi::OpenApiDocs,
    pub network: alloc::NetworkConfig,
    /// How often watches that asked for bookmarks get one.
    pub bookmark_interval: Duration,
    /// How long a watch waits for a client that stopped reading before closing it.
    pub slow_watcher_timeout: Duration,
    /// The RBAC policy the authorizer decides by.
    pub rbac: auth::rbac::Rbac,
    /// The Node authorizer's graph of pods and what they refer to.
    pub node_graph: auth::node::NodeGraph,
    /// The service-account token issuer, once the server has loaded its key.
    pub tokens: std::sync::OnceLock<auth::tokens::TokenIssuer>,
    /// The TLS client for the kubelets (logs, exec, port-forward, node proxy), set at start.
    pub kubelet_client: std::sync::OnceLock<node_proxy::KubeletClient>,
    /// The kubelets' last resource usage, for `metrics.k8s.io`.
    pub metrics: metrics::Scraped,
    /// Objects and recent events of every resource, for watches and `resourceVersion=0` lists.
    pub watch_cache: watch_cache::WatchCaches,
}

impl ApiServer {
    pub fn new(
        store: Arc<dyn Store>,
        network: alloc::NetworkConfig,
        bookmark_interval: Duration,
    ) -> Arc<Self> {
        let schemas = schema::Schemas::generate();
        let openapi = openapi::OpenApiDocs::build(&schemas);
        Arc::new(Self {
            store,
            schemas,
            openapi,
            network,
            bookmark_interval,
            slow_watcher_timeout: Duration::from_secs(30),
            rbac: Default::default(),
            node_graph: Default::default(),
            tokens: Default::default(),
            kubelet_client: std::sync::OnceLock::new(),
            metrics: metrics::Scraped::default(),
            watch_cache: Default::default(),
        })
    }
}

/// Decodes an `application/x-www-form-urlencoded` query string.
pub fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match std::str::from_utf8(&bytes[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_decoding() {
        let q = super::parse_query(Some("labelSelector=app%3Dweb%2Ctier+in+(a)&watch=1&x"));
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(q["watch"], "1");
        assert_eq!(q["x"], "");
        assert_eq!(super::parse_query(Some("a=%zz%4"))["a"], "%zz%4");
    }
}
