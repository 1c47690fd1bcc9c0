//! A full nftables sync loads its map elements as a netlink batch: the table it leaves must be
//! the one the same model written whole as `nft -f` text leaves (what a process's first sync over
//! an existing table does), for every kind of element (verdicts, endpoint maps with their index,
//! NodePort keys, the hairpin and NodePort address sets), when creating the table and when
//! replacing a table it wrote before. Run as root in a network namespace of its own (the test's
//! thread unshares it; `nft` inherits it).

use std::process::Command;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use skiff_proxy::dataplane::{self, Mode, RenderConfig};
use skiff_proxy::model::Model;

fn service(name: &str, ip: &str, spec: serde_json::Value) -> Service {
    let mut spec = spec;
    spec["clusterIP"] = ip.into();
    serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "t", "name": name}, "spec": spec
    }))
    .unwrap()
}

fn slice(name: &str, port: u16, proto: &str, endpoints: &[(&str, bool, &str)]) -> EndpointSlice {
    let eps: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(ip, ready, node)| {
            serde_json::json!({"addresses": [ip], "conditions": {"ready": ready}, "nodeName": node})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "t", "name": format!("{name}-1"),
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"port": port, "protocol": proto}],
        "endpoints": eps
    }))
    .unwrap()
}

/// Services covering every map: ClusterIP with several endpoints, NodePort + externalIP with
/// Local policy and endpoints on two nodes, UDP and SCTP, ClientIP affinity, no endpoints
/// (reject).
fn objects(endpoints: usize) -> (Vec<Service>, Vec<EndpointSlice>) {
    let ips: Vec<String> = (0..endpoints)
        .map(|i| format!("10.244.1.{}", i + 2))
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
            "10.96.0.10",
            serde_json::json!({"ports": port(80, "TCP")}),
        ),
        service(
            "b",
            "10.96.0.11",
            serde_json::json!({"type": "NodePort", "externalTrafficPolicy": "Local",
                "externalIPs": ["192.0.2.7"],
                "ports": [{"port": 53, "protocol": "UDP", "nodePort": 30053}]}),
        ),
        service(
            "c",
            "10.96.0.12",
            serde_json::json!({"type": "NodePort",
                "ports": [{"port": 7, "protocol": "SCTP", "nodePort": 30007}]}),
        ),
        service(
            "d",
            "10.96.0.13",
            serde_json::json!({"sessionAffinity": "ClientIP", "ports": port(80, "TCP")}),
        ),
        service(
            "e",
            "10.96.0.14",
            serde_json::json!({"ports": port(80, "TCP")}),
        ),
    ];
    let slices = vec![
        slice("a", 8080, "TCP", &eps),
        slice("b", 5353, "UDP", &eps),
        slice("c", 7007, "SCTP", &eps[..1]),
        slice("d", 8080, "TCP", &eps[..2]),
    ];
    (services, slices)
}

/// The table's listing as a sorted list of its items (elements and rules), so that two tables
/// holding the same in another order compare equal.
fn table() -> Vec<String> {
    let out = Command::new("nft")
        .args(["list", "table", "ip", "skiff"])
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

#[test]
fn a_full_sync_through_the_netlink_batch_leaves_the_table_the_text_would() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unsharing a network namespace (this test needs root)");
    let cfg = RenderConfig {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        node_ips: Some(vec!["172.16.0.1".parse().unwrap()]),
        ..Default::default()
    };
    let model = |endpoints| {
        let (services, slices) = objects(endpoints);
        Model::build(&services, &slices, "n1").0
    };
    let (small, large) = (model(3), model(6));

    // No table: created empty by nft, filled by the batch.
    let mut batched = dataplane::new(Mode::Nftables);
    batched.sync(&small, &cfg, true).unwrap();
    let created = table();
    // A fresh process over that table: replaced whole as text.
    dataplane::new(Mode::Nftables)
        .sync(&small, &cfg, true)
        .unwrap();
    assert_eq!(created, table());
    for item in [
        "10.96.0.10 . tcp . 80 : goto cluster-addr-3",
        "10.96.0.10 . tcp . 80 . 2 : 10.244.1.4 . 8080",
        "udp . 30053 : goto policy-local-port-2",
        "sctp . 30007 : goto external-port-1",
        "10.96.0.14 . tcp . 80 : goto reject-chain",
        "10.244.1.3 . 10.244.1.3",
        "172.16.0.1",
    ] {
        assert!(
            created.iter().any(|i| i == item),
            "{item} not in {created:#?}"
        );
    }

    // The table we wrote, replaced by a periodic full sync of another model (which needs new
    // pick chains: nft 1.0.6 cannot add them, so it falls back to the whole table as text),
    // then by one of the same model (the batch path), then partially back to the first model
    // (text elements over batch-loaded ones).
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
    dataplane::cleanup_all().unwrap();
}
