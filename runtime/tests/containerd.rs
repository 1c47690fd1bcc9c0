//! skiff-runc as the runtime of Debian's containerd 1.6 and its `io.containerd.runc.v2` shim,
//! driven with `ctr` against a containerd of our own (socket, root and state under a temp dir)
//! and a local busybox OCI image. The runtime is skiff-runc, or `$SKIFF_DRIVER_RUNTIME` (e.g.
//! `/usr/sbin/runc`, which proves the tests themselves). Needs root and the Debian packages
//! containerd, umoci and busybox-static.
//!
//! Every test also pins the command lines the shim used (the contract of issue 3), recorded
//! by a wrapper script standing in for the runtime binary.

mod common_drivers;
use common_drivers::*;

fn setup() -> Containerd {
    let c = Containerd::start();
    c.import_busybox();
    c
}

/// `ctr run` with our runtime options, then `rest` (image, id, command…).
fn ctr_run(c: &Containerd, extra: &[&str], rest: &[&str]) -> Vec<String> {
    run_line(extra, c.runtime_opts(), rest)
}

/// The global options the shim passes on every call for container `id`.
fn assert_shim_globals(c: &Containerd, call: &Call, id: &str) {
    let bundle = c.bundle(id);
    let root = c.runc_root.join(&c.ns);
    assert_eq!(
        call.global,
        vec![
            "--root".to_string(),
            root.display().to_string(),
            "--log".into(),
            bundle.join("log.json").display().to_string(),
            "--log-format".into(),
            "json".into(),
        ],
        "global options of `{}`",
        call.line()
    );
}

/// A missing tool fails the test, naming the Debian package to install.
#[test]
fn a_missing_tool_names_its_package() {
    let err = std::panic::catch_unwind(|| require(&[("skiff-no-such-tool", "skiff-no-such-pkg")]))
        .expect_err("require must fail");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("apt-get install -y skiff-no-such-pkg"),
        "{msg}"
    );
}

#[test]
fn ctr_run_rm_prints_output_and_returns_exit_code() {
    let c = setup();
    let id = "run-rm";
    let args = ctr_run(
        &c,
        &["--rm"],
        &[CTR_IMAGE, id, "sh", "-c", "echo hello from busybox; exit 3"],
    );
    let out = c.run(&strs(&args));
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (3, "hello from busybox\n"),
        "ctr run --rm: stderr: {}\n{}",
        out.stderr,
        c.diagnose()
    );
    assert_eq!(
        c.ok(&["containers", "ls", "-q"]).trim(),
        "",
        "--rm removed it"
    );

    // The contract: create, start, delete, all with --root R --log B/log.json --log-format json.
    let bundle = c.bundle(id);
    let create = c.rec.find(id, "create", |_| true);
    assert_shim_globals(&c, &create, id);
    assert_eq!(
        create.args,
        vec![
            "--bundle".to_string(),
            bundle.display().to_string(),
            "--pid-file".into(),
            bundle.join("init.pid").display().to_string(),
            id.into(),
        ],
        "create: {}",
        create.line()
    );
    let start = c.rec.find(id, "start", |_| true);
    assert_shim_globals(&c, &start, id);
    assert_eq!(start.args, vec![id.to_string()]);
    let delete = c.rec.find(id, "delete", |_| true);
    assert_shim_globals(&c, &delete, id);
    assert!(
        delete.args == [id] || delete.args == ["--force", id],
        "delete: {}",
        delete.line()
    );
    let verbs: Vec<String> = c.rec.calls_for(id).into_iter().map(|c| c.verb).collect();
    assert_eq!(
        verbs.first().map(String::as_str),
        Some("create"),
        "{verbs:?}"
    );
}

#[test]
fn ctr_task_exec_ps_pause_resume_kill() {
    let c = setup();
    let id = "lifecycle";
    // Exits 7 on SIGTERM (as pid 1 it would otherwise ignore it).
    let args = ctr_run(
        &c,
        &["--detach", "--null-io"],
        &[
            CTR_IMAGE,
            id,
            "sh",
            "-c",
            "trap 'exit 7' TERM; while true; do sleep 1; done",
        ],
    );
    c.ok(&strs(&args));
    let pid = c.wait_status(id, "RUNNING");
    assert!(pid > 0);

    // exec: output and exit code of the new process.
    let fifo = c.fifo_dir.display().to_string();
    let out = c.run(&[
        "task",
        "exec",
        "--fifo-dir",
        &fifo,
        "--exec-id",
        "exec1",
        id,
        "sh",
        "-c",
        "echo in exec $(cat /proc/1/comm); exit 5",
    ]);
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (5, "in exec sh\n"),
        "ctr task exec: stderr: {}\n{}",
        out.stderr,
        c.diagnose()
    );

    // ps: the init process is listed.
    let ps = c.ok(&["task", "ps", id]);
    assert!(
        ps.lines()
            .skip(1)
            .any(|l| l.split_whitespace().next() == Some(&pid.to_string())),
        "ctr task ps lists pid {pid}: {ps}"
    );

    c.ok(&["task", "pause", id]);
    c.wait_status(id, "PAUSED");
    c.ok(&["task", "resume", id]);
    c.wait_status(id, "RUNNING");

    // kill (SIGTERM by default): trapped, exit 7.
    c.ok(&["task", "kill", id]);
    c.wait_status(id, "STOPPED");
    let del = c.run(&["task", "rm", id]);
    assert!(del.status.success(), "ctr task rm: {}", del.stderr);
    assert!(
        del.stderr.contains("exit code 7"),
        "exit status 7 after SIGTERM: {}",
        del.stderr
    );
    c.ok(&["containers", "rm", id]);

    // kill --all with SIGKILL, on a container whose pid 1 ignores SIGTERM.
    let id2 = "killall";
    let args = ctr_run(
        &c,
        &["--detach", "--null-io"],
        &[CTR_IMAGE, id2, "sleep", "100000"],
    );
    c.ok(&strs(&args));
    c.wait_status(id2, "RUNNING");
    c.ok(&["task", "kill", "--all", "--signal", "SIGKILL", id2]);
    c.wait_status(id2, "STOPPED");
    let del = c.run(&["task", "rm", id2]);
    assert!(
        del.stderr.contains("exit code 137"),
        "SIGKILL: {}",
        del.stderr
    );
    c.ok(&["containers", "rm", id2]);

    // The contract.
    let bundle = c.bundle(id);
    let exec = c.rec.find(id, "exec", |_| true);
    assert_shim_globals(&c, &exec, id);
    let process = exec.opt("--process").expect("exec --process FILE");
    assert!(!process.is_empty());
    assert_eq!(
        exec.opt("--pid-file"),
        Some(bundle.join("exec1.pid").to_str().unwrap()),
        "exec: {}",
        exec.line()
    );
    assert!(exec.has("--detach"), "exec: {}", exec.line());
    assert_eq!(exec.args.last().map(String::as_str), Some(id));
    assert_eq!(
        exec.args.len(),
        6,
        "exec --process F --detach --pid-file P ID: {}",
        exec.line()
    );
    let ps = c.rec.find(id, "ps", |_| true);
    assert_shim_globals(&c, &ps, id);
    assert_eq!(ps.args, ["--format", "json", id], "ps: {}", ps.line());
    for verb in ["pause", "resume"] {
        let call = c.rec.find(id, verb, |_| true);
        assert_shim_globals(&c, &call, id);
        assert_eq!(call.args, [id], "{verb}: {}", call.line());
    }
    let kill = c.rec.find(id, "kill", |_| true);
    assert_shim_globals(&c, &kill, id);
    assert_eq!(kill.args, [id, "15"], "kill: {}", kill.line());
    let kill_all = c.rec.find(id2, "kill", |k| k.has("--all"));
    assert_eq!(
        kill_all.args,
        ["--all", id2, "9"],
        "kill: {}",
        kill_all.line()
    );
    let delete = c.rec.find(id, "delete", |_| true);
    assert_eq!(delete.args, [id], "delete: {}", delete.line());
}

#[test]
fn ctr_run_and_exec_with_a_tty() {
    let c = setup();
    let id = "tty";
    let args = ctr_run(
        &c,
        &["--rm", "--tty"],
        &[CTR_IMAGE, id, "sh", "-c", "tty; exit 4"],
    );
    let out = run_on_pty(c.ctr().args(strs(&args)));
    assert_eq!(
        out.code(),
        4,
        "ctr run --tty: {}\n{}",
        out.stdout,
        c.diagnose()
    );
    assert!(
        out.stdout.contains("/dev/pts/"),
        "the container's stdin is a terminal: {:?}\n{}",
        out.stdout,
        c.diagnose()
    );
    let create = c.rec.find(id, "create", |_| true);
    assert_shim_globals(&c, &create, id);
    let bundle = c.bundle(id);
    let socket = create
        .opt("--console-socket")
        .unwrap_or_else(|| panic!("create --console-socket S: {}", create.line()));
    assert_eq!(
        create.args,
        [
            "--bundle",
            bundle.to_str().unwrap(),
            "--pid-file",
            bundle.join("init.pid").to_str().unwrap(),
            "--console-socket",
            socket,
            id,
        ],
        "create: {}",
        create.line()
    );

    // exec -t into a running container.
    let id2 = "tty-exec";
    let args = ctr_run(
        &c,
        &["--detach", "--null-io"],
        &[CTR_IMAGE, id2, "sleep", "100000"],
    );
    c.ok(&strs(&args));
    c.wait_status(id2, "RUNNING");
    let fifo = c.fifo_dir.display().to_string();
    let out = run_on_pty(c.ctr().args([
        "task",
        "exec",
        "--tty",
        "--fifo-dir",
        &fifo,
        "--exec-id",
        "texec",
        id2,
        "sh",
        "-c",
        "tty; exit 6",
    ]));
    assert_eq!(
        out.code(),
        6,
        "ctr task exec --tty: {}\n{}",
        out.stdout,
        c.diagnose()
    );
    assert!(
        out.stdout.contains("/dev/pts/"),
        "exec's stdin is a terminal: {:?}",
        out.stdout
    );
    let exec = c.rec.find(id2, "exec", |_| true);
    assert!(
        exec.has("--detach") && exec.opt("--console-socket").is_some(),
        "exec --tty: {}",
        exec.line()
    );
    c.ok(&["task", "kill", "--signal", "SIGKILL", id2]);
    c.wait_status(id2, "STOPPED");
}

/// A container whose command does not exist: the shim reads the runtime's error from the
/// `--log` JSON file (runc's format) and ctr reports it.
#[test]
fn ctr_reports_the_runtime_error_from_its_json_log() {
    let c = setup();
    let id = "bad-exec";
    let args = ctr_run(&c, &["--rm"], &[CTR_IMAGE, id, "/no/such/binary"]);
    let out = c.run(&strs(&args));
    assert!(!out.status.success(), "ctr run of /no/such/binary: {out:?}");
    assert!(
        !out.stderr.contains("unable to retrieve OCI runtime error"),
        "the shim found no error in the runtime's JSON log: {}\n{}",
        out.stderr,
        c.diagnose()
    );
    assert!(
        out.stderr.contains("OCI runtime") && out.stderr.contains("/no/such/binary"),
        "ctr names the runtime's error: {}\n{}",
        out.stderr,
        c.diagnose()
    );
    let create = c.rec.find(id, "create", |_| true);
    assert_shim_globals(&c, &create, id);
}

/// The CRI runtime handler `skiff` of config.toml (`runtime_type = "io.containerd.runc.v2"`,
/// `options.BinaryName` = the runtime, `options.Root`): a pod sandbox and a container in it,
/// through the CRI API. containerd 1.6's `ctr` cannot select a CRI handler (its
/// `--runtime-config-path` is read only for runtimes other than io.containerd.runc.v2, and ctr
/// talks to the task service, not the CRI plugin), so a small CRI client (tests/
/// common_drivers/cri.py, Debian's python3-grpcio) makes the calls a kubelet would. containerd
/// runs in a network namespace of its own and the pod uses that "node" network: loopback only.
#[test]
fn cri_runtime_handler_with_binary_name() {
    let (c, summary, log) = cri_pod("echo hello through cri; ip -o link | cut -d: -f2; exit 3");
    assert_eq!(summary["exit_code"], 3, "{summary}\n{}", c.diagnose());
    let lines: Vec<&str> = log
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or_default())
        .collect();
    assert_eq!(
        lines,
        ["hello through cri", " lo"],
        "the container's CRI log (loopback only): {log}"
    );

    // ExecSync and UpdateContainerResources (memory 256 MiB -> 128 MiB) on a running one.
    assert_eq!(summary["exec_exit_code"], 0, "{summary}");
    assert_eq!(
        summary["limit_before"],
        (256u64 << 20).to_string(),
        "{summary}"
    );
    assert_eq!(
        summary["limit_after"],
        (128u64 << 20).to_string(),
        "{summary}\n{}",
        c.diagnose()
    );

    // Every container went through BinaryName, with Root/k8s.io.
    let root = c.runc_root.join(CRI_NAMESPACE);
    for key in ["sandbox", "container", "sleeper"] {
        let id = summary[key].as_str().unwrap();
        let create = c.rec.find(id, "create", |_| true);
        assert_eq!(
            create.global[..2],
            ["--root".to_string(), root.display().to_string()],
            "{key} create: {}",
            create.line()
        );
        assert_eq!(create.global[4..], ["--log-format", "json"]);
        c.rec.find(id, "start", |_| true);
        c.rec.find(id, "delete", |_| true);
    }
    let sleeper = summary["sleeper"].as_str().unwrap();
    let exec = c.rec.find(sleeper, "exec", |_| true);
    assert!(
        exec.has("--detach") && exec.opt("--process").is_some(),
        "{}",
        exec.line()
    );
    // The shim passes the resources on stdin.
    let update = c.rec.find(sleeper, "update", |_| true);
    assert_eq!(
        update.args,
        ["--resources", "-", sleeper],
        "update: {}",
        update.line()
    );
}

/// A pod's containers share its pid namespace, so a container's init is not pid 1 and what it
/// leaves behind is not killed by the kernel when it exits: the shim runs `kill --all ID 9`
/// on the stopped container (runc accepts it and signals what is left in its cgroup), and the
/// container is reported exited only after that.
#[test]
fn cri_pod_container_leftovers_are_killed_with_it() {
    let (c, summary, _) = cri_pod("sleep 1234 >/dev/null 2>&1 & exit 0");
    assert_eq!(summary["exit_code"], 0, "{summary}");
    let processes = summary["pod_processes"].as_str().unwrap_or_default();
    assert!(
        !processes.contains("sleep 1234"),
        "the first container's child outlived it:\n{processes}\n{}",
        c.diagnose()
    );
    let id = summary["container"].as_str().unwrap();
    let kill_all = c.rec.find(id, "kill", |k| k.has("--all"));
    assert_eq!(kill_all.args, ["--all", id, "9"], "{}", kill_all.line());
}

/// Runs one pod through the CRI plugin with the `skiff` handler (tests/common_drivers/cri.py):
/// a container running `sh -c SCRIPT` to its end, then a second one for ExecSync and
/// UpdateContainerResources. Returns containerd, cri.py's JSON summary and the first
/// container's CRI log.
fn cri_pod(script: &str) -> (Containerd, serde_json::Value, String) {
    require(&[("/usr/bin/python3", "python3"), ("unshare", "util-linux")]);
    let grpc = run(Command::new("/usr/bin/python3").args(["-c", "import grpc"]));
    assert!(
        grpc.status.success(),
        "the CRI client needs Python's grpc: apt-get install -y python3-grpcio ({})",
        grpc.stderr.trim()
    );
    let c = Containerd::start_in(true);
    c.import_busybox_into(CRI_NAMESPACE);
    let log_dir = c.dir.path().join("pod-logs");
    std::fs::create_dir_all(&log_dir).unwrap();
    let client = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common_drivers/cri.py");
    let cgroup_parent = format!("/{}", c.ns);
    let out = run(Command::new("/usr/bin/python3").args([
        client,
        c.sock.to_str().unwrap(),
        "skiff",
        CTR_IMAGE,
        log_dir.to_str().unwrap(),
        &cgroup_parent,
        "sh",
        "-c",
        script,
    ]));
    assert!(
        out.status.success(),
        "CRI pod with handler skiff: {}\n{}",
        out.stderr,
        c.diagnose()
    );
    let summary: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let log = std::fs::read_to_string(log_dir.join("main.log")).unwrap_or_default();
    (c, summary, log)
}

use std::process::Command;
