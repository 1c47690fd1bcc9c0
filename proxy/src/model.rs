//! The desired state of the node's Service data plane, computed whole from the current Services
//! and EndpointSlices on every sync. Pure: no I/O, so every rule of endpoint selection is unit
//! tested here and both renderers (iptables, nftables) read the same answer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use sha2::{Digest, Sha256};

/// The label an EndpointSlice names its Service by.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// kube's default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10800;

/// The IP family a model (and the table or chains rendered from it) is for: a dual-stack
/// Service is one Service port in each family's model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    #[default]
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    /// As `ipFamilies` and an EndpointSlice's `addressType` name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The lower-case name iptables and nft use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// One port of one Service: `namespace/name:port-name/protocol`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port: String,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

impl ServicePortName {
    /// A stable 16-character name fragment, as kube-proxy hashes its chain names: the first 80
    /// bits of SHA-256 over the port's identity (and `extra`, an endpoint) in base32.
    pub fn hash(&self, extra: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.to_string().as_bytes());
        h.update(self.protocol.as_str().as_bytes());
        h.update(extra.as_bytes());
        base32_80(&h.finalize()[..10])
    }
}

fn base32_80(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits: u128 = 0;
    for b in bytes {
        bits = (bits << 8) | u128::from(*b);
    }
    (0..16)
        .rev()
        .map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char)
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node (`nodeName` equals ours).
    pub local: bool,
}

/// `10.244.0.2:80`, `[fd00::2]:80`: as DNAT targets are written.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

/// Everything the data plane needs about one Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub id: ServicePortName,
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    /// ClientIP session affinity timeout in seconds, when affinity is on.
    pub affinity_seconds: Option<u32>,
    pub internal_local: bool,
    pub external_local: bool,
    pub health_check_node_port: Option<u16>,
    /// Every endpoint known for this port, sorted.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// Endpoints for traffic to the ClusterIP: ready ones (local only when
    /// internalTrafficPolicy is Local), else serving terminating ones.
    pub fn cluster_endpoints(&self) -> Vec<Endpoint> {
        usable(&self.endpoints, self.internal_local)
    }

    /// Endpoints for NodePort, externalIP and load-balancer traffic.
    pub fn external_endpoints(&self) -> Vec<Endpoint> {
        usable(&self.endpoints, self.external_local)
    }

    /// Whether it is reachable from outside the cluster network at all.
    pub fn has_external(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// Endpoints on this node that count for healthCheckNodePort.
    pub fn local_ready_count(&self) -> usize {
        usable(&self.endpoints, true).len()
    }
}

fn usable(all: &[Endpoint], local_only: bool) -> Vec<Endpoint> {
    let candidates = all.iter().filter(|e| !local_only || e.local);
    let ready: Vec<Endpoint> = candidates.clone().filter(|e| e.ready).copied().collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates
        .filter(|e| e.serving && e.terminating)
        .copied()
        .collect()
}

/// An object (or part of one) left out of the data plane, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    pub family: Family,
    pub ports: BTreeMap<ServicePortName, ServicePort>,
}

impl Model {
    /// [`Model::build_for`] IPv4.
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        node: &str,
    ) -> (Model, Vec<Skipped>) {
        Self::build_for(Family::V4, services, slices, node)
    }

    /// Builds the model of `family` for node `node` from the current objects: each Service at
    /// its ClusterIP of that family (none: not in this model) with the endpoints of its slices
    /// of that `addressType`. What cannot be programmed safely is left out and reported, never
    /// passed on to a renderer. (A one-off [`Builder::build`].)
    pub fn build_for<'a>(
        family: Family,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        node: &str,
    ) -> (Model, Vec<Skipped>) {
        let mut builder = Builder::new(family, node);
        let skipped = builder.build(services, slices).1;
        (builder.model, skipped)
    }

    /// Its UDP ports alone: all that [`Model::stale_udp_endpoints`] and
    /// [`Model::udp_services_gaining_endpoints`] read of the model a sync replaces.
    pub fn udp(&self) -> Model {
        Model {
            family: self.family,
            ports: self
                .ports
                .iter()
                .filter(|(id, _)| id.protocol == Protocol::Udp)
                .map(|(id, p)| (id.clone(), p.clone()))
                .collect(),
        }
    }

    /// UDP endpoints present in `self` but gone (or no longer usable) in `next`: their conntrack
    /// entries must go or clients keep sending to a dead address.
    pub fn stale_udp_endpoints(&self, next: &Model) -> BTreeSet<(IpAddr, u16)> {
        let used = |m: &Model| -> BTreeSet<(IpAddr, u16)> {
            m.ports
                .values()
                .filter(|p| p.id.protocol == Protocol::Udp)
                .flat_map(|p| {
                    let mut eps = p.cluster_endpoints();
                    eps.extend(p.external_endpoints());
                    eps.into_iter().map(|e| (e.ip, e.port))
                })
                .collect()
        };
        let after = used(next);
        used(self)
            .into_iter()
            .filter(|e| !after.contains(e))
            .collect()
    }
}

/// Keeps a family's model from sync to sync, changing only the part of each Service that
/// changed: a Service's ports are rebuilt when the Service or one of its EndpointSlices has
/// another resourceVersion, so a sync after one change among 10,000 Services compares versions
/// instead of parsing every object and building the whole model again. Objects without a
/// resourceVersion (not from an API server) are rebuilt every time.
#[derive(Debug)]
pub struct Builder {
    node: String,
    model: Model,
    /// By `namespace/name` of the Service.
    built: HashMap<String, Built>,
    /// Which build this is: a Service not seen in it is gone.
    generation: u64,
}

/// What one Service was built from and what it put in the model.
#[derive(Debug)]
struct Built {
    service_version: Option<String>,
    /// Its slices' names and resourceVersions, sorted by name.
    slice_versions: Vec<(Option<String>, Option<String>)>,
    ports: Vec<ServicePortName>,
    skipped: Vec<Skipped>,
    generation: u64,
}

impl Built {
    /// Whether it was built from these very versions of `svc` and `slices`.
    fn current(&self, svc: &Service, slices: &[&EndpointSlice]) -> bool {
        let same = |built: &Option<String>, now: &Option<String>| built.is_some() && built == now;
        same(&self.service_version, &svc.metadata.resource_version)
            && self.slice_versions.len() == slices.len()
            && self
                .slice_versions
                .iter()
                .zip(slices)
                .all(|((name, version), s)| {
                    *name == s.metadata.name && same(version, &s.metadata.resource_version)
                })
    }
}

impl Builder {
    pub fn new(family: Family, node: &str) -> Self {
        Builder {
            node: node.to_string(),
            model: Model {
                family,
                ports: BTreeMap::new(),
            },
            built: HashMap::new(),
            generation: 0,
        }
    }

    /// The model of the current objects (see [`Model::build_for`]), and what was skipped.
    pub fn build<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> (&Model, Vec<Skipped>) {
        let family = self.model.family;
        self.generation += 1;
        let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let (true, Some(service)) = (slice.address_type == family.name(), service) {
                let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
                by_service.entry((ns, service)).or_default().push(slice);
            }
        }
        let mut skipped = Vec::new();
        let mut key = String::new();
        for svc in services {
            let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
            let name = svc.metadata.name.as_deref().unwrap_or_default();
            let mut mine = by_service.remove(&(ns, name)).unwrap_or_default();
            mine.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            key.clear();
            let _ = write!(key, "{ns}/{name}");
            if !self.built.get(&key).is_some_and(|b| b.current(svc, &mine)) {
                for id in self.built.remove(&key).into_iter().flat_map(|b| b.ports) {
                    self.model.ports.remove(&id);
                }
                let b = self.rebuild(svc, &mine);
                self.built.insert(key.clone(), b);
            }
            let built = self.built.get_mut(&key).expect("built above");
            built.generation = self.generation;
            skipped.extend(built.skipped.iter().cloned());
        }
        // Services gone take their ports along.
        let (generation, ports) = (self.generation, &mut self.model.ports);
        self.built.retain(|_, b| {
            if b.generation != generation {
                for id in &b.ports {
                    ports.remove(id);
                }
            }
            b.generation == generation
        });
        // Slices of no Service: only their own faults are reported.
        for slice in by_service.into_values().flatten() {
            add_slice(
                &mut BTreeMap::new(),
                slice,
                family,
                &self.node,
                &mut skipped,
            );
        }
        skipped.sort();
        skipped.dedup();
        (&self.model, skipped)
    }

    /// Builds `svc`'s ports with the endpoints of `slices` (its own, sorted by name) into the
    /// model.
    fn rebuild(&mut self, svc: &Service, slices: &[&EndpointSlice]) -> Built {
        let family = self.model.family;
        let mut skipped = Vec::new();
        let mut ports: BTreeMap<ServicePortName, ServicePort> =
            service_ports(svc, family, &mut skipped)
                .into_iter()
                .map(|p| (p.id.clone(), p))
                .collect();
        for slice in slices {
            add_slice(&mut ports, slice, family, &self.node, &mut skipped);
        }
        let ids = ports.keys().cloned().collect();
        for (id, mut port) in ports {
            port.endpoints.sort();
            port.endpoints.dedup_by_key(|e| (e.ip, e.port));
            self.model.ports.insert(id, port);
        }
        Built {
            service_version: svc.metadata.resource_version.clone(),
            slice_versions: slices
                .iter()
                .map(|s| (s.metadata.name.clone(), s.metadata.resource_version.clone()))
                .collect(),
            ports: ids,
            skipped,
            generation: self.generation,
        }
    }
}

/// Where a UDP flow to a Service was sent: a Service address, or a NodePort on any address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ServiceDst {
    Addr(IpAddr, u16),
    NodePort(u16),
}

impl Model {
    /// UDP Service destinations that had no usable endpoint and now have one. Datagrams sent
    /// while they were rejected left conntrack entries that would keep the flow from being
    /// DNATed now; those entries must go.
    pub fn udp_services_gaining_endpoints(&self, next: &Model) -> BTreeSet<ServiceDst> {
        let mut out = BTreeSet::new();
        for (id, p) in &next.ports {
            if id.protocol != Protocol::Udp {
                continue;
            }
            let before = self.ports.get(id);
            let gained = |now: bool, had: Option<bool>| now && !had.unwrap_or(false);
            if gained(
                !p.cluster_endpoints().is_empty(),
                before.map(|b| !b.cluster_endpoints().is_empty()),
            ) {
                out.insert(ServiceDst::Addr(p.cluster_ip, p.port));
            }
            if gained(
                !p.external_endpoints().is_empty(),
                before.map(|b| !b.external_endpoints().is_empty()),
            ) {
                for ip in p.external_ips.iter().chain(&p.load_balancer_ips) {
                    out.insert(ServiceDst::Addr(*ip, p.port));
                }
                out.extend(p.node_port.map(ServiceDst::NodePort));
            }
        }
        out
    }
}

fn skip(skipped: &mut Vec<Skipped>, kind: &'static str, ns: &str, name: &str, reason: String) {
    skipped.push(Skipped {
        kind,
        namespace: ns.to_string(),
        name: name.to_string(),
        reason,
    });
}

/// The addresses of `family` in `list` (those of the other family are its model's).
fn parse_ip_list<'a>(
    list: impl IntoIterator<Item = &'a String>,
    family: Family,
    field: &str,
    ns: &str,
    name: &str,
    skipped: &mut Vec<Skipped>,
) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for s in list {
        match s.parse::<IpAddr>() {
            Ok(ip) if Family::of(&ip) != family => {}
            Ok(ip) if usable_unicast(ip) => out.push(ip),
            _ => skip(
                skipped,
                "Service",
                ns,
                name,
                format!("{field}: {s:?} is not a usable IP address; ignored"),
            ),
        }
    }
    out.sort();
    out.dedup();
    out
}

fn usable_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || v4.is_loopback())
        }
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast() || v6.is_loopback()),
    }
}

/// Names end up in rule comments and chain hashes: only what a DNS label may hold gets there.
fn safe_name(s: &str) -> bool {
    s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn port_u16(v: i32) -> Option<u16> {
    u16::try_from(v).ok().filter(|p| *p != 0)
}

fn service_ports(svc: &Service, family: Family, skipped: &mut Vec<Skipped>) -> Vec<ServicePort> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if ty == "ExternalName" {
        return Vec::new();
    }
    if !safe_name(ns) || !safe_name(name) {
        skip(
            skipped,
            "Service",
            ns,
            name,
            "metadata: name or namespace has characters a DNS label cannot".into(),
        );
        return Vec::new();
    }
    // `clusterIPs` (one per family), or `clusterIP` alone from an older server.
    let listed: Vec<&String> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().collect(),
        _ => spec.cluster_ip.iter().collect(),
    };
    if matches!(
        listed.first().map(|s| s.as_str()),
        None | Some("") | Some("None")
    ) {
        return Vec::new();
    }
    let mut cluster_ip = None;
    for s in listed {
        match s.parse::<IpAddr>() {
            Ok(ip) if Family::of(&ip) != family => {}
            Ok(ip) if usable_unicast(ip) => cluster_ip = Some(ip),
            _ => {
                skip(
                    skipped,
                    "Service",
                    ns,
                    name,
                    format!("spec.clusterIPs: {s:?} is not a usable IP address"),
                );
                return Vec::new();
            }
        }
    }
    // No address of this family: the Service is the other family's model's.
    let Some(cluster_ip) = cluster_ip else {
        return Vec::new();
    };
    let external_ips = parse_ip_list(
        spec.external_ips.iter().flatten(),
        family,
        "spec.externalIPs",
        ns,
        name,
        skipped,
    );
    let lb_strings: Vec<String> = if ty == "LoadBalancer" {
        svc.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.clone())
            .collect()
    } else {
        Vec::new()
    };
    let load_balancer_ips = parse_ip_list(
        &lb_strings,
        family,
        "status.loadBalancer.ingress.ip",
        ns,
        name,
        skipped,
    );
    let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| (1..=86400).contains(t))
            .unwrap_or(DEFAULT_AFFINITY_SECONDS)
    });
    let wants_node_ports = ty == "NodePort" || ty == "LoadBalancer";
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local")
        && (wants_node_ports || !external_ips.is_empty());
    let health_check_node_port = if external_local && ty == "LoadBalancer" {
        spec.health_check_node_port.and_then(port_u16)
    } else {
        None
    };
    let mut out = Vec::new();
    for p in spec.ports.iter().flatten() {
        let port_name = p.name.clone().unwrap_or_default();
        if !safe_name(&port_name) {
            skip(
                skipped,
                "Service",
                ns,
                name,
                "spec.ports.name: has characters a DNS label cannot".into(),
            );
            continue;
        }
        let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
            skip(
                skipped,
                "Service",
                ns,
                name,
                format!(
                    "spec.ports[{port_name}].protocol: {:?} is not TCP, UDP or SCTP",
                    p.protocol.as_deref().unwrap_or_default()
                ),
            );
            continue;
        };
        let Some(port) = port_u16(p.port) else {
            skip(
                skipped,
                "Service",
                ns,
                name,
                format!("spec.ports[{port_name}].port: {} is not in 1-65535", p.port),
            );
            continue;
        };
        let node_port = match p.node_port {
            Some(n) if wants_node_ports => match port_u16(n) {
                Some(n) => Some(n),
                None => {
                    skip(
                        skipped,
                        "Service",
                        ns,
                        name,
                        format!("spec.ports[{port_name}].nodePort: {n} is not in 1-65535"),
                    );
                    continue;
                }
            },
            _ => None,
        };
        out.push(ServicePort {
            id: ServicePortName {
                namespace: ns.to_string(),
                name: name.to_string(),
                port: port_name,
                protocol,
            },
            cluster_ip,
            port,
            node_port,
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            affinity_seconds,
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            external_local,
            health_check_node_port,
            endpoints: Vec::new(),
        });
    }
    out
}

fn add_slice(
    ports: &mut BTreeMap<ServicePortName, ServicePort>,
    slice: &EndpointSlice,
    family: Family,
    node: &str,
    skipped: &mut Vec<Skipped>,
) {
    if slice.address_type != family.name() {
        return;
    }
    let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
    let slice_name = slice.metadata.name.as_deref().unwrap_or_default();
    let Some(service) = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
    else {
        return;
    };
    for sp in slice.ports.iter().flatten() {
        let port_name = sp.name.clone().unwrap_or_default();
        let Some(protocol) = Protocol::parse(sp.protocol.as_deref()) else {
            skip(
                skipped,
                "EndpointSlice",
                ns,
                slice_name,
                format!("ports[{port_name}].protocol is not TCP, UDP or SCTP; ignored"),
            );
            continue;
        };
        let id = ServicePortName {
            namespace: ns.to_string(),
            name: service.clone(),
            port: port_name.clone(),
            protocol,
        };
        let Some(target) = ports.get_mut(&id) else {
            continue;
        };
        let Some(port) = sp.port.and_then(port_u16) else {
            skip(
                skipped,
                "EndpointSlice",
                ns,
                slice_name,
                format!("ports[{port_name}].port is not in 1-65535; ignored"),
            );
            continue;
        };
        for ep in &slice.endpoints {
            let cond = ep.conditions.clone().unwrap_or_default();
            let ready = cond.ready.unwrap_or(true);
            let serving = cond.serving.unwrap_or(ready);
            let terminating = cond.terminating.unwrap_or(false);
            let local = ep.node_name.as_deref() == Some(node);
            // kube uses only the first address of an endpoint.
            let Some(addr) = ep.addresses.first() else {
                continue;
            };
            match addr.parse::<IpAddr>() {
                Ok(ip) if Family::of(&ip) == family && usable_unicast(ip) => {
                    target.endpoints.push(Endpoint {
                        ip,
                        port,
                        ready,
                        serving,
                        terminating,
                        local,
                    })
                }
                _ => skip(
                    skipped,
                    "EndpointSlice",
                    ns,
                    slice_name,
                    format!(
                        "endpoints.addresses: {addr:?} is not a usable {} address; ignored",
                        family.name()
                    ),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }
    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    fn web() -> Service {
        svc(serde_json::json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "type": "NodePort",
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080},
                               {"name": "dns", "port": 53, "protocol": "UDP"}]}
        }))
    }

    fn web_slice(endpoints: serde_json::Value) -> EndpointSlice {
        slice(serde_json::json!({
            "metadata": {"namespace": "default", "name": "web-abc",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": endpoints
        }))
    }

    fn http(m: &Model) -> &ServicePort {
        m.ports.values().find(|p| p.id.port == "http").unwrap()
    }

    #[test]
    fn ports_and_endpoints_are_joined_by_name_and_protocol() {
        let s = web_slice(serde_json::json!([
            {"addresses": ["10.244.0.2"], "conditions": {"ready": true}, "nodeName": "n1"},
            {"addresses": ["10.244.1.2"], "nodeName": "n2"}
        ]));
        let (m, skipped) = Model::build([&web()], [&s], "n1");
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(m.ports.len(), 2);
        let p = http(&m);
        assert_eq!(p.cluster_ip, Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(p.node_port, Some(30080));
        assert_eq!(p.endpoints.len(), 2);
        assert!(p.endpoints.iter().all(|e| e.port == 8080 && e.ready));
        assert_eq!(p.endpoints.iter().filter(|e| e.local).count(), 1);
        let dns = m.ports.values().find(|p| p.id.port == "dns").unwrap();
        assert_eq!(dns.id.protocol, Protocol::Udp);
        assert!(dns.endpoints.iter().all(|e| e.port == 5353));
    }

    #[test]
    fn each_family_models_a_service_at_its_address_of_that_family() {
        let mut dual = web();
        let spec = dual.spec.as_mut().unwrap();
        spec.cluster_ip = Some("fd00:10:96::10".into());
        spec.cluster_ips = Some(vec!["fd00:10:96::10".into(), "10.96.0.11".into()]);
        spec.external_ips = Some(vec!["1.2.3.4".into(), "2001:db8::4".into()]);
        let v6_slice = slice(serde_json::json!({
            "metadata": {"namespace": "default", "name": "web-v6",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv6",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["fd00:244::2"]}]
        }));
        let v4_slice = web_slice(serde_json::json!([{"addresses": ["10.244.0.2"]}]));
        let build = |family, svc: &Service| {
            let (m, skipped) = Model::build_for(family, [svc], [&v6_slice, &v4_slice], "n1");
            assert!(skipped.is_empty(), "{skipped:?}");
            assert_eq!(m.family, family);
            m
        };
        let v4 = build(Family::V4, &dual);
        let p = http(&v4);
        assert_eq!(p.cluster_ip, Ipv4Addr::new(10, 96, 0, 11));
        assert_eq!(p.external_ips, vec![Ipv4Addr::new(1, 2, 3, 4)]);
        let ips: Vec<_> = p.cluster_endpoints().iter().map(|e| e.ip).collect();
        assert_eq!(ips, vec![Ipv4Addr::new(10, 244, 0, 2)]);
        let v6 = build(Family::V6, &dual);
        let p = http(&v6);
        assert_eq!(p.cluster_ip.to_string(), "fd00:10:96::10");
        assert_eq!(p.external_ips[0].to_string(), "2001:db8::4");
        let ips: Vec<_> = p
            .cluster_endpoints()
            .iter()
            .map(|e| e.ip.to_string())
            .collect();
        assert_eq!(ips, ["fd00:244::2"]);
        // An IPv6-only Service is the IPv6 model's alone.
        dual.spec.as_mut().unwrap().cluster_ips = Some(vec!["fd00:10:96::10".into()]);
        assert!(build(Family::V4, &dual).ports.is_empty());
        assert_eq!(build(Family::V6, &dual).ports.len(), 2);
    }

    #[test]
    fn terminating_endpoints_are_used_only_when_no_ready_ones_remain() {
        let s = web_slice(serde_json::json!([
            {"addresses": ["10.244.0.2"], "conditions": {"ready": true}},
            {"addresses": ["10.244.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.244.0.4"], "conditions": {"ready": false}}
        ]));
        let (m, _) = Model::build([&web()], [&s], "n1");
        let ips: Vec<_> = http(&m).cluster_endpoints().iter().map(|e| e.ip).collect();
        assert_eq!(ips, vec![Ipv4Addr::new(10, 244, 0, 2)]);
        let s = web_slice(serde_json::json!([
            {"addresses": ["10.244.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.244.0.4"], "conditions": {"ready": false}}
        ]));
        let (m, _) = Model::build([&web()], [&s], "n1");
        let ips: Vec<_> = http(&m).cluster_endpoints().iter().map(|e| e.ip).collect();
        assert_eq!(ips, vec![Ipv4Addr::new(10, 244, 0, 3)]);
    }

    #[test]
    fn local_policies_select_this_nodes_endpoints() {
        let mut s = web();
        let spec = s.spec.as_mut().unwrap();
        spec.internal_traffic_policy = Some("Local".into());
        spec.external_traffic_policy = Some("Local".into());
        spec.type_ = Some("LoadBalancer".into());
        spec.health_check_node_port = Some(32000);
        let sl = web_slice(serde_json::json!([
            {"addresses": ["10.244.0.2"], "nodeName": "n1"},
            {"addresses": ["10.244.1.2"], "nodeName": "n2"}
        ]));
        let (m, _) = Model::build([&s], [&sl], "n1");
        let p = http(&m);
        assert!(p.internal_local && p.external_local);
        assert_eq!(p.health_check_node_port, Some(32000));
        assert_eq!(p.cluster_endpoints().len(), 1);
        assert_eq!(p.external_endpoints().len(), 1);
        assert_eq!(p.local_ready_count(), 1);
        let (m, _) = Model::build([&s], [&sl], "n3");
        assert!(http(&m).cluster_endpoints().is_empty());
        assert_eq!(http(&m).endpoints.len(), 2);
    }

    #[test]
    fn bad_input_is_skipped_and_reported() {
        let bad = svc(serde_json::json!({
            "metadata": {"namespace": "default", "name": "bad"},
            "spec": {"clusterIP": "10.96.0.300", "ports": [{"port": 80}]}
        }));
        let odd = svc(serde_json::json!({
            "metadata": {"namespace": "default", "name": "odd"},
            "spec": {"clusterIP": "10.96.0.11", "externalIPs": ["1.2.3.4", "nope"],
                     "ports": [{"name": "a", "port": 70000}, {"name": "b", "port": 81, "protocol": "ICMP"},
                               {"name": "c", "port": 82}]}
        }));
        let sl = slice(serde_json::json!({
            "metadata": {"namespace": "default", "name": "odd-1",
                         "labels": {"kubernetes.io/service-name": "odd"}},
            "addressType": "IPv4",
            "ports": [{"name": "c", "port": 8082}],
            "endpoints": [{"addresses": ["10.244.0.2"]}, {"addresses": ["garbage"]},
                          {"addresses": ["127.0.0.1"]}]
        }));
        let (m, skipped) = Model::build([&bad, &odd], [&sl], "n1");
        assert_eq!(m.ports.len(), 1);
        let c = m.ports.values().next().unwrap();
        assert_eq!(c.id.port, "c");
        assert_eq!(c.external_ips, vec![Ipv4Addr::new(1, 2, 3, 4)]);
        assert_eq!(c.endpoints.len(), 1);
        let reasons: Vec<_> = skipped
            .iter()
            .map(|s| format!("{} {}: {}", s.kind, s.name, s.reason))
            .collect();
        assert_eq!(skipped.len(), 6, "{reasons:#?}");
        assert!(reasons.iter().any(|r| r.contains("bad: spec.clusterIP")));
        assert!(reasons.iter().any(|r| r.contains("ports[a].port: 70000")));
        assert!(reasons.iter().any(|r| r.contains("ports[b].protocol")));
    }

    #[test]
    fn headless_external_name_and_ipv6_services_are_not_proxied_quietly() {
        let headless = svc(serde_json::json!({"metadata": {"name": "h"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}));
        let ext = svc(serde_json::json!({"metadata": {"name": "e"},
            "spec": {"type": "ExternalName", "externalName": "example.org"}}));
        let v6 = svc(serde_json::json!({"metadata": {"name": "v6"},
            "spec": {"clusterIP": "fd00::1", "ports": [{"port": 80}]}}));
        let (m, skipped) = Model::build([&headless, &ext, &v6], [], "n1");
        assert!(m.ports.is_empty());
        assert!(skipped.is_empty());
    }

    #[test]
    fn affinity_timeout_defaults_and_bounds() {
        let mut s = web();
        s.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
        let (m, _) = Model::build([&s], [], "n1");
        assert_eq!(http(&m).affinity_seconds, Some(DEFAULT_AFFINITY_SECONDS));
        s.spec.as_mut().unwrap().session_affinity_config =
            serde_json::from_value(serde_json::json!({"clientIP": {"timeoutSeconds": 60}}))
                .unwrap();
        let (m, _) = Model::build([&s], [], "n1");
        assert_eq!(http(&m).affinity_seconds, Some(60));
    }

    #[test]
    fn stale_udp_endpoints_are_the_ones_that_went_away() {
        let two = web_slice(serde_json::json!([
            {"addresses": ["10.244.0.2"]}, {"addresses": ["10.244.0.3"]}
        ]));
        let one = web_slice(serde_json::json!([{"addresses": ["10.244.0.2"]}]));
        let (before, _) = Model::build([&web()], [&two], "n1");
        let (after, _) = Model::build([&web()], [&one], "n1");
        let stale: Vec<_> = before.stale_udp_endpoints(&after).into_iter().collect();
        assert_eq!(stale, vec![(Ipv4Addr::new(10, 244, 0, 3).into(), 5353)]);
        assert!(after.stale_udp_endpoints(&before).is_empty());
    }

    #[test]
    fn udp_services_gaining_endpoints_are_found() {
        let none = web_slice(serde_json::json!([]));
        let one = web_slice(serde_json::json!([{"addresses": ["10.244.0.2"]}]));
        let (empty, _) = Model::build([&web()], [&none], "n1");
        let (full, _) = Model::build([&web()], [&one], "n1");
        let gained: Vec<_> = empty
            .udp_services_gaining_endpoints(&full)
            .into_iter()
            .collect();
        // The UDP port has no nodePort in this Service; its ClusterIP gained endpoints.
        assert_eq!(
            gained,
            vec![ServiceDst::Addr(Ipv4Addr::new(10, 96, 0, 10).into(), 53)]
        );
        assert!(full.udp_services_gaining_endpoints(&full).is_empty());
    }

    #[test]
    fn the_builder_rebuilds_only_services_whose_objects_changed() {
        let versioned = |mut s: Service, v: &str| {
            s.metadata.resource_version = Some(v.into());
            s
        };
        let versioned_slice = |mut s: EndpointSlice, v: &str| {
            s.metadata.resource_version = Some(v.into());
            s
        };
        let mut other = web();
        other.metadata.name = Some("other".into());
        other.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.11".into());
        let services = [versioned(web(), "1"), versioned(other, "2")];
        let one = web_slice(serde_json::json!([{"addresses": ["10.244.0.2"]}]));
        let two = web_slice(serde_json::json!([
            {"addresses": ["10.244.0.2"]}, {"addresses": ["10.244.0.3"]}
        ]));
        // A slice of no Service: its own faults are still reported.
        let orphan = slice(serde_json::json!({
            "metadata": {"namespace": "default", "name": "gone-1",
                         "labels": {"kubernetes.io/service-name": "gone"}},
            "addressType": "IPv4", "ports": [{"port": 1, "protocol": "ICMP"}], "endpoints": []
        }));
        let web_http = |m: &Model| {
            let p = m
                .ports
                .values()
                .find(|p| p.id.name == "web" && p.id.port == "http");
            p.unwrap().endpoints.len()
        };
        let mut b = Builder::new(Family::V4, "n1");
        let built = |b: &mut Builder, slices: &[EndpointSlice]| {
            let (model, skipped) = b.build(&services, slices);
            (
                (model.clone(), skipped),
                Model::build(&services, slices, "n1"),
            )
        };
        let slices = [versioned_slice(one.clone(), "3"), orphan.clone()];
        let (got, fresh) = built(&mut b, &slices);
        assert_eq!(got, fresh);
        assert_eq!(got.1.len(), 1, "{:?}", got.1);
        // The same versions: the Service's ports are kept, not read again (the slice's other
        // content under the same version shows it).
        let (got, _) = built(&mut b, &[versioned_slice(two.clone(), "3"), orphan.clone()]);
        assert_eq!(got.0, fresh.0);
        // A new version is read; without versions every object is read every time.
        let (got, fresh) = built(&mut b, &[versioned_slice(two.clone(), "4"), orphan]);
        assert_eq!(got, fresh);
        assert_eq!(web_http(&got.0), 2);
        let (got, fresh) = built(&mut b, &[one]);
        assert_eq!(got, fresh);
        assert_eq!(web_http(&got.0), 1);
        // A Service gone takes its ports along.
        let (got, _) = b.build(&services[1..], &[two]);
        assert!(!got.ports.is_empty());
        assert!(got.ports.keys().all(|id| id.name == "other"), "{got:?}");
    }

    #[test]
    fn chain_hashes_are_stable_and_short() {
        let id = ServicePortName {
            namespace: "default".into(),
            name: "web".into(),
            port: "http".into(),
            protocol: Protocol::Tcp,
        };
        let a = id.hash("");
        assert_eq!(a.len(), 16);
        assert_eq!(a, id.hash(""));
        assert_ne!(a, id.hash("10.244.0.2:8080"));
        assert!(
            a.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        );
    }
}
