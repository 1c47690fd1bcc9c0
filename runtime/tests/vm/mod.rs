//! The cgroup v2 test VM: boots Debian's cloud kernel under qemu (TCG, never KVM: it hangs on the
//! development machine) with an initramfs made here, in which cgroup2 is the only hierarchy, and runs
//! `scenario.sh` against an OCI runtime with runc's command line. Results come back over the serial
//! console as `SKIFF-CHECK ok|fail <name> <detail>` lines, ended by `SKIFF-DONE <ok> <fail>`.
//!
//! The kernel, the initramfs writer and qemu come from the skiff-testvm crate (tests/vm), which
//! says what the host needs (qemu-system-x86, busybox-static, apt to fetch the kernel once). No
//! root needed. `SKIFF_VM_TIMEOUT`: seconds before qemu is killed (default 240).

pub mod cases;

use anyhow::{Context, Result};
use skiff_testvm::{Boot, Cpio, KERNEL_TROUBLE, Kernel, STAGE1_INIT, Vm};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The PID 1 that runs the scenario (stage 2, see [`STAGE1_INIT`]).
const INIT_SH: &str = include_str!("init.sh");
/// The checks, run with the runtime under test as `$1`.
const SCENARIO_SH: &str = include_str!("scenario.sh");

/// Kernel options the scenario relies on (all built in, `=y`).
const REQUIRED_KERNEL_CONFIG: &[&str] = &[
    "CONFIG_CGROUPS",
    "CONFIG_CPUSETS",
    "CONFIG_CGROUP_SCHED",
    "CONFIG_FAIR_GROUP_SCHED",
    "CONFIG_CFS_BANDWIDTH",
    "CONFIG_BLK_CGROUP",
    "CONFIG_BLK_CGROUP_IOCOST",
    "CONFIG_MEMCG",
    "CONFIG_SWAP",
    "CONFIG_CGROUP_HUGETLB",
    "CONFIG_HUGETLBFS",
    "CONFIG_CGROUP_PIDS",
    "CONFIG_CGROUP_BPF",
    "CONFIG_BPF_SYSCALL",
    "CONFIG_NAMESPACES",
    "CONFIG_UTS_NS",
    "CONFIG_IPC_NS",
    "CONFIG_PID_NS",
    "CONFIG_NET_NS",
    "CONFIG_USER_NS",
    "CONFIG_TIME_NS",
    "CONFIG_TMPFS",
    "CONFIG_DEVTMPFS",
    "CONFIG_BLK_DEV_INITRD",
    "CONFIG_SERIAL_8250",
    "CONFIG_SERIAL_8250_CONSOLE",
    "CONFIG_POSIX_MQUEUE",
    "CONFIG_SECCOMP_FILTER",
];

/// Modules put into the initramfs (decompressed), with the kernel option that must be `=m` for them;
/// none is needed to boot. bfq provides `io.bfq.weight`, which runc prefers over `io.weight` when it
/// exists: the scenario loads it half-way to test both paths. brd makes a ramdisk (block 1:0) for
/// the io.max throttling case.
const MODULES: &[(&str, &str)] = &[
    ("kernel/block/bfq.ko.xz", "CONFIG_IOSCHED_BFQ"),
    ("kernel/drivers/block/brd.ko.xz", "CONFIG_BLK_DEV_RAM"),
];

/// One `SKIFF-CHECK` line.
#[derive(Debug, Clone)]
pub struct Check {
    pub ok: bool,
    pub name: String,
    pub detail: String,
}

/// What came back from one boot.
#[derive(Debug)]
pub struct Outcome {
    pub checks: Vec<Check>,
    /// `SKIFF-DONE` was seen: the scenario ran to its end.
    pub done: Option<String>,
    pub serial_log: PathBuf,
    pub elapsed: Duration,
    /// The kernel package booted.
    pub kernel: String,
}

/// The working directory of the harness (initramfs, serial log), kept after the run for debugging.
pub fn work_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("cgroup-v2-vm")
}

/// Build the initramfs around `runtime`, boot it and collect the checks.
pub fn run(runtime: &Path) -> Result<Outcome> {
    let qemu = skiff_testvm::qemu()?;
    anyhow::ensure!(
        runtime.is_file(),
        "the runtime under test {} does not exist (build it, or set SKIFF_VM_RUNTIME, e.g. to /usr/sbin/runc)",
        runtime.display()
    );
    let kernel = kernel()?;
    let work = work_dir();
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let initrd = work.join("initramfs.cpio");
    let image = initramfs(runtime, &kernel)?;
    fs::write(&initrd, &image).with_context(|| format!("writing {}", initrd.display()))?;
    let timeout = std::env::var("SKIFF_VM_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(240);
    let started = Instant::now();
    let vm = Vm::start(
        std::process::Command::new(qemu),
        &Boot {
            vmlinuz: &kernel.vmlinuz,
            initrd: &initrd,
            append: "cgroup_no_v1=all panic=-1 quiet",
            memory_mib: 1024,
            cpus: 2,
            args: Vec::new(),
        },
    )?;
    let serial = vm.wait(Duration::from_secs(timeout))?;
    let elapsed = started.elapsed();
    let serial_log = work.join("serial.log");
    fs::write(&serial_log, &serial).with_context(|| format!("writing {}", serial_log.display()))?;
    let (checks, done) = parse(&serial);
    Ok(Outcome {
        checks,
        done,
        serial_log,
        elapsed,
        kernel: kernel.package,
    })
}

/// Parse the serial console: every `SKIFF-CHECK` line and the `SKIFF-DONE` line.
pub fn parse(serial: &str) -> (Vec<Check>, Option<String>) {
    let mut checks = Vec::new();
    let mut done = None;
    for line in serial.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(at) = line.find("SKIFF-CHECK ") {
            let mut parts = line[at + "SKIFF-CHECK ".len()..].splitn(3, ' ');
            let verdict = parts.next().unwrap_or_default();
            let name = parts.next().unwrap_or_default().to_string();
            let detail = parts.next().unwrap_or_default().to_string();
            checks.push(Check {
                ok: verdict == "ok",
                name,
                detail,
            });
        } else if let Some(at) = line.find("SKIFF-DONE") {
            done = Some(line[at..].to_string());
        } else if KERNEL_TROUBLE.iter().any(|t| line.contains(t)) {
            checks.push(Check {
                ok: false,
                name: "vm/kernel".to_string(),
                detail: line.trim().to_string(),
            });
        }
    }
    (checks, done)
}

/// The kernel, with the options the scenario relies on.
pub fn kernel() -> Result<Kernel> {
    let kernel = Kernel::fetch(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("skiff-vm-cache"))?;
    let mut options: Vec<(&str, &str)> = REQUIRED_KERNEL_CONFIG.iter().map(|o| (*o, "y")).collect();
    options.extend(MODULES.iter().map(|(_, o)| (*o, "m")));
    kernel.require_config(&options)?;
    Ok(kernel)
}

/// The initramfs: stage 1 init at the top, everything else under /r (see [`STAGE1_INIT`]).
pub fn initramfs(runtime: &Path, kernel: &Kernel) -> Result<Vec<u8>> {
    let busybox = skiff_testvm::busybox()?;
    let applets = skiff_testvm::busybox_applets()?;

    let mut cpio = Cpio::default();
    cpio.chardev("dev/console", 0o600, 5, 1);
    cpio.file("init", 0o755, STAGE1_INIT.as_bytes());
    for dir in ["proc", "sys", "dev", "run", "tmp", "mnt"] {
        cpio.dir(&format!("r/{dir}"), 0o755);
    }
    cpio.file("r/bin/busybox", 0o755, &busybox);
    cpio.file("r/init", 0o755, INIT_SH.as_bytes());
    cpio.file("r/skiff/scenario.sh", 0o755, SCENARIO_SH.as_bytes());

    // The runtime under test, under its own name (it may re-exec itself), with its libraries at the
    // paths ldd names, the dynamic loader included.
    let name = runtime
        .file_name()
        .context("runtime path has no file name")?;
    cpio.binary(
        "r",
        &format!("/skiff/bin/{}", name.to_string_lossy()),
        runtime,
        &work_dir().join("runtime.stripped"),
    )?;

    for (module, _) in MODULES {
        let file = Path::new(module).file_name().unwrap().to_string_lossy();
        cpio.file(
            &format!("r/skiff/modules/{}", file.trim_end_matches(".xz")),
            0o644,
            &kernel.module(module)?,
        );
    }

    // The containers' rootfs (shared, mounted read-only by every bundle): busybox and its applets.
    let rootfs = "r/skiff/rootfs";
    for dir in ["dev", "proc", "sys", "tmp", "hugepages", "etc", "root"] {
        cpio.dir(&format!("{rootfs}/{dir}"), 0o755);
    }
    cpio.file(&format!("{rootfs}/bin/busybox"), 0o755, &busybox);
    for applet in &applets {
        cpio.symlink(&format!("{rootfs}/bin/{applet}"), "busybox");
    }
    cpio.file(
        &format!("{rootfs}/etc/passwd"),
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n",
    );
    cpio.file(&format!("{rootfs}/etc/group"), 0o644, b"root:x:0:\n");

    // Bundles and what the scenario expects of each.
    let mut list = String::new();
    for case in cases::cases() {
        let dir = format!("r/skiff/cases/{}", case.id);
        cpio.file(&format!("{dir}/config.json"), 0o644, &case.config_json());
        cpio.file(&format!("{dir}/expect"), 0o644, case.expect().as_bytes());
        list.push_str(case.id);
        list.push('\n');
    }
    cpio.file("r/skiff/cases/list", 0o644, list.as_bytes());
    Ok(cpio.finish())
}
