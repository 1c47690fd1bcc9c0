//! The controllers and the scheduler inside a real `skiff server`, driven by kubectl, with
//! simulated nodes that run the pods bound to them.

mod common;
mod hollow;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Server;
use futures::TryStreamExt;
use hollow::{Hollow, NodeSpec, active_pods, cluster, cluster_with, deployment, eventually, image};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_of_6_spreads_over_3_nodes_and_rollout_status_returns() {
    let (s, client, _h) = cluster().await;
    let f = s.write(
        "web.yaml",
        &deployment(
            "web",
            6,
            "registry.invalid/web:1",
            "  strategy: {type: RollingUpdate}\n",
        ),
    );
    s.kubectl(&["apply", "-f", common::path_str(&f)]);
    let out = s.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let pods = active_pods(&client, "app=web").await;
    assert_eq!(pods.len(), 6);
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in &pods {
        *per_node
            .entry(p.spec.as_ref().unwrap().node_name.clone().unwrap())
            .or_default() += 1;
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("ReplicaSet", Some(true))
        );
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "{per_node:?}"
    );
    let status = s.kubectl(&[
        "get", "deployment", "web", "-o",
        "jsonpath={.status.replicas}/{.status.updatedReplicas}/{.status.readyReplicas}/{.status.availableReplicas} {.status.conditions[?(@.type==\"Progressing\")].reason} {.status.conditions[?(@.type==\"Available\")].status} {.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
    ]);
    assert_eq!(status, "6/6/6/6 NewReplicaSetAvailable True 1");
    let rs = s.kubectl(&[
        "get",
        "rs",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].status.readyReplicas}",
    ]);
    assert_eq!(rs, "6");
    // Scaling down removes pods and keeps the spread even.
    s.kubectl(&["scale", "deployment/web", "--replicas=3"]);
    s.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    eventually("3 pods", || async {
        active_pods(&client, "app=web").await.len() == 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_stays_within_surge_and_unavailable_and_undo_goes_back() {
    let (s, client, _h) = cluster().await;
    let strategy = "{type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}";
    let f = s.write(
        "app.yaml",
        &deployment(
            "app",
            4,
            "registry.invalid/app:1",
            &format!("  strategy: {strategy}\n"),
        ),
    );
    s.kubectl(&["apply", "-f", common::path_str(&f)]);
    s.kubectl(&["rollout", "status", "deployment/app", "--timeout=60s"]);

    // Watch pods and ReplicaSets through the update: never fewer than 4 ready pods (maxUnavailable
    // 0), never more than 5 replicas asked for across the ReplicaSets (maxSurge 1).
    let ready: Arc<Mutex<HashMap<String, bool>>> = Arc::default();
    let min_ready = Arc::new(Mutex::new(usize::MAX));
    let max_spec = Arc::new(Mutex::new(0i32));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (r, m) = (ready.clone(), min_ready.clone());
    let pod_watch = tokio::spawn(async move {
        let mut st = std::pin::pin!(
            watcher(pods, watcher::Config::default().labels("app=app")).default_backoff()
        );
        let mut synced = false;
        while let Ok(Some(ev)) = st.try_next().await {
            let mut r = r.lock().unwrap();
            match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    let ok = p.metadata.deletion_timestamp.is_none()
                        && p.status
                            .iter()
                            .flat_map(|s| s.conditions.iter().flatten())
                            .any(|c| c.type_ == "Ready" && c.status == "True");
                    r.insert(p.metadata.name.unwrap(), ok);
                }
                watcher::Event::Delete(p) => {
                    r.remove(&p.metadata.name.unwrap());
                }
                watcher::Event::InitDone => synced = true,
                watcher::Event::Init => r.clear(),
            }
            if !synced {
                continue;
            }
            let n = r.values().filter(|v| **v).count();
            let mut m = m.lock().unwrap();
            *m = (*m).min(n);
        }
    });
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let ms = max_spec.clone();
    let rs_watch = tokio::spawn(async move {
        let mut specs: HashMap<String, i32> = HashMap::new();
        let mut st = std::pin::pin!(
            watcher(rss, watcher::Config::default().labels("app=app")).default_backoff()
        );
        while let Ok(Some(ev)) = st.try_next().await {
            match ev {
                watcher::Event::Apply(rs) | watcher::Event::InitApply(rs) => {
                    specs.insert(
                        rs.metadata.name.unwrap(),
                        rs.spec.unwrap().replicas.unwrap_or(0),
                    );
                }
                watcher::Event::Delete(rs) => {
                    specs.remove(&rs.metadata.name.unwrap());
                }
                _ => {}
            }
            let total: i32 = specs.values().sum();
            let mut m = ms.lock().unwrap();
            *m = (*m).max(total);
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.kubectl(&["set", "image", "deployment/app", "c=registry.invalid/app:2"]);
    s.kubectl(&["rollout", "status", "deployment/app", "--timeout=90s"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    pod_watch.abort();
    rs_watch.abort();
    let (min_ready, max_spec) = (*min_ready.lock().unwrap(), *max_spec.lock().unwrap());
    assert!(min_ready >= 4, "ready pods dropped to {min_ready}");
    assert_eq!(
        max_spec, 5,
        "replicas across ReplicaSets peaked at {max_spec}"
    );
    let images = |pods: Vec<Pod>| -> Vec<String> {
        pods.iter()
            .map(|p| {
                p.spec.as_ref().unwrap().containers[0]
                    .image
                    .clone()
                    .unwrap()
            })
            .collect()
    };
    eventually("4 pods of v2", || async {
        let p = active_pods(&client, "app=app").await;
        p.len() == 4 && images(p).iter().all(|i| i.ends_with(":2"))
    })
    .await;
    let history = s.kubectl(&["rollout", "history", "deployment/app"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");

    s.kubectl(&["rollout", "undo", "deployment/app"]);
    s.kubectl(&["rollout", "status", "deployment/app", "--timeout=90s"]);
    eventually("4 pods of v1 again", || async {
        let p = active_pods(&client, "app=app").await;
        p.len() == 4 && images(p).iter().all(|i| i.ends_with(":1"))
    })
    .await;
    let rev = s.kubectl(&[
        "get",
        "deployment",
        "app",
        "-o",
        "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
    ]);
    assert_eq!(rev, "3");
    // Two ReplicaSets: the first one, back in service as revision 3, and the emptied v2 one.
    let rs = s.kubectl(&[
        "get",
        "rs",
        "-l",
        "app=app",
        "-o",
        "jsonpath={range .items[*]}{.spec.replicas} {end}",
    ]);
    let mut counts: Vec<&str> = rs.split_whitespace().collect();
    counts.sort();
    assert_eq!(counts, ["0", "4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_replaces_all_pods_at_once() {
    let (s, client, _h) = cluster().await;
    let f = s.write(
        "re.yaml",
        &deployment(
            "re",
            3,
            "registry.invalid/re:1",
            "  strategy: {type: Recreate}\n",
        ),
    );
    s.kubectl(&["apply", "-f", common::path_str(&f)]);
    s.kubectl(&["rollout", "status", "deployment/re", "--timeout=60s"]);
    s.kubectl(&["set", "image", "deployment/re", "c=registry.invalid/re:2"]);
    s.kubectl(&["rollout", "status", "deployment/re", "--timeout=60s"]);
    eventually("3 pods of v2", || async {
        let p = active_pods(&client, "app=re").await;
        p.len() == 3 && p.iter().all(|p| image(p) == "registry.invalid/re:2")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicaset_adopts_orphans_creates_and_deletes() {
    let (s, client, _h) = cluster().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "orphan", "labels": {"app": "rs"}},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/x:1"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &orphan).await.unwrap();
    let rs = r#"apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: rs}
spec:
  replicas: 3
  selector: {matchLabels: {app: rs}}
  template:
    metadata: {labels: {app: rs}}
    spec:
      containers: [{name: c, image: registry.invalid/x:1}]
"#;
    s.kubectl_stdin(&["apply", "-f", "-"], rs);
    eventually("3 ready replicas", || async {
        s.kubectl(&["get", "rs", "rs", "-o", "jsonpath={.status.replicas}/{.status.readyReplicas}/{.status.availableReplicas}/{.status.observedGeneration}"]) == "3/3/3/1"
    })
    .await;
    let owner = pods
        .get("orphan")
        .await
        .unwrap()
        .metadata
        .owner_references
        .unwrap();
    assert_eq!(
        (owner[0].name.as_str(), owner[0].controller),
        ("rs", Some(true))
    );
    assert_eq!(active_pods(&client, "app=rs").await.len(), 3);
    s.kubectl(&["scale", "rs/rs", "--replicas=1"]);
    eventually("1 pod", || async {
        active_pods(&client, "app=rs").await.len() == 1
    })
    .await;
    // Relabelling the last pod releases it; the ReplicaSet replaces it.
    let last = active_pods(&client, "app=rs").await[0]
        .metadata
        .name
        .clone()
        .unwrap();
    s.kubectl(&["label", "pod", &last, "app=gone", "--overwrite"]);
    eventually("a replacement", || async {
        active_pods(&client, "app=rs").await.len() == 1
    })
    .await;
    eventually("the released pod has no owner", || async {
        pods.get(&last)
            .await
            .unwrap()
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    })
    .await;
}

/// A Deployment `web` of `replicas` (rolling update) behind a Service `web` on its `http` port,
/// rolled out.
fn web_behind_a_service(s: &Server, replicas: u32) {
    let f = s.write(
        "web.yaml",
        &deployment(
            "web",
            replicas,
            "registry.invalid/web:1",
            "  strategy: {type: RollingUpdate}\n",
        ),
    );
    s.kubectl(&["apply", "-f", common::path_str(&f)]);
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n",
    );
    s.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_services_get_a_slice_per_family() {
    let (s, _client, _h) = cluster_with(&["--service-cidr", "10.96.0.0/16,fd00:10:96::/108"]).await;
    web_behind_a_service(&s, 2);
    let set_policy = |policy: &str| {
        let patch = format!(r#"{{"spec": {{"ipFamilyPolicy": "{policy}"}}}}"#);
        s.kubectl(&["patch", "svc", "web", "--type=merge", "-p", &patch]);
    };
    set_policy("PreferDualStack");
    let families = || {
        s.kubectl(&[
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={.spec.ipFamilies[*]} {.spec.clusterIPs[*]}",
        ])
    };
    let got = families();
    assert!(got.starts_with("IPv4 IPv6 10.96."), "{got}");
    assert!(got.contains(" fd00:10:96::"), "{got}");
    let slices = || {
        let out = s.kubectl(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "jsonpath={range .items[*]}{.addressType}={.endpoints[*].addresses[0]};{end}",
        ]);
        let mut per: Vec<String> = out
            .split(';')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        per.sort();
        per
    };
    eventually("an IPv4 and an IPv6 slice of 2 endpoints each", || async {
        let per = slices();
        per.len() == 2
            && per[0].starts_with("IPv4=10.244.")
            && per[1].starts_with("IPv6=fd00:244:")
            && per.iter().all(|s| s.split(' ').count() == 2)
    })
    .await;
    // Back to one family: the IPv6 slice goes.
    set_policy("SingleStack");
    eventually("the IPv4 slice alone", || async {
        let per = slices();
        per.len() == 1 && per[0].starts_with("IPv4=")
    })
    .await;
    assert!(families().starts_with("IPv4 10.96."), "{}", families());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_endpoint_slices_follow_readiness() {
    let (s, client, _h) = cluster().await;
    web_behind_a_service(&s, 3);
    let slice = |jsonpath: &str| {
        s.kubectl(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            &format!("jsonpath={jsonpath}"),
        ])
    };
    eventually("3 ready endpoints", || async {
        slice("{.items[*].endpoints[*].conditions.ready}") == "true true true"
    })
    .await;
    assert_eq!(
        slice("{.items[0].ports[0].name}/{.items[0].ports[0].port}/{.items[0].addressType}"),
        "http/8080/IPv4"
    );
    assert_eq!(
        slice("{.items[0].metadata.ownerReferences[0].kind}"),
        "Service"
    );
    let ips = s.kubectl(&[
        "get",
        "endpoints",
        "web",
        "-o",
        "jsonpath={.subsets[0].addresses[*].ip}",
    ]);
    assert_eq!(ips.split_whitespace().count(), 3, "{ips}");

    // One pod turns unready: its endpoint follows, and Endpoints moves it to notReadyAddresses.
    let pod = active_pods(&client, "app=web").await[0]
        .metadata
        .name
        .clone()
        .unwrap();
    s.kubectl(&["label", "pod", &pod, "hollow/ready=false"]);
    eventually("one unready endpoint", || async {
        let mut r: Vec<String> = slice("{.items[*].endpoints[*].conditions.ready}")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        r.sort();
        r == ["false", "true", "true"]
    })
    .await;
    eventually("notReadyAddresses", || async {
        s.kubectl(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[0].notReadyAddresses[*].targetRef.name}",
        ]) == pod
    })
    .await;
    // Ready again, then scaled to nothing.
    s.kubectl(&["label", "pod", &pod, "hollow/ready-"]);
    eventually("3 ready again", || async {
        slice("{.items[*].endpoints[*].conditions.ready}") == "true true true"
    })
    .await;
    s.kubectl(&["scale", "deployment/web", "--replicas=0"]);
    eventually("no endpoints", || async {
        slice("{.items[*].endpoints[*].addresses}").is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_distinct_pod_cidrs_and_a_deleted_nodes_range_is_reused() {
    let (s, _client, h) = cluster().await;
    let cidrs = || {
        s.kubectl(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.spec.podCIDR} {end}",
        ])
    };
    eventually("3 pod CIDRs", || async {
        cidrs().matches("/24").count() == 3
    })
    .await;
    let mut got: Vec<String> = cidrs()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(_, c)| c.to_string())
        .collect();
    got.sort();
    assert_eq!(got, ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]);
    let b = cidrs()
        .split_whitespace()
        .find(|kv| kv.starts_with("node-b="))
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string();
    s.kubectl(&["delete", "node", "node-b"]);
    h.add(NodeSpec::new("node-d", "4", "8Gi")).await;
    eventually("node-d gets node-b's range", || async {
        cidrs()
            .split_whitespace()
            .any(|kv| kv == format!("node-d={b}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_tainted_and_its_pods_move() {
    let s = Server::start_cluster_with(&["--node-monitor-grace-period", "6"]);
    let client = hollow::client(&s).await;
    let h = Hollow::start(
        client.clone(),
        &[
            NodeSpec::new("node-a", "4", "8Gi"),
            NodeSpec::new("node-b", "4", "8Gi"),
            NodeSpec::new("node-c", "4", "8Gi"),
        ],
    )
    .await;
    // The API server gives pods 300 s tolerations of unreachable nodes; these pods ask for 2 s.
    let manifest = deployment("web", 3, "registry.invalid/web:1", "  strategy: {type: RollingUpdate}\n").replace(
        "      containers:",
        "      tolerations: [{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}]\n      containers:",
    );
    let f = s.write("web.yaml", &manifest);
    s.kubectl(&["apply", "-f", common::path_str(&f)]);
    s.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let on = |node: &'static str| {
        let client = client.clone();
        async move {
            active_pods(&client, "app=web")
                .await
                .into_iter()
                .filter(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some(node))
                .count()
        }
    };
    assert_eq!(on("node-a").await, 1);
    h.silence("node-a");
    eventually("node-a Ready=Unknown", || async {
        s.kubectl(&[
            "get",
            "node",
            "node-a",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]) == "Unknown"
    })
    .await;
    let taints = s.kubectl(&[
        "get",
        "node",
        "node-a",
        "-o",
        "jsonpath={range .spec.taints[*]}{.key}:{.effect} {end}",
    ]);
    assert!(
        taints.contains("node.kubernetes.io/unreachable:NoExecute"),
        "{taints}"
    );
    assert!(
        taints.contains("node.kubernetes.io/unreachable:NoSchedule"),
        "{taints}"
    );
    // The pod is evicted after its (default) toleration; its replacement lands elsewhere.
    eventually("the pod to leave node-a", || async {
        on("node-a").await == 0
    })
    .await;
    eventually("3 pods on node-b and node-c", || async {
        on("node-b").await + on("node-c").await == 3
    })
    .await;
    s.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    // Heartbeats again: the taints go.
    h.resume("node-a");
    eventually("node-a untainted", || async {
        !s.kubectl(&["get", "node", "node-a", "-o", "jsonpath={.spec.taints}"])
            .contains("unreachable")
    })
    .await;
}

/// A node that stops heartbeating has its pods marked NotReady at once (MarkPodsNotReady), long
/// before their 300 s toleration evicts them, and their Service endpoints stop being ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_nodes_pods_turn_not_ready_and_leave_the_ready_endpoints() {
    let s = Server::start_cluster_with(&["--node-monitor-grace-period", "6"]);
    let client = hollow::client(&s).await;
    let h = Hollow::start(
        client.clone(),
        &[
            NodeSpec::new("node-a", "4", "8Gi"),
            NodeSpec::new("node-b", "4", "8Gi"),
        ],
    )
    .await;
    web_behind_a_service(&s, 2);
    let endpoints = || {
        let mut e: Vec<String> = s
            .kubectl(&[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=web",
                "-o",
                "jsonpath={range .items[*].endpoints[*]}{.nodeName}={.conditions.ready} {end}",
            ])
            .split_whitespace()
            .map(str::to_string)
            .collect();
        e.sort();
        e
    };
    eventually("a ready endpoint on each node", || async {
        endpoints() == ["node-a=true", "node-b=true"]
    })
    .await;
    let on_a = active_pods(&client, "app=web")
        .await
        .into_iter()
        .find(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some("node-a"))
        .expect("a pod on node-a")
        .metadata
        .name
        .unwrap();
    h.silence("node-a");
    let ready = |pod: &str| {
        s.kubectl(&[
            "get",
            "pod",
            pod,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])
    };
    eventually("node-a's pod Ready=False", || async {
        ready(&on_a) == "False"
    })
    .await;
    eventually("node-a's endpoint not ready", || async {
        endpoints() == ["node-a=false", "node-b=true"]
    })
    .await;
    // Marked, not evicted: the same pod, still there, and the other node's pod untouched.
    let pods = active_pods(&client, "app=web").await;
    assert!(
        pods.iter()
            .any(|p| p.metadata.name.as_deref() == Some(on_a.as_str()))
    );
    assert!(
        pods.iter()
            .filter(|p| p.metadata.name.as_deref() != Some(on_a.as_str()))
            .all(|p| ready(p.metadata.name.as_deref().unwrap()) == "True")
    );
    let reasons = s.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={on_a}"),
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(reasons.contains("NodeNotReady"), "{reasons}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leading_controllers_process_hands_over() {
    // The API server alone; the controllers run as two separate processes.
    let s = Server::start();
    let client = hollow::client(&s).await;
    let spawn = |n: &str| {
        let log = std::fs::File::create(s.dir.path().join(format!("controllers-{n}.log"))).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args([
                "controllers",
                "--kubeconfig",
                common::path_str(&s.kubeconfig()),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting skiff controllers")
    };
    let holder = || {
        s.kubectl_output(&[
            "get",
            "lease",
            "-n",
            "kube-system",
            "kube-controller-manager",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
    };
    let mut first = spawn("first");
    eventually("a leader", || async {
        holder().status.success() && !holder().stdout.is_empty()
    })
    .await;
    let leader = String::from_utf8(holder().stdout).unwrap();
    let mut second = spawn("second");
    let rs_for = |d: &'static str| {
        let client = client.clone();
        async move {
            !Api::<ReplicaSet>::namespaced(client, "default")
                .list(&ListParams::default().labels(&format!("app={d}")))
                .await
                .unwrap()
                .items
                .is_empty()
        }
    };
    let f = s.write(
        "one.yaml",
        &deployment(
            "one",
            1,
            "registry.invalid/one:1",
            "  strategy: {type: RollingUpdate}\n",
        ),
    );
    s.kubectl(&["apply", "-f", common::path_str(&f)]);
    eventually("the leader to make one's ReplicaSet", || rs_for("one")).await;
    first.kill().unwrap();
    first.wait().unwrap();
    let f = s.write(
        "two.yaml",
        &deployment(
            "two",
            1,
            "registry.invalid/two:1",
            "  strategy: {type: RollingUpdate}\n",
        ),
    );
    s.kubectl(&["apply", "-f", common::path_str(&f)]);
    eventually(
        "the second process to take over and make two's ReplicaSet",
        || rs_for("two"),
    )
    .await;
    let now = String::from_utf8(holder().stdout).unwrap();
    assert_ne!(now, leader);
    let transitions = s.kubectl(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "kube-controller-manager",
        "-o",
        "jsonpath={.spec.leaseTransitions}",
    ]);
    assert_eq!(transitions, "1");
    second.kill().unwrap();
    second.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemonset_runs_one_pod_per_eligible_node_and_rolls() {
    let s = Server::start_cluster();
    let client = hollow::client(&s).await;
    let h = Hollow::start(
        client.clone(),
        &[
            NodeSpec::new("node-a", "4", "8Gi"),
            NodeSpec::new("node-b", "4", "8Gi"),
            NodeSpec::new("node-c", "4", "8Gi").taint("dedicated", "gpu", "NoSchedule"),
        ],
    )
    .await;
    let ds = |image: &str| {
        format!(
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: agent}}\nspec:\n  selector: {{matchLabels: {{app: agent}}}}\n  template:\n    metadata: {{labels: {{app: agent}}}}\n    spec:\n      containers: [{{name: c, image: {image}}}]\n"
        )
    };
    s.kubectl_stdin(&["apply", "-f", "-"], &ds("registry.invalid/agent:1"));
    s.kubectl(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    let nodes = || {
        let client = client.clone();
        async move {
            let mut n: Vec<String> = active_pods(&client, "app=agent")
                .await
                .iter()
                .filter_map(|p| p.spec.as_ref().unwrap().node_name.clone())
                .collect();
            n.sort();
            n
        }
    };
    // The tainted node gets none.
    assert_eq!(nodes().await, ["node-a", "node-b"]);
    let status = s.kubectl(&["get", "ds", "agent", "-o", "jsonpath={.status.desiredNumberScheduled}/{.status.numberReady}/{.status.updatedNumberScheduled}"]);
    assert_eq!(status, "2/2/2");
    // A new node gets its daemon.
    h.add(NodeSpec::new("node-d", "4", "8Gi")).await;
    eventually("a daemon on node-d", || async {
        nodes().await == ["node-a", "node-b", "node-d"]
    })
    .await;
    // A new template rolls over every node.
    s.kubectl(&[
        "set",
        "image",
        "daemonset/agent",
        "c=registry.invalid/agent:2",
    ]);
    s.kubectl(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    eventually("3 pods of v2", || async {
        let p = active_pods(&client, "app=agent").await;
        p.len() == 3 && p.iter().all(|p| image(p) == "registry.invalid/agent:2")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_or_fail_past_their_backoff_limit() {
    let (s, _client, _h) = cluster().await;
    let job = |name: &str, exit: i32, extra: &str| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n{extra}  template:\n    metadata: {{labels: {{hollow/exit: \"{exit}\"}}}}\n    spec:\n      restartPolicy: Never\n      containers: [{{name: c, image: registry.invalid/task:1}}]\n"
        )
    };
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        &job("ok", 0, "  completions: 3\n  parallelism: 2\n"),
    );
    s.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/ok",
        "--timeout=60s",
    ]);
    let st = s.kubectl(&[
        "get",
        "job",
        "ok",
        "-o",
        "jsonpath={.status.succeeded}/{.status.active}",
    ]);
    assert_eq!(st, "3/0");
    s.kubectl_stdin(&["apply", "-f", "-"], &job("bad", 1, "  backoffLimit: 1\n"));
    s.kubectl(&["wait", "--for=condition=failed", "job/bad", "--timeout=60s"]);
    let st = s.kubectl(&[
        "get",
        "job",
        "bad",
        "-o",
        "jsonpath={.status.failed} {.status.conditions[?(@.type==\"Failed\")].reason}",
    ]);
    assert_eq!(st, "2 BackoffLimitExceeded");
}
