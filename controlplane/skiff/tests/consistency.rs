//! What the store promises, through kubectl: `resourceVersion` and `resourceVersionMatch` on GET
//! and list as kube-apiserver serves them (Exact lists the state at that revision, 410 once
//! compacted; a revision from the future gets 504; bad combinations get 400), and nothing lost
//! to a kill -9 while compactions run.

mod common;

use std::process::Command;
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

#[test]
fn kill_9_while_the_store_file_is_compacted_loses_nothing() {
    // The redb file's compaction: etcd compacts its own files.
    let mut s = Server::start_embedded_with(&["--compaction-interval", "1"]);
    s.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kept\ndata:\n  k: v\n",
    );
    // The server is killed the moment it says it compacts the file, which then takes a while
    // (it copies every live page): a kill in the middle of redb's compaction.
    let killer = {
        let (pid, log) = (s.pid().expect("server pid"), s.log_path());
        std::thread::spawn(move || {
            // Generous: on a loaded machine the debug server and kubectl take most of 2 minutes.
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("compacting the store file") {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    return !text.contains("store file compacted");
                }
                assert!(
                    Instant::now() < deadline,
                    "the store file was never compacted"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    // 1 MiB objects written then deleted until then: as the history is compacted the file is
    // mostly free.
    let big = "x".repeat(1 << 20);
    let dir = s.data_dir().join("big");
    std::fs::create_dir(&dir).expect("manifest directory");
    for i in 0..40 {
        let manifest = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big-{i}\ndata:\n  k: {big}\n"
        );
        std::fs::write(dir.join(format!("{i}.yaml")), manifest).expect("manifest");
    }
    let dir = common::path_str(&dir);
    // What the server acknowledged before it died.
    let mut present = std::collections::BTreeSet::new();
    while !killer.is_finished() {
        for verb in ["create", "delete"] {
            let out = s.kubectl_output(&[verb, "-f", dir, "-o", "name"]);
            for name in String::from_utf8_lossy(&out.stdout).lines() {
                if verb == "create" {
                    present.insert(name.to_string());
                } else {
                    present.remove(name);
                }
            }
        }
    }
    assert!(
        killer.join().expect("killer"),
        "the kill came after the file compaction ended"
    );
    s.kill9();
    s.spawn();
    present.insert("configmap/kept".into());
    present.insert("configmap/kube-root-ca.crt".into());
    let names: std::collections::BTreeSet<String> = s
        .kubectl(&["get", "configmaps", "-o", "name"])
        .lines()
        .map(str::to_string)
        .collect();
    // A request the kill cut short may have been committed without its answer.
    let unacknowledged: Vec<_> = names.symmetric_difference(&present).collect();
    assert!(
        unacknowledged.len() <= 1,
        "acknowledged writes lost or unknown objects: {unacknowledged:?}"
    );
    for name in names.iter().filter(|n| n.starts_with("configmap/big-")) {
        let size = s.kubectl(&["get", name, "-o", "jsonpath={.data.k}"]).len();
        assert_eq!(size, 1 << 20, "{name} came back damaged");
    }
    s.kubectl_stdin(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: after\ndata:\n  k: v\n",
    );
}
