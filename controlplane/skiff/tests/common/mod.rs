//! Test harness: starts the real `skiff server` binary on a free loopback port in a temporary
//! data directory and drives it with the real `kubectl` (and the Python client).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use skiff_store::test_etcd::TestEtcd;

pub struct Server {
    pub dir: tempfile::TempDir,
    /// The loopback address it listens on (servers of one cluster each take their own, on one
    /// port, as the `kubernetes` Service's endpoints need).
    pub host: String,
    pub port: u16,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// Whether the scheduler and controllers run inside the server (API-only tests leave them out).
    components: bool,
    /// The etcd the server keeps its objects in, if not its embedded store.
    etcd: Option<TestEtcd>,
}

/// Whether servers keep their objects in etcd: `SKIFF_TEST_STORE=etcd` runs tests written for
/// the embedded store on etcd (each server its own etcd from Debian's etcd-server).
fn etcd_by_default() -> bool {
    std::env::var("SKIFF_TEST_STORE").is_ok_and(|v| v == "etcd")
}

/// Fails the test with a clear message when a tool the test needs is missing.
pub fn require(tool: &str, probe: &[&str], hint: &str) {
    let ok = Command::new(tool)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "this test needs `{tool}` ({hint}); it is missing or does not run"
    );
}

impl Server {
    /// The API server alone.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// The API server with its scheduler and controllers.
    pub fn start_cluster() -> Self {
        Self::launch(&[], true)
    }

    /// The API server with its scheduler and controllers, and extra flags.
    pub fn start_cluster_with(extra: &[&str]) -> Self {
        Self::launch(extra, true)
    }

    pub fn start_with(extra: &[&str]) -> Self {
        Self::launch(extra, false)
    }

    /// The API server alone on its embedded store whatever `SKIFF_TEST_STORE` says: for tests
    /// of the store file itself.
    pub fn start_embedded_with(extra: &[&str]) -> Self {
        Self::launch_on(extra, false, 0)
    }

    /// The API server alone, keeping its objects in a fresh etcd.
    pub fn start_on_etcd(extra: &[&str]) -> Self {
        Self::launch_on(extra, false, 1)
    }

    /// The API server alone, keeping its objects in a fresh etcd cluster of `members`
    /// (every member's client URL given to the server).
    pub fn start_on_etcd_cluster(members: usize) -> Self {
        Self::launch_on(&[], false, members)
    }

    /// The API server (with its scheduler and controllers when `components`), keeping its
    /// objects in a fresh etcd, listening on `host`.
    pub fn start_on_etcd_at(host: &str, extra: &[&str], components: bool) -> Self {
        let mut s = Self::prepare(extra, components, 1);
        s.host = host.to_string();
        s.spawn();
        s
    }

    /// A second server on this server's etcd, on the same port and flags (on 127.0.0.1 its
    /// own port). It starts from an empty data directory: it takes the cluster CA and
    /// service-account key from etcd, where the first server put them.
    pub fn start_peer(&self) -> Self {
        self.start_peer_at(&self.host)
    }

    /// As [`Server::start_peer`], listening on `host`.
    pub fn start_peer_at(&self, host: &str) -> Self {
        assert!(self.etcd.is_some(), "a server started on etcd");
        let mut s = Server {
            dir: tempfile::tempdir().expect("temporary directory"),
            host: host.to_string(),
            port: if host == self.host { 0 } else { self.port },
            child: None,
            extra_args: self.extra_args.clone(),
            components: self.components,
            etcd: None,
        };
        s.spawn();
        s
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("https://{}:{}", self.host, self.port)
    }

    fn launch(extra: &[&str], components: bool) -> Self {
        Self::launch_on(extra, components, usize::from(etcd_by_default()))
    }

    /// `etcd_members`: 0 for the embedded store, else the size of the etcd cluster to start.
    fn launch_on(extra: &[&str], components: bool, etcd_members: usize) -> Self {
        let mut s = Self::prepare(extra, components, etcd_members);
        s.spawn();
        s
    }

    fn prepare(extra: &[&str], components: bool, etcd_members: usize) -> Self {
        require("kubectl", &["version", "--client"], "kubectl 1.32 on PATH");
        let dir = tempfile::tempdir().expect("temporary directory");
        let etcd = (etcd_members > 0).then(|| TestEtcd::cluster(etcd_members));
        let mut extra_args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(e) = &etcd {
            extra_args.extend(["--etcd-endpoints".to_string(), e.endpoints().join(",")]);
        }
        Server {
            dir,
            host: "127.0.0.1".to_string(),
            // 0 on first start: the server picks a free port and names it in the kubeconfig;
            // restarts reuse it.
            port: 0,
            child: None,
            extra_args,
            components,
            etcd,
        }
    }

    /// Issues a kubeconfig for `user` in `groups` with `skiff kubeconfig`.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> PathBuf {
        let path = self.dir.path().join(format!("{user}.kubeconfig"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
        cmd.args(["kubeconfig", "--data-dir", path_str(&self.data_dir())])
            .args(["--user", user, "--output", path_str(&path)]);
        for g in groups {
            cmd.args(["--group", g]);
        }
        let out = cmd.output().expect("running skiff kubeconfig");
        assert!(
            out.status.success(),
            "skiff kubeconfig: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir().join("admin.kubeconfig")
    }

    /// (Re)starts the server process on the same port and data directory and waits until it
    /// answers.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("server log");
        let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .arg("server")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(format!("{}:{}", self.host, self.port))
            .args(&self.extra_args)
            .args(if self.components {
                &[][..]
            } else {
                &["--disable-scheduler", "--disable-controllers"][..]
            })
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting skiff server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(port) = self.kubeconfig_port() {
                let out = self.kubectl_output(&["get", "--raw", "/readyz", "--request-timeout=5s"]);
                if out.status.success() {
                    self.port = port;
                    return;
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("skiff server exited with {status}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "skiff server did not become ready; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port the kubeconfig names, once the server has written it for this start.
    fn kubeconfig_port(&self) -> Option<u16> {
        let kc = std::fs::read_to_string(self.kubeconfig()).ok()?;
        let prefix = format!("server: https://{}:", self.host);
        let port: u16 = kc
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix.as_str()))?
            .parse()
            .ok()?;
        (self.port == 0 || port == self.port).then_some(port)
    }

    /// Points the next [`Server::spawn`] at `etcd` (every member), or at the embedded store of
    /// the same data directory when `None`; the scheduler and controllers run when `components`.
    pub fn set_store(&mut self, etcd: Option<&TestEtcd>, components: bool) {
        self.extra_args = match etcd {
            Some(e) => vec!["--etcd-endpoints".to_string(), e.endpoints().join(",")],
            None => Vec::new(),
        };
        self.components = components;
    }

    /// Hands the server's etcd to the test (to stop and restart it); the test then keeps it
    /// alive as long as the server needs it.
    pub fn take_etcd(&mut self) -> TestEtcd {
        self.etcd.take().expect("a server started on etcd")
    }

    /// The server's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.pid().expect("the server runs");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The file the server's log goes to, across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as a clean stop; waits for the process to end.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.args(args)
            .env("KUBECONFIG", self.kubeconfig())
            // A private HOME keeps kubectl's discovery cache per test.
            .env("HOME", self.dir.path())
            .stdin(Stdio::null());
        c
    }

    pub fn kubectl_output(&self, args: &[&str]) -> Output {
        self.kubectl_cmd(args).output().expect("running kubectl")
    }

    /// Runs kubectl, asserting success; returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_output(args);
        assert!(
            out.status.success(),
            "kubectl {} failed:\n{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl with `stdin`, asserting success.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> String {
        use std::io::Write;
        let mut child = self
            .kubectl_cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("writing stdin");
        let out = child.wait_with_output().expect("kubectl output");
        assert!(
            out.status.success(),
            "kubectl {} failed:\n{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn kubectl_err(&self, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write;
        let mut child = self
            .kubectl_cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).expect("writing stdin");
        }
        drop(input);
        let out = child.wait_with_output().expect("kubectl output");
        assert!(
            !out.status.success(),
            "kubectl {} unexpectedly succeeded:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).expect("writing a manifest");
        p
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}
