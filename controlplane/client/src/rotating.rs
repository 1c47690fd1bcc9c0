//! A kube client whose credentials can change under it: every request is sent with the client
//! set last, so that a renewed certificate is taken up without restarting what holds the client
//! (watches, workers, controllers).

use std::sync::{Arc, RwLock};
use std::task::{Context as TaskContext, Poll};

use futures::future::BoxFuture;
use kube::Client;

/// A kube client whose requests are sent with whichever client [`RotatingClient::replace`] set
/// last: a rotated certificate takes effect for the next request, on new connections.
#[derive(Clone)]
pub struct RotatingClient {
    current: Arc<RwLock<Client>>,
}

impl RotatingClient {
    pub fn new(client: Client) -> RotatingClient {
        RotatingClient {
            current: Arc::new(RwLock::new(client)),
        }
    }

    /// The client every component uses; it follows [`RotatingClient::replace`].
    pub fn client(&self) -> Client {
        Client::new(self.clone(), "default")
    }

    pub fn replace(&self, client: Client) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = client;
    }

    fn current(&self) -> Client {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl tower::Service<hyper::http::Request<kube::client::Body>> for RotatingClient {
    type Response = hyper::http::Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = BoxFuture<'static, Result<Self::Response, kube::Error>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), kube::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: hyper::http::Request<kube::client::Body>) -> Self::Future {
        let client = self.current();
        Box::pin(async move { client.send(request).await })
    }
}
