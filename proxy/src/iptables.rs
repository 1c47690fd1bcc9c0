//! The iptables renderer: kube-proxy's iptables layout under chains of our own, written with one
//! `iptables-restore --noflush` that names only our chains (declaring a chain flushes it), so
//! nothing else on the node is touched and a failed restore changes nothing. A partial sync
//! rewrites only the chains whose rules changed since the last successful one.
//!
//! nat: PREROUTING/OUTPUT → SKIFF-SERVICES → (ClusterIP) SKIFF-SVC-<hash> → SKIFF-SEP-<hash> (DNAT);
//! externalIPs, load-balancer IPs and SKIFF-NODEPORTS → SKIFF-EXT-<hash>; POSTROUTING →
//! SKIFF-POSTROUTING masquerades what SKIFF-MARK-MASQ marked.
//! filter: INPUT/FORWARD/OUTPUT (new connections) → SKIFF-SERVICES rejects Services without
//! endpoints; FORWARD → SKIFF-FORWARD accepts marked and established Service traffic.
//!
//! The IPv6 model is written the same way with ip6tables (`ip6tables-restore --noflush`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write};
use std::net::IpAddr;

use crate::dataplane::{Applied, DataPlane, Error, MASQ_MARK, RenderConfig, run_tool};
use crate::model::{Endpoint, Family, Model, Protocol, ServicePort};

/// The tools of a family: (iptables, iptables-restore, iptables-save, nft's table family).
fn tools(f: Family) -> (&'static str, &'static str, &'static str, &'static str) {
    match f {
        Family::V4 => ("iptables", "iptables-restore", "iptables-save", "ip"),
        Family::V6 => ("ip6tables", "ip6tables-restore", "ip6tables-save", "ip6"),
    }
}

/// `-m recent`'s mask keeping the whole client address, in the family of `ip`.
fn whole_mask(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "255.255.255.255"
    } else {
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    }
}

/// One address as a match: `10.96.0.10/32`, `fd00::a/128`.
struct Host(IpAddr);

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = if self.0.is_ipv4() { 32 } else { 128 };
        write!(f, "{}/{bits}", self.0)
    }
}

/// The per-Service chains; with the fixed chains below, everything the proxy owns. Other
/// `SKIFF-` chains (the kubelet's masquerade and hostPort chains) are not ours to touch.
const PER_SERVICE: [&str; 3] = ["SKIFF-SVC-", "SKIFF-SEP-", "SKIFF-EXT-"];
const SERVICES: &str = "SKIFF-SERVICES";
const NODEPORTS: &str = "SKIFF-NODEPORTS";
const MARK_MASQ: &str = "SKIFF-MARK-MASQ";
const POSTROUTING: &str = "SKIFF-POSTROUTING";
const FORWARD: &str = "SKIFF-FORWARD";
const FIXED: [&str; 5] = [SERVICES, NODEPORTS, MARK_MASQ, POSTROUTING, FORWARD];

/// Whether `chain` is one the proxy writes.
fn ours(chain: &str) -> bool {
    FIXED.contains(&chain) || PER_SERVICE.iter().any(|p| chain.starts_with(p))
}

/// The two tables we write, in the order we write them.
const TABLES: [&str; 2] = ["filter", "nat"];

/// Jumps from the built-in chains into ours: (table, built-in chain, match, our chain).
const JUMPS: [(&str, &str, &str, &str); 6] = [
    ("filter", "INPUT", "-m conntrack --ctstate NEW", SERVICES),
    ("filter", "FORWARD", "-m conntrack --ctstate NEW", SERVICES),
    ("filter", "OUTPUT", "-m conntrack --ctstate NEW", SERVICES),
    ("filter", "FORWARD", "", FORWARD),
    ("nat", "PREROUTING", "", SERVICES),
    ("nat", "OUTPUT", "", SERVICES),
];
const POSTROUTING_JUMP: (&str, &str, &str, &str) = ("nat", "POSTROUTING", "", POSTROUTING);

/// Our chains and their rules (each a full `-A CHAIN …` line), per table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub tables: BTreeMap<&'static str, BTreeMap<String, Vec<String>>>,
}

impl Ruleset {
    fn chain(&mut self, table: &'static str, name: &str) -> &mut Vec<String> {
        self.tables
            .entry(table)
            .or_default()
            .entry(name.to_string())
            .or_default()
    }

    fn add(&mut self, table: &'static str, chain: &str, rule: String) {
        self.chain(table, chain).push(format!("-A {chain} {rule}"));
    }
}

fn svc_chain(p: &ServicePort) -> String {
    format!("SKIFF-SVC-{}", p.id.hash(""))
}
fn ext_chain(p: &ServicePort) -> String {
    format!("SKIFF-EXT-{}", p.id.hash(""))
}
fn sep_chain(p: &ServicePort, e: &Endpoint) -> String {
    format!("SKIFF-SEP-{}", p.id.hash(&e.to_string()))
}

fn dport(p: &ServicePort, port: u16) -> String {
    let proto = p.id.protocol.as_str();
    format!("-p {proto} -m {proto} --dport {port}")
}

/// Computes every chain we own from the model.
pub fn render(model: &Model, cfg: &RenderConfig) -> Ruleset {
    let mut r = Ruleset::default();
    for chain in [SERVICES, FORWARD] {
        r.chain("filter", chain);
    }
    for chain in [SERVICES, NODEPORTS, MARK_MASQ, POSTROUTING] {
        r.chain("nat", chain);
    }
    r.add(
        "nat",
        MARK_MASQ,
        format!("-j MARK --or-mark {MASQ_MARK:#x}"),
    );
    r.add(
        "nat",
        POSTROUTING,
        format!("-m mark ! --mark {MASQ_MARK:#x}/{MASQ_MARK:#x} -j RETURN"),
    );
    r.add(
        "nat",
        POSTROUTING,
        format!("-j MARK --xor-mark {MASQ_MARK:#x}"),
    );
    r.add(
        "nat",
        POSTROUTING,
        "-m comment --comment \"skiff service traffic requiring SNAT\" -j MASQUERADE --random-fully"
            .into(),
    );
    r.add(
        "filter",
        FORWARD,
        "-m conntrack --ctstate INVALID -j DROP".into(),
    );
    r.add(
        "filter",
        FORWARD,
        format!("-m mark --mark {MASQ_MARK:#x}/{MASQ_MARK:#x} -j ACCEPT"),
    );
    r.add(
        "filter",
        FORWARD,
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".into(),
    );

    for p in model.ports.values() {
        render_port(&mut r, p, cfg);
    }

    // NodePorts last, after every ClusterIP rule.
    for dst in node_destinations(cfg) {
        r.add(
            "nat",
            SERVICES,
            format!("-m comment --comment \"skiff service nodeports\" {dst} -j {NODEPORTS}"),
        );
    }
    r
}

/// How a rule selects the node's NodePort addresses.
fn node_destinations(cfg: &RenderConfig) -> Vec<String> {
    match &cfg.node_ips {
        None => vec!["-m addrtype --dst-type LOCAL".to_string()],
        Some(ips) => ips.iter().map(|ip| format!("-d {}", Host(*ip))).collect(),
    }
}

fn render_port(r: &mut Ruleset, p: &ServicePort, cfg: &RenderConfig) {
    let id = &p.id;
    let cluster = p.cluster_endpoints();
    let external = p.external_endpoints();
    let svc = svc_chain(p);
    let ext = ext_chain(p);
    let cip = Host(p.cluster_ip);
    // No endpoints at all: REJECT, so clients fail fast. Endpoints only elsewhere (a Local
    // policy): DROP, as kube-proxy does.
    let no_endpoints = if p.endpoints.iter().any(|e| e.ready || e.serving) {
        "DROP"
    } else {
        match (cfg.family, p.id.protocol) {
            (Family::V4, _) => "REJECT --reject-with icmp-port-unreachable",
            // The node's own TCP connections take an ICMPv6 error only when their SYN is sent
            // again, a second later: a reset refuses them at once.
            (Family::V6, Protocol::Tcp) => "REJECT --reject-with tcp-reset",
            (Family::V6, _) => "REJECT --reject-with icmp6-port-unreachable",
        }
    };

    if cluster.is_empty() {
        r.add(
            "filter",
            SERVICES,
            format!(
                "-d {cip} -m comment --comment \"{id} has no endpoints\" {} -j {no_endpoints}",
                dport(p, p.port)
            ),
        );
    } else {
        r.add(
            "nat",
            SERVICES,
            format!(
                "-d {cip} -m comment --comment \"{id} cluster IP\" {} -j {svc}",
                dport(p, p.port)
            ),
        );
        if cfg.masquerade_all {
            r.add(
                "nat",
                &svc,
                format!("-d {cip} {} -j {MARK_MASQ}", dport(p, p.port)),
            );
        } else if let Some(cidr) = cfg.cluster_cidr {
            r.add(
                "nat",
                &svc,
                format!("! -s {cidr} -d {cip} {} -j {MARK_MASQ}", dport(p, p.port)),
            );
        }
        spread(r, &svc, p, &cluster);
    }

    if p.has_external() {
        let external_dsts = p
            .external_ips
            .iter()
            .chain(&p.load_balancer_ips)
            .map(|ip| Host(*ip));
        if external.is_empty() {
            for ip in external_dsts {
                r.add(
                    "filter",
                    SERVICES,
                    format!(
                        "-d {ip} -m comment --comment \"{id} has no endpoints\" {} -j {no_endpoints}",
                        dport(p, p.port)
                    ),
                );
            }
            if let Some(np) = p.node_port {
                for dst in node_destinations(cfg) {
                    r.add(
                        "filter",
                        SERVICES,
                        format!(
                            "{dst} -m comment --comment \"{id} has no endpoints\" {} -j {no_endpoints}",
                            dport(p, np)
                        ),
                    );
                }
            }
        } else {
            for ip in external_dsts {
                r.add(
                    "nat",
                    SERVICES,
                    format!(
                        "-d {ip} -m comment --comment \"{id} external IP\" {} -j {ext}",
                        dport(p, p.port)
                    ),
                );
            }
            if let Some(np) = p.node_port {
                r.add(
                    "nat",
                    NODEPORTS,
                    format!("-m comment --comment \"{id}\" {} -j {ext}", dport(p, np)),
                );
            }
            if p.external_local {
                // Pods and the node itself keep the cluster policy; outside clients reach a
                // local endpoint with their source address intact.
                if !cluster.is_empty() {
                    if let Some(cidr) = cfg.cluster_cidr {
                        r.add("nat", &ext, format!("-s {cidr} -j {svc}"));
                    }
                    r.add(
                        "nat",
                        &ext,
                        format!("-m addrtype --src-type LOCAL -j {MARK_MASQ}"),
                    );
                    r.add(
                        "nat",
                        &ext,
                        format!("-m addrtype --src-type LOCAL -j {svc}"),
                    );
                }
            } else {
                r.add("nat", &ext, format!("-j {MARK_MASQ}"));
            }
            spread(r, &ext, p, &external);
        }
    }

    let mut endpoints: BTreeSet<Endpoint> = cluster.iter().copied().collect();
    endpoints.extend(external.iter().copied());
    for e in endpoints {
        let sep = sep_chain(p, &e);
        // Hairpin: a pod reaching itself through the Service is masqueraded so the reply
        // comes back through the node.
        r.add("nat", &sep, format!("-s {} -j {MARK_MASQ}", Host(e.ip)));
        let affinity = if p.affinity_seconds.is_some() {
            let mask = whole_mask(e.ip);
            format!(" -m recent --set --name {sep} --mask {mask} --rsource")
        } else {
            String::new()
        };
        let proto = id.protocol.as_str();
        r.add(
            "nat",
            &sep,
            format!("-p {proto} -m {proto}{affinity} -j DNAT --to-destination {e}"),
        );
    }
}

/// Random spread over `endpoints` from `chain`: with ClientIP affinity, a client seen recently
/// goes back to its endpoint first; then endpoint i of n is taken with probability 1/(n-i).
fn spread(r: &mut Ruleset, chain: &str, p: &ServicePort, endpoints: &[Endpoint]) {
    if let Some(seconds) = p.affinity_seconds {
        for e in endpoints {
            let sep = sep_chain(p, e);
            r.add(
                "nat",
                chain,
                format!(
                    "-m comment --comment \"{} -> {e}\" -m recent --rcheck --seconds {seconds} --reap --name {sep} --mask {} --rsource -j {sep}",
                    p.id,
                    whole_mask(e.ip)
                ),
            );
        }
    }
    let n = endpoints.len();
    for (i, e) in endpoints.iter().enumerate() {
        let sep = sep_chain(p, e);
        let remaining = n - i;
        let rule = if remaining > 1 {
            format!(
                "-m comment --comment \"{} -> {e}\" -m statistic --mode random --probability {:.11} -j {sep}",
                p.id,
                1.0 / remaining as f64
            )
        } else {
            format!("-m comment --comment \"{} -> {e}\" -j {sep}", p.id)
        };
        r.add("nat", chain, rule);
    }
}

/// What is installed of ours: chain names and the jump rules from built-in chains.
#[derive(Debug, Default)]
struct Installed {
    chains: BTreeMap<String, BTreeSet<String>>,
    /// Saved `-A BUILTIN … -j SKIFF-…` lines, per table.
    jumps: BTreeMap<String, Vec<String>>,
}

/// Reads what is installed of ours. On the nf_tables backend, without `iptables-save`: 1.8.9's
/// dies (SIGSEGV) on a table of ~110,000 chains, 10,000 Services' worth, and lists every rule
/// to show a few jumps. The chain names come from `nft list chains ip` (names only, no rules)
/// and the jumps from `iptables -S` of each built-in chain we jump from. The legacy backend's
/// `iptables-save` reads the table in one piece from the kernel and is used as it is.
fn read_installed(family: Family) -> Result<Installed, Error> {
    let (iptables, _, save, nft_family) = tools(family);
    let version = run_tool(iptables, &["-V"], None)?;
    if version.contains("nf_tables") {
        match run_tool("nft", &["list", "chains", nft_family], None) {
            Ok(listing) => {
                let mut inst = Installed {
                    chains: parse_nft_chains(&listing, nft_family),
                    ..Default::default()
                };
                let builtins: BTreeSet<(&str, &str)> = JUMPS
                    .iter()
                    .chain([&POSTROUTING_JUMP])
                    .map(|(table, builtin, _, _)| (*table, *builtin))
                    .collect();
                // (Listing a built-in chain of a table that is not there would create it.)
                let present = |table: &str| {
                    listing
                        .lines()
                        .any(|l| l.trim() == format!("table {nft_family} {table} {{"))
                };
                for (table, builtin) in builtins.into_iter().filter(|(t, _)| present(t)) {
                    let rules = run_tool(iptables, &["-w", "-t", table, "-S", builtin], None)?;
                    let found = parse_installed(&format!("*{table}\n{rules}"));
                    for (table, lines) in found.jumps {
                        inst.jumps.entry(table).or_default().extend(lines);
                    }
                }
                return Ok(inst);
            }
            // No nft binary beside iptables-nft: the table dump is all there is.
            Err(Error::Spawn { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let saved = run_tool(save, &[], None)?;
    Ok(parse_installed(&saved))
}

/// Our chains in iptables-nft's `ip filter` and `ip nat` tables (`ip6` with `nft_family`
/// `ip6`), from `nft list chains ip` (`ip6`).
fn parse_nft_chains(listing: &str, nft_family: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut chains: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut table: Option<&str> = None;
    let prefix = format!("table {nft_family} ");
    for line in listing.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix(prefix.as_str()) {
            table = rest
                .strip_suffix('{')
                .map(str::trim)
                .filter(|t| TABLES.contains(t));
        } else if let (Some(table), Some(rest)) = (table, line.strip_prefix("chain ")) {
            let name = rest.trim_end_matches('{').trim();
            if ours(name) {
                chains
                    .entry(table.to_string())
                    .or_default()
                    .insert(name.to_string());
            }
        }
    }
    chains
}

fn parse_installed(saved: &str) -> Installed {
    let mut inst = Installed::default();
    let mut table = String::new();
    for line in saved.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if ours(name) {
                inst.chains
                    .entry(table.clone())
                    .or_default()
                    .insert(name.to_string());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            let target = rule.rsplit(" -j ").next().unwrap_or_default();
            if !ours(chain) && ours(target) {
                inst.jumps
                    .entry(table.clone())
                    .or_default()
                    .push(line.to_string());
            }
        }
    }
    inst
}

fn jump_present(inst: &Installed, (table, builtin, _, target): (&str, &str, &str, &str)) -> bool {
    inst.jumps.get(table).is_some_and(|lines| {
        lines.iter().any(|l| {
            l.starts_with(&format!("-A {builtin} ")) && l.ends_with(&format!("-j {target}"))
        })
    })
}

fn jump_rule((_, builtin, matches, target): (&str, &str, &str, &str), insert: bool) -> String {
    let verb = if insert { "-I" } else { "-A" };
    let matches = if matches.is_empty() {
        String::new()
    } else {
        format!("{matches} ")
    };
    format!("{verb} {builtin} {matches}-m comment --comment \"skiff service portals\" -j {target}")
}

/// Chains rewritten per transaction (COMMIT) at most. iptables-nft's restore slows down with
/// the square of the chains and rules in one transaction (5,000 Services' 55,000 chains take
/// minutes in one, seconds in COMMITs of this size), so a larger rewrite, a full sync, is split:
/// see [`staged_sections`]. A partial sync stays one atomic transaction.
const CHAINS_PER_COMMIT: usize = 1000;

/// The restore text taking the node from `before` (what we last wrote, or on a full sync what
/// is installed) to `after`, and how many chains it rewrites or deletes; empty when nothing
/// changes.
fn restore_text(
    after: &Ruleset,
    before: &BTreeMap<&str, BTreeMap<String, Vec<String>>>,
    stale: &BTreeMap<String, BTreeSet<String>>,
    missing_jumps: &[(&str, &str, &str, &str)],
) -> (String, usize) {
    let mut out = String::new();
    let mut changes = 0;
    let empty = BTreeMap::new();
    for table in TABLES {
        let want = after.tables.get(table).unwrap_or(&empty);
        let had = before.get(table).unwrap_or(&empty);
        let changed: Vec<Chain> = want
            .iter()
            .filter(|(name, rules)| had.get(*name) != Some(rules))
            .collect();
        let mut deleted: BTreeSet<&String> = had
            .keys()
            .filter(|name| !want.contains_key(*name))
            .collect();
        deleted.extend(
            stale
                .get(table)
                .into_iter()
                .flatten()
                .filter(|name| !want.contains_key(*name)),
        );
        let deleted: Vec<&String> = deleted.into_iter().collect();
        let jumps: Vec<_> = missing_jumps.iter().filter(|j| j.0 == table).collect();
        if changed.is_empty() && deleted.is_empty() && jumps.is_empty() {
            continue;
        }
        changes += changed.len() + deleted.len();
        if changed.len() + deleted.len() <= CHAINS_PER_COMMIT {
            section(&mut out, table, &changed, &jumps, &deleted);
        } else {
            let (stages, entry) = staged_sections(changed);
            for chains in stages {
                section(&mut out, table, &chains, &[], &[]);
            }
            section(&mut out, table, &entry, &jumps, &deleted);
        }
    }
    (out, changes)
}

/// A chain and its rules.
type Chain<'a> = (&'a String, &'a Vec<String>);

/// A rewrite too large for one transaction, in transactions that keep every rule's jump
/// target in place: endpoint chains (and the fixed chains they jump to) first, then the
/// Service chains jumping to them, then the external chains jumping to those. The entry
/// chains (SKIFF-SERVICES, SKIFF-NODEPORTS, SKIFF-FORWARD), returned apart, go last with the
/// jumps and the deletion of chains that went, once nothing refers to them. A Service's
/// chains may be written in different transactions, each consistent: a chain's name is the
/// hash of what it serves.
fn staged_sections(changed: Vec<Chain<'_>>) -> (Vec<Vec<Chain<'_>>>, Vec<Chain<'_>>) {
    let stage = |name: &str| {
        if name.starts_with("SKIFF-SEP-") || name == MARK_MASQ || name == POSTROUTING {
            0
        } else if name.starts_with("SKIFF-SVC-") {
            1
        } else if name.starts_with("SKIFF-EXT-") {
            2
        } else {
            3
        }
    };
    let mut stages: [Vec<Chain>; 4] = Default::default();
    for chain in changed {
        stages[stage(chain.0)].push(chain);
    }
    let [leaves, services, external, entry] = stages;
    let staged = [leaves, services, external]
        .iter()
        .flat_map(|s| s.chunks(CHAINS_PER_COMMIT).map(<[Chain]>::to_vec))
        .collect();
    (staged, entry)
}

/// One `*table … COMMIT` transaction: `chains` declared (which flushes them) and refilled,
/// `jumps` from the built-in chains added, `deleted` flushed and deleted.
fn section(
    out: &mut String,
    table: &str,
    chains: &[Chain],
    jumps: &[&(&str, &str, &str, &str)],
    deleted: &[&String],
) {
    if chains.is_empty() && jumps.is_empty() && deleted.is_empty() {
        return;
    }
    let _ = writeln!(out, "*{table}");
    for name in chains.iter().map(|(n, _)| n).chain(deleted) {
        let _ = writeln!(out, ":{name} - [0:0]");
    }
    for (_, rules) in chains {
        for rule in *rules {
            out.push_str(rule);
            out.push('\n');
        }
    }
    for jump in jumps {
        // The masquerade jump goes last in POSTROUTING; service jumps go first.
        let insert = **jump != POSTROUTING_JUMP;
        let _ = writeln!(out, "{}", jump_rule(**jump, insert));
    }
    for name in deleted {
        let _ = writeln!(out, "-X {name}");
    }
    out.push_str("COMMIT\n");
}

fn restore(family: Family, text: &str) -> Result<(), Error> {
    run_tool(tools(family).1, &["-w", "--noflush"], Some(text)).map(|_| ())
}

/// The iptables data plane, remembering what it last wrote for partial syncs.
#[derive(Default)]
pub struct Iptables {
    last: Option<Ruleset>,
}

impl DataPlane for Iptables {
    fn sync(&mut self, model: &Model, cfg: &RenderConfig, full: bool) -> Result<Applied, Error> {
        let want = render(model, cfg);
        let (text, changes) = match (&self.last, full) {
            (Some(last), false) => restore_text(&want, &last.tables, &BTreeMap::new(), &[]),
            _ => {
                // Full: reconcile with what is installed, whoever wrote it (an earlier run of
                // ours, or a crash half way): every chain of ours is rewritten, strays deleted
                // and missing jumps added.
                let inst = read_installed(cfg.family)?;
                let missing: Vec<_> = JUMPS
                    .into_iter()
                    .chain([POSTROUTING_JUMP])
                    .filter(|j| !jump_present(&inst, *j))
                    .collect();
                restore_text(&want, &BTreeMap::new(), &inst.chains, &missing)
            }
        };
        Applied::install(&mut self.last, want, &text, changes, |t| {
            restore(cfg.family, t)
        })
    }
}

/// Removes our jumps and chains from both tables, of both families.
pub fn cleanup() -> Result<(), Error> {
    cleanup_family(Family::V4)?;
    cleanup_family(Family::V6)
}

/// Removes our jumps and chains from both tables of `family`.
pub fn cleanup_family(family: Family) -> Result<(), Error> {
    let inst = match read_installed(family) {
        Ok(i) => i,
        // No iptables on the node: nothing of ours can be there.
        Err(Error::Spawn { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut out = String::new();
    for table in TABLES {
        let chains = inst.chains.get(table);
        let jumps = inst.jumps.get(table);
        if chains.is_none() && jumps.is_none() {
            continue;
        }
        let _ = writeln!(out, "*{table}");
        for name in chains.into_iter().flatten() {
            let _ = writeln!(out, ":{name} - [0:0]");
        }
        for jump in jumps.into_iter().flatten() {
            let _ = writeln!(out, "-D {}", &jump[3..]);
        }
        for name in chains.into_iter().flatten() {
            let _ = writeln!(out, "-X {name}");
        }
        out.push_str("COMMIT\n");
    }
    if out.is_empty() {
        return Ok(());
    }
    restore(family, &out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, ServicePortName};

    fn port(name: &str, eps: &[(&str, bool)]) -> ServicePort {
        ServicePort {
            id: ServicePortName {
                namespace: "default".into(),
                name: name.into(),
                port: "http".into(),
                protocol: Protocol::Tcp,
            },
            cluster_ip: "10.96.0.10".parse().unwrap(),
            port: 80,
            node_port: Some(30080),
            external_ips: vec![],
            load_balancer_ips: vec![],
            affinity_seconds: None,
            internal_local: false,
            external_local: false,
            health_check_node_port: None,
            endpoints: eps
                .iter()
                .map(|(ip, ready)| Endpoint {
                    ip: ip.parse().unwrap(),
                    port: 8080,
                    ready: *ready,
                    serving: *ready,
                    terminating: false,
                    local: false,
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

    fn cfg() -> RenderConfig {
        RenderConfig {
            cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn endpoints_are_spread_with_decreasing_probability() {
        let p = port(
            "web",
            &[
                ("10.244.0.2", true),
                ("10.244.0.3", true),
                ("10.244.0.4", false),
            ],
        );
        let r = render(&model(vec![p.clone()]), &cfg());
        let nat = &r.tables["nat"];
        let svc = &nat[&svc_chain(&p)];
        assert_eq!(svc.len(), 3, "{svc:#?}");
        assert!(svc[0].starts_with(&format!("-A {} ! -s 10.244.0.0/16", svc_chain(&p))));
        assert!(svc[1].contains("--probability 0.50000000000"));
        assert!(!svc[2].contains("probability"));
        // One SEP chain per ready endpoint, each DNATing to it.
        let seps: Vec<_> = nat.keys().filter(|k| k.starts_with("SKIFF-SEP-")).collect();
        assert_eq!(seps.len(), 2);
        assert!(nat.keys().all(|k| k.len() <= 28));
        assert!(nat[SERVICES].iter().any(|l| l.contains("-d 10.96.0.10/32")));
        assert!(nat[NODEPORTS][0].contains("--dport 30080"));
        assert!(
            nat[SERVICES]
                .last()
                .unwrap()
                .contains("--dst-type LOCAL -j SKIFF-NODEPORTS")
        );
    }

    #[test]
    fn a_service_without_endpoints_is_rejected_in_filter() {
        let r = render(
            &model(vec![port("empty", &[("10.244.0.2", false)])]),
            &cfg(),
        );
        let filter = &r.tables["filter"][SERVICES];
        assert_eq!(filter.len(), 2, "{filter:#?}");
        assert!(
            filter
                .iter()
                .all(|l| l.ends_with("-j REJECT --reject-with icmp-port-unreachable"))
        );
        assert!(!r.tables["nat"].keys().any(|k| k.starts_with("SKIFF-SVC-")));
    }

    #[test]
    fn affinity_checks_recent_clients_first() {
        let mut p = port("sticky", &[("10.244.0.2", true), ("10.244.0.3", true)]);
        p.affinity_seconds = Some(60);
        let r = render(&model(vec![p.clone()]), &cfg());
        let svc = &r.tables["nat"][&svc_chain(&p)];
        assert!(svc[1].contains("--rcheck --seconds 60 --reap"));
        let sep = &r.tables["nat"][&sep_chain(&p, &p.endpoints[0])];
        assert!(sep[1].contains("--set --name SKIFF-SEP-"));
    }

    #[test]
    fn partial_restore_rewrites_only_changed_chains_and_deletes_gone_ones() {
        let a = port("a", &[("10.244.0.2", true)]);
        let b = port("b", &[("10.244.0.3", true), ("10.244.0.4", true)]);
        let before = render(&model(vec![a.clone(), b.clone()]), &cfg());
        let b2 = port("b", &[("10.244.0.3", true)]);
        let after = render(&model(vec![a.clone(), b2.clone()]), &cfg());
        let (text, changes) = restore_text(&after, &before.tables, &BTreeMap::new(), &[]);
        assert!(!text.contains(&svc_chain(&a)), "{text}");
        assert!(text.contains(&format!(":{} - [0:0]", svc_chain(&b))));
        let gone = sep_chain(&b, &b.endpoints[1]);
        assert!(text.contains(&format!("-X {gone}")), "{text}");
        // SVC and EXT of b rewritten, one SEP deleted.
        assert_eq!(changes, 3);
        assert!(!text.contains("*filter"));
        let (same, n) = restore_text(&after, &after.tables, &BTreeMap::new(), &[]);
        assert!(same.is_empty() && n == 0);
    }

    #[test]
    fn a_large_rewrite_is_staged_so_every_jump_target_exists_first() {
        // Enough Services that a full rewrite exceeds one transaction.
        let ports: Vec<ServicePort> = (0..CHAINS_PER_COMMIT / 4)
            .map(|i| {
                let ip = format!("10.244.{}.{}", i / 200, i % 200 + 2);
                let mut p = port(&format!("s{i}"), &[(&ip, true), ("10.244.255.2", true)]);
                p.cluster_ip = format!("10.96.{}.{}", i / 200, i % 200 + 2)
                    .parse()
                    .unwrap();
                p
            })
            .collect();
        let after = render(&model(ports.clone()), &cfg());
        let gone = "SKIFF-SEP-GONEGONEGONEGONE".to_string();
        let stale = BTreeMap::from([("nat".to_string(), BTreeSet::from([gone.clone()]))]);
        let (text, _) = restore_text(&after, &BTreeMap::new(), &stale, &[]);
        let nat: Vec<&str> = text
            .split("COMMIT\n")
            .filter(|s| s.starts_with("*nat"))
            .collect();
        assert!(nat.len() >= 4, "{} nat transactions", nat.len());
        // Where each chain is written: every jump goes to a chain written in the same or an
        // earlier transaction.
        let mut written = BTreeMap::new();
        for (i, section) in nat.iter().enumerate() {
            for line in section.lines().filter(|l| l.starts_with(':')) {
                let name = line[1..].split(' ').next().unwrap().to_string();
                written.entry(name).or_insert(i);
            }
        }
        for (i, section) in nat.iter().enumerate() {
            for line in section.lines().filter(|l| l.starts_with("-A ")) {
                let target = line
                    .rsplit(" -j ")
                    .next()
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap();
                if let Some(at) = written.get(target) {
                    assert!(*at <= i, "{line} jumps to a chain written later");
                }
            }
        }
        // The entry chain and the deletion come last.
        let last = nat.last().unwrap();
        assert!(last.contains(&format!(":{SERVICES} ")));
        assert!(last.contains(&format!("-X {gone}")));
        assert!(nat[0].contains(":SKIFF-SEP-") && !nat[0].contains(":SKIFF-SVC-"));
        assert!(
            nat.iter()
                .all(|s| s.matches("\n:").count() <= CHAINS_PER_COMMIT)
        );
    }

    #[test]
    fn installed_chains_and_jumps_are_found_in_save_output() {
        // The kubelet's SKIFF-KUBELET-POSTROUTING is not the proxy's: never listed, never deleted.
        let saved = "*nat\n:PREROUTING ACCEPT [0:0]\n:SKIFF-SERVICES - [0:0]\n:OTHER - [0:0]\n\
            :SKIFF-KUBELET-POSTROUTING - [0:0]\n\
            -A PREROUTING -m comment --comment \"skiff service portals\" -j SKIFF-SERVICES\n\
            -A PREROUTING -j OTHER\n-A POSTROUTING -j SKIFF-KUBELET-POSTROUTING\nCOMMIT\n";
        let inst = parse_installed(saved);
        assert_eq!(inst.chains["nat"].len(), 1);
        assert_eq!(inst.jumps["nat"].len(), 1);
        assert!(jump_present(&inst, JUMPS[4]));
        assert!(!jump_present(&inst, JUMPS[5]));
    }

    #[test]
    fn our_chains_are_read_from_the_nft_chain_listing() {
        let listing = "table ip nat {\n\tchain SKIFF-SVC-AAA {\n\t}\n\tchain SKIFF-HP-1 {\n\t}\n\
                       \tchain PREROUTING {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t}\n}\n\
                       table ip filter {\n\tchain SKIFF-SERVICES {\n\t}\n}\n\
                       table ip skiff {\n\tchain SKIFF-SEP-X {\n\t}\n}\n";
        let chains = parse_nft_chains(listing, "ip");
        assert_eq!(chains.len(), 2, "{chains:?}");
        assert_eq!(chains["nat"].iter().collect::<Vec<_>>(), ["SKIFF-SVC-AAA"]);
        assert_eq!(
            chains["filter"].iter().collect::<Vec<_>>(),
            ["SKIFF-SERVICES"]
        );
    }
}
