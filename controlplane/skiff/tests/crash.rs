//! kill -9 of the server during a stream of writes: after a restart every acknowledged write is
//! there, and a watch from a resourceVersion taken before the crash resumes.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Server;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

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
        data: Some([("name".to_string(), name.to_string())].into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_write_and_watches_resume() {
    let mut s = Server::start();
    let api: Api<ConfigMap> = Api::namespaced(client(&s).await, "default");
    // name -> resourceVersion of every acknowledged create
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let (api, acked) = (api.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("w{w}-{i:05}");
                match api.create(&PostParams::default(), &cm(&name)).await {
                    Ok(o) => {
                        let rv = o.metadata.resource_version.unwrap().parse().unwrap();
                        acked.lock().unwrap().insert(name, rv);
                    }
                    // The server is gone.
                    Err(_) => return,
                }
            }
        }));
    }
    // Let a good number of writes through, then crash in the middle of the stream.
    loop {
        if acked.lock().unwrap().len() >= 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before_crash_rv = *acked.lock().unwrap().values().min().unwrap();
    s.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300);

    s.spawn();
    let api: Api<ConfigMap> = Api::namespaced(client(&s).await, "default");
    let stored = api
        .list(&Default::default())
        .await
        .expect("list after restart");
    let names: BTreeMap<String, String> = stored
        .items
        .iter()
        // The test's own ConfigMaps (the namespace also holds kube-root-ca.crt).
        .filter_map(|c| {
            Some((
                c.metadata.name.clone().unwrap(),
                c.data.as_ref()?.get("name")?.clone(),
            ))
        })
        .collect();
    for name in acked.keys() {
        assert_eq!(
            names.get(name),
            Some(name),
            "acknowledged write {name} was lost"
        );
    }

    // A watch from before the crash replays what followed, then carries on live.
    let want: Vec<String> = acked
        .iter()
        .filter(|(_, rv)| **rv > before_crash_rv)
        .map(|(n, _)| n.clone())
        .collect();
    let stream = api
        .watch(&WatchParams::default(), &before_crash_rv.to_string())
        .await
        .expect("watch from a pre-crash resourceVersion");
    let mut stream = std::pin::pin!(stream);
    api.create(&PostParams::default(), &cm("after-restart"))
        .await
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    while !seen.contains("after-restart") {
        let ev = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("watch events keep coming")
            .expect("the watch stays open")
            .expect("a watch event");
        match ev {
            WatchEvent::Added(c) => {
                seen.insert(c.metadata.name.unwrap());
            }
            WatchEvent::Error(e) => panic!("watch error: {e:?}"),
            _ => {}
        }
    }
    for name in &want {
        assert!(seen.contains(name), "the resumed watch missed {name}");
    }
}
