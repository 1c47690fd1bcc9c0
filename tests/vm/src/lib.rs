//! skiff-testvm: the pieces every VM test needs to boot Debian's cloud kernel under qemu with an
//! initramfs made here — the kernel package fetched once, a newc cpio writer, a binary with its
//! shared libraries, busybox, and qemu started with the serial console captured — and on top of
//! them [`run_scenario`], a cgroup-v2-only VM running a script of checks against an OCI runtime.
//! Used by the runtime's and the kubelet's cgroup v2 VM tests and by the two-machine cluster test
//! of skiff-tests.
//!
//! Always TCG (`-accel tcg,thread=single`), never KVM: it hangs on the development machine.
//! Written by hand rather than with crates: the pieces are small and only std and anyhow are used.
//!
//! Host needs (Debian packages): `qemu-system-x86` (qemu-system-x86_64 + SeaBIOS), `busybox-static`
//! (/bin/busybox, statically linked), `apt` + `dpkg` (to fetch and unpack the kernel package once,
//! the only network use), `libc-bin` (ldd); `binutils` (strip) is used when present. Environment:
//! - `SKIFF_VM_CACHE`: where the kernel package is unpacked (default /var/cache/skiff-vm, or
//!   `fallback_cache` given by the caller when that is not writable);
//! - `SKIFF_VM_KERNEL_PACKAGE`: a package name to use instead of the newest cached or available
//!   `linux-image-6.12.*-cloud-amd64-unsigned`.

mod scenario;

pub use scenario::{Check, Outcome, Scenario, parse, run_scenario};

use anyhow::{Context, Result, bail, ensure};
use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Stage 1 of a VM's init. The initramfs is the kernel's rootfs, a mount without a parent, and
/// pivot_root(2) refuses to move away from such a root (EINVAL) — but every runtime pivot_roots into
/// the container. So everything lives under /r, which is bind-mounted onto itself and moved over /
/// (what switch_root does, minus deleting the old root); the real init (`/r/init`) runs chrooted
/// there.
pub const STAGE1_INIT: &str = "#!/r/bin/busybox sh
/r/bin/busybox mount --bind /r /r || exec /r/bin/busybox echo 'SKIFF-CHECK fail vm/stage1 mount --bind /r /r failed'
cd /r
/r/bin/busybox mount --move . / || exec /r/bin/busybox echo 'SKIFF-CHECK fail vm/stage1 mount --move /r / failed'
exec /r/bin/busybox chroot . /bin/busybox sh /init
";

/// Debian's statically linked busybox (package busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// Kernel console lines that mean the guest is broken whatever it printed otherwise.
pub const KERNEL_TROUBLE: &[&str] = &["Kernel panic", "Oops:", "BUG:", "general protection fault"];

/// Debian's cloud kernel, unpacked.
pub struct Kernel {
    pub vmlinuz: PathBuf,
    /// `<unpacked package>/lib/modules/<release>`
    pub modules: PathBuf,
    /// `uname -r` in the guest.
    pub release: String,
    pub config: PathBuf,
    pub package: String,
}

impl Kernel {
    /// Debian's newest cached or available `linux-image-6.12.*-cloud-amd64-unsigned`, unpacked into
    /// the cache once (`fallback_cache`: where, when /var/cache/skiff-vm is not writable).
    pub fn fetch(fallback_cache: &Path) -> Result<Kernel> {
        let cache = cache_dir(fallback_cache);
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
        let release =
            vmlinuz.file_name().unwrap().to_string_lossy()["vmlinuz-".len()..].to_string();
        Ok(Kernel {
            vmlinuz,
            modules: root.join("lib/modules").join(&release),
            release,
            config,
            package,
        })
    }

    /// Fails naming every `(option, value)` the kernel's config lacks (`value`: `y` or `m`).
    pub fn require_config(&self, options: &[(&str, &str)]) -> Result<()> {
        let text = fs::read_to_string(&self.config)
            .with_context(|| format!("reading {}", self.config.display()))?;
        let missing: Vec<String> = options
            .iter()
            .filter(|(o, v)| !text.lines().any(|l| l == format!("{o}={v}")))
            .map(|(o, v)| format!("{o}={v}"))
            .collect();
        ensure!(
            missing.is_empty(),
            "kernel config {} lacks {}",
            self.config.display(),
            missing.join(" ")
        );
        Ok(())
    }

    /// A module of the package (path under `kernel/`, e.g. `kernel/block/bfq.ko.xz`),
    /// decompressed.
    pub fn module(&self, path: &str) -> Result<Vec<u8>> {
        let path = self.modules.join(path);
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
        Ok(out.stdout)
    }
}

fn cache_dir(fallback: &Path) -> PathBuf {
    if let Ok(dir) = std::env::var("SKIFF_VM_CACHE")
        && !dir.is_empty()
    {
        return PathBuf::from(dir);
    }
    let system = Path::new("/var/cache/skiff-vm");
    if fs::create_dir_all(system).is_ok() && writable(system) {
        system.to_path_buf()
    } else {
        fallback.to_path_buf()
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

/// Debian's static busybox, checked to be static (it runs before any library is in place).
pub fn busybox() -> Result<Vec<u8>> {
    let busybox = fs::read(BUSYBOX).with_context(|| {
        format!(
            "reading {BUSYBOX}: install Debian's busybox-static (apt-get install -y busybox-static)"
        )
    })?;
    ensure!(
        elf_interpreter(&busybox)?.is_none(),
        "{BUSYBOX} is dynamically linked: install busybox-static instead of busybox"
    );
    Ok(busybox)
}

/// The applets busybox provides (the names to link to it).
pub fn busybox_applets() -> Result<Vec<String>> {
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

/// The binary without its DWARF sections (`strip --strip-debug -o scratch`, binutils, which the
/// Rust linker needs anyway): debug builds shrink to a fraction, and every MB is unpacked under
/// TCG at boot. The code is untouched. Falls back to the binary as it is when strip is missing.
pub fn without_debug_info(bin: &Path, scratch: &Path) -> Result<Vec<u8>> {
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(scratch)
        .arg(bin)
        .stderr(Stdio::null())
        .status();
    let path = match status {
        Ok(s) if s.success() => scratch,
        _ => bin,
    };
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()));
    if path == scratch {
        let _ = fs::remove_file(scratch);
    }
    data
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

/// A qemu guest running, its serial console (ttyS0 on qemu's stdout) collected as it comes.
/// Dropping it kills qemu.
pub struct Vm {
    child: Child,
    serial: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<String>>,
}

/// How to boot a guest: the kernel, the initramfs and qemu's settings.
pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    /// The kernel command line (`console=ttyS0` is added).
    pub append: &'a str,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Further qemu arguments, e.g. `-nic …` (without any, the guest has no network).
    pub args: Vec<String>,
}

impl Vm {
    /// Starts `qemu` (a command for qemu-system-x86_64, e.g. one entering a network namespace).
    ///
    /// `-accel tcg,thread=single`: with multi-threaded TCG (qemu's default) the guest kernel now
    /// and then oopses on an int3 in the scheduler right after a cgroup write flips a static key
    /// (live code patching racing the other vCPU: seen 2 times in ~10 boots with qemu 7.2). One
    /// host thread running the vCPUs in turn never did. `-cpu max`: every CPU feature TCG
    /// emulates, so a binary built for a newer x86-64 level runs.
    pub fn start(mut qemu: Command, boot: &Boot) -> Result<Vm> {
        qemu.args(["-accel", "tcg,thread=single", "-cpu", "max"])
            .args(["-m", &boot.memory_mib.to_string()])
            .args(["-smp", &boot.cpus.to_string()])
            .args(["-nographic", "-no-reboot"]);
        if boot.args.is_empty() {
            // No network, and no iPXE option ROM to load at boot.
            qemu.args(["-nic", "none"]);
        }
        let mut child = qemu
            .args(&boot.args)
            .arg("-kernel")
            .arg(boot.vmlinuz)
            .arg("-initrd")
            .arg(boot.initrd)
            .arg("-append")
            .arg(format!("console=ttyS0 {}", boot.append))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting qemu-system-x86_64")?;
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
        Ok(Vm {
            child,
            serial,
            reader: Some(reader),
            stderr: Some(stderr),
        })
    }

    /// Everything the guest wrote on its serial console so far.
    pub fn serial(&self) -> String {
        String::from_utf8_lossy(&self.serial.lock().unwrap()).into_owned()
    }

    /// qemu's exit status once it has exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits for qemu to exit (the guest powered off) until `deadline`; then kills it. Returns
    /// the serial console, with a `SKIFF-CHECK fail vm/timeout` line when it was killed.
    pub fn wait(mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let serial = self.serial();
        match status {
            // Keep what was printed: the caller reports the checks that did run.
            None => Ok(format!(
                "{serial}\nSKIFF-CHECK fail vm/timeout qemu killed after {}s\n",
                timeout.as_secs()
            )),
            Some(s) if !s.success() => bail!(
                "qemu exited with {s}: {}\nserial output:\n{}",
                stderr.trim(),
                tail(&serial, 40)
            ),
            Some(_) => Ok(serial),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `name` in a directory of PATH.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// qemu-system-x86_64, or an error saying which package provides it.
pub fn qemu() -> Result<PathBuf> {
    find_in_path("qemu-system-x86_64").context(
        "qemu-system-x86_64 not found in PATH: install Debian's qemu-system-x86 (apt-get install -y qemu-system-x86)",
    )
}

/// A `cpio -H newc` archive (the initramfs format), built in memory. Parent directories are added
/// before their children automatically.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    dirs: BTreeSet<String>,
    /// Libraries added, so that two binaries sharing one add it once.
    libs: BTreeSet<String>,
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

    /// A host binary at `path` under `root` (e.g. `r`), without its debug info, with the
    /// libraries ldd names for it at their own paths (the loader included). `scratch`: a file
    /// the stripped copy may be written to.
    pub fn binary(&mut self, root: &str, path: &str, host: &Path, scratch: &Path) -> Result<()> {
        let bin = without_debug_info(host, scratch)?;
        if elf_interpreter(&bin)?.is_some() {
            self.libraries(root, host)?;
        }
        self.file(&format!("{root}{path}"), 0o755, &bin);
        Ok(())
    }

    /// The libraries ldd names for `host` at their own paths under `root`.
    pub fn libraries(&mut self, root: &str, host: &Path) -> Result<()> {
        for lib in shared_libraries(host)? {
            let path = format!("{root}{}", lib.display());
            if self.libs.insert(path.clone()) {
                let data = fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
                self.file(&path, 0o755, &data);
            }
        }
        Ok(())
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
