//! Deletion as Kubernetes does it, end to end in a real `skiff server`: the propagation
//! policies (kubectl's `--cascade`), the garbage collector, the namespace controller and pod
//! garbage collection, with simulated nodes running the pods.

mod common;
mod hollow;

use std::sync::{Arc, Mutex};

use common::Server;
use futures::StreamExt;
use hollow::{NodeSpec, cluster, deployment, eventually};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

/// Applies a Deployment in `ns` and waits for its rollout.
fn roll_out(s: &Server, ns: &str, name: &str, replicas: u32) {
    let f = s.write(
        &format!("{ns}-{name}.yaml"),
        &deployment(name, replicas, &format!("registry.invalid/{name}:1"), ""),
    );
    s.kubectl(&["apply", "-n", ns, "-f", common::path_str(&f)]);
    let target = format!("deployment/{name}");
    s.kubectl(&["rollout", "status", "-n", ns, &target, "--timeout=60s"]);
}

async fn names<K>(api: &Api<K>, labels: &str) -> Vec<String>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut n: Vec<String> = api
        .list(&ListParams::default().labels(labels))
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| o.name_any())
        .collect();
    n.sort();
    n
}

/// One change a watch delivered. Its resourceVersion is the store's revision, so changes of
/// different resources can be ordered.
#[derive(Debug, Clone)]
struct Seen {
    kind: String,
    name: String,
    deleted: bool,
    rv: u64,
    deleting: bool,
    finalizers: Vec<String>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Records every change of the `K` objects `cfg` selects into `log`; returns once the watch
/// has listed what exists.
async fn record<K>(api: Api<K>, cfg: watcher::Config, log: Log) -> tokio::task::JoinHandle<()>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K: Send + Sync + 'static,
{
    let (synced, ready) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut synced = Some(synced);
        let mut events = std::pin::pin!(watcher::watcher(api, cfg));
        while let Some(ev) = events.next().await {
            let (o, deleted) = match ev {
                Ok(Event::InitDone) => {
                    if let Some(s) = synced.take() {
                        let _ = s.send(());
                    }
                    continue;
                }
                Ok(Event::Apply(o)) => (o, false),
                Ok(Event::Delete(o)) => (o, true),
                _ => continue,
            };
            let m = o.meta();
            log.lock().unwrap().push(Seen {
                kind: K::kind(&()).into_owned(),
                name: o.name_any(),
                deleted,
                rv: m
                    .resource_version
                    .as_deref()
                    .unwrap_or("0")
                    .parse()
                    .unwrap(),
                deleting: m.deletion_timestamp.is_some(),
                finalizers: m.finalizers.clone().unwrap_or_default(),
            });
        }
    });
    ready.await.expect("the watch listed");
    task
}

fn seen(log: &Log, kind: &str, f: impl Fn(&Seen) -> bool) -> Vec<Seen> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|s| s.kind == kind && f(s))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_deletion_takes_the_replicasets_and_pods_after_the_deployment() {
    let (s, client, _h) = cluster().await;
    roll_out(&s, "default", "bg", 2);
    let rs: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    assert_eq!(names(&rs, "app=bg").await.len(), 1);
    assert_eq!(names(&pods, "app=bg").await.len(), 2);
    let out = s.kubectl(&["delete", "deployment", "bg"]);
    assert_eq!(out, "deployment.apps \"bg\" deleted\n");
    eventually("the ReplicaSet and pods of bg to go", || async {
        names(&rs, "app=bg").await.is_empty() && names(&pods, "app=bg").await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_deletion_keeps_the_deployment_until_its_dependents_are_gone() {
    let (s, client, _h) = cluster().await;
    roll_out(&s, "default", "fg", 3);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pods_before = names(&pods, "app=fg").await;
    let log = Log::default();
    let by_label = watcher::Config::default().labels("app=fg");
    let watches = [
        record(
            Api::<Deployment>::namespaced(client.clone(), "default"),
            watcher::Config::default().fields("metadata.name=fg"),
            log.clone(),
        )
        .await,
        record(
            Api::<ReplicaSet>::namespaced(client.clone(), "default"),
            by_label.clone(),
            log.clone(),
        )
        .await,
        record(
            Api::<Pod>::namespaced(client.clone(), "default"),
            by_label,
            log.clone(),
        )
        .await,
    ];
    // kubectl waits until the Deployment is gone.
    s.kubectl(&[
        "delete",
        "deployment",
        "fg",
        "--cascade=foreground",
        "--timeout=60s",
    ]);
    eventually("the watch to see the Deployment go", || async {
        !seen(&log, "Deployment", |s| s.deleted).is_empty()
    })
    .await;
    for w in watches {
        w.abort();
    }
    let marked = seen(&log, "Deployment", |s| {
        s.deleting && s.finalizers.iter().any(|f| f == "foregroundDeletion")
    });
    let marked = marked
        .first()
        .expect("the Deployment marked for foreground deletion");
    let gone = seen(&log, "Deployment", |s| s.deleted)[0].rv;
    let rs_gone = seen(&log, "ReplicaSet", |s| s.deleted);
    let pods_gone = seen(&log, "Pod", |s| s.deleted);
    assert_eq!(rs_gone.len(), 1, "{rs_gone:?}");
    let mut pods_gone_names: Vec<String> = pods_gone.iter().map(|p| p.name.clone()).collect();
    pods_gone_names.sort();
    assert_eq!(pods_gone_names, pods_before);
    // Every dependent went while the Deployment waited for it, marked.
    for d in rs_gone.iter().chain(&pods_gone) {
        assert!(
            marked.rv < d.rv && d.rv < gone,
            "{d:?} outside {} .. {gone}",
            marked.rv
        );
    }
    // The ReplicaSet has dependents of its own: it was deleted in the foreground too.
    assert!(
        !seen(&log, "ReplicaSet", |s| s.deleting
            && s.finalizers.iter().any(|f| f == "foregroundDeletion"))
        .is_empty()
    );
    let rs: Api<ReplicaSet> = Api::namespaced(client, "default");
    assert!(names(&rs, "app=fg").await.is_empty());
    assert!(names(&pods, "app=fg").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_deletion_leaves_the_replicaset_and_pods_without_their_owner() {
    let (s, client, _h) = cluster().await;
    roll_out(&s, "default", "or", 2);
    let rs: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rs_before = names(&rs, "app=or").await;
    let pods_before = names(&pods, "app=or").await;
    let log = Log::default();
    let watch = record(
        Api::<Deployment>::namespaced(client.clone(), "default"),
        watcher::Config::default().fields("metadata.name=or"),
        log.clone(),
    )
    .await;
    s.kubectl(&[
        "delete",
        "deployment",
        "or",
        "--cascade=orphan",
        "--timeout=60s",
    ]);
    eventually("the watch to see the Deployment go", || async {
        !seen(&log, "Deployment", |s| s.deleted).is_empty()
    })
    .await;
    watch.abort();
    // It waited, marked with the orphan finalizer, until the collector released its dependents
    // and removed the finalizer.
    let marked = seen(&log, "Deployment", |s| {
        s.deleting && s.finalizers == ["orphan"]
    });
    assert!(!marked.is_empty(), "{:?}", log.lock().unwrap());
    assert_eq!(names(&rs, "app=or").await, rs_before);
    assert_eq!(names(&pods, "app=or").await, pods_before);
    let r = rs.get(&rs_before[0]).await.unwrap();
    assert!(r.metadata.owner_references.is_none(), "{r:?}");
    for p in pods
        .list(&ListParams::default().labels("app=or"))
        .await
        .unwrap()
    {
        assert!(p.metadata.deletion_timestamp.is_none());
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("ReplicaSet", rs_before[0].as_str())
        );
    }
}

fn owned_configmap(name: &str, owners: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"gc": "owners"}, "ownerReferences": owners},
        "data": {"k": "v"},
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependents_whose_owners_do_not_exist_are_collected() {
    let s = Server::start_cluster();
    let client = hollow::client(&s).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    let owner = cms
        .create(&pp, &owned_configmap("owner", json!([])))
        .await
        .unwrap();
    let owner_uid = owner.uid().unwrap();
    let missing = || uuid::Uuid::new_v4().to_string();
    let cm_ref = |name: &str, uid: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": uid});
    // No object with this uid: neither under this name nor at all.
    for (name, owners) in [
        ("ghost-child", json!([cm_ref("ghost", &missing())])),
        ("stale-child", json!([cm_ref("owner", &missing())])),
        ("kept-child", json!([cm_ref("owner", &owner_uid)])),
        (
            "mixed-child",
            json!([cm_ref("owner", &owner_uid), cm_ref("ghost", &missing())]),
        ),
    ] {
        cms.create(&pp, &owned_configmap(name, owners))
            .await
            .unwrap();
    }
    // An owner of another kind, in another group.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let lost: Pod = serde_json::from_value(json!({
        "metadata": {"name": "lost", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "name": "gone-rs", "uid": missing(), "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/c:1"}]},
    }))
    .unwrap();
    pods.create(&pp, &lost).await.unwrap();
    eventually("the dependents of missing owners to go", || async {
        let left = names(&cms, "gc=owners").await;
        left == ["kept-child", "mixed-child", "owner"]
            && pods.get_opt("lost").await.unwrap().is_none()
    })
    .await;
    eventually("the dangling reference of mixed-child to go", || async {
        let m = cms.get("mixed-child").await.unwrap();
        m.metadata.owner_references.unwrap_or_default().len() == 1
    })
    .await;
    let m = cms.get("mixed-child").await.unwrap();
    assert_eq!(m.metadata.owner_references.unwrap()[0].uid, owner_uid);
    let k = cms.get("kept-child").await.unwrap();
    assert_eq!(k.metadata.owner_references.unwrap()[0].uid, owner_uid);
}

/// A `skiff controllers` process, killed when dropped.
struct Controllers(std::process::Child);

impl Controllers {
    fn start(s: &Server, only: &str) -> Self {
        let log = std::fs::File::create(s.dir.path().join("controllers.log")).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args([
                "controllers",
                "--kubeconfig",
                common::path_str(&s.kubeconfig()),
            ])
            .args(["--controllers", only])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting skiff controllers");
        Controllers(child)
    }
}

impl Drop for Controllers {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_started_later_finishes_what_deletions_left() {
    // The API server alone: deletions are recorded, nothing acts on them yet.
    let s = Server::start();
    let client = hollow::client(&s).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    // ConfigMaps own Secrets: the dependents are listed by another watch than their owners.
    for x in ["a", "b", "c"] {
        let owner = cms
            .create(&pp, &owned_configmap(&format!("owner-{x}"), json!([])))
            .await
            .unwrap();
        let child: Secret = serde_json::from_value(json!({
            "metadata": {"name": format!("child-{x}"), "labels": {"gc": "owners"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": owner.name_any(),
                    "uid": owner.uid(), "blockOwnerDeletion": true}]},
        }))
        .unwrap();
        secrets.create(&pp, &child).await.unwrap();
    }
    s.kubectl(&["delete", "cm", "owner-a"]);
    s.kubectl(&[
        "delete",
        "cm",
        "owner-b",
        "--cascade=orphan",
        "--wait=false",
    ]);
    s.kubectl(&[
        "delete",
        "cm",
        "owner-c",
        "--cascade=foreground",
        "--wait=false",
    ]);
    let finalizers = |name: &'static str| {
        let cms = cms.clone();
        async move {
            let o = cms.get(name).await.unwrap();
            assert!(o.metadata.deletion_timestamp.is_some());
            o.metadata.finalizers.unwrap_or_default()
        }
    };
    assert_eq!(finalizers("owner-b").await, ["orphan"]);
    assert_eq!(finalizers("owner-c").await, ["foregroundDeletion"]);
    assert_eq!(names(&cms, "gc=owners").await, ["owner-b", "owner-c"]);
    assert_eq!(
        names(&secrets, "gc=owners").await,
        ["child-a", "child-b", "child-c"]
    );

    // Its first lists rebuild the graph: child-a lost its owner, owner-b orphans child-b,
    // owner-c waits for child-c.
    let _gc = Controllers::start(&s, "garbage-collector-controller");
    eventually("the collector to finish", || async {
        names(&cms, "gc=owners").await.is_empty()
            && names(&secrets, "gc=owners").await == ["child-b"]
    })
    .await;
    let b = secrets.get("child-b").await.unwrap();
    assert!(b.metadata.owner_references.is_none(), "{b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_namespace_is_emptied_then_removed() {
    let (s, client, _h) = cluster().await;
    s.kubectl(&["create", "namespace", "gone"]);
    roll_out(&s, "gone", "web", 2);
    s.kubectl(&[
        "create",
        "service",
        "clusterip",
        "web",
        "-n",
        "gone",
        "--tcp=80:8080",
    ]);
    s.kubectl(&[
        "create",
        "configmap",
        "settings",
        "-n",
        "gone",
        "--from-literal=a=1",
    ]);
    let held = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, namespace: gone, finalizers: [example.com/hold]}\n";
    s.kubectl_stdin(&["apply", "-f", "-"], held);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "gone");
    let solo: Pod = serde_json::from_value(json!({
        "metadata": {"name": "solo"},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "registry.invalid/c:1"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &solo).await.unwrap();
    eventually("solo to run", || async {
        pods.get("solo")
            .await
            .unwrap()
            .status
            .and_then(|s| s.phase)
            .as_deref()
            == Some("Running")
    })
    .await;

    s.kubectl(&["delete", "namespace", "gone", "--wait=false"]);
    assert_eq!(
        s.kubectl(&["get", "namespace", "gone", "-o", "jsonpath={.status.phase}"]),
        "Terminating"
    );
    let err = s.kubectl_err(&["create", "configmap", "late", "-n", "gone"], None);
    assert!(
        err.contains("configmaps \"late\" is forbidden: unable to create new content in namespace gone because it is being terminated"),
        "{err}"
    );
    let refused = Api::<ConfigMap>::namespaced(client.clone(), "gone")
        .create(&PostParams::default(), &owned_configmap("late", json!([])))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(e) if e.code == 403 && e.reason == "Forbidden"),
        "{refused:?}"
    );

    // Everything goes but what a finalizer holds; the namespace says so and waits.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let condition = |ns: &Namespace, t: &str| {
        ns.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == t))
            .map(|c| (c.status.clone(), c.message.clone().unwrap_or_default()))
    };
    eventually("only the held ConfigMap to remain", || async {
        let ns = namespaces.get("gone").await.unwrap();
        condition(&ns, "NamespaceFinalizersRemaining")
            == Some((
                "True".into(),
                "Some finalizers are remaining: example.com/hold in 1 resource instances".into(),
            ))
            && condition(&ns, "NamespaceContentRemaining")
                == Some((
                    "True".into(),
                    "Some resources are remaining: configmaps. has 1 resource instances".into(),
                ))
    })
    .await;
    assert!(names(&pods, "").await.is_empty());
    for kind in ["deployments", "replicasets", "services", "endpointslices"] {
        let left = s.kubectl(&["get", kind, "-n", "gone", "-o", "name"]);
        assert!(left.is_empty(), "{kind}: {left}");
    }
    s.kubectl(&[
        "patch",
        "configmap",
        "held",
        "-n",
        "gone",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    eventually("the namespace to go", || async {
        namespaces.get_opt("gone").await.unwrap().is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_gc_deletes_the_oldest_finished_pods_and_the_pods_of_deleted_nodes() {
    let s = Server::start_cluster_with(&[
        "--terminated-pod-gc-threshold",
        "3",
        "--pod-gc-quarantine",
        "2",
    ]);
    let client = hollow::client(&s).await;
    // Nodes without a kubelet: the test moves the pods through their phases.
    hollow::create_nodes(
        &client,
        &[
            NodeSpec::new("static", "4", "8Gi"),
            NodeSpec::new("doomed", "4", "8Gi"),
        ],
        0,
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = |name: &str, node: &str, label: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"gc": label}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.invalid/c:1"}]},
        }))
        .unwrap()
    };
    let phase = |p: &str| Patch::Merge(json!({"status": {"phase": p}}));
    for i in 0..6 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("done-{i}"), "static", "done"),
        )
        .await
        .unwrap();
    }
    for i in 0..6 {
        pods.patch_status(
            &format!("done-{i}"),
            &PatchParams::default(),
            &phase("Succeeded"),
        )
        .await
        .unwrap();
    }
    eventually("the 3 oldest finished pods to go", || async {
        names(&pods, "gc=done").await == ["done-3", "done-4", "done-5"]
    })
    .await;

    pods.create(
        &PostParams::default(),
        &pod("stranded", "doomed", "stranded"),
    )
    .await
    .unwrap();
    pods.patch_status("stranded", &PatchParams::default(), &phase("Running"))
        .await
        .unwrap();
    let conditions: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let watch = {
        let conditions = conditions.clone();
        let api = pods.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher::watcher(
                api,
                watcher::Config::default().labels("gc=stranded")
            ));
            while let Some(Ok(ev)) = events.next().await {
                if let Event::Apply(p) | Event::Delete(p) = ev {
                    let status = p.status.unwrap_or_default();
                    for c in status.conditions.unwrap_or_default() {
                        conditions.lock().unwrap().push((
                            status.phase.clone().unwrap_or_default(),
                            c.type_,
                            c.reason.unwrap_or_default(),
                        ));
                    }
                }
            }
        })
    };
    Api::<Node>::all(client.clone())
        .delete("doomed", &Default::default())
        .await
        .unwrap();
    eventually("the pod of the deleted node to go", || async {
        pods.get_opt("stranded").await.unwrap().is_none()
    })
    .await;
    watch.abort();
    // Marked Failed, as disrupted by pod GC, before it was deleted.
    let seen = conditions.lock().unwrap().clone();
    assert!(
        seen.contains(&(
            "Failed".into(),
            "DisruptionTarget".into(),
            "DeletionByPodGC".into()
        )),
        "{seen:?}"
    );
    assert_eq!(
        names(&pods, "gc=done").await,
        ["done-3", "done-4", "done-5"]
    );
}
