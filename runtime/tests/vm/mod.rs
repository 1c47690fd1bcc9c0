//! The cgroup v2 test VM: boots Debian's cloud kernel under qemu (TCG, never KVM: it hangs on the
//! development machine) with an initramfs made here, in which cgroup2 is the only hierarchy, and runs
//! `scenario.sh` against an OCI runtime with runc's command line. Results come back over the serial
//! console as `SKIFF-CHECK ok|fail <name> <detail>` lines, ended by `SKIFF-DONE <ok> <fail>`.
//! Other crates boot it with a scenario of their own and extra programs ([`run_scenario`]; the
//! kubelet's pod cgroups: kubelet/tests/cgroup_v2_vm.rs).
//!
//! Written by hand rather than with crates: the pieces are small (a newc cpio writer, an ELF
//! PT_INTERP probe, a child process with a deadline) and the test may only use std plus the
//! crate's own dependencies.
//!
//! Host needs (Debian packages): `qemu-system-x86` (qemu-system-x86_64 + SeaBIOS), `busybox-static`
//! (/bin/busybox, statically linked), `apt` + `dpkg` (to fetch and unpack the kernel package once,
//! the only network use), `libc-bin` (ldd); `binutils` (strip) is used when present. No root
//! needed. Environment knobs:
//! - `SKIFF_VM_CACHE`: where the kernel package is unpacked (default /var/cache/skiff-vm, or the
//!   cargo target tmp dir when that is not writable);
//! - `SKIFF_VM_KERNEL_PACKAGE`: a package name to use instead of the newest cached or available
//!   `linux-image-6.12.*-cloud-amd64-unsigned`;
//! - `SKIFF_VM_TIMEOUT`: seconds before qemu is killed (default 240).

pub mod cases;

use anyhow::{Context, Result, bail, ensure};
use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The PID 1 that runs the scenario (stage 2, see [`STAGE1_INIT`]).
const INIT_SH: &str = include_str!("init.sh");
/// The checks, run with the runtime under test as `$1`.
const SCENARIO_SH: &str = include_str!("scenario.sh");

/// Stage 1 of the VM's init. The initramfs is the kernel's rootfs, a mount without a parent, and
/// pivot_root(2) refuses to move away from such a root (EINVAL) — but every runtime pivot_roots into
/// the container. So everything lives under /r, which is bind-mounted onto itself and moved over /
/// (what switch_root does, minus deleting the old root); the real init runs chrooted there.
const STAGE1_INIT: &str = "#!/r/bin/busybox sh
/r/bin/busybox mount --bind /r /r || exec /r/bin/busybox echo 'SKIFF-CHECK fail vm/stage1 mount --bind /r /r failed'
cd /r
/r/bin/busybox mount --move . / || exec /r/bin/busybox echo 'SKIFF-CHECK fail vm/stage1 mount --move /r / failed'
exec /r/bin/busybox chroot . /bin/busybox sh /init
";

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

/// Kernel console lines that fail the run whatever the checks say (`quiet` keeps the rest out).
const KERNEL_TROUBLE: &[&str] = &["Kernel panic", "Oops:", "BUG:", "general protection fault"];

/// Debian's statically linked busybox (package busybox-static).
const BUSYBOX: &str = "/bin/busybox";

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

pub struct Kernel {
    pub vmlinuz: PathBuf,
    /// `<unpacked package>/lib/modules/<release>`
    pub modules: PathBuf,
    pub package: String,
}

/// The working directory of the harness (initramfs, serial log), kept after the run for debugging.
pub fn work_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("cgroup-v2-vm")
}

/// Build the initramfs around `runtime`, boot it and collect the checks of the runtime's scenario.
pub fn run(runtime: &Path) -> Result<Outcome> {
    run_scenario("runtime", runtime, SCENARIO_SH, &[])
}

/// Boot with `scenario` as /skiff/scenario.sh (run with the runtime as `$1`, and the same
/// conventions: `SKIFF-CHECK` lines, then `SKIFF-DONE`) and each of `tools` at
/// /skiff/tools/<file name> with its libraries. `name` keeps each scenario's files (initramfs,
/// serial log) apart under [`work_dir`].
pub fn run_scenario(
    name: &str,
    runtime: &Path,
    scenario: &str,
    tools: &[&Path],
) -> Result<Outcome> {
    let qemu = find_in_path("qemu-system-x86_64").context(
        "qemu-system-x86_64 not found in PATH: install Debian's qemu-system-x86 (apt-get install -y qemu-system-x86)",
    )?;
    ensure!(
        runtime.is_file(),
        "the runtime under test {} does not exist (build it, or set SKIFF_VM_RUNTIME, e.g. to /usr/sbin/runc)",
        runtime.display()
    );
    let kernel = kernel()?;
    let work = work_dir().join(name);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let initrd = work.join("initramfs.cpio");
    let image = initramfs(&work, runtime, &kernel, scenario, tools)?;
    fs::write(&initrd, &image).with_context(|| format!("writing {}", initrd.display()))?;
    let timeout = std::env::var("SKIFF_VM_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(240);
    let started = Instant::now();
    let serial = boot(
        &qemu,
        &kernel.vmlinuz,
        &initrd,
        Duration::from_secs(timeout),
    )?;
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

/// The kernel: unpacked from Debian's `linux-image-6.12.*-cloud-amd64-unsigned` into the cache once.
pub fn kernel() -> Result<Kernel> {
    let cache = cache_dir();
    fs::create_dir_all(&cache)
        .with_context(|| format!("creating the VM cache {}", cache.display()))?;
    let package = match std::env::var("SKIFF_VM_KERNEL_PACKAGE") {
        Ok(p) if !p.is_empty() => p,
        _ => match newest(cached_packages(&cache)) {
            Some(p) => p,
            None => newest(available_packages()?).context(
                "no linux-image-6.12.*-cloud-amd64-unsigned package known to apt (apt-cache search); run apt-get update",
            )?,
        },
    };
    let root = cache.join(&package);
    if !root.join("boot").is_dir() {
        unpack_package(&cache, &package)?;
    }
    let boot = root.join("boot");
    let mut vmlinuz = None;
    let mut config = None;
    for entry in fs::read_dir(&boot).with_context(|| format!("reading {}", boot.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("vmlinuz-") {
            vmlinuz = Some(path);
        } else if name.starts_with("config-") {
            config = Some(path);
        }
    }
    let vmlinuz = vmlinuz.with_context(|| format!("no vmlinuz-* in {}", boot.display()))?;
    let config = config.with_context(|| format!("no config-* in {}", boot.display()))?;
    let release = vmlinuz.file_name().unwrap().to_string_lossy()["vmlinuz-".len()..].to_string();
    check_config(&config)?;
    Ok(Kernel {
        vmlinuz,
        modules: root.join("lib/modules").join(release),
        package,
    })
}

fn cache_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SKIFF_VM_CACHE")
        && !dir.is_empty()
    {
        return PathBuf::from(dir);
    }
    let system = Path::new("/var/cache/skiff-vm");
    if fs::create_dir_all(system).is_ok() && writable(system) {
        system.to_path_buf()
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("skiff-vm-cache")
    }
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let ok = fs::write(&probe, b"").is_ok();
    let _ = fs::remove_file(probe);
    ok
}

fn is_kernel_package(name: &str) -> bool {
    name.starts_with("linux-image-6.12.") && name.ends_with("-cloud-amd64-unsigned")
}

fn cached_packages(cache: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(cache) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_kernel_package(n) && cache.join(n).join("boot").is_dir())
        .collect()
}

fn available_packages() -> Result<Vec<String>> {
    let out = Command::new("apt-cache")
        .args([
            "search",
            "--names-only",
            r"^linux-image-6\.12\..*-cloud-amd64-unsigned$",
        ])
        .output()
        .context("running apt-cache (the kernel is fetched with apt-get download)")?;
    ensure!(
        out.status.success(),
        "apt-cache search failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| is_kernel_package(n))
        .map(str::to_string)
        .collect())
}

/// The package with the highest 6.12 patch level.
fn newest(names: Vec<String>) -> Option<String> {
    names.into_iter().max_by_key(|n| {
        let patch = n["linux-image-6.12.".len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse::<u32>().ok())
            .unwrap_or(0);
        (patch, n.clone())
    })
}

/// `apt-get download` + `dpkg -x` into `<cache>/<package>`, atomically (unpacked beside, then renamed).
fn unpack_package(cache: &Path, package: &str) -> Result<()> {
    let tmp = cache.join(format!(".download-{}-{}", package, std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let out = Command::new("apt-get")
        .args(["download", package])
        .current_dir(&tmp)
        .output()
        .context("running apt-get download")?;
    ensure!(
        out.status.success(),
        "apt-get download {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = fs::read_dir(&tmp)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    let tree = tmp.join("tree");
    let out = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&tree)
        .output()
        .context("running dpkg -x")?;
    ensure!(
        out.status.success(),
        "dpkg -x {} failed: {}",
        deb.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let dest = cache.join(package);
    if !dest.join("boot").is_dir() {
        let _ = fs::remove_dir_all(&dest);
        // Another test process may have won the race; its copy is as good as ours.
        if let Err(e) = fs::rename(&tree, &dest)
            && !dest.join("boot").is_dir()
        {
            return Err(e).with_context(|| format!("moving the kernel to {}", dest.display()));
        }
    }
    fs::remove_dir_all(&tmp)?;
    Ok(())
}

fn check_config(config: &Path) -> Result<()> {
    let text =
        fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let set = |opt: &str, val: &str| text.lines().any(|l| l == format!("{opt}={val}"));
    let mut missing: Vec<String> = REQUIRED_KERNEL_CONFIG
        .iter()
        .filter(|o| !set(o, "y"))
        .map(|o| format!("{o}=y"))
        .collect();
    missing.extend(
        MODULES
            .iter()
            .filter(|(_, o)| !set(o, "m"))
            .map(|(_, o)| format!("{o}=m")),
    );
    ensure!(
        missing.is_empty(),
        "kernel config {} lacks {}",
        config.display(),
        missing.join(" ")
    );
    Ok(())
}

/// The initramfs: stage 1 init at the top, everything else under /r (see [`STAGE1_INIT`]).
pub fn initramfs(
    work: &Path,
    runtime: &Path,
    kernel: &Kernel,
    scenario: &str,
    tools: &[&Path],
) -> Result<Vec<u8>> {
    let busybox = fs::read(BUSYBOX).with_context(|| {
        format!(
            "reading {BUSYBOX}: install Debian's busybox-static (apt-get install -y busybox-static)"
        )
    })?;
    ensure!(
        elf_interpreter(&busybox)?.is_none(),
        "{BUSYBOX} is dynamically linked: install busybox-static instead of busybox"
    );
    let applets = busybox_applets()?;

    let mut cpio = Cpio::default();
    cpio.chardev("dev/console", 0o600, 5, 1);
    cpio.file("init", 0o755, STAGE1_INIT.as_bytes());
    for dir in ["proc", "sys", "dev", "run", "tmp", "mnt"] {
        cpio.dir(&format!("r/{dir}"), 0o755);
    }
    cpio.file("r/bin/busybox", 0o755, &busybox);
    cpio.file("r/init", 0o755, INIT_SH.as_bytes());
    cpio.file("r/skiff/scenario.sh", 0o755, scenario.as_bytes());

    // The runtime under test, under its own name (it may re-exec itself), and the tools, with
    // their libraries at the paths ldd names, the dynamic loader included.
    let mut libs = BTreeSet::new();
    for (dir, bin) in std::iter::once(("bin", runtime)).chain(tools.iter().map(|t| ("tools", *t))) {
        let name = bin.file_name().context("program path has no file name")?;
        let data = without_debug_info(work, bin)?;
        if elf_interpreter(&data)?.is_some() {
            libs.extend(shared_libraries(bin)?);
        }
        cpio.file(
            &format!("r/skiff/{dir}/{}", name.to_string_lossy()),
            0o755,
            &data,
        );
    }
    for lib in libs {
        let data = fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
        cpio.file(&format!("r{}", lib.display()), 0o755, &data);
    }

    for (module, _) in MODULES {
        let path = kernel.modules.join(module);
        let out = Command::new(BUSYBOX)
            .arg("xzcat")
            .arg(&path)
            .output()
            .with_context(|| format!("decompressing {}", path.display()))?;
        ensure!(
            out.status.success(),
            "busybox xzcat {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let file = Path::new(module).file_name().unwrap().to_string_lossy();
        cpio.file(
            &format!("r/skiff/modules/{}", file.trim_end_matches(".xz")),
            0o644,
            &out.stdout,
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

/// The binary without its DWARF sections (`strip --strip-debug`, binutils, which the Rust linker
/// needs anyway): a debug skiff-runc is ~60 MB, ~15 MB stripped, and every MB is unpacked under
/// TCG at boot. The code is untouched. Falls back to the binary as it is when strip is missing.
fn without_debug_info(work: &Path, bin: &Path) -> Result<Vec<u8>> {
    let stripped = work.join("stripped");
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(bin)
        .stderr(Stdio::null())
        .status();
    let path = match status {
        Ok(s) if s.success() => stripped.as_path(),
        _ => bin,
    };
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn busybox_applets() -> Result<Vec<String>> {
    let out = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .context("running busybox --list")?;
    ensure!(out.status.success(), "busybox --list failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(str::to_string)
        .collect())
}

/// The absolute paths ldd prints for `bin` (libraries and the loader; not the vdso).
pub fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd (package libc-bin)")?;
    ensure!(
        out.status.success(),
        "ldd {} failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut libs = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => {
                libs.insert(PathBuf::from(p));
            }
            Some("not") => bail!("ldd {}: {}", bin.display(), line.trim()),
            _ => {}
        }
    }
    Ok(libs.into_iter().collect())
}

/// The PT_INTERP of a 64-bit little-endian ELF file, `None` when it is statically linked.
pub fn elf_interpreter(elf: &[u8]) -> Result<Option<String>> {
    ensure!(
        elf.len() >= 64 && &elf[..4] == b"\x7fELF" && elf[4] == 2 && elf[5] == 1,
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        ensure!(ph + 56 <= elf.len(), "truncated ELF program header");
        if u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap()) == 3 {
            let (off, size) = (u64_at(ph + 8), u64_at(ph + 32));
            ensure!(off + size <= elf.len(), "truncated ELF PT_INTERP");
            let interp = String::from_utf8_lossy(&elf[off..off + size]);
            return Ok(Some(interp.trim_end_matches('\0').to_string()));
        }
    }
    Ok(None)
}

/// Boot the VM and return everything it wrote on its serial console.
///
/// `-accel tcg,thread=single`: with multi-threaded TCG (qemu's default) the guest kernel now and
/// then oopses on an int3 in the scheduler right after a cgroup write flips a static key (live
/// code patching racing the other vCPU: seen 2 times in ~10 boots with qemu 7.2). One host thread
/// running both vCPUs in turn never did, and costs little: the scenario is mostly serial anyway.
/// `-cpu max`: every CPU feature TCG emulates, so a binary built for a newer x86-64 level runs.
/// `-nic none`: no network in the VM, and no iPXE option ROM to load at boot.
fn boot(qemu: &Path, vmlinuz: &Path, initrd: &Path, timeout: Duration) -> Result<String> {
    let mut child = Command::new(qemu)
        .args([
            "-accel",
            "tcg,thread=single",
            "-cpu",
            "max",
            "-m",
            "1024",
            "-smp",
            "2",
        ])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 cgroup_no_v1=all panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", qemu.display()))?;
    let serial = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let serial = Arc::clone(&serial);
        let mut stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                serial.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let stderr = {
        let mut pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = reader.join();
    let stderr = stderr.join().unwrap_or_default();
    let serial = String::from_utf8_lossy(&serial.lock().unwrap()).into_owned();
    match status {
        None => {
            // Keep what was printed: the caller reports the checks that did run.
            Ok(format!(
                "{serial}\nSKIFF-CHECK fail vm/timeout qemu killed after {}s (raise SKIFF_VM_TIMEOUT?)\n",
                timeout.as_secs()
            ))
        }
        Some(s) if !s.success() => bail!(
            "qemu exited with {s}: {}\nserial output:\n{}",
            stderr.trim(),
            tail(&serial, 40)
        ),
        Some(_) => Ok(serial),
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// A `cpio -H newc` archive (the initramfs format), built in memory. Parent directories are added
/// before their children automatically.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    dirs: BTreeSet<String>,
    ino: u32,
}

impl Cpio {
    pub fn dir(&mut self, path: &str, mode: u32) {
        self.parents(path);
        if self.dirs.insert(path.to_string()) {
            self.entry(path, 0o040000 | mode, 2, (0, 0), &[]);
        }
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.parents(path);
        self.entry(path, 0o100000 | mode, 1, (0, 0), data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entry(path, 0o120777, 1, (0, 0), target.as_bytes());
    }

    pub fn chardev(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.parents(path);
        self.entry(path, 0o020000 | mode, 1, (major, minor), &[]);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.out
    }

    fn parents(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/')
            && !self.dirs.contains(parent)
        {
            self.dir(parent, 0o755);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}
