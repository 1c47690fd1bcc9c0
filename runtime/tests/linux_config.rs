//! The linux section of config.json, checked from inside real containers (needs root).

mod common;
use common::*;
use serde_json::{Value, json};

fn add_namespace(c: &mut Value, ns: Value) {
    c["linux"]["namespaces"].as_array_mut().unwrap().push(ns);
}

#[test]
fn hostname_domainname_and_new_namespaces() {
    let runc = Runc::new();
    let host_ns = |n: &str| {
        std::fs::read_link(format!("/proc/self/ns/{n}"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let out = Bundle::sh(
        &runc,
        "hostname; cat /proc/sys/kernel/domainname; for n in pid net ipc uts mnt cgroup time; do readlink /proc/self/ns/$n; done",
        |c| {
            c["hostname"] = json!("box");
            c["domainname"] = json!("example.test");
            add_namespace(c, json!({"type": "time"}));
        },
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], ["box", "example.test"]);
    for (i, n) in ["pid", "net", "ipc", "uts", "mnt", "cgroup", "time"]
        .iter()
        .enumerate()
    {
        assert_ne!(lines[2 + i], host_ns(n), "{n} namespace not new");
    }
}

#[test]
fn time_namespace_offsets() {
    let runc = Runc::new();
    let out = Bundle::sh(&runc, "cut -d. -f1 /proc/uptime", |c| {
        add_namespace(c, json!({"type": "time"}));
        c["linux"]["timeOffsets"] = json!({"boottime": {"secs": 86400 * 365, "nanosecs": 0}});
    });
    let uptime: u64 = out.trim().parse().unwrap();
    assert!(
        uptime >= 86400 * 365,
        "boottime offset not applied: uptime {uptime}"
    );
}

#[test]
fn joins_namespaces_by_path() {
    let runc = Runc::new();
    let holder = Bundle::new(&["sleep", "1000"]).with(|c| c["hostname"] = json!("holder"));
    let hid = unique("holder");
    runc.ok(&["run", "-d", "--bundle", holder.path_str(), &hid]);
    let pid = runc.state(&hid)["pid"].as_i64().unwrap();
    let out = Bundle::sh(
        &runc,
        "hostname; readlink /proc/self/ns/net; tr '\\0' ' ' < /proc/1/cmdline",
        |c| {
            let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
            for n in ns.iter_mut() {
                if matches!(
                    n["type"].as_str(),
                    Some("uts") | Some("network") | Some("pid")
                ) {
                    n["path"] = json!(format!(
                        "/proc/{pid}/ns/{}",
                        if n["type"] == "network" {
                            "net"
                        } else {
                            n["type"].as_str().unwrap()
                        }
                    ));
                }
            }
            c.as_object_mut().unwrap().remove("hostname");
        },
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "holder");
    assert_eq!(
        lines[1],
        std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .to_string_lossy()
    );
    assert_eq!(
        lines[2].trim(),
        "sleep 1000",
        "pid 1 must be the holder's in the joined pid namespace"
    );
    runc.ok(&["delete", "--force", &hid]);
}

#[test]
fn user_namespace_with_mappings() {
    let runc = Runc::new();
    let b = Bundle::new(&[
        "sh",
        "-c",
        "cat /proc/self/uid_map /proc/self/gid_map; id -u; touch /tmp/x && stat -c %u /tmp/x",
    ]);
    // The rootfs must be owned by the mapped root to be writable by it.
    let status = std::process::Command::new("chown")
        .args(["-R", "100000:100000"])
        .arg(b.path().join("rootfs"))
        .status()
        .unwrap();
    assert!(status.success());
    let b = b.with(|c| {
        add_namespace(c, json!({"type": "user"}));
        c["root"]["readonly"] = json!(false);
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    });
    let (code, out, err) = b.run(&runc, &unique("userns"));
    assert_eq!(code, 0, "{err}");
    let words: Vec<&str> = out.split_whitespace().collect();

    assert_eq!(
        &words[..6],
        ["0", "100000", "65536", "0", "100000", "65536"],
        "{out}"
    );
    assert_eq!(&words[6..], ["0", "0"]);
}

#[test]
fn mounts_in_order_with_options_and_propagation() {
    let runc = Runc::new();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("file"), "bound\n").unwrap();
    let b = Bundle::new(&[
        "sh",
        "-c",
        "cat /data/file; touch /data/new 2>&1 | grep -c Read-only; \
         grep ' /scratch ' /proc/self/mountinfo | grep -o 'rw,nosuid,nodev,noexec' ; \
         grep ' /scratch ' /proc/self/mountinfo | grep -o 'size=[0-9]*k,mode=[0-9]*' ; \
         grep ' /scratch/inner ' /proc/self/mountinfo | grep -c tmpfs; \
         grep ' /shared ' /proc/self/mountinfo | grep -c 'shared:'",
    ])
    .with(|c| {
            let mounts = c["mounts"].as_array_mut().unwrap();
            mounts.push(json!({"destination": "/data", "type": "bind", "source": src.path(), "options": ["rbind", "ro"]}));
            mounts.push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "noexec", "size=1024k", "mode=700"]}));
            mounts.push(json!({"destination": "/scratch/inner", "type": "tmpfs", "source": "tmpfs", "options": []}));
            mounts.push(json!({"destination": "/shared", "type": "tmpfs", "source": "tmpfs", "options": ["rshared"]}));
    });
    // What the container could leak onto: its bundle, the bind source, its destinations'
    // host twins. The rest of the host table is other work's, which mounts meanwhile.
    let watched = [
        b.path(),
        src.path(),
        "/data".as_ref(),
        "/scratch".as_ref(),
        "/shared".as_ref(),
    ];
    let before = host_mounts_under(&watched);
    let (code, out, err) = b.run(&runc, &unique("mounts"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out, "bound\n1\nrw,nosuid,nodev,noexec\nsize=1024k,mode=700\n1\n1\n",
        "{out}"
    );
    assert_eq!(
        before,
        host_mounts_under(&watched),
        "mounts reached the host"
    );
}

#[test]
fn masked_readonly_paths_and_readonly_root() {
    let runc = Runc::new();
    let out = Bundle::sh(
        &runc,
        "stat -c %t:%T /proc/keys; ls /sys/firmware | wc -l; \
         echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo wrote || echo ro-sys; \
         touch /newfile 2>/dev/null && echo wrote || echo ro-root; touch /tmp/ok 2>/dev/null || echo tmp-ro",
        |c| {
            c["root"]["readonly"] = json!(true);
        },
    );
    assert_eq!(out, "1:3\n0\nro-sys\nro-root\ntmp-ro\n", "{out}");
}

#[test]
fn default_and_config_devices() {
    let runc = Runc::new();
    let out = Bundle::sh(
        &runc,
        "for d in null zero full random urandom tty; do stat -c '%n %t:%T %a' /dev/$d; done; \
         stat -c '%n %F %t:%T %a %u:%g' /dev/mydev; stat -c '%n %F %a' /dev/myfifo; ls -l /dev/fd /dev/ptmx | grep -c -- '->'; head -c 3 /dev/zero | wc -c",
        |c| {
            // A fifo is made too, and gets no device cgroup rule (the kernel has none for it).
            c["linux"]["devices"] = json!([
                {"path": "/dev/mydev", "type": "c", "major": 1, "minor": 3, "fileMode": 0o640, "uid": 7, "gid": 8},
                {"path": "/dev/myfifo", "type": "p", "major": 0, "minor": 0, "fileMode": 0o600}
            ]);
        },
    );
    assert_eq!(
        out,
        "/dev/null 1:3 666\n/dev/zero 1:5 666\n/dev/full 1:7 666\n/dev/random 1:8 666\n/dev/urandom 1:9 666\n/dev/tty 5:0 666\n\
         /dev/mydev character special file 1:3 640 7:8\n/dev/myfifo fifo 600\n2\n3\n",
        "{out}"
    );
}

#[test]
fn user_groups_umask() {
    let runc = Runc::new();
    let out = Bundle::sh(
        &runc,
        "id -u; id -g; id -G; umask; grep NoNewPrivs /proc/self/status",
        |c| {
            c["process"]["user"] =
                json!({"uid": 1000, "gid": 1001, "additionalGids": [5, 6], "umask": 0o027});
            c["process"]["noNewPrivileges"] = json!(true);
        },
    );
    assert_eq!(out, "1000\n1001\n1001 5 6\n0027\nNoNewPrivs:\t1\n", "{out}");
}

#[test]
fn five_capability_sets() {
    let runc = Runc::new();
    let out = Bundle::sh(&runc, "grep ^Cap /proc/self/status", |c| {
        c["process"]["capabilities"] = json!({
            "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_CHOWN"],
            "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
            "effective": ["CAP_KILL"],
            "inheritable": ["CAP_NET_BIND_SERVICE"],
            "ambient": ["CAP_NET_BIND_SERVICE"],
        });
    });
    // KILL=5 (0x20), NET_BIND_SERVICE=10 (0x400), CHOWN=0 (0x1). execve recomputes permitted and
    // effective: root under no_new_privs keeps permitted and gets effective = permitted.
    assert_eq!(
        out,
        "CapInh:\t0000000000000400\nCapPrm:\t0000000000000420\nCapEff:\t0000000000000420\nCapBnd:\t0000000000000421\nCapAmb:\t0000000000000400\n",
        "{out}"
    );
    // A non-root user keeps exactly its ambient capabilities across execve.
    let out = Bundle::sh(
        &runc,
        "grep -E '^Cap(Prm|Eff|Amb)' /proc/self/status",
        |c| {
            c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
            c["process"]["capabilities"] = json!({
                "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "inheritable": ["CAP_NET_BIND_SERVICE"],
                "ambient": ["CAP_NET_BIND_SERVICE"],
            });
        },
    );
    assert_eq!(
        out, "CapPrm:\t0000000000000400\nCapEff:\t0000000000000400\nCapAmb:\t0000000000000400\n",
        "{out}"
    );
    // A capability the runtime itself does not hold (CAP_SYS_RESOURCE is withheld from root on
    // some hosts) is skipped, not a failed container; where it is held, the container gets it.
    let held = caps::has_cap(
        None,
        caps::CapSet::Bounding,
        caps::Capability::CAP_SYS_RESOURCE,
    )
    .unwrap();
    let all = json!(["CAP_KILL", "CAP_SYS_RESOURCE"]);
    let out = Bundle::sh(&runc, "grep -E '^Cap(Inh|Prm)' /proc/self/status", |c| {
        c["process"]["capabilities"] = json!({
            "bounding": all, "permitted": all, "effective": all, "inheritable": all, "ambient": all,
        });
    });
    // KILL=5 (0x20), SYS_RESOURCE=24 (0x1000000).
    let want = if held {
        "0000000001000020"
    } else {
        "0000000000000020"
    };
    assert_eq!(
        out,
        format!("CapInh:\t{want}\nCapPrm:\t{want}\n"),
        "held: {held}"
    );
}

#[test]
fn rlimits_and_the_missing_cap_sys_resource() {
    let runc = Runc::new();
    let b = Bundle::new(&["sh", "-c", "ulimit -Sn; ulimit -Hn; ulimit -Hc"]).with(|c| {
        c["process"]["rlimits"] = json!([
            {"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1024},
            {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
        ]);
    });
    let (code, out, err) = b.run(&runc, &unique("rlim"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "512\n1024\n0\n");
    // Above the host's hard limit: runc warns and carries on when it may not raise it.
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .unwrap()
        .1;
    let b = Bundle::new(&["sh", "-c", "ulimit -Hn"]).with(|c| {
        c["process"]["rlimits"] =
            json!([{"type": "RLIMIT_NOFILE", "soft": 1048576, "hard": 1048576}]);
    });
    let (code, out, err) = b.run(&runc, &unique("rlim"));
    assert_eq!(code, 0, "{err}");
    let got: u64 = out.trim().parse().unwrap();
    assert!(
        got == 1048576 || (got == hard && err.contains("CAP_SYS_RESOURCE")),
        "hard nofile {got}, stderr {err}"
    );
}

#[test]
fn oom_score_adj_and_sysctl() {
    let runc = Runc::new();
    let out = Bundle::sh(
        &runc,
        "cat /proc/self/oom_score_adj; cat /proc/sys/net/ipv4/ip_forward; cat /proc/sys/kernel/msgmax",
        |c| {
            c["process"]["oomScoreAdj"] = json!(500);
            c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.msgmax": "4096"});
            // /proc/sys is read-only in runc's default spec: sysctls are written before that.
        },
    );
    assert_eq!(out, "500\n1\n4096\n");
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/msgmax")
            .unwrap()
            .trim(),
        "4096",
        "sysctl leaked to the host"
    );
}

#[test]
fn rootless_spec_is_runnable_as_root() {
    let runc = Runc::new();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["spec", "--rootless", "--bundle"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let spec: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    let types: Vec<&str> = spec["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"user") && !types.contains(&"network"));
    assert_eq!(spec["linux"]["uidMappings"][0]["hostID"], 0);
    assert!(spec["linux"].get("resources").is_none());
    let out = Bundle::sh(&runc, "cat /proc/self/uid_map", |c| {
        let mut s = spec.clone();
        s["process"] = c["process"].clone();
        *c = s;
    });
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["0", "0", "1"]);
}

#[test]
fn rootfs_propagation() {
    let runc = Runc::new();
    // Field 7 of the root's mountinfo line: the first optional field ("shared:N", …) or "-".
    let mountinfo_root = "awk '$5 == \"/\" {print $7}' /proc/self/mountinfo";
    let out = Bundle::sh(&runc, mountinfo_root, |c| {
        c["linux"]["rootfsPropagation"] = json!("shared")
    });
    assert!(
        out.starts_with("shared:"),
        "rootfsPropagation shared: {out}"
    );
    let out = Bundle::sh(&runc, mountinfo_root, |c| {
        c["linux"]["rootfsPropagation"] = json!("private")
    });
    assert!(
        !out.contains("shared:") && !out.contains("master:"),
        "rootfsPropagation private: {out}"
    );
    // Unbindable: the rootfs itself can still be bound onto itself and pivoted into.
    let out = Bundle::sh(&runc, mountinfo_root, |c| {
        c["linux"]["rootfsPropagation"] = json!("unbindable")
    });
    assert!(
        out.starts_with("unbindable"),
        "rootfsPropagation unbindable: {out}"
    );
    let b = Bundle::new(&["true"]).with(|c| c["linux"]["rootfsPropagation"] = json!("sideways"));
    let out = runc.run(&["run", "--bundle", b.path_str(), &unique("prop")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("linux.rootfsPropagation"));
}

#[test]
fn scheduler_io_priority_personality_and_memory_policy() {
    let runc = Runc::new();
    let out = Bundle::sh(
        &runc,
        "cut -d' ' -f19,41 /proc/self/stat; ionice; cat /proc/self/personality; uname -m; grep -c bind:0 /proc/self/numa_maps",
        |c| {
            c["process"]["scheduler"] = json!({"policy": "SCHED_BATCH", "nice": 5});
            c["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_BE", "priority": 6});
            c["linux"]["personality"] = json!({"domain": "LINUX32"});
            c["linux"]["memoryPolicy"] = json!({"mode": "MPOL_BIND", "nodes": "0"});
        },
    );
    let lines: Vec<&str> = out.lines().collect();
    // nice 5, policy 3 (SCHED_BATCH); PER_LINUX32 makes x86_64 say i686.
    assert_eq!(
        &lines[..3],
        ["5 3", "best-effort: prio 6", "00000008"],
        "{out}"
    );
    assert_ne!(lines[3], "x86_64", "{out}");
    assert_ne!(lines[4], "0", "no mapping under MPOL_BIND: {out}");

    let b = Bundle::new(&["true"]).with(|c| {
        c["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_RT", "priority": 9});
    });
    let (code, _, err) = b.run(&runc, &unique("ioprio"));
    assert_eq!(code, 1);
    assert!(err.contains("process.ioPriority.priority: 9"), "{err}");
}

/// No mount namespace in the config: the container shares the runtime's (run here inside a
/// private one of its own, `unshare -m`, so nothing reaches the host) and gets a chroot.
#[test]
fn without_a_mount_namespace_the_runtime_one_is_shared() {
    let runc = Runc::new();
    let b = Bundle::new(&["sh", "-c", "readlink /proc/self/ns/mnt; ls /"]).with(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "mount");
    });
    let script = format!(
        "readlink /proc/self/ns/mnt; exec {} --root {} run --bundle {} {}",
        BIN,
        runc.root.path().display(),
        b.path_str(),
        unique("nomnt")
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux) is missing");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0], lines[1],
        "the container has a mount namespace of its own"
    );
    assert!(
        lines.contains(&"busybox") || lines.contains(&"bin"),
        "not in the rootfs: {text}"
    );
}
