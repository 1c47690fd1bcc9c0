//! The sync loop: reflectors keep Services and EndpointSlices current; every change marks the rules
//! stale and wakes the loop, which waits out `min_sync_period` (so a burst of changes is one sync),
//! computes the whole model (rebuilding only the Services whose objects changed), and hands it to
//! the data plane. Every `sync_period` the sync is full (reconciling whatever is installed). Then
//! the loop flushes UDP conntrack entries to endpoints that went away and to Services that got
//! their first endpoint, updates the healthCheckNodePort servers, and records an Event for each
//! object it had to skip.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::Notify;

use crate::dataplane::{self, Applied, DataPlane, Mode, RenderConfig};
use crate::dns::{DnsConfig, DnsServer};
use crate::health::{ServiceHealth, ServiceHealthServers, Status};
use crate::model::{Builder, Family, Model, Skipped};

/// The `kube-dns` Service's metrics port.
const DNS_METRICS_PORT: u16 = 9153;

#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub mode: Mode,
    /// The pod network, one range per family at most.
    pub cluster_cidrs: Vec<IpNet>,
    /// The Service network, one range per family at most: the families the proxy programs
    /// (an `ip skiff` table or iptables chains for IPv4, `ip6 skiff` or ip6tables for IPv6).
    pub service_cidrs: Vec<IpNet>,
    pub min_sync_period: Duration,
    pub sync_period: Duration,
    pub healthz_bind_address: SocketAddr,
    /// NodePorts answer only on node addresses inside these; empty means every address.
    pub nodeport_addresses: Vec<IpNet>,
    pub masquerade_all: bool,
    /// The cluster DNS server's settings; `None` when this node answers no cluster DNS.
    pub dns: Option<DnsConfig>,
}

impl Config {
    /// The families in use, as the Service network has them.
    pub fn families(&self) -> Vec<Family> {
        let mut out: Vec<Family> = Vec::new();
        for c in &self.service_cidrs {
            let f = Family::of(&c.addr());
            if !out.contains(&f) {
                out.push(f);
            }
        }
        out
    }
}

/// A Service's ClusterIP, when it has one.
fn cluster_ip(svc: &Service) -> Option<&str> {
    svc.spec.as_ref()?.cluster_ip.as_deref()
}

/// Runs a reflector for `K`, calling `changed` on every event, until the stream ends.
fn reflect<K>(api: Api<K>, changed: impl Fn() + Send + 'static) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => changed(),
                Err(e) => tracing::warn!(error = %e, "watch failed; retrying"),
            }
        }
    });
    store
}

/// Runs the proxy until an unrecoverable error.
pub async fn run(client: Client, cfg: Config) -> anyhow::Result<()> {
    use anyhow::Context;

    // Switching modes: whatever the other mode installed goes, and this mode's rules of a
    // family no longer in use.
    let families = cfg.families();
    let unused: Vec<Family> = [Family::V4, Family::V6]
        .into_iter()
        .filter(|f| !families.contains(f))
        .collect();
    let mode = cfg.mode;
    tokio::task::spawn_blocking(move || {
        match mode {
            Mode::Iptables => crate::nftables::cleanup()?,
            Mode::Nftables => crate::iptables::cleanup()?,
        }
        unused.iter().try_for_each(|f| match mode {
            Mode::Iptables => crate::iptables::cleanup_family(*f),
            Mode::Nftables => crate::nftables::cleanup_family(*f),
        })
    })
    .await?
    .context("removing the other mode's rules")?;
    crate::netlink::ensure_service_route(&cfg.service_cidrs)
        .await
        .with_context(|| {
            format!(
                "routing the Service CIDRs {:?} to {}",
                cfg.service_cidrs,
                crate::netlink::DUMMY
            )
        })?;

    let dns = match &cfg.dns {
        Some(dns_cfg) => Some(DnsServer::new(dns_cfg.clone()).context("cluster DNS settings")?),
        None => None,
    };
    let status = Status::new((cfg.sync_period * 2).max(Duration::from_secs(60)));
    let listener = tokio::net::TcpListener::bind(cfg.healthz_bind_address)
        .await
        .with_context(|| {
            format!(
                "binding --healthz-bind-address {}",
                cfg.healthz_bind_address
            )
        })?;
    tokio::spawn(crate::health::serve(
        listener,
        status.clone(),
        cfg.node_name.clone(),
        dns.clone(),
    ));

    let wake = Arc::new(Notify::new());
    let on_change = {
        let (wake, status) = (wake.clone(), status.clone());
        move || {
            status.changed();
            wake.notify_one();
        }
    };
    let services = reflect(Api::<Service>::all(client.clone()), on_change.clone());
    let slices = reflect(Api::<EndpointSlice>::all(client.clone()), on_change.clone());
    if !cfg.nodeport_addresses.is_empty() {
        let wake = wake.clone();
        crate::netlink::watch_addresses(move || wake.notify_one())
            .await
            .context("watching node addresses")?;
    }
    // Never program from a partial view: a restart with an empty cache would wipe working rules.
    services.wait_until_ready().await?;
    slices.wait_until_ready().await?;
    tracing::info!(mode = ?cfg.mode, node = %cfg.node_name, "caches synced; programming rules");
    if let Some(dns) = &dns {
        // Answer only once the records are whole, at the address the node holds for it.
        dns.update(
            services.state().iter().map(|s| s.as_ref()),
            slices.state().iter().map(|s| s.as_ref()),
        );
        let listen = dns.listen();
        crate::netlink::hold_address(listen.ip())
            .await
            .with_context(|| format!("holding the cluster DNS address {}", listen.ip()))?;
        let listening = dns.bind().await?;
        tokio::spawn(async move {
            if let Err(e) = listening.run().await {
                tracing::error!(error = %e, "cluster DNS server stopped");
            }
        });
        tracing::info!(%listen, "cluster DNS answering");
        // The kube-dns Service's metrics port, where CoreDNS serves its counters.
        let metrics = std::net::SocketAddr::new(listen.ip(), DNS_METRICS_PORT);
        match tokio::net::TcpListener::bind(metrics).await {
            Ok(listener) => {
                tokio::spawn(crate::health::serve(
                    listener,
                    status.clone(),
                    cfg.node_name.clone(),
                    Some(dns.clone()),
                ));
            }
            Err(e) => tracing::warn!(error = %e, %metrics, "cannot serve the DNS metrics port"),
        }
    }

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "skiff-proxy".into(),
            instance: Some(cfg.node_name.clone()),
        },
    );
    // One data plane per family, each with the UDP ports of the model it last installed.
    let mut planes: Vec<(Box<dyn DataPlane>, Model)> = families
        .iter()
        .map(|f| {
            let none = Model {
                family: *f,
                ..Default::default()
            };
            (dataplane::new(cfg.mode), none)
        })
        .collect();
    // One model builder per family, keeping each Service's part from sync to sync.
    let mut builders: Vec<Builder> = families
        .iter()
        .map(|f| Builder::new(*f, &cfg.node_name))
        .collect();
    let mut health_servers = ServiceHealthServers::default();
    let mut reported: BTreeSet<Skipped> = BTreeSet::new();
    let mut last_full: Option<Instant> = None;
    let mut last_start: Option<Instant> = None;
    loop {
        let full_due = last_full.map_or_else(Instant::now, |t| t + cfg.sync_period);
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep_until(full_due.into()) => {}
        }
        if let Some(t) = last_start {
            tokio::time::sleep_until((t + cfg.min_sync_period).into()).await;
        }
        let start = Instant::now();
        last_start = Some(start);
        let full = start >= full_due;
        let pending = status.take_pending();

        let svc_snapshot = services.state();
        let slice_snapshot = slices.state();
        if let Some(dns) = &dns {
            dns.update(
                svc_snapshot.iter().map(|s| s.as_ref()),
                slice_snapshot.iter().map(|s| s.as_ref()),
            );
        }
        // The cluster DNS address is answered on the node itself: no rules for its Service.
        let dns_ip = dns.as_ref().map(|d| d.listen().ip().to_string());
        let mut skipped: BTreeSet<Skipped> = BTreeSet::new();
        let models: Vec<&Model> = builders
            .iter_mut()
            .map(|builder| {
                let (model, skips) = builder.build(
                    svc_snapshot
                        .iter()
                        .map(|s| s.as_ref())
                        .filter(|s| cluster_ip(s) != dns_ip.as_deref()),
                    slice_snapshot.iter().map(|s| s.as_ref()),
                );
                skipped.extend(skips);
                model
            })
            .collect();
        let node_ips = match node_ips(&cfg).await {
            Ok(ips) => ips,
            Err(e) => {
                tracing::error!(error = %e, "reading node addresses");
                status.failed(pending);
                wake.notify_one();
                continue;
            }
        };
        let result = tokio::task::block_in_place(|| {
            let mut all = Applied::default();
            for ((plane, _), model) in planes.iter_mut().zip(&models) {
                let render_cfg = render_config(&cfg, model.family, node_ips.as_deref());
                let applied = plane.sync(model, &render_cfg, full)?;
                all.bytes += applied.bytes;
                all.changes += applied.changes;
            }
            Ok::<_, dataplane::Error>(all)
        });
        match result {
            Ok(applied) => {
                let took = start.elapsed();
                status.synced(took, pending, applied.bytes);
                if full {
                    last_full = Some(start);
                }
                tracing::debug!(
                    full,
                    ?took,
                    bytes = applied.bytes,
                    changes = applied.changes,
                    "synced"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "installing rules failed; next sync is full");
                status.failed(pending);
                last_full = None;
                continue;
            }
        }

        let (mut stale, mut gaining) = (BTreeSet::new(), BTreeSet::new());
        for ((_, installed), model) in planes.iter().zip(&models) {
            stale.extend(installed.stale_udp_endpoints(model));
            gaining.extend(installed.udp_services_gaining_endpoints(model));
        }
        if !stale.is_empty() || !gaining.is_empty() {
            match tokio::task::block_in_place(|| crate::conntrack::flush_udp(&stale, &gaining)) {
                Ok(n) => tracing::debug!(
                    entries = n,
                    endpoints = stale.len(),
                    services = gaining.len(),
                    "flushed UDP conntrack"
                ),
                Err(e) => tracing::warn!(error = %e, "flushing UDP conntrack entries"),
            }
        }
        health_servers.reconcile(health_checks(&models)).await;
        for ((_, installed), model) in planes.iter_mut().zip(&models) {
            *installed = model.udp();
        }

        for s in skipped.difference(&reported) {
            report_skipped(&recorder, &svc_snapshot, &slice_snapshot, s).await;
        }
        reported = skipped;
    }
}

/// The node addresses NodePorts answer on (both families); `None` for every address.
async fn node_ips(cfg: &Config) -> Result<Option<Vec<IpAddr>>, crate::netlink::Error> {
    if cfg.nodeport_addresses.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        crate::netlink::node_ips(&cfg.nodeport_addresses).await?,
    ))
}

/// The node's facts for `family`'s rules.
fn render_config(cfg: &Config, family: Family, node_ips: Option<&[IpAddr]>) -> RenderConfig {
    let of_family = |ip: &IpAddr| Family::of(ip) == family;
    RenderConfig {
        family,
        cluster_cidr: cfg
            .cluster_cidrs
            .iter()
            .find(|c| of_family(&c.addr()))
            .copied(),
        masquerade_all: cfg.masquerade_all,
        node_ips: node_ips.map(|ips| ips.iter().filter(|ip| of_family(ip)).copied().collect()),
    }
}

/// healthCheckNodePort answers from every family's model (a dual-stack Service is in both).
fn health_checks(models: &[&Model]) -> BTreeMap<u16, ServiceHealth> {
    let mut out: BTreeMap<u16, ServiceHealth> = BTreeMap::new();
    for p in models.iter().flat_map(|m| m.ports.values()) {
        if let Some(port) = p.health_check_node_port {
            let entry = out.entry(port).or_insert_with(|| ServiceHealth {
                namespace: p.id.namespace.clone(),
                name: p.id.name.clone(),
                local_endpoints: 0,
            });
            entry.local_endpoints = entry.local_endpoints.max(p.local_ready_count());
        }
    }
    out
}

/// Logs a skipped object and records a Warning Event on its Service.
async fn report_skipped(
    recorder: &Recorder,
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    s: &Skipped,
) {
    tracing::warn!(kind = s.kind, namespace = %s.namespace, name = %s.name, reason = %s.reason, "skipped");
    let service_name = if s.kind == "Service" {
        Some(s.name.clone())
    } else {
        slices
            .iter()
            .find(|sl| {
                sl.metadata.namespace.as_deref() == Some(&s.namespace)
                    && sl.metadata.name.as_deref() == Some(&s.name)
            })
            .and_then(|sl| sl.metadata.labels.as_ref())
            .and_then(|l| l.get(crate::model::SERVICE_NAME_LABEL).cloned())
    };
    let Some(svc) = service_name.and_then(|n| {
        services.iter().find(|svc| {
            svc.metadata.namespace.as_deref() == Some(&s.namespace)
                && svc.metadata.name.as_deref() == Some(&n)
        })
    }) else {
        return;
    };
    let event = Event {
        type_: EventType::Warning,
        reason: "Skipped".into(),
        note: Some(format!("{} {}: {}", s.kind, s.name, s.reason)),
        action: "SyncProxyRules".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &svc.object_ref(&())).await {
        tracing::warn!(error = %e, "recording event");
    }
}
