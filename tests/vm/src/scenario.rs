//! A scenario VM: a cgroup-v2-only machine (`cgroup_no_v1=all`, every controller enabled at the
//! root, a few hugepages reserved; `scenario_init.sh`) that runs a shell script against an OCI
//! runtime with runc's command line and powers off. Results come back over the serial console as
//! `SKIFF-CHECK ok|fail <name> <detail>` lines, ended by `SKIFF-DONE <ok> <fail>`.
//!
//! The guest's files: the script at /skiff/scenario.sh (run with the runtime as `$1`), the runtime
//! under its own name in /skiff/bin (it may re-exec itself), each tool in /skiff/tools, modules in
//! /skiff/modules (decompressed), a busybox rootfs for containers at /skiff/rootfs (shared, to be
//! mounted read-only), and the caller's own files under /skiff. Used by the runtime's cgroup v2 VM
//! test and the kubelet's pod cgroups test. `SKIFF_VM_TIMEOUT`: seconds before qemu is killed
//! (default 240).

use crate::{Boot, Cpio, KERNEL_TROUBLE, Kernel, STAGE1_INIT, Vm};
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The PID 1 that runs the scenario (stage 2, see [`STAGE1_INIT`]).
const INIT_SH: &str = include_str!("scenario_init.sh");

/// What to boot.
pub struct Scenario<'a> {
    /// Keeps each scenario's files (initramfs, serial log) apart under `<tmp_dir>/cgroup-v2-vm`.
    pub name: &'a str,
    /// The test's scratch directory (`CARGO_TARGET_TMPDIR`); the kernel is cached under it when
    /// /var/cache/skiff-vm is not writable.
    pub tmp_dir: &'a Path,
    pub runtime: &'a Path,
    /// /skiff/scenario.sh
    pub script: &'a str,
    pub tools: &'a [&'a Path],
    /// Kernel options the scenario relies on, with `y` or `m`.
    pub kernel_config: &'a [(&'a str, &'a str)],
    /// Modules of the kernel package (path under `kernel/`, `.ko.xz`).
    pub modules: &'a [&'a str],
    /// Further files, by path under /skiff.
    pub files: Vec<(String, Vec<u8>)>,
}

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
    /// Kept after the run for debugging.
    pub serial_log: PathBuf,
    pub elapsed: Duration,
    /// The kernel package booted.
    pub kernel: String,
}

impl Outcome {
    /// Prints the scenario's `SKIFF-LOG` lines, every check and a summary line naming `label`
    /// to stderr (the test's output), and returns the serial log's text.
    pub fn report(&self, label: &str) -> String {
        let log = std::fs::read_to_string(&self.serial_log).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("SKIFF-LOG")) {
            eprintln!("{}", line.trim_end_matches('\r'));
        }
        for c in &self.checks {
            let verdict = if c.ok { "ok  " } else { "FAIL" };
            eprintln!("{verdict} {} {}", c.name, c.detail);
        }
        eprintln!(
            "{label} ({}): {} checks, {} failed, {:.1}s; serial log {}",
            self.kernel,
            self.checks.len(),
            self.failed().len(),
            self.elapsed.as_secs_f64(),
            self.serial_log.display()
        );
        log
    }

    /// The checks that failed, one `  name: detail` line each.
    pub fn failed(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("  {}: {}", c.name, c.detail))
            .collect()
    }
}

/// Builds the initramfs, boots it and collects the checks.
pub fn run_scenario(scenario: &Scenario) -> Result<Outcome> {
    let qemu = crate::qemu()?;
    anyhow::ensure!(
        scenario.runtime.is_file(),
        "the runtime under test {} does not exist (build it, or set SKIFF_VM_RUNTIME, e.g. to /usr/sbin/runc)",
        scenario.runtime.display()
    );
    let kernel = Kernel::fetch(&scenario.tmp_dir.join("skiff-vm-cache"))?;
    kernel.require_config(scenario.kernel_config)?;
    let work = scenario.tmp_dir.join("cgroup-v2-vm").join(scenario.name);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let initrd = work.join("initramfs.cpio");
    let image = initramfs(scenario, &kernel, &work)?;
    fs::write(&initrd, &image).with_context(|| format!("writing {}", initrd.display()))?;
    drop(image);
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

/// Parse the serial console: every `SKIFF-CHECK` line and the `SKIFF-DONE` line; kernel trouble
/// counts as a failed check.
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

/// Stage 1 init at the top, everything else under /r (see [`STAGE1_INIT`]).
fn initramfs(scenario: &Scenario, kernel: &Kernel, work: &Path) -> Result<Vec<u8>> {
    let busybox = crate::busybox()?;
    let mut cpio = Cpio::default();
    cpio.chardev("dev/console", 0o600, 5, 1);
    cpio.file("init", 0o755, STAGE1_INIT.as_bytes());
    for dir in ["proc", "sys", "dev", "run", "tmp", "mnt"] {
        cpio.dir(&format!("r/{dir}"), 0o755);
    }
    cpio.file("r/bin/busybox", 0o755, &busybox);
    cpio.file("r/init", 0o755, INIT_SH.as_bytes());
    cpio.file("r/skiff/scenario.sh", 0o755, scenario.script.as_bytes());

    let scratch = work.join("stripped");
    let programs = std::iter::once(("bin", scenario.runtime))
        .chain(scenario.tools.iter().map(|t| ("tools", *t)));
    for (dir, program) in programs {
        let name = program
            .file_name()
            .context("program path has no file name")?;
        let path = format!("/skiff/{dir}/{}", name.to_string_lossy());
        cpio.binary("r", &path, program, &scratch)?;
    }
    for module in scenario.modules {
        let file = Path::new(module).file_name().unwrap().to_string_lossy();
        cpio.file(
            &format!("r/skiff/modules/{}", file.trim_end_matches(".xz")),
            0o644,
            &kernel.module(module)?,
        );
    }

    // The containers' rootfs: busybox and its applets.
    let rootfs = "r/skiff/rootfs";
    for dir in ["dev", "proc", "sys", "tmp", "hugepages", "etc", "root"] {
        cpio.dir(&format!("{rootfs}/{dir}"), 0o755);
    }
    cpio.file(&format!("{rootfs}/bin/busybox"), 0o755, &busybox);
    for applet in crate::busybox_applets()? {
        cpio.symlink(&format!("{rootfs}/bin/{applet}"), "busybox");
    }
    cpio.file(
        &format!("{rootfs}/etc/passwd"),
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n",
    );
    cpio.file(&format!("{rootfs}/etc/group"), 0o644, b"root:x:0:\n");

    for (path, data) in &scenario.files {
        cpio.file(&format!("r/skiff/{path}"), 0o644, data);
    }
    Ok(cpio.finish())
}
