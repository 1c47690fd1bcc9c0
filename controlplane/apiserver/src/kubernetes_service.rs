//! The `kubernetes` Service's endpoints: the API server writes an Endpoints and an EndpointSlice
//! named `kubernetes` in `default` naming its own address and port (kube-apiserver's endpoint
//! reconciler), so an in-cluster client reaches it through the Service address once the proxy
//! runs. The address is the one it listens on, or, listening on every address, the host's first
//! non-loopback IPv4 address (loopback when it has none).

use std::net::{IpAddr, SocketAddr};

use serde_json::{Value, json};

use crate::ApiServer;
use crate::handlers::WriteOptions;
use crate::object::meta_mut;
use crate::resources;
use crate::status::{ApiError, Reason};

/// The address other hosts and pods reach the server at.
pub fn advertise_address(listen: SocketAddr) -> IpAddr {
    if !listen.ip().is_unspecified() {
        return listen.ip();
    }
    nix::ifaddrs::getifaddrs()
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|i| i.address?.as_sockaddr_in().map(|a| IpAddr::V4(a.ip())))
        .find(|ip| !ip.is_loopback())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// Creates the object, or replaces the fields `fields` of the stored one when they differ.
async fn put(
    app: &ApiServer,
    group: &str,
    plural: &str,
    want: Value,
    fields: &[&str],
) -> Result<(), ApiError> {
    let r = resources::find(group, "v1", plural).expect("served");
    let opts = WriteOptions::default();
    for _ in 0..5 {
        match app.get(r, Some("default"), "kubernetes").await {
            Err(e) if e.reason == Reason::NotFound => {
                match app.create(r, Some("default"), want.clone(), &opts).await {
                    Err(e) if e.reason == Reason::AlreadyExists => continue,
                    other => return other.map(drop),
                }
            }
            Err(e) => return Err(e),
            Ok((_, cur)) => {
                if fields.iter().all(|f| cur.get(*f) == want.get(*f)) {
                    return Ok(());
                }
                let mut new = cur.clone();
                for f in fields {
                    new[*f] = want[*f].clone();
                }
                meta_mut(&mut new).insert("labels".into(), want["metadata"]["labels"].clone());
                match app
                    .update(r, Some("default"), "kubernetes", new, None, &opts)
                    .await
                {
                    Err(e) if e.reason == Reason::Conflict => continue,
                    other => return other.map(drop),
                }
            }
        }
    }
    Ok(())
}

/// Makes the `kubernetes` Endpoints and EndpointSlice name `address`:`port`.
pub async fn reconcile(app: &ApiServer, address: IpAddr, port: u16) -> Result<(), ApiError> {
    let ports = json!([{"name": "https", "port": port, "protocol": "TCP"}]);
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": address.to_string()}], "ports": ports}],
    });
    put(app, "", "endpoints", endpoints, &["subsets"]).await?;
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": if address.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{"addresses": [address.to_string()], "conditions": {"ready": true}}],
        "ports": ports,
    });
    put(
        app,
        "discovery.k8s.io",
        "endpointslices",
        slice,
        &["addressType", "endpoints", "ports"],
    )
    .await
}
