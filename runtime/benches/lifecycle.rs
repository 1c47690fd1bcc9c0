//! `cargo bench -p skiff-runtime --bench lifecycle` (as root): `run` of /bin/true in one busybox
//! bundle with skiff-runc, Debian's runc and crun, interleaved round by round, printing the median
//! and p90 wall time and the peak RSS of each runtime's process tree side by side.
//!
//! crun refuses this host's hybrid cgroup layout (hugetlb on the cgroup2 mount), so the whole
//! benchmark runs in a private mount namespace with /sys/fs/cgroup/unified unmounted: every
//! runtime sees the same plain v1 layout.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const ROUNDS: usize = 60;

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the lifecycle benchmark runs containers: run it as root"
    );
    let mut runtimes: Vec<(&str, PathBuf)> = vec![(
        "skiff-runc",
        PathBuf::from(env!("CARGO_BIN_EXE_skiff-runc")),
    )];
    for (name, path) in [("runc", "/usr/sbin/runc"), ("crun", "/usr/bin/crun")] {
        if Path::new(path).exists() {
            runtimes.push((name, PathBuf::from(path)));
        } else {
            eprintln!("{path} missing (apt-get install -y {name}): not compared");
        }
    }
    private_cgroup_v1_view();
    let bundle = tempfile::tempdir().unwrap();
    make_bundle(bundle.path(), &runtimes[0].1);
    let root = tempfile::Builder::new()
        .prefix("skiff-bench")
        .tempdir_in("/run")
        .unwrap();
    let extra: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let verbs: Vec<&str> = if extra.iter().any(|a| a == "exec") {
        vec!["run", "exec"]
    } else {
        vec!["run"]
    };

    for verb in verbs {
        let mut samples: Vec<Vec<(f64, i64)>> = vec![vec![]; runtimes.len()];
        for round in 0..ROUNDS + 3 {
            for (i, (name, bin)) in runtimes.iter().enumerate() {
                let id = format!("bench-{name}-{round}");
                let sample = match verb {
                    "run" => timed(
                        Command::new(bin)
                            .arg("--root")
                            .arg(root.path().join(name))
                            .args(["run", "--bundle"])
                            .arg(bundle.path())
                            .arg(&id),
                    ),
                    _ => exec_sample(bin, &root.path().join(name), bundle.path(), &id),
                };
                // The first rounds warm the page cache and are not counted.
                if round >= 3 {
                    samples[i].push(sample);
                }
            }
        }
        println!(
            "\n{verb} /bin/true, {ROUNDS} rounds interleaved, private mount ns with cgroup v1 only"
        );
        println!(
            "{:<12} {:>12} {:>12} {:>16}",
            "runtime", "median ms", "p90 ms", "peak RSS KiB"
        );
        for (i, (name, _)) in runtimes.iter().enumerate() {
            let mut times: Vec<f64> = samples[i].iter().map(|s| s.0).collect();
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let rss = samples[i].iter().map(|s| s.1).max().unwrap_or(0);
            println!(
                "{:<12} {:>12.2} {:>12.2} {:>16}",
                name,
                times[times.len() / 2],
                times[times.len() * 9 / 10],
                rss
            );
        }
    }
}

/// Runs a command to completion: wall milliseconds and the peak RSS of its process tree.
/// Reaped with wait4 rather than Child::wait, for the rusage of that one child.
#[allow(clippy::zombie_processes)]
fn timed(cmd: &mut Command) -> (f64, i64) {
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn runtime");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers.
    let r = unsafe { libc::wait4(pid.as_raw(), &mut status, 0, &mut usage) };
    let elapsed = start.elapsed().as_secs_f64() * 1000.0;
    assert!(
        r > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "runtime failed: status {status}"
    );
    (elapsed, usage.ru_maxrss)
}

/// `exec /bin/true` into a running container (created once per sample, outside the timing).
fn exec_sample(bin: &Path, root: &Path, bundle: &Path, id: &str) -> (f64, i64) {
    let cfg = bundle.join("config.json");
    let original = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        original.replace("\"/bin/true\"", "\"/bin/sleep\", \"1000\""),
    )
    .unwrap();
    let ok = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(["run", "-d", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    std::fs::write(&cfg, original).unwrap();
    assert!(ok.success(), "{} run -d failed", bin.display());
    let sample = timed(
        Command::new(bin)
            .arg("--root")
            .arg(root)
            .args(["exec", id, "/bin/true"]),
    );
    let _ = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args(["delete", "--force", id])
        .status();
    sample
}

fn private_cgroup_v1_view() {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare mount namespace");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None::<&str>,
    )
    .expect("make / private");
    if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        umount2("/sys/fs/cgroup/unified", MntFlags::MNT_DETACH)
            .expect("unmount /sys/fs/cgroup/unified");
    }
}

fn make_bundle(dir: &Path, skiff: &Path) {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("/bin/busybox (apt-get install -y busybox-static)");
    for applet in ["true", "sleep", "sh"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let ok = Command::new(skiff)
        .args(["spec", "--bundle"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(ok.success());
    let cfg = dir.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    // Debian's crun 1.8 knows runtime-spec versions up to 1.0.x only.
    spec["ociVersion"] = "1.0.2-dev".into();
    spec["process"]["terminal"] = false.into();

    spec["process"]["args"] = serde_json::json!(["/bin/true"]);
    std::fs::write(&cfg, serde_json::to_string_pretty(&spec).unwrap()).unwrap();
}
