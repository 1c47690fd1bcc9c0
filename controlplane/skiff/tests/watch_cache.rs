//! The watch cache through the real server and kube-rs (on the embedded store, or on etcd with
//! `SKIFF_TEST_STORE=etcd`): watchers selecting pods by `spec.nodeName` and EndpointSlices by
//! service each get exactly their events through a burst of writes (selector transitions as
//! ADDED/DELETED), a watcher that stops reading is closed while the server's memory stays
//! bounded, and `resourceVersion=0` lists are answered from the cache.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Server;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::api::{WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Resource};
use serde_json::json;

async fn client(s: &Server) -> Client {
    let kc = Kubeconfig::read_from(s.kubeconfig()).expect("admin.kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("client configuration");
    Client::try_from(cfg).expect("client")
}

fn pod(name: &str, node: Option<&str>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: node.map(str::to_string),
            containers: vec![Container {
                name: "c".into(),
                image: Some("busybox".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Reads a watch until it has `want` events (bookmarks aside), then a little longer to catch any
/// extra one; the names of the objects each event was about, in order, by event type.
async fn collect<K: Resource + Clone + 'static>(
    mut w: futures::stream::BoxStream<'static, kube::Result<WatchEvent<K>>>,
    want: usize,
) -> Vec<(String, &'static str)> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut grace = None;
    loop {
        let until = match grace {
            Some(g) => g,
            None if seen.len() >= want => {
                let g = Instant::now() + Duration::from_millis(1500);
                grace = Some(g);
                g
            }
            None => deadline,
        };
        let left = until.saturating_duration_since(Instant::now());
        let ev = match tokio::time::timeout(left, w.next()).await {
            Err(_) => break,
            Ok(None) => panic!("the watch ended after {} events", seen.len()),
            Ok(Some(ev)) => ev.expect("a watch event"),
        };
        let (name, ty) = match ev {
            WatchEvent::Added(o) => (o.meta().name.clone(), "ADDED"),
            WatchEvent::Modified(o) => (o.meta().name.clone(), "MODIFIED"),
            WatchEvent::Deleted(o) => (o.meta().name.clone(), "DELETED"),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("watch error: {e:?}"),
        };
        seen.push((name.expect("named"), ty));
    }
    seen
}

/// The events of each object, in the order they came.
fn by_object(events: &[(String, &'static str)]) -> BTreeMap<String, Vec<&'static str>> {
    let mut out: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for (name, ty) in events {
        out.entry(name.clone()).or_default().push(ty);
    }
    out
}

const NODES: usize = 40;
const PODS_PER_NODE: usize = 5;
const UNSCHEDULED: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_watchers_by_node_each_get_exactly_their_events() {
    let s = Server::start();
    let c = client(&s).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let rv = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let selectors: Vec<String> = (0..NODES)
        .map(|i| format!("spec.nodeName=node-{i}"))
        .chain(["spec.nodeName=".to_string(), String::new()])
        .collect();
    let mut watches = Vec::new();
    for sel in &selectors {
        let w = pods
            .watch(&WatchParams::default().fields(sel).timeout(240), &rv)
            .await
            .unwrap()
            .boxed();
        watches.push(w);
    }

    // Expected events per selector and object, as the writes below make them.
    let mut expected: BTreeMap<String, BTreeMap<String, Vec<&'static str>>> = BTreeMap::new();
    let mut expect = |sel: String, name: &str, types: &[&'static str]| {
        expected
            .entry(sel)
            .or_default()
            .entry(name.to_string())
            .or_default()
            .extend(types)
    };
    let mut names = Vec::new();
    for n in 0..NODES {
        for p in 0..PODS_PER_NODE {
            let name = format!("p-{n}-{p}");
            expect(
                format!("spec.nodeName=node-{n}"),
                &name,
                &["ADDED", "MODIFIED", "DELETED"],
            );
            expect(String::new(), &name, &["ADDED", "MODIFIED", "DELETED"]);
            names.push((name, Some(format!("node-{n}"))));
        }
    }
    for u in 0..UNSCHEDULED {
        let name = format!("u-{u}");
        // Bound to a node: it leaves the unscheduled selection and enters the node's.
        expect("spec.nodeName=".into(), &name, &["ADDED", "DELETED"]);
        let node = format!("spec.nodeName=node-{}", u % NODES);
        expect(node, &name, &["ADDED", "MODIFIED", "DELETED"]);
        expect(
            String::new(),
            &name,
            &["ADDED", "MODIFIED", "MODIFIED", "DELETED"],
        );
        names.push((name, None));
    }

    // The burst, 16 writes at a time: create, bind the unscheduled, relabel, delete.
    let parallel = 16;
    futures::stream::iter(names.iter().map(|(name, node)| {
        let pods = pods.clone();
        async move {
            pods.create(&PostParams::default(), &pod(name, node.as_deref()))
                .await
                .map(drop)
        }
    }))
    .buffer_unordered(parallel)
    .try_collect::<()>()
    .await
    .expect("create");
    futures::stream::iter((0..UNSCHEDULED).map(|u| {
        let pods = pods.clone();
        async move {
            let binding = json!({"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": format!("u-{u}")},
                "target": {"kind": "Node", "name": format!("node-{}", u % NODES)}});
            pods.create_subresource::<_, serde_json::Value>(
                "binding",
                &format!("u-{u}"),
                &PostParams::default(),
                &binding,
            )
            .await
            .map(drop)
        }
    }))
    .buffer_unordered(parallel)
    .try_collect::<()>()
    .await
    .expect("bind");
    // Served from the cache's node index: each node's pods, once the cache has them all.
    let node_list = ListParams::default()
        .fields("spec.nodeName=node-3")
        .match_any();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = pods.list(&node_list).await.unwrap().items.len();
        if n == PODS_PER_NODE + UNSCHEDULED / NODES {
            break;
        }
        assert!(Instant::now() < deadline, "{n} pods on node-3 in the cache");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    futures::stream::iter(names.iter().map(|(name, _)| {
        let pods = pods.clone();
        async move {
            let label = Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}}));
            pods.patch(name, &PatchParams::default(), &label)
                .await
                .map(drop)
        }
    }))
    .buffer_unordered(parallel)
    .try_collect::<()>()
    .await
    .expect("relabel");
    futures::stream::iter(names.iter().map(|(name, _)| {
        let pods = pods.clone();
        async move {
            pods.delete(name, &DeleteParams::default().grace_period(0))
                .await
                .map(drop)
        }
    }))
    .buffer_unordered(parallel)
    .try_collect::<()>()
    .await
    .expect("delete");

    let readers: Vec<_> = selectors
        .iter()
        .zip(watches)
        .map(|(sel, w)| {
            let want: usize = expected[sel].values().map(Vec::len).sum();
            tokio::spawn(collect(w, want))
        })
        .collect();
    for (sel, reader) in selectors.iter().zip(readers) {
        let got = by_object(&reader.await.unwrap());
        assert_eq!(got, expected[sel], "the events of the watch {sel:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpointslice_watchers_by_service_see_a_slice_leave_and_enter() {
    let s = Server::start();
    let slices: Api<EndpointSlice> = Api::namespaced(client(&s).await, "default");
    let rv = slices
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let by_service = |svc: &str| {
        WatchParams::default()
            .labels(&format!("kubernetes.io/service-name={svc}"))
            .timeout(120)
    };
    let wa = slices.watch(&by_service("a"), &rv).await.unwrap().boxed();
    let wb = slices.watch(&by_service("b"), &rv).await.unwrap().boxed();
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some("s".into()),
            labels: Some([("kubernetes.io/service-name".to_string(), "a".to_string())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![],
        ports: None,
    };
    slices.create(&PostParams::default(), &slice).await.unwrap();
    let relabel =
        Patch::Merge(json!({"metadata": {"labels": {"kubernetes.io/service-name": "b"}}}));
    slices
        .patch("s", &PatchParams::default(), &relabel)
        .await
        .unwrap();
    slices.delete("s", &DeleteParams::default()).await.unwrap();
    let (a, b) = tokio::join!(collect(wa, 2), collect(wb, 2));
    let s = |ty| ("s".to_string(), ty);
    assert_eq!(a, vec![s("ADDED"), s("DELETED")]);
    assert_eq!(b, vec![s("ADDED"), s("DELETED")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_version_0_lists_are_served_from_the_cache() {
    let s = Server::start();
    let c = client(&s).await;
    // A resource nothing else writes in an API-only server.
    let revisions: Api<ControllerRevision> = Api::namespaced(c.clone(), "default");
    let created = revisions
        .create(
            &PostParams::default(),
            &ControllerRevision {
                metadata: ObjectMeta {
                    name: Some("r".into()),
                    ..Default::default()
                },
                revision: 1,
                data: Some(k8s_openapi::apimachinery::pkg::runtime::RawExtension(
                    json!({}),
                )),
            },
        )
        .await
        .unwrap();
    let at = created.metadata.resource_version.unwrap();
    // A later write elsewhere moves the store on, not this resource's cache.
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    let later = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("later".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let any = ListParams::default().match_any();
    let deadline = Instant::now() + Duration::from_secs(30);
    let cached = loop {
        let l = revisions.list(&any).await.unwrap();
        if !l.items.is_empty() {
            break l;
        }
        assert!(Instant::now() < deadline, "the cache never had the object");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(cached.items.len(), 1);
    // The cache is at the revision of this resource's last change.
    assert_eq!(
        cached.metadata.resource_version.as_deref(),
        Some(at.as_str())
    );
    let consistent = revisions.list(&ListParams::default()).await.unwrap();
    let consistent: u64 = consistent
        .metadata
        .resource_version
        .unwrap()
        .parse()
        .unwrap();
    assert!(consistent >= later.parse().unwrap());
    // Selectors apply to cached lists too; the other forms are served from it as well.
    let none = revisions
        .list(&ListParams::default().match_any().fields("metadata.name=x"))
        .await
        .unwrap();
    assert!(none.items.is_empty());
    let raw = s.kubectl(&[
        "get",
        "--raw",
        "/apis/apps/v1/namespaces/default/controllerrevisions?resourceVersion=0",
    ]);
    let raw: serde_json::Value = serde_json::from_str(&raw).expect("a JSON list");
    assert_eq!(raw["kind"], "ControllerRevisionList");
    assert_eq!(raw["items"][0]["metadata"]["name"], "r");
    assert_eq!(raw["metadata"]["resourceVersion"], at.as_str());
}

/// Events of about this size make the watcher's buffers fill quickly.
const PAYLOAD: usize = 16 * 1024;
const UPDATES: usize = 2500;
const STALLED: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_is_closed_and_the_servers_memory_stays_bounded() {
    let s = Server::start();
    let cms: Api<ConfigMap> = Api::namespaced(client(&s).await, "default");
    let writers = 4;
    for w in 0..writers {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("big-{w}")),
                ..Default::default()
            },
            ..Default::default()
        };
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    // Watchers that never read (each on a connection of its own).
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let c = client(&s).await;
        let api: Api<ConfigMap> = Api::namespaced(c, "default");
        stalled.push(
            api.watch(&WatchParams::default().timeout(280), &rv)
                .await
                .unwrap()
                .boxed(),
        );
    }
    let update = |i: usize| {
        let cms = cms.clone();
        async move {
            let data = json!({"data": {"d": format!("{i:08}").repeat(PAYLOAD / 8)}});
            cms.patch(
                &format!("big-{}", i % writers),
                &PatchParams::default(),
                &Patch::Merge(data),
            )
            .await
            .map(drop)
        }
    };
    let burst = |range: std::ops::Range<usize>| {
        futures::stream::iter(range.map(update))
            .buffer_unordered(writers)
            .try_collect::<()>()
    };
    burst(0..300).await.expect("warm-up updates");
    let before = s.rss_kib();
    burst(300..UPDATES).await.expect("updates");
    let after = s.rss_kib();
    // Unbounded, every watcher would hold every event: STALLED × UPDATES × PAYLOAD ≈ 800 MB.
    assert!(
        after < before + 250 * 1024,
        "the server grew from {before} KiB to {after} KiB"
    );
    // The watches were closed: each delivers what was buffered for it, then ends, short of
    // the whole burst.
    for w in stalled {
        let counted = tokio::time::timeout(Duration::from_secs(120), w.count())
            .await
            .expect("a stalled watch is closed");
        assert!(
            counted < UPDATES,
            "a stalled watch delivered {counted} events"
        );
    }
}
