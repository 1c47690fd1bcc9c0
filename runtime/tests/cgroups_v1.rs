//! cgroups on this host's layout: v1 hierarchies plus hugetlb on the cgroup2 mount (a hybrid).
//! The same checks on a cgroup2-only machine run in the VM of `cgroup_v2_vm.rs`.

mod common;
use common::*;
use serde_json::json;
use std::os::unix::process::CommandExt;
use std::path::Path;

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("read {}: {e}", path.as_ref().display()))
        .trim()
        .to_string()
}

const V1: &str = "/sys/fs/cgroup";

#[test]
fn resources_are_written_and_removed_on_delete() {
    let runc = Runc::new();
    let cg = format!("/skiff-test-{}", unique("res"));
    let b = Bundle::new(&["sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max; sleep 1000"]).with(|c| {
        c["linux"]["cgroupsPath"] = json!(format!("{cg}/c"));
        c["linux"]["resources"] = json!({
            "memory": {"limit": 200 << 20, "reservation": 50 << 20, "swap": 300 << 20, "swappiness": 10, "kernelTCP": 32 << 20},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
            "pids": {"limit": 42},
            "blockIO": {"throttleReadBpsDevice": [{"major": 254, "minor": 0, "rate": 1048576}]},
            "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
            "devices": [{"allow": false, "access": "rwm"}]
        });
    });
    let id = unique("res");
    runc.ok(&["create", "--bundle", b.path_str(), &id]);
    let pid = runc.state(&id)["pid"].as_i64().unwrap().to_string();
    let dir = |ctrl: &str| format!("{V1}/{ctrl}{cg}/c");
    assert_eq!(
        read(format!("{}/memory.limit_in_bytes", dir("memory"))),
        (200u64 << 20).to_string()
    );
    assert_eq!(
        read(format!("{}/memory.soft_limit_in_bytes", dir("memory"))),
        (50u64 << 20).to_string()
    );
    assert_eq!(
        read(format!("{}/memory.memsw.limit_in_bytes", dir("memory"))),
        (300u64 << 20).to_string()
    );
    assert_eq!(read(format!("{}/memory.swappiness", dir("memory"))), "10");
    assert_eq!(
        read(format!("{}/memory.kmem.tcp.limit_in_bytes", dir("memory"))),
        (32u64 << 20).to_string()
    );
    assert_eq!(read(format!("{}/cpu.shares", dir("cpu"))), "512");
    assert_eq!(read(format!("{}/cpu.cfs_quota_us", dir("cpu"))), "50000");
    assert_eq!(read(format!("{}/cpu.cfs_period_us", dir("cpu"))), "100000");
    assert_eq!(read(format!("{}/cpuset.cpus", dir("cpuset"))), "0");
    assert_eq!(read(format!("{}/cpuset.mems", dir("cpuset"))), "0");
    assert_eq!(read(format!("{}/pids.max", dir("pids"))), "42");
    assert_eq!(
        read(format!("{}/blkio.throttle.read_bps_device", dir("blkio"))),
        "254:0 1048576"
    );
    // hugetlb lives on the cgroup2 mount of this hybrid host.
    assert_eq!(
        read(format!("{}/hugetlb.2MB.max", dir("unified"))),
        "4194304"
    );
    let devices = read(format!("{}/devices.list", dir("devices")));
    assert!(
        devices.contains("c 1:3 rwm") && !devices.contains("a *:* rwm"),
        "{devices}"
    );
    // The init sits in every hierarchy's cgroup, including the cgroup2 one.
    for ctrl in [
        "memory", "cpu", "cpuset", "pids", "blkio", "devices", "freezer", "systemd", "unified",
    ] {
        assert!(
            read(format!("{}/cgroup.procs", dir(ctrl)))
                .lines()
                .any(|l| l == pid),
            "{ctrl}: init not in the cgroup"
        );
    }
    runc.ok(&["start", &id]);
    runc.ok(&["delete", "--force", &id]);
    for ctrl in ["memory", "cpu", "cpuset", "pids", "unified", "systemd"] {
        assert!(!Path::new(&dir(ctrl)).exists(), "{} left behind", dir(ctrl));
        assert!(
            !Path::new(&format!("{V1}/{ctrl}{cg}")).exists(),
            "parent {cg} left behind in {ctrl}"
        );
    }
}

/// The init and an exec'd process join their v1 cgroups themselves, through `tasks` files the
/// runtime opened: in a user namespace too, where their own credentials could not open them.
#[test]
fn processes_in_a_user_namespace_join_every_hierarchy() {
    let runc = Runc::new();
    let cg = format!("/skiff-test-{}", unique("userns-cg"));
    let b = Bundle::new(&["sleep", "1000"]).with(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["cgroupsPath"] = json!(cg);
    });
    let id = unique("userns-cg");
    runc.ok(&["run", "--detach", "--bundle", b.path_str(), &id]);
    let init = runc.state(&id)["pid"].as_i64().unwrap().to_string();
    let pid_file = b.path().join("exec.pid");
    runc.ok(&[
        "exec",
        "--detach",
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
        "sleep",
        "1000",
    ]);
    let exec = read(&pid_file);
    let dirs = cgroup_dirs(&cg);
    // Every v1 hierarchy of this host, and the hybrid's cgroup2 one.
    assert_eq!(
        dirs.len(),
        read("/proc/self/cgroup").lines().count(),
        "{dirs:?}"
    );
    for dir in dirs {
        let procs = read(dir.join("cgroup.procs"));
        for pid in [&init, &exec] {
            assert!(
                procs.lines().any(|l| l == pid),
                "{pid} not in {}: {procs}",
                dir.display()
            );
        }
    }
    runc.ok(&["delete", "--force", &id]);
    assert!(cgroup_dirs(&cg).is_empty(), "{cg} left behind");
}

#[test]
fn the_container_sees_its_own_cgroup_and_limits() {
    let runc = Runc::new();
    let cg = format!("/skiff-test-{}", unique("inside"));
    let out = Bundle::sh(
        &runc,
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max; grep -c ':/$' /proc/self/cgroup; \
         for i in 1 2 3 4 5 6 7 8; do sleep 5 & done 2>&1 | grep -c 'Resource temporarily unavailable'; true",
        |c| {
            c["linux"]["cgroupsPath"] = json!(cg);
            c["linux"]["resources"] = json!({"memory": {"limit": 64 << 20}, "pids": {"limit": 5}});
        },
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], (64u64 << 20).to_string());
    assert_eq!(lines[1], "5");
    // With a cgroup namespace every hierarchy shows "/" as our own cgroup.
    assert_eq!(
        lines[2],
        read("/proc/self/cgroup").lines().count().to_string()
    );
}

/// The read-only `type: cgroup` mount of runc's default spec, with and without a cgroup
/// namespace: each hierarchy (and the hybrid's cgroup2 at unified/) shows the container's own
/// cgroup, which it cannot write to; without a namespace, its directory as the host names it.
#[test]
fn the_cgroup_mount_is_the_containers_own_and_read_only() {
    let runc = Runc::new();
    for cgroupns in [true, false] {
        let cg = format!("/skiff-test-{}", unique("romount"));
        let out = Bundle::sh(
            &runc,
            "cd /sys/fs/cgroup; cat memory/memory.limit_in_bytes;              for h in memory pids unified; do grep -qx $$ $h/cgroup.procs && echo $h-lists-self; done;              awk '$5 == \"/sys/fs/cgroup/memory\" { split($6, o, \",\"); print $4, o[1] }' /proc/self/mountinfo;              sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup;              (echo 1 > memory/memory.limit_in_bytes) 2>&1 | sed 's/.*: //';              mkdir x 2>&1 | sed 's/.*: //'",
            |c| {
                c["linux"]["cgroupsPath"] = json!(cg);
                c["linux"]["resources"] = json!({"memory": {"limit": 64 << 20}});
                if !cgroupns {
                    let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
                    ns.retain(|n| n["type"] != "cgroup");
                }
            },
        );
        let own = if cgroupns { "/" } else { cg.as_str() };
        let want = format!(
            "{}\nmemory-lists-self\npids-lists-self\nunified-lists-self\n{own} ro\n{own}\n\
             Read-only file system\nRead-only file system",
            64u64 << 20
        );
        assert_eq!(out.trim(), want, "cgroup namespace: {cgroupns}");
    }
}

#[test]
fn relative_cgroups_path_is_under_our_own_cgroup() {
    let runc = Runc::new();
    let rel = unique("skiff-rel");
    let b = Bundle::new(&["sleep", "1000"]).with(|c| {
        c["linux"]["cgroupsPath"] = json!(format!("{rel}/c"));
        c["linux"]["resources"] = json!({"pids": {"limit": 9}});
    });
    let id = unique("rel");
    runc.ok(&["create", "--bundle", b.path_str(), &id]);
    // Our own pids cgroup, as /proc/self/cgroup says.
    let own = read("/proc/self/cgroup")
        .lines()
        .find_map(|l| {
            l.strip_prefix("8:pids:")
                .or_else(|| l.split_once(":pids:").map(|x| x.1))
        })
        .unwrap_or("/")
        .to_string();
    let dir = Path::new(V1)
        .join("pids")
        .join(own.trim_start_matches('/'))
        .join(&rel)
        .join("c");
    assert_eq!(read(dir.join("pids.max")), "9");
    runc.ok(&["delete", "--force", &id]);
    assert!(!dir.exists());
}

#[test]
fn device_rules_are_enforced() {
    let runc = Runc::new();
    let out = Bundle::sh(
        &runc,
        "head -c1 /dev/null && echo null-ok; mknod /dev/blk b 7 0; head -c1 /dev/blk 2>&1 | grep -c 'not permitted'; \
         mknod /dev/mem2 c 1 1; head -c1 /dev/mem2 2>&1 | grep -c 'not permitted'; \
         mknod /dev/kmsg2 c 1 11; head -c1 /dev/kmsg2 >/dev/null 2>&1; echo kmsg-read-$?",
        |c| {
            c["linux"]["resources"] = json!({"devices": [
                {"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 11, "access": "r"}
            ]});
            c["process"]["capabilities"]["bounding"]
                .as_array_mut()
                .unwrap()
                .push(json!("CAP_MKNOD"));
            c["process"]["capabilities"]["effective"]
                .as_array_mut()
                .unwrap()
                .push(json!("CAP_MKNOD"));
            c["process"]["capabilities"]["permitted"]
                .as_array_mut()
                .unwrap()
                .push(json!("CAP_MKNOD"));
            c["root"]["readonly"] = json!(false);
        },
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "null-ok");
    assert_eq!(lines[1], "1", "block device 7:0 must be denied: {out}");
    assert_eq!(lines[2], "1", "/dev/mem must be denied: {out}");
    assert_ne!(lines[3], "kmsg-read-1 not permitted", "{out}");
}

/// True when the host offers a proportional-weight I/O scheduler (BFQ) to blkio: one of its block
/// devices lists it, or the blkio root already has a weight file.
fn host_has_bfq() -> bool {
    let listed = std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
        .any(|d| {
            std::fs::read_to_string(d.path().join("queue/scheduler")).is_ok_and(|s| {
                s.split_whitespace()
                    .any(|w| w.trim_matches(['[', ']']) == "bfq")
            })
        });
    listed
        || ["blkio.weight", "blkio.bfq.weight"]
            .iter()
            .any(|f| Path::new(&format!("{V1}/blkio/{f}")).exists())
}

#[test]
fn block_io_weight_goes_to_bfq() {
    let runc = Runc::new();
    let cg = format!("/skiff-test-{}", unique("weight"));
    let b = Bundle::new(&["sleep", "100"]).with(|c| {
        c["linux"]["cgroupsPath"] = json!(cg);
        c["linux"]["resources"] = json!({"blockIO": {"weight": 500}});
    });
    let id = unique("weight");
    if !host_has_bfq() {
        // Hosts whose devices offer only none/mq-deadline/kyber have no weight file: a clear
        // error naming the field, and nothing left behind (runc refuses too).
        let out = runc.run(&["create", "--bundle", b.path_str(), &id]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "weight accepted without BFQ");
        assert!(err.contains("linux.resources.blockIO.weight"), "{err}");
        assert!(!runc.root.path().join(&id).exists());
        assert!(
            cgroup_dirs(&cg).is_empty(),
            "cgroups left: {:?}",
            cgroup_dirs(&cg)
        );
        return;
    }
    runc.ok(&["create", "--bundle", b.path_str(), &id]);
    // No blkio.weight without CFQ: BFQ's weight file takes the same range, as runc does.
    let file = ["blkio.weight", "blkio.bfq.weight"]
        .iter()
        .map(|f| format!("{V1}/blkio{cg}/{f}"))
        .find(|f| Path::new(f).exists())
        .expect("BFQ is listed but the container's blkio cgroup has no weight file");
    assert!(read(&file).contains("500"), "{file}: {}", read(&file));
    runc.ok(&["delete", "--force", &id]);
}

#[test]
fn an_impossible_limit_is_a_clear_error_and_leaves_nothing() {
    let runc = Runc::new();
    let cg = format!("/skiff-test-{}", unique("bad"));
    let b = Bundle::new(&["true"]).with(|c| {
        c["linux"]["cgroupsPath"] = json!(format!("{cg}/c"));
        c["linux"]["resources"] = json!({"memory": {"limit": 64 << 20}, "cpu": {"cpus": "4096"}});
    });
    let id = unique("bad");
    let out = runc.run(&["create", "--bundle", b.path_str(), &id]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("linux.resources") && err.contains("cpuset.cpus"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!runc.root.path().join(&id).exists());
    assert!(
        cgroup_dirs(&cg).is_empty(),
        "cgroups left: {:?}",
        cgroup_dirs(&cg)
    );
}

/// linux.resources.network: net_cls.classid and net_prio.ifpriomap where the host mounts
/// those v1 controllers; elsewhere (here they sit unused on cgroup2) a clear error, never a
/// silently ignored limit.
#[test]
fn network_class_and_priorities_or_a_clear_error() {
    let runc = Runc::new();
    let cg = format!("/skiff-test-{}", unique("net"));
    let b = Bundle::new(&["sleep", "100"]).with(|c| {
        c["linux"]["cgroupsPath"] = json!(cg);
        c["linux"]["resources"] =
            json!({"network": {"classID": 1048577, "priorities": [{"name": "lo", "priority": 7}]}});
    });
    let id = unique("net");
    let mounted = |ctrl: &str| {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| {
                l.contains(" - cgroup ")
                    && l.split(',')
                        .any(|o| o == ctrl || o.starts_with(&format!("{ctrl} ")))
            })
    };
    if !(mounted("net_cls") && mounted("net_prio")) {
        let out = runc.run(&["create", "--bundle", b.path_str(), &id]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "network limits accepted without net_cls/net_prio"
        );
        assert!(err.contains("linux.resources.network"), "{err}");
        assert!(cgroup_dirs(&cg).is_empty());
        return;
    }
    runc.ok(&["create", "--bundle", b.path_str(), &id]);
    let dir = |ctrl: &str| {
        cgroup_dirs(&cg)
            .into_iter()
            .find(|d| {
                d.join(format!("{ctrl}.classid")).exists()
                    || d.join(format!("{ctrl}.ifpriomap")).exists()
            })
            .unwrap()
    };
    assert_eq!(read(dir("net_cls").join("net_cls.classid")), "1048577");
    assert!(read(dir("net_prio").join("net_prio.ifpriomap")).contains("lo 7"));
    runc.ok(&["delete", "--force", &id]);
}

/// A fresh cgroup mount refused with EPERM (a user namespace that does not own the cgroup
/// namespace, a nested container's LSM or seccomp profile) falls back to binding the
/// container's own cgroup directories. Provoked with a seccomp filter on the runtime (inherited
/// by the init that mounts) that refuses mount(2) with MS_DIRSYNC, which only this config's
/// cgroup mount asks for.
#[test]
fn a_refused_cgroup_mount_falls_back_to_the_containers_own_directory() {
    use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
    let runc = Runc::new();
    let cg = format!("/skiff-test-{}", unique("cg-refused"));
    let b = Bundle::new(&[
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
         awk '$5 == \"/sys/fs/cgroup/memory\" { split($6, o, \",\"); print o[1] }' /proc/self/mountinfo; \
         (echo 1 > /sys/fs/cgroup/memory/memory.limit_in_bytes) 2>&1 | sed 's/.*: //'",
    ])
    .with(|c| {
        c["linux"]["cgroupsPath"] = json!(cg);
        c["linux"]["resources"] = json!({"memory": {"limit": 64 << 20}});
        let mounts = c["mounts"].as_array_mut().unwrap();
        let m = mounts.iter_mut().find(|m| m["type"] == "cgroup").unwrap();
        m["options"] = json!(["nosuid", "noexec", "nodev", "relatime", "ro", "dirsync"]);
    });
    let dirsync = libc::MS_DIRSYNC;
    let mut filter = ScmpFilterContext::new(ScmpAction::Allow).unwrap();
    filter
        .add_rule_conditional(
            ScmpAction::Errno(libc::EPERM),
            ScmpSyscall::from_name("mount").unwrap(),
            &[ScmpArgCompare::new(
                3,
                ScmpCompareOp::MaskedEqual(dirsync),
                dirsync,
            )],
        )
        .unwrap();
    let bpf_file = tempfile::NamedTempFile::new().unwrap();
    filter.export_bpf(bpf_file.as_file()).unwrap();
    let program = std::fs::read(bpf_file.path()).unwrap();
    let mut cmd = runc.cmd();
    cmd.args(["run", "--bundle", b.path_str(), &unique("cg-refused")]);
    // SAFETY: only prctl and seccomp between fork and exec, on memory prepared before.
    unsafe {
        cmd.pre_exec(move || {
            let fprog = libc::sock_fprog {
                len: (program.len() / 8) as u16,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::syscall(libc::SYS_seccomp, 1, 0, &fprog as *const libc::sock_fprog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    // The container's own memory cgroup, read-only.
    assert_eq!(
        lines,
        [
            (64u64 << 20).to_string().as_str(),
            "ro",
            "Read-only file system"
        ]
    );
    assert!(cgroup_dirs(&cg).is_empty(), "{cg} left behind");
}
