//! The server through kube-rs, the client our own components use: typed CRUD, metadata-only
//! lists and watches (PartialObjectMetadata), and paging.

mod common;

use std::time::Duration;

use common::Server;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_lists_watches_and_pages() {
    let s = Server::start();
    let kc = Kubeconfig::read_from(s.kubeconfig()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(Client::try_from(cfg).unwrap(), "default");
    for i in 0..5 {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("m{i}")),
                labels: Some([("i".to_string(), i.to_string())].into()),
                ..Default::default()
            },
            data: Some([("big".to_string(), "x".repeat(100))].into()),
            ..Default::default()
        };
        api.create(&PostParams::default(), &cm).await.unwrap();
    }
    // Only the test's own: the namespace also holds kube-root-ca.crt.
    let mine = ListParams::default().labels("i");
    let meta = api.list_metadata(&mine).await.unwrap();
    assert_eq!(meta.items.len(), 5);
    assert_eq!(meta.items[0].metadata.name.as_deref(), Some("m0"));
    let page = api.list(&mine.clone().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let rest = api
        .list(
            &mine
                .clone()
                .continue_token(page.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 3);
    assert!(rest.metadata.continue_.is_none());

    let rv = meta.metadata.resource_version.unwrap();
    let stream = api
        .watch_metadata(&WatchParams::default(), &rv)
        .await
        .unwrap();
    let mut stream = std::pin::pin!(stream);
    api.delete("m3", &Default::default()).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("a watch event")
        .unwrap()
        .unwrap();
    match ev {
        WatchEvent::Deleted(m) => assert_eq!(m.metadata.name.as_deref(), Some("m3")),
        other => panic!("unexpected {other:?}"),
    }

    // A uid in a patch is a precondition: the object it was meant for, not a look-alike.
    let wrong = serde_json::json!({"metadata": {"uid": "not-the-uid", "labels": {"x": "1"}}});
    let err = api
        .patch("m1", &PatchParams::default(), &Patch::Merge(&wrong))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert!(
                s.message
                    .contains("Precondition failed: UID in precondition: not-the-uid"),
                "{}",
                s.message
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    let uid = api.get("m1").await.unwrap().metadata.uid.unwrap();
    let right = serde_json::json!({"metadata": {"uid": uid, "labels": {"x": "1"}}});
    api.patch("m1", &PatchParams::default(), &Patch::Merge(&right))
        .await
        .unwrap();
}
