//! Attacks on the runtime from inside a bundle, of the classes runc has had to fix: mount targets
//! swapped for symlinks while the container is set up (CVE-2021-30465), a planted /dev/null
//! bound over masked paths (CVE-2025-31133), sysctl writes redirected out of procfs
//! (CVE-2025-52881), a fork bomb outliving `kill --all`, fds of the runtime reaching the
//! container, and a program that is /proc/self/exe (CVE-2019-5736).

mod common;
use common::*;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A thread that keeps exchanging `a` and `b` (in the same directory) until dropped.
struct Flipper {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Flipper {
    fn start(a: &Path, b: &Path) -> Flipper {
        let stop = Arc::new(AtomicBool::new(false));
        let (a, b, s) = (a.to_path_buf(), b.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut flips = 0;
            while !s.load(Ordering::Relaxed) {
                nix::fcntl::renameat2(
                    nix::fcntl::AT_FDCWD,
                    &a,
                    nix::fcntl::AT_FDCWD,
                    &b,
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                )
                .expect("exchange");
                flips += 1;
            }
            flips
        });
        Flipper {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map(|t| t.join().unwrap()).unwrap_or(0)
    }
}

impl Drop for Flipper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A container sharing a volume with us swaps its mount point between a directory and a
/// symlink to a host directory while containers are created: the mount must always land inside
/// the container's root, never on the host directory.
#[test]
fn a_mount_point_swapped_for_a_symlink_never_lands_outside_the_root() {
    let runc = Runc::new();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("marker"), "host\n").unwrap();
    let b = Bundle::new(&[
        "sh",
        "-c",
        "grep size=12k /proc/self/mountinfo | cut -d' ' -f5",
    ])
    .with(|c| {
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(json!({"destination": "/vol/mnt", "type": "tmpfs", "source": "tmpfs", "options": ["size=12k"]}));
    });
    let vol = b.path().join("rootfs/vol");
    std::fs::create_dir_all(vol.join("mnt")).unwrap();
    std::os::unix::fs::symlink(host.path(), vol.join("alt")).unwrap();
    let mut flipper = Flipper::start(&vol.join("mnt"), &vol.join("alt"));
    let inside_link = host.path().display().to_string();
    let mut ran = 0;
    for _ in 0..40 {
        let (code, out, err) = b.run(&runc, &unique("swap"));
        if code != 0 {
            // Losing the race may fail the create (a clear error); it must never escape.
            assert!(err.contains("mounts["), "unexpected failure: {err}");
            continue;
        }
        ran += 1;
        let at = out.trim();
        assert!(
            // The directory mounted on may have been renamed to alt since: still inside.
            at == "/vol/mnt" || at == "/vol/alt" || at == inside_link,
            "the tmpfs is not inside the container (mounted at {at:?}): it went outside the root"
        );
        assert_eq!(
            std::fs::read_to_string(host.path().join("marker")).unwrap(),
            "host\n"
        );
    }
    let flips = flipper.stop();
    assert!(
        ran > 0 && flips > 0,
        "ran {ran} containers over {flips} swaps"
    );
    let leaked = host_mounts_under(&[host.path(), b.path()]);
    assert!(leaked.is_empty(), "mounts reached the host: {leaked:?}");
}

/// The container's /dev is `dir` of the bundle instead of a tmpfs (in place, so /dev/pts and
/// the others still go on top of it).
fn bind_dev(config: &mut serde_json::Value, dir: &Path) {
    for m in config["mounts"].as_array_mut().unwrap() {
        if m["destination"] == "/dev" {
            *m =
                json!({"destination": "/dev", "type": "bind", "source": dir, "options": ["rbind"]});
        }
    }
}

/// An image whose /dev comes from the bundle, with /dev/null planted as a symlink or a file:
/// the masked paths must still be masked by the real null device.
#[test]
fn a_planted_dev_null_never_masks_paths() {
    let runc = Runc::new();
    for planted in ["symlink", "file"] {
        let dev = tempfile::tempdir().unwrap();
        let null = dev.path().join("null");
        match planted {
            "symlink" => std::os::unix::fs::symlink("/proc/sys/kernel/hostname", &null).unwrap(),
            _ => std::fs::write(&null, "planted\n").unwrap(),
        }
        let out = Bundle::sh(
            &runc,
            "echo \"[$(cat /proc/timer_list)]\"; echo x > /proc/timer_list && cat /proc/timer_list",
            |c| {
                c["hostname"] = json!("leaked-hostname");
                bind_dev(c, dev.path());
            },
        );
        assert_eq!(
            out, "[]\n",
            "{planted}: /proc/timer_list is not masked by /dev/null"
        );
        assert!(!std::fs::read_to_string(&null).is_ok_and(|s| s.contains('x')));
    }
}

/// A bind mount over /proc/sys/kernel redirects a sysctl to a host file: refused, and the host
/// file is untouched.
#[test]
fn a_sysctl_redirected_out_of_procfs_is_refused() {
    let runc = Runc::new();
    let host = tempfile::tempdir().unwrap();
    let file = host.path().join("domainname");
    std::fs::write(&file, "host-file\n").unwrap();
    let b = Bundle::new(&["true"]).with(|c| {
        c["linux"]["sysctl"] = json!({"kernel.domainname": "written"});
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(json!({"destination": "/proc/sys/kernel", "type": "bind", "source": host.path(), "options": ["bind"]}));
    });
    let (code, _, err) = b.run(&runc, &unique("sysctl"));
    assert_ne!(code, 0, "the sysctl was written through a bind mount");
    assert!(err.contains("linux.sysctl: kernel.domainname"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "host-file\n");

    // An image whose /dev/console is a symlink into /proc gets no console bound there.
    let link = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/proc/sys/kernel/core_pattern", link.path().join("console"))
        .unwrap();
    std::os::unix::fs::symlink("pts/ptmx", link.path().join("ptmx")).unwrap();
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let b = Bundle::new(&["true"]).with(|c| {
        c["process"]["terminal"] = json!(true);
        bind_dev(c, link.path());
    });
    let (code, _, err) = b.run(&runc, &unique("console"));
    assert_ne!(code, 0);
    assert!(
        err.contains("/dev/console") || err.contains("devpts"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        core_pattern
    );
}

/// A runaway forker: eight chains of processes that each fork and exit at once (so a pid read
/// from cgroup.procs is usually gone by the time it is signalled), under a subreaper that reaps
/// them as fast as they go (so the pids limit does not slow them down).
const BOMB_C: &str = r#"
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    for (int i = 0; i < 8; i++)
        if (fork() == 0)
            for (;;) if (fork() > 0) _exit(0);
    for (;;) wait(0);
}
"#;

/// The bomb, built once with the C compiler as a static binary.
fn bomb() -> std::path::PathBuf {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let src = dir.join("bomb.c");
        let bin = dir.join(format!("bomb-{}", std::process::id()));
        std::fs::write(&src, BOMB_C).unwrap();
        let out = std::process::Command::new("cc")
            .args(["-static", "-O1", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .expect("cc is missing: install Debian's gcc and libc6-dev (static libc)");
        assert!(
            out.status.success(),
            "cc -static failed (needs libc6-dev): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
    .clone()
}

/// A fork bomb in a container without its own pid namespace (so nothing dies with its init):
/// `kill --all` must stop every process, with SIGTERM (freeze, signal, thaw on the v1 freezer)
/// and with SIGKILL (cgroup.kill).
#[test]
fn kill_all_stops_a_fork_bomb() {
    let runc = Runc::new();
    for signal in ["TERM", "KILL"] {
        let cg = format!("/skiff-test-{}", unique("bomb"));
        let b = Bundle::new(&["/bomb"]).with(|c| {
            c["linux"]["cgroupsPath"] = json!(cg);
            // Bounded, so the host never feels it.
            c["linux"]["resources"] = json!({"pids": {"limit": 512}});
            c["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .retain(|n| n["type"] != "pid");
        });
        std::fs::copy(bomb(), b.path().join("rootfs/bomb")).unwrap();
        let id = unique("bomb");
        runc.ok(&["run", "--detach", "--bundle", b.path_str(), &id]);
        // The init itself is gone at once: the cgroup is the truth.
        let procs = format!("/sys/fs/cgroup/pids{cg}/cgroup.procs");
        let count = || std::fs::read_to_string(&procs).map_or(0, |p| p.lines().count());
        wait_until(10, || count() >= 5);
        std::thread::sleep(std::time::Duration::from_millis(300));
        runc.ok(&["kill", "--all", &id, signal]);
        // Survivors of a one-shot kill keep forking for ever: 10 s tells them apart from a
        // loaded machine's slow exits.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while count() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(count(), 0, "{signal}: processes survived kill --all");
        runc.ok(&["delete", "--force", &id]);
        assert!(cgroup_dirs(&cg).is_empty(), "{signal}: cgroups left");
    }
}

/// A cgroup that cannot be removed (here: it has a child) fails `delete`, which keeps the
/// container's state so that a later delete finishes the job.
#[test]
fn delete_keeps_the_state_when_the_cgroup_stays() {
    let runc = Runc::new();
    let cg = format!("/skiff-test-{}", unique("stay"));
    let b = Bundle::new(&["true"]).with(|c| c["linux"]["cgroupsPath"] = json!(cg));
    let id = unique("stay");
    runc.ok(&["create", "--bundle", b.path_str(), &id]);
    let child = format!("/sys/fs/cgroup/memory{cg}/held");
    std::fs::create_dir(&child).unwrap();
    let out = runc.run(&["delete", "--force", &id]);
    let err = String::from_utf8_lossy(&out.stderr);
    let held = std::fs::remove_dir(&child);
    assert!(
        !out.status.success(),
        "delete forgot a cgroup that is still there"
    );
    assert!(
        err.contains("remove cgroup") && err.contains("memory"),
        "{err}"
    );
    assert_eq!(runc.status(&id), "stopped");
    held.unwrap();
    runc.ok(&["delete", &id]);
    assert!(cgroup_dirs(&cg).is_empty());
}

/// A seccomp filter making open_tree and close_range answer ENOSYS, as on a kernel before
/// 5.11: the runtime must fall back to a sealed memfd copy of itself and to walking
/// /proc/self/fd.
fn old_kernel_filter() -> Vec<u8> {
    use libseccomp::{ScmpAction, ScmpFilterContext, ScmpSyscall};
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).unwrap();
    for name in ["open_tree", "close_range"] {
        ctx.add_rule(
            ScmpAction::Errno(libc::ENOSYS),
            ScmpSyscall::from_name(name).unwrap(),
        )
        .unwrap();
    }
    let mut file = tempfile::tempfile().unwrap();
    ctx.export_bpf(&file).unwrap();
    use std::io::{Read, Seek};
    file.seek(std::io::SeekFrom::Start(0)).unwrap();
    let mut bpf = vec![];
    file.read_to_end(&mut bpf).unwrap();
    bpf
}

/// Runs skiff-runc under the old-kernel filter with a stray descriptor 9 (not close-on-exec)
/// inherited from us, capturing stdout and stderr in files.
fn run_on_old_kernel(runc: &Runc, bpf: &[u8], args: &[&str]) -> std::process::Output {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let stray = std::fs::File::open("/etc/hostname").unwrap();
    let (stray_fd, prog_ptr, prog_len) = (stray.as_raw_fd(), bpf.as_ptr() as usize, bpf.len() / 8);
    let (out, err) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
    let mut cmd = runc.cmd();
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap());
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(stray_fd, 9) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let prog = libc::sock_fprog {
                len: prog_len as u16,
                filter: prog_ptr as *mut libc::sock_filter,
            };
            if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().expect("spawn skiff-runc");
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut v = vec![];
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    };
    drop(stray);
    std::process::Output {
        status,
        stdout: read(out),
        stderr: read(err),
    }
}

/// The fds a container's process holds, with what they point to, as `ls -l` shows them.
fn container_fds(listing: &str) -> Vec<(u32, String)> {
    listing
        .lines()
        .filter_map(|l| {
            let (name, target) = l.split_once(" -> ")?;
            Some((name.rsplit(' ').next()?.parse().ok()?, target.to_string()))
        })
        .collect()
}

/// Without open_tree and close_range the runtime still runs from a copy its containers cannot
/// write, and no descriptor it had reaches the container unless preserved.
#[test]
fn on_an_old_kernel_no_fd_leaks_and_the_binary_stays_sealed() {
    let runc = Runc::new();
    let bpf = old_kernel_filter();
    let b = Bundle::new(&["ls", "-l", "/proc/self/fd"]);
    let id = unique("fds");
    let out = run_on_old_kernel(&runc, &bpf, &["run", "--bundle", b.path_str(), &id]);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fds = container_fds(&listing);
    assert!(fds.len() >= 3, "{listing}");
    for (fd, target) in &fds {
        // 0-2 are stdio; ls holds one more for the directory it lists.
        assert!(
            *fd <= 2 || target.ends_with("/fd"),
            "fd {fd} -> {target} leaked into the container:\n{listing}"
        );
    }
    // Preserved on purpose, it gets through.
    let id = unique("fds");
    let out = run_on_old_kernel(
        &runc,
        &bpf,
        &["run", "--preserve-fds", "7", "--bundle", b.path_str(), &id],
    );
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        container_fds(&listing)
            .iter()
            .any(|(fd, t)| *fd == 9 && t == "/etc/hostname"),
        "{listing}"
    );
    let out = runc.run(&[
        "run",
        "--preserve-fds",
        "-1",
        "--bundle",
        b.path_str(),
        &unique("neg"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--preserve-fds: -1 is negative"),
        "{err}"
    );

    // The created container's init still runs our binary: a sealed memfd, not writable.
    let b = Bundle::new(&["sleep", "1000"]);
    let id = unique("sealed");
    let out = run_on_old_kernel(&runc, &bpf, &["create", "--bundle", b.path_str(), &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = runc.state(&id)["pid"].as_i64().unwrap();
    let exe = format!("/proc/{pid}/exe");
    let target = std::fs::read_link(&exe).unwrap();
    assert!(
        target.to_string_lossy().starts_with("/memfd:skiff-runc"),
        "{target:?}"
    );
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(&exe)
        .expect_err("the runtime binary could be opened for writing");
    assert!(
        matches!(err.raw_os_error(), Some(libc::EPERM) | Some(libc::ETXTBSY)),
        "{err}"
    );
    runc.ok(&["delete", "--force", &id]);
}

/// CVE-2019-5736 through the program itself: `run` execs it through the sealed trampoline (no
/// re-exec of the runtime), so a program that is /proc/self/exe finds the trampoline, never the
/// runtime's binary. The trampoline passes argv[0] and the arguments on unchanged.
#[test]
fn a_program_that_is_proc_self_exe_never_runs_the_runtime() {
    let runc = Runc::new();
    let b = Bundle::new(&["/proc/self/exe", "--version"]);
    let (code, out, err) = b.run(&runc, &unique("selfexe"));
    // The trampoline execs itself twice, then "--version" as a path: not found.
    assert_eq!(code, 127, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("skiff-runc: exec failed"), "{err}");
    assert!(
        !out.contains("version"),
        "the runtime ran in the container: {out}"
    );

    let out = Bundle::sh(&runc, "echo \"$0 $*\"; readlink /proc/self/exe", |c| {
        let args = c["process"]["args"].as_array_mut().unwrap();
        args.extend([json!("zero"), json!("one"), json!("two")]);
    });
    assert_eq!(out, "zero one two\n/bin/busybox\n");
}
