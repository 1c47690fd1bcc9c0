//! Feeding the DNS server from the API on its own: reflectors over Services and EndpointSlices,
//! the index rebuilt after each burst of changes. The proxy, which keeps these reflectors
//! already, can instead call [`DnsServer::update`] from its sync loop.

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tracing::warn;

use super::{DnsConfig, DnsError, DnsServer};

/// Binds the DNS server at `config.listen` and serves it, fed by its own reflectors, until the
/// sockets or the watches fail.
pub async fn run(client: Client, config: DnsConfig) -> Result<(), DnsError> {
    let dns = DnsServer::new(config)?;
    let listening = dns.bind().await?;
    tokio::select! {
        served = listening.run() => served,
        followed = dns.follow(client) => followed,
    }
}

impl DnsServer {
    /// Keeps the records in step with the cluster's Services and EndpointSlices (all
    /// namespaces). Returns only if a watch stream ends.
    pub async fn follow(&self, client: Client) -> Result<(), DnsError> {
        let (services, services_writer) = reflector::store::<Service>();
        let (slices, slices_writer) = reflector::store::<EndpointSlice>();
        let service_events = reflector(
            services_writer,
            watcher(
                Api::<Service>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .map(|event| event.map(|_| ()));
        let slice_events = reflector(
            slices_writer,
            watcher(
                Api::<EndpointSlice>::all(client),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .map(|event| event.map(|_| ()));
        let mut events = std::pin::pin!(futures::stream::select(service_events, slice_events));
        while let Some(event) = events.next().await {
            if let Err(error) = event {
                warn!(%error, "cluster DNS watch failed; retrying");
                continue;
            }
            // Coalesce a burst (a relist delivers every object) into one rebuild.
            while let Some(Some(_)) = events.next().now_or_never() {}
            let ready = services.wait_until_ready().now_or_never().is_some()
                && slices.wait_until_ready().now_or_never().is_some();
            if ready {
                // A rebuild of a large cluster takes a while: off the runtime's workers, so
                // queries keep being answered from the previous index meanwhile.
                let (dns, services, slices) = (self.clone(), services.state(), slices.state());
                if let Err(error) =
                    tokio::task::spawn_blocking(move || dns.update(services, slices)).await
                {
                    warn!(%error, "rebuilding the cluster DNS records failed");
                }
            }
        }
        Err(DnsError::WatchEnded {
            resource: "Services and EndpointSlices",
        })
    }
}
