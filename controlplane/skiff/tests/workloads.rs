//! The workload controllers (Deployment, ReplicaSet, DaemonSet, Job, TTL-after-finished) inside a
//! real `skiff server`, driven by kubectl and kube-rs, with hollow nodes that run the pods bound
//! to them: pause/resume, progress deadline, hash collisions, proportional scaling, the history
//! limit, pod events, DaemonSet surge/unavailability/OnDelete, DaemonSet revision history and
//! rollback, Indexed Jobs, suspend, TTL, back-off and pod failure policy.

mod common;
mod hollow;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use common::Server;
use futures::TryStreamExt;
use hollow::{Hollow, NodeSpec, active_pods, cluster, deployment, eventually, image};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use skiff_controllers::template_hash;

const HASH: &str = "controller-revision-hash";

fn daemonset(name: &str, image: &str, strategy: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  updateStrategy: {strategy}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers: [{{name: c, image: {image}}}]\n"
    )
}

/// A Job manifest; `exit` labels its pods for the hollow nodes to finish them with that code.
fn job(name: &str, exit: Option<i32>, extra_spec: &str) -> String {
    let labels = exit.map_or(String::new(), |c| format!("{{hollow/exit: \"{c}\"}}"));
    let labels = if labels.is_empty() {
        "{}".to_string()
    } else {
        labels
    };
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n{extra_spec}  template:\n    metadata: {{labels: {labels}}}\n    spec:\n      restartPolicy: Never\n      containers: [{{name: c, image: registry.invalid/task:1}}]\n"
    )
}

fn get(s: &Server, kind: &str, name: &str, jsonpath: &str) -> String {
    s.kubectl(&["get", kind, name, "-o", &format!("jsonpath={jsonpath}")])
}

/// "REASON MESSAGE" lines of the events about the object `name`.
fn events(s: &Server, name: &str) -> Vec<String> {
    s.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={name}"),
        "-o",
        "jsonpath={range .items[*]}{.reason} {.message}{\"\\n\"}{end}",
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Replica counts of the ReplicaSets `selector` selects, by their first container's image.
async fn replicas_by_image(client: &Client, selector: &str) -> BTreeMap<String, i32> {
    Api::<ReplicaSet>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|rs| {
            let spec = rs.spec.unwrap();
            let image = spec.template.unwrap().spec.unwrap().containers[0]
                .image
                .clone()
                .unwrap();
            (image, spec.replicas.unwrap_or(0))
        })
        .collect()
}

/// Watches the pods `selector` selects and records `measure` of the live set after every change
/// once the initial list is in.
fn watch_pods<T: Send + 'static>(
    client: &Client,
    selector: &str,
    measure: impl Fn(&[&Pod]) -> T + Send + 'static,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<T>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let cfg = watcher::Config::default().labels(selector);
    let out = seen.clone();
    let task = tokio::spawn(async move {
        let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
        let mut synced = false;
        let mut st = std::pin::pin!(watcher(api, cfg).default_backoff());
        while let Ok(Some(ev)) = st.try_next().await {
            match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    pods.insert(p.name_any(), p);
                }
                watcher::Event::Delete(p) => {
                    pods.remove(&p.name_any());
                }
                watcher::Event::Init => pods.clear(),
                watcher::Event::InitDone => synced = true,
            }
            if synced {
                let live: Vec<&Pod> = pods.values().collect();
                out.lock().unwrap().push(measure(&live));
            }
        }
    });
    (task, seen)
}

/// The Progressing reasons a Deployment goes through, in order, as a watch sees them.
fn watch_progressing(
    client: &Client,
    name: &str,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let out = seen.clone();
    let task = tokio::spawn(async move {
        let mut st = std::pin::pin!(watcher(api, cfg).default_backoff().applied_objects());
        while let Ok(Some(d)) = st.try_next().await {
            let reason = d
                .status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .find(|c| c.type_ == "Progressing")
                .and_then(|c| c.reason.clone())
                .unwrap_or_default();
            let mut seen = out.lock().unwrap();
            if seen.last() != Some(&reason) {
                seen.push(reason);
            }
        }
    });
    (task, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_deployment_scales_but_rolls_out_nothing_until_resumed() {
    let (s, client, _h) = cluster().await;
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        &deployment("web", 3, "registry.invalid/web:1", ""),
    );
    s.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let rs = Api::<ReplicaSet>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items[0]
        .name_any();
    let ev = events(&s, "web");
    assert!(
        ev.contains(&format!(
            "ScalingReplicaSet Scaled up replica set {rs} from 0 to 3"
        )),
        "{ev:?}"
    );
    let (watch, reasons) = watch_progressing(&client, "web");

    let out = s.kubectl(&["rollout", "pause", "deployment/web"]);
    assert!(out.contains("deployment.apps/web paused"), "{out}");
    eventually("Progressing=Unknown DeploymentPaused", || async {
        get(&s, "deployment", "web", "{.status.conditions[?(@.type==\"Progressing\")].status} {.status.conditions[?(@.type==\"Progressing\")].reason} {.status.conditions[?(@.type==\"Progressing\")].message}")
            == "Unknown DeploymentPaused Deployment is paused"
    })
    .await;
    // Paused: a new template rolls out nothing, but scaling still applies.
    s.kubectl(&["set", "image", "deployment/web", "c=registry.invalid/web:2"]);
    s.kubectl(&["scale", "deployment/web", "--replicas=5"]);
    eventually("5 ready pods of the old template", || async {
        let pods = active_pods(&client, "app=web").await;
        pods.len() == 5 && pods.iter().all(|p| is_ready(p) && image(p).ends_with(":1"))
    })
    .await;
    eventually("the spec change observed", || async {
        get(
            &s,
            "deployment",
            "web",
            "{.metadata.generation}/{.status.observedGeneration}",
        )
        .split('/')
        .collect::<BTreeSet<_>>()
        .len()
            == 1
    })
    .await;
    assert_eq!(
        replicas_by_image(&client, "app=web").await,
        BTreeMap::from([("registry.invalid/web:1".to_string(), 5)])
    );
    let out = s.kubectl(&["rollout", "status", "deployment/web", "--watch=false"]);
    assert_eq!(
        out,
        "Waiting for deployment \"web\" rollout to finish: 0 out of 5 new replicas have been updated...\n"
    );

    let out = s.kubectl(&["rollout", "resume", "deployment/web"]);
    assert!(out.contains("deployment.apps/web resumed"), "{out}");
    s.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    eventually("5 pods of the new template", || async {
        let pods = active_pods(&client, "app=web").await;
        pods.len() == 5 && pods.iter().all(|p| image(p).ends_with(":2"))
    })
    .await;
    eventually("NewReplicaSetAvailable", || async {
        reasons.lock().unwrap().last().map(String::as_str) == Some("NewReplicaSetAvailable")
    })
    .await;
    watch.abort();
    let reasons = reasons.lock().unwrap().clone();
    let at = |r: &str| reasons.iter().position(|x| x == r);
    assert!(
        at("DeploymentPaused").is_some() && at("DeploymentPaused") < at("DeploymentResumed"),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_without_progress_exceeds_its_deadline() {
    let (s, client, _h) = cluster().await;
    // No node has the label: the pods stay Pending, unschedulable.
    let manifest = deployment(
        "stuck",
        2,
        "registry.invalid/stuck:1",
        "  progressDeadlineSeconds: 8\n",
    )
    .replace(
        "      containers:",
        "      nodeSelector: {disk: none-such}\n      containers:",
    );
    s.kubectl_stdin(&["apply", "-f", "-"], &manifest);
    let out = s.kubectl_output(&["rollout", "status", "deployment/stuck", "--timeout=90s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("deployment \"stuck\" exceeded its progress deadline"),
        "{stderr}"
    );
    let rs = Api::<ReplicaSet>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels("app=stuck"))
        .await
        .unwrap()
        .items[0]
        .name_any();
    assert_eq!(
        get(
            &s,
            "deployment",
            "stuck",
            "{.status.conditions[?(@.type==\"Progressing\")].status} {.status.conditions[?(@.type==\"Progressing\")].reason} {.status.conditions[?(@.type==\"Progressing\")].message}"
        ),
        format!("False ProgressDeadlineExceeded ReplicaSet \"{rs}\" has timed out progressing.")
    );
    let pods = active_pods(&client, "app=stuck").await;
    assert_eq!(pods.len(), 2);
    assert!(
        pods.iter()
            .all(|p| p.spec.as_ref().unwrap().node_name.is_none())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_set_name_taken_by_another_template_bumps_the_collision_count() {
    let (s, client, _h) = cluster().await;
    // Paused, the Deployment makes no ReplicaSet yet: its name can be taken first.
    let manifest = deployment("clash", 2, "registry.invalid/clash:1", "  paused: true\n");
    s.kubectl_stdin(&["apply", "-f", "-"], &manifest);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let template = deployments
        .get("clash")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template;
    let taken = template_hash(&template, None);
    let squatter: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": format!("clash-{taken}"), "labels": {"app": "other"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "other"}},
            "template": {"metadata": {"labels": {"app": "other"}},
                "spec": {"containers": [{"name": "c", "image": "registry.invalid/other:1"}]}}},
    }))
    .unwrap();
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    rss.create(&PostParams::default(), &squatter).await.unwrap();

    s.kubectl(&["rollout", "resume", "deployment/clash"]);
    s.kubectl(&["rollout", "status", "deployment/clash", "--timeout=60s"]);
    assert_eq!(
        get(&s, "deployment", "clash", "{.status.collisionCount}"),
        "1"
    );
    let next = template_hash(&template, Some(1));
    let owned = rss
        .list(&ListParams::default().labels("app=clash"))
        .await
        .unwrap()
        .items;
    assert_eq!(owned.len(), 1);
    assert_eq!(owned[0].name_any(), format!("clash-{next}"));
    assert_eq!(owned[0].labels()["pod-template-hash"], next);
    // The squatter is left as it was.
    let squatter = rss.get(&format!("clash-{taken}")).await.unwrap();
    assert!(
        squatter
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_in_the_middle_of_a_rollout_is_spread_in_proportion() {
    let (s, client, _h) = cluster().await;
    let strategy =
        "  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 3, maxUnavailable: 2}}\n";
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        &deployment("prop", 10, "registry.invalid/prop:1", strategy),
    );
    s.kubectl(&["rollout", "status", "deployment/prop", "--timeout=90s"]);
    // The new template's pods never become ready, so the rollout stops half-way: old 8, new 5
    // (13 = 10 + maxSurge; 8 available = 10 - maxUnavailable).
    s.kubectl(&[
        "patch",
        "deployment",
        "prop",
        "-p",
        r#"{"spec": {"template": {"metadata": {"labels": {"hollow/ready": "false"}}, "spec": {"containers": [{"name": "c", "image": "registry.invalid/prop:2"}]}}}}"#,
    ]);
    let halfway = BTreeMap::from([
        ("registry.invalid/prop:1".to_string(), 8),
        ("registry.invalid/prop:2".to_string(), 5),
    ]);
    eventually("old 8, new 5", || async {
        replicas_by_image(&client, "app=prop").await == halfway
    })
    .await;
    // 10 → 20 (23 with the surge): the 10 more go 6 to the old and 4 to the new ReplicaSet,
    // 8:5 as 14:9.
    s.kubectl(&["scale", "deployment/prop", "--replicas=20"]);
    let scaled = BTreeMap::from([
        ("registry.invalid/prop:1".to_string(), 14),
        ("registry.invalid/prop:2".to_string(), 9),
    ]);
    eventually("old 14, new 9", || async {
        replicas_by_image(&client, "app=prop").await == scaled
    })
    .await;
    let annotations = s.kubectl(&[
        "get",
        "rs",
        "-l",
        "app=prop",
        "-o",
        "jsonpath={range .items[*]}{.metadata.annotations.deployment\\.kubernetes\\.io/desired-replicas}/{.metadata.annotations.deployment\\.kubernetes\\.io/max-replicas} {end}",
    ]);
    assert_eq!(annotations, "20/23 20/23 ");
    let names: BTreeMap<i32, String> = Api::<ReplicaSet>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels("app=prop"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|rs| (rs.spec.as_ref().unwrap().replicas.unwrap(), rs.name_any()))
        .collect();
    let ev = events(&s, "prop");
    for (from, to) in [(8, 14), (5, 9)] {
        let line = format!(
            "ScalingReplicaSet Scaled up replica set {} from {from} to {to}",
            names[&to]
        );
        assert!(ev.contains(&line), "{line} not in {ev:?}");
    }
    // It stays there: the new pods are still not available.
    assert_eq!(replicas_by_image(&client, "app=prop").await, scaled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_replica_sets_beyond_the_history_limit_are_deleted() {
    let (s, client, _h) = cluster().await;
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        &deployment(
            "hist",
            2,
            "registry.invalid/hist:1",
            "  revisionHistoryLimit: 1\n",
        ),
    );
    s.kubectl(&["rollout", "status", "deployment/hist", "--timeout=60s"]);
    for v in [2, 3] {
        s.kubectl(&[
            "set",
            "image",
            "deployment/hist",
            &format!("c=registry.invalid/hist:{v}"),
        ]);
        s.kubectl(&["rollout", "status", "deployment/hist", "--timeout=60s"]);
    }
    let kept = BTreeMap::from([
        ("registry.invalid/hist:2".to_string(), 0),
        ("registry.invalid/hist:3".to_string(), 2),
    ]);
    eventually("the revision-1 ReplicaSet deleted", || async {
        replicas_by_image(&client, "app=hist").await == kept
    })
    .await;
    let history = s.kubectl(&["rollout", "history", "deployment/hist"]);
    let revisions: Vec<&str> = history
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["2", "3"], "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_set_records_its_pods_and_gives_up_unready_ones_first() {
    let (s, client, _h) = cluster().await;
    let rs = "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: ev}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: ev}}\n  template:\n    metadata: {labels: {app: ev}}\n    spec:\n      containers: [{name: c, image: registry.invalid/ev:1}]\n";
    s.kubectl_stdin(&["apply", "-f", "-"], rs);
    eventually("3 ready replicas", || async {
        get(&s, "rs", "ev", "{.status.readyReplicas}") == "3"
    })
    .await;
    let pods: BTreeSet<String> = active_pods(&client, "app=ev")
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    let created: BTreeSet<String> = pods
        .iter()
        .map(|p| format!("SuccessfulCreate Created pod: {p}"))
        .collect();
    eventually("an event per created pod", || async {
        let ev: BTreeSet<String> = events(&s, "ev").into_iter().collect();
        created.is_subset(&ev)
    })
    .await;
    // One pod turns unready: scaling down removes it, not a ready one.
    let unready = pods.iter().nth(1).unwrap().clone();
    s.kubectl(&["label", "pod", &unready, "hollow/ready=false"]);
    eventually("2 ready", || async {
        get(&s, "rs", "ev", "{.status.readyReplicas}") == "2"
    })
    .await;
    s.kubectl(&["scale", "rs/ev", "--replicas=2"]);
    eventually("the unready pod gone", || async {
        let left: BTreeSet<String> = active_pods(&client, "app=ev")
            .await
            .iter()
            .map(|p| p.name_any())
            .collect();
        left.len() == 2 && !left.contains(&unready)
    })
    .await;
    eventually("a SuccessfulDelete event", || async {
        events(&s, "ev").contains(&format!("SuccessfulDelete Deleted pod: {unready}"))
    })
    .await;
}

/// (ready daemon pods, most daemon pods on one node) of a set of pods.
fn readiness_and_crowding(pods: &[&Pod]) -> (usize, usize) {
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let node = p
            .spec
            .as_ref()
            .unwrap()
            .node_name
            .clone()
            .unwrap_or_default();
        *per_node.entry(node).or_default() += 1;
    }
    (
        pods.iter().filter(|p| is_ready(p)).count(),
        per_node.values().copied().max().unwrap_or(0),
    )
}

/// Applies the DaemonSet `agent` (image :1) with `strategy`, rolls it to :2 on all `nodes` and
/// returns (ready pods, most pods on one node) as seen after every pod change during the rollout.
async fn roll_daemonset(
    s: &Server,
    client: &Client,
    strategy: &str,
    nodes: usize,
) -> Vec<(usize, usize)> {
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        &daemonset("agent", "registry.invalid/agent:1", strategy),
    );
    s.kubectl(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    let (watch, seen) = watch_pods(client, "app=agent", readiness_and_crowding);
    s.kubectl(&[
        "set",
        "image",
        "daemonset/agent",
        "c=registry.invalid/agent:2",
    ]);
    s.kubectl(&["rollout", "status", "daemonset/agent", "--timeout=90s"]);
    eventually("every daemon pod new", || async {
        let pods = active_pods(client, "app=agent").await;
        pods.len() == nodes && pods.iter().all(|p| image(p).ends_with(":2"))
    })
    .await;
    watch.abort();
    seen.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surging_daemonset_starts_each_new_pod_before_removing_the_old() {
    let (s, client, _h) = cluster().await;
    let seen = roll_daemonset(
        &s,
        &client,
        "{type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}",
        3,
    )
    .await;
    let min_ready = seen.iter().map(|m| m.0).min().unwrap();
    let most_on_a_node = seen.iter().map(|m| m.1).max().unwrap();
    assert!(min_ready >= 3, "ready daemons dropped to {min_ready}");
    assert_eq!(
        most_on_a_node, 2,
        "old and new pod side by side, never more"
    );
    let ds = Api::<DaemonSet>::namespaced(client.clone(), "default")
        .get("agent")
        .await
        .unwrap();
    let hash = template_hash(&ds.spec.unwrap().template, None);
    for p in active_pods(&client, "app=agent").await {
        assert_eq!(p.labels()[HASH], hash);
    }
    assert_eq!(
        get(
            &s,
            "ds",
            "agent",
            "{.status.desiredNumberScheduled}/{.status.updatedNumberScheduled}/{.status.numberAvailable}/{.status.numberUnavailable}"
        ),
        "3/3/3/0"
    );
    let ev = events(&s, "agent");
    assert_eq!(
        ev.iter()
            .filter(|e| e.starts_with("SuccessfulCreate Created pod: agent-"))
            .count(),
        6,
        "{ev:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemonset_rollout_keeps_within_max_unavailable() {
    let s = Server::start_cluster();
    let client = hollow::client(&s).await;
    let nodes: Vec<NodeSpec> = ["node-a", "node-b", "node-c", "node-d"]
        .iter()
        .map(|n| NodeSpec::new(n, "4", "8Gi"))
        .collect();
    let _h = Hollow::start(client.clone(), &nodes).await;
    let seen = roll_daemonset(
        &s,
        &client,
        "{type: RollingUpdate, rollingUpdate: {maxUnavailable: 2}}",
        4,
    )
    .await;
    assert!(
        seen.iter().all(|m| m.0 >= 2),
        "more than 2 of 4 daemons unavailable: {seen:?}"
    );
    assert!(
        seen.iter().all(|m| m.1 <= 1),
        "two daemons on one node without surge"
    );
    assert!(
        seen.iter().any(|m| m.0 == 2),
        "the rollout never used its budget: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_delete_daemonset_replaces_only_pods_that_are_deleted() {
    let (s, client, _h) = cluster().await;
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        &daemonset("od", "registry.invalid/od:1", "{type: OnDelete}"),
    );
    eventually("3 ready daemons", || async {
        get(&s, "ds", "od", "{.status.numberReady}") == "3"
    })
    .await;
    s.kubectl(&["set", "image", "daemonset/od", "c=registry.invalid/od:2"]);
    eventually("the new template observed", || async {
        get(
            &s,
            "ds",
            "od",
            "{.metadata.generation}/{.status.observedGeneration}",
        ) == "2/2"
    })
    .await;
    assert!(
        active_pods(&client, "app=od")
            .await
            .iter()
            .all(|p| image(p).ends_with(":1"))
    );
    let err = s.kubectl_err(&["rollout", "status", "daemonset/od"], None);
    assert!(
        err.contains("rollout status is only available for RollingUpdate strategy type"),
        "{err}"
    );
    let victim = active_pods(&client, "app=od").await[0].name_any();
    s.kubectl(&["delete", "pod", &victim]);
    eventually("one new pod in its place", || async {
        let pods = active_pods(&client, "app=od").await;
        pods.len() == 3
            && pods.iter().filter(|p| image(p).ends_with(":2")).count() == 1
            && pods.iter().all(|p| p.name_any() != victim)
    })
    .await;
    eventually("updatedNumberScheduled 1", || async {
        get(
            &s,
            "ds",
            "od",
            "{.status.updatedNumberScheduled}/{.status.desiredNumberScheduled}",
        ) == "1/3"
    })
    .await;
}

/// A DaemonSet's ControllerRevisions by revision number: (name, first container image, hash).
async fn revisions(client: &Client, selector: &str) -> BTreeMap<i64, (String, String, String)> {
    Api::<ControllerRevision>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|r| {
            let image = r
                .data
                .as_ref()
                .and_then(|d| d.0.pointer("/spec/template/spec/containers/0/image"))
                .and_then(|i| i.as_str())
                .unwrap_or_default()
                .to_string();
            let hash = r.labels()[HASH].clone();
            (r.revision, (r.name_any(), image, hash))
        })
        .collect()
}

/// The REVISION column of `kubectl rollout history`.
fn history_revisions(s: &Server, target: &str) -> Vec<String> {
    let out = s.kubectl(&["rollout", "history", target]);
    assert!(out.contains("REVISION  CHANGE-CAUSE"), "{out}");
    out.lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Whether the DaemonSet's pods are one per node, all of `image` and revision `hash`.
async fn daemons_run(client: &Client, selector: &str, image_: &str, hash: &str) -> bool {
    let pods = active_pods(client, selector).await;
    let nodes: BTreeSet<_> = pods
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    pods.len() == 3
        && nodes.len() == 3
        && pods
            .iter()
            .all(|p| image(p) == image_ && p.labels().get(HASH).map(String::as_str) == Some(hash))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemonset_keeps_a_revision_per_template_and_rolls_back_to_one() {
    let (s, client, _h) = cluster().await;
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        &daemonset("hist", "registry.invalid/hist:1", "{type: RollingUpdate}"),
    );
    s.kubectl(&["rollout", "status", "daemonset/hist", "--timeout=60s"]);
    for v in [2, 3] {
        s.kubectl(&[
            "set",
            "image",
            "daemonset/hist",
            &format!("c=registry.invalid/hist:{v}"),
        ]);
        s.kubectl(&["rollout", "status", "daemonset/hist", "--timeout=90s"]);
    }
    let revs = revisions(&client, "app=hist").await;
    let images: Vec<(i64, &str)> = revs.iter().map(|(n, r)| (*n, r.1.as_str())).collect();
    assert_eq!(
        images,
        [
            (1, "registry.invalid/hist:1"),
            (2, "registry.invalid/hist:2"),
            (3, "registry.invalid/hist:3")
        ]
    );
    let ds = Api::<DaemonSet>::namespaced(client.clone(), "default")
        .get("hist")
        .await
        .unwrap();
    let newest = template_hash(&ds.spec.as_ref().unwrap().template, None);
    assert_eq!(
        (revs[&3].0.as_str(), revs[&3].2.as_str()),
        (format!("hist-{newest}").as_str(), newest.as_str())
    );
    eventually("every daemon on the newest revision", || {
        daemons_run(&client, "app=hist", "registry.invalid/hist:3", &newest)
    })
    .await;
    let first = Api::<ControllerRevision>::namespaced(client.clone(), "default")
        .get(&revs[&1].0)
        .await
        .unwrap();
    let owner = &first.owner_references()[0];
    assert_eq!(
        (
            owner.kind.as_str(),
            owner.name.as_str(),
            Some(owner.uid.clone()),
            owner.controller,
            owner.block_owner_deletion
        ),
        ("DaemonSet", "hist", ds.uid(), Some(true), Some(true))
    );
    assert_eq!(first.labels()["app"], "hist");

    assert_eq!(history_revisions(&s, "daemonset/hist"), ["1", "2", "3"]);
    let second = s.kubectl(&["rollout", "history", "daemonset/hist", "--revision=2"]);
    assert!(
        second.contains("registry.invalid/hist:2") && !second.contains("hist:3"),
        "{second}"
    );
    let table = s.kubectl(&["get", "controllerrevisions"]);
    let mut lines = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>());
    assert_eq!(
        lines.next().unwrap(),
        ["NAME", "CONTROLLER", "REVISION", "AGE"]
    );
    let rows: BTreeSet<(String, String, String)> = lines
        .map(|c| (c[0].to_string(), c[1].to_string(), c[2].to_string()))
        .collect();
    let want: BTreeSet<(String, String, String)> = revs
        .iter()
        .map(|(n, r)| (r.0.clone(), "daemonset.apps/hist".into(), n.to_string()))
        .collect();
    assert_eq!(rows, want, "{table}");

    let out = s.kubectl(&["rollout", "undo", "daemonset/hist", "--to-revision=1"]);
    assert!(out.contains("daemonset.apps/hist rolled back"), "{out}");
    s.kubectl(&["rollout", "status", "daemonset/hist", "--timeout=90s"]);
    let first_hash = revs[&1].2.clone();
    eventually("the first image back on every node", || {
        daemons_run(&client, "app=hist", "registry.invalid/hist:1", &first_hash)
    })
    .await;
    eventually("revision 1 reused as revision 4", || async {
        let now = revisions(&client, "app=hist").await;
        now.keys().copied().collect::<Vec<_>>() == [2, 3, 4] && now[&4].0 == revs[&1].0
    })
    .await;
    assert_eq!(history_revisions(&s, "daemonset/hist"), ["2", "3", "4"]);
    // kubectl sees the current template in revision 4's data, as it would in kube's.
    let out = s.kubectl(&["rollout", "undo", "daemonset/hist", "--to-revision=4"]);
    assert!(
        out.contains("skipped rollback (current template already matches revision 4)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_revisions_beyond_the_history_limit_are_deleted_and_go_with_the_daemonset() {
    let (s, client, _h) = cluster().await;
    let manifest = daemonset("lim", "registry.invalid/lim:1", "{type: RollingUpdate}").replacen(
        "\nspec:\n",
        "\nspec:\n  revisionHistoryLimit: 1\n",
        1,
    );
    s.kubectl_stdin(&["apply", "-f", "-"], &manifest);
    s.kubectl(&["rollout", "status", "daemonset/lim", "--timeout=60s"]);
    for v in 2..=4 {
        s.kubectl(&[
            "set",
            "image",
            "daemonset/lim",
            &format!("c=registry.invalid/lim:{v}"),
        ]);
        s.kubectl(&["rollout", "status", "daemonset/lim", "--timeout=90s"]);
    }
    eventually("only the current revision and one more", || async {
        let revs = revisions(&client, "app=lim").await;
        let images: Vec<(i64, &str)> = revs.iter().map(|(n, r)| (*n, r.1.as_str())).collect();
        images == [(3, "registry.invalid/lim:3"), (4, "registry.invalid/lim:4")]
    })
    .await;
    assert_eq!(history_revisions(&s, "daemonset/lim"), ["3", "4"]);
    s.kubectl(&["delete", "daemonset", "lim"]);
    eventually("the revisions collected with their DaemonSet", || async {
        revisions(&client, "app=lim").await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_name_taken_by_another_template_bumps_the_daemonset_collision_count() {
    let (s, client, _h) = cluster().await;
    let manifest = daemonset("clash", "registry.invalid/clash:1", "{type: RollingUpdate}");
    // The template as the server will store it (defaulted) names the first revision.
    let dry = s.kubectl_stdin(
        &["apply", "--dry-run=server", "-o", "json", "-f", "-"],
        &manifest,
    );
    let dry: DaemonSet = serde_json::from_str(&dry).unwrap();
    let template = dry.spec.unwrap().template;
    let taken = template_hash(&template, None);
    let crs: Api<ControllerRevision> = Api::namespaced(client.clone(), "default");
    let squatter: ControllerRevision = serde_json::from_value(json!({
        "metadata": {"name": format!("clash-{taken}"), "labels": {"app": "other"}},
        "data": {"spec": {"template": {"$patch": "replace"}}},
        "revision": 1,
    }))
    .unwrap();
    crs.create(&PostParams::default(), &squatter).await.unwrap();

    s.kubectl_stdin(&["apply", "-f", "-"], &manifest);
    s.kubectl(&["rollout", "status", "daemonset/clash", "--timeout=60s"]);
    assert_eq!(
        get(&s, "daemonset", "clash", "{.status.collisionCount}"),
        "1"
    );
    let next = template_hash(&template, Some(1));
    let revs = revisions(&client, "app=clash").await;
    assert_eq!(
        revs.into_iter().collect::<Vec<_>>(),
        [(
            1,
            (
                format!("clash-{next}"),
                "registry.invalid/clash:1".to_string(),
                next.clone()
            )
        )]
    );
    eventually("the daemons carry the new hash", || {
        daemons_run(&client, "app=clash", "registry.invalid/clash:1", &next)
    })
    .await;
    let squatter = crs.get(&format!("clash-{taken}")).await.unwrap();
    assert!(squatter.owner_references().is_empty());

    // A revision's data never changes; its number may, and it cannot be made without data.
    let name = format!("controllerrevision/clash-{taken}");
    let err = s.kubectl_err(
        &[
            "patch",
            &name,
            "--type=merge",
            "-p",
            r#"{"data": {"x": 1}}"#,
        ],
        None,
    );
    assert!(
        err.contains("data: Invalid value") && err.contains("field is immutable"),
        "{err}"
    );
    s.kubectl(&["patch", &name, "--type=merge", "-p", r#"{"revision": 7}"#]);
    let err = s.kubectl_err(
        &["create", "-f", "-"],
        Some(
            "apiVersion: apps/v1\nkind: ControllerRevision\nmetadata: {name: empty}\nrevision: 1\n",
        ),
    );
    assert!(
        err.contains("data: Required value: data is mandatory"),
        "{err}"
    );
    // Discovered and documented as kube-apiserver serves it.
    let resources = s.kubectl(&["api-resources", "--api-group=apps", "--no-headers"]);
    assert!(
        resources.lines().any(|l| l.split_whitespace().eq([
            "controllerrevisions",
            "apps/v1",
            "true",
            "ControllerRevision"
        ])),
        "{resources}"
    );
    let explained = s.kubectl(&["explain", "controllerrevision.revision"]);
    assert!(
        explained.contains("Revision indicates the revision of the state represented by Data."),
        "{explained}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexed_job_runs_each_index_once_and_reports_completed_indexes() {
    let (s, client, _h) = cluster().await;
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        &job(
            "idx",
            Some(0),
            "  completionMode: Indexed\n  completions: 3\n  parallelism: 3\n",
        ),
    );
    s.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/idx",
        "--timeout=60s",
    ]);
    assert_eq!(
        get(
            &s,
            "job",
            "idx",
            "{.status.completedIndexes} {.status.succeeded}"
        ),
        "0-2 3"
    );
    let pods = Api::<Pod>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels("job-name=idx"))
        .await
        .unwrap()
        .items;
    let mut indexes = BTreeSet::new();
    for p in &pods {
        let index = p.annotations()["batch.kubernetes.io/job-completion-index"].clone();
        assert_eq!(
            p.labels()["batch.kubernetes.io/job-completion-index"],
            index
        );
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(
            spec.hostname.as_deref(),
            Some(format!("idx-{index}").as_str())
        );
        assert!(p.name_any().starts_with(&format!("idx-{index}-")));
        let env = spec.containers[0].env.as_ref().unwrap();
        let var = env
            .iter()
            .find(|e| e.name == "JOB_COMPLETION_INDEX")
            .unwrap();
        assert_eq!(
            var.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.labels['batch.kubernetes.io/job-completion-index']"
        );
        indexes.insert(index);
    }
    assert_eq!(
        indexes,
        BTreeSet::from(["0".into(), "1".into(), "2".into()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_index_is_retried_under_the_same_index() {
    let (s, client, _h) = cluster().await;
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        &job(
            "retry",
            None,
            "  completionMode: Indexed\n  completions: 2\n  parallelism: 2\n",
        ),
    );
    let pod_of = |index: &'static str| {
        let client = client.clone();
        async move {
            active_pods(&client, "job-name=retry")
                .await
                .into_iter()
                .find(|p| {
                    p.annotations()
                        .get("batch.kubernetes.io/job-completion-index")
                        .map(String::as_str)
                        == Some(index)
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                })
                .map(|p| p.name_any())
        }
    };
    eventually("pods for index 0 and 1", || async {
        pod_of("0").await.is_some() && pod_of("1").await.is_some()
    })
    .await;
    let first = pod_of("1").await.unwrap();
    s.kubectl(&["label", "pod", &first, "hollow/exit=1"]);
    s.kubectl(&["label", "pod", &pod_of("0").await.unwrap(), "hollow/exit=0"]);
    eventually("index 0 done, index 1 failed", || async {
        get(
            &s,
            "job",
            "retry",
            "{.status.completedIndexes}/{.status.failed}",
        ) == "0/1"
    })
    .await;
    // After the back-off, index 1 runs again in a new pod.
    eventually("a new pod for index 1", || async {
        pod_of("1").await.is_some_and(|p| p != first)
    })
    .await;
    s.kubectl(&["label", "pod", &pod_of("1").await.unwrap(), "hollow/exit=0"]);
    s.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/retry",
        "--timeout=60s",
    ]);
    assert_eq!(
        get(
            &s,
            "job",
            "retry",
            "{.status.completedIndexes} {.status.succeeded} {.status.failed}"
        ),
        "0,1 2 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspending_a_job_deletes_its_pods_and_resuming_runs_it_to_the_end() {
    let (s, client, _h) = cluster().await;
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        &job("sus", None, "  completions: 4\n  parallelism: 2\n"),
    );
    eventually("2 running pods", || async {
        get(&s, "job", "sus", "{.status.active}/{.status.ready}") == "2/2"
    })
    .await;
    s.kubectl(&[
        "patch",
        "job",
        "sus",
        "--type=merge",
        "-p",
        r#"{"spec": {"suspend": true}}"#,
    ]);
    eventually("no pods", || async {
        active_pods(&client, "job-name=sus").await.is_empty()
    })
    .await;
    eventually("Suspended", || async {
        get(&s, "job", "sus", "{.status.active} {.status.conditions[?(@.type==\"Suspended\")].status} {.status.conditions[?(@.type==\"Suspended\")].reason} {.status.conditions[?(@.type==\"Suspended\")].message}")
            == "0 True JobSuspended Job suspended"
    })
    .await;
    // Pods deleted by the suspension are not failures.
    assert_eq!(get(&s, "job", "sus", "{.status.failed}"), "0");
    assert!(events(&s, "sus").contains(&"Suspended Job suspended".to_string()));

    s.kubectl(&[
        "patch",
        "job",
        "sus",
        "--type=merge",
        "-p",
        r#"{"spec": {"suspend": false}}"#,
    ]);
    eventually("Resumed with 2 pods again", || async {
        get(&s, "job", "sus", "{.status.active} {.status.conditions[?(@.type==\"Suspended\")].status} {.status.conditions[?(@.type==\"Suspended\")].reason}")
            == "2 False JobResumed"
            && active_pods(&client, "job-name=sus").await.len() == 2
    })
    .await;
    assert!(events(&s, "sus").contains(&"Resumed Job resumed".to_string()));
    // Let every pod that runs finish until the Job has its 4 completions.
    eventually("4 completions", || async {
        let _ = s.kubectl_output(&[
            "label",
            "pods",
            "-l",
            "job-name=sus",
            "hollow/exit=0",
            "--overwrite",
        ]);
        get(&s, "job", "sus", "{.status.succeeded}") == "4"
    })
    .await;
    s.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/sus",
        "--timeout=60s",
    ]);
    assert!(events(&s, "sus").contains(&"Completed Job completed".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_is_deleted_with_its_pods_after_its_ttl() {
    let (s, client, _h) = cluster().await;
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        &job("ttl", Some(0), "  ttlSecondsAfterFinished: 5\n"),
    );
    s.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/ttl",
        "--timeout=60s",
    ]);
    let completed: Timestamp = get(&s, "job", "ttl", "{.status.completionTime}")
        .parse()
        .unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    eventually("the job deleted", || async {
        jobs.get_opt("ttl").await.unwrap().is_none()
    })
    .await;
    assert!(
        Timestamp::now().as_second() >= completed.as_second() + 5,
        "deleted before its TTL"
    );
    eventually("its pods deleted", || async {
        Api::<Pod>::namespaced(client.clone(), "default")
            .list(&ListParams::default().labels("job-name=ttl"))
            .await
            .unwrap()
            .items
            .is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_pods_are_replaced_after_an_exponential_back_off() {
    let (s, client, _h) = cluster().await;
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        &job("flaky", Some(1), "  backoffLimit: 2\n"),
    );
    eventually("the Job failed", || async {
        get(
            &s,
            "job",
            "flaky",
            "{.status.conditions[?(@.type==\"Failed\")].reason}",
        ) == "BackoffLimitExceeded"
    })
    .await;
    assert_eq!(
        get(&s, "job", "flaky", "{.status.failed} {.status.active}"),
        "3 0"
    );
    let mut created: Vec<i64> = Api::<Pod>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels("job-name=flaky"))
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| {
            p.metadata
                .creation_timestamp
                .as_ref()
                .unwrap()
                .0
                .as_second()
        })
        .collect();
    created.sort();
    assert_eq!(created.len(), 3);
    // 10 s after the first failure, 20 s after the second (timestamps are to the second).
    assert!(created[1] - created[0] >= 9, "{created:?}");
    assert!(created[2] - created[1] >= 19, "{created:?}");
    assert!(
        events(&s, "flaky").contains(
            &"BackoffLimitExceeded Job has reached the specified backoff limit".to_string()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_failure_policy_fails_the_job_on_a_matching_exit_code() {
    let (s, client, _h) = cluster().await;
    let policy = "  podFailurePolicy:\n    rules:\n    - action: FailJob\n      onExitCodes: {containerName: c, operator: In, values: [42]}\n";
    s.kubectl_stdin(&["apply", "-f", "-"], &job("pfp", Some(42), policy));
    s.kubectl(&["wait", "--for=condition=failed", "job/pfp", "--timeout=60s"]);
    let pod = Api::<Pod>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels("job-name=pfp"))
        .await
        .unwrap()
        .items[0]
        .name_any();
    let message = format!(
        "Container c for pod default/{pod} failed with exit code 42 matching FailJob rule at index 0"
    );
    assert_eq!(
        get(
            &s,
            "job",
            "pfp",
            "{.status.failed} {.status.conditions[?(@.type==\"Failed\")].reason} {.status.conditions[?(@.type==\"Failed\")].message}"
        ),
        format!("1 PodFailurePolicy {message}")
    );
    assert!(events(&s, "pfp").contains(&format!("PodFailurePolicy {message}")));
}
