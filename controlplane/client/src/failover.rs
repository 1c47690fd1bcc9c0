//! A client for a control plane of several API servers: the kubeconfig's credentials and CA, and
//! a list of server URLs (`--api-servers`) in place of its one `server`. Requests go to the
//! server that last answered; one that cannot be reached (connection refused or reset, its
//! process killed) is left for the next in the list, and the request is sent there at once
//! when its body can be sent again (every request kube-rs makes but streamed uploads). A watch
//! cut by its server's death ends with an error; kube-runtime's watcher then re-lists or
//! resumes through the same client, so on the next server.
//!
//! Choosing in the client (rather than a load balancer in front of the servers) is what the
//! kubelet's old `--api-servers` flag did; every server's serving certificate is signed by the
//! one cluster CA, so one kubeconfig's CA verifies them all.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use hyper::{Request, Response};
use kube::Client;
use kube::client::Body;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::ComponentError;

/// The servers, and the index of the one in use.
#[derive(Clone)]
struct Failover {
    servers: Arc<Vec<(String, Client)>>,
    current: Arc<AtomicUsize>,
}

/// A copy of `req` with `body`.
fn with_body(req: &Request<()>, body: Body) -> Request<Body> {
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    copy
}

impl tower::Service<Request<Body>> for Failover {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, kube::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let head = Request::from_parts(parts, ());
            let n = this.servers.len();
            let first = this.current.load(Ordering::Relaxed);
            let mut body = Some(body);
            let mut k = 0;
            loop {
                let i = (first + k) % n;
                let (url, client) = &this.servers[i];
                let b = body.take().expect("a body for each attempt");
                // Kept for the next server, if this one cannot be reached.
                body = b.try_clone();
                match client.send(with_body(&head, b)).await {
                    Ok(resp) => {
                        this.current.store(i, Ordering::Relaxed);
                        return Ok(resp);
                    }
                    Err(e) => {
                        let next = (i + 1) % n;
                        // Unless another request already moved on meanwhile.
                        let _ = this.current.compare_exchange(
                            i,
                            next,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                        k += 1;
                        if k >= n || body.is_none() {
                            return Err(e);
                        }
                        tracing::warn!(server = %url, next = %this.servers[next].0, error = %e, "API server unreachable; trying the next");
                    }
                }
            }
        })
    }
}

/// A client with the credentials of `kubeconfig` for `servers` (URLs, tried in turn); with no
/// servers, for the kubeconfig's own server.
pub async fn client(kubeconfig: &Path, servers: &[String]) -> Result<Client, ComponentError> {
    let err = |message: String| ComponentError::Kubeconfig {
        path: kubeconfig.to_path_buf(),
        message,
    };
    if servers.is_empty() {
        return crate::client(kubeconfig).await;
    }
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| err(e.to_string()))?;
    let mut built = Vec::new();
    let mut namespace = String::from("default");
    for url in servers {
        let mut cfg =
            kube::Config::from_custom_kubeconfig(kc.clone(), &KubeConfigOptions::default())
                .await
                .map_err(|e| err(e.to_string()))?;
        cfg.cluster_url = url
            .parse()
            .map_err(|e| err(format!("--api-servers: {url}: {e}")))?;
        namespace = cfg.default_namespace.clone();
        built.push((
            url.clone(),
            Client::try_from(cfg).map_err(|e| err(e.to_string()))?,
        ));
    }
    let service = Failover {
        servers: Arc::new(built),
        current: Arc::new(AtomicUsize::new(0)),
    };
    Ok(Client::new(service, namespace))
}
