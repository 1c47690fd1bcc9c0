//! The API server against a client with ordinary credentials trying to take it down: patches
//! that amplify, bodies past the limits, half-open TLS connections and a flood of requests. The
//! server refuses each, stays up with its memory flat, and keeps serving everyone else.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Server, path_str};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

fn open_fds(s: &Server) -> usize {
    let pid = s.pid().expect("the server runs");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count()
}

/// The patch of the issue: a 1000-character string in a list, then the list copied into itself
/// 52 times (each copy doubles the document).
fn doubling_patch() -> String {
    let mut ops =
        vec![serde_json::json!({"op": "add", "path": "/data/t", "value": ["x".repeat(1000)]})];
    ops.extend(
        (0..52).map(|_| serde_json::json!({"op": "copy", "from": "/data/t", "path": "/data/t/-"})),
    );
    serde_json::Value::Array(ops).to_string()
}

#[test]
fn amplifying_patches_and_oversized_bodies_are_refused_with_memory_flat() {
    let s = Server::start();
    s.kubectl(&["create", "configmap", "t", "--from-literal=k=v"]);
    let patch = doubling_patch();
    assert!(patch.len() < 4096, "the attack is a small request");
    let patch_file = s.write("doubling.json", &patch);
    // Warm up the paths the attack takes before the baseline.
    s.kubectl(&["get", "configmap", "t"]);
    let before = s.rss_kib();
    for _ in 0..3 {
        let err = s.kubectl_err(
            &[
                "patch",
                "configmap",
                "t",
                "--type=json",
                "--patch-file",
                path_str(&patch_file),
            ],
            None,
        );
        assert!(err.contains("Request entity too large"), "{err}");
        assert!(err.contains("exceed 3145728 bytes"), "{err}");
    }
    // Its merge and strategic cousins: a body past 3 MiB is refused before it is decoded.
    let big = format!(r#"{{"data":{{"t":"{}"}}}}"#, "x".repeat(4 << 20));
    let big_file = s.write("big-patch.json", &big);
    for ty in ["merge", "strategic"] {
        let err = s.kubectl_err(
            &[
                "patch",
                "configmap",
                "t",
                "--type",
                ty,
                "--patch-file",
                path_str(&big_file),
            ],
            None,
        );
        assert!(err.contains("limit is 3145728"), "{ty}: {err}");
    }
    // Under the body limit, over the stored-object limit (etcd's 1.5 MiB).
    let obj = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: huge\ndata:\n  k: {}\n",
        "x".repeat(2 << 20)
    );
    let err = s.kubectl_err(&["create", "-f", "-"], Some(&obj));
    assert!(err.contains("more than the limit of 1572864"), "{err}");
    let after = s.rss_kib();
    assert!(
        after < before + 64 * 1024,
        "server memory grew from {before} KiB to {after} KiB"
    );
    // Alive and unchanged.
    let data = s.kubectl(&["get", "configmap", "t", "-o", "jsonpath={.data}"]);
    assert_eq!(data, r#"{"k":"v"}"#);
}

#[test]
fn half_open_tls_connections_are_closed_by_the_handshake_timeout() {
    // This side holds the 2,000 sockets too.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("open-file limit");
    assert!(
        hard > 4096,
        "the test needs an open-file hard limit above 4096, not {hard}"
    );
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raising the open-file limit");
    let s = Server::start_with(&["--tls-handshake-timeout", "1s"]);
    let baseline = open_fds(&s);
    // 2,000 connections that never finish a handshake: half send nothing, half a ClientHello's
    // first bytes. (The server lifts its soft open-file limit to the hard one at start.)
    let conns: Vec<TcpStream> = (0..2000)
        .map(|i| {
            let mut c = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
            if i % 2 == 1 {
                c.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
                    .expect("partial ClientHello");
            }
            c
        })
        .collect();
    // kubectl is served meanwhile.
    s.kubectl(&["get", "namespaces"]);
    for (i, mut c) in conns.into_iter().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        let mut buf = [0u8; 256];
        loop {
            match c.read(&mut buf) {
                // A TLS alert may come before the close.
                Ok(n) if n > 0 => continue,
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("connection {i} was not closed by the server: {e}"),
            }
        }
    }
    s.kubectl(&["get", "namespaces"]);
    let fds = open_fds(&s);
    assert!(
        fds < baseline + 20,
        "the server holds {fds} descriptors, {baseline} before"
    );
}

#[test]
fn connections_that_send_no_request_are_closed_by_the_header_timeout() {
    use std::process::{Command, Stdio};
    common::require(
        "openssl",
        &["version"],
        "the openssl command, Debian package openssl",
    );
    let s = Server::start_with(&["--request-header-timeout", "1s"]);
    let pki = |f: &str| s.data_dir().join(f).to_string_lossy().into_owned();
    let address = format!("127.0.0.1:{}", s.port);
    // Nothing, or part of a request, after a complete handshake (with a client certificate).
    let stalls = [
        ("http/1.1", ""),
        ("http/1.1", "GET /healthz HTTP/1.1\r\nHost: x\r\n"),
        ("h2", ""),
        ("h2", "PRI * HTTP/2.0\r\n"),
    ];
    let mut clients: Vec<_> = stalls
        .iter()
        .map(|(alpn, sent)| {
            let mut c = Command::new("openssl")
                .args(["s_client", "-quiet", "-connect", &address, "-alpn", alpn])
                .args(["-cert", &pki("admin.crt"), "-key", &pki("admin.key")])
                .args(["-CAfile", &pki("ca.crt")])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("openssl s_client");
            let mut stdin = c.stdin.take().expect("stdin");
            stdin.write_all(sent.as_bytes()).expect("writing");
            // stdin stays open: the client never finishes.
            (c, stdin)
        })
        .collect();
    s.kubectl(&["get", "namespaces"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for ((c, _stdin), (alpn, sent)) in clients.iter_mut().zip(stalls) {
        while c.try_wait().expect("s_client status").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = c.kill();
                panic!("a {alpn} connection that sent {sent:?} was not closed");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    s.kubectl(&["get", "namespaces"]);
}

/// A client that reports each 429 instead of retrying it.
async fn client(path: &std::path::Path) -> Client {
    let kc = Kubeconfig::read_from(path).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    cfg.default_retry = false;
    Client::try_from(cfg).unwrap()
}

fn configmap(name: String) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name),
            ..Default::default()
        },
        data: Some([("k".to_string(), "v".to_string())].into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_user_gets_429_while_another_keeps_working() {
    let s = Server::start_with(&["--max-mutating-requests-inflight", "4"]);
    let flooder: Api<ConfigMap> =
        // An administrator too: what limits it is its own fair share, not RBAC.
        Api::namespaced(
            client(&s.user_kubeconfig("flooder", &["system:masters"])).await,
            "default",
        );
    let admin: Api<ConfigMap> = Api::namespaced(client(&s.kubeconfig()).await, "default");
    let stop = Arc::new(AtomicBool::new(false));
    let (created, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let flood: Vec<_> = (0..32)
        .map(|t| {
            let (api, stop) = (flooder.clone(), stop.clone());
            let (created, refused) = (created.clone(), refused.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    match api
                        .create(&PostParams::default(), &configmap(format!("f-{t}-{i}")))
                        .await
                    {
                        Ok(_) => created.fetch_add(1, Ordering::Relaxed),
                        Err(kube::Error::Api(e)) if e.code == 429 => {
                            refused.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => panic!("flooder: {e}"),
                    };
                }
            })
        })
        .collect();
    // Let the flood fill the pool first (a flood task that failed ends the wait too).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while created.load(Ordering::Relaxed) < 20 {
        assert!(
            std::time::Instant::now() < deadline && flood.iter().all(|f| !f.is_finished()),
            "the flood made fewer than 20 ConfigMaps"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..20 {
        admin
            .create(&PostParams::default(), &configmap(format!("admin-{i}")))
            .await
            .unwrap_or_else(|e| panic!("the other user's create {i} failed: {e}"));
    }
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    let refused = refused.load(Ordering::Relaxed);
    assert!(refused > 0, "the flood was never told to back off");
    eprintln!(
        "flood: {} created, {refused} refused with 429",
        created.load(Ordering::Relaxed)
    );
}
