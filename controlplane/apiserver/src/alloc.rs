//! Service address and NodePort allocation: ClusterIPs from the Service CIDR, NodePorts from
//! their range, refusing ones already in use by another Service. What is in use is recorded in
//! the store by [`ranges`](crate::ranges), shared by every server.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use rand::Rng;
use serde_json::{Value, json};

use super::status::FieldError;

#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub service_network: Ipv4Addr,
    pub service_prefix: u8,
    pub node_port_min: u16,
    pub node_port_max: u16,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            service_network: Ipv4Addr::new(10, 96, 0, 0),
            service_prefix: 12,
            node_port_min: 30000,
            node_port_max: 32767,
        }
    }
}

impl NetworkConfig {
    /// Parses `10.96.0.0/12`.
    pub fn with_service_cidr(mut self, cidr: &str) -> Result<Self, String> {
        let (ip, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| format!("{cidr}: expected ADDRESS/PREFIX"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{cidr}: {e}"))?;
        let prefix: u8 = prefix.parse().map_err(|e| format!("{cidr}: {e}"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("{cidr}: prefix must be between 8 and 30"));
        }
        let mask = u32::MAX << (32 - prefix);
        self.service_network = Ipv4Addr::from(u32::from(ip) & mask);
        self.service_prefix = prefix;
        Ok(self)
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.service_prefix)
    }

    /// The first usable address: the `kubernetes` Service's.
    pub fn first_service_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.service_network) + 1)
    }

    /// The tenth address, kept for the cluster DNS (the `kube-dns` Service), as kubeadm does.
    pub fn cluster_dns_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.service_network) + 10)
    }

    pub(crate) fn contains(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip).wrapping_sub(u32::from(self.service_network));
        n > 0 && n < self.size() - 1
    }

    pub fn cidr(&self) -> String {
        format!("{}/{}", self.service_network, self.service_prefix)
    }
}

/// Service addresses and NodePorts: what is allocated, or what one Service holds.
#[derive(Debug, Default, Clone)]
pub struct InUse {
    pub ips: HashSet<Ipv4Addr>,
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
        if let Some(ip) = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
        {
            self.ips.insert(ip);
        }
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

/// Fills in `spec.clusterIP(s)` and NodePorts of a Service (`old` is the stored one on update,
/// whose allocations it keeps), or explains which requested one cannot be had.
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
    let requested = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let old_ip = old
        .and_then(|o| o.pointer("/spec/clusterIP"))
        .and_then(Value::as_str);
    let ip = if requested == "None" {
        "None".to_string()
    } else if !requested.is_empty() && Some(requested.as_str()) == old_ip {
        requested
    } else if requested.is_empty() {
        match old_ip {
            Some(ip) => ip.to_string(),
            None => {
                let mut rng = rand::rng();
                let size = net.size();
                let free = (0..size.min(65536) * 4)
                    .map(|_| {
                        Ipv4Addr::from(
                            u32::from(net.service_network) + rng.random_range(2..size - 1),
                        )
                    })
                    .find(|ip| !in_use.ips.contains(ip));
                match free {
                    Some(ip) => ip.to_string(),
                    None => {
                        errs.push(FieldError::invalid(
                            "spec.clusterIPs",
                            &json!([]),
                            "failed to allocate IP: range is full",
                        ));
                        String::new()
                    }
                }
            }
        }
    } else {
        match requested.parse::<Ipv4Addr>() {
            Ok(ip) if !net.contains(ip) => {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs",
                    &json!([requested]),
                    format!(
                        "failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. The range of valid IPs is {}",
                        net.cidr()
                    ),
                ));
                requested
            }
            Ok(ip) if in_use.ips.contains(&ip) => {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs",
                    &json!([requested]),
                    format!("failed to allocate IP {requested}: provided IP is already allocated"),
                ));
                requested
            }
            Ok(_) => requested,
            Err(_) => {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs",
                    &json!([requested]),
                    "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                ));
                requested
            }
        }
    };
    spec.insert("clusterIP".into(), json!(ip));
    spec.insert("clusterIPs".into(), json!([ip]));

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
        let ip: Ipv4Addr = a["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(net.contains(ip));
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
}
