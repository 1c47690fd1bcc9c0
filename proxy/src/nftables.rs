//! The nftables renderer: one `ip skiff` table (and one `ip6 skiff`, the same rendered from the
//! IPv6 model, where IPv6 is in use) in kube-proxy's nftables shape. Packets are
//! dispatched by verdict maps keyed on `address . protocol . port`, so their cost does not grow
//! with the number of Services, and endpoints are picked from data maps, so a change to a
//! Service's endpoints is a change of map elements only. A partial change is one transaction
//! through `nft -f -` (the kernel applies a batch atomically), preceded by a netlink batch when
//! it needs new pick chains; a full sync is described at [`Nftables::full_sync`].
//!
//! services (nat, prerouting and output) → @service-ips / @service-nodeports → a pick chain
//! shared by every front with the same number of endpoints k, whose one rule DNATs through
//! `<front key> . numgen random mod k` in an endpoint map (`<front> . i : endpoint`);
//! service-reject (filter, new connections) → @no-endpoint-*; masquerading (nat, postrouting)
//! for what mark-for-masquerade marked and for hairpin flows (@hairpin-endpoints: a pod reaching
//! itself).
//!
//! A front is keyed by `ip daddr . meta l4proto . th dport` (ClusterIP, externalIP, load-balancer
//! IP) or `meta l4proto . th dport` (NodePort, on any node address). Pick chains:
//! `cluster-<key>-<k>` (masquerade what comes from outside the cluster CIDR, through
//! `masquerade-outsiders`),
//! `external-<key>-<k>` (masquerade all), `local-<key>-<k>` (no masquerade:
//! externalTrafficPolicy Local) and `policy-local-<key>-<k>` (Local's exceptions: pods and the
//! node itself take the cluster path, found in @cluster-path-<key>).
//!
//! The shape is what keeps a 10,000-Service table cheap to write and to change: a few rules for
//! the whole table (rules are what the kernel pays for, per expression, and adding one makes it
//! validate the whole table at commit), no anonymous sets (the kernel finds a table's sets by
//! walking a list), and few rules bound to each data map (binding walks the map's elements).
//! Only a ClientIP-affinity Service keeps chains of its own (a chain and a dynamic set per
//! endpoint), because its endpoint choice depends on the client.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::Arc;

use crate::dataplane::{Applied, DataPlane, Error, MASQ_MARK, RenderConfig, run_tool};
use crate::model::{Endpoint, Family, Model, ServicePort, ServicePortName};
use crate::nft_batch::{self, Batch, Data, Expr};

pub const TABLE: &str = "skiff";

/// nft's name of a family's tables, also the prefix of its address matches (`ip6 daddr`).
fn nf(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// The netlink family of a family's tables.
fn af(f: Family) -> u8 {
    match f {
        Family::V4 => libc::AF_INET as u8,
        Family::V6 => libc::AF_INET6 as u8,
    }
}

/// A declaration written for IPv4 (the constants below), in `f`'s spelling.
fn for_family(f: Family, decl: &str) -> String {
    match f {
        Family::V4 => decl.to_string(),
        Family::V6 => decl
            .replace("ipv4_addr", "ipv6_addr")
            .replace("ip daddr", "ip6 daddr"),
    }
}

/// Our table's contents: chains with their rules, sets (declaration) and map/set elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// The table's family (`ip` or `ip6`).
    pub family: Family,
    pub chains: BTreeMap<String, Vec<String>>,
    /// Dynamic sets (ClientIP affinity), by name: their declaration body.
    pub sets: BTreeMap<String, String>,
    /// Elements of the fixed maps and sets: key → value (empty for a set).
    pub elements: BTreeMap<&'static str, BTreeMap<String, String>>,
    /// The endpoint addresses in @hairpin-endpoints.
    pub hairpin: BTreeSet<IpAddr>,
    /// The shared pick chains a Service port sends its fronts to.
    picks: BTreeSet<Pick>,
}

/// How a front is keyed: by address (ClusterIP, externalIP, load-balancer IP) or by NodePort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Front {
    Addr,
    Port,
}

impl Front {
    fn name(self) -> &'static str {
        match self {
            Self::Addr => "addr",
            Self::Port => "port",
        }
    }

    /// The packet's fields that make the key.
    fn key(self, f: Family) -> String {
        match self {
            Self::Addr => format!("{} daddr . meta l4proto . th dport", nf(f)),
            Self::Port => "meta l4proto . th dport".into(),
        }
    }

    /// The map of endpoints for the cluster path or the external path of this kind of front.
    fn endpoint_map(self, external: bool) -> &'static str {
        match (self, external) {
            (Self::Addr, false) => "endpoints-addr-cluster",
            (Self::Addr, true) => "endpoints-addr-external",
            (Self::Port, false) => "endpoints-port-cluster",
            (Self::Port, true) => "endpoints-port-external",
        }
    }

    /// externalTrafficPolicy Local's cluster path: front → `goto cluster-…`.
    fn cluster_path_map(self) -> &'static str {
        match self {
            Self::Addr => "cluster-path-addr",
            Self::Port => "cluster-path-port",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PickKind {
    /// Traffic to a ClusterIP, or a Local front's traffic from pods and the node.
    Cluster,
    /// Traffic from outside to a front with externalTrafficPolicy Cluster.
    External,
    /// Traffic from outside to a front with externalTrafficPolicy Local.
    Local,
    /// A Local front with cluster endpoints: pods and the node go to the cluster path.
    PolicyLocal,
}

/// A chain shared by every front of one kind with `k` endpoints: its rules depend only on its
/// name and the node's [`RenderConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Pick {
    kind: PickKind,
    front: Front,
    k: usize,
}

impl Pick {
    fn name(&self) -> String {
        let kind = match self.kind {
            PickKind::Cluster => "cluster",
            PickKind::External => "external",
            PickKind::Local => "local",
            PickKind::PolicyLocal => "policy-local",
        };
        format!("{kind}-{}-{}", self.front.name(), self.k)
    }

    fn rules(&self, cfg: &RenderConfig) -> Vec<String> {
        let f = nf(cfg.family);
        let key = self.front.key(cfg.family);
        let dnat = |external| {
            format!(
                "dnat {f} to {key} . numgen random mod {} map @{}",
                self.k,
                self.front.endpoint_map(external)
            )
        };
        match self.kind {
            PickKind::Cluster => vec![format!("jump {MASQUERADE_OUTSIDERS}"), dnat(false)],
            PickKind::External => vec!["jump mark-for-masquerade".into(), dnat(true)],
            PickKind::Local => vec![dnat(true)],
            PickKind::PolicyLocal => {
                let cluster_path = format!("{key} vmap @{}", self.front.cluster_path_map());
                let mut rules: Vec<String> = cfg
                    .cluster_cidr
                    .map(|cidr| format!("{f} saddr {cidr} {cluster_path}"))
                    .into_iter()
                    .collect();
                rules.push("fib saddr type local jump mark-for-masquerade".into());
                rules.push(format!("fib saddr type local {cluster_path}"));
                rules.push(format!(
                    "goto {}",
                    Pick {
                        kind: PickKind::Local,
                        ..*self
                    }
                    .name()
                ));
                rules
            }
        }
    }

    /// The rules as netlink expressions (those of [`Pick::rules`]) for the picks that DNAT
    /// through an endpoint map: nft 1.0.6 cannot add such a rule once the map is read back from
    /// the kernel. `None` for policy-local picks, written as text.
    fn exprs(&self, family: Family) -> Option<Vec<Vec<Expr<'static>>>> {
        let map = self.front.endpoint_map(self.kind != PickKind::Cluster);
        let k = self.k as u32;
        // The key into 4-byte registers from 1 (nft's layout: each field in its own, an
        // address in as many as it needs: 8 is 1's first word), the endpoint's address and
        // port back into 1 and the register after the address.
        let (daddr_offset, addr_len, nfproto) = match family {
            Family::V4 => (16, 4, libc::NFPROTO_IPV4),
            Family::V6 => (24, 16, libc::NFPROTO_IPV6),
        };
        let after_addr = 8 + addr_len / 4;
        let th_dport = |dreg| Expr::Payload {
            transport: true,
            offset: 2,
            len: 2,
            dreg,
        };
        let mut dnat = match self.front {
            Front::Addr => vec![
                Expr::Payload {
                    transport: false,
                    offset: daddr_offset,
                    len: addr_len,
                    dreg: 1,
                },
                Expr::L4proto { dreg: after_addr },
                th_dport(after_addr + 1),
                Expr::Numgen {
                    modulus: k,
                    dreg: after_addr + 2,
                },
            ],
            Front::Port => vec![
                Expr::L4proto { dreg: 1 },
                th_dport(9),
                Expr::Numgen {
                    modulus: k,
                    dreg: 10,
                },
            ],
        };
        dnat.push(Expr::Lookup {
            map,
            sreg: 1,
            dreg: 1,
        });
        dnat.push(Expr::Dnat {
            family: nfproto as u8,
            addr: 1,
            port: after_addr,
        });
        let jump = |chain| vec![Expr::Verdict(nft_batch::NFT_JUMP, chain)];
        Some(match self.kind {
            PickKind::Cluster => vec![jump(MASQUERADE_OUTSIDERS), dnat],
            PickKind::External => vec![jump("mark-for-masquerade"), dnat],
            PickKind::Local => vec![dnat],
            PickKind::PolicyLocal => return None,
        })
    }

    /// The picks this one sends packets to, which must exist first.
    fn needs(&self) -> Option<Pick> {
        (self.kind == PickKind::PolicyLocal).then_some(Pick {
            kind: PickKind::Local,
            ..*self
        })
    }
}

/// The chain the cluster pick chains jump to first: it marks traffic from outside the cluster
/// network for masquerading (their rules then depend on nothing but their name).
const MASQUERADE_OUTSIDERS: &str = "masquerade-outsiders";

/// The cluster path's masquerade rule: traffic to a ClusterIP from outside the cluster network.
fn masquerade_outsiders(cfg: &RenderConfig) -> Option<String> {
    if cfg.masquerade_all {
        Some("jump mark-for-masquerade".into())
    } else {
        cfg.cluster_cidr.map(|cidr| {
            format!(
                "{} saddr != {cidr} jump mark-for-masquerade",
                nf(cfg.family)
            )
        })
    }
}

/// Fixed maps and sets, declared on table creation: (name, kind, declaration, written for IPv4:
/// see [`for_family`]).
const MAPS: [(&str, &str, &str); 11] = [
    (
        "service-ips",
        "map",
        "type ipv4_addr . inet_proto . inet_service : verdict ;",
    ),
    (
        "service-nodeports",
        "map",
        "type inet_proto . inet_service : verdict ;",
    ),
    (
        "no-endpoint-services",
        "map",
        "type ipv4_addr . inet_proto . inet_service : verdict ;",
    ),
    (
        "no-endpoint-nodeports",
        "map",
        "type inet_proto . inet_service : verdict ;",
    ),
    ("nodeport-ips", "set", "type ipv4_addr ;"),
    (
        "cluster-path-addr",
        "map",
        "type ipv4_addr . inet_proto . inet_service : verdict ;",
    ),
    (
        "cluster-path-port",
        "map",
        "type inet_proto . inet_service : verdict ;",
    ),
    ("endpoints-addr-cluster", "map", ENDPOINTS_BY_ADDR),
    ("endpoints-addr-external", "map", ENDPOINTS_BY_ADDR),
    ("endpoints-port-cluster", "map", ENDPOINTS_BY_PORT),
    ("endpoints-port-external", "map", ENDPOINTS_BY_PORT),
];

/// Endpoint maps: `front . i : endpoint address . port` (nft 1.0.6 takes `numgen` in a
/// concatenation only through `typeof`; the modulus there is not part of the type).
const ENDPOINTS_BY_ADDR: &str =
    "typeof ip daddr . meta l4proto . th dport . numgen random mod 2 : ip daddr . th dport ;";
const ENDPOINTS_BY_PORT: &str =
    "typeof meta l4proto . th dport . numgen random mod 2 : ip daddr . th dport ;";

/// `endpoint . endpoint` for every endpoint in use: after DNAT, a flow from an endpoint to
/// itself (hairpin) is masqueraded so the reply comes back through the node. Kept as
/// addresses in [`Ruleset::hairpin`]: one element per endpoint.
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
    let mut r = Ruleset {
        family: cfg.family,
        ..Default::default()
    };
    let f = nf(cfg.family);
    for (name, _) in BASE_CHAINS {
        r.chains.insert(name.to_string(), Vec::new());
    }
    for (name, _, _) in MAPS {
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
        format!("{f} daddr . meta l4proto . th dport vmap @no-endpoint-services"),
    );
    r.rule(
        "services",
        format!("{f} daddr . meta l4proto . th dport vmap @service-ips"),
    );
    let node_dst = match &cfg.node_ips {
        None => "fib daddr type local".to_string(),
        Some(ips) => {
            for ip in ips {
                r.element("nodeport-ips", ip.to_string(), "");
            }
            format!("{f} daddr @nodeport-ips")
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
    r.chains.insert(
        MASQUERADE_OUTSIDERS.to_string(),
        masquerade_outsiders(cfg).into_iter().collect(),
    );
    r.rule(
        "masquerading",
        format!("ct status dnat {f} saddr . {f} daddr @{HAIRPIN} jump mark-for-masquerade"),
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
    // The node's own TCP connections take an ICMPv6 error only when their SYN is sent again,
    // a second later: IPv6 TCP is refused with a reset, at once.
    if cfg.family == Family::V6 {
        r.rule("reject-chain", "meta l4proto tcp reject with tcp reset");
    }
    r.rule("reject-chain", "reject");
    r
}

/// One Service port's share of the table: its map elements, the pick chains they send to,
/// hairpin addresses, and (ClientIP affinity only) its own chains and sets.
fn render_port(p: &ServicePort, cfg: &RenderConfig) -> Ruleset {
    let mut rules = Ruleset {
        family: cfg.family,
        ..Default::default()
    };
    let r = &mut rules;
    let proto = p.id.protocol.as_str();
    let cluster = p.cluster_endpoints();
    let external = p.external_endpoints();
    let no_endpoints = if p.endpoints.iter().any(|e| e.ready || e.serving) {
        "drop"
    } else {
        "goto reject-chain"
    };
    let addr_key = |ip: &IpAddr| format!("{ip} . {proto} . {}", p.port);
    let affinity = p.affinity_seconds.is_some();
    if affinity {
        affinity_chains(r, p, cfg, &cluster, &external);
    }

    if cluster.is_empty() {
        r.element(
            "no-endpoint-services",
            addr_key(&p.cluster_ip),
            no_endpoints,
        );
    } else {
        let key = addr_key(&p.cluster_ip);
        let to = if affinity {
            format!("goto {}", svc_chain(p))
        } else {
            pick(r, PickKind::Cluster, Front::Addr, &key, &cluster)
        };
        r.element("service-ips", key, to);
    }

    if p.has_external() {
        let mut fronts: Vec<(Front, String)> = p
            .external_ips
            .iter()
            .chain(&p.load_balancer_ips)
            .map(|ip| (Front::Addr, addr_key(ip)))
            .collect();
        fronts.extend(
            p.node_port
                .map(|np| (Front::Port, format!("{proto} . {np}"))),
        );
        for (front, key) in fronts {
            let (reject_map, map) = match front {
                Front::Addr => ("no-endpoint-services", "service-ips"),
                Front::Port => ("no-endpoint-nodeports", "service-nodeports"),
            };
            if external.is_empty() {
                r.element(reject_map, key, no_endpoints);
                continue;
            }
            let to = if affinity {
                format!("goto {}", ext_chain(p))
            } else if !p.external_local {
                pick(r, PickKind::External, front, &key, &external)
            } else if cluster.is_empty() {
                pick(r, PickKind::Local, front, &key, &external)
            } else {
                let to_cluster = pick(r, PickKind::Cluster, front, &key, &cluster);
                r.element(front.cluster_path_map(), key.clone(), to_cluster);
                pick(r, PickKind::PolicyLocal, front, &key, &external)
            };
            r.element(map, key, to);
        }
    }

    for e in cluster.iter().chain(&external) {
        r.hairpin.insert(e.ip);
    }
    rules
}

/// Sends front `key` to the shared pick chain of `kind` for `endpoints.len()` endpoints, with
/// the endpoints as its elements in the endpoint map; returns the verdict.
fn pick(
    r: &mut Ruleset,
    kind: PickKind,
    front: Front,
    key: &str,
    endpoints: &[Endpoint],
) -> String {
    let map = front.endpoint_map(matches!(
        kind,
        PickKind::External | PickKind::Local | PickKind::PolicyLocal
    ));
    for (i, e) in endpoints.iter().enumerate() {
        r.element(
            map,
            format!("{key} . {i}"),
            format!("{} . {}", e.ip, e.port),
        );
    }
    let chain = Pick {
        kind,
        front,
        k: endpoints.len(),
    };
    r.picks.insert(chain);
    format!("goto {}", chain.name())
}

/// A ClientIP-affinity Service port's own chains: svc-<hash> (cluster path) and ext-<hash>
/// (external path) send a client seen recently back to its endpoint's chain, which refreshes
/// the client's entry in the endpoint's set and DNATs; a new client is spread at random.
fn affinity_chains(
    r: &mut Ruleset,
    p: &ServicePort,
    cfg: &RenderConfig,
    cluster: &[Endpoint],
    external: &[Endpoint],
) {
    let seconds = p.affinity_seconds.unwrap_or_default();
    let (svc, ext) = (svc_chain(p), ext_chain(p));
    if !cluster.is_empty() {
        r.chains
            .insert(svc.clone(), masquerade_outsiders(cfg).into_iter().collect());
        spread(r, &svc, p, cfg.family, cluster);
    }
    if p.has_external() && !external.is_empty() {
        if p.external_local {
            if !cluster.is_empty() {
                if let Some(cidr) = cfg.cluster_cidr {
                    r.rule(&ext, format!("{} saddr {cidr} goto {svc}", nf(cfg.family)));
                }
                r.rule(&ext, "fib saddr type local jump mark-for-masquerade");
                r.rule(&ext, format!("fib saddr type local goto {svc}"));
            }
        } else {
            r.rule(&ext, "jump mark-for-masquerade");
        }
        spread(r, &ext, p, cfg.family, external);
    }
    let endpoints: BTreeSet<&Endpoint> = cluster.iter().chain(external).collect();
    for e in endpoints {
        let sep = sep_chain(p, e);
        let set = affinity_set(p, e);
        r.sets.insert(
            set.clone(),
            for_family(
                cfg.family,
                &format!("type ipv4_addr ; flags dynamic,timeout ; timeout {seconds}s ;"),
            ),
        );
        r.rule(
            &sep,
            format!("update @{set} {{ {} saddr }}", nf(cfg.family)),
        );
        r.rule(
            &sep,
            format!("meta l4proto {} dnat to {e}", p.id.protocol.as_str()),
        );
    }
}

/// Affinity first (a client seen recently returns to its endpoint), then a random pick:
/// endpoint i of n is taken with probability 1/(n-i), which makes every endpoint equally likely.
fn spread(r: &mut Ruleset, chain: &str, p: &ServicePort, f: Family, endpoints: &[Endpoint]) {
    for e in endpoints {
        r.rule(
            chain,
            format!(
                "{} saddr @{} goto {}",
                nf(f),
                affinity_set(p, e),
                sep_chain(p, e)
            ),
        );
    }
    let n = endpoints.len();
    for (i, e) in endpoints.iter().enumerate() {
        let pick = match n - i {
            1 => String::new(),
            remaining => format!("numgen random mod {remaining} 0 "),
        };
        r.rule(chain, format!("{pick}goto {}", sep_chain(p, e)));
    }
}

/// The whole table, created afresh (after deleting whatever table of that name exists), as
/// one transaction; with `want_elements` false, its maps and sets are left empty (for [`Batch`]).
fn full_text(want: &Ruleset, want_elements: bool) -> String {
    let f = nf(want.family);
    let mut out =
        format!("add table {f} {TABLE}\ndelete table {f} {TABLE}\ntable {f} {TABLE} {{\n");
    for (name, kind, decl) in MAPS {
        let decl = for_family(want.family, decl);
        let _ = write!(out, "\t{kind} {name} {{ {decl}");
        let elements = &want.elements[name];
        if !elements.is_empty() && want_elements {
            let items: Vec<String> = elements.iter().map(|(k, v)| element(k, v)).collect();
            let _ = write!(out, " elements = {{ {} }}", items.join(", "));
        }
        out.push_str(" }\n");
    }
    let _ = write!(
        out,
        "\tset {HAIRPIN} {{ {}",
        for_family(want.family, HAIRPIN_DECL)
    );
    if !want.hairpin.is_empty() && want_elements {
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

fn hairpin_elements<'a>(ips: impl IntoIterator<Item = &'a IpAddr>) -> String {
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

/// The change taking the table from `have` (what we last wrote) to `want`, as the text of its
/// transactions: new chains and sets added, changed chains flushed and refilled, map elements
/// deleted and added, gone chains and sets deleted last (once nothing refers to them). Pick
/// chains that DNAT through an endpoint map are left out (see [`Diff::picks`]).
#[cfg(test)]
fn diff_text(want: &Ruleset, have: &Ruleset) -> (String, usize) {
    let (d, elements) = (diff(want, have), ElementDelta::new(want, have));
    (
        d.head + &elements.text(want.family) + &d.tail,
        d.changes + elements.len(),
    )
}

/// A change of chains and sets in two parts: `head` adds and rewrites chains and sets, `tail`
/// deletes what is no longer wanted; and the pick chains to write through netlink
/// ([`Pick::exprs`]), each with whether it exists.
struct Diff {
    family: Family,
    head: String,
    tail: String,
    changes: usize,
    picks: Vec<(Pick, bool)>,
}

impl Diff {
    /// Writes the pick chains into `batch`: created, or flushed, then their rules.
    fn add_picks(&self, batch: &mut Batch) {
        for (pick, exists) in &self.picks {
            let name = pick.name();
            if *exists {
                batch.flush_chain(TABLE, &name);
            } else {
                batch.add_chain(TABLE, &name);
            }
            for rule in pick.exprs(self.family).into_iter().flatten() {
                batch.add_rule(TABLE, &name, &rule);
            }
        }
    }

    /// Applies the change in up to three transactions, each of whose results routes traffic
    /// as the old or the new table would: `head` through `nft -f` (new chains and sets,
    /// rewritten chains: old elements still lead where they did), when there is one; one
    /// netlink batch of the pick chains and of the elements `elements` writes (the switch);
    /// `tail` through `nft -f` (what nothing refers to any more), when there is one. A change
    /// of endpoints is the batch alone: no `nft` process. Returns the bytes written.
    fn apply(&self, elements: impl FnOnce(&mut Batch)) -> Result<usize, Error> {
        if !self.head.is_empty() {
            apply(&self.head)?;
        }
        let mut batch = Batch::new(af(self.family));
        self.add_picks(&mut batch);
        elements(&mut batch);
        let mut bytes = self.head.len() + batch.commit()?;
        if !self.tail.is_empty() {
            apply(&self.tail)?;
            bytes += self.tail.len();
        }
        Ok(bytes)
    }
}

fn diff(want: &Ruleset, have: &Ruleset) -> Diff {
    let f = nf(want.family);
    let mut out = String::new();
    let mut changes = 0;
    let batched: BTreeMap<String, Pick> = want
        .picks
        .iter()
        .filter(|p| p.exprs(want.family).is_some())
        .map(|p| (p.name(), *p))
        .collect();
    let mut picks = Vec::new();
    // A set whose declaration changed (an affinity timeout) is replaced; the kernel deletes a
    // set only once no rule names it, so the chains that do are emptied first and refilled
    // below, changed or not.
    let replaced: Vec<&String> = want
        .sets
        .iter()
        .filter(|(name, decl)| have.sets.get(*name).is_some_and(|d| d != *decl))
        .map(|(name, _)| name)
        .collect();
    let refill: BTreeSet<&String> = have
        .chains
        .iter()
        .filter(|(_, rules)| {
            replaced
                .iter()
                .any(|set| rules.iter().any(|r| r.contains(&format!("@{set} "))))
        })
        .map(|(chain, _)| chain)
        .collect();
    for chain in &refill {
        let _ = writeln!(out, "flush chain {f} {TABLE} {chain}");
    }
    for (name, decl) in &want.sets {
        if have.sets.get(name) != Some(decl) {
            if have.sets.contains_key(name) {
                let _ = writeln!(out, "delete set {f} {TABLE} {name}");
            }
            let _ = writeln!(out, "add set {f} {TABLE} {name} {{ {decl} }}");
            changes += 1;
        }
    }
    // (New pick chains are added here too, empty: another new chain's rule may name one.)
    for name in want.chains.keys().filter(|n| !have.chains.contains_key(*n)) {
        let _ = write!(out, "add chain {f} {TABLE} {name}");
        // (A base chain is new only in a table of an earlier run that lacks it.)
        if let Some((_, hook)) = BASE_CHAINS.iter().find(|(n, _)| n == name) {
            let _ = write!(out, " {{ {hook} }}");
        }
        out.push('\n');
    }
    for (name, rules) in &want.chains {
        let old = have.chains.get(name);
        let emptied = refill.contains(name);
        if old == Some(rules) && !emptied {
            continue;
        }
        changes += 1;
        if let Some(pick) = batched.get(name) {
            picks.push((*pick, old.is_some()));
            continue;
        }
        if old.is_some() && !emptied {
            let _ = writeln!(out, "flush chain {f} {TABLE} {name}");
        }
        for rule in rules {
            let _ = writeln!(out, "add rule {f} {TABLE} {name} {rule}");
        }
    }
    let head = out;
    let mut out = String::new();
    let gone: Vec<&String> = have
        .chains
        .keys()
        .filter(|n| !want.chains.contains_key(*n))
        .collect();
    for name in &gone {
        let _ = writeln!(out, "flush chain {f} {TABLE} {name}");
    }
    for name in &gone {
        let _ = writeln!(out, "delete chain {f} {TABLE} {name}");
        changes += 1;
    }
    for name in have.sets.keys().filter(|n| !want.sets.contains_key(*n)) {
        let _ = writeln!(out, "delete set {f} {TABLE} {name}");
        changes += 1;
    }
    Diff {
        family: want.family,
        head,
        tail: out,
        changes,
        picks,
    }
}

/// A map's name, the keys deleted from it and the elements (key, value) added.
type MapDelta<'a> = (&'static str, Vec<&'a str>, Vec<(&'a str, &'a str)>);

/// The element changes from `have` to `want`: per map, the keys to delete (gone, or their value
/// changed) and the elements to add; the hairpin addresses gone and added.
struct ElementDelta<'a> {
    maps: Vec<MapDelta<'a>>,
    hairpin: [Vec<&'a IpAddr>; 2],
}

impl<'a> ElementDelta<'a> {
    fn new(want: &'a Ruleset, have: &'a Ruleset) -> Self {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        let maps = want
            .elements
            .iter()
            .map(|(map, elements)| {
                let old = have.elements.get(map).unwrap_or(&EMPTY);
                let gone = old
                    .iter()
                    .filter(|(k, v)| elements.get(*k) != Some(*v))
                    .map(|(k, _)| k.as_str())
                    .collect();
                let added = elements
                    .iter()
                    .filter(|(k, v)| old.get(*k) != Some(*v))
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                (*map, gone, added)
            })
            .collect();
        ElementDelta {
            maps,
            hairpin: [
                have.hairpin.difference(&want.hairpin).collect(),
                want.hairpin.difference(&have.hairpin).collect(),
            ],
        }
    }

    fn len(&self) -> usize {
        let maps: usize = self.maps.iter().map(|(_, g, a)| g.len() + a.len()).sum();
        maps + self.hairpin[0].len() + self.hairpin[1].len()
    }

    /// Into `batch`: each map's deletions before its additions (a changed value is both).
    fn write(&self, batch: &mut Batch) {
        let (mut key, mut value) = (Vec::with_capacity(40), Vec::with_capacity(20));
        for (map, gone, added) in &self.maps {
            for k in gone {
                element_key(map, k, &mut key);
                batch.delete(TABLE, map, &key);
            }
            for (k, v) in added {
                add_element(batch, map, k, v, &mut key, &mut value);
            }
        }
        let [gone, added] = &self.hairpin;
        for ip in gone {
            hairpin_key(ip, &mut key);
            batch.delete(TABLE, HAIRPIN, &key);
        }
        for ip in added {
            hairpin_key(ip, &mut key);
            batch.add(TABLE, HAIRPIN, &key, Data::None);
        }
    }

    /// As `nft -f` text (what the tests read).
    #[cfg(test)]
    fn text(&self, family: Family) -> String {
        let f = nf(family);
        let mut out = String::new();
        for (map, gone, added) in &self.maps {
            if !gone.is_empty() {
                let _ = writeln!(
                    out,
                    "delete element {f} {TABLE} {map} {{ {} }}",
                    gone.join(", ")
                );
            }
            if !added.is_empty() {
                let items: Vec<String> = added.iter().map(|(k, v)| element(k, v)).collect();
                let _ = writeln!(
                    out,
                    "add element {f} {TABLE} {map} {{ {} }}",
                    items.join(", ")
                );
            }
        }
        for (verb, ips) in ["delete", "add"].iter().zip(&self.hairpin) {
            if !ips.is_empty() {
                let _ = writeln!(
                    out,
                    "{verb} element {f} {TABLE} {HAIRPIN} {{ {} }}",
                    hairpin_elements(ips.iter().copied())
                );
            }
        }
        out
    }
}

fn apply(text: &str) -> Result<(), Error> {
    run_tool("nft", &["-f", "-"], Some(text)).map(|_| ())
}

/// Every map and set element of the table `inst` holds into `batch`, each map flushed first:
/// the elements change in one transaction.
fn elements_batch(batch: &mut Batch, inst: &Installed) {
    let (mut key, mut value) = (Vec::with_capacity(40), Vec::with_capacity(20));
    for (map, _, _) in MAPS {
        batch.flush(TABLE, map);
    }
    let fixed = inst.base.elements.iter();
    let fixed = fixed.flat_map(|(map, elements)| {
        elements
            .iter()
            .map(|(k, v)| ((*map, k.as_str()), v.as_str()))
    });
    for ((map, k), v) in fixed.chain(inst.elements()) {
        add_element(batch, map, k, v, &mut key, &mut value);
    }
    batch.flush(TABLE, HAIRPIN);
    for ip in inst.hairpin.keys() {
        hairpin_key(ip, &mut key);
        batch.add(TABLE, HAIRPIN, &key, Data::None);
    }
}

/// A rendered key of `map` into `key`, in the kernel's layout: endpoint maps' keys end in the
/// endpoint's index (numgen's value, host order).
fn element_key(map: &str, k: &str, key: &mut Vec<u8>) {
    key.clear();
    encode(k, map.starts_with("endpoints-"), key);
}

fn hairpin_key(ip: &IpAddr, key: &mut Vec<u8>) {
    key.clear();
    push_addr(key, ip);
    push_addr(key, ip);
}

/// Adds the rendered element `k : v` of `map` to `batch` (`key` and `value` are scratch space).
fn add_element(
    batch: &mut Batch,
    map: &str,
    k: &str,
    v: &str,
    key: &mut Vec<u8>,
    value: &mut Vec<u8>,
) {
    element_key(map, k, key);
    let data = if v.is_empty() {
        Data::None
    } else if let Some(chain) = v.strip_prefix("goto ") {
        Data::Verdict(nft_batch::NFT_GOTO, Some(chain))
    } else if let Some(chain) = v.strip_prefix("jump ") {
        Data::Verdict(nft_batch::NFT_JUMP, Some(chain))
    } else if v == "drop" {
        Data::Verdict(nft_batch::NF_DROP, None)
    } else if v == "accept" {
        Data::Verdict(nft_batch::NF_ACCEPT, None)
    } else {
        value.clear();
        encode(v, false, value);
        Data::Value(value)
    };
    batch.add(TABLE, map, key, data);
}

/// An address in network order: 4 bytes, or 16 for IPv6.
fn push_addr(out: &mut Vec<u8>, ip: &IpAddr) {
    match ip {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
    }
}

/// A rendered key or value (`10.96.0.1 . tcp . 80 . 3`) in the kernel's layout: each field in
/// 4-byte slots, addresses and ports in network order, the protocol a byte, and with `indexed`
/// the last field an endpoint index in host order.
fn encode(text: &str, indexed: bool, out: &mut Vec<u8>) {
    let mut fields = text.split(" . ").peekable();
    while let Some(field) = fields.next() {
        if let Ok(ip) = field.parse::<IpAddr>() {
            push_addr(out, &ip);
        } else if let Some(proto) = match field {
            "tcp" => Some(libc::IPPROTO_TCP),
            "udp" => Some(libc::IPPROTO_UDP),
            "sctp" => Some(libc::IPPROTO_SCTP),
            _ => None,
        } {
            out.extend_from_slice(&[proto as u8, 0, 0, 0]);
        } else if indexed && fields.peek().is_none() {
            let i: u32 = field.parse().expect("rendered endpoint index");
            out.extend_from_slice(&i.to_ne_bytes());
        } else {
            let port: u16 = field.parse().expect("rendered port");
            out.extend_from_slice(&port.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
        }
    }
}

fn table_exists(family: Family) -> Result<bool, Error> {
    nft_batch::table_exists(af(family), TABLE)
}

/// A map element: (map, key).
type ElementKey = (&'static str, String);

/// The ports asking for one element, each with the value it asks for, sorted by port (almost
/// always one).
type Owners = Vec<(Arc<ServicePortName>, String)>;

/// What the table holds, kept per Service port so that a partial sync renders and compares only
/// the ports that changed. Two ports may ask for the same map element (an external IP claimed
/// twice): the last in name order wins, as in a whole render, and the element stays while any
/// port asks for it.
#[derive(Debug, Clone, Default)]
struct Installed {
    cfg: RenderConfig,
    base: Ruleset,
    ports: BTreeMap<ServicePortName, (ServicePort, Ruleset)>,
    /// Map → element key → the ports asking for it (hashed, not ordered: ~210,000 keys at
    /// 10,000 Services, each found or added by one hash instead of ~18 string compares).
    owners: BTreeMap<&'static str, HashMap<String, Owners>>,
    /// Hairpin address → how many ports use it.
    hairpin: BTreeMap<IpAddr, usize>,
    /// The pick chains in the table. A full build makes every k up to the largest in use for
    /// each kind, so that a Service losing endpoints changes map elements only; a partial sync
    /// adds the ones it lacks and removes none (the next full sync does).
    picks: BTreeSet<Pick>,
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
        let mut largest: BTreeMap<(PickKind, Front), usize> = BTreeMap::new();
        for (_, rules) in inst.ports.values() {
            for p in &rules.picks {
                let k = largest.entry((p.kind, p.front)).or_default();
                *k = (*k).max(p.k);
            }
        }
        for ((kind, front), largest) in largest {
            inst.add_picks((1..=largest).map(|k| Pick { kind, front, k }));
        }
        inst
    }

    /// Adds pick chains (and those they send to), returning the ones that are new.
    fn add_picks(&mut self, picks: impl IntoIterator<Item = Pick>) -> Vec<Pick> {
        let mut added = Vec::new();
        for p in picks {
            for p in [Some(p), p.needs()].into_iter().flatten() {
                if self.picks.insert(p) {
                    added.push(p);
                }
            }
        }
        added
    }

    fn insert(&mut self, port: ServicePort, rules: Ruleset) {
        let id = Arc::new(port.id.clone());
        for (map, elements) in &rules.elements {
            let owners = self.owners.entry(*map).or_default();
            for (key, value) in elements {
                let owners = owners.entry(key.clone()).or_default();
                match owners.binary_search_by(|(p, _)| p.as_ref().cmp(&port.id)) {
                    Ok(i) => owners[i].1 = value.clone(),
                    Err(i) => owners.insert(i, (id.clone(), value.clone())),
                }
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
            let Some(map) = self.owners.get_mut(map) else {
                continue;
            };
            for key in elements.keys() {
                if let Some(owners) = map.get_mut(key) {
                    owners.retain(|(p, _)| p.as_ref() != id);
                    if owners.is_empty() {
                        map.remove(key);
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
    fn element(&self, (map, key): &ElementKey) -> Option<&String> {
        Some(&self.owners.get(map)?.get(key)?.last()?.1)
    }

    /// The whole table's contents.
    fn assemble(&self) -> Ruleset {
        let mut r = self.layout();
        for ((map, k), v) in self.elements() {
            r.element(map, k.to_string(), v);
        }
        r
    }

    /// The table's contents but the Services' map elements (the fixed ones, NodePort
    /// addresses, are there): what a full sync compares, its elements going whole as a batch
    /// (see [`elements_batch`]).
    fn layout(&self) -> Ruleset {
        let mut r = self.base.clone();
        for (_, rules) in self.ports.values() {
            r.chains
                .extend(rules.chains.iter().map(|(k, v)| (k.clone(), v.clone())));
            r.sets
                .extend(rules.sets.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        r.hairpin = self.hairpin.keys().copied().collect();
        for p in &self.picks {
            r.chains.insert(p.name(), p.rules(&self.cfg));
        }
        r.picks = self.picks.clone();
        r
    }

    /// The Services' map elements in the table: (map, key) and value.
    fn elements(&self) -> impl Iterator<Item = ((&'static str, &str), &str)> {
        self.owners.iter().flat_map(|(map, elements)| {
            elements.iter().filter_map(|(k, owners)| {
                let (_, v) = owners.last()?;
                Some(((*map, k.as_str()), v.as_str()))
            })
        })
    }

    /// Brings the ports up to `model`, returning the touched part of the table before and
    /// after (chains, sets, elements and hairpin addresses of the ports that changed or went),
    /// which [`diff`] turns into the transaction.
    fn update(&mut self, model: &Model) -> (Ruleset, Ruleset) {
        // Both are sorted by port: one walk through the two finds what went and what changed.
        let (mut gone, mut changed) = (Vec::new(), Vec::new());
        let mut old = self.ports.iter().peekable();
        for (id, p) in &model.ports {
            while let Some((old_id, _)) = old.next_if(|(old_id, _)| *old_id < id) {
                gone.push(old_id.clone());
            }
            match old.next_if(|(old_id, _)| *old_id == id) {
                Some((_, (was, _))) if was == p => {}
                _ => changed.push((p, render_port(p, &self.cfg))),
            }
        }
        gone.extend(old.map(|(id, _)| id.clone()));
        let empty = Ruleset {
            family: self.cfg.family,
            ..Default::default()
        };
        let (mut before, mut after) = (empty.clone(), empty);
        for (map, _, _) in MAPS {
            before.elements.insert(map, BTreeMap::new());
            after.elements.insert(map, BTreeMap::new());
        }
        let mut keys: BTreeSet<ElementKey> = BTreeSet::new();
        let mut ips: BTreeSet<IpAddr> = BTreeSet::new();
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
        let wanted: Vec<Pick> = changed
            .iter()
            .flat_map(|(_, rules)| rules.picks.iter().copied())
            .collect();
        for p in self.add_picks(wanted) {
            after.chains.insert(p.name(), p.rules(&self.cfg));
            after.picks.insert(p);
        }
        for (port, rules) in changed {
            after.merge_port(&rules);
            self.insert(port.clone(), rules);
        }
        self.snapshot(&mut after, &keys, &ips);
        (before, after)
    }

    /// Records the current value of elements `keys` and presence of hairpin `ips` into `r`.
    fn snapshot(&self, r: &mut Ruleset, keys: &BTreeSet<ElementKey>, ips: &BTreeSet<IpAddr>) {
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
                Self::change(&mut self.last, inst, &after, &before)
            }
            // The node's facts changed: what they touch is rewritten.
            Some(last) if !full => {
                let next = Installed::build(model, cfg);
                let (want, have) = (next.assemble(), last.assemble());
                Self::change(&mut self.last, next, &want, &have)
            }
            // First sync of this process over a table of an earlier run (or half of one): what
            // it holds is known by name only.
            None if table_exists(cfg.family)? => {
                let next = Installed::build(model, cfg);
                match nft_batch::names(af(cfg.family), TABLE) {
                    Ok((chains, sets)) => {
                        Self::full_sync(&mut self.last, next, Have::Unknown(chains, sets))
                    }
                    // Without the names the table is replaced whole, as text.
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the earlier table's names over netlink failed; replacing the table as text");
                        let want = next.assemble();
                        let text = full_text(&want, true);
                        Applied::install(&mut self.last, next, &text, want.chains.len(), apply)
                    }
                }
            }
            last => {
                let next = Installed::build(model, cfg);
                let have = match last {
                    Some(last) => Have::Known(last.layout()),
                    None => Have::Nothing,
                };
                Self::full_sync(&mut self.last, next, have)
            }
        }
    }
}

/// What a full sync starts from.
enum Have {
    /// No table.
    Nothing,
    /// The table this process last wrote (its [`Installed::layout`]).
    Known(Ruleset),
    /// A table of an earlier run, by its chains' and sets' names.
    Unknown(Vec<String>, Vec<String>),
}

impl Nftables {
    /// A partial change from `have` to `want` (see [`Diff::apply`]): only the changed elements
    /// go, as a netlink batch.
    fn change(
        last: &mut Option<Installed>,
        next: Installed,
        want: &Ruleset,
        have: &Ruleset,
    ) -> Result<Applied, Error> {
        let (d, elements) = (diff(want, have), ElementDelta::new(want, have));
        let changes = d.changes + elements.len();
        let written = d.apply(|batch| elements.write(batch));
        Self::record(last, next, written, changes)
    }

    /// Records `next` as installed when `written` (bytes) is Ok; a failure forgets what was
    /// installed, so that the next sync rewrites everything.
    fn record(
        last: &mut Option<Installed>,
        next: Installed,
        written: Result<usize, Error>,
        changes: usize,
    ) -> Result<Applied, Error> {
        match written {
            Ok(bytes) => {
                *last = Some(next);
                Ok(Applied { bytes, changes })
            }
            Err(e) => {
                *last = None;
                Err(e)
            }
        }
    }

    /// A full sync in three transactions whose every intermediate state routes traffic as
    /// either the old or the new table would: `nft -f` adds new chains and sets and rewrites
    /// changed chains (old map elements still lead to the same places); one netlink batch then
    /// rewrites the pick chains that DNAT through endpoint maps (which nft 1.0.6 cannot write
    /// over an existing table), flushes every map and loads all the elements (the switch,
    /// atomic); `nft -f` last deletes the chains and sets nothing refers to any more. Elements
    /// go as a batch because `nft` parsing ~200,000 of them as text costs most of a second.
    /// Over a table of an earlier run, every chain is rewritten and every map declared (a
    /// declaration that differs fails the step). Should a step fail, the table is replaced
    /// whole as text, in one transaction.
    fn full_sync(
        last: &mut Option<Installed>,
        next: Installed,
        have: Have,
    ) -> Result<Applied, Error> {
        let want = &next.layout();
        let d = match have {
            Have::Nothing => Diff {
                family: want.family,
                head: full_text(want, false),
                tail: String::new(),
                changes: want.chains.len(),
                picks: Vec::new(),
            },
            // (`add table`, a no-op, puts back a table deleted under us.)
            Have::Known(have) => {
                let mut d = diff(want, &have);
                d.head
                    .insert_str(0, &format!("add table {} {TABLE}\n", nf(want.family)));
                d
            }
            Have::Unknown(chains, sets) => {
                // Every chain found is rewritten; sets found that are not wanted are deleted
                // (the fixed maps are declared below, the wanted dynamic sets added).
                let fixed: BTreeSet<&str> = MAPS
                    .iter()
                    .map(|(name, _, _)| *name)
                    .chain([HAIRPIN])
                    .collect();
                let found = Ruleset {
                    chains: chains
                        .into_iter()
                        .map(|c| (c, vec!["(unknown)".to_string()]))
                        .collect(),
                    sets: sets
                        .into_iter()
                        .filter(|s| !fixed.contains(s.as_str()) && !want.sets.contains_key(s))
                        .map(|s| (s, String::new()))
                        .collect(),
                    ..Default::default()
                };
                let mut d = diff(want, &found);
                let (fam, f) = (want.family, nf(want.family));
                let mut head = format!("add table {f} {TABLE}\n");
                for (name, kind, decl) in MAPS {
                    let decl = for_family(fam, decl);
                    let _ = writeln!(head, "add {kind} {f} {TABLE} {name} {{ {decl} }}");
                }
                let decl = for_family(fam, HAIRPIN_DECL);
                let _ = writeln!(head, "add set {f} {TABLE} {HAIRPIN} {{ {decl} }}");
                d.head.insert_str(0, &head);
                d
            }
        };
        let elements = next.owners.values().map(HashMap::len).sum::<usize>() + next.hairpin.len();
        let written = d
            .apply(|batch| elements_batch(batch, &next))
            .or_else(|e| {
                tracing::warn!(error = %e, "full sync through a netlink batch failed; replacing the table as text");
                let text = full_text(&next.assemble(), true);
                apply(&text).map(|()| text.len())
            });
        Self::record(last, next, written, d.changes + elements)
    }
}

/// Deletes our tables (both families), where present.
pub fn cleanup() -> Result<(), Error> {
    cleanup_family(Family::V4)?;
    cleanup_family(Family::V6)
}

/// Deletes our table of `family`, if present.
pub fn cleanup_family(family: Family) -> Result<(), Error> {
    match table_exists(family) {
        Ok(true) => apply(&format!("delete table {} {TABLE}\n", nf(family))),
        Ok(false) => Ok(()),
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
            ..Default::default()
        }
    }

    #[test]
    fn services_are_map_elements_and_endpoints_picked_from_a_map_by_shared_rules() {
        let p = port("dns", &["10.244.0.2", "10.244.0.3", "10.244.0.4"]);
        let cfg = RenderConfig {
            cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
            ..Default::default()
        };
        let r = render(&model(vec![p.clone()]), &cfg);
        assert_eq!(
            r.elements["service-ips"]["10.96.0.20 . udp . 53"],
            "goto cluster-addr-3"
        );
        assert_eq!(
            r.elements["endpoints-addr-cluster"]["10.96.0.20 . udp . 53 . 2"],
            "10.244.0.4 . 5353"
        );
        assert_eq!(
            r.chains["cluster-addr-3"],
            [
                "jump masquerade-outsiders",
                "dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 3 map @endpoints-addr-cluster",
            ]
        );
        // Every smaller count has its chain already; no chain or set of the Service's own.
        assert!(r.chains.contains_key("cluster-addr-1") && r.chains.contains_key("cluster-addr-2"));
        assert!(
            !r.chains
                .keys()
                .any(|c| c.starts_with("svc-") || c.starts_with("sep-"))
        );
        assert!(r.sets.is_empty());
        assert_eq!(
            r.chains["masquerade-outsiders"],
            ["ip saddr != 10.244.0.0/16 jump mark-for-masquerade"]
        );
        assert!(r.hairpin.contains(&"10.244.0.3".parse().unwrap()));
        let text = full_text(&r, true);
        assert!(text.starts_with("add table ip skiff\ndelete table ip skiff\n"));
        assert!(text.contains("elements = { 10.96.0.20 . udp . 53 : goto cluster-addr-3 }"));
    }

    #[test]
    fn external_fronts_pick_by_address_or_node_port_and_local_keeps_a_cluster_path() {
        let mut p = port("web", &["10.244.0.2", "10.244.0.3"]);
        p.endpoints[1].local = false;
        p.node_port = Some(30080);
        p.external_ips = vec!["192.0.2.1".parse().unwrap()];
        let r = render(&model(vec![p.clone()]), &RenderConfig::default());
        assert_eq!(
            r.elements["service-nodeports"]["udp . 30080"],
            "goto external-port-2"
        );
        assert_eq!(
            r.elements["endpoints-port-external"]["udp . 30080 . 1"],
            "10.244.0.3 . 5353"
        );
        assert_eq!(
            r.chains["external-port-2"],
            [
                "jump mark-for-masquerade",
                "dnat ip to meta l4proto . th dport . numgen random mod 2 map @endpoints-port-external",
            ]
        );

        p.external_local = true;
        let r = render(&model(vec![p.clone()]), &RenderConfig::default());
        // From outside: the one local endpoint, unmasqueraded; pods and the node: all of them.
        assert_eq!(
            r.elements["service-ips"]["192.0.2.1 . udp . 53"],
            "goto policy-local-addr-1"
        );
        assert_eq!(
            r.elements["endpoints-addr-external"]["192.0.2.1 . udp . 53 . 0"],
            "10.244.0.2 . 5353"
        );
        assert_eq!(
            r.elements["cluster-path-port"]["udp . 30080"],
            "goto cluster-port-2"
        );
        assert_eq!(
            r.chains["policy-local-port-1"],
            [
                "fib saddr type local jump mark-for-masquerade",
                "fib saddr type local meta l4proto . th dport vmap @cluster-path-port",
                "goto local-port-1",
            ]
        );
        assert_eq!(
            r.chains["local-port-1"],
            [
                "dnat ip to meta l4proto . th dport . numgen random mod 1 map @endpoints-port-external"
            ]
        );
    }

    #[test]
    fn elements_are_encoded_in_the_kernels_layout() {
        let mut key = Vec::new();
        encode("10.96.0.20 . udp . 53 . 2", true, &mut key);
        let mut want = vec![10, 96, 0, 20, 17, 0, 0, 0, 0, 53, 0, 0];
        want.extend_from_slice(&2u32.to_ne_bytes());
        assert_eq!(key, want);
        let mut value = Vec::new();
        encode("10.244.0.4 . 5353", false, &mut value);
        assert_eq!(value, [10, 244, 0, 4, 0x14, 0xe9, 0, 0]);
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
    fn a_changed_endpoint_count_changes_map_elements_only() {
        let a = port("a", &["10.244.0.2"]);
        let mut b = port("b", &["10.244.0.3", "10.244.0.4"]);
        b.cluster_ip = "10.96.0.21".parse().unwrap();
        let cfg = RenderConfig::default();
        let mut inst = Installed::build(&model(vec![a.clone(), b.clone()]), &cfg);
        let mut b2 = b.clone();
        b2.endpoints.pop();
        let (before, after) = inst.update(&model(vec![a.clone(), b2]));
        let (text, changes) = diff_text(&after, &before);
        assert_eq!(
            text,
            "delete element ip skiff endpoints-addr-cluster { 10.96.0.21 . udp . 53 . 1 }\n\
             delete element ip skiff service-ips { 10.96.0.21 . udp . 53 }\n\
             add element ip skiff service-ips { 10.96.0.21 . udp . 53 : goto cluster-addr-1 }\n\
             delete element ip skiff hairpin-endpoints { 10.244.0.4 . 10.244.0.4 }\n"
        );
        assert_eq!(changes, 4);
        let (before, after) = inst.update(&model(vec![a, b]));
        let (text, _) = diff_text(&after, &before);
        assert!(!text.contains("chain") && !text.contains("rule"), "{text}");
    }

    #[test]
    fn a_service_losing_its_endpoints_moves_to_the_reject_map() {
        let before = render(
            &model(vec![port("a", &["10.244.0.2"])]),
            &RenderConfig::default(),
        );
        let after = render(&model(vec![port("a", &[])]), &RenderConfig::default());
        let (text, _) = diff_text(&after, &before);
        assert!(
            text.contains("delete element ip skiff service-ips { 10.96.0.20 . udp . 53 }"),
            "{text}"
        );
        assert!(text.contains("add element ip skiff no-endpoint-services { 10.96.0.20 . udp . 53 : goto reject-chain }"));
        assert!(text.contains(
            "delete element ip skiff endpoints-addr-cluster { 10.96.0.20 . udp . 53 . 0 }"
        ));
        assert!(text.contains("delete chain ip skiff cluster-addr-1"));
    }

    #[test]
    fn a_partial_sync_touches_only_changed_ports_and_keeps_pick_chains() {
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
        let mut d = port("d", &["10.244.0.6", "10.244.0.7", "10.244.0.8"]);
        d.cluster_ip = "10.96.0.23".parse().unwrap();
        let new = model(vec![a.clone(), b2, d]);

        let mut inst = Installed::build(&old, &cfg);
        let (before, after) = inst.update(&new);
        let d = diff(&after, &before);
        let (partial, _) = diff_text(&after, &before);
        assert!(!partial.contains("10.96.0.20"), "{partial}");
        // c's going hands the external IP to b and keeps a's endpoint in the hairpin set.
        assert!(partial.contains("192.0.2.1 . udp . 53 : goto external-addr-1"));
        assert!(partial.contains(&format!("delete chain ip skiff {}", svc_chain(&c))));
        assert!(!partial.contains("10.244.0.2 . 10.244.0.2"));
        // d is the first with 3 endpoints: its pick chain is added (through netlink, before the
        // text); external-addr-2, no longer used, stays until the next full sync.
        let cluster_3 = Pick {
            kind: PickKind::Cluster,
            front: Front::Addr,
            k: 3,
        };
        assert_eq!(d.picks, [(cluster_3, false)]);
        assert!(
            partial.contains("add chain ip skiff cluster-addr-3\n")
                && !partial.contains("add rule ip skiff cluster-addr-3"),
            "{partial}"
        );
        assert!(!partial.contains("delete chain ip skiff external-addr-2"));
        // The table is the whole render's, plus the pick chains kept.
        let (kept, whole) = (inst.assemble(), render(&new, &cfg));
        assert_eq!(
            (&kept.elements, &kept.hairpin, &kept.sets),
            (&whole.elements, &whole.hairpin, &whole.sets)
        );
        let extra: Vec<&String> = kept
            .chains
            .keys()
            .filter(|c| !whole.chains.contains_key(*c))
            .collect();
        assert_eq!(extra, ["external-addr-2"]);
        // A full sync from there removes it.
        let (text, _) = diff_text(&whole, &kept);
        assert!(
            text.contains("delete chain ip skiff external-addr-2"),
            "{text}"
        );
        // Nothing changed: nothing touched.
        let (before, after) = inst.update(&new);
        assert_eq!(diff_text(&after, &before).0, "");
    }
}
