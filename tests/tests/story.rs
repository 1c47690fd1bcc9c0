//! The end-to-end story a new user lives through, with kubectl 1.32 against a real cluster:
//!
//! - (a) a Deployment of 3 busybox httpd serving their hostname behind a NodePort Service, all
//!   Ready; a client pod's requests by DNS name and by ClusterIP reach all 3; the NodePort
//!   answers on the node's address;
//! - (b) `kubectl scale` to 6 and back to 2; `kubectl set image` to a second tag and `kubectl
//!   rollout undo` with not one request failing through the Service meanwhile (a readiness probe
//!   and a preStop sleep, as a user writes them; a loop in the client pod counts failures);
//! - (c) `kubectl logs -f`, `exec`, `port-forward`, `top pods`;
//! - (d) a crashing pod shows CrashLoopBackOff with restarts, a pod of an unknown image
//!   ImagePullBackOff, and the web pods are untouched by either;
//! - (e) a user bound only to `view` reads and watches, and is refused changes (403);
//!
//! and the examples/ manifests pass the server's validation (`kubectl apply --dry-run=server`).
//!
//! The cluster is `skiff up` in a throwaway network namespace (one node); the story reaches it
//! only through [`StoryCluster`] (kubectl, a shell where the nodes' addresses answer, the nodes'
//! addresses), so a multi-node `skiff cluster` can take its place. Each step is named in the
//! failure it raises.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_tests::up::*;
use skiff_tests::*;

/// What the story needs of a cluster.
trait StoryCluster {
    /// A command where kubectl reaches the API server (KUBECONFIG set) and the nodes' addresses
    /// answer.
    fn command(&self, program: &str) -> Command;
    /// The nodes' InternalIPs.
    fn node_ips(&self) -> Vec<String>;
    /// The cluster's log, for failures.
    fn log(&self) -> String;
}

impl StoryCluster for UpCluster<'_> {
    fn command(&self, program: &str) -> Command {
        UpCluster::command(self, program)
    }
    fn node_ips(&self) -> Vec<String> {
        vec![Netns::ADDRESS.to_string()]
    }
    fn log(&self) -> String {
        UpCluster::log(self, "skiff.log")
    }
}

const CGROUP_ROOT_PREFIX: &str = "/ske-story";
const NODE_PORT: u16 = 30080;

const WEB: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  strategy:
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: httpd
        image: busybox:latest
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
        ports:
        - containerPort: 80
        readinessProbe:
          httpGet: {path: /, port: 80}
          periodSeconds: 1
        lifecycle:
          # Served while the Service's rules drop this pod, as a user writes it.
          preStop:
            exec: {command: ["sleep", "3"]}
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 80, nodePort: 30080}
"#;

/// Prints a line a second, for `kubectl logs -f`; requests are sent from it with `exec`.
const CLIENT: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); usleep 300000; done"]
"#;

const BROKEN: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: crasher
spec:
  containers:
  - name: crasher
    image: busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo about to fail; exit 3"]
---
apiVersion: v1
kind: Pod
metadata:
  name: no-such-image
spec:
  containers:
  - name: app
    # A registry on the node's own loopback where nothing listens: the pull fails at once and
    # no packet leaves the namespace.
    image: 127.0.0.1:1/no/such-image:1
"#;

/// Runs one step of the story; a failure names the step.
fn step<T>(name: &str, f: impl FnOnce() -> T) -> T {
    eprintln!("story: {name}");
    let started = Instant::now();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => {
            eprintln!("story: {name}: done in {:.1?}", started.elapsed());
            v
        }
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("story step `{name}` failed: {msg}")
        }
    }
}

struct Story<'a> {
    cluster: &'a dyn StoryCluster,
}

impl Story<'_> {
    /// kubectl's success and its stdout and stderr.
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        use std::io::Write;
        let mut child = self
            .cluster
            .command("kubectl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).expect("kubectl stdin");
        }
        drop(input);
        let out = child.wait_with_output().expect("kubectl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// kubectl's stdout; fails naming the command unless it succeeds.
    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.kubectl(args, None);
        assert!(
            ok,
            "kubectl {} failed:\n{text}\ncluster log:\n{}",
            args.join(" "),
            tail(&self.cluster.log(), 60)
        );
        text
    }

    fn apply(&self, manifest: &str) {
        let (ok, text) = self.kubectl(&["apply", "-f", "-"], Some(manifest));
        assert!(ok, "kubectl apply failed:\n{text}");
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("kubectl JSON")
    }

    /// Polls `f` until it gives a value; on timeout fails with what it saw last and the
    /// cluster's log.
    fn wait_for<T>(
        &self,
        what: &str,
        limit: Duration,
        mut f: impl FnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            match f() {
                Ok(v) => return v,
                Err(seen) => assert!(
                    Instant::now() < deadline,
                    "timed out after {limit:?} waiting for {what}; last seen:\n{seen}\ncluster log:\n{}",
                    tail(&self.cluster.log(), 40)
                ),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn wait(&self, what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
        self.wait_for(what, limit, || f().then_some(()).ok_or_else(String::new));
    }

    /// The web pods once there are exactly `count`, all Ready and none terminating, running
    /// `image`: their (name, uid, restarts).
    fn web_pods(&self, count: usize, image: &str) -> Option<Vec<(String, String, i64)>> {
        let list = self.json(&["pods", "-l", "app=web"]);
        let items = list["items"].as_array()?;
        let fit = |p: &Value| {
            p["metadata"]["deletionTimestamp"].is_null()
                && p["spec"]["containers"][0]["image"] == image
                && p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
        };
        (items.len() == count && items.iter().all(fit)).then(|| {
            let mut pods: Vec<_> = items
                .iter()
                .map(|p| {
                    (
                        p["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        p["metadata"]["uid"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        p["status"]["containerStatuses"][0]["restartCount"]
                            .as_i64()
                            .unwrap_or(-1),
                    )
                })
                .collect();
            pods.sort();
            pods
        })
    }

    fn wait_web(&self, count: usize, image: &str) -> Vec<(String, String, i64)> {
        self.wait_for(
            &format!("{count} Ready web pods of {image} (and no others)"),
            Duration::from_secs(90),
            || {
                self.web_pods(count, image).ok_or_else(|| {
                    self.kubectl(&["get", "pods", "-l", "app=web", "-o", "wide"], None)
                        .1
                })
            },
        )
    }

    /// The answers of `n` requests to `url` sent from the client pod, one line each (`FAIL`
    /// for a failed one). `timeout` bounds each: Debian's busybox wget has no `-T` (it crashes on
    /// it).
    fn requests_from_client(&self, url: &str, n: usize) -> Vec<String> {
        let script =
            format!("for i in $(seq {n}); do timeout 3 wget -qO- {url} || echo FAIL; done");
        self.ok(&["exec", "client", "--", "sh", "-c", &script])
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn service_ip(&self) -> String {
        self.ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"])
    }
}

/// A child's stdout lines, read on a thread.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits up to `limit` for a line that `f` accepts; all lines seen.
fn wait_line(
    rx: &mpsc::Receiver<String>,
    limit: Duration,
    f: impl Fn(&str) -> bool,
) -> (bool, Vec<String>) {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = f(&line);
                seen.push(line);
                if hit {
                    return (true, seen);
                }
            }
            Err(_) => break,
        }
    }
    (false, seen)
}

/// Kills a child on every path out of a step.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_story_of_a_web_app() {
    require_root();
    require("busybox", &["true"], "Debian package busybox-static");
    require("kubectl", &["version", "--client"], "kubectl 1.32 on PATH");
    require("curl", &["--version"], "Debian package curl");
    require("iptables-save", &["--version"], "Debian package iptables");
    let skiff = binary("skiff");
    binary("skiff-runc");
    binary("skiff-shim");
    let netns = Netns::new();
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path();
    let cgroup_root = format!("{CGROUP_ROOT_PREFIX}-{}", std::process::id());
    let up = UpCluster { netns: &netns, dir };
    let _guard = NodeLeftoversGuard {
        netns: &netns,
        dir: dir.to_path_buf(),
        run_dir: up.data().join("run"),
        cgroup_root: cgroup_root.clone(),
    };
    let story = Story { cluster: &up };

    let mut node = step(
        "the cluster starts with busybox:latest and busybox:v2 loaded",
        || {
            for tag in ["latest", "v2"] {
                let tar = format!("busybox-{tag}.tar");
                for args in [
                    vec![
                        "image",
                        "build-busybox",
                        "-o",
                        &tar,
                        &format!("busybox:{tag}"),
                    ],
                    vec!["image", "import", "--data-dir", "skiff-data", &tar],
                ] {
                    let out = up
                        .command(&skiff)
                        .args(&args)
                        .output()
                        .expect("skiff image");
                    assert!(
                        out.status.success(),
                        "skiff {}: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            let child = up
                .command(&skiff)
                .args([
                    "up",
                    "--data-dir",
                    "skiff-data",
                    "--cgroup-root",
                    &cgroup_root,
                    // The story is not about eviction: a shared machine's disk may well be
                    // under the default 10% free, which would reject every pod (DiskPressure).
                    "--kubelet-arg=--eviction-hard=memory.available<100Mi,nodefs.available<1Gi",
                ])
                .stdout(std::fs::File::create(dir.join("skiff.out")).expect("stdout file"))
                .stderr(std::fs::File::create(dir.join("skiff.log")).expect("log file"))
                .spawn()
                .expect("starting skiff up");
            let node = KillOnDrop(child);
            story.wait("the node to be Ready", Duration::from_secs(60), || {
                story
                    .kubectl(
                        &[
                            "wait",
                            "--for=condition=Ready",
                            "node",
                            "--all",
                            "--timeout=5s",
                        ],
                        None,
                    )
                    .0
            });
            node
        },
    );

    step(
        "examples/ pass the server's validation (before the story makes its own objects)",
        || {
            let examples = workspace_dir().join("examples");
            story.ok(&[
                "apply",
                "--dry-run=server",
                "-f",
                examples.to_str().expect("path"),
            ]);
        },
    );

    let web = step("(a) 3 web pods Ready behind a NodePort Service", || {
        story.apply(WEB);
        story.apply(CLIENT);
        story.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
        let pods = story.wait_web(3, "busybox:latest");
        story.ok(&[
            "wait",
            "--for=condition=Ready",
            "pod/client",
            "--timeout=60s",
        ]);
        pods
    });
    let names: std::collections::BTreeSet<String> = web.iter().map(|p| p.0.clone()).collect();

    step(
        "(a) requests by DNS name and ClusterIP reach all 3 backends",
        || {
            let ip = story.service_ip();
            for url in [
                "http://web/",
                "http://web.default.svc.cluster.local/",
                &format!("http://{ip}/"),
            ] {
                let answers = story.requests_from_client(url, 30);
                let seen: std::collections::BTreeSet<String> = answers.iter().cloned().collect();
                assert_eq!(
                    seen, names,
                    "30 requests to {url} from the client pod:\n{answers:?}"
                );
            }
        },
    );

    step("(a) the NodePort answers on every node's address", || {
        for ip in story.cluster.node_ips() {
            let url = format!("http://{ip}:{NODE_PORT}/");
            let out = story
                .cluster
                .command("curl")
                .args([
                    "-s",
                    "--max-time",
                    "3",
                    "--retry",
                    "3",
                    "--retry-all-errors",
                    &url,
                ])
                .output()
                .expect("curl");
            let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert!(
                names.contains(&answer),
                "curl {url} answered {answer:?}, not a web pod"
            );
        }
    });

    step("(b) kubectl scale to 6 and back to 2", || {
        story.ok(&["scale", "deployment/web", "--replicas=6"]);
        story.wait_web(6, "busybox:latest");
        story.ok(&["scale", "deployment/web", "--replicas=2"]);
        story.wait_web(2, "busybox:latest");
    });

    step(
        "(b) set image and rollout undo with no request failing",
        || {
            let ip = story.service_ip();
            // Sends requests until /tmp/stop exists, then prints the counts.
            let script = format!(
                "rm -f /tmp/stop; ok=0; failed=0; \
             while [ ! -e /tmp/stop ]; do \
               if timeout 3 wget -qO /dev/null http://{ip}/; then ok=$((ok+1)); \
               else failed=$((failed+1)); echo \"failed at $(date +%T)\"; fi; usleep 20000; \
             done; echo \"ok=$ok failed=$failed\""
            );
            let mut looping = KillOnDrop(
                story
                    .cluster
                    .command("kubectl")
                    .args(["exec", "client", "--", "sh", "-c", &script])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .expect("kubectl exec"),
            );
            let lines = lines_of(&mut looping.0);
            story.ok(&["set", "image", "deployment/web", "httpd=busybox:v2"]);
            story.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
            story.wait_web(2, "busybox:v2");
            story.ok(&["rollout", "undo", "deployment/web"]);
            story.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
            story.wait_web(2, "busybox:latest");
            story.ok(&["exec", "client", "--", "touch", "/tmp/stop"]);
            let (done, seen) = wait_line(&lines, Duration::from_secs(15), |l| l.starts_with("ok="));
            assert!(done, "the request loop did not report: {seen:?}");
            let last = seen.last().expect("a line");
            let counts: Vec<u64> = last
                .split(' ')
                .filter_map(|kv| kv.split_once('=').and_then(|(_, v)| v.parse().ok()))
                .collect();
            assert!(
                counts.len() == 2 && counts[0] > 50 && counts[1] == 0,
                "requests through the Service during the rollout and its undo: {seen:?}"
            );
        },
    );

    let web = story.wait_web(2, "busybox:latest");
    story.apply(BROKEN);

    step("(c) kubectl logs -f follows the client's output", || {
        let mut follow = KillOnDrop(
            story
                .cluster
                .command("kubectl")
                .args(["logs", "-f", "client"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("kubectl logs -f"),
        );
        let lines = lines_of(&mut follow.0);
        let tick = |l: &str| l.strip_prefix("tick ").and_then(|n| n.parse::<u64>().ok());
        let (_, first) = wait_line(&lines, Duration::from_secs(10), |l| tick(l).is_some());
        let start = first.iter().filter_map(|l| tick(l)).max();
        assert!(
            start.is_some(),
            "kubectl logs -f printed no tick: {first:?}"
        );
        // Lines written after kubectl started arrive while it runs.
        let (later, seen) = wait_line(&lines, Duration::from_secs(10), |l| {
            tick(l).is_some_and(|n| n >= start.unwrap_or(0) + 3)
        });
        assert!(
            later,
            "kubectl logs -f stopped following after tick {start:?}: {seen:?}"
        );
    });

    step("(c) kubectl exec", || {
        assert_eq!(
            story.ok(&["exec", "client", "--", "hostname"]).trim(),
            "client"
        );
        let (ok, text) = story.kubectl(&["exec", "client", "--", "sh", "-c", "exit 7"], None);
        assert!(!ok && text.contains("exit code 7"), "{text}");
    });

    step("(c) kubectl port-forward", || {
        let pod = &web[0].0;
        let mut forward = KillOnDrop(
            story
                .cluster
                .command("kubectl")
                .args(["port-forward", &format!("pod/{pod}"), "18080:80"])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("kubectl port-forward"),
        );
        let lines = lines_of(&mut forward.0);
        let (listening, seen) = wait_line(&lines, Duration::from_secs(15), |l| {
            l.contains("Forwarding from")
        });
        assert!(listening, "kubectl port-forward did not listen: {seen:?}");
        let out = story
            .cluster
            .command("curl")
            .args(["-s", "--max-time", "5", "http://127.0.0.1:18080/"])
            .output()
            .expect("curl");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            pod,
            "through the forward"
        );
    });

    step("(c) kubectl top pods", || {
        let text = story.wait_for(
            "kubectl top pods to list the web pods",
            Duration::from_secs(60),
            || {
                let (ok, text) = story.kubectl(&["top", "pods", "-l", "app=web"], None);
                if ok && web.iter().all(|p| text.contains(&p.0)) {
                    Ok(text)
                } else {
                    Err(text)
                }
            },
        );
        assert!(
            text.contains("CPU(cores)") && text.contains("MEMORY(bytes)"),
            "{text}"
        );
    });

    step(
        "(d) CrashLoopBackOff and ImagePullBackOff, the rest untouched",
        || {
            let text = story.wait_for(
                "crasher in CrashLoopBackOff after a restart, no-such-image in ImagePullBackOff",
                Duration::from_secs(60),
                || {
                    let text =
                        story.ok(&["get", "pods", "crasher", "no-such-image", "--no-headers"]);
                    let row = |name: &str| -> Vec<String> {
                        text.lines()
                            .find(|l| l.starts_with(&format!("{name} ")))
                            .map(|l| l.split_whitespace().map(str::to_string).collect())
                            .unwrap_or_default()
                    };
                    let crasher = row("crasher");
                    let image = row("no-such-image");
                    let shown = crasher.get(2).is_some_and(|s| s == "CrashLoopBackOff")
                        && crasher
                            .get(3)
                            .and_then(|r| r.parse::<u32>().ok())
                            .is_some_and(|r| r >= 1)
                        && image.get(2).is_some_and(|s| s == "ImagePullBackOff");
                    if shown { Ok(text) } else { Err(text) }
                },
            );
            let logs = story.ok(&["logs", "crasher", "--previous"]);
            assert!(logs.contains("about to fail"), "{logs}");
            let now = story.web_pods(2, "busybox:latest");
            assert_eq!(now.as_ref(), Some(&web), "the web pods changed:\n{text}");
            let answers = story.requests_from_client("http://web/", 10);
            assert!(
                answers.iter().all(|a| web.iter().any(|p| &p.0 == a)),
                "the Service still answers from the web pods: {answers:?}"
            );
        },
    );

    step(
        "(e) a user bound to view reads and watches and changes nothing",
        || {
            let server = up.data().join("server");
            let out = up
                .command(&skiff)
                .args([
                    "kubeconfig",
                    "--user",
                    "viewer",
                    "-o",
                    "viewer.kubeconfig",
                    "--data-dir",
                ])
                .arg(&server)
                .output()
                .expect("skiff kubeconfig");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            story.ok(&[
                "create",
                "clusterrolebinding",
                "viewer-view",
                "--clusterrole=view",
                "--user=viewer",
            ]);
            let viewer = dir.join("viewer.kubeconfig");
            let viewer = viewer.to_str().expect("path");
            let pods = story.ok(&["--kubeconfig", viewer, "get", "pods", "-l", "app=web"]);
            assert!(web.iter().all(|p| pods.contains(&p.0)), "{pods}");
            let mut watch = KillOnDrop(
                story
                    .cluster
                    .command("kubectl")
                    .args(["--kubeconfig", viewer, "get", "deployments", "--watch"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .expect("kubectl get --watch"),
            );
            let lines = lines_of(&mut watch.0);
            let (listed, seen) =
                wait_line(&lines, Duration::from_secs(15), |l| l.starts_with("web "));
            assert!(listed, "the viewer's watch: {seen:?}");
            // A change made by the admin reaches the viewer's watch.
            story.ok(&["scale", "deployment/web", "--replicas=3"]);
            let (changed, seen) = wait_line(&lines, Duration::from_secs(15), |l| {
                l.starts_with("web ")
                    && l.split_whitespace()
                        .nth(1)
                        .is_some_and(|r| r.ends_with("/3"))
            });
            assert!(changed, "the viewer's watch shows the scale to 3: {seen:?}");
            for change in [
                &["scale", "deployment/web", "--replicas=1"][..],
                &["delete", "pod", &web[0].0][..],
                &["label", "service", "web", "owner=viewer"][..],
                &["create", "configmap", "mine", "--from-literal=a=b"][..],
            ] {
                let mut args = vec!["--kubeconfig", viewer];
                args.extend_from_slice(change);
                let (ok, text) = story.kubectl(&args, None);
                assert!(
                    !ok && text.contains("forbidden: User \"viewer\" cannot"),
                    "kubectl {}: the viewer must be refused with 403:\n{text}",
                    change.join(" ")
                );
            }
        },
    );

    step("skiff up stops cleanly on SIGINT", || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(node.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("SIGINT");
        assert_eq!(
            wait_child(&mut node.0, Duration::from_secs(60)),
            Some(true),
            "skiff up did not stop cleanly:\n{}",
            tail(&story.cluster.log(), 60)
        );
    });
}
