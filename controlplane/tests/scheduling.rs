//! The scheduler inside a real `skiff server`, placing pods on simulated nodes.

mod common;
mod hollow;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Server;
use hollow::{Hollow, NodeSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

fn pod(name: &str, cpu: &str, extra: Value) -> Pod {
    let mut p = json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/pause:3",
            "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]},
    });
    if let (Some(spec), Some(e)) = (p["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(e.clone());
    }
    serde_json::from_value(p).unwrap()
}

async fn wait_bound(api: &Api<Pod>, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = api.get(name).await.unwrap();
        if let Some(n) = p.spec.and_then(|s| s.node_name) {
            return n;
        }
        assert!(Instant::now() < deadline, "pod {name} was not scheduled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start(nodes: &[NodeSpec]) -> (Server, Client, Hollow) {
    let s = Server::start_cluster();
    let client = hollow::client(&s).await;
    let h = Hollow::start(client.clone(), nodes).await;
    (s, client, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_taints_and_selectors_steer_placement() {
    let (_s, client, _h) = start(&[
        NodeSpec::new("small", "1", "4Gi"),
        NodeSpec::new("big", "4", "8Gi"),
        NodeSpec::new("infra", "8", "8Gi")
            .label("role", "infra")
            .taint("dedicated", "infra", "NoSchedule"),
    ])
    .await;
    let api: Api<Pod> = Api::namespaced(client, "default");
    // Needs 2 CPUs: only "big" has them untainted.
    api.create(&PostParams::default(), &pod("needs-2", "2", json!({})))
        .await
        .unwrap();
    assert_eq!(wait_bound(&api, "needs-2").await, "big");
    // "big" has 2 left, "small" 1: 3 CPUs fit nowhere untainted; tolerating the taint and
    // selecting the role lands on "infra".
    let tolerant = json!({"nodeSelector": {"role": "infra"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}]});
    api.create(&PostParams::default(), &pod("infra-3", "3", tolerant))
        .await
        .unwrap();
    assert_eq!(wait_bound(&api, "infra-3").await, "infra");
    // Required node affinity on the hostname label.
    let affinity = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["small"]}]}]}}}});
    api.create(&PostParams::default(), &pod("on-small", "500m", affinity))
        .await
        .unwrap();
    assert_eq!(wait_bound(&api, "on-small").await, "small");
    // Host ports: two pods wanting port 8080 do not share a node.
    let port = json!({"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80, "hostPort": 8080}]}]});
    for n in ["port-a", "port-b"] {
        api.create(&PostParams::default(), &pod(n, "0", port.clone()))
            .await
            .unwrap();
    }
    let (a, b) = (
        wait_bound(&api, "port-a").await,
        wait_bound(&api, "port-b").await,
    );
    assert_ne!(a, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impossible_pod_reports_why_and_is_retried_when_a_node_arrives() {
    let (s, client, h) = start(&[
        NodeSpec::new("n1", "1", "4Gi"),
        NodeSpec::new("n2", "2", "4Gi"),
        NodeSpec::new("n3", "8", "16Gi").taint("dedicated", "infra", "NoSchedule"),
    ])
    .await;
    let api: Api<Pod> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &pod("huge", "3", json!({})))
        .await
        .unwrap();
    let want = "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: infra}, 2 Insufficient cpu.";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = api.get("huge").await.unwrap();
        let cond = p
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled");
        if let Some(c) = cond {
            assert_eq!(
                (c.status.as_str(), c.reason.as_deref()),
                ("False", Some("Unschedulable"))
            );
            assert_eq!(c.message.as_deref(), Some(want));
            break;
        }
        assert!(Instant::now() < deadline, "no PodScheduled condition");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = s.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=huge,reason=FailedScheduling",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(events.contains(want), "events: {events}");
    let describe = s.kubectl(&["describe", "pod", "huge"]);
    assert!(describe.contains("FailedScheduling"), "{describe}");
    // A node that fits arrives: the pod is retried and bound there.
    h.add(NodeSpec::new("n4", "4", "8Gi")).await;
    assert_eq!(wait_bound(&api, "huge").await, "n4");
    let cond = s.kubectl(&[
        "get",
        "pod",
        "huge",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].status}",
    ]);
    assert_eq!(cond, "True");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_one_owner_spread_over_nodes() {
    let (_s, client, _h) = start(&[
        NodeSpec::new("a", "4", "8Gi"),
        NodeSpec::new("b", "4", "8Gi"),
        NodeSpec::new("c", "4", "8Gi"),
    ])
    .await;
    let owner = Api::<ConfigMap>::namespaced(client.clone(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap(),
        )
        .await
        .unwrap();
    let uid = owner.metadata.uid.unwrap();
    let api: Api<Pod> = Api::namespaced(client, "default");
    for i in 0..6 {
        let mut p = pod(&format!("web-{i}"), "100m", json!({}));
        p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        p.metadata.owner_references = Some(vec![serde_json::from_value(json!(
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid, "controller": true}
        )).unwrap()]);
        api.create(&PostParams::default(), &p).await.unwrap();
    }
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..6 {
        *per_node
            .entry(wait_bound(&api, &format!("web-{i}")).await)
            .or_default() += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "{per_node:?}"
    );
    let listed = api
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_spread_constraints_balance_zones() {
    let (_s, client, _h) = start(&[
        NodeSpec::new("a", "4", "8Gi").label("zone", "z1"),
        NodeSpec::new("b", "4", "8Gi").label("zone", "z1"),
        NodeSpec::new("d", "4", "8Gi").label("zone", "z1"),
        NodeSpec::new("c", "4", "8Gi").label("zone", "z2"),
    ])
    .await;
    let api: Api<Pod> = Api::namespaced(client, "default");
    let constraint = |key: &str| {
        json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": key,
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread"}}}]})
    };
    // One pod per node would put 3 in z1 and 1 in z2; the constraint keeps them 2 and 2.
    let mut zones: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..4 {
        let mut p = pod(&format!("s-{i}"), "100m", constraint("zone"));
        p.metadata.labels = Some([("app".to_string(), "spread".to_string())].into());
        api.create(&PostParams::default(), &p).await.unwrap();
        let node = wait_bound(&api, &format!("s-{i}")).await;
        *zones
            .entry(if node == "c" {
                "z2".into()
            } else {
                "z1".into()
            })
            .or_default() += 1;
    }
    assert_eq!(
        zones.values().copied().collect::<Vec<_>>(),
        [2, 2],
        "{zones:?}"
    );
    // A topology key no node carries fits nowhere, and says so.
    let mut p = pod("no-rack", "100m", constraint("rack"));
    p.metadata.labels = Some([("app".to_string(), "spread".to_string())].into());
    api.create(&PostParams::default(), &p).await.unwrap();
    let want = "0/4 nodes are available: 4 node(s) didn't match pod topology spread constraints (missing required label).";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let msg = api
            .get("no-rack")
            .await
            .unwrap()
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled")
            .and_then(|c| c.message);
        if let Some(m) = msg {
            assert_eq!(m, want);
            break;
        }
        assert!(Instant::now() < deadline, "no PodScheduled condition");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
