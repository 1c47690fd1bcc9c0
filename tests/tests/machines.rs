//! Two real machines: qemu VMs under TCG booting Debian's cloud kernel (skiff-testvm), linked by a
//! qemu socket network of their own inside a lab network namespace this test makes (loopback
//! only, no route out). One runs `skiff server` and prints its join line on its serial console;
//! the other is booted with that token and joins with `skiff agent`: its node is Ready, through
//! a node client certificate the server issued for the bootstrap token. The test drives the API
//! with kubectl 1.32 through qemu's user network (restricted: no way out) forwarded to a port in
//! the lab namespace.
//!
//! Then a Deployment's pod (busybox httpd, the image built and imported on the agent at boot)
//! runs on the agent behind a Service, and the server machine, which runs no proxy, asks it by
//! the Service's ClusterIP and by the agent's NodePort: the answer is the pod's name.
//!
//! The machines boot one initramfs (tests/tests/machines/init.sh as init) holding this build's
//! `skiff`, `skiff-runc` and `skiff-shim` without debug info, iptables and nft from the host and
//! the kernel's network modules.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::*;
use skiff_testvm::{Boot, Cpio, KERNEL_TROUBLE, Kernel, STAGE1_INIT, Vm};

const INIT_SH: &str = include_str!("machines/init.sh");
const SERVER_IP: &str = "192.168.77.1";
const AGENT_IP: &str = "192.168.77.2";
/// Where the lab namespace reaches the server's API (qemu's hostfwd) and where the machines'
/// link listens.
const API_PORT: u16 = 6443;
const LINK_PORT: u16 = 7077;
/// The whole test, boots included.
const DEADLINE: Duration = Duration::from_secs(240);

/// Host programs copied into the machines with their libraries: the node's netfilter tools.
const HOST_PROGRAMS: &[(&str, &[&str])] = &[
    (
        "/usr/sbin/xtables-nft-multi",
        &[
            "iptables",
            "iptables-restore",
            "iptables-save",
            "iptables-nft",
            "iptables-nft-restore",
            "iptables-nft-save",
        ],
    ),
    ("/usr/sbin/nft", &[]),
];
/// iptables' extensions, loaded with dlopen (ldd cannot see them).
const XTABLES: &str = "/usr/lib/x86_64-linux-gnu/xtables";
/// The module trees the machines may need (network drivers, netfilter, bridge, veth, overlayfs
/// and what they depend on), decompressed, with a modules.dep made by busybox depmod.
const MODULE_TREES: &[&str] = &[
    "kernel/net",
    "kernel/drivers/net",
    "kernel/fs/overlayfs",
    "kernel/lib",
    "kernel/crypto",
];

fn work_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("machines-vm")
}

#[test]
fn an_agent_vm_joins_a_server_vm_and_serves_a_service_to_it() {
    require_root();
    require("kubectl", &["version", "--client"], "kubectl 1.32 on PATH");
    require("busybox", &["true"], "Debian package busybox-static");
    require(
        "qemu-system-x86_64",
        &["--version"],
        "Debian package qemu-system-x86",
    );
    let started = Instant::now();
    let qemu = skiff_testvm::qemu().unwrap();
    let kernel = Kernel::fetch(&work_dir().join("kernel-cache")).unwrap();
    let work = work_dir();
    std::fs::create_dir_all(&work).unwrap();
    let initrd = work.join("initramfs.cpio");
    let image = initramfs(&kernel, &work).unwrap_or_else(|e| panic!("the initramfs: {e:#}"));
    std::fs::write(&initrd, &image).unwrap();
    eprintln!(
        "initramfs: {} MB, made in {:.1}s",
        image.len() >> 20,
        started.elapsed().as_secs_f64()
    );
    drop(image);

    let lab = Netns::new();
    let boot = |append: String, args: Vec<String>| {
        Vm::start(
            lab.command(&qemu),
            &Boot {
                vmlinuz: &kernel.vmlinuz,
                initrd: &initrd,
                append: &append,
                memory_mib: 1024,
                cpus: 1,
                args,
            },
        )
        .expect("starting qemu")
    };
    let nic = |netdev: &str, mac: &str| {
        vec![
            "-netdev".to_string(),
            netdev.to_string(),
            "-device".to_string(),
            format!(
                "virtio-net-pci,netdev={},mac={mac},romfile=",
                netdev
                    .split_once("id=")
                    .unwrap()
                    .1
                    .split(',')
                    .next()
                    .unwrap()
            ),
        ]
    };
    let common = "panic=-1 quiet";
    let mut server_args = nic(
        &format!("socket,id=link,listen=127.0.0.1:{LINK_PORT}"),
        "52:54:00:77:00:01",
    );
    server_args.extend(nic(
        &format!("user,id=api,restrict=on,hostfwd=tcp:127.0.0.1:{API_PORT}-10.0.2.15:6443"),
        "52:54:00:77:01:01",
    ));
    let mut server = boot(
        format!("{common} skiff_role=server skiff_ip={SERVER_IP} skiff_peer={AGENT_IP}"),
        server_args,
    );
    let kubeconfig = work.join("admin.kubeconfig");
    let kubectl = |args: &[&str]| -> (bool, String) {
        let out = lab
            .command("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let diagnose = || kubectl(&["get", "nodes,csr,events", "-o", "wide"]).1;
    let mut machines = Machines {
        server: None,
        agent: None,
        work: work.clone(),
        diagnose: &diagnose,
    };

    // The join line and the admin's kubeconfig, from the server's console.
    let join = wait_line(&mut server, "SKIFF-JOIN ", started);
    eprintln!(
        "server: join line after {:.1}s: {join}",
        started.elapsed().as_secs_f64()
    );
    let words: Vec<&str> = join.split_whitespace().collect();
    assert_eq!(words[..3], ["skiff", "agent", "--server"], "{join}");
    assert_eq!(words[4], "--token", "{join}");
    let token = words[5].to_string();
    let kubeconfig_b64 = wait_line(&mut server, "SKIFF-KUBECONFIG ", started);
    let decoded = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(kubeconfig_b64.as_bytes())?;
            c.wait_with_output()
        })
        .expect("base64 -d");
    let text = String::from_utf8(decoded.stdout).expect("kubeconfig text");
    let url = format!("https://{SERVER_IP}:6443");
    assert!(text.contains(&url), "the kubeconfig names {url}:\n{text}");
    // The same API server, reached through qemu's forwarded port (127.0.0.1 is in its
    // certificate).
    std::fs::write(
        &kubeconfig,
        text.replace(&url, &format!("https://127.0.0.1:{API_PORT}")),
    )
    .unwrap();
    machines.server = Some(server);

    // The agent, booted with the token the server printed.
    let mut agent = boot(
        format!(
            "{common} skiff_role=agent skiff_ip={AGENT_IP} skiff_peer={SERVER_IP} skiff_token={token}"
        ),
        nic(
            &format!("socket,id=link,connect=127.0.0.1:{LINK_PORT}"),
            "52:54:00:77:00:02",
        ),
    );
    loop {
        let (ready, _) = kubectl(&[
            "wait",
            "--for=condition=Ready",
            "node/agent",
            "--timeout=1s",
        ]);
        if ready {
            break;
        }
        machines.check(&mut agent, started, "the agent's node to be Ready");
        std::thread::sleep(Duration::from_secs(2));
    }
    eprintln!(
        "agent: node Ready after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let (_, nodes) = kubectl(&["get", "nodes", "-o", "wide"]);
    assert!(
        nodes.contains(AGENT_IP) && nodes.contains(&kernel.release),
        "{nodes}"
    );

    // The node runs on credentials the server issued through a CSR for the bootstrap token.
    let (_, csrs) = kubectl(&["get", "csr"]);
    assert!(
        csrs.contains("kube-apiserver-client-kubelet") && csrs.contains("Approved,Issued"),
        "{csrs}"
    );
    machines.agent = Some(agent);

    // A web server on the agent behind a Service, asked from the server machine.
    let manifest = work.join("web.yaml");
    std::fs::write(&manifest, WEB).unwrap();
    let (applied, out) = kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(applied, "kubectl apply: {out}");
    let pod = loop {
        let (ready, _) = kubectl(&[
            "wait",
            "--for=condition=Ready",
            "pod",
            "-l",
            "app=web",
            "--timeout=1s",
        ]);
        if ready {
            break kubectl(&["get", "pod", "-l", "app=web", "-o", "name"])
                .1
                .trim()
                .trim_start_matches("pod/")
                .to_string();
        }
        machines.check_both(started, "the web pod to be Ready");
        std::thread::sleep(Duration::from_secs(2));
    };
    eprintln!(
        "web pod {pod} Ready after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let (_, wide) = kubectl(&["get", "pod", "-l", "app=web", "-o", "wide"]);
    assert!(
        wide.contains(" agent "),
        "the pod runs on the agent:\n{wide}"
    );
    for how in ["clusterip", "nodeport"] {
        let prefix = format!("SKIFF-HTTP {how} ");
        let answer = loop {
            let serial = machines.server.as_ref().unwrap().serial();
            if let Some(line) = find_line(&serial, &prefix) {
                break line;
            }
            machines.check_both(started, &format!("the server's request by {how}"));
            std::thread::sleep(Duration::from_millis(500));
        };
        eprintln!(
            "server: answered by {how} after {:.1}s: {answer}",
            started.elapsed().as_secs_f64()
        );
        assert_eq!(answer.trim(), pod, "the pod answers by {how}");
    }
    machines.keep_logs();
}

/// One busybox httpd serving its hostname (the pod's name) on the agent, behind a Service with a
/// ClusterIP and a NodePort the server machine's init.sh asks.
const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeSelector: {kubernetes.io/hostname: agent}
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
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  clusterIP: 10.96.100.100
  selector: {app: web}
  ports:
  - {port: 80, targetPort: 80, nodePort: 30080}
"#;

/// The two machines once both run, their consoles written out for inspection at the end or on
/// failure.
struct Machines<'a> {
    server: Option<Vm>,
    agent: Option<Vm>,
    work: PathBuf,
    /// What the API says, for a failure's message.
    diagnose: &'a dyn Fn() -> String,
}

impl Machines<'_> {
    /// Fails the test when either machine is gone or broken or the deadline passed.
    fn check(&mut self, booting: &mut Vm, started: Instant, what: &str) {
        let mut problems = Vec::new();
        for (name, vm) in [("server", self.server.as_mut()), ("agent", Some(booting))] {
            let Some(vm) = vm else { continue };
            if let Some(problem) = trouble(vm) {
                problems.push(format!("{name}: {problem}"));
            }
        }
        if started.elapsed() > DEADLINE {
            problems.push(format!("timed out waiting for {what}"));
        }
        if !problems.is_empty() {
            self.keep_logs();
            let agent_log = skiff_testvm::tail(&booting.serial(), 40);
            let _ = std::fs::write(self.work.join("agent.serial.log"), booting.serial());
            panic!(
                "{}\n{}\nagent console:\n{agent_log}\nserver console:\n{}",
                problems.join("\n"),
                (self.diagnose)(),
                self.server
                    .as_ref()
                    .map(|s| skiff_testvm::tail(&s.serial(), 30))
                    .unwrap_or_default()
            );
        }
    }

    /// [`Machines::check`] once both machines run.
    fn check_both(&mut self, started: Instant, what: &str) {
        let mut agent = self.agent.take().unwrap();
        self.check(&mut agent, started, what);
        self.agent = Some(agent);
    }

    fn keep_logs(&self) {
        for (name, vm) in [("server", &self.server), ("agent", &self.agent)] {
            if let Some(vm) = vm {
                let _ = std::fs::write(self.work.join(format!("{name}.serial.log")), vm.serial());
            }
        }
    }
}

/// What is wrong with a machine, if anything: qemu gone, a kernel oops, init failing.
fn trouble(vm: &mut Vm) -> Option<String> {
    let serial = vm.serial();
    if let Ok(Some(status)) = vm.exited() {
        return Some(format!("qemu exited ({status})"));
    }
    serial
        .lines()
        .find(|l| l.contains("SKIFF-FAIL") || KERNEL_TROUBLE.iter().any(|t| l.contains(t)))
        .map(|l| l.trim().to_string())
}

fn find_line(serial: &str, prefix: &str) -> Option<String> {
    serial.lines().find_map(|l| {
        l.find(prefix)
            .map(|at| l[at + prefix.len()..].trim_end_matches('\r').to_string())
    })
}

/// Waits for a line of the booting server.
fn wait_line(vm: &mut Vm, prefix: &str, started: Instant) -> String {
    loop {
        if let Some(l) = find_line(&vm.serial(), prefix) {
            return l;
        }
        if let Some(problem) = trouble(vm) {
            panic!(
                "server: {problem}\n{}",
                skiff_testvm::tail(&vm.serial(), 40)
            );
        }
        assert!(
            started.elapsed() < DEADLINE,
            "timed out waiting for {prefix}\n{}",
            skiff_testvm::tail(&vm.serial(), 40)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// One initramfs for both machines: stage 1 init at the top, everything else under /r.
fn initramfs(kernel: &Kernel, work: &Path) -> anyhow::Result<Vec<u8>> {
    let busybox = skiff_testvm::busybox()?;
    let mut cpio = Cpio::default();
    cpio.chardev("dev/console", 0o600, 5, 1);
    cpio.file("init", 0o755, STAGE1_INIT.as_bytes());
    for dir in [
        "proc", "sys", "dev", "run", "tmp", "mnt", "root", "var", "etc",
    ] {
        cpio.dir(&format!("r/{dir}"), 0o755);
    }
    cpio.file("r/bin/busybox", 0o755, &busybox);
    cpio.file("r/init", 0o755, INIT_SH.as_bytes());
    cpio.file("r/etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    cpio.file("r/etc/group", 0o644, b"root:x:0:\n");
    cpio.symlink("r/sbin/modprobe", "/bin/busybox");

    let scratch = work.join("stripped");
    for name in ["skiff", "skiff-runc", "skiff-shim"] {
        cpio.binary(
            "r",
            &format!("/usr/local/bin/{name}"),
            &binary(name),
            &scratch,
        )?;
    }
    for (program, links) in HOST_PROGRAMS {
        let name = Path::new(program).file_name().unwrap().to_string_lossy();
        cpio.binary("r", program, Path::new(program), &scratch)?;
        for link in *links {
            cpio.symlink(&format!("r/usr/sbin/{link}"), &name);
        }
    }
    for entry in std::fs::read_dir(XTABLES)? {
        let path = entry?.path();
        cpio.libraries("r", &path)?;
        let data = std::fs::read(&path)?;
        cpio.file(&format!("r{}", path.display()), 0o644, &data);
    }

    modules(kernel, work, &mut cpio)?;
    Ok(cpio.finish())
}

/// The module trees, decompressed under `<work>/modules`, indexed by busybox depmod, then added.
fn modules(kernel: &Kernel, work: &Path, cpio: &mut Cpio) -> anyhow::Result<()> {
    let base = work.join("modules");
    let _ = std::fs::remove_dir_all(&base);
    let tree = base.join("lib/modules").join(&kernel.release);
    let mut found = Vec::new();
    for t in MODULE_TREES {
        walk(&kernel.modules.join(t), &mut found);
    }
    for path in &found {
        let rel = path.strip_prefix(&kernel.modules)?.to_string_lossy();
        let Some(rel) = rel.strip_suffix(".xz") else {
            continue;
        };
        let dest = tree.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap())?;
        std::fs::write(&dest, kernel.module(&format!("{rel}.xz"))?)?;
    }
    let out = Command::new(skiff_testvm::BUSYBOX)
        .arg("depmod")
        .arg("-b")
        .arg(&base)
        .arg(&kernel.release)
        .output()?;
    anyhow::ensure!(out.status.success(), "busybox depmod: {out:?}");
    let mut files = Vec::new();
    walk(&tree, &mut files);
    for f in files {
        let rel = f.strip_prefix(&base)?.to_string_lossy().into_owned();
        cpio.file(&format!("r/{rel}"), 0o644, &std::fs::read(&f)?);
    }
    std::fs::remove_dir_all(&base)?;
    Ok(())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}
