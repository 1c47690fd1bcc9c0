//! exec, pause/resume, events and update on running containers (needs root).

mod common;
use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

fn running(runc: &Runc, edit: impl FnOnce(&mut serde_json::Value)) -> (Bundle, String) {
    let b = Bundle::new(&["sleep", "1000"]).with(edit);
    let id = unique("live");
    runc.ok(&["run", "-d", "--bundle", b.path_str(), &id]);
    (b, id)
}

#[test]
fn exec_joins_the_container() {
    let runc = Runc::new();
    let (_b, id) = running(&runc, |c| {
        c["hostname"] = json!("inside");
        c["process"]["env"] = json!(["PATH=/bin", "FROM_CONFIG=1"]);
    });
    let init = runc.state(&id)["pid"].as_i64().unwrap();
    let out = runc.ok(&[
        "exec", "--env", "EXTRA=2", "--cwd", "/tmp", "--user", "1000:1001", &id,
        "sh", "-c", "hostname; pwd; id -u; id -g; echo $FROM_CONFIG$EXTRA; readlink /proc/self/ns/pid; readlink /proc/self/ns/mnt; readlink /proc/self/ns/net; grep -c ':/$' /proc/self/cgroup",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..5],
        ["inside", "/tmp", "1000", "1001", "12"],
        "{out}"
    );
    for (i, ns) in ["pid", "mnt", "net"].iter().enumerate() {
        assert_eq!(
            lines[5 + i],
            std::fs::read_link(format!("/proc/{init}/ns/{ns}"))
                .unwrap()
                .to_string_lossy(),
            "{ns}"
        );
    }
    // In the container's cgroup namespace and cgroups: every hierarchy shows "/".
    assert_eq!(
        lines[8],
        std::fs::read_to_string("/proc/self/cgroup")
            .unwrap()
            .lines()
            .count()
            .to_string()
    );
    // The exit code comes back.
    let out = runc.run(&["exec", &id, "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    runc.ok(&["delete", "--force", &id]);
    let out = runc.run(&["exec", &id, "true"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn exec_cpu_affinity_and_personality() {
    let runc = Runc::new();
    let (b, id) = running(&runc, |c| {
        c["linux"]["personality"] = json!({"domain": "LINUX32"});
    });
    let exec = |affinity: serde_json::Value| {
        let mut process = b.config["process"].clone();
        process["args"] = json!([
            "sh",
            "-c",
            "grep Cpus_allowed_list /proc/self/status; cat /proc/self/personality"
        ]);
        process["execCPUAffinity"] = affinity;
        let file = b.path().join("affinity.json");
        std::fs::write(&file, process.to_string()).unwrap();
        runc.ok(&["exec", "--process", file.to_str().unwrap(), &id])
    };
    let cpus = std::thread::available_parallelism().unwrap().get();
    let last = (cpus - 1).to_string();
    assert_eq!(
        exec(json!({"initial": "0", "final": last})),
        format!("Cpus_allowed_list:\t{last}\n00000008\n")
    );
    // Only initial: the affinity the process had on entering the cgroup stays.
    assert_eq!(
        exec(json!({"initial": "0"})),
        "Cpus_allowed_list:\t0\n00000008\n"
    );
    let file = b.path().join("bad.json");
    let mut process = b.config["process"].clone();
    process["execCPUAffinity"] = json!({"final": "9999999"});
    std::fs::write(&file, process.to_string()).unwrap();
    let out = runc.run(&["exec", "--process", file.to_str().unwrap(), &id]);
    assert!(!out.status.success());
    runc.ok(&["delete", "--force", &id]);
}

#[test]
fn exec_with_process_file_detach_and_pid_file() {
    let runc = Runc::new();
    let (b, id) = running(&runc, |_| {});
    let process = json!({
        "args": ["sh", "-c", "echo $MARK > /dev/shm/marker; sleep 1000"],
        "env": ["PATH=/bin", "MARK=from-process-json"],
        "cwd": "/",
        "user": {"uid": 0, "gid": 0},
        "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
        "noNewPrivileges": true
    });
    let pfile = b.path().join("process.json");
    std::fs::write(&pfile, process.to_string()).unwrap();
    let pid_file = b.path().join("exec.pid");
    runc.ok(&[
        "exec",
        "--process",
        pfile.to_str().unwrap(),
        "--detach",
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
    ]);
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.contains("CapEff:\t0000000000000020") && status.contains("NoNewPrivs:\t1"),
        "{status}"
    );
    wait_until(20, || {
        runc.run(&["exec", &id, "cat", "/dev/shm/marker"]).stdout == b"from-process-json\n"
    });
    let pids: Vec<i32> = serde_json::from_str(&runc.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(
        pids.contains(&pid),
        "exec'd process not in the container's cgroup: {pids:?}"
    );
    // A malformed process.json names the field.
    std::fs::write(&pfile, r#"{"args": "not-a-list", "cwd": "/"}"#).unwrap();
    let out = runc.run(&["exec", "--process", pfile.to_str().unwrap(), &id]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("args"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    runc.ok(&["delete", "--force", &id]);
}

#[test]
fn exec_tty_over_console_socket() {
    use std::io::Read;
    use std::os::unix::net::UnixListener;
    let runc = Runc::new();
    let (b, id) = running(&runc, |_| {});
    let sock = b.path().join("exec-console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let reader = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut master = std::fs::File::from(skiff_runtime::console::recv_fd(&stream).unwrap());
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    runc.ok(&[
        "exec",
        "--tty",
        "--console-socket",
        sock.to_str().unwrap(),
        &id,
        "tty",
    ]);
    assert!(reader.join().unwrap().contains("/dev/pts/"));
    runc.ok(&["delete", "--force", &id]);
}

#[test]
fn pause_and_resume() {
    let runc = Runc::new();
    let (_b, id) = running(&runc, |c| {
        c["linux"]["cgroupsPath"] = json!(format!("/skiff-test-{}", unique("pause")))
    });
    runc.ok(&["pause", &id]);
    assert_eq!(runc.status(&id), "paused");
    let out = runc.run(&["pause", &id]);
    assert!(!out.status.success());
    let out = runc.run(&["exec", &id, "true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("paused"));
    runc.ok(&["resume", &id]);
    assert_eq!(runc.status(&id), "running");
    assert!(
        !runc.run(&["resume", &id]).status.success(),
        "resume of a running container must fail"
    );
    // kill --all reaches a paused container (it is thawed for the signal).
    runc.ok(&["pause", &id]);
    runc.ok(&["kill", "--all", &id, "KILL"]);
    wait_until(20, || runc.status(&id) == "stopped");
    runc.ok(&["delete", &id]);
}

#[test]
fn events_stats_and_oom() {
    let runc = Runc::new();
    let (_b, id) = running(&runc, |c| {
        c["linux"]["resources"] =
            json!({"memory": {"limit": 32 << 20, "swap": 32 << 20}, "pids": {"limit": 20}});
    });
    let stats: serde_json::Value =
        serde_json::from_str(&runc.ok(&["events", "--stats", &id])).unwrap();
    assert_eq!(stats["type"], "stats");
    assert_eq!(stats["id"], id.as_str());
    assert!(stats["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0);
    assert_eq!(stats["data"]["memory"]["usage"]["limit"], 32u64 << 20);
    assert!(stats["data"]["pids"]["current"].as_u64().unwrap() >= 1);
    assert_eq!(stats["data"]["pids"]["limit"], 20);
    assert!(stats["data"]["cpu"]["usage"]["total"].as_u64().unwrap() > 0);

    let mut events = runc
        .cmd()
        .args(["events", "--interval", "1s", &id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(events.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["type"], "stats");
    // A 64 MiB buffer in a 32 MiB cgroup: the kernel OOM-kills dd.
    let _ = runc.run(&[
        "exec",
        &id,
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    ]);
    let mut saw_oom = false;
    for line in lines.by_ref().take(30) {
        let ev: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if ev["type"] == "oom" {
            assert_eq!(ev["id"], id.as_str());
            saw_oom = true;
            break;
        }
    }
    assert!(saw_oom, "no oom event");
    runc.ok(&["delete", "--force", &id]);
    // The stream ends when the container is gone.
    assert!(events.wait().unwrap().success());
}

#[test]
fn update_changes_limits_of_a_running_container() {
    let runc = Runc::new();
    let cg = format!("/skiff-test-{}", unique("update"));
    let (b, id) = running(&runc, |c| {
        c["linux"]["cgroupsPath"] = json!(cg);
        c["linux"]["resources"] =
            json!({"memory": {"limit": 64 << 20}, "pids": {"limit": 10}, "cpu": {"shares": 1024}});
    });
    let read = |f: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{f}"))
            .unwrap()
            .trim()
            .to_string()
    };
    runc.ok(&[
        "update",
        "--memory",
        "128m",
        "--memory-swap",
        "256m",
        "--pids-limit",
        "99",
        "--cpu-share",
        "512",
        "--cpu-quota",
        "20000",
        "--cpu-period",
        "100000",
        &id,
    ]);
    assert_eq!(
        read(&format!("memory{cg}/memory.limit_in_bytes")),
        (128u64 << 20).to_string()
    );
    assert_eq!(
        read(&format!("memory{cg}/memory.memsw.limit_in_bytes")),
        (256u64 << 20).to_string()
    );
    assert_eq!(read(&format!("pids{cg}/pids.max")), "99");
    assert_eq!(read(&format!("cpu{cg}/cpu.shares")), "512");
    assert_eq!(read(&format!("cpu{cg}/cpu.cfs_quota_us")), "20000");
    // Lowering below the current swap limit works too (the order of the writes matters).
    let res = b.path().join("res.json");
    std::fs::write(
        &res,
        json!({"memory": {"limit": 48 << 20, "swap": 48 << 20}, "pids": {"limit": 7}}).to_string(),
    )
    .unwrap();
    runc.ok(&["update", "--resources", res.to_str().unwrap(), &id]);
    assert_eq!(
        read(&format!("memory{cg}/memory.limit_in_bytes")),
        (48u64 << 20).to_string()
    );
    assert_eq!(
        read(&format!("memory{cg}/memory.memsw.limit_in_bytes")),
        (48u64 << 20).to_string()
    );
    assert_eq!(read(&format!("pids{cg}/pids.max")), "7");
    let out = runc.run(&["update", "--memory", "lots", &id]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--memory"));
    runc.ok(&["delete", "--force", &id]);
}

#[test]
fn rootless_container_run_by_an_unprivileged_user() {
    use std::os::unix::process::CommandExt;
    require_root();
    let bundle = tempfile::Builder::new()
        .prefix("skiff-rootless")
        .tempdir()
        .unwrap();
    let b = Bundle::new(&["true"]);
    std::fs::rename(b.path().join("rootfs"), bundle.path().join("rootfs")).unwrap();
    let spec = std::process::Command::new(BIN)
        .args(["spec", "--rootless", "--bundle"])
        .arg(bundle.path())
        .output()
        .unwrap();
    assert!(spec.status.success());
    let cfg = bundle.path().join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    c["process"]["terminal"] = json!(false);
    c["process"]["args"] = json!([
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map; touch /proc/sys/x 2>/dev/null || echo no-host-root"
    ]);
    // The user the runtime runs as (nobody) is root in the container.
    c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 65534, "size": 1}]);
    c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 65534, "size": 1}]);
    std::fs::write(&cfg, c.to_string()).unwrap();
    // nobody must reach the bundle and the binary.
    std::fs::set_permissions(
        bundle.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let root = tempfile::Builder::new()
        .prefix("skiff-rootless-root")
        .tempdir()
        .unwrap();
    std::os::unix::fs::chown(root.path(), Some(65534), Some(65534)).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--root")
        .arg(root.path())
        .args(["run", "--bundle"])
        .arg(bundle.path())
        .arg("rootless")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rootless run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(words, ["0", "0", "65534", "1", "no-host-root"], "{stdout}");
    // No cgroup was made for it (none is delegated to nobody).
    assert!(cgroup_dirs("rootless").is_empty());
}
