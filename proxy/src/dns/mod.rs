//! The node-local cluster DNS server: every node's proxy answers cluster names from the
//! Service/EndpointSlice cache it already keeps, and forwards other names to the node's
//! upstream resolvers. No DNS pods.
//!
//! - [`records`]: the Kubernetes DNS specification's records as an index built from the objects;
//! - [`server`]: the protocol (hickory-server on UDP and TCP) and the request handler;
//! - [`forward`]: upstream exchanges and the cache of their answers;
//! - [`metrics`]: counters for `/metrics`;
//! - [`config`]: settings and flags;
//! - [`watch`]: reflectors that feed the server when it runs on its own.
//!
//! The proxy either hands its caches over on every change ([`DnsServer::update`]) or lets
//! [`run`] keep its own reflectors.
//!
//! hickory-server logs every request at INFO (target `hickory_server`): a binary serving real
//! traffic should hold that target at WARN in its log filter.

pub mod config;
pub mod forward;
pub mod metrics;
pub mod records;
mod response_cache;
pub mod server;
mod udp;
pub mod watch;

use std::borrow::Borrow;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

pub use config::{DnsArgs, DnsConfig};
pub use metrics::DnsMetrics;
pub use records::{ClusterIndex, ZoneConfig};
pub use server::Listening;
pub use watch::run;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(transparent)]
    Domain(#[from] records::InvalidDomain),
    #[error("--dns-upstream {0:?} is not an address or address:port")]
    Upstream(String),
    #[error("--dns-upstream-timeout {0} is not a positive number of seconds")]
    Timeout(f64),
    #[error("reading the upstream resolvers from {path}: {source}")]
    ResolvConf {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("binding the DNS server to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("DNS server stopped: {0}")]
    Serve(String),
    #[error("watching {resource}: the watch ended")]
    WatchEnded { resource: &'static str },
}

/// The DNS server: a cheap handle shared by the protocol side and whoever feeds it objects.
#[derive(Clone)]
pub struct DnsServer {
    shared: Arc<Shared>,
    config: DnsConfig,
}

/// What every request reads: the current index (swapped whole on updates), the forwarder
/// and the counters.
pub(crate) struct Shared {
    index: RwLock<Arc<ClusterIndex>>,
    /// Counts index replacements; raised after each swap, so an answer computed after reading
    /// a generation comes from that index or a newer one.
    generation: AtomicU64,
    /// The objects the index was built from, to skip rebuilding it (and voiding the response
    /// caches) when a sync hands over the same ones.
    built_from: Mutex<Option<Revision>>,
    zone: ZoneConfig,
    forwarder: forward::Forwarder,
    metrics: DnsMetrics,
}

impl Shared {
    fn index(&self) -> Arc<ClusterIndex> {
        self.index.read().expect("dns index lock").clone()
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

impl DnsServer {
    /// A server with no Services yet (only the zone's own records).
    pub fn new(config: DnsConfig) -> Result<Self, DnsError> {
        let zone = ZoneConfig::new(&config.cluster_domain, config.ttl, Some(config.listen.ip()))?;
        let empty = ClusterIndex::build::<&Service, &EndpointSlice>(zone.clone(), [], []);
        let shared = Shared {
            index: RwLock::new(Arc::new(empty)),
            generation: AtomicU64::new(0),
            built_from: Mutex::new(None),
            zone,
            forwarder: forward::Forwarder::new(
                config.upstreams.clone(),
                config.upstream_timeout,
                config.cache_entries,
            ),
            metrics: DnsMetrics::default(),
        };
        Ok(Self {
            shared: Arc::new(shared),
            config,
        })
    }

    /// Replaces the records with those of `services` and `slices` (all of them, as the
    /// proxy's stores hold them: `store.state()` fits), unless they are the very objects (names
    /// and resource versions) the records were built from. Returns whether it rebuilt them.
    pub fn update<S, E>(
        &self,
        services: impl IntoIterator<Item = S>,
        slices: impl IntoIterator<Item = E>,
    ) -> bool
    where
        S: Borrow<Service>,
        E: Borrow<EndpointSlice>,
    {
        let services: Vec<S> = services.into_iter().collect();
        let slices: Vec<E> = slices.into_iter().collect();
        let revision = Revision::of(
            services
                .iter()
                .map(|s| &s.borrow().metadata)
                .chain(slices.iter().map(|s| &s.borrow().metadata)),
        );
        let mut built_from = self.shared.built_from.lock().expect("dns revision lock");
        if revision.is_some() && *built_from == revision {
            return false;
        }
        let index = ClusterIndex::build(self.shared.zone.clone(), services, slices);
        tracing::debug!(names = index.len(), "cluster DNS records updated");
        *self.shared.index.write().expect("dns index lock") = Arc::new(index);
        self.shared.generation.fetch_add(1, Ordering::Release);
        *built_from = revision;
        true
    }

    /// Binds UDP and TCP at the configured address; [`Listening::run`] then serves.
    pub async fn bind(&self) -> Result<Listening, DnsError> {
        let handler = server::Handler {
            shared: self.shared.clone(),
        };
        Listening::bind(self.config.listen, handler).await
    }

    /// Where the server answers.
    pub fn listen(&self) -> SocketAddr {
        self.config.listen
    }

    /// The counters, for the proxy's `/metrics` (`metrics().render()`).
    pub fn metrics(&self) -> &DnsMetrics {
        &self.shared.metrics
    }
}

/// Which objects, at which resource versions, in any order: a sum of per-object hashes and a
/// count. `None` when an object has no resource version (nothing then tells it unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Revision {
    sum: u64,
    count: usize,
}

impl Revision {
    fn of<'a>(
        objects: impl IntoIterator<
            Item = &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        >,
    ) -> Option<Self> {
        let mut r = Revision { sum: 0, count: 0 };
        for meta in objects {
            let mut h = DefaultHasher::new();
            (
                &meta.namespace,
                &meta.name,
                &meta.uid,
                meta.resource_version.as_ref()?,
            )
                .hash(&mut h);
            r.sum = r.sum.wrapping_add(h.finish());
            r.count += 1;
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DnsConfig {
        DnsConfig {
            listen: "10.96.0.10:53".parse().unwrap(),
            cluster_domain: "cluster.local".into(),
            ttl: 5,
            upstreams: vec![],
            upstream_timeout: std::time::Duration::from_secs(1),
            cache_entries: 10,
        }
    }

    fn service(name: &str, version: Option<&str>) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": name, "resourceVersion": version},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}
        }))
        .unwrap()
    }

    #[test]
    fn the_index_is_rebuilt_only_when_the_objects_change() {
        let dns = DnsServer::new(config()).unwrap();
        let none: &[EndpointSlice] = &[];
        let (a, b) = (service("a", Some("1")), service("b", Some("2")));
        assert!(dns.update([&a, &b], none));
        let generation = dns.shared.generation();
        // The same objects in another order: nothing rebuilt, the response caches stay valid.
        assert!(!dns.update([&b, &a], none));
        assert_eq!(dns.shared.generation(), generation);
        // A new resource version, an object gone: rebuilt.
        assert!(dns.update([&a, &service("b", Some("3"))], none));
        assert!(dns.update([&a], none));
        assert!(dns.shared.generation() > generation);
        // Objects without resource versions cannot be told unchanged.
        let bare = service("c", None);
        assert!(dns.update([&bare], none));
        assert!(dns.update([&bare], none));
    }
}
