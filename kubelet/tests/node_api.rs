//! The node API on port 10250 of a real kubelet (with a real `skiff server`, busybox pods):
//! logs with every option and follow, exec with stdin and exit codes over the WebSocket channel
//! protocol, port-forward into the pod, stats; clients without a certificate get 401 and those
//! with a certificate from another CA are refused.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{NODE_IP, Node};
use futures::{SinkExt, StreamExt};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde_json::Value;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const PORT: u16 = 10250;

/// Runs `f` on a thread inside the node's network namespace, on a runtime of its own.
fn in_netns<T: Send, Fut: Future<Output = T>>(node: &Node, f: impl FnOnce() -> Fut + Send) -> T {
    let path = format!("/var/run/netns/{}", node.netns.name);
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let ns = std::fs::File::open(&path).expect("the node's netns");
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(f())
            })
            .join()
            .expect("the client thread")
    })
}

/// Accepts the kubelet's self-signed serving certificate (checking its signatures only).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Who the client is: the cluster's admin, nobody, or someone with a certificate of another CA.
enum Identity {
    Admin,
    Anonymous,
    Stranger,
}

fn client_config(node: &Node, who: Identity) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let data = node.dir.path().join("data");
    let read = |name: &str| data.join(name);
    let config = match who {
        Identity::Anonymous => builder.with_no_client_auth(),
        Identity::Admin => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(read("admin.crt"))
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_file(read("admin.key")).unwrap(),
            )
            .unwrap(),
        Identity::Stranger => {
            let made = rcgen::generate_simple_self_signed(vec!["stranger".to_string()]).unwrap();
            builder
                .with_client_auth_cert(
                    vec![made.cert.der().clone()],
                    PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into()),
                )
                .unwrap()
        }
    };
    Arc::new(config)
}

async fn connect(
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect((NODE_IP, PORT)).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from(NODE_IP).unwrap().to_owned(), tcp)
        .await
}

/// A GET whose answer is read frame by frame.
struct Streamed {
    status: u16,
    body: Incoming,
}

impl Streamed {
    async fn next_chunk(&mut self) -> Option<Vec<u8>> {
        loop {
            let frame = std::future::poll_fn(|cx| Pin::new(&mut self.body).poll_frame(cx)).await?;
            if let Ok(data) = frame.ok()?.into_data() {
                return Some(data.to_vec());
            }
        }
    }

    async fn text(mut self) -> String {
        let mut all = Vec::new();
        while let Some(chunk) = self.next_chunk().await {
            all.extend(chunk);
        }
        String::from_utf8(all).expect("UTF-8 body")
    }
}

async fn get(config: Arc<rustls::ClientConfig>, path: &str) -> anyhow::Result<Streamed> {
    let tls = connect(config).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header("host", NODE_IP)
        .body(String::new())?;
    let response = sender.send_request(request).await?;
    Ok(Streamed {
        status: response.status().as_u16(),
        body: response.into_body(),
    })
}

/// GET as the admin, expecting 200; the whole body.
async fn get_text(node: &Node, path: &str) -> String {
    let r = get(client_config(node, Identity::Admin), path)
        .await
        .unwrap();
    let status = r.status;
    let text = r.text().await;
    assert_eq!(status, 200, "GET {path}: {text}");
    text
}

type Socket = tokio_tungstenite::WebSocketStream<TlsStream<tokio::net::TcpStream>>;

/// A WebSocket to `path` as the admin with the subprotocol `protocol`.
async fn websocket(node: &Node, path: &str, protocol: &str) -> Socket {
    let tls = connect(client_config(node, Identity::Admin)).await.unwrap();
    let mut request = format!("wss://{NODE_IP}:{PORT}{path}")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (socket, response) = tokio_tungstenite::client_async(request, tls)
        .await
        .unwrap_or_else(|e| panic!("websocket {path}: {e}"));
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        protocol,
        "the subprotocol"
    );
    socket
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut out = vec![channel];
    out.extend_from_slice(data);
    Message::Binary(out.into())
}

/// Everything the stream sent, by channel, until it closed.
async fn drain(socket: &mut Socket) -> [Vec<u8>; 4] {
    let mut out: [Vec<u8>; 4] = Default::default();
    let limit = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Some(message)) = tokio::time::timeout_at(limit, socket.next()).await {
        match message {
            Ok(Message::Binary(data)) if !data.is_empty() && data[0] < 4 => {
                out[data[0] as usize].extend_from_slice(&data[1..])
            }
            Ok(Message::Close(_)) | Err(_) => break,
            _ => {}
        }
    }
    out
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or_default()
}

fn restart_count(p: &Value, container: &str) -> i64 {
    p["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == container)
        .and_then(|c| c["restartCount"].as_i64())
        .unwrap_or(0)
}

fn two_container_pod(name: &str, main: &str, second: &str) -> String {
    let main = serde_json::to_string(main).unwrap();
    let second = serde_json::to_string(second).unwrap();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  containers:
  - name: main
    image: busybox
    imagePullPolicy: Never
    command: ["sh", "-c", {main}]
  - name: second
    image: busybox
    imagePullPolicy: Never
    command: ["sh", "-c", {second}]
"#
    )
}

fn tick_numbers(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect()
}

#[test]
fn logs_and_client_certificates() {
    let node = Node::start();
    node.apply(&two_container_pod(
        "logger",
        "echo one; sleep 0.1; echo two >&2; sleep 0.1; head -c 20000 /dev/zero | tr '\\0' x; echo; \
         i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done",
        "echo started-$(cat /proc/sys/kernel/random/uuid); sleep 1; exit 1",
    ));
    node.wait_pod(
        "logger",
        "a restart of `second`",
        Duration::from_secs(60),
        |p| phase(p) == "Running" && restart_count(p, "second") >= 1,
    );
    let logs = "/containerLogs/default/logger";
    in_netns(&node, || async {
        // Who may ask.
        assert_eq!(get_text(&node, "/healthz").await, "ok");
        let anonymous = get(client_config(&node, Identity::Anonymous), "/healthz")
            .await
            .unwrap();
        assert_eq!(anonymous.status, 401);
        let stranger = get(client_config(&node, Identity::Stranger), "/healthz").await;
        assert!(
            stranger.is_err(),
            "a certificate of another CA was accepted"
        );
        let pods: Value = serde_json::from_str(&get_text(&node, "/pods").await).unwrap();
        assert_eq!(pods["kind"], "PodList");
        assert!(
            pods["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["metadata"]["name"] == "logger"),
            "{pods}"
        );

        // The whole log, the long line joined from its pieces.
        let all = get_text(&node, &format!("{logs}/main")).await;
        let long = "x".repeat(20000);
        assert!(
            all.starts_with(&format!("one\ntwo\n{long}\ntick 1\n")),
            "{}",
            &all[..all.len().min(200)]
        );
        let tail = get_text(&node, &format!("{logs}/main?tailLines=2")).await;
        assert_eq!(tick_numbers(&tail).len(), 2, "{tail}");
        assert_eq!(tail.lines().count(), 2, "{tail}");
        let stamped = get_text(&node, &format!("{logs}/main?tailLines=1&timestamps=true")).await;
        let (ts, line) = stamped.trim_end().split_once(' ').unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
            "{stamped}"
        );
        assert!(line.starts_with("tick "), "{stamped}");
        assert_eq!(
            get_text(&node, &format!("{logs}/main?limitBytes=5")).await,
            "one\nt"
        );
        let future = get_text(
            &node,
            &format!("{logs}/main?sinceTime=2999-01-01T00:00:00Z"),
        )
        .await;
        assert_eq!(future, "");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let recent = get_text(&node, &format!("{logs}/main?sinceSeconds=1")).await;
        assert!(
            !recent.contains("one") && !tick_numbers(&recent).is_empty(),
            "{recent}"
        );

        // The previous run of a restarted container; none for one that never restarted.
        let previous = get_text(&node, &format!("{logs}/second?previous=true")).await;
        let current = get_text(&node, &format!("{logs}/second")).await;
        assert!(previous.starts_with("started-"), "{previous}");
        assert_ne!(previous, current);
        let none = get(
            client_config(&node, Identity::Admin),
            &format!("{logs}/main?previous=true"),
        )
        .await
        .unwrap();
        assert_eq!(none.status, 400);
        let missing = get(
            client_config(&node, Identity::Admin),
            &format!("{logs}/nosuch"),
        )
        .await
        .unwrap();
        assert_eq!(missing.status, 404);

        // Follow: the lines written after the request come as they are written.
        let mut follow = get(
            client_config(&node, Identity::Admin),
            &format!("{logs}/main?follow=true&tailLines=1"),
        )
        .await
        .unwrap();
        assert_eq!(follow.status, 200);
        let mut seen = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while tick_numbers(&seen).len() < 5 {
            assert!(Instant::now() < deadline, "follow stalled: {seen}");
            let chunk = tokio::time::timeout(Duration::from_secs(5), follow.next_chunk())
                .await
                .expect("a followed line")
                .expect("the stream stays open");
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        let ticks = tick_numbers(&seen);
        assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{seen}");
    });
}

/// No process whose command line is `args` runs on the machine.
fn process_running(args: &[&str]) -> bool {
    let wanted: Vec<u8> = args
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == wanted))
}

#[test]
fn exec_port_forward_and_stats() {
    let node = Node::start();
    node.apply(&common::busybox_pod(
        "web",
        "Always",
        "mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 8080 -h /www",
        "",
    ));
    node.wait_pod("web", "Running", Duration::from_secs(60), |p| {
        phase(p) == "Running"
    });
    let exec = "/exec/default/web/main";
    in_netns(&node, || async {
        // stdin piped and closed (v5), stdout and stderr apart, the exit code in the status.
        let mut ws = websocket(
            &node,
            &format!("{exec}?command=sh&command=-c&command=cat%3B+echo+err+%3E%262%3B+exit+3&stdin=true&stdout=true&stderr=true"),
            "v5.channel.k8s.io",
        )
        .await;
        ws.send(frame(0, b"piped-")).await.unwrap();
        ws.send(frame(0, b"data")).await.unwrap();
        ws.send(frame(255, &[0])).await.unwrap();
        let [_, out, err, status] = drain(&mut ws).await;
        assert_eq!(String::from_utf8_lossy(&out), "piped-data");
        assert_eq!(String::from_utf8_lossy(&err), "err\n");
        let status: Value = serde_json::from_slice(&status).unwrap();
        assert_eq!(status["status"], "Failure", "{status}");
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "3");

        // v4, success.
        let mut ws = websocket(
            &node,
            &format!("{exec}?command=echo&command=hi&stdout=1"),
            "v4.channel.k8s.io",
        )
        .await;
        let [_, out, _, status] = drain(&mut ws).await;
        assert_eq!(String::from_utf8_lossy(&out), "hi\n");
        assert_eq!(
            serde_json::from_slice::<Value>(&status).unwrap()["status"],
            "Success"
        );

        // A terminal: the command's stdio is a pty, resized from channel 4.
        let mut ws = websocket(
            &node,
            &format!("{exec}?command=sh&command=-c&command=read+x%3B+%5B+-t+0+%5D+%26%26+echo+is-a-tty%3B+stty+size&stdin=1&stdout=1&tty=1"),
            "v5.channel.k8s.io",
        )
        .await;
        ws.send(frame(4, br#"{"Width":91,"Height":17}"#))
            .await
            .unwrap();
        ws.send(frame(0, b"go\n")).await.unwrap();
        let [_, out, _, status] = drain(&mut ws).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains("is-a-tty") && out.contains("17 91"), "{out}");
        assert_eq!(
            serde_json::from_slice::<Value>(&status).unwrap()["status"],
            "Success"
        );

        // A client that goes away takes its command with it.
        let ws = websocket(
            &node,
            &format!("{exec}?command=sleep&command=4321&stdout=1"),
            "v5.channel.k8s.io",
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !process_running(&["sleep", "4321"]) {
            assert!(Instant::now() < deadline, "the exec'd sleep never ran");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(ws);
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_running(&["sleep", "4321"]) {
            assert!(
                Instant::now() < deadline,
                "the exec'd sleep outlived its client"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Port-forward an HTTP request to the pod's httpd.
        let mut ws = websocket(
            &node,
            "/portForward/default/web?ports=8080",
            "v4.channel.k8s.io",
        )
        .await;
        ws.send(frame(0, b"GET /index.html HTTP/1.0\r\n\r\n"))
            .await
            .unwrap();
        let [data, error, ..] = drain(&mut ws).await;
        assert_eq!(
            &error,
            &8080u16.to_le_bytes(),
            "only the port on the error channel"
        );
        let data = String::from_utf8_lossy(&data[2..]).into_owned();
        assert!(
            data.starts_with("HTTP/1.") && data.contains("hello-from-pod"),
            "{data}"
        );

        // The pod's usage.
        let summary: Value =
            serde_json::from_str(&get_text(&node, "/stats/summary").await).unwrap();
        assert!(
            summary["node"]["memory"]["workingSetBytes"].as_u64() > Some(0),
            "{summary}"
        );
        let pod = summary["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["podRef"]["name"] == "web")
            .unwrap_or_else(|| panic!("no pod web: {summary}"));
        assert!(pod["memory"]["workingSetBytes"].as_u64() > Some(0), "{pod}");
        assert!(
            pod["containers"][0]["memory"]["usageBytes"].as_u64() > Some(0),
            "{pod}"
        );
        assert!(
            pod["containers"][0]["cpu"]["usageCoreNanoSeconds"].as_u64() > Some(0),
            "{pod}"
        );
        let metrics = get_text(&node, "/metrics/resource").await;
        assert!(
            metrics.contains(r#"container_memory_working_set_bytes{container="main",namespace="default",pod="web"}"#)
                && metrics.contains("node_cpu_usage_seconds_total "),
            "{metrics}"
        );
    });
}
