//! The API objects the pod workers read for every pod, kept current by watches (the kubelet's
//! node and service listers): its own Node, for admission, and the Services, for the service
//! link variables. A burst of pods then costs the API server no request each for them. Until a
//! watch has listed once, readers fall back to asking the API server.

use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::ListParams;
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

pub struct Listers {
    client: Client,
    node_name: String,
    node: Store<Node>,
    services: Store<Service>,
    /// The watches' tasks, stopped with the listers.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Keeps `writer`'s store equal to what `watch` sees (until the task is aborted).
fn follow<K>(
    writer: reflector::store::Writer<K>,
    watch: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    what: &'static str,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    tokio::spawn(
        reflector(writer, watch)
            .default_backoff()
            .for_each(move |e| async move {
                if let Err(e) = e {
                    tracing::warn!("watching {what}: {e}");
                }
            }),
    )
}

impl Listers {
    /// Starts the watches (inside a tokio runtime).
    pub fn start(client: Client, node_name: &str) -> Listers {
        let (node, node_writer) = reflector::store::<Node>();
        let node_watch = watcher(
            Api::<Node>::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        );
        let (services, services_writer) = reflector::store::<Service>();
        let services_watch = watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        );
        Listers {
            tasks: vec![
                follow(node_writer, node_watch, "the node"),
                follow(services_writer, services_watch, "services"),
            ],
            client,
            node_name: node_name.to_string(),
            node,
            services,
        }
    }

    /// The node's own object.
    pub async fn node(&self) -> Result<Node, kube::Error> {
        match self.node.get(&ObjectRef::new(&self.node_name)) {
            Some(n) => Ok(n.as_ref().clone()),
            None => {
                Api::<Node>::all(self.client.clone())
                    .get(&self.node_name)
                    .await
            }
        }
    }

    /// The Services of namespace `ns`, by name (as the API lists them).
    pub async fn services(&self, ns: &str) -> Result<Vec<Service>, kube::Error> {
        if self.services.wait_until_ready().now_or_never().is_none() {
            let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
            return Ok(api.list(&ListParams::default()).await?.items);
        }
        let mut found: Vec<Arc<Service>> = self
            .services
            .state_filter(|s| s.metadata.namespace.as_deref() == Some(ns));
        found.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        Ok(found.iter().map(|s| s.as_ref().clone()).collect())
    }
}

impl Drop for Listers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
