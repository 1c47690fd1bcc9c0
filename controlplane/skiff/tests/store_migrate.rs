//! `skiff store migrate` between a server's embedded store and etcd (Debian's etcd-server), with
//! the real `skiff server` before and after: objects keep their content, a live server's store
//! is refused, and a migration killed midway leaves a store the server refuses until a rerun.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use skiff_store::test_etcd::TestEtcd;

const OBJECTS: usize = 400;

fn migrate_cmd(from: &str, to: &str, force: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_skiff"));
    c.args(["store", "migrate", "--from", from, "--to", to])
        .stdin(Stdio::null());
    if force {
        c.arg("--force");
    }
    c
}

fn migrate(from: &str, to: &str, force: bool) -> Output {
    migrate_cmd(from, to, force)
        .output()
        .expect("running skiff store migrate")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `skiff store migrate` that must be refused with a message containing `why`.
fn refused(from: &str, to: &str, why: &str) {
    let out = migrate(from, to, false);
    assert!(!out.status.success(), "migrating {from} to {to} ran");
    assert!(
        stderr(&out).contains(why),
        "expected {why:?}: {}",
        stderr(&out)
    );
}

/// The uid and creationTimestamp of configmap `mig/cm-0`.
fn identity(s: &Server) -> String {
    s.kubectl(&[
        "get",
        "configmap",
        "-n",
        "mig",
        "cm-0",
        "-o",
        "jsonpath={.metadata.uid} {.metadata.creationTimestamp} {.data.i}",
    ])
}

fn configmaps_in_mig(s: &Server) -> usize {
    s.kubectl(&["get", "configmaps", "-n", "mig", "-o", "name"])
        .lines()
        .filter(|l| l.starts_with("configmap/cm-"))
        .count()
}

#[test]
fn objects_move_from_the_embedded_store_to_etcd_and_back() {
    let mut s = Server::start_embedded_with(&[]);
    s.kubectl(&["create", "namespace", "mig"]);
    let items: Vec<String> = (0..OBJECTS)
        .map(|i| {
            format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"cm-{i}","namespace":"mig"}},"data":{{"i":"{i}"}}}}"#
            )
        })
        .collect();
    s.kubectl_stdin(&["create", "-f", "-"], &items.join("\n"));
    let before = identity(&s);
    let dir = s.data_dir().to_str().expect("utf-8 path").to_string();
    let etcd = TestEtcd::start();
    let to_etcd = format!("etcd://{}", etcd.endpoint().trim_start_matches("http://"));

    // The embedded store of a running server is refused.
    refused(&dir, &to_etcd, "in use by another process");
    s.kill9();

    // Killed midway: the server refuses the half-copied store; a rerun replaces it.
    let mut child = migrate_cmd(&dir, &to_etcd, false)
        .stderr(Stdio::piped())
        .spawn()
        .expect("running skiff store migrate");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let first_page = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("copied 100 keys"));
    child.kill().expect("killing skiff store migrate");
    let status = child.wait().expect("skiff store migrate");
    assert!(first_page.is_some() && !status.success(), "{status}");
    let refusal = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["server", "--data-dir", &dir, "--listen", "127.0.0.1:0"])
        .args(["--etcd-endpoints", &etcd.endpoint()])
        .output()
        .expect("running skiff server");
    assert!(!refusal.status.success());
    assert!(
        stderr(&refusal).contains("migration that did not finish"),
        "{}",
        stderr(&refusal)
    );
    let rerun = migrate(&dir, &to_etcd, false);
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    assert!(
        stderr(&rerun).contains("replacing it"),
        "{}",
        stderr(&rerun)
    );

    // The server on etcd (same data directory, so the same CA) serves every object as it was.
    s.set_store(Some(&etcd), true);
    s.spawn();
    assert_eq!(configmaps_in_mig(&s), OBJECTS);
    assert_eq!(identity(&s), before);
    s.kubectl(&["create", "configmap", "-n", "mig", "made-on-etcd"]);

    // Back: refused while the etcd server holds its Leases, and into a store with objects.
    let back = tempfile::tempdir().expect("tempdir");
    let back_dir = back.path().to_str().expect("utf-8 path");
    refused(
        &to_etcd,
        back_dir,
        "is in use by a running server (Lease kube-system/",
    );
    s.kill9();
    // The Leases of the killed server expire within their duration (15s); then the data
    // directory, which still holds the old store, is refused without --force.
    let deadline = Instant::now() + Duration::from_secs(40);
    let out = loop {
        let out = migrate(&to_etcd, &dir, false);
        if !stderr(&out).contains("Lease") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(
        stderr(&out).contains("already holds objects; pass --force"),
        "{}",
        stderr(&out)
    );
    let out = migrate(&to_etcd, &dir, true);
    assert!(out.status.success(), "{}", stderr(&out));
    s.set_store(None, false);
    s.spawn();
    assert_eq!(configmaps_in_mig(&s), OBJECTS);
    assert_eq!(identity(&s), before);
    s.kubectl(&["get", "configmap", "-n", "mig", "made-on-etcd"]);
}
