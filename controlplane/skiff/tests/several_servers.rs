//! Several `skiff server` processes on one etcd (Debian's etcd-server), each on its own
//! loopback address and the same port: they share the cluster CA and service-account key
//! through etcd, serve the same objects with the same resourceVersions, never give two Services
//! one ClusterIP or NodePort, list every live server in the `kubernetes` Service's endpoints,
//! and hand the scheduler over when its leader is killed.

mod common;
mod hollow;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use common::Server;
use futures::{StreamExt, TryStreamExt};
use hollow::{Hollow, NodeSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Pod, Service};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;

async fn client(s: &Server) -> Client {
    hollow::client(s).await
}

fn node_port_service(name: &str, cluster_ip: Option<&str>, node_port: Option<i32>) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"type": "NodePort", "clusterIP": cluster_ip,
            "ports": [{"port": 80, "nodePort": node_port}]},
    }))
    .unwrap()
}

/// The addresses the `kubernetes` Endpoints name.
async fn kubernetes_endpoints(c: &Client) -> BTreeSet<String> {
    let ep: Endpoints = Api::namespaced(c.clone(), "default")
        .get("kubernetes")
        .await
        .unwrap();
    ep.subsets
        .unwrap_or_default()
        .into_iter()
        .flat_map(|s| s.addresses.unwrap_or_default())
        .map(|a| a.ip)
        .collect()
}

async fn wait_for_endpoints(c: &Client, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = kubernetes_endpoints(c).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the kubernetes endpoints are {got:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_share_secrets_objects_service_addresses_and_the_kubernetes_endpoints() {
    let extra = ["--endpoint-lease-duration", "3"];
    let a = Server::start_on_etcd_at("127.0.0.2", &extra, false);
    let mut b = a.start_peer_at("127.0.0.3");
    let mut c = a.start_peer_at("127.0.0.4");
    // One CA and one service-account key, taken from etcd by b and c.
    for f in ["ca.crt", "ca.key", "sa.key"] {
        let mine = std::fs::read(a.data_dir().join(f)).unwrap();
        for s in [&b, &c] {
            assert_eq!(std::fs::read(s.data_dir().join(f)).unwrap(), mine, "{f}");
        }
    }
    // A token a signed is good at c.
    a.kubectl(&["create", "serviceaccount", "probe"]);
    let token = a.kubectl(&["create", "token", "probe"]);
    let ca_file = a.data_dir().join("ca.crt");
    let who = c.kubectl(&[
        "--kubeconfig",
        "/dev/null",
        "--server",
        &c.url(),
        "--certificate-authority",
        common::path_str(&ca_file),
        "--token",
        token.trim(),
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]);
    assert_eq!(who, "system:serviceaccount:default:probe");

    let (ca, cb, cc) = (client(&a).await, client(&b).await, client(&c).await);
    // The same object with the same resourceVersion everywhere.
    let made = Api::<ConfigMap>::namespaced(ca.clone(), "default")
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("shared".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for cl in [&cb, &cc] {
        let seen = Api::<ConfigMap>::namespaced(cl.clone(), "default")
            .get("shared")
            .await
            .unwrap();
        assert_eq!(
            seen.metadata.resource_version,
            made.metadata.resource_version
        );
    }

    // Concurrent creates through two servers: no ClusterIP or NodePort twice.
    let (sa, sb): (Api<Service>, Api<Service>) = (
        Api::namespaced(ca.clone(), "default"),
        Api::namespaced(cb.clone(), "default"),
    );
    let creates = (0..40).map(|i| {
        let api = if i % 2 == 0 { sa.clone() } else { sb.clone() };
        async move {
            api.create(
                &PostParams::default(),
                &node_port_service(&format!("s{i}"), None, None),
            )
            .await
            .unwrap()
        }
    });
    let made = futures::future::join_all(creates).await;
    let ips: HashSet<String> = made
        .iter()
        .map(|s| s.spec.as_ref().unwrap().cluster_ip.clone().unwrap())
        .collect();
    let ports: HashSet<i32> = made
        .iter()
        .map(|s| {
            s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
                .node_port
                .unwrap()
        })
        .collect();
    assert_eq!((ips.len(), ports.len()), (40, 40));
    // One held, asked for through the other server: refused.
    let first = &made[0];
    let (ip0, port0) = (
        first.spec.as_ref().unwrap().cluster_ip.clone().unwrap(),
        first.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
            .node_port
            .unwrap(),
    );
    let err = sb
        .create(
            &PostParams::default(),
            &node_port_service("dup", Some(&ip0), None),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already allocated"), "{err}");
    let err = sb
        .create(
            &PostParams::default(),
            &node_port_service("dup", None, Some(port0)),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already allocated"), "{err}");
    // A delete frees them, for any server.
    sa.delete("s0", &DeleteParams::default()).await.unwrap();
    let again = sb
        .create(
            &PostParams::default(),
            &node_port_service("again", Some(&ip0), Some(port0)),
        )
        .await
        .unwrap();
    assert_eq!(
        again.spec.unwrap().cluster_ip.as_deref(),
        Some(ip0.as_str())
    );

    // The kubernetes Service lists every live server; a killed one drops out after its Lease.
    wait_for_endpoints(&ca, &["127.0.0.2", "127.0.0.3", "127.0.0.4"]).await;
    c.kill9();
    wait_for_endpoints(&ca, &["127.0.0.2", "127.0.0.3"]).await;
    // One stopped cleanly leaves at once, before its Lease would expire.
    b.terminate();
    assert_eq!(
        kubernetes_endpoints(&ca).await,
        BTreeSet::from(["127.0.0.2".to_string()])
    );
}

/// Whether `s`'s log says it took the scheduler's Lease.
fn leads_scheduling(s: &Server) -> bool {
    s.log()
        .lines()
        .any(|l| l.contains("became leader") && l.contains("kube-scheduler"))
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/pause:3",
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_hands_scheduling_over_without_losing_or_doubling_a_pod() {
    let mut a = Server::start_on_etcd_at("127.0.0.5", &[], true);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !leads_scheduling(&a) {
        assert!(Instant::now() < deadline, "a never led; log:\n{}", a.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = a.start_peer_at("127.0.0.6");
    let cb = client(&b).await;
    let _nodes = Hollow::start(
        cb.clone(),
        &[
            NodeSpec::new("n1", "4", "8Gi"),
            NodeSpec::new("n2", "4", "8Gi"),
        ],
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(cb.clone(), "default");
    // Every nodeName each pod is seen with, from before the first pod.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<String, Vec<String>>::new()));
    let recorder = {
        let (pods, seen) = (pods.clone(), seen.clone());
        tokio::spawn(async move {
            let mut events = watcher(pods, watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Ok(Some(p)) = events.try_next().await {
                if let Some(n) = p.spec.and_then(|s| s.node_name) {
                    let mut seen = seen.lock().unwrap();
                    let names = seen.entry(p.metadata.name.unwrap()).or_default();
                    if names.last() != Some(&n) {
                        names.push(n);
                    }
                }
            }
        })
    };
    for i in 0..3 {
        pods.create(&PostParams::default(), &pod(&format!("before-{i}")))
            .await
            .unwrap();
    }
    // Pods created around the kill: some may reach a before it dies.
    for i in 0..2 {
        pods.create(&PostParams::default(), &pod(&format!("around-{i}")))
            .await
            .unwrap();
    }
    a.kill9();
    let killed = Instant::now();
    for i in 0..3 {
        pods.create(&PostParams::default(), &pod(&format!("after-{i}")))
            .await
            .unwrap();
    }
    // b takes the Lease once a's expires (15 s) and binds every pod.
    loop {
        let bound = pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        if bound == 8 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(40),
            "{bound} of 8 pods bound {:?} after the kill; b's log:\n{}",
            killed.elapsed(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(leads_scheduling(&b), "b's log:\n{}", b.log());
    // Each pod bound once: its node never changed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    recorder.abort();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 8, "{seen:?}");
    for (name, nodes) in &seen {
        assert_eq!(nodes.len(), 1, "{name} was bound to {nodes:?}");
    }
    // kubectl at the surviving server keeps working.
    let out = b.kubectl(&["get", "pods", "-o", "name"]);
    assert_eq!(out.lines().count(), 8, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_several_servers_moves_to_a_live_one() {
    let mut a = Server::start_on_etcd_at("127.0.0.7", &[], false);
    let b = a.start_peer_at("127.0.0.8");
    // What the kubelet and the proxy build from `--kubeconfig` and `--api-servers`.
    let client = skiff_client::failover::client(&a.kubeconfig(), &[a.url(), b.url()])
        .await
        .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm = |name: &str| ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::<String>::new()));
    let follower = {
        let (api, seen) = (api.clone(), seen.clone());
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(ev) = events.next().await {
                if let Ok(o) = ev {
                    seen.lock().unwrap().insert(o.metadata.name.unwrap());
                }
            }
        })
    };
    api.create(&PostParams::default(), &cm("before"))
        .await
        .unwrap();
    a.kill9();
    // Sent to a, refused, sent again to b: the caller sees no error.
    api.create(&PostParams::default(), &cm("after"))
        .await
        .unwrap();
    assert!(api.get("after").await.is_ok());
    // The watch a served resumes on b.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.lock().unwrap().contains("after") {
        assert!(
            Instant::now() < deadline,
            "the watch did not move to b: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    follower.abort();
    assert!(seen.lock().unwrap().contains("before"));
}
