//! A full nftables sync loads its map elements (and writes its endpoint pick chains) as a netlink
//! batch: the table it leaves must be the one the same model written whole as `nft -f` text
//! leaves (what a fresh start leaves, and what a failed step falls back to), for every kind of
//! element (verdicts, endpoint maps with their index, NodePort keys, the hairpin and NodePort
//! address sets), when creating the table, when replacing a table it wrote before, and when a
//! new process finds a table an earlier run left (stale, partly changed). None of these may
//! fall back to the whole text, which replaces the table (it then gets a new handle). Run as root
//! in a network namespace of its own (the test's thread unshares it; `nft` inherits it).

use std::process::Command;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use skiff_proxy::dataplane::{self, Mode, RenderConfig};
use skiff_proxy::model::{Family, Model};

/// An address written as IPv4 (`10.96.0.10`), in `family`: as it is, or `fd00:10:96:0::10`
/// (as nft prints it).
fn ip(family: Family, v4: &str) -> String {
    match family {
        Family::V4 => v4.to_string(),
        Family::V6 => {
            let o: Vec<&str> = v4.split('.').collect();
            let v6: std::net::Ipv6Addr = format!("fd00:{}:{}:{}::{}", o[0], o[1], o[2], o[3])
                .parse()
                .unwrap();
            v6.to_string()
        }
    }
}

/// nft's name of the family's tables.
fn nf(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn service(name: &str, ip: &str, spec: serde_json::Value) -> Service {
    let mut spec = spec;
    spec["clusterIP"] = ip.into();
    serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "t", "name": name}, "spec": spec
    }))
    .unwrap()
}

fn slice(
    family: Family,
    name: &str,
    port: u16,
    proto: &str,
    endpoints: &[(&str, bool, &str)],
) -> EndpointSlice {
    let eps: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(ip, ready, node)| {
            serde_json::json!({"addresses": [ip], "conditions": {"ready": ready}, "nodeName": node})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "t", "name": format!("{name}-1"),
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": family.name(),
        "ports": [{"port": port, "protocol": proto}],
        "endpoints": eps
    }))
    .unwrap()
}

/// Services covering every map: ClusterIP with several endpoints, NodePort + externalIP with
/// Local policy and endpoints on two nodes, UDP and SCTP, ClientIP affinity, no endpoints
/// (reject).
fn objects(endpoints: usize, family: Family) -> (Vec<Service>, Vec<EndpointSlice>) {
    let f = family;
    let ips: Vec<String> = (0..endpoints)
        .map(|i| ip(f, &format!("10.244.1.{}", i + 2)))
        .collect();
    let eps: Vec<(&str, bool, &str)> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| (ip.as_str(), true, if i % 2 == 0 { "n1" } else { "n2" }))
        .collect();
    let port = |p: u16, proto: &str| serde_json::json!([{"port": p, "protocol": proto}]);
    let services = vec![
        service(
            "a",
            &ip(f, "10.96.0.10"),
            serde_json::json!({"ports": port(80, "TCP")}),
        ),
        service(
            "b",
            &ip(f, "10.96.0.11"),
            serde_json::json!({"type": "NodePort", "externalTrafficPolicy": "Local",
                "externalIPs": [ip(f, "192.0.2.7")],
                "ports": [{"port": 53, "protocol": "UDP", "nodePort": 30053}]}),
        ),
        service(
            "c",
            &ip(f, "10.96.0.12"),
            serde_json::json!({"type": "NodePort",
                "ports": [{"port": 7, "protocol": "SCTP", "nodePort": 30007}]}),
        ),
        service(
            "d",
            &ip(f, "10.96.0.13"),
            serde_json::json!({"sessionAffinity": "ClientIP", "ports": port(80, "TCP")}),
        ),
        service(
            "e",
            &ip(f, "10.96.0.14"),
            serde_json::json!({"ports": port(80, "TCP")}),
        ),
    ];
    let slices = vec![
        slice(f, "a", 8080, "TCP", &eps),
        slice(f, "b", 5353, "UDP", &eps),
        slice(f, "c", 7007, "SCTP", &eps[..1]),
        slice(f, "d", 8080, "TCP", &eps[..2]),
    ];
    (services, slices)
}

/// The table's listing as a sorted list of its items (elements and rules), so that two tables
/// holding the same in another order compare equal.
fn table_of(family: Family) -> Vec<String> {
    let out = Command::new("nft")
        .args(["list", "table", nf(family), "skiff"])
        .output()
        .expect("nft");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut items: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split([',', '\n', '{', '}'])
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    items.sort();
    items
}

/// The table's handle: a new one means it was replaced whole (the text fallback).
fn table() -> Vec<String> {
    table_of(Family::V4)
}

fn handle() -> String {
    handle_of(Family::V4)
}

fn handle_of(family: Family) -> String {
    let out = Command::new("nft")
        .args(["-j", "list", "tables", nf(family)])
        .output()
        .expect("nft");
    let tables: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nft -j");
    tables["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| &t["table"])
        .find(|t| t["name"] == "skiff")
        .unwrap_or_else(|| panic!("no table {} skiff in {tables}", nf(family)))["handle"]
        .to_string()
}

/// Moves the test into a network namespace of its own (its tables are gone with it), with the
/// proxy's warnings (a step falling back) in the test's output.
fn isolated() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unsharing a network namespace (this test needs root)");
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
}

/// The render configuration of the family-parametrised tests: a pod range and a node address.
fn config(f: Family) -> RenderConfig {
    RenderConfig {
        family: f,
        cluster_cidr: Some(format!("{}/16", ip(f, "10.244.0.0")).parse().unwrap()),
        node_ips: Some(vec![ip(f, "172.16.0.1").parse().unwrap()]),
        ..Default::default()
    }
}

fn nft(text: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft -f of {text}");
}

#[test]
fn a_full_sync_through_the_netlink_batch_leaves_the_table_the_text_would() {
    full_sync_through_the_netlink_batch(Family::V4);
}

#[test]
fn an_ipv6_full_sync_through_the_netlink_batch_leaves_the_table_the_text_would() {
    full_sync_through_the_netlink_batch(Family::V6);
}

fn full_sync_through_the_netlink_batch(f: Family) {
    isolated();
    let cfg = config(f);
    let model = |endpoints| {
        let (services, slices) = objects(endpoints, f);
        Model::build_for(f, &services, &slices, "n1").0
    };
    let (small, large) = (model(3), model(6));
    let (table, handle) = (|| table_of(f), || handle_of(f));

    // No table: created empty by nft, filled by the batch.
    let mut batched = dataplane::new(Mode::Nftables);
    batched.sync(&small, &cfg, true).unwrap();
    let created = table();
    let kept = handle();
    // A fresh process over that table (a restart): rewritten in place, to the same table.
    dataplane::new(Mode::Nftables)
        .sync(&small, &cfg, true)
        .unwrap();
    assert_eq!(created, table());
    assert_eq!(kept, handle(), "the restart replaced the table whole");
    let (cip, ep) = (ip(f, "10.96.0.10"), ip(f, "10.244.1.3"));
    for item in [
        format!("{cip} . tcp . 80 : goto cluster-addr-3"),
        format!("{cip} . tcp . 80 . 2 : {} . 8080", ip(f, "10.244.1.4")),
        "udp . 30053 : goto policy-local-port-2".into(),
        "sctp . 30007 : goto external-port-1".into(),
        format!("{} . tcp . 80 : goto reject-chain", ip(f, "10.96.0.14")),
        format!("{ep} . {ep}"),
        ip(f, "172.16.0.1"),
        format!(
            "dnat {} to {} daddr . meta l4proto . th dport . numgen random mod 3 map @endpoints-addr-cluster",
            nf(f),
            nf(f)
        ),
    ] {
        assert!(created.contains(&item), "{item} not in {created:#?}");
    }

    // The table we wrote, replaced by a periodic full sync of another model (which needs new
    // pick chains, written through netlink), then by a fresh process (its first sync over the
    // table), then by one of the same model (the batch path), then partially back to the first
    // model (text elements over batch-loaded ones).
    batched.sync(&large, &cfg, true).unwrap();
    let replaced = table();
    dataplane::new(Mode::Nftables)
        .sync(&large, &cfg, true)
        .unwrap();
    assert_eq!(replaced, table());
    assert_ne!(created, replaced);
    batched.sync(&large, &cfg, true).unwrap();
    assert_eq!(replaced, table());
    batched.sync(&small, &cfg, false).unwrap();
    assert_eq!(kept, handle(), "a sync replaced the table whole");
    dataplane::cleanup_all().unwrap();
}

/// A restart over a table an earlier run left, changed since (a stale chain jumped to from a
/// base chain, a stale set, a pick chain emptied, a Service chain's rules gone, a stale element,
/// a missing element), converges to the table a fresh start writes, in place.
#[test]
fn a_restart_over_an_old_table_converges_to_a_fresh_start() {
    isolated();
    let cfg = RenderConfig {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        ..Default::default()
    };
    let (services, slices) = objects(4, Family::V4);
    let model = Model::build(&services, &slices, "n1").0;
    dataplane::new(Mode::Nftables)
        .sync(&model, &cfg, true)
        .unwrap();
    let fresh = table();
    let kept = handle();
    nft("add chain ip skiff svc-stale\n\
         add rule ip skiff svc-stale counter\n\
         add rule ip skiff nat-output jump svc-stale\n\
         add set ip skiff aff-stale { type ipv4_addr ; }\n\
         add rule ip skiff svc-stale ip saddr @aff-stale counter\n\
         flush chain ip skiff cluster-addr-4\n\
         flush chain ip skiff services\n\
         add element ip skiff service-ips { 10.96.0.99 . tcp . 80 : goto svc-stale }\n\
         delete element ip skiff hairpin-endpoints { 10.244.1.3 . 10.244.1.3 }");
    assert_ne!(fresh, table());
    dataplane::new(Mode::Nftables)
        .sync(&model, &cfg, true)
        .unwrap();
    assert_eq!(fresh, table());
    assert_eq!(kept, handle(), "the restart replaced the table whole");
    // A table of another layout (a fixed map declared otherwise) is replaced whole.
    nft("flush chain ip skiff policy-local-port-1\n\
         flush chain ip skiff policy-local-port-2\n\
         delete map ip skiff cluster-path-port\n\
         add map ip skiff cluster-path-port { type inet_service : verdict ; }");
    dataplane::new(Mode::Nftables)
        .sync(&model, &cfg, true)
        .unwrap();
    assert_eq!(fresh, table());
    assert_ne!(kept, handle());
    dataplane::cleanup_all().unwrap();
}

/// A partial sync that needs a pick chain no Service needed before (more endpoints than any)
/// succeeds on its own: the chain is written through netlink (nft 1.0.6 cannot add its rule
/// over a table it read back), before the text that sends the Service to it.
#[test]
fn a_partial_sync_growing_past_the_largest_endpoint_count_needs_no_full_sync() {
    isolated();
    let cfg = RenderConfig::default();
    let model = |endpoints| {
        let (services, slices) = objects(endpoints, Family::V4);
        Model::build(&services, &slices, "n1").0
    };
    let mut proxy = dataplane::new(Mode::Nftables);
    proxy.sync(&model(2), &cfg, true).unwrap();
    let kept = handle();
    proxy
        .sync(&model(5), &cfg, false)
        .expect("the partial sync adding pick chains");
    let grown = table();
    for item in [
        "10.96.0.10 . tcp . 80 : goto cluster-addr-5",
        "10.96.0.10 . tcp . 80 . 4 : 10.244.1.6 . 8080",
        "udp . 30053 : goto policy-local-port-3",
        "dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 5 map @endpoints-addr-cluster",
        "dnat ip to meta l4proto . th dport . numgen random mod 3 map @endpoints-port-external",
    ] {
        assert!(grown.iter().any(|i| i == item), "{item} not in {grown:#?}");
    }
    assert_eq!(kept, handle());
    dataplane::cleanup_all().unwrap();
}

/// Partial syncs send only the changed elements, as a netlink batch (with `nft -f` text only
/// for chains and sets that change: an affinity Service's): after a sequence of them (endpoints
/// lost and gained past the largest count, a Service gone and back, an affinity timeout
/// changed, an affinity Service added and gone) the table is, item by item, the one a fresh
/// full sync of the last model writes, and it was never replaced whole.
#[test]
fn partial_syncs_leave_the_table_a_full_sync_would() {
    partial_syncs(Family::V4);
}

#[test]
fn ipv6_partial_syncs_leave_the_table_a_full_sync_would() {
    partial_syncs(Family::V6);
}

fn partial_syncs(f: Family) {
    isolated();
    let cfg = config(f);
    let build = |(services, slices): (Vec<Service>, Vec<EndpointSlice>)| {
        Model::build_for(f, &services, &slices, "n1").0
    };
    // Between: b gone, d's affinity timeout changed, an affinity Service g added.
    let (mut services, mut slices) = objects(2, f);
    services.retain(|s| s.metadata.name.as_deref() != Some("b"));
    slices.retain(|s| s.metadata.name.as_deref() != Some("b-1"));
    let d = services
        .iter_mut()
        .find(|s| s.metadata.name.as_deref() == Some("d"))
        .unwrap();
    d.spec.as_mut().unwrap().session_affinity_config =
        serde_json::from_value(serde_json::json!({"clientIP": {"timeoutSeconds": 60}})).unwrap();
    services.push(service(
        "g",
        &ip(f, "10.96.0.16"),
        serde_json::json!({"sessionAffinity": "ClientIP",
            "ports": [{"port": 81, "protocol": "TCP"}]}),
    ));
    let g_ep = ip(f, "10.244.2.2");
    slices.push(slice(f, "g", 8081, "TCP", &[(g_ep.as_str(), true, "n1")]));
    let steps = [
        build(objects(3, f)),
        build((services, slices)),
        build(objects(2, f)),
        // (One more endpoint than the first: the pick chains of every count up to the largest
        // are there, as a full sync makes them.)
        build(objects(4, f)),
    ];
    let (table, handle) = (|| table_of(f), || handle_of(f));

    let mut proxy = dataplane::new(Mode::Nftables);
    proxy.sync(&steps[0], &cfg, true).unwrap();
    let kept = handle();
    let mut seen = Vec::new();
    for model in &steps[1..] {
        proxy.sync(model, &cfg, false).expect("a partial sync");
        seen.push(table());
    }
    assert_eq!(kept, handle(), "a partial sync replaced the table whole");
    let g_dnat = match f {
        Family::V4 => format!("dnat to {g_ep}:8081"),
        Family::V6 => format!("dnat to [{g_ep}]:8081"),
    };
    let g_chain = seen[0].iter().any(|i| i.contains(&g_dnat));
    assert!(g_chain, "g's endpoint chain not in {:#?}", seen[0]);
    assert!(
        seen[0].iter().any(|i| i.contains("timeout 1m")),
        "{:#?}",
        seen[0]
    );

    let partial = table();
    dataplane::cleanup_all().unwrap();
    dataplane::new(Mode::Nftables)
        .sync(&steps[3], &cfg, true)
        .unwrap();
    assert_eq!(partial, table());
    dataplane::cleanup_all().unwrap();
}
