//! The lab of a `skiff cluster`: its network namespaces (made and deleted with `ip`, inside
//! them only) and its daemons (own session, pid file, log), started inside a namespace.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const NETNS_DIR: &str = "/var/run/netns";

/// A daemon to start.
pub struct ProcessSpec {
    /// Its pid file and log are named after it.
    pub name: String,
    /// The network namespace it runs in (the host's when `None`).
    pub netns: Option<String>,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
}

/// A cluster's namespaces and daemons.
pub struct Lab {
    name: String,
    dir: PathBuf,
}

impl Lab {
    pub fn new(name: &str, dir: &Path) -> Lab {
        Lab {
            name: name.to_string(),
            dir: dir.to_path_buf(),
        }
    }

    /// The lab's namespace (the bridge and the API server).
    pub fn netns(&self) -> String {
        format!("skiff-{}", self.name)
    }

    pub fn node_netns(&self, i: usize) -> String {
        format!("skiff-{}-{i}", self.name)
    }

    pub fn exists(&self) -> bool {
        Path::new(NETNS_DIR).join(self.netns()).exists()
    }

    /// The lab's namespace with a bridge holding `bridge_ip`.
    pub fn create(&self, bridge_ip: &str) -> anyhow::Result<()> {
        let ns = self.netns();
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{bridge_ip}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &ns, "link", "set", "br0", "up"])
    }

    /// Node `i`'s namespace: `eth0` holding `node_ip`, a veth to the lab's bridge, its default
    /// route through the bridge's address (which leads nowhere further).
    pub fn add_node(&self, i: usize, node_ip: &str, gateway: &str) -> anyhow::Result<()> {
        let (lab, ns, port) = (self.netns(), self.node_netns(i), format!("n{i}"));
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "link", "add", &port, "netns", &lab, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ])?;
        ip(&["-n", &lab, "link", "set", &port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{node_ip}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "route", "add", "default", "via", gateway])
    }

    /// Node `i`'s link on the bridge up or down.
    pub fn set_node_link(&self, i: usize, up: bool) -> anyhow::Result<()> {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.netns(), "link", "set", &format!("n{i}"), state])
    }

    /// Deletes the nodes' namespaces and the lab's (those already gone are skipped).
    pub fn delete(&self, nodes: impl Iterator<Item = usize>) -> anyhow::Result<()> {
        let mut names: Vec<String> = nodes.map(|i| self.node_netns(i)).collect();
        names.push(self.netns());
        for ns in names {
            if Path::new(NETNS_DIR).join(&ns).exists() {
                ip(&["netns", "del", &ns])?;
            }
        }
        Ok(())
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.dir.join("pids").join(format!("{name}.pid"))
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// Starts a daemon: its own session, stdin from /dev/null, output appended to its log, its
    /// pid in its pid file.
    pub fn start(&self, spec: &ProcessSpec) -> anyhow::Result<u32> {
        for d in ["pids", "logs"] {
            std::fs::create_dir_all(self.dir.join(d))
                .with_context(|| format!("creating {}", self.dir.join(d).display()))?;
        }
        let log_path = self.log(&spec.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let netns = match &spec.netns {
            Some(ns) => {
                let path = Path::new(NETNS_DIR).join(ns);
                Some(
                    std::fs::File::open(&path)
                        .with_context(|| format!("opening {}", path.display()))?,
                )
            }
            None => None,
        };
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("the log file")?)
            .stderr(log);
        // SAFETY: between fork and exec the child only calls setns and setsid, which are
        // async-signal-safe system calls, on a descriptor opened before the fork.
        unsafe {
            command.pre_exec(move || {
                if let Some(ns) = &netns {
                    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
                }
                nix::unistd::setsid()?;
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", spec.name))?;
        let pid = child.id();
        skiff_apiserver::pki::write(
            &self.pid_file(&spec.name),
            format!("{pid}\n").as_bytes(),
            false,
        )?;
        tracing::debug!(name = %spec.name, pid, "started");
        Ok(pid)
    }

    /// The daemon's pid while it runs (a pid file naming a process of this cluster).
    pub fn running(&self, name: &str) -> Option<Pid> {
        let pid: i32 = std::fs::read_to_string(self.pid_file(name))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let pid = Pid::from_raw(pid);
        reap(pid);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        let ours = String::from_utf8_lossy(&cmdline).contains(&*self.dir.to_string_lossy());
        (ours && !zombie).then_some(pid)
    }

    /// An error with the end of its log when the daemon is not running.
    pub fn check_running(&self, name: &str) -> anyhow::Result<()> {
        if self.running(name).is_some() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.log(name)).unwrap_or_default();
        // Without the frames of a backtrace: the error is what matters.
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                let t = l.trim_start();
                !(t.starts_with("at ")
                    || t.split(':')
                        .next()
                        .is_some_and(|n| n.parse::<u32>().is_ok()))
            })
            .collect();
        bail!(
            "{name} exited; the end of {}:\n{}",
            self.log(name).display(),
            lines[lines.len().saturating_sub(15)..].join("\n")
        )
    }

    /// Stops a daemon: SIGTERM, then SIGKILL after `limit`; removes its pid file.
    pub fn stop(&self, name: &str, limit: Duration) -> anyhow::Result<()> {
        if let Some(pid) = self.running(name) {
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + limit;
            while self.running(name).is_some() {
                if Instant::now() > deadline {
                    tracing::warn!(%name, "did not stop within {limit:?}; killing it");
                    let _ = kill(pid, Signal::SIGKILL);
                    std::thread::sleep(Duration::from_millis(200));
                    reap(pid);
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        match std::fs::remove_file(self.pid_file(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.pid_file(name).display()))
            }
            _ => Ok(()),
        }
    }

    /// Starts the host-side forwarder to `target` in the lab and returns its 127.0.0.1 port.
    pub fn start_forwarder(&self, target: &str) -> anyhow::Result<u16> {
        let port_file = self.dir.join("forward.port");
        let exe = std::env::current_exe().context("finding this binary")?;
        self.start(&ProcessSpec {
            name: "forward".into(),
            netns: None,
            program: exe,
            args: vec![
                "cluster".into(),
                "forward".into(),
                "--netns".into(),
                self.netns().into(),
                "--to".into(),
                target.into(),
                "--port-file".into(),
                port_file.clone().into(),
            ],
            env: vec![],
        })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(p) = std::fs::read_to_string(&port_file)
                && let Ok(port) = p.trim().parse()
            {
                return Ok(port);
            }
            self.check_running("forward")?;
            if Instant::now() > deadline {
                bail!("the forwarder wrote no port within 10s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Collects the exit status of a daemon this process started (a no-op for others).
fn reap(pid: Pid) {
    let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (Debian package iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// What a node whose agent was killed may leave: processes in its pods' cgroups, mounts under
/// its directory, the cgroups themselves.
pub fn remove_node_leftovers(node_dir: &Path, cgroup_root: &str) {
    let cgroups = || {
        let mut found = Vec::new();
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let root = h.path().join(cgroup_root.trim_start_matches('/'));
            if root.is_dir() {
                walk_dirs(&root, &mut found);
                found.push(root);
            }
        }
        // Deepest first.
        found.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        found
    };
    for _ in 0..50 {
        let pids: Vec<i32> = cgroups()
            .iter()
            .flat_map(|d| {
                std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|p| p.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        if pids.is_empty() {
            break;
        }
        for p in pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let base = node_dir.to_string_lossy().into_owned();
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .filter(|m| m.starts_with(&base))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    for d in cgroups() {
        let _ = std::fs::remove_dir(&d);
    }
}

fn walk_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(e.path());
            walk_dirs(&e.path(), out);
        }
    }
}
