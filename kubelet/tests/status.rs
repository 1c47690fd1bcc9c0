//! Pod status against a real `skiff server`: readiness gates hold Ready back until another
//! component sets their condition, which the kubelet's later writes keep; a status write based on
//! a stale copy of the pod (409 Conflict) is redone against the fresh object without losing what
//! was written meanwhile.

mod common;

use std::time::Duration;

use common::{Node, busybox_pod};
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn condition<'a>(p: &'a Value, kind: &str) -> &'a Value {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .unwrap_or(&Value::Null)
}

/// Runs `f` on a thread inside the node's network namespace (where its API server listens), on
/// a runtime of its own.
fn in_node<T: Send>(node: &Node, f: impl AsyncFnOnce() -> T + Send) -> T {
    let path = format!("/var/run/netns/{}", node.netns.name);
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(&path).expect("the node's namespace");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(f())
        })
        .join()
        .expect("the namespace thread")
    })
}

#[test]
fn readiness_gates_and_conflicting_status_writes() {
    let node = Node::start();
    node.apply(&busybox_pod(
        "gated",
        "Always",
        "sleep 3600",
        "  readinessGates:\n  - conditionType: example.com/lb-ready\n",
    ));
    let p = node.wait_pod("gated", "containers ready", WAIT, |p| {
        condition(p, "ContainersReady")["status"] == "True"
    });
    let ready = condition(&p, "Ready");
    assert_eq!(ready["status"], "False", "{ready}");
    assert_eq!(ready["reason"], "ReadinessGatesNotReady", "{ready}");
    assert_eq!(
        ready["message"],
        "corresponding condition of pod readiness gate \"example.com/lb-ready\" does not exist.",
        "{ready}"
    );

    // Another component opens the gate: the pod becomes Ready, the gate's condition stays.
    node.kubectl(&[
        "patch",
        "pod",
        "gated",
        "--subresource=status",
        "--type=strategic",
        "-p",
        r#"{"status":{"conditions":[{"type":"example.com/lb-ready","status":"True"}]}}"#,
    ]);
    let p = node.wait_pod("gated", "Ready", WAIT, |p| {
        condition(p, "Ready")["status"] == "True"
    });
    assert_eq!(condition(&p, "example.com/lb-ready")["status"], "True");

    // The kubelet's status manager writing from a stale copy of a pod: its first write
    // conflicts, the retry keeps the condition written in between. (The pod is bound to a node
    // nobody runs, so that only this test writes its status.)
    let kubeconfig = node.kubeconfig();
    let (phase, conditions) = in_node(&node, async move || {
        let client = skiff_client::client(&kubeconfig).await.expect("a client");
        let api: Api<Pod> = Api::namespaced(client.clone(), "default");
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "stale"},
            "spec": {"nodeName": "nobody", "containers": [{"name": "c", "image": "busybox"}]}
        }))
        .unwrap();
        let stale = api
            .create(&PostParams::default(), &pod)
            .await
            .expect("create");
        api.patch_status(
            "stale",
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": {"conditions": [
                {"type": "example.com/other", "status": "True"}
            ]}})),
        )
        .await
        .expect("the other writer");
        let status = PodStatus {
            phase: Some("Running".to_string()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".to_string(),
                status: "True".to_string(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        };
        skiff_kubelet::status::StatusManager::new(client)
            .set(&stale, status)
            .await;
        let now = api.get_status("stale").await.expect("the pod");
        let status = now.status.unwrap_or_default();
        let conditions: Vec<(String, String)> = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.type_, c.status))
            .collect();
        (status.phase, conditions)
    });
    assert_eq!(phase.as_deref(), Some("Running"), "{conditions:?}");
    let has = |kind: &str| conditions.iter().any(|(t, s)| t == kind && s == "True");
    assert!(has("Ready"), "{conditions:?}");
    assert!(has("example.com/other"), "{conditions:?}");
}
