//! A real etcd for tests: Debian's `etcd-server` (the `etcd` binary) started on free loopback
//! ports with its data in a temporary directory, killed when dropped. One member or a cluster
//! of several; tests can kill members and start them again on the same ports and data.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One etcd process.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// An etcd cluster on loopback.
pub struct TestEtcd {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    tls: Option<ServerTls>,
}

/// PEM files for an etcd that serves HTTPS and requires client certificates signed by `ca`.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a free loopback port")
        .port()
}

/// The `etcd` binary, or a panic naming the package that provides it.
fn etcd_binary() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    });
    found.expect(
        "the etcd binary is missing: install Debian's etcd-server (apt-get install -y etcd-server)",
    )
}

impl TestEtcd {
    /// Starts a single-member etcd and waits until it serves.
    pub fn start() -> Self {
        Self::cluster(1)
    }

    /// Starts a cluster of `size` members and waits until each serves.
    pub fn cluster(size: usize) -> Self {
        Self::launch(size, None)
    }

    /// Starts a single member serving HTTPS with `tls`, requiring client certificates.
    pub fn start_tls(tls: ServerTls) -> Self {
        Self::launch(1, Some(tls))
    }

    fn launch(size: usize, tls: Option<ServerTls>) -> Self {
        let mut last_log = String::new();
        // A port picked free may be taken by a concurrent test before etcd binds it: try again.
        for _ in 0..3 {
            let mut etcd = Self {
                members: (0..size)
                    .map(|i| Member {
                        name: format!("m{i}"),
                        client_port: free_port(),
                        peer_port: free_port(),
                        child: None,
                    })
                    .collect(),
                dir: tempfile::tempdir().expect("tempdir for etcd"),
                tls: tls.clone(),
            };
            (0..size).for_each(|i| etcd.spawn(i));
            if (0..size).all(|i| etcd.wait_healthy(i)) {
                return etcd;
            }
            last_log = etcd.log();
        }
        panic!("etcd did not start; its log:\n{last_log}");
    }

    /// `http://127.0.0.1:PORT`, the first member's client URL.
    pub fn endpoint(&self) -> String {
        self.member_endpoint(0)
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len())
            .map(|i| self.member_endpoint(i))
            .collect()
    }

    fn member_endpoint(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Kills every member (SIGKILL), keeping the data.
    pub fn kill(&mut self) {
        (0..self.members.len()).for_each(|i| self.kill_member(i));
    }

    /// Starts every member again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        (0..self.members.len()).for_each(|i| self.spawn(i));
        (0..self.members.len()).for_each(|i| self.await_member(i));
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again; waits until it serves if the others give it a quorum.
    pub fn restart_member(&mut self, i: usize) {
        self.kill_member(i);
        self.spawn(i);
        self.await_member(i);
    }

    /// Waits for member `i`, spawning it again while its old ports linger.
    fn await_member(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.wait_healthy(i) {
            assert!(
                Instant::now() < deadline,
                "etcd member {i} did not restart; the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
            self.spawn(i);
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log file");
        let peer = |m: &Member| format!("http://127.0.0.1:{}", m.peer_port);
        let initial_cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, peer(m)))
            .collect();
        let client = self.member_endpoint(i);
        let m = &self.members[i];
        let tls_args = match &self.tls {
            Some(t) => vec![
                format!("--cert-file={}", t.cert.display()),
                format!("--key-file={}", t.key.display()),
                format!("--trusted-ca-file={}", t.ca.display()),
                "--client-cert-auth".to_string(),
            ],
            None => Vec::new(),
        };
        let child = Command::new(etcd_binary())
            .args(tls_args)
            .arg(format!("--name={}", m.name))
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join(&m.name).display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={}", peer(m)))
            .arg(format!("--initial-advertise-peer-urls={}", peer(m)))
            .arg(format!("--initial-cluster={}", initial_cluster.join(",")))
            .arg("--initial-cluster-token=skiff-test")
            // Elect a leader quickly.
            .args(["--heartbeat-interval=50", "--election-timeout=500"])
            .args(["--logger=zap", "--log-level=warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log)
            .spawn()
            .expect("spawning etcd");
        self.members[i].child = Some(child);
    }

    /// Waits for member `i` to answer `/health`; false if it exited or never answered.
    fn wait_healthy(&mut self, i: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.members[i].child.as_mut().map(Child::try_wait) {
                self.members[i].child = None;
                return false;
            }
            if self.healthy(i) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill_member(i);
        false
    }

    fn healthy(&self, i: usize) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.members[i].client_port)) else {
            return false;
        };
        // Over HTTPS, listening is enough: a client's own retries cover the rest.
        if self.tls.is_some() {
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}
