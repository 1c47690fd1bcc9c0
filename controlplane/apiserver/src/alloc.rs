//! Service address and NodePort allocation: ClusterIPs from the Service CIDRs (one per IP
//! family, as kube-apiserver's `--service-cluster-ip-range v4,v6`), NodePorts from their range,
//! refusing ones already in use by another Service. What is in use is recorded in the store by
//! [`ranges`](crate::ranges), shared by every server.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rand::Rng;
use serde_json::{Map, Value, json};

use super::status::FieldError;

pub const IPV4: &str = "IPv4";
pub const IPV6: &str = "IPv6";

/// `IPv4` or `IPv6`, as `spec.ipFamilies` names them.
pub fn family_of(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { IPV4 } else { IPV6 }
}

/// The most addresses of an IPv6 range the allocator uses, as kube-apiserver's bitmap
/// allocator caps them: the bitmap stays small whatever the prefix.
const MAX_IPV6_ADDRESSES: u32 = 1 << 16;

/// One Service CIDR, the range of one family's ClusterIPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCidr {
    pub network: IpAddr,
    pub prefix: u8,
}

impl ServiceCidr {
    /// Parses `10.96.0.0/12` or `fd00:10:96::/108`.
    pub fn parse(cidr: &str) -> Result<Self, String> {
        let (ip, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| format!("{cidr}: expected ADDRESS/PREFIX"))?;
        let ip: IpAddr = ip.parse().map_err(|e| format!("{cidr}: {e}"))?;
        let prefix: u8 = prefix.parse().map_err(|e| format!("{cidr}: {e}"))?;
        let network = match ip {
            IpAddr::V4(v4) => {
                if !(8..=30).contains(&prefix) {
                    return Err(format!("{cidr}: prefix must be between 8 and 30"));
                }
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & (u32::MAX << (32 - prefix))))
            }
            IpAddr::V6(v6) => {
                // kube-apiserver refuses more than 20 host bits for a Service range.
                if !(108..=126).contains(&prefix) {
                    return Err(format!(
                        "{cidr}: an IPv6 Service CIDR's prefix must be between 108 and 126"
                    ));
                }
                IpAddr::V6(Ipv6Addr::from(
                    u128::from(v6) & (u128::MAX << (128 - prefix)),
                ))
            }
        };
        Ok(Self { network, prefix })
    }

    pub fn family(&self) -> &'static str {
        family_of(&self.network)
    }

    fn base(&self) -> u128 {
        match self.network {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        }
    }

    /// How many offsets the bitmap covers (the network address is offset 0).
    fn size(&self) -> u32 {
        match self.network {
            IpAddr::V4(_) => 1u32 << (32 - self.prefix),
            IpAddr::V6(_) => MAX_IPV6_ADDRESSES.min(1u32 << (128 - self.prefix)),
        }
    }

    /// The offsets Services may hold: not the network address, nor IPv4's broadcast.
    fn usable(&self) -> std::ops::Range<u32> {
        match self.network {
            IpAddr::V4(_) => 1..self.size() - 1,
            IpAddr::V6(_) => 1..self.size(),
        }
    }

    /// `ip`'s offset in the range, if it is a usable address of it.
    pub(crate) fn offset(&self, ip: &IpAddr) -> Option<u32> {
        let n = match ip {
            IpAddr::V4(v4) if self.network.is_ipv4() => u128::from(u32::from(*v4)),
            IpAddr::V6(v6) if self.network.is_ipv6() => u128::from(*v6),
            _ => return None,
        };
        let off = u32::try_from(n.checked_sub(self.base())?).ok()?;
        self.usable().contains(&off).then_some(off)
    }

    pub(crate) fn at(&self, offset: u32) -> IpAddr {
        let n = self.base() + u128::from(offset);
        match self.network {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
        }
    }

    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }
}

#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// One or two (one per family); the first is the primary family, the one Services get
    /// when they do not ask.
    pub service_cidrs: Vec<ServiceCidr>,
    pub node_port_min: u16,
    pub node_port_max: u16,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            service_cidrs: vec![ServiceCidr {
                network: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 0)),
                prefix: 12,
            }],
            node_port_min: 30000,
            node_port_max: 32767,
        }
    }
}

impl NetworkConfig {
    /// Parses `10.96.0.0/12`, or two CIDRs of different families: `10.96.0.0/12,fd00::/108`.
    pub fn with_service_cidr(mut self, cidrs: &str) -> Result<Self, String> {
        let parsed = cidrs
            .split(',')
            .map(|c| ServiceCidr::parse(c.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        match parsed.as_slice() {
            [_] => {}
            [a, b] if a.family() != b.family() => {}
            [_, _] => {
                return Err(format!(
                    "{cidrs}: the two Service CIDRs must be of different IP families (one IPv4, one IPv6)"
                ));
            }
            _ => {
                return Err(format!(
                    "{cidrs}: expected one Service CIDR or two (one IPv4, one IPv6)"
                ));
            }
        }
        self.service_cidrs = parsed;
        Ok(self)
    }

    fn primary(&self) -> &ServiceCidr {
        &self.service_cidrs[0]
    }

    /// The range of `family`, if the cluster has one.
    pub fn cidr_for(&self, family: &str) -> Option<&ServiceCidr> {
        self.service_cidrs.iter().find(|c| c.family() == family)
    }

    /// The first usable address of the primary range: the `kubernetes` Service's.
    pub fn first_service_ip(&self) -> IpAddr {
        self.primary().at(1)
    }

    /// The tenth address, kept for the cluster DNS (the `kube-dns` Service), as kubeadm does.
    pub fn cluster_dns_ip(&self) -> IpAddr {
        self.primary().at(10)
    }

    /// The ranges, as the flag takes them.
    pub fn cidr(&self) -> String {
        let all: Vec<String> = self.service_cidrs.iter().map(ServiceCidr::cidr).collect();
        all.join(",")
    }
}

/// Service addresses and NodePorts: what is allocated, or what one Service holds.
#[derive(Debug, Default, Clone)]
pub struct InUse {
    pub ips: HashSet<IpAddr>,
    pub node_ports: HashSet<i64>,
}

impl InUse {
    /// What the Service `svc` holds.
    pub fn of(svc: &Value) -> Self {
        let mut held = Self::default();
        held.add(svc);
        held
    }

    pub fn is_empty(&self) -> bool {
        self.ips.is_empty() && self.node_ports.is_empty()
    }

    pub fn add(&mut self, svc: &Value) {
        self.ips.extend(
            cluster_ips(svc.get("spec"))
                .iter()
                .filter_map(|s| s.parse::<IpAddr>().ok()),
        );
        for p in svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = p["nodePort"].as_i64() {
                self.node_ports.insert(n);
            }
        }
    }
}

/// The strings of a list field.
fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap_or_default().to_string())
        .collect()
}

/// A spec's `clusterIPs`, or its `clusterIP` when the list is missing (a store written before).
fn cluster_ips(spec: Option<&Value>) -> Vec<String> {
    let ips = strings(spec.and_then(|s| s.get("clusterIPs")));
    if !ips.is_empty() {
        return ips;
    }
    match spec.and_then(|s| s["clusterIP"].as_str()) {
        Some(ip) if !ip.is_empty() => vec![ip.to_string()],
        _ => Vec::new(),
    }
}

const POLICIES: [&str; 3] = ["SingleStack", "PreferDualStack", "RequireDualStack"];

/// Settles `spec.ipFamilyPolicy`, `spec.ipFamilies` and the requested `spec.clusterIPs` (parsed,
/// `None` for a headless Service) as kube-apiserver does: families as asked, else as the
/// addresses say, else as before (`old_spec`), else the primary; a dual-stack policy adds the
/// cluster's other family.
fn settle_families(
    net: &NetworkConfig,
    spec: &Map<String, Value>,
    old_spec: Option<&Value>,
    errs: &mut Vec<FieldError>,
) -> Option<(String, Vec<String>, Option<Vec<IpAddr>>)> {
    let mut ips = strings(spec.get("clusterIPs"));
    let ip = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if ips.is_empty() {
        if !ip.is_empty() {
            ips.push(ip.to_string());
        }
    } else if !ip.is_empty() && ip != ips[0] {
        errs.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            &json!(ips[0]),
            "must be same as `clusterIP`",
        ));
    }
    let old_ips = cluster_ips(old_spec);
    let headless = ips.first().map(String::as_str) == Some("None")
        || (ips.is_empty() && old_ips.first().map(String::as_str) == Some("None"));
    if ips.len() > 2 {
        errs.push(FieldError::invalid(
            "spec.clusterIPs",
            &json!(ips),
            "may only hold up to 2 values",
        ));
    }
    let mut parsed = Vec::new();
    for (i, s) in ips.iter().enumerate() {
        if headless {
            if i > 0 {
                errs.push(FieldError::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    &json!(s),
                    "must be empty when the first element is 'None'",
                ));
            }
            continue;
        }
        match s.parse::<IpAddr>() {
            Ok(ip) => parsed.push(ip),
            Err(_) => errs.push(FieldError::invalid(
                format!("spec.clusterIPs[{i}]"),
                &json!(s),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            )),
        }
    }
    let given = strings(spec.get("ipFamilies"));
    for (i, f) in given.iter().enumerate() {
        if f != IPV4 && f != IPV6 {
            errs.push(FieldError::not_supported(
                format!("spec.ipFamilies[{i}]"),
                &json!(f),
                &[IPV4, IPV6],
            ));
        }
    }
    let policy_given = spec.get("ipFamilyPolicy").and_then(Value::as_str);
    if let Some(p) = policy_given
        && !POLICIES.contains(&p)
    {
        errs.push(FieldError::not_supported(
            "spec.ipFamilyPolicy",
            &json!(p),
            &POLICIES,
        ));
    }
    if !errs.is_empty() {
        return None;
    }
    let old_policy = old_spec.and_then(|s| s["ipFamilyPolicy"].as_str());
    let old_families = strings(old_spec.and_then(|s| s.get("ipFamilies")));
    // Two families the Service does not hold already (an update to SingleStack leaving the
    // old two in place is a downgrade).
    let asked_two = (given.len() > 1 && given != old_families) || (ips.len() > 1 && ips != old_ips);
    let policy = policy_given
        .or(old_policy)
        .unwrap_or(if asked_two {
            "RequireDualStack"
        } else {
            "SingleStack"
        })
        .to_string();
    let mut families = given.clone();
    for (i, ip) in parsed.iter().enumerate() {
        let f = family_of(ip);
        match families.get(i) {
            Some(want) if want != f => errs.push(FieldError::invalid(
                format!("spec.clusterIPs[{i}]"),
                &json!(ips[i]),
                format!("expected an {want} value as indicated by `ipFamilies[{i}]`"),
            )),
            Some(_) => {}
            None => families.push(f.to_string()),
        }
    }
    if families.is_empty() {
        families = old_families.clone();
    }
    if families.is_empty() {
        families.push(net.primary().family().to_string());
    }
    if families.len() > 2 {
        errs.push(FieldError::invalid(
            "spec.ipFamilies",
            &json!(families),
            "may only hold up to 2 values",
        ));
    } else if families.len() == 2 && families[0] == families[1] {
        errs.push(FieldError::duplicate(
            "spec.ipFamilies[1]",
            &json!(families[1]),
        ));
    }
    if let (Some(was), Some(now)) = (old_families.first(), families.first())
        && was != now
    {
        errs.push(FieldError::invalid(
            "spec.ipFamilies[0]",
            &json!(now),
            "may not change as part of upgrade",
        ));
    }
    if policy == "SingleStack" && families.len() > 1 {
        if asked_two {
            errs.push(FieldError::invalid(
                "spec.ipFamilyPolicy",
                &json!(policy),
                "must be RequireDualStack or PreferDualStack when multiple IP families are specified",
            ));
        } else {
            // A downgrade: the secondary family (and its address) goes.
            families.truncate(1);
        }
    }
    if policy == "RequireDualStack" && net.service_cidrs.len() < 2 {
        errs.push(FieldError::invalid(
            "spec.ipFamilyPolicy",
            &json!(policy),
            "this cluster is not configured for dual-stack services",
        ));
    }
    for (i, f) in families.iter().enumerate() {
        if net.cidr_for(f).is_none() {
            errs.push(FieldError::invalid(
                format!("spec.ipFamilies[{i}]"),
                &json!(f),
                "not configured on this cluster",
            ));
        }
    }
    if !errs.is_empty() {
        return None;
    }
    if policy != "SingleStack" && families.len() == 1 && net.service_cidrs.len() == 2 {
        let other = net.service_cidrs.iter().find(|c| c.family() != families[0]);
        families.extend(other.map(|c| c.family().to_string()));
    }
    Some((policy, families, (!headless).then_some(parsed)))
}

/// The address of family `f` for index `i`: the requested one (checked against its range and
/// what is in use), else the one the Service held, else a free one picked at random.
fn address_for(
    cidr: &ServiceCidr,
    requested: Option<&IpAddr>,
    held: Option<IpAddr>,
    in_use: &InUse,
    taken: &HashSet<IpAddr>,
    errs: &mut Vec<FieldError>,
) -> Option<IpAddr> {
    match requested {
        Some(ip) if Some(*ip) == held => Some(*ip),
        Some(ip) if cidr.offset(ip).is_none() => {
            errs.push(FieldError::invalid(
                "spec.clusterIPs",
                &json!([ip.to_string()]),
                format!(
                    "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                    cidr.cidr()
                ),
            ));
            None
        }
        Some(ip) if in_use.ips.contains(ip) || taken.contains(ip) => {
            errs.push(FieldError::invalid(
                "spec.clusterIPs",
                &json!([ip.to_string()]),
                format!("failed to allocate IP {ip}: provided IP is already allocated"),
            ));
            None
        }
        Some(ip) => Some(*ip),
        None if held.is_some() => held,
        None => {
            // The first usable address is kept for the `kubernetes` Service.
            let usable = cidr.usable();
            let mut rng = rand::rng();
            let free = (0..usable.len().min(65536) * 4)
                .map(|_| cidr.at(rng.random_range(usable.start + 1..usable.end)))
                .find(|ip| !in_use.ips.contains(ip));
            if free.is_none() {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs",
                    &json!([]),
                    format!("failed to allocate IP: the {} range is full", cidr.cidr()),
                ));
            }
            free
        }
    }
}

/// Fills in `spec.clusterIP(s)`, `spec.ipFamilies`, `spec.ipFamilyPolicy` and NodePorts of a
/// Service (`old` is the stored one on update, whose allocations it keeps), or explains which
/// requested one cannot be had.
pub fn allocate(
    net: &NetworkConfig,
    svc: &mut Value,
    old: Option<&Value>,
    in_use: &InUse,
) -> Result<(), Vec<FieldError>> {
    let mut errs = Vec::new();
    let ty = svc
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    if ty == "ExternalName" {
        return Ok(());
    }
    let old_spec = old.and_then(|o| o.get("spec"));
    let Some((policy, families, requested)) = settle_families(net, spec, old_spec, &mut errs)
    else {
        return Err(errs);
    };
    let ips: Vec<String> = match requested {
        None => vec!["None".to_string()],
        Some(requested) => {
            let held: Vec<IpAddr> = cluster_ips(old_spec)
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect();
            let mut taken = HashSet::new();
            let mut ips = Vec::new();
            for (i, f) in families.iter().enumerate() {
                let cidr = net
                    .cidr_for(f)
                    .expect("families are checked against the ranges");
                let was = held.iter().find(|ip| family_of(ip) == f).copied();
                if let Some(ip) =
                    address_for(cidr, requested.get(i), was, in_use, &taken, &mut errs)
                {
                    taken.insert(ip);
                    ips.push(ip.to_string());
                }
            }
            ips
        }
    };
    if errs.is_empty() {
        spec.insert("clusterIP".into(), json!(ips[0]));
        spec.insert("clusterIPs".into(), json!(ips));
        spec.insert("ipFamilies".into(), json!(families));
        spec.insert("ipFamilyPolicy".into(), json!(policy));
    }

    let wants_node_ports = ty == "NodePort" || ty == "LoadBalancer";
    let old_list: Vec<&Value> = old
        .and_then(|o| o.pointer("/spec/ports"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let old_ports: Vec<i64> = old_list
        .iter()
        .filter_map(|p| p["nodePort"].as_i64())
        .collect();
    let mut taken: HashSet<i64> = in_use.node_ports.clone();
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for (i, p) in ports.iter_mut().enumerate() {
            let Some(p) = p.as_object_mut() else { continue };
            if !wants_node_ports {
                p.remove("nodePort");
                continue;
            }
            // An update that leaves a port's nodePort out keeps the one it had.
            let kept = old_list
                .iter()
                .find(|o| o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol"))
                .and_then(|o| o["nodePort"].as_i64());
            let requested = p
                .get("nodePort")
                .and_then(Value::as_i64)
                .filter(|n| *n != 0);
            match requested.or(kept) {
                Some(n) if old_ports.contains(&n) => {
                    taken.insert(n);
                    p.insert("nodePort".into(), json!(n));
                }
                Some(n) => {
                    let range = i64::from(net.node_port_min)..=i64::from(net.node_port_max);
                    if !range.contains(&n) {
                        errs.push(FieldError::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            &json!(n),
                            format!(
                                "provided port is not in the valid range. The range of valid ports is {}-{}",
                                net.node_port_min, net.node_port_max
                            ),
                        ));
                    } else if !taken.insert(n) {
                        errs.push(FieldError::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            &json!(n),
                            "provided port is already allocated",
                        ));
                    }
                }
                None => {
                    let mut rng = rand::rng();
                    let span = i64::from(net.node_port_max - net.node_port_min) + 1;
                    let start = rng.random_range(0..span);
                    let free = (0..span)
                        .map(|k| i64::from(net.node_port_min) + (start + k) % span)
                        .find(|n| !taken.contains(n));
                    match free {
                        Some(n) => {
                            taken.insert(n);
                            p.insert("nodePort".into(), json!(n));
                        }
                        None => errs.push(FieldError::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            &json!(0),
                            "failed to allocate a nodePort: range is full",
                        )),
                    }
                }
            }
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_and_refuses_conflicts() {
        let net = NetworkConfig::default();
        let mut a = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        allocate(&net, &mut a, None, &InUse::default()).unwrap();
        let ip: IpAddr = a["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(net.service_cidrs[0].offset(&ip).is_some());
        let np = a["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        assert!((30000..=32767).contains(&np));
        let mut used = InUse::default();
        used.add(&a);
        let mut b = json!({"spec": {"type": "NodePort", "clusterIP": ip.to_string(), "ports": [{"port": 80, "nodePort": np}]}});
        let errs = allocate(&net, &mut b, None, &used).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[1].field, "spec.ports[0].nodePort");
        // An update keeps what the Service already holds.
        let mut same = a.clone();
        allocate(&net, &mut same, Some(&a), &used).unwrap();
        assert_eq!(same, a);
        // ...also when the update leaves them out.
        a["spec"]["ports"][0]["protocol"] = json!("TCP");
        let mut bare =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}});
        allocate(&net, &mut bare, Some(&a), &used).unwrap();
        assert_eq!(bare["spec"]["clusterIP"], a["spec"]["clusterIP"]);
        assert_eq!(bare["spec"]["ports"][0]["nodePort"], json!(np));
    }

    fn dual() -> NetworkConfig {
        NetworkConfig::default()
            .with_service_cidr("fd00:10:96::/108,10.96.0.0/16")
            .unwrap()
    }

    fn errors(net: &NetworkConfig, spec: Value) -> Vec<String> {
        let mut svc = json!({ "spec": spec });
        allocate(net, &mut svc, None, &InUse::default())
            .unwrap_err()
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn service_cidr_flag_takes_one_range_per_family() {
        let net = dual();
        assert_eq!(net.cidr(), "fd00:10:96::/108,10.96.0.0/16");
        assert_eq!(net.first_service_ip().to_string(), "fd00:10:96::1");
        assert_eq!(net.cluster_dns_ip().to_string(), "fd00:10:96::a");
        for bad in [
            "10.96.0.0/12,10.100.0.0/16",
            "fd00::/108,fd01::/108",
            "10.96.0.0/12,fd00::/108,fd01::/108",
            "fd00::/64",
            "10.96.0.0/12,",
        ] {
            assert!(
                NetworkConfig::default().with_service_cidr(bad).is_err(),
                "{bad}"
            );
        }
        // The IPv6 bitmap is capped whatever the prefix.
        let v6 = ServiceCidr::parse("fd00::/108").unwrap();
        assert_eq!(v6.size(), MAX_IPV6_ADDRESSES);
        assert!(v6.offset(&"fd00::ffff".parse().unwrap()).is_some());
        assert!(v6.offset(&"fd00::1:0".parse().unwrap()).is_none());
        assert!(v6.offset(&"10.0.0.1".parse().unwrap()).is_none());
    }

    #[test]
    fn families_follow_the_policy_and_the_cluster() {
        let net = dual();
        let mut used = InUse::default();
        // Single stack by default, from the primary range.
        let mut a = json!({"spec": {"ports": [{"port": 80}]}});
        allocate(&net, &mut a, None, &used).unwrap();
        assert_eq!(a["spec"]["ipFamilies"], json!(["IPv6"]));
        assert_eq!(a["spec"]["ipFamilyPolicy"], json!("SingleStack"));
        assert!(
            a["spec"]["clusterIP"]
                .as_str()
                .unwrap()
                .starts_with("fd00:10:96::")
        );
        // Dual stack: one address per family, clusterIP the first.
        let mut b = json!({"spec": {"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4"]}});
        allocate(&net, &mut b, None, &used).unwrap();
        let ips: Vec<IpAddr> = strings(b["spec"].get("clusterIPs"))
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(b["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert_eq!(b["spec"]["clusterIP"], json!(ips[0].to_string()));
        assert!(net.cidr_for(IPV4).unwrap().offset(&ips[0]).is_some());
        assert!(net.cidr_for(IPV6).unwrap().offset(&ips[1]).is_some());
        used.add(&b);
        assert_eq!(InUse::of(&b).ips.len(), 2);
        // Requested addresses: each in its family's range, not taken.
        let mut c = json!({"spec": {"ipFamilyPolicy": "RequireDualStack",
            "clusterIPs": ["10.96.0.20", "fd00:10:96::20"]}});
        allocate(&net, &mut c, None, &used).unwrap();
        assert_eq!(c["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert_eq!(
            errors(
                &net,
                json!({"clusterIPs": ["10.96.0.20", "fd00:10:97::1"], "ipFamilyPolicy": "RequireDualStack"})
            ),
            [
                "spec.clusterIPs: Invalid value: [\"fd00:10:97::1\"]: failed to allocate IP fd00:10:97::1: the provided IP (fd00:10:97::1) is not in the valid range. The range of valid IPs is fd00:10:96::/108"
            ]
        );
        let mut taken = json!({"spec": {"clusterIPs": [ips[1].to_string()]}});
        let errs = allocate(&net, &mut taken, None, &used).unwrap_err();
        assert!(
            errs[0]
                .message
                .ends_with("provided IP is already allocated"),
            "{errs:?}"
        );
        assert_eq!(
            errors(
                &net,
                json!({"clusterIPs": ["10.96.0.21", "10.96.0.22"], "ipFamilyPolicy": "PreferDualStack"})
            ),
            ["spec.ipFamilies[1]: Duplicate value: \"IPv4\""]
        );
        assert_eq!(
            errors(
                &net,
                json!({"clusterIPs": ["10.96.0.21", "fd00:10:96::21"], "ipFamilyPolicy": "SingleStack"})
            ),
            [
                "spec.ipFamilyPolicy: Invalid value: \"SingleStack\": must be RequireDualStack or PreferDualStack when multiple IP families are specified"
            ]
        );
        assert_eq!(
            errors(
                &net,
                json!({"clusterIPs": ["10.96.0.21"], "ipFamilies": ["IPv6"]})
            ),
            [
                "spec.clusterIPs[0]: Invalid value: \"10.96.0.21\": expected an IPv6 value as indicated by `ipFamilies[0]`"
            ]
        );
        // Headless Services get families but no address.
        let mut h = json!({"spec": {"clusterIP": "None", "ipFamilyPolicy": "PreferDualStack"}});
        allocate(&net, &mut h, None, &used).unwrap();
        assert_eq!(h["spec"]["clusterIPs"], json!(["None"]));
        assert_eq!(h["spec"]["ipFamilies"], json!(["IPv6", "IPv4"]));
        // An upgrade to dual stack keeps the address held and adds one; a downgrade drops it.
        let mut up = a.clone();
        up["spec"]["ipFamilyPolicy"] = json!("RequireDualStack");
        allocate(&net, &mut up, Some(&a), &used).unwrap();
        assert_eq!(up["spec"]["clusterIPs"][0], a["spec"]["clusterIP"]);
        assert_eq!(up["spec"]["ipFamilies"], json!(["IPv6", "IPv4"]));
        let mut down = up.clone();
        down["spec"]["ipFamilyPolicy"] = json!("SingleStack");
        allocate(&net, &mut down, Some(&up), &used).unwrap();
        assert_eq!(down["spec"]["clusterIPs"], a["spec"]["clusterIPs"]);
        assert_eq!(down["spec"]["ipFamilies"], json!(["IPv6"]));
        // The primary family cannot change.
        let mut flip = up.clone();
        flip["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
        flip["spec"]["clusterIPs"] = json!([]);
        flip["spec"]["clusterIP"] = json!("");
        let errs = allocate(&net, &mut flip, Some(&up), &used).unwrap_err();
        assert_eq!(errs[0].field, "spec.ipFamilies[0]");
    }

    #[test]
    fn single_stack_clusters_refuse_the_other_family() {
        let net = NetworkConfig::default();
        assert_eq!(
            errors(&net, json!({"ipFamilyPolicy": "RequireDualStack"})),
            [
                "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services"
            ]
        );
        assert_eq!(
            errors(&net, json!({"ipFamilies": ["IPv6"]})),
            ["spec.ipFamilies[0]: Invalid value: \"IPv6\": not configured on this cluster"]
        );
        // PreferDualStack settles for the one family there is.
        let mut svc = json!({"spec": {"ipFamilyPolicy": "PreferDualStack"}});
        allocate(&net, &mut svc, None, &InUse::default()).unwrap();
        assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4"]));
        assert_eq!(svc["spec"]["clusterIPs"].as_array().unwrap().len(), 1);
    }
}
