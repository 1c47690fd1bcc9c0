//! What the cluster DNS test and benchmark share: a network namespace of their own, processes
//! killed on drop, `unbound` as a resolver inside the namespace, and threads that run inside it.

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fails with a message naming the missing tool.
pub fn require(tool: &str, probe: &[&str], hint: &str) {
    let ok = Command::new(tool)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "`{tool}` is needed ({hint}); it is missing or does not run"
    );
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A network namespace with loopback up and `addresses` on it; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str, addresses: &[&str]) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "root is needed (network namespaces)"
        );
        require("ip", &["-V"], "iproute2");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("{prefix}-{}-{nanos}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        for address in addresses {
            let cidr = format!("{address}/32");
            run(Command::new("ip").args(["-n", &ns.name, "addr", "add", &cidr, "dev", "lo"]));
        }
        ns
    }

    /// `program` run inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `f` on a new thread inside the namespace. Threads it spawns (a tokio runtime's
    /// workers) inherit the namespace, so every socket they open is in it.
    pub fn thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).expect("opening the netns");
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("entering the netns");
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A process killed and reaped on drop.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How unbound is run: where, with how many threads, serving what (unbound.conf `local-zone:`
/// and `local-data:` lines), and a name whose answer shows it is up.
pub struct Unbound<'a> {
    pub addr: &'a str,
    pub threads: u32,
    pub local_data: &'a str,
    pub probe: &'a str,
}

/// Starts unbound inside `ns` and waits until it answers.
pub fn start_unbound(ns: &Netns, dir: &Path, unbound: Unbound<'_>) -> Process {
    let Unbound {
        addr,
        threads,
        local_data,
        probe,
    } = unbound;
    require("unbound", &["-V"], "Debian package unbound");
    require("dig", &["-v"], "Debian package bind9-dnsutils");
    let conf = dir.join(format!("unbound-{addr}.conf"));
    let config = format!(
        r#"server:
    interface: {addr}
    port: 53
    do-daemonize: no
    chroot: ""
    username: ""
    pidfile: ""
    directory: "{dir}"
    use-syslog: no
    logfile: ""
    do-ip6: no
    num-threads: {threads}
    access-control: 0.0.0.0/0 allow
    module-config: "iterator"
{local_data}"#,
        dir = dir.display()
    );
    std::fs::write(&conf, config).expect("unbound.conf");
    let log_path = dir.join(format!("unbound-{addr}.log"));
    let log = File::create(&log_path).expect("unbound log");
    let unbound = Process(
        ns.cmd("unbound")
            .args(["-d", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting unbound"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ns
            .cmd("dig")
            .args([&format!("@{addr}"), "+short", "+time=1", "+tries=1", probe])
            .output()
            .expect("running dig");
        if !text(&out.stdout).trim().is_empty() && !text(&out.stdout).starts_with(';') {
            return unbound;
        }
        assert!(
            Instant::now() < deadline,
            "unbound did not answer {probe}; log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
