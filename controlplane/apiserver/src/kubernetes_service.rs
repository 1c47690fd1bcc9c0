//! The `kubernetes` Service's endpoints: the API server writes an Endpoints and an EndpointSlice
//! named `kubernetes` in `default` naming the address and port of every live server
//! (kube-apiserver's lease endpoint reconciler), so an in-cluster client reaches one through the
//! Service address once the proxy runs. A server's address is the one it listens on, or,
//! listening on every address, the host's first non-loopback IPv4 address (loopback when it has
//! none).
//!
//! Liveness: every server keeps a Lease `kube-system/apiserver-<address>` (labelled
//! `apiserver.kubernetes.io/identity=kube-apiserver`) renewed every third of its duration, and
//! writes the endpoints as the addresses of the Leases renewed within their duration, so a
//! server killed drops out one duration later. As with kube-apiserver, every server must serve
//! on the same port: the endpoints carry one.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

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

/// Makes the `kubernetes` Endpoints and EndpointSlice name `addresses` on `port`.
pub async fn reconcile(
    app: &ApiServer,
    addresses: &BTreeSet<IpAddr>,
    port: u16,
) -> Result<(), ApiError> {
    let ports = json!([{"name": "https", "port": port, "protocol": "TCP"}]);
    let ips: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(), "ports": ports}],
    });
    put(app, "", "endpoints", endpoints, &["subsets"]).await?;
    let v6 = addresses.iter().next().is_some_and(IpAddr::is_ipv6);
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": if v6 { "IPv6" } else { "IPv4" },
        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
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

/// The label of the servers' Leases (kube-apiserver's identity Lease label).
const LEASE_LABEL: (&str, &str) = ("apiserver.kubernetes.io/identity", "kube-apiserver");

fn lease_name(address: IpAddr) -> String {
    format!("apiserver-{}", address.to_string().replace(['.', ':'], "-"))
}

fn micro_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Renews this server's Lease (making it when missing).
async fn renew(app: &ApiServer, address: IpAddr, ttl: Duration) -> Result<(), ApiError> {
    let r = resources::find("coordination.k8s.io", "v1", "leases").expect("served");
    let name = lease_name(address);
    let opts = WriteOptions::default();
    let spec = json!({
        "holderIdentity": address.to_string(),
        "leaseDurationSeconds": ttl.as_secs().max(1),
        "renewTime": micro_time(chrono::Utc::now()),
    });
    for _ in 0..5 {
        let written = match app.get(r, Some("kube-system"), &name).await {
            Err(e) if e.reason == Reason::NotFound => {
                let lease = json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": "kube-system",
                        "labels": {LEASE_LABEL.0: LEASE_LABEL.1}},
                    "spec": spec,
                });
                app.create(r, Some("kube-system"), lease, &opts)
                    .await
                    .map(drop)
            }
            Err(e) => return Err(e),
            Ok((_, mut cur)) => {
                cur["spec"] = spec.clone();
                app.update(r, Some("kube-system"), &name, cur, None, &opts)
                    .await
                    .map(drop)
            }
        };
        match written {
            Err(e) if matches!(e.reason, Reason::Conflict | Reason::AlreadyExists) => continue,
            other => return other,
        }
    }
    Ok(())
}

/// The addresses of the servers whose Leases are live.
async fn live_servers(app: &ApiServer) -> Result<BTreeSet<IpAddr>, ApiError> {
    let r = resources::find("coordination.k8s.io", "v1", "leases").expect("served");
    let now = chrono::Utc::now();
    let mut live = BTreeSet::new();
    let leases = app
        .store
        .range(&r.prefix(Some("kube-system")), None, 0)
        .await?;
    for kv in &leases.kvs {
        let lease = crate::object::decode_kv(kv)?;
        if lease.pointer(&format!(
            "/metadata/labels/{}",
            LEASE_LABEL.0.replace('/', "~1")
        )) != Some(&json!(LEASE_LABEL.1))
        {
            continue;
        }
        let spec = &lease["spec"];
        let renewed = spec["renewTime"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        let ttl = spec["leaseDurationSeconds"].as_i64().unwrap_or(0);
        let address = spec["holderIdentity"]
            .as_str()
            .and_then(|a| a.parse::<IpAddr>().ok());
        if let (Some(renewed), Some(address)) = (renewed, address)
            && renewed + chrono::Duration::seconds(ttl) > now
        {
            live.insert(address);
        }
    }
    Ok(live)
}

/// One round: renew this server's Lease, then write the live servers as the endpoints.
async fn round(app: &ApiServer, address: IpAddr, port: u16, ttl: Duration) -> Result<(), ApiError> {
    renew(app, address, ttl).await?;
    let mut live = live_servers(app).await?;
    live.insert(address);
    reconcile(app, &live, port).await
}

/// Runs the first round before returning, then one every third of `ttl` in the task returned.
pub async fn start(
    app: Arc<ApiServer>,
    address: IpAddr,
    port: u16,
    ttl: Duration,
) -> Result<tokio::task::JoinHandle<()>, ApiError> {
    round(&app, address, port, ttl).await?;
    Ok(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(ttl / 3);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            if let Err(e) = round(&app, address, port, ttl).await {
                tracing::warn!(error = %e.message, "renewing the server's Lease and the kubernetes endpoints");
            }
        }
    }))
}

/// Takes a server that stops cleanly out of the endpoints at once (its Lease deleted, the
/// endpoints written without it), as kube-apiserver does, rather than one duration later.
pub async fn withdraw(app: &ApiServer, address: IpAddr, port: u16) -> Result<(), ApiError> {
    let r = resources::find("coordination.k8s.io", "v1", "leases").expect("served");
    match app
        .store
        .delete(&r.key(Some("kube-system"), &lease_name(address)), None)
        .await
    {
        Ok(_) | Err(skiff_store::StoreError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let mut live = live_servers(app).await?;
    live.remove(&address);
    if live.is_empty() {
        return Ok(());
    }
    reconcile(app, &live, port).await
}
