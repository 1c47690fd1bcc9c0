//! The cluster's DNS records, as the Kubernetes DNS specification (schema 1.1.0) defines them,
//! computed from the Services and EndpointSlices the proxy already caches.
//!
//! [`ClusterIndex::build`] turns the objects into hash maps keyed by lower-cased name, holding
//! ready-made hickory [`Record`]s, so a query costs one hash lookup whatever the number of
//! Services, and answering it borrows the records instead of building them. The index is
//! immutable: a change to the caches builds a new one that replaces the old (see
//! `DnsServer::update`).

use std::borrow::{Borrow, Cow};
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tracing::debug;

/// The schema version published at `dns-version.<zone>` (spec §2.2).
const SCHEMA_VERSION: &str = "1.1.0";
/// The label linking an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The legacy annotation that, like `publishNotReadyAddresses`, publishes unready endpoints.
const TOLERATE_UNREADY_ANNOTATION: &str = "service.alpha.kubernetes.io/tolerate-unready-endpoints";

/// What the records depend on besides the objects.
#[derive(Clone, Debug)]
pub struct ZoneConfig {
    /// The cluster domain, e.g. `cluster.local`.
    pub domain: Name,
    /// TTL of every record served from the cluster zone, and the SOA minimum (negative TTL).
    pub ttl: u32,
    /// The address the DNS server answers on, published as `ns.dns.<zone>` (the SOA's primary).
    pub nameserver: Option<IpAddr>,
}

impl ZoneConfig {
    /// `domain` as given on the command line (`cluster.local`, with or without the final dot).
    pub fn new(domain: &str, ttl: u32, nameserver: Option<IpAddr>) -> Result<Self, InvalidDomain> {
        let invalid = || InvalidDomain(domain.to_string());
        let trimmed = domain.trim_end_matches('.');
        if trimmed.is_empty() || !trimmed.split('.').all(is_dns_label) {
            return Err(invalid());
        }
        let mut name = Name::from_ascii(trimmed).map_err(|_| invalid())?;
        name.set_fqdn(true);
        Ok(Self {
            domain: name.to_lowercase(),
            ttl,
            nameserver,
        })
    }
}

/// A cluster domain that is not a dotted sequence of DNS labels.
#[derive(Debug, thiserror::Error)]
#[error("--cluster-domain {0:?} is not a DNS domain name (labels of a-z, 0-9 and '-')")]
pub struct InvalidDomain(String);

/// The answer to one query from the cluster's records.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// The name is ours (in the cluster domain, or a reverse name of a cluster address).
    Authoritative(Answer<'a>),
    /// The name is not ours: ask the upstream resolvers.
    Outside,
}

/// An authoritative answer: the response code, the sections, and for an ExternalName the
/// target the server should resolve further for a client that asked for addresses.
#[derive(Debug)]
pub struct Answer<'a> {
    pub code: ResponseCode,
    pub answers: Cow<'a, [Record]>,
    pub additionals: &'a [Record],
    /// The zone's SOA, in the authority section of NXDOMAIN and no-data answers.
    pub soa: Option<&'a Record>,
    /// The CNAME target still to be resolved (ExternalName Services).
    pub chase: Option<&'a Name>,
}

/// The records of one name in the cluster zone. A name with no records at all exists too: an
/// empty non-terminal such as `<ns>.svc.<zone>`, which answers no-data rather than NXDOMAIN
/// (RFC 8020: NXDOMAIN would deny every name below it).
#[derive(Debug, Default)]
struct Node {
    a: Vec<Record>,
    aaaa: Vec<Record>,
    srv: Vec<Record>,
    /// The addresses of the SRV targets, for the additional section.
    srv_targets: Vec<Record>,
    cname: Option<Box<Record>>,
    txt: Vec<Record>,
    ns: Vec<Record>,
}

/// The cluster zone and the reverse names of cluster addresses, ready to answer queries.
#[derive(Debug)]
pub struct ClusterIndex {
    config: ZoneConfig,
    soa: Record,
    names: HashMap<LowerName, Node>,
    reverse: HashMap<LowerName, Vec<Record>>,
    /// The zone apex.
    apex: LowerName,
    /// `pod.<zone>`, under which `<a-b-c-d>.<ns>.pod.<zone>` names are synthesised.
    pod_zone: LowerName,
}

impl ClusterIndex {
    /// Builds the index from the current Services and EndpointSlices (kube reflector stores hand
    /// out `Arc`s; plain objects and references work too). Objects whose names cannot form DNS
    /// names are skipped.
    pub fn build<S, E>(
        config: ZoneConfig,
        services: impl IntoIterator<Item = S>,
        slices: impl IntoIterator<Item = E>,
    ) -> Self
    where
        S: Borrow<Service>,
        E: Borrow<EndpointSlice>,
    {
        let mut builder = Builder::new(config);
        let mut slices_by_service: HashMap<(String, String), Vec<E>> = HashMap::new();
        for slice in slices {
            let s = slice.borrow();
            let service = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let (Some(ns), Some(service)) = (&s.metadata.namespace, service) {
                slices_by_service
                    .entry((ns.clone(), service.clone()))
                    .or_default()
                    .push(slice);
            }
        }
        for service in services {
            let service = service.borrow();
            let (Some(ns), Some(name)) = (&service.metadata.namespace, &service.metadata.name)
            else {
                continue;
            };
            let slices = slices_by_service
                .get(&(ns.clone(), name.clone()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            builder.add_service(service, ns, name, slices.iter().map(Borrow::borrow));
        }
        builder.finish()
    }

    /// The zone's configuration.
    pub fn config(&self) -> &ZoneConfig {
        &self.config
    }

    /// Answers `qtype` for `name`.
    pub fn lookup(&self, name: &LowerName, qtype: RecordType) -> Lookup<'_> {
        if let Some(ptrs) = self.reverse.get(name) {
            return match qtype {
                RecordType::PTR | RecordType::ANY => self.found(Cow::Borrowed(ptrs), &[], None),
                // Other types of a reverse name are the reverse zone owner's business.
                _ => Lookup::Outside,
            };
        }
        if !self.apex.zone_of(name) {
            return Lookup::Outside;
        }
        let Some(node) = self.names.get(name) else {
            if let Some(record) = self.pod_record(name, qtype) {
                return self.found(Cow::Owned(vec![record]), &[], None);
            }
            return Lookup::Authoritative(Answer {
                code: ResponseCode::NXDomain,
                answers: Cow::Borrowed(&[]),
                additionals: &[],
                soa: Some(&self.soa),
                chase: None,
            });
        };
        if let Some(cname) = &node.cname {
            let chase = match (qtype, &cname.data) {
                (RecordType::CNAME, _) => None,
                (_, RData::CNAME(target)) => Some(&target.0),
                _ => None,
            };
            return self.found(
                Cow::Borrowed(std::slice::from_ref(cname.as_ref())),
                &[],
                chase,
            );
        }
        let (answers, additionals): (&[Record], &[Record]) = match qtype {
            RecordType::A => (&node.a, &[]),
            RecordType::AAAA => (&node.aaaa, &[]),
            RecordType::SRV => (&node.srv, &node.srv_targets),
            RecordType::TXT => (&node.txt, &[]),
            RecordType::NS => (&node.ns, &[]),
            RecordType::SOA if name == &self.apex => (std::slice::from_ref(&self.soa), &[]),
            // RFC 8482 lets ANY be answered with a subset: the addresses.
            RecordType::ANY if !node.a.is_empty() => (&node.a, &[]),
            RecordType::ANY => (&node.aaaa, &[]),
            _ => (&[], &[]),
        };
        self.found(Cow::Borrowed(answers), additionals, None)
    }

    fn found<'a>(
        &'a self,
        answers: Cow<'a, [Record]>,
        additionals: &'a [Record],
        chase: Option<&'a Name>,
    ) -> Lookup<'a> {
        let soa = answers.is_empty().then_some(&self.soa);
        Lookup::Authoritative(Answer {
            code: ResponseCode::NoError,
            answers,
            additionals,
            soa,
            chase,
        })
    }

    /// `<a-b-c-d>.<ns>.pod.<zone>` → A a.b.c.d (IPv6: `2001-db8--1` → AAAA 2001:db8::1), as
    /// kube-dns and CoreDNS's `pods insecure` mode answer them: from the name alone.
    fn pod_record(&self, name: &LowerName, qtype: RecordType) -> Option<Record> {
        if name.num_labels() != self.pod_zone.num_labels() + 2 || !self.pod_zone.zone_of(name) {
            return None;
        }
        let name = Name::from(name);
        let first = name.iter().next()?;
        let first = std::str::from_utf8(first).ok()?;
        let rdata = match (qtype, first.replace('-', ".").parse::<Ipv4Addr>()) {
            (RecordType::A, Ok(ip)) => RData::A(A(ip)),
            (_, Ok(_)) => return None,
            (_, Err(_)) => match (qtype, first.replace('-', ":").parse::<Ipv6Addr>()) {
                (RecordType::AAAA, Ok(ip)) => RData::AAAA(AAAA(ip)),
                _ => return None,
            },
        };
        Some(Record::from_rdata(name, self.config.ttl, rdata))
    }

    /// How many names the index holds (forward and reverse), for logs.
    pub fn len(&self) -> usize {
        self.names.len() + self.reverse.len()
    }

    /// Whether the index holds no names (never: the zone apex is always there).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Collects records name by name while the Services are walked.
struct Builder {
    config: ZoneConfig,
    names: HashMap<LowerName, Node>,
    reverse: HashMap<LowerName, Vec<Record>>,
}

/// One endpoint address of a headless Service, with the hostname it is published under.
struct Endpoint {
    ip: IpAddr,
    name: Name,
}

impl Builder {
    fn new(config: ZoneConfig) -> Self {
        let mut builder = Self {
            config,
            names: HashMap::new(),
            reverse: HashMap::new(),
        };
        let domain = builder.config.domain.clone();
        let ttl = builder.config.ttl;
        let nameserver = builder
            .child(&["ns", "dns"])
            .expect("ns.dns is a valid name");
        builder.node(&domain).ns.push(Record::from_rdata(
            domain.clone(),
            ttl,
            RData::NS(NS(nameserver.clone())),
        ));
        if let Some(ip) = builder.config.nameserver {
            builder.add_address(&nameserver, ip);
        }
        let version = builder
            .child(&["dns-version"])
            .expect("dns-version is a valid name");
        builder.node(&version).txt.push(Record::from_rdata(
            version.clone(),
            ttl,
            RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])),
        ));
        for zone in [["svc"], ["pod"]] {
            let name = builder.child(&zone).expect("svc and pod are valid names");
            builder.node(&name);
        }
        builder
    }

    /// `<labels…>.<zone>`, or None when a label is not a DNS label.
    fn child(&self, labels: &[&str]) -> Option<Name> {
        if !labels.iter().all(|l| is_dns_label(l)) {
            return None;
        }
        Name::from_labels(labels.iter().map(|l| l.to_ascii_lowercase().into_bytes()))
            .ok()?
            .append_domain(&self.config.domain)
            .ok()
    }

    /// The node of `name`, created with its empty ancestors up to the zone apex. Every node is
    /// made here, so an existing ancestor has all of its own: the walk up stops there.
    fn node(&mut self, name: &Name) -> &mut Node {
        let mut ancestor = name.base_name();
        while ancestor.num_labels() > self.config.domain.num_labels() {
            match self.names.entry(LowerName::new(&ancestor)) {
                Entry::Occupied(_) => break,
                Entry::Vacant(vacant) => {
                    vacant.insert(Node::default());
                }
            }
            ancestor = ancestor.base_name();
        }
        self.names.entry(LowerName::new(name)).or_default()
    }

    fn add_address(&mut self, name: &Name, ip: IpAddr) {
        let record = address_record(name, ip, self.config.ttl);
        let node = self.node(name);
        match ip {
            IpAddr::V4(_) => node.a.push(record),
            IpAddr::V6(_) => node.aaaa.push(record),
        }
    }

    fn add_ptr(&mut self, ip: IpAddr, target: &Name) {
        let reverse = reverse_name(ip);
        let record = Record::from_rdata(
            reverse.clone(),
            self.config.ttl,
            RData::PTR(PTR(target.clone())),
        );
        self.reverse
            .entry(LowerName::new(&reverse))
            .or_default()
            .push(record);
    }

    /// `_<port>._<proto>.<service>` → `srv`, with the target's addresses as additionals.
    fn add_srv(
        &mut self,
        service: &Name,
        (port, protocol): (&str, &str),
        srv: SRV,
        target_addresses: &[Record],
    ) {
        let protocol = format!("_{}", protocol.to_ascii_lowercase());
        let port = format!("_{port}");
        let Some(name) = prepend(service, &[&port, &protocol]) else {
            return;
        };
        let ttl = self.config.ttl;
        let node = self.node(&name);
        node.srv
            .push(Record::from_rdata(name, ttl, RData::SRV(srv)));
        node.srv_targets.extend_from_slice(target_addresses);
    }

    fn add_service<'e>(
        &mut self,
        service: &Service,
        ns: &str,
        name: &str,
        slices: impl Iterator<Item = &'e EndpointSlice>,
    ) {
        let Some(service_name) = self.child(&[name, ns, "svc"]) else {
            debug!(%ns, %name, "Service name is not a DNS label; no records");
            return;
        };
        let Some(spec) = &service.spec else { return };
        if spec.type_.as_deref() == Some("ExternalName") {
            let Some(target) = spec.external_name.as_deref().and_then(external_name) else {
                debug!(%ns, %name, "ExternalName is not a domain name; no records");
                return;
            };
            let record = Record::from_rdata(
                service_name.clone(),
                self.config.ttl,
                RData::CNAME(CNAME(target)),
            );
            self.node(&service_name).cname = Some(Box::new(record));
            return;
        }
        let cluster_ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
            (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
            (_, Some(ip)) => vec![ip.as_str()],
            _ => return,
        };
        if cluster_ips.first() == Some(&"None") {
            let publish_unready = spec.publish_not_ready_addresses == Some(true)
                || service
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(TOLERATE_UNREADY_ANNOTATION))
                    .is_some_and(|v| v == "true");
            self.add_headless(&service_name, slices, publish_unready);
            return;
        }
        let ips: Vec<IpAddr> = cluster_ips
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        for &ip in &ips {
            self.add_address(&service_name, ip);
            self.add_ptr(ip, &service_name);
        }
        let node = self.node(&service_name);
        let addresses: Vec<Record> = node.a.iter().chain(&node.aaaa).cloned().collect();
        for port in spec.ports.iter().flatten() {
            let (Some(port_name), Ok(number)) = (&port.name, u16::try_from(port.port)) else {
                continue;
            };
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            let srv = SRV::new(0, 100, number, service_name.clone());
            self.add_srv(&service_name, (port_name, protocol), srv, &addresses);
        }
    }

    /// A headless Service: its name resolves to the published endpoints' addresses, each
    /// endpoint has a name of its own, and SRV records point at those names.
    fn add_headless<'e>(
        &mut self,
        service_name: &Name,
        slices: impl Iterator<Item = &'e EndpointSlice>,
        publish_unready: bool,
    ) {
        let mut endpoints: Vec<Endpoint> = Vec::new();
        let mut seen: BTreeSet<(IpAddr, Name)> = BTreeSet::new();
        let mut ports: BTreeSet<(String, String, u16)> = BTreeSet::new();
        for slice in slices {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            for port in slice.ports.iter().flatten() {
                let (Some(name), Some(number)) = (&port.name, port.port) else {
                    continue;
                };
                let Ok(number) = u16::try_from(number) else {
                    continue;
                };
                let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".to_string());
                if is_dns_label(name) {
                    ports.insert((name.clone(), protocol, number));
                }
            }
            for endpoint in &slice.endpoints {
                // An unset `ready` means ready (the API's contract for consumers).
                let ready = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true);
                if !ready && !publish_unready {
                    continue;
                }
                for address in &endpoint.addresses {
                    let Ok(ip) = address.parse::<IpAddr>() else {
                        continue;
                    };
                    // An endpoint without a hostname is named by its dashed address, as
                    // CoreDNS names it (the spec leaves the identifier to the implementation).
                    let hostname = endpoint
                        .hostname
                        .clone()
                        .filter(|h| is_dns_label(h))
                        .unwrap_or_else(|| dashed(ip));
                    let Some(name) = prepend(service_name, &[&hostname.to_ascii_lowercase()])
                    else {
                        continue;
                    };
                    if seen.insert((ip, name.clone())) {
                        endpoints.push(Endpoint { ip, name });
                    }
                }
            }
        }
        if endpoints.is_empty() {
            // No published endpoint: the name does not exist (spec §2.4.1: NXDOMAIN).
            return;
        }
        let mut published: BTreeSet<IpAddr> = BTreeSet::new();
        for endpoint in &endpoints {
            if published.insert(endpoint.ip) {
                self.add_address(service_name, endpoint.ip);
            }
            self.add_address(&endpoint.name, endpoint.ip);
            self.add_ptr(endpoint.ip, &endpoint.name);
        }
        for (port_name, protocol, number) in &ports {
            let mut targets: BTreeSet<&Name> = BTreeSet::new();
            for endpoint in &endpoints {
                if !targets.insert(&endpoint.name) {
                    continue;
                }
                let addresses: Vec<Record> = endpoints
                    .iter()
                    .filter(|e| e.name == endpoint.name)
                    .map(|e| address_record(&e.name, e.ip, self.config.ttl))
                    .collect();
                let srv = SRV::new(0, 100, *number, endpoint.name.clone());
                self.add_srv(service_name, (port_name, protocol), srv, &addresses);
            }
        }
    }

    fn finish(mut self) -> ClusterIndex {
        // Most record lists hold one record: without this each would keep room for four.
        for node in self.names.values_mut() {
            for records in [
                &mut node.a,
                &mut node.aaaa,
                &mut node.srv,
                &mut node.srv_targets,
                &mut node.txt,
                &mut node.ns,
            ] {
                records.shrink_to_fit();
            }
        }
        self.reverse.values_mut().for_each(Vec::shrink_to_fit);
        self.names.shrink_to_fit();
        self.reverse.shrink_to_fit();
        let domain = self.config.domain.clone();
        let ttl = self.config.ttl;
        let nameserver = prepend(&domain, &["ns", "dns"]).expect("ns.dns is a valid name");
        let hostmaster = prepend(&domain, &["hostmaster"]).expect("hostmaster is a valid name");
        // The serial only has to grow when the zone changes; the build time in seconds does.
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        let soa = SOA::new(nameserver, hostmaster, serial, 7200, 1800, 86400, ttl);
        let pod_zone = LowerName::new(&prepend(&domain, &["pod"]).expect("pod is a valid name"));
        ClusterIndex {
            apex: LowerName::new(&domain),
            soa: Record::from_rdata(domain, ttl, RData::SOA(soa)),
            config: self.config,
            names: self.names,
            reverse: self.reverse,
            pod_zone,
        }
    }
}

fn address_record(name: &Name, ip: IpAddr, ttl: u32) -> Record {
    let rdata = match ip {
        IpAddr::V4(ip) => RData::A(A(ip)),
        IpAddr::V6(ip) => RData::AAAA(AAAA(ip)),
    };
    Record::from_rdata(name.clone(), ttl, rdata)
}

/// `labels…` in front of `name` (first label leftmost).
fn prepend(name: &Name, labels: &[&str]) -> Option<Name> {
    let mut out = name.clone();
    for label in labels.iter().rev() {
        out = out.prepend_label(label.as_bytes()).ok()?;
    }
    Some(out)
}

/// `10.96.0.1` → `1.0.96.10.in-addr.arpa.`; IPv6 by nibbles under `ip6.arpa.`.
fn reverse_name(ip: IpAddr) -> Name {
    let mut name = Name::from(ip);
    name.set_fqdn(true);
    name
}

/// `10.244.1.5` → `10-244-1-5`; `2001:db8::1` → `2001-db8--1`.
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// An ExternalName (`www.example.com`, with or without the final dot) as an absolute name.
fn external_name(value: &str) -> Option<Name> {
    let trimmed = value.trim_end_matches('.');
    if trimmed.is_empty() || trimmed.len() > 253 || trimmed.parse::<IpAddr>().is_ok() {
        return None;
    }
    if !trimmed
        .split('.')
        .all(|l| is_dns_label(l) || is_underscore_label(l))
    {
        return None;
    }
    let mut name = Name::from_ascii(trimmed).ok()?;
    name.set_fqdn(true);
    Some(name)
}

/// An RFC 1123 label: 1-63 of a-z, A-Z, 0-9 and '-', not starting or ending with '-'.
fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// Service-style labels such as `_sip` that may appear in an ExternalName.
fn is_underscore_label(label: &str) -> bool {
    label.strip_prefix('_').is_some_and(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{
        Endpoint as SliceEndpoint, EndpointConditions, EndpointPort,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::str::FromStr;

    fn meta(ns: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        }
    }

    fn port(name: Option<&str>, protocol: &str, number: i32) -> ServicePort {
        ServicePort {
            name: name.map(Into::into),
            protocol: Some(protocol.into()),
            port: number,
            ..Default::default()
        }
    }

    fn cluster_ip(ns: &str, name: &str, ips: &[&str], ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: meta(ns, name),
            spec: Some(ServiceSpec {
                cluster_ip: Some(ips[0].into()),
                cluster_ips: Some(ips.iter().map(|s| s.to_string()).collect()),
                ports: Some(ports),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn headless(ns: &str, name: &str, publish_unready: bool) -> Service {
        Service {
            metadata: meta(ns, name),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                publish_not_ready_addresses: Some(publish_unready),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn external(ns: &str, name: &str, target: &str) -> Service {
        Service {
            metadata: meta(ns, name),
            spec: Some(ServiceSpec {
                type_: Some("ExternalName".into()),
                external_name: Some(target.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(
        ns: &str,
        service: &str,
        endpoints: &[(&str, Option<&str>, Option<bool>)],
    ) -> EndpointSlice {
        let mut metadata = meta(ns, &format!("{service}-abc"));
        metadata.labels = Some([(SERVICE_NAME_LABEL.to_string(), service.to_string())].into());
        EndpointSlice {
            metadata,
            address_type: "IPv4".into(),
            endpoints: endpoints
                .iter()
                .map(|(ip, hostname, ready)| SliceEndpoint {
                    addresses: vec![ip.to_string()],
                    hostname: hostname.map(Into::into),
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                port: Some(8080),
                ..Default::default()
            }]),
        }
    }

    fn index(services: &[Service], slices: &[EndpointSlice]) -> ClusterIndex {
        let zone =
            ZoneConfig::new("Cluster.Local.", 5, Some("10.96.0.10".parse().unwrap())).unwrap();
        ClusterIndex::build(zone, services, slices)
    }

    fn ask<'a>(index: &'a ClusterIndex, name: &str, qtype: RecordType) -> Answer<'a> {
        match index.lookup(&LowerName::from_str(name).unwrap(), qtype) {
            Lookup::Authoritative(answer) => answer,
            Lookup::Outside => panic!("{name} {qtype} was not answered from the cluster"),
        }
    }

    fn data(answer: &Answer<'_>) -> Vec<String> {
        let mut out: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
        out.sort();
        out
    }

    #[test]
    fn cluster_ip_service_a_aaaa_srv_ptr() {
        let svc = cluster_ip(
            "shop",
            "web",
            &["10.96.0.20", "fd00::20"],
            vec![port(Some("http"), "TCP", 80), port(None, "UDP", 53)],
        );
        let index = index(&[svc], &[]);
        let a = ask(&index, "web.shop.svc.cluster.local.", RecordType::A);
        assert_eq!(a.code, ResponseCode::NoError);
        assert_eq!(data(&a), ["10.96.0.20"]);
        assert_eq!(a.answers[0].ttl, 5);
        // Case-insensitive (spec §2.1).
        let a = ask(&index, "WEB.Shop.svc.cluster.local.", RecordType::A);
        assert_eq!(data(&a), ["10.96.0.20"]);
        let aaaa = ask(&index, "web.shop.svc.cluster.local.", RecordType::AAAA);
        assert_eq!(data(&aaaa), ["fd00::20"]);
        let srv = ask(
            &index,
            "_http._tcp.web.shop.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(data(&srv), ["0 100 80 web.shop.svc.cluster.local."]);
        assert_eq!(srv.additionals.len(), 2, "the target's A and AAAA");
        let ptr = ask(&index, "20.0.96.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(data(&ptr), ["web.shop.svc.cluster.local."]);
        let ptr6 = ask(
            &index,
            "0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
            RecordType::PTR,
        );
        assert_eq!(data(&ptr6), ["web.shop.svc.cluster.local."]);
        // An unnamed port has no SRV record.
        let udp = ask(
            &index,
            "_dns._udp.web.shop.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(udp.code, ResponseCode::NXDomain);
        // A type the name lacks: no data, with the SOA.
        let mx = ask(&index, "web.shop.svc.cluster.local.", RecordType::MX);
        assert_eq!(mx.code, ResponseCode::NoError);
        assert!(mx.answers.is_empty() && mx.soa.is_some());
    }

    #[test]
    fn headless_service_publishes_ready_endpoints_and_hostnames() {
        let svc = headless("db", "pg", false);
        let slices = [slice(
            "db",
            "pg",
            &[
                ("10.244.1.5", Some("pg-0"), Some(true)),
                ("10.244.2.6", Some("pg-1"), None),
                ("10.244.3.7", None, Some(true)),
                ("10.244.4.8", Some("pg-3"), Some(false)),
            ],
        )];
        let index = index(&[svc], &slices);
        let a = ask(&index, "pg.db.svc.cluster.local.", RecordType::A);
        assert_eq!(data(&a), ["10.244.1.5", "10.244.2.6", "10.244.3.7"]);
        let pet = ask(&index, "pg-0.pg.db.svc.cluster.local.", RecordType::A);
        assert_eq!(data(&pet), ["10.244.1.5"]);
        let unnamed = ask(&index, "10-244-3-7.pg.db.svc.cluster.local.", RecordType::A);
        assert_eq!(data(&unnamed), ["10.244.3.7"]);
        let unready = ask(&index, "pg-3.pg.db.svc.cluster.local.", RecordType::A);
        assert_eq!(unready.code, ResponseCode::NXDomain);
        let srv = ask(
            &index,
            "_http._tcp.pg.db.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(
            data(&srv),
            [
                "0 100 8080 10-244-3-7.pg.db.svc.cluster.local.",
                "0 100 8080 pg-0.pg.db.svc.cluster.local.",
                "0 100 8080 pg-1.pg.db.svc.cluster.local.",
            ]
        );
        assert_eq!(srv.additionals.len(), 3);
        let ptr = ask(&index, "5.1.244.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(data(&ptr), ["pg-0.pg.db.svc.cluster.local."]);
    }

    #[test]
    fn publish_not_ready_addresses_includes_unready_endpoints() {
        let slices = [slice(
            "db",
            "pg",
            &[("10.244.4.8", Some("pg-3"), Some(false))],
        )];
        let index = index(&[headless("db", "pg", true)], &slices);
        let a = ask(&index, "pg-3.pg.db.svc.cluster.local.", RecordType::A);
        assert_eq!(data(&a), ["10.244.4.8"]);
    }

    #[test]
    fn headless_service_without_ready_endpoints_is_nxdomain() {
        let slices = [slice("db", "pg", &[("10.244.4.8", None, Some(false))])];
        let index = index(&[headless("db", "pg", false)], &slices);
        let a = ask(&index, "pg.db.svc.cluster.local.", RecordType::A);
        assert_eq!(a.code, ResponseCode::NXDomain);
        assert!(a.soa.is_some());
    }

    #[test]
    fn external_name_is_a_cname_to_chase() {
        let index = index(&[external("shop", "payments", "api.example.com.")], &[]);
        let a = ask(&index, "payments.shop.svc.cluster.local.", RecordType::A);
        assert_eq!(data(&a), ["api.example.com."]);
        assert_eq!(
            a.chase.map(|n| n.to_string()).as_deref(),
            Some("api.example.com.")
        );
        let cname = ask(
            &index,
            "payments.shop.svc.cluster.local.",
            RecordType::CNAME,
        );
        assert!(cname.chase.is_none());
        // An address is not a name.
        let index = super::ClusterIndex::build(
            index.config().clone(),
            &[external("shop", "bad", "192.0.2.1")],
            &[] as &[EndpointSlice],
        );
        assert_eq!(
            ask(&index, "bad.shop.svc.cluster.local.", RecordType::A).code,
            ResponseCode::NXDomain
        );
    }

    #[test]
    fn unknown_cluster_names_are_nxdomain_with_soa_and_outside_names_forwarded() {
        let index = index(
            &[cluster_ip("default", "web", &["10.96.0.20"], vec![])],
            &[],
        );
        // An ndots:5 search-path miss.
        let miss = ask(
            &index,
            "example.com.default.svc.cluster.local.",
            RecordType::A,
        );
        assert_eq!(miss.code, ResponseCode::NXDomain);
        let soa = miss.soa.expect("SOA in the authority section");
        assert_eq!(soa.name.to_string(), "cluster.local.");
        match &soa.data {
            RData::SOA(soa) => assert_eq!(soa.minimum, 5),
            other => panic!("not an SOA: {other:?}"),
        }
        // Empty non-terminals exist (no data, not NXDOMAIN).
        for name in [
            "default.svc.cluster.local.",
            "svc.cluster.local.",
            "cluster.local.",
        ] {
            assert_eq!(
                ask(&index, name, RecordType::A).code,
                ResponseCode::NoError,
                "{name}"
            );
        }
        assert!(matches!(
            index.lookup(&LowerName::from_str("example.com.").unwrap(), RecordType::A),
            Lookup::Outside
        ));
        assert!(matches!(
            index.lookup(
                &LowerName::from_str("1.2.0.192.in-addr.arpa.").unwrap(),
                RecordType::PTR
            ),
            Lookup::Outside
        ));
    }

    #[test]
    fn pod_names_zone_records_and_hostile_names() {
        let index = index(
            &[cluster_ip("default", "bad.name", &["10.96.0.21"], vec![])],
            &[],
        );
        let pod = ask(
            &index,
            "10-244-1-5.default.pod.cluster.local.",
            RecordType::A,
        );
        assert_eq!(data(&pod), ["10.244.1.5"]);
        let pod6 = ask(
            &index,
            "fd00--5.default.pod.cluster.local.",
            RecordType::AAAA,
        );
        assert_eq!(data(&pod6), ["fd00::5"]);
        let bad = ask(
            &index,
            "not-an-ip.default.pod.cluster.local.",
            RecordType::A,
        );
        assert_eq!(bad.code, ResponseCode::NXDomain);
        let version = ask(&index, "dns-version.cluster.local.", RecordType::TXT);
        assert_eq!(data(&version), ["1.1.0"]);
        let ns = ask(&index, "ns.dns.cluster.local.", RecordType::A);
        assert_eq!(data(&ns), ["10.96.0.10"]);
        let soa = ask(&index, "cluster.local.", RecordType::SOA);
        assert_eq!(soa.answers.len(), 1);
        // A Service name with a dot would have forged a name one level up: skipped.
        let forged = ask(&index, "name.default.svc.cluster.local.", RecordType::A);
        assert_eq!(forged.code, ResponseCode::NXDomain);
        assert!(ZoneConfig::new("bad domain", 5, None).is_err());
    }

    #[test]
    fn many_services_each_have_their_names() {
        // Not a timing assertion: the index holds one entry per name, found by hash.
        let services: Vec<Service> = (0..2000)
            .map(|i| {
                cluster_ip(
                    "ns",
                    &format!("svc-{i}"),
                    &[&format!("10.96.{}.{}", i / 250, i % 250 + 1)],
                    vec![port(Some("http"), "TCP", 80)],
                )
            })
            .collect();
        let index = index(&services, &[]);
        let a = ask(&index, "svc-1999.ns.svc.cluster.local.", RecordType::A);
        assert_eq!(data(&a), ["10.96.7.250"]);
        assert!(index.len() >= 3 * 2000);
    }
}
