//! What the store promises, through kubectl: `resourceVersion` and `resourceVersionMatch` on GET
//! and list as kube-apiserver serves them (Exact lists the state at that revision, 410 once
//! compacted; a revision from the future gets 504; bad combinations get 400), and nothing lost
//! to a kill -9 while compactions run.

mod common;

use std::time::{Duration, Instant};

use common::Server;
use serde_json::Value;

fn raw(s: &Server, path: &str) -> Value {
    serde_json::from_str(&s.kubectl(&["get", "--raw", path])).expect("JSON")
}

/// The names of a ConfigMap list's items but the cluster CA's, which the server puts in every
/// namespace (before or after any revision the test takes).
fn test_names(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .filter(|n| *n != "kube-root-ca.crt")
        .collect()
}

#[test]
fn exact_lists_gets_and_compaction() {
    let s = Server::start_with(&["--compaction-interval", "1"]);
    s.kubectl(&["create", "configmap", "a", "--from-literal=k=1"]);
    let before = raw(&s, "/api/v1/namespaces/default/configmaps");
    let rv = before["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    s.kubectl(&["create", "configmap", "b", "--from-literal=k=1"]);
    s.kubectl(&[
        "patch",
        "configmap",
        "a",
        "--type=merge",
        "-p",
        r#"{"data":{"k":"2"}}"#,
    ]);

    // The list as it was at `rv`, even paged.
    let exact = |extra: &str| {
        format!(
            "/api/v1/namespaces/default/configmaps?resourceVersion={rv}&resourceVersionMatch=Exact{extra}"
        )
    };
    let then = raw(&s, &exact(""));
    assert_eq!(then["metadata"]["resourceVersion"], rv.as_str());
    assert_eq!(test_names(&then), ["a"]);
    assert_eq!(then["items"][0]["data"]["k"], "1");
    let page = raw(&s, &exact("&limit=1"));
    assert_eq!(page["metadata"]["resourceVersion"], rv.as_str());

    // Not older than: the latest state.
    let now = raw(
        &s,
        &format!("/api/v1/namespaces/default/configmaps?resourceVersion={rv}"),
    );
    assert_eq!(test_names(&now), ["a", "b"]);
    let a = raw(
        &s,
        &format!("/api/v1/namespaces/default/configmaps/a?resourceVersion={rv}"),
    );
    assert_eq!(a["data"]["k"], "2");

    // From the future, and bad combinations.
    let err = s.kubectl_err(
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/default/configmaps/a?resourceVersion=999999",
        ],
        None,
    );
    assert!(err.contains("Too large resource version"), "{err}");
    for (query, says) in [
        (
            "resourceVersion=0&resourceVersionMatch=Exact",
            "forbidden for resourceVersion \"0\"",
        ),
        (
            "resourceVersionMatch=Exact",
            "unless resourceVersion is provided",
        ),
        (
            "resourceVersion=1&resourceVersionMatch=Newest",
            "Unsupported value",
        ),
        ("resourceVersion=x", "invalid resource version"),
    ] {
        let err = s.kubectl_err(
            &[
                "get",
                "--raw",
                &format!("/api/v1/namespaces/default/configmaps?{query}"),
            ],
            None,
        );
        assert!(err.contains(says), "{query}: {err}");
    }

    // Once compaction passes `rv`, Exact at it is gone: 410, never a partial list.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = s.kubectl_output(&["get", "--raw", &exact("")]);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("too old resource version"), "{err}");
            break;
        }
        assert!(Instant::now() < deadline, "compaction never passed {rv}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn kill_9_across_the_compaction_cycle_loses_nothing() {
    let mut s = Server::start_with(&["--compaction-interval", "1"]);
    let mut expected = 0;
    for round in 0..4u64 {
        let batch: Vec<String> = (0..30)
            .map(|i| {
                format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: r{round}-{i}\ndata:\n  k: v\n")
            })
            .collect();
        s.kubectl_stdin(&["apply", "-f", "-"], &batch.join("---\n"));
        expected += 30;
        // Each round dies at another point of the one-second compaction cycle.
        std::thread::sleep(Duration::from_millis(300 + 350 * round));
        s.kill9();
        s.spawn();
        let names = s.kubectl(&["get", "configmaps", "-o", "name"]);
        let ours = names
            .lines()
            .filter(|l| *l != "configmap/kube-root-ca.crt")
            .count();
        assert_eq!(ours, expected, "after round {round}");
    }
}
