//! The scheduler inside a real `skiff server`, placing pods on simulated nodes.

mod common;
mod hollow;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;
use futures::TryStreamExt;
use hollow::{Hollow, NodeSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::{Value, json};

/// How long a test waits for the scheduler, generous for a loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);

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

fn labelled(mut p: Pod, labels: &[(&str, &str)]) -> Pod {
    p.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    p
}

/// Pins a pod to a node through a node selector (the scheduler still places it).
fn on(node: &str) -> Value {
    json!({"nodeSelector": {"kubernetes.io/hostname": node}})
}

async fn wait_bound(api: &Api<Pod>, name: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let p = api.get(name).await.unwrap();
        if let Some(n) = p.spec.and_then(|s| s.node_name) {
            return n;
        }
        assert!(Instant::now() < deadline, "pod {name} was not scheduled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn scheduled_condition(p: &Pod) -> Option<(String, String, String)> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled")
        .map(|c| {
            (
                c.status.clone(),
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

/// Waits until the pod is reported unschedulable with exactly `want`, and a FailedScheduling
/// event says the same.
async fn wait_unschedulable(s: &Server, api: &Api<Pod>, name: &str, want: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let p = api.get(name).await.unwrap();
        assert!(
            p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none(),
            "pod {name} was scheduled"
        );
        let cond = scheduled_condition(&p);
        if cond.as_ref().is_some_and(|(_, _, m)| m == want) {
            let (status, reason, _) = cond.unwrap();
            assert_eq!(
                (status.as_str(), reason.as_str()),
                ("False", "Unschedulable")
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pod {name}: PodScheduled is {cond:?}, want message {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let events = s.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={name},reason=FailedScheduling"),
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(events.contains(want), "events: {events}");
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
    // Nothing of lower priority runs anywhere, so preemption cannot help either.
    let want = "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: infra}, 2 Insufficient cpu. \
        preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod.";
    wait_unschedulable(&s, &api, "huge", want).await;
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
    let (s, client, _h) = start(&[
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
    let want = "0/4 nodes are available: 4 node(s) didn't match pod topology spread constraints (missing required label). \
        preemption: 0/4 nodes are available: 4 Preemption is not helpful for scheduling.";
    wait_unschedulable(&s, &api, "no-rack", want).await;
}

fn anti_affinity(key: &str, app: &str) -> Value {
    json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key}]}})
}

const SPREAD_OUT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: web}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: web
        image: registry.invalid/web:1
        resources: {requests: {cpu: 100m, memory: 64Mi}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_pod_anti_affinity_puts_one_replica_per_node() {
    let (s, client, _h) = start(&[
        NodeSpec::new("a", "4", "8Gi"),
        NodeSpec::new("b", "4", "8Gi"),
        NodeSpec::new("c", "4", "8Gi"),
    ])
    .await;
    s.kubectl_stdin(&["apply", "-f", "-"], SPREAD_OUT);
    let api: Api<Pod> = Api::namespaced(client, "default");
    // Three replicas, one per node; the fourth has nowhere to go.
    let deadline = Instant::now() + DEADLINE;
    let (nodes, pending) = loop {
        let pods = api
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap()
            .items;
        let nodes: Vec<String> = pods
            .iter()
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        let pending: Vec<String> = pods
            .iter()
            .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_none()))
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        if pods.len() == 4 && nodes.len() == 3 {
            break (nodes, pending);
        }
        assert!(Instant::now() < deadline, "replicas: {nodes:?} bound");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut distinct = nodes.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct, ["a", "b", "c"], "{nodes:?}");
    // All replicas have the same priority, so preemption cannot help.
    let want = "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. \
        preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.";
    wait_unschedulable(&s, &api, &pending[0], want).await;
    let printed = s.kubectl(&["get", "pods", "-l", "app=web", "--no-headers"]);
    assert_eq!(printed.matches("Pending").count(), 1, "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_pod_affinity_follows_the_target_into_its_zone() {
    let (s, client, _h) = start(&[
        NodeSpec::new("a", "4", "8Gi").label("zone", "z1"),
        NodeSpec::new("b", "4", "8Gi").label("zone", "z1"),
        NodeSpec::new("c", "4", "8Gi").label("zone", "z2"),
        NodeSpec::new("d", "4", "8Gi").label("zone", "z2"),
    ])
    .await;
    let api: Api<Pod> = Api::namespaced(client, "default");
    let near = |app: &str| {
        json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "zone"}]}}})
    };
    // The first pod of a group whose affinity selects itself may start anywhere...
    let first = labelled(pod("cache-0", "100m", near("cache")), &[("app", "cache")]);
    api.create(&PostParams::default(), &first).await.unwrap();
    let cache_node = wait_bound(&api, "cache-0").await;
    // ...and a pod that wants a group that does not exist goes nowhere, for good.
    api.create(
        &PostParams::default(),
        &pod("lonely", "100m", near("missing")),
    )
    .await
    .unwrap();
    let want = "0/4 nodes are available: 4 node(s) didn't match pod affinity rules. \
        preemption: 0/4 nodes are available: 4 Preemption is not helpful for scheduling.";
    wait_unschedulable(&s, &api, "lonely", want).await;
    // The target runs on c (zone z2); pods that want to be near it go to c or d, although the
    // emptier nodes of z1 would score better on resources.
    let db = labelled(pod("db", "2", on("c")), &[("app", "db")]);
    api.create(&PostParams::default(), &db).await.unwrap();
    assert_eq!(wait_bound(&api, "db").await, "c");
    for i in 0..3 {
        let name = format!("web-{i}");
        api.create(&PostParams::default(), &pod(&name, "100m", near("db")))
            .await
            .unwrap();
        let node = wait_bound(&api, &name).await;
        assert!(node == "c" || node == "d", "{name} on {node}");
    }
    // The second cache pod joins the first one's zone.
    let second = labelled(pod("cache-1", "100m", near("cache")), &[("app", "cache")]);
    api.create(&PostParams::default(), &second).await.unwrap();
    let zone = |n: &str| if n == "a" || n == "b" { "z1" } else { "z2" };
    assert_eq!(zone(&wait_bound(&api, "cache-1").await), zone(&cache_node));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_pods_anti_affinity_keeps_matching_pods_off_its_node() {
    let (s, client, _h) = start(&[
        NodeSpec::new("a", "4", "8Gi"),
        NodeSpec::new("b", "4", "8Gi"),
    ])
    .await;
    let api: Api<Pod> = Api::namespaced(client, "default");
    let mut spec = on("a");
    spec["affinity"] = anti_affinity("kubernetes.io/hostname", "intruder");
    api.create(&PostParams::default(), &pod("guard", "100m", spec))
        .await
        .unwrap();
    assert_eq!(wait_bound(&api, "guard").await, "a");
    // Pods without any affinity of their own: on resources alone the second could as well go to a.
    for i in 0..2 {
        let name = format!("intruder-{i}");
        let p = labelled(pod(&name, "100m", json!({})), &[("app", "intruder")]);
        api.create(&PostParams::default(), &p).await.unwrap();
        assert_eq!(wait_bound(&api, &name).await, "b");
    }
    let p = labelled(
        pod("intruder-on-a", "100m", on("a")),
        &[("app", "intruder")],
    );
    api.create(&PostParams::default(), &p).await.unwrap();
    let want = "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) didn't satisfy existing pods anti-affinity rules. \
        preemption: 0/2 nodes are available: 1 No preemption victims found for incoming pod, 1 Preemption is not helpful for scheduling.";
    wait_unschedulable(&s, &api, "intruder-on-a", want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_anyway_spread_prefers_the_emptier_zone() {
    let (_s, client, _h) = start(&[
        NodeSpec::new("a", "4", "8Gi").label("zone", "z1"),
        NodeSpec::new("b", "4", "8Gi").label("zone", "z1"),
        NodeSpec::new("c", "4", "8Gi").label("zone", "z2"),
    ])
    .await;
    let api: Api<Pod> = Api::namespaced(client, "default");
    // z1 holds two web pods; c in z2 none, but it is the busiest node.
    for (name, node) in [("web-a", "a"), ("web-b", "b")] {
        let p = labelled(pod(name, "100m", on(node)), &[("app", "web")]);
        api.create(&PostParams::default(), &p).await.unwrap();
        wait_bound(&api, name).await;
    }
    api.create(&PostParams::default(), &pod("filler", "2", on("c")))
        .await
        .unwrap();
    wait_bound(&api, "filler").await;
    // On resources alone a pod goes to z1.
    api.create(&PostParams::default(), &pod("plain", "100m", json!({})))
        .await
        .unwrap();
    assert_ne!(wait_bound(&api, "plain").await, "c");
    // A soft zone constraint outweighs that.
    let soft = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
        "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}}]});
    let p = labelled(pod("web-new", "100m", soft), &[("app", "web")]);
    api.create(&PostParams::default(), &p).await.unwrap();
    assert_eq!(wait_bound(&api, "web-new").await, "c");
}

const PRIORITY_CLASSES: &str = r#"
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: low}
value: 100
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: mid}
value: 500
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: high}
value: 1000
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: high-patient}
value: 1000
preemptionPolicy: Never
"#;

/// What a watch saw of each pod: the conditions it ever had, whether it was deleted, the node
/// it was nominated onto.
#[derive(Default, Debug, Clone)]
struct Seen {
    disruption: Option<(String, String)>,
    deleted: bool,
    nominated: Option<String>,
}

fn record(
    client: Client,
) -> (
    Arc<Mutex<HashMap<String, Seen>>>,
    tokio::task::JoinHandle<()>,
) {
    let seen: Arc<Mutex<HashMap<String, Seen>>> = Arc::default();
    let task = {
        let seen = seen.clone();
        let api: Api<Pod> = Api::namespaced(client, "default");
        tokio::spawn(async move {
            let mut stream =
                std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
            while let Ok(Some(ev)) = stream.try_next().await {
                let (pods, deleted) = match ev {
                    watcher::Event::Apply(p) | watcher::Event::InitApply(p) => (vec![p], false),
                    watcher::Event::Delete(p) => (vec![p], true),
                    _ => continue,
                };
                let mut seen = seen.lock().unwrap();
                for p in pods {
                    let e = seen
                        .entry(p.metadata.name.clone().unwrap_or_default())
                        .or_default();
                    e.deleted |= deleted;
                    let status = p.status.unwrap_or_default();
                    if let Some(c) = status
                        .conditions
                        .iter()
                        .flatten()
                        .find(|c| c.type_ == "DisruptionTarget")
                    {
                        e.disruption = Some((
                            c.reason.clone().unwrap_or_default(),
                            c.message.clone().unwrap_or_default(),
                        ));
                    }
                    if let Some(n) = status.nominated_node_name.filter(|n| !n.is_empty()) {
                        e.nominated = Some(n);
                    }
                }
            }
        })
    };
    (seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_priority_pod_preempts_the_least_important_pods() {
    let (s, client, _h) = start(&[
        NodeSpec::new("n1", "1", "4Gi"),
        NodeSpec::new("n2", "1", "4Gi"),
    ])
    .await;
    s.kubectl_stdin(&["apply", "-f", "-"], PRIORITY_CLASSES);
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (seen, watch) = record(client);
    // n1 runs two pods of priority 100, n2 two of priority 500: both are full.
    for (name, class, node) in [
        ("low-0", "low", "n1"),
        ("low-1", "low", "n1"),
        ("mid-0", "mid", "n2"),
        ("mid-1", "mid", "n2"),
    ] {
        let mut spec = on(node);
        spec["priorityClassName"] = json!(class);
        api.create(&PostParams::default(), &pod(name, "500m", spec))
            .await
            .unwrap();
        assert_eq!(wait_bound(&api, name).await, node);
    }
    // The API server resolved the priority from the class, and refuses an unknown class.
    assert_eq!(
        s.kubectl(&["get", "pod", "low-0", "-o", "jsonpath={.spec.priority}"]),
        "100"
    );
    let err = s.kubectl_err(
        &[
            "run",
            "nope",
            "--image=x",
            "--overrides={\"spec\":{\"priorityClassName\":\"nope\"}}",
        ],
        None,
    );
    assert!(
        err.contains("no PriorityClass with name nope was found"),
        "{err}"
    );

    // A pod that may not preempt waits, however high its priority.
    let patient = json!({"priorityClassName": "high-patient"});
    api.create(&PostParams::default(), &pod("patient", "500m", patient))
        .await
        .unwrap();
    let never = "0/2 nodes are available: 2 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never.";
    wait_unschedulable(&s, &api, "patient", never).await;
    for name in ["low-0", "low-1", "mid-0", "mid-1"] {
        let p = api.get(name).await.unwrap();
        assert!(
            p.metadata.deletion_timestamp.is_none(),
            "{name} is being deleted"
        );
    }

    // One that may evicts one pod of the lowest priority and takes its place.
    let urgent = api
        .create(
            &PostParams::default(),
            &pod("urgent", "500m", json!({"priorityClassName": "high"})),
        )
        .await
        .unwrap();
    assert_eq!(wait_bound(&api, "urgent").await, "n1");
    let deadline = Instant::now() + DEADLINE;
    let victims: Vec<(String, Seen)> = loop {
        let s = seen.lock().unwrap().clone();
        let gone: Vec<(String, Seen)> = s.into_iter().filter(|(_, e)| e.deleted).collect();
        if !gone.is_empty() {
            break gone;
        }
        assert!(Instant::now() < deadline, "no victim was deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(victims.len(), 1, "{victims:?}");
    let (victim, e) = &victims[0];
    assert!(victim.starts_with("low-"), "{victim}");
    assert_eq!(
        e.disruption,
        Some((
            "PreemptionByScheduler".to_string(),
            "default-scheduler: preempting to accommodate a higher priority pod".to_string()
        ))
    );
    assert_eq!(
        seen.lock().unwrap()["urgent"].nominated.as_deref(),
        Some("n1")
    );
    let uid = urgent.metadata.uid.unwrap();
    let events = s.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &format!("reason=Preempted,involvedObject.name={victim}"),
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert_eq!(events, format!("Preempted by pod {uid} on node n1"));
    watch.abort();
    // The room went to the pod that preempted for it: the patient one (same priority) waits.
    let p = api.get("patient").await.unwrap();
    assert!(p.spec.and_then(|s| s.node_name).is_none());
    let left = s.kubectl(&["get", "pods", "-o", "jsonpath={.items[*].metadata.name}"]);
    let mut left: Vec<&str> = left.split_whitespace().collect();
    left.sort();
    let survivor = if victim == "low-0" { "low-1" } else { "low-0" };
    let mut want = vec!["mid-0", "mid-1", "patient", survivor, "urgent"];
    want.sort();
    assert_eq!(left, want);
}
