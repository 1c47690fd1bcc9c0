//! The nftables renderer: one `ip skiff` table in kube-proxy's nftables shape. Packets are
//! dispatched by verdict maps keyed on `address . protocol . port`, so their cost does not grow
//! with the number of Services, and a sync changes map elements and the chains of the Services
//! that changed, nothing else. The whole change is one transaction through `nft -f -` (the
//! kernel applies a batch atomically).
//!
//! services (nat, prerouting and output) → @service-ips / @service-nodeports → svc-<hash> /
//! ext-<hash>, whose last rules pick an endpoint (`numgen random mod k 0`, k counting down, as
//! iptables' statistic rules do) and DNAT to it directly; service-reject (filter, new
//! connections) → @no-endpoint-*; masquerading (nat, postrouting) for what mark-for-masquerade
//! marked and for hairpin flows (@hairpin-endpoints: a pod reaching itself).
//!
//! The shape is what keeps a 10,000-Service table cheap to write: no chain per endpoint (only a
//! ClientIP-affinity Service has them, for its per-endpoint sets) and no anonymous sets, because
//! the kernel finds a table's sets by walking a list, so a set per Service makes a full sync
//! quadratic. A partial sync is a few `flush chain`/`add rule`/element commands.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::dataplane::{Applied, DataPlane, Error, MASQ_MARK, RenderConfig, run_tool};
use crate::model::{Endpoint, Model, ServicePort, ServicePortName};

pub const TABLE: &str = "skiff";

/// Our table's contents: chains with their rules, sets (declaration) and map/set elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: BTreeMap<String, Vec<String>>,
    /// Dynamic sets (ClientIP affinity), by name: their declaration body.
    pub sets: BTreeMap<String, String>,
    /// Elements of the fixed maps and sets: key → verdict (empty for a set).
    pub elements: BTreeMap<&'static str, BTreeMap<String, String>>,
    /// The endpoint addresses in @hairpin-endpoints.
    pub hairpin: BTreeSet<Ipv4Addr>,
}

/// Fixed maps and sets, declared on table creation.
const MAPS: [(&str, &str); 5] = [
    (
        "service-ips",
        "type ipv4_addr . inet_proto . inet_service : verdict ;",
    ),
    (
        "service-nodeports",
        "type inet_proto . inet_service : verdict ;",
    ),
    (
        "no-endpoint-services",
        "type ipv4_addr . inet_proto . inet_service : verdict ;",
    ),
    (
        "no-endpoint-nodeports",
        "type inet_proto . inet_service : verdict ;",
    ),
    ("nodeport-ips", "type ipv4_addr ;"),
];

/// `endpoint . endpoint` for every endpoint in use: after DNAT, a flow from an endpoint to
/// itself (hairpin) is masqueraded so the reply comes back through the node. Kept as
/// addresses in [`Ruleset::hairpin`]: it is the largest set, one element per endpoint.
const HAIRPIN: &str = "hairpin-endpoints";
const HAIRPIN_DECL: &str = "type ipv4_addr . ipv4_addr ;";

/// Base chains: (name, hook declaration).
const BASE_CHAINS: [(&str, &str); 6] = [
    (
        "nat-prerouting",
        "type nat hook prerouting priority dstnat ; policy accept ;",
    ),
    (
        "nat-output",
        "type nat hook output priority -100 ; policy accept ;",
    ),
    (
        "nat-postrouting",
        "type nat hook postrouting priority srcnat ; policy accept ;",
    ),
    (
        "filter-input",
        "type filter hook input priority -110 ; policy accept ;",
    ),
    (
        "filter-forward",
        "type filter hook forward priority -110 ; policy accept ;",
    ),
    (
        "filter-output",
        "type filter hook output priority -110 ; policy accept ;",
    ),
];

fn svc_chain(p: &ServicePort) -> String {
    format!("svc-{}", p.id.hash(""))
}
fn ext_chain(p: &ServicePort) -> String {
    format!("ext-{}", p.id.hash(""))
}
fn sep_chain(p: &ServicePort, e: &Endpoint) -> String {
    format!("sep-{}", p.id.hash(&e.to_string()))
}
fn affinity_set(p: &ServicePort, e: &Endpoint) -> String {
    format!("aff-{}", p.id.hash(&e.to_string()))
}

impl Ruleset {
    fn rule(&mut self, chain: &str, rule: impl Into<String>) {
        self.chains
            .entry(chain.to_string())
            .or_default()
            .push(rule.into());
    }

    fn element(&mut self, map: &'static str, key: String, value: impl Into<String>) {
        self.elements
            .entry(map)
            .or_default()
            .insert(key, value.into());
    }
}

/// Computes the table's contents from the model.
pub fn render(model: &Model, cfg: &RenderConfig) -> Ruleset {
    Installed::build(model, cfg).assemble()
}

/// What does not depend on any Service: base and fixed chains, declared maps, NodePort addresses.
fn base_rules(cfg: &RenderConfig) -> Ruleset {
    let mut r = Ruleset::default();
    for (name, _) in BASE_CHAINS {
        r.chains.insert(name.to_string(), Vec::new());
    }
    for (name, _) in MAPS {
        r.elements.insert(name, BTreeMap::new());
    }
    r.rule("nat-prerouting", "jump services");
    r.rule("nat-output", "jump services");
    r.rule("nat-postrouting", "jump masquerading");
    r.rule("filter-input", "ct state new jump service-reject");
    r.rule("filter-forward", "ct state new jump service-reject");
    r.rule("filter-output", "ct state new jump service-reject");
    r.rule(
        "service-reject",
        "ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
    );
    r.rule(
        "services",
        "ip daddr . meta l4proto . th dport vmap @service-ips",
    );
    let node_dst = match &cfg.node_ips {
        None => "fib daddr type local".to_string(),
        Some(ips) => {
            for ip in ips {
                r.element("nodeport-ips", ip.to_string(), "");
            }
            "ip daddr @nodeport-ips".to_string()
        }
    };
    r.rule(
        "service-reject",
        format!("{node_dst} meta l4proto . th dport vmap @no-endpoint-nodeports"),
    );
    r.rule(
        "services",
        format!("{node_dst} meta l4proto . th dport vmap @service-nodeports"),
    );
    r.rule(
        "mark-for-masquerade",
        format!("meta mark set meta mark | {MASQ_MARK:#x}"),
    );
    r.rule(
        "masquerading",
        format!("ct status dnat ip saddr . ip daddr @{HAIRPIN} jump mark-for-masquerade"),
    );
    r.rule(
        "masquerading",
        format!("meta mark & {MASQ_MARK:#x} == 0 return"),
    );
    r.rule(
        "masquerading",
        format!("meta mark set meta mark ^ {MASQ_MARK:#x}"),
    );
    r.rule("masquerading", "masquerade fully-random");
    r.rule("reject-chain", "reject");
    r
}

/// One Service port's share of the table: its chains, affinity sets, map elements and hairpin
/// addresses.
fn render_port(p: &ServicePort, cfg: &RenderConfig) -> Ruleset {
    let mut rules = Ruleset::default();
    let r = &mut rules;
    let proto = p.id.protocol.as_str();
    let cluster = p.cluster_endpoints();
    let external = p.external_endpoints();
    let svc = svc_chain(p);
    let ext = ext_chain(p);
    let no_endpoints = if p.endpoints.iter().any(|e| e.ready || e.serving) {
        "drop"
    } else {
        "goto reject-chain"
    };
    let key = |ip: &std::net::Ipv4Addr| format!("{ip} . {proto} . {}", p.port);

    if cluster.is_empty() {
        r.element("no-endpoint-services", key(&p.cluster_ip), no_endpoints);
    } else {
        r.element("service-ips", key(&p.cluster_ip), format!("goto {svc}"));
        if cfg.masquerade_all {
            r.rule(&svc, "jump mark-for-masquerade");
        } else if let Some(cidr) = cfg.cluster_cidr {
            r.rule(&svc, format!("ip saddr != {cidr} jump mark-for-masquerade"));
        }
        spread(r, &svc, p, &cluster);
    }

    if p.has_external() {
        let dsts = p.external_ips.iter().chain(&p.load_balancer_ips);
        if external.is_empty() {
            for ip in dsts {
                r.element("no-endpoint-services", key(ip), no_endpoints);
            }
            if let Some(np) = p.node_port {
                r.element(
                    "no-endpoint-nodeports",
                    format!("{proto} . {np}"),
                    no_endpoints,
                );
            }
        } else {
            for ip in dsts {
                r.element("service-ips", key(ip), format!("goto {ext}"));
            }
            if let Some(np) = p.node_port {
                r.element(
                    "service-nodeports",
                    format!("{proto} . {np}"),
                    format!("goto {ext}"),
                );
            }
            if p.external_local {
                if !cluster.is_empty() {
                    if let Some(cidr) = cfg.cluster_cidr {
                        r.rule(&ext, format!("ip saddr {cidr} goto {svc}"));
                    }
                    r.rule(&ext, "fib saddr type local jump mark-for-masquerade");
                    r.rule(&ext, format!("fib saddr type local goto {svc}"));
                }
            } else {
                r.rule(&ext, "jump mark-for-masquerade");
            }
            spread(r, &ext, p, &external);
        }
    }

    let mut endpoints: BTreeSet<Endpoint> = cluster.iter().copied().collect();
    endpoints.extend(external.iter().copied());
    for e in endpoints {
        r.hairpin.insert(e.ip);
        if let Some(seconds) = p.affinity_seconds {
            let sep = sep_chain(p, &e);
            let set = affinity_set(p, &e);
            r.sets.insert(
                set.clone(),
                format!("type ipv4_addr ; flags dynamic,timeout ; timeout {seconds}s ;"),
            );
            r.rule(&sep, format!("update @{set} {{ ip saddr }}"));
            r.rule(&sep, dnat(p, &e));
        }
    }
    rules
}

fn dnat(p: &ServicePort, e: &Endpoint) -> String {
    format!("meta l4proto {} dnat to {e}", p.id.protocol.as_str())
}

/// Affinity first (a client seen recently returns to its endpoint, through its chain that
/// refreshes the client's entry), then a random pick: endpoint i of n is taken with
/// probability 1/(n-i), which makes every endpoint equally likely.
fn spread(r: &mut Ruleset, chain: &str, p: &ServicePort, endpoints: &[Endpoint]) {
    let affinity = p.affinity_seconds.is_some();
    if affinity {
        for e in endpoints {
            r.rule(
                chain,
                format!("ip saddr @{} goto {}", affinity_set(p, e), sep_chain(p, e)),
            );
        }
    }
    let n = endpoints.len();
    for (i, e) in endpoints.iter().enumerate() {
        let pick = match n - i {
            1 => String::new(),
            remaining => format!("numgen random mod {remaining} 0 "),
        };
        let target = if affinity {
            format!("goto {}", sep_chain(p, e))
        } else {
            dnat(p, e)
        };
        r.rule(chain, format!("{pick}{target}"));
    }
}

/// The whole table, created afresh (after deleting whatever table of that name exists), as
/// one transaction.
fn full_text(want: &Ruleset) -> String {
    let mut out = format!("add table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n");
    for (name, decl) in MAPS {
        let kind = if decl.contains(": verdict") {
            "map"
        } else {
            "set"
        };
        let _ = write!(out, "\t{kind} {name} {{ {decl}");
        let elements = &want.elements[name];
        if !elements.is_empty() {
            let items: Vec<String> = elements.iter().map(|(k, v)| element(k, v)).collect();
            let _ = write!(out, " elements = {{ {} }}", items.join(", "));
        }
        out.push_str(" }\n");
    }
    let _ = write!(out, "\tset {HAIRPIN} {{ {HAIRPIN_DECL}");
    if !want.hairpin.is_empty() {
        let _ = write!(out, " elements = {{ {} }}", hairpin_elements(&want.hairpin));
    }
    out.push_str(" }\n");
    for (name, decl) in &want.sets {
        let _ = writeln!(out, "\tset {name} {{ {decl} }}");
    }
    // nft adds a block's chains before its map elements and rules, whatever their order here.
    for (name, rules) in &want.chains {
        let _ = writeln!(out, "\tchain {name} {{");
        if let Some((_, hook)) = BASE_CHAINS.iter().find(|(n, _)| n == name) {
            let _ = writeln!(out, "\t\t{hook}");
        }
        for rule in rules {
            let _ = writeln!(out, "\t\t{rule}");
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    out
}

fn hairpin_elements<'a>(ips: impl IntoIterator<Item = &'a Ipv4Addr>) -> String {
    let items: Vec<String> = ips.into_iter().map(|ip| format!("{ip} . {ip}")).collect();
    items.join(", ")
}

fn element(key: &str, value: &str) -> String {
    if value.is_empty() {
        key.to_string()
    } else {
        format!("{key} : {value}")
    }
}

/// The transaction taking the table from `have` (what we last wrote) to `want`: new chains and
/// sets added, changed chains flushed and refilled, map elements deleted and added, gone chains
/// and sets deleted last (once nothing refers to them). With `rewrite_all`, every chain and map
/// is rewritten (a periodic full sync) while affinity sets keep their state.
fn diff_text(want: &Ruleset, have: &Ruleset, rewrite_all: bool) -> (String, usize) {
    let mut out = String::new();
    let mut changes = 0;
    for (name, decl) in &want.sets {
        if have.sets.get(name) != Some(decl) {
            if have.sets.contains_key(name) {
                // A changed timeout: the set is replaced (its chain is rewritten below).
                let _ = writeln!(
                    out,
                    "flush chain ip {TABLE} {}",
                    name.replacen("aff-", "sep-", 1)
                );
                let _ = writeln!(out, "delete set ip {TABLE} {name}");
            }
            let _ = writeln!(out, "add set ip {TABLE} {name} {{ {decl} }}");
            changes += 1;
        }
    }
    for name in want.chains.keys().filter(|n| !have.chains.contains_key(*n)) {
        let _ = writeln!(out, "add chain ip {TABLE} {name}");
    }
    for (name, rules) in &want.chains {
        let old = have.chains.get(name);
        if old == Some(rules) && !rewrite_all {
            continue;
        }
        changes += 1;
        if old.is_some() {
            let _ = writeln!(out, "flush chain ip {TABLE} {name}");
        }
        for rule in rules {
            let _ = writeln!(out, "add rule ip {TABLE} {name} {rule}");
        }
    }
    let empty = BTreeMap::new();
    for (map, elements) in &want.elements {
        let old = have.elements.get(map).unwrap_or(&empty);
        if rewrite_all {
            if !old.is_empty() {
                let _ = writeln!(out, "flush {} ip {TABLE} {map}", map_kind(map));
            }
        } else {
            let gone: Vec<&String> = old
                .iter()
                .filter(|(k, v)| elements.get(*k) != Some(*v))
                .map(|(k, _)| k)
                .collect();
            if !gone.is_empty() {
                changes += gone.len();
                let keys: Vec<&str> = gone.iter().map(|k| k.as_str()).collect();
                let _ = writeln!(
                    out,
                    "delete element ip {TABLE} {map} {{ {} }}",
                    keys.join(", ")
                );
            }
        }
        let added: Vec<String> = elements
            .iter()
            .filter(|(k, v)| rewrite_all || old.get(*k) != Some(*v))
            .map(|(k, v)| element(k, v))
            .collect();
        if !added.is_empty() {
            changes += added.len();
            let _ = writeln!(
                out,
                "add element ip {TABLE} {map} {{ {} }}",
                added.join(", ")
            );
        }
    }
    let (gone, added): (Vec<&Ipv4Addr>, Vec<&Ipv4Addr>) = if rewrite_all {
        if !have.hairpin.is_empty() {
            let _ = writeln!(out, "flush set ip {TABLE} {HAIRPIN}");
        }
        (Vec::new(), want.hairpin.iter().collect())
    } else {
        (
            have.hairpin.difference(&want.hairpin).collect(),
            want.hairpin.difference(&have.hairpin).collect(),
        )
    };
    for (verb, ips) in [("delete", gone), ("add", added)] {
        if !ips.is_empty() {
            changes += ips.len();
            let _ = writeln!(
                out,
                "{verb} element ip {TABLE} {HAIRPIN} {{ {} }}",
                hairpin_elements(ips)
            );
        }
    }
    let gone: Vec<&String> = have
        .chains
        .keys()
        .filter(|n| !want.chains.contains_key(*n))
        .collect();
    for name in &gone {
        let _ = writeln!(out, "flush chain ip {TABLE} {name}");
    }
    for name in &gone {
        let _ = writeln!(out, "delete chain ip {TABLE} {name}");
        changes += 1;
    }
    for name in have.sets.keys().filter(|n| !want.sets.contains_key(*n)) {
        let _ = writeln!(out, "delete set ip {TABLE} {name}");
        changes += 1;
    }
    (out, changes)
}

fn map_kind(name: &str) -> &'static str {
    match MAPS.iter().find(|(n, _)| *n == name) {
        Some((_, decl)) if !decl.contains(": verdict") => "set",
        _ => "map",
    }
}

fn apply(text: &str) -> Result<(), Error> {
    run_tool("nft", &["-f", "-"], Some(text)).map(|_| ())
}

/// A map element: (map, key).
type ElementKey = (&'static str, String);

/// What the table holds, kept per Service port so that a partial sync renders and compares only
/// the ports that changed. Two ports may ask for the same map element (an external IP claimed
/// twice): the last in name order wins, as in a whole render, and the element stays while any
/// port asks for it.
#[derive(Debug, Clone, Default)]
struct Installed {
    cfg: RenderConfig,
    base: Ruleset,
    ports: BTreeMap<ServicePortName, (ServicePort, Ruleset)>,
    /// Map element → the value each port asks for.
    owners: BTreeMap<ElementKey, BTreeMap<ServicePortName, String>>,
    /// Hairpin address → how many ports use it.
    hairpin: BTreeMap<Ipv4Addr, usize>,
}

impl Installed {
    fn build(model: &Model, cfg: &RenderConfig) -> Self {
        let mut inst = Installed {
            cfg: cfg.clone(),
            base: base_rules(cfg),
            ..Default::default()
        };
        for p in model.ports.values() {
            inst.insert(p.clone(), render_port(p, cfg));
        }
        inst
    }

    fn insert(&mut self, port: ServicePort, rules: Ruleset) {
        for (map, elements) in &rules.elements {
            for (key, value) in elements {
                self.owners
                    .entry((*map, key.clone()))
                    .or_default()
                    .insert(port.id.clone(), value.clone());
            }
        }
        for ip in &rules.hairpin {
            *self.hairpin.entry(*ip).or_default() += 1;
        }
        self.ports.insert(port.id.clone(), (port, rules));
    }

    fn remove(&mut self, id: &ServicePortName) -> Option<Ruleset> {
        let (_, rules) = self.ports.remove(id)?;
        for (map, elements) in &rules.elements {
            for key in elements.keys() {
                let k = (*map, key.clone());
                if let Some(owners) = self.owners.get_mut(&k) {
                    owners.remove(id);
                    if owners.is_empty() {
                        self.owners.remove(&k);
                    }
                }
            }
        }
        for ip in &rules.hairpin {
            if let Some(n) = self.hairpin.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    self.hairpin.remove(ip);
                }
            }
        }
        Some(rules)
    }

    /// The element's value in the table (the last owner's).
    fn element(&self, key: &ElementKey) -> Option<&String> {
        self.owners.get(key)?.values().next_back()
    }

    /// The whole table's contents.
    fn assemble(&self) -> Ruleset {
        let mut r = self.base.clone();
        for (_, rules) in self.ports.values() {
            r.chains
                .extend(rules.chains.iter().map(|(k, v)| (k.clone(), v.clone())));
            r.sets
                .extend(rules.sets.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        for key @ (map, k) in self.owners.keys() {
            if let Some(v) = self.element(key) {
                r.element(map, k.clone(), v.clone());
            }
        }
        r.hairpin = self.hairpin.keys().copied().collect();
        r
    }

    /// Brings the ports up to `model`, returning the touched part of the table before and
    /// after (chains, sets, elements and hairpin addresses of the ports that changed or went),
    /// which [`diff_text`] turns into the transaction.
    fn update(&mut self, model: &Model) -> (Ruleset, Ruleset) {
        let gone: Vec<ServicePortName> = self
            .ports
            .keys()
            .filter(|id| !model.ports.contains_key(*id))
            .cloned()
            .collect();
        let changed: Vec<(&ServicePort, Ruleset)> = model
            .ports
            .values()
            .filter(|p| self.ports.get(&p.id).map(|(old, _)| old) != Some(*p))
            .map(|p| (p, render_port(p, &self.cfg)))
            .collect();
        let (mut before, mut after) = (Ruleset::default(), Ruleset::default());
        for (map, _) in MAPS {
            before.elements.insert(map, BTreeMap::new());
            after.elements.insert(map, BTreeMap::new());
        }
        let mut keys: BTreeSet<ElementKey> = BTreeSet::new();
        let mut ips: BTreeSet<Ipv4Addr> = BTreeSet::new();
        let mut touch = |rules: &Ruleset| {
            for (map, elements) in &rules.elements {
                keys.extend(elements.keys().map(|k| (*map, k.clone())));
            }
            ips.extend(&rules.hairpin);
        };
        for (_, rules) in &changed {
            touch(rules);
        }
        let old: Vec<&Ruleset> = gone
            .iter()
            .chain(changed.iter().map(|(p, _)| &p.id))
            .filter_map(|id| self.ports.get(id).map(|(_, rules)| rules))
            .collect();
        for rules in &old {
            touch(rules);
            before.merge_port(rules);
        }
        self.snapshot(&mut before, &keys, &ips);
        for id in gone.iter().chain(changed.iter().map(|(p, _)| &p.id)) {
            self.remove(id);
        }
        for (port, rules) in changed {
            after.merge_port(&rules);
            self.insert(port.clone(), rules);
        }
        self.snapshot(&mut after, &keys, &ips);
        (before, after)
    }

    /// Records the current value of elements `keys` and presence of hairpin `ips` into `r`.
    fn snapshot(&self, r: &mut Ruleset, keys: &BTreeSet<ElementKey>, ips: &BTreeSet<Ipv4Addr>) {
        for key @ (map, k) in keys {
            if let Some(v) = self.element(key) {
                r.element(map, k.clone(), v.clone());
            }
        }
        r.hairpin = ips
            .iter()
            .filter(|ip| self.hairpin.contains_key(ip))
            .copied()
            .collect();
    }
}

impl Ruleset {
    /// Adds a port's chains and sets (its elements and hairpin addresses go through
    /// [`Installed`], which knows who else asks for them).
    fn merge_port(&mut self, port: &Ruleset) {
        self.chains
            .extend(port.chains.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.sets
            .extend(port.sets.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// The nftables data plane, remembering what it last wrote for partial syncs.
#[derive(Default)]
pub struct Nftables {
    last: Option<Installed>,
}

impl DataPlane for Nftables {
    fn sync(&mut self, model: &Model, cfg: &RenderConfig, full: bool) -> Result<Applied, Error> {
        match self.last.take() {
            // A partial sync: only the ports that changed are rendered and compared.
            Some(mut inst) if !full && inst.cfg == *cfg => {
                let (before, after) = inst.update(model);
                let (text, changes) = diff_text(&after, &before, false);
                Applied::install(&mut self.last, inst, &text, changes, apply)
            }
            last => {
                let next = Installed::build(model, cfg);
                let want = next.assemble();
                let (text, changes) = match last {
                    // First sync of this process: whatever table is there (ours from an
                    // earlier run, or half of one) is replaced whole.
                    None => (full_text(&want), want.chains.len()),
                    Some(last) => diff_text(&want, &last.assemble(), full),
                };
                Applied::install(&mut self.last, next, &text, changes, apply)
            }
        }
    }
}

/// Deletes our table, if present.
pub fn cleanup() -> Result<(), Error> {
    match run_tool("nft", &["list", "tables", "ip"], None) {
        Ok(tables)
            if tables
                .lines()
                .any(|l| l.trim() == format!("table ip {TABLE}")) =>
        {
            apply(&format!("delete table ip {TABLE}\n"))
        }
        Ok(_) => Ok(()),
        // No nft on the node: nothing of ours can be there.
        Err(Error::Spawn { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn port(name: &str, ips: &[&str]) -> ServicePort {
        ServicePort {
            id: ServicePortName {
                namespace: "default".into(),
                name: name.into(),
                port: "".into(),
                protocol: Protocol::Udp,
            },
            cluster_ip: "10.96.0.20".parse().unwrap(),
            port: 53,
            node_port: None,
            external_ips: vec![],
            load_balancer_ips: vec![],
            affinity_seconds: None,
            internal_local: false,
            external_local: false,
            health_check_node_port: None,
            endpoints: ips
                .iter()
                .map(|ip| Endpoint {
                    ip: ip.parse().unwrap(),
                    port: 5353,
                    ready: true,
                    serving: true,
                    terminating: false,
                    local: true,
                })
                .collect(),
        }
    }

    fn model(ports: Vec<ServicePort>) -> Model {
        Model {
            ports: ports.into_iter().map(|p| (p.id.clone(), p)).collect(),
        }
    }

    #[test]
    fn services_are_map_elements_and_endpoints_picked_by_numgen_rules() {
        let p = port("dns", &["10.244.0.2", "10.244.0.3", "10.244.0.4"]);
        let r = render(&model(vec![p.clone()]), &RenderConfig::default());
        assert_eq!(
            r.elements["service-ips"]["10.96.0.20 . udp . 53"],
            format!("goto {}", svc_chain(&p))
        );
        assert_eq!(
            r.chains[&svc_chain(&p)],
            [
                "numgen random mod 3 0 meta l4proto udp dnat to 10.244.0.2:5353",
                "numgen random mod 2 0 meta l4proto udp dnat to 10.244.0.3:5353",
                "meta l4proto udp dnat to 10.244.0.4:5353",
            ]
        );
        // No chain per endpoint, no set per Service; hairpin pairs for each endpoint.
        assert!(!r.chains.keys().any(|c| c.starts_with("sep-")));
        assert!(r.sets.is_empty());
        assert!(r.hairpin.contains(&"10.244.0.3".parse().unwrap()));
        let text = full_text(&r);
        assert!(text.starts_with("add table ip skiff\ndelete table ip skiff\n"));
        assert!(text.contains("elements = { 10.96.0.20 . udp . 53 : goto svc-"));
    }

    #[test]
    fn affinity_keeps_a_chain_and_set_per_endpoint() {
        let mut p = port("sticky", &["10.244.0.2", "10.244.0.3"]);
        p.affinity_seconds = Some(60);
        let r = render(&model(vec![p.clone()]), &RenderConfig::default());
        let (a, b) = (&p.endpoints[0], &p.endpoints[1]);
        assert_eq!(
            r.chains[&svc_chain(&p)],
            [
                format!(
                    "ip saddr @{} goto {}",
                    affinity_set(&p, a),
                    sep_chain(&p, a)
                ),
                format!(
                    "ip saddr @{} goto {}",
                    affinity_set(&p, b),
                    sep_chain(&p, b)
                ),
                format!("numgen random mod 2 0 goto {}", sep_chain(&p, a)),
                format!("goto {}", sep_chain(&p, b)),
            ]
        );
        assert_eq!(
            r.chains[&sep_chain(&p, a)],
            [
                format!("update @{} {{ ip saddr }}", affinity_set(&p, a)),
                "meta l4proto udp dnat to 10.244.0.2:5353".to_string(),
            ]
        );
        assert!(r.sets[&affinity_set(&p, b)].contains("timeout 60s"));
    }

    #[test]
    fn a_changed_endpoint_touches_its_chain_and_hairpin_element_only() {
        let a = port("a", &["10.244.0.2"]);
        let mut b = port("b", &["10.244.0.3", "10.244.0.4"]);
        b.cluster_ip = "10.96.0.21".parse().unwrap();
        let before = render(&model(vec![a.clone(), b.clone()]), &RenderConfig::default());
        let mut b2 = b.clone();
        b2.endpoints.pop();
        let after = render(&model(vec![a.clone(), b2]), &RenderConfig::default());
        let (text, changes) = diff_text(&after, &before, false);
        assert_eq!(
            text,
            format!(
                "flush chain ip skiff {svc}\nadd rule ip skiff {svc} meta l4proto udp dnat to 10.244.0.3:5353\n\
                 delete element ip skiff hairpin-endpoints {{ 10.244.0.4 . 10.244.0.4 }}\n",
                svc = svc_chain(&b)
            )
        );
        assert_eq!(changes, 2);
        assert_eq!(diff_text(&after, &after, false).0, "");
    }

    #[test]
    fn a_service_losing_its_endpoints_moves_to_the_reject_map() {
        let a = port("a", &["10.244.0.2"]);
        let before = render(&model(vec![a.clone()]), &RenderConfig::default());
        let after = render(&model(vec![port("a", &[])]), &RenderConfig::default());
        let (text, _) = diff_text(&after, &before, false);
        assert!(
            text.contains("delete element ip skiff service-ips { 10.96.0.20 . udp . 53 }"),
            "{text}"
        );
        assert!(text.contains("add element ip skiff no-endpoint-services { 10.96.0.20 . udp . 53 : goto reject-chain }"));
        assert!(text.contains(&format!("delete chain ip skiff {}", svc_chain(&a))));
    }

    #[test]
    fn a_partial_sync_writes_what_a_whole_diff_would_touching_only_changed_ports() {
        let a = port("a", &["10.244.0.2"]);
        let mut b = port("b", &["10.244.0.3", "10.244.0.4"]);
        b.cluster_ip = "10.96.0.21".parse().unwrap();
        b.external_ips = vec!["192.0.2.1".parse().unwrap()];
        // c claims b's external IP too, and shares an endpoint with a.
        let mut c = port("c", &["10.244.0.2", "10.244.0.5"]);
        c.cluster_ip = "10.96.0.22".parse().unwrap();
        c.external_ips = vec!["192.0.2.1".parse().unwrap()];
        c.affinity_seconds = Some(30);
        let old = model(vec![a.clone(), b.clone(), c.clone()]);
        let cfg = RenderConfig::default();

        let mut b2 = b.clone();
        b2.endpoints.pop();
        let mut d = port("d", &["10.244.0.6"]);
        d.cluster_ip = "10.96.0.23".parse().unwrap();
        let new = model(vec![a.clone(), b2, d]);

        let mut inst = Installed::build(&old, &cfg);
        let (before, after) = inst.update(&new);
        let partial = diff_text(&after, &before, false);
        let whole = diff_text(&render(&new, &cfg), &render(&old, &cfg), false);
        assert_eq!(partial, whole);
        assert!(!partial.0.contains(&svc_chain(&a)), "{}", partial.0);
        // c's going hands the external IP to b and keeps a's endpoint in the hairpin set.
        assert!(
            partial
                .0
                .contains(&format!("192.0.2.1 . udp . 53 : goto {}", ext_chain(&b)))
        );
        assert!(!partial.0.contains("10.244.0.2 . 10.244.0.2"));
        assert_eq!(inst.assemble(), render(&new, &cfg));
        // Nothing changed: nothing touched.
        let (before, after) = inst.update(&new);
        assert_eq!(diff_text(&after, &before, false).0, "");
    }
}
