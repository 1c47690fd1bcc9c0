//! `skiff server` on a real etcd (Debian's etcd-server) through its faults: etcd lost while
//! serving (requests answer 503, a watch resumes with every event once) and etcd not yet up
//! when the server starts (the server waits for it, logging why, and then serves).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Server;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use skiff_store::test_etcd::TestEtcd;

async fn client(s: &Server) -> Client {
    let kc = Kubeconfig::read_from(s.kubeconfig()).expect("admin.kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("client configuration");
    Client::try_from(cfg).expect("client")
}

fn cm(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Creates `name`, retrying while the server answers 503 (etcd coming back) or is restarting.
async fn create_retrying(api: &Api<ConfigMap>, name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match api.create(&PostParams::default(), &cm(name)).await {
            Ok(_) => return,
            Err(kube::Error::Api(e)) if e.code != 503 => panic!("creating {name}: {e:?}"),
            Err(e) if std::time::Instant::now() > deadline => panic!("creating {name}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// Follows ConfigMaps from `rv` as a client does: when the watch breaks (the server restarting)
/// it watches again from the last resourceVersion it saw. Returns every ADDED event as (name,
/// resourceVersion), once `expected` have come and nothing more for a while; a `410 Gone`
/// (history lost) ends it.
async fn follow(api: Api<ConfigMap>, mut rv: String, expected: usize) -> Vec<(String, String)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut got = Vec::new();
    while std::time::Instant::now() < deadline {
        let Ok(watch) = api.watch(&WatchParams::default().timeout(290), &rv).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut watch = watch.boxed();
        // Past the expected count, a quiet spell shows nothing arrives twice.
        let quiet = Duration::from_millis(1500);
        loop {
            let next = if got.len() >= expected {
                match tokio::time::timeout(quiet, watch.next()).await {
                    Ok(ev) => ev,
                    Err(_) => return got,
                }
            } else {
                watch.next().await
            };
            match next {
                Some(Ok(WatchEvent::Added(o))) => {
                    let orv = o.metadata.resource_version.expect("resourceVersion");
                    rv = orv.clone();
                    got.push((o.metadata.name.expect("name"), orv));
                }
                Some(Ok(WatchEvent::Bookmark(b))) => rv = b.metadata.resource_version,
                Some(Ok(WatchEvent::Error(e))) if e.code == 410 => {
                    panic!("the watch from {rv} lost its history: {e:?}")
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_every_event_once_across_an_etcd_outage_and_a_server_restart() {
    const N: usize = 30;
    let mut s = Server::start_on_etcd(&[]);
    let mut etcd = Some(s.take_etcd());
    let api: Api<ConfigMap> = Api::namespaced(client(&s).await, "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let watcher = tokio::spawn(follow(Api::namespaced(client(&s).await, "default"), rv, N));
    let mut restarting = None;
    for i in 0..N {
        if i == N / 3 {
            // etcd dies mid-stream and returns 2s later; meanwhile creates answer 503.
            let mut stopped = etcd.take().expect("etcd");
            stopped = blocking(move || {
                stopped.kill();
                stopped
            })
            .await;
            let err = tokio::task::block_in_place(|| s.kubectl_err(&["get", "configmaps"], None));
            assert!(
                err.contains("ServiceUnavailable"),
                "expected a 503 Status while etcd is down: {err}"
            );
            restarting = Some(std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(2));
                stopped.restart();
                stopped
            }));
        }
        if i == 2 * N / 3 {
            // The server (and its watch cache) restarts; the watcher comes back from its last
            // resourceVersion.
            tokio::task::block_in_place(|| {
                s.kill9();
                s.spawn();
            });
        }
        create_retrying(&api, &format!("cm-{i:02}")).await;
    }
    let _etcd = (etcd, restarting.map(|t| t.join().expect("restarting etcd")));
    let got = watcher.await.expect("the watcher");
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    let expected: Vec<String> = (0..N).map(|i| format!("cm-{i:02}")).collect();
    assert_eq!(names, expected, "each ADDED event exactly once, in order");
    // Each with the resourceVersion the object has, rising.
    let stored: BTreeMap<String, String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| {
            (
                c.metadata.name.unwrap(),
                c.metadata.resource_version.unwrap(),
            )
        })
        .collect();
    for (name, rv) in &got {
        assert_eq!(stored.get(name), Some(rv), "{name}");
    }
    let rvs: Vec<u64> = got.iter().map(|(_, rv)| rv.parse().unwrap()).collect();
    assert!(rvs.windows(2).all(|w| w[0] < w[1]), "{rvs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_etcd_serve_the_same_objects_and_survive_each_other() {
    let mut a = Server::start_on_etcd(&[]);
    let b = a.start_peer();
    let (api_a, api_b): (Api<ConfigMap>, Api<ConfigMap>) = (
        Api::namespaced(client(&a).await, "default"),
        Api::namespaced(client(&b).await, "default"),
    );
    let rv = api_b
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut watch_b = api_b
        .watch(&WatchParams::default().timeout(60), &rv)
        .await
        .unwrap()
        .boxed();
    let made = api_a
        .create(&PostParams::default(), &cm("from-a"))
        .await
        .unwrap();
    // The same object with the same resourceVersion on both servers.
    let seen = api_b.get("from-a").await.unwrap();
    assert_eq!(
        seen.metadata.resource_version,
        made.metadata.resource_version
    );
    loop {
        match tokio::time::timeout(Duration::from_secs(20), watch_b.next())
            .await
            .expect("b's watch sees a's write")
            .expect("the watch is open")
            .expect("a watch event")
        {
            WatchEvent::Added(o) => {
                assert_eq!(o.metadata.name.as_deref(), Some("from-a"));
                break;
            }
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // One cluster CA: b's admin credentials are good at a.
    let a_url = format!("https://127.0.0.1:{}", a.port);
    let out = b.kubectl(&[
        "--server",
        &a_url,
        "get",
        "configmap",
        "from-a",
        "-o",
        "name",
    ]);
    assert_eq!(out.trim(), "configmap/from-a");
    // a dies; b serves on, writes included.
    a.kill9();
    api_b
        .create(&PostParams::default(), &cm("after-a"))
        .await
        .unwrap();
    let names: Vec<String> = api_b
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        // Every namespace also holds the cluster CA's ConfigMap.
        .filter(|n| n != "kube-root-ca.crt")
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn a_server_started_before_its_etcd_waits_for_it_then_serves() {
    let mut s = Server::start_on_etcd(&[]);
    s.kubectl(&["create", "configmap", "kept"]);
    s.kill9();
    let mut etcd = s.take_etcd();
    etcd.kill();
    let later = std::thread::spawn(move || -> TestEtcd {
        std::thread::sleep(Duration::from_secs(3));
        etcd.restart();
        etcd
    });
    // Waits (the harness allows a minute) until the server serves.
    s.spawn();
    let _etcd = later.join().expect("restarting etcd");
    let log = s.log();
    assert!(log.contains("etcd is unreachable; retrying"), "log:\n{log}");
    assert!(!log.contains("panicked"), "log:\n{log}");
    assert_eq!(
        s.kubectl(&["get", "configmap", "kept", "-o", "name"])
            .trim(),
        "configmap/kept"
    );
}

/// Runs `kubectl create configmap NAME`, retrying a 503 (a request that met the killed
/// member's connection as it died, or the election after a leader's death) for a few seconds.
fn kubectl_create_retrying(s: &Server, name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = s.kubectl_output(&["create", "configmap", name]);
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("etcd") && std::time::Instant::now() < deadline,
            "creating {name}: {err}\nlog:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn configmap_names(s: &Server) -> Vec<String> {
    let out = s.kubectl(&["get", "configmaps", "-o", "name"]);
    out.lines()
        .filter_map(|l| l.strip_prefix("configmap/"))
        .filter(|n| *n != "kube-root-ca.crt")
        .map(str::to_string)
        .collect()
}

#[test]
fn a_three_member_etcd_cluster_takes_writes_with_one_down_and_answers_503_without_quorum() {
    let mut s = Server::start_on_etcd_cluster(3);
    let mut etcd = s.take_etcd();
    kubectl_create_retrying(&s, "before");
    // One member down: the API keeps taking writes.
    etcd.kill_member(0);
    let mut acknowledged = vec!["before".to_string()];
    for i in 0..5 {
        let name = format!("one-down-{i}");
        kubectl_create_retrying(&s, &name);
        acknowledged.push(name);
    }
    // Two down: no quorum. Requests answer a Status naming etcd within a bounded time.
    etcd.kill_member(1);
    let manifest = s.dir.path().join("no-quorum.json");
    std::fs::write(
        &manifest,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"no-quorum"}}"#,
    )
    .unwrap();
    let manifest = manifest.to_str().unwrap();
    for args in [&["create", "-f", manifest][..], &["get", "configmaps"][..]] {
        let started = std::time::Instant::now();
        let out = s.kubectl_output(args);
        let took = started.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "kubectl {args:?} succeeded without quorum"
        );
        assert!(
            (err.contains("ServiceUnavailable") || err.contains("Timeout")) && err.contains("etcd"),
            "kubectl {args:?} without quorum: {err}"
        );
        assert!(
            took < Duration::from_secs(20),
            "kubectl {args:?} took {took:?}"
        );
    }
    // Both back: the same objects, writes again.
    etcd.restart_member(0);
    etcd.restart_member(1);
    kubectl_create_retrying(&s, "after");
    acknowledged.push("after".to_string());
    let mut names = configmap_names(&s);
    // The write refused without quorum may still have been proposed and commit once a quorum
    // is back (as with any request that timed out); every acknowledged one is there.
    names.retain(|n| n != "no-quorum");
    acknowledged.sort();
    assert_eq!(names, acknowledged);
    for n in &acknowledged {
        s.kubectl(&["get", "configmap", n, "-o", "name"]);
    }
}
