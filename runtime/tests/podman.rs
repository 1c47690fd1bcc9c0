//! skiff-runc as podman's OCI runtime (`podman --runtime PATH`), with podman's storage (vfs),
//! run root and tmp dir under a temp dir, a local busybox OCI image (`podman load`, no
//! network) and `--network none`. The runtime is skiff-runc, or `$SKIFF_DRIVER_RUNTIME` (e.g.
//! `/usr/sbin/runc`, which proves the tests themselves). Needs root and the Debian packages
//! podman (with conmon), umoci and busybox-static.
//!
//! The tests also pin the command lines podman (through conmon) used, recorded by a wrapper
//! script standing in for the runtime binary.

mod common_drivers;
use common_drivers::*;

fn setup() -> Podman {
    let p = Podman::new();
    p.load_busybox();
    p
}

/// `podman run` + our options + `rest`.
fn run_args(p: &Podman, extra: &[&str], rest: &[&str]) -> Vec<String> {
    run_line(extra, p.run_opts(), rest)
}

/// `--log-format=json --log FILE`: podman's global options on create and exec.
fn assert_json_log_globals(call: &Call, log_suffix: &str) {
    assert_eq!(call.global.len(), 3, "{}", call.line());
    assert_eq!(call.global[0], "--log-format=json", "{}", call.line());
    assert_eq!(call.global[1], "--log", "{}", call.line());
    assert!(call.global[2].ends_with(log_suffix), "{}", call.line());
}

/// The full container id of a named container.
fn container_id(p: &Podman, name: &str) -> String {
    p.inspect(name, "{{.Id}}")
}

#[test]
fn podman_run_rm_prints_output_and_returns_exit_code() {
    let p = setup();
    let args = run_args(
        &p,
        &["--rm", "--name", "runrm"],
        &[PODMAN_IMAGE, "sh", "-c", "echo hello from busybox; exit 3"],
    );
    let out = p.run(&strs(&args));
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (3, "hello from busybox\n"),
        "podman run --rm: stderr: {}\n{}",
        out.stderr,
        p.diagnose()
    );
    assert_eq!(p.ok(&["ps", "-aq"]).trim(), "", "--rm removed it");

    // The contract (podman 4.3 through conmon): no --root; `--log-format=json` as ONE
    // argument and `--log FILE` as two, for create and exec only (podman adds them because
    // containers.conf lists the runtime's name in runtime_supports_json); then
    // `create --bundle B --pid-file P ID`, `start ID`, `delete --force ID`.
    let calls = p.rec.calls();
    let create = calls
        .iter()
        .find(|c| c.verb == "create")
        .unwrap_or_else(|| panic!("no create call:\n{}", p.diagnose()));
    let id = create.args.last().unwrap().clone();
    assert_eq!(id.len(), 64, "podman's container id: {}", create.line());
    assert_json_log_globals(create, "/userdata/oci-log");
    let bundle = create.opt("--bundle").expect("create --bundle");
    assert!(bundle.ends_with("/userdata"), "create: {}", create.line());
    let pid_file = create.opt("--pid-file").expect("create --pid-file");
    assert!(pid_file.ends_with("/userdata/pidfile"), "{}", create.line());
    assert_eq!(
        create.args,
        ["--bundle", bundle, "--pid-file", pid_file, id.as_str()],
        "create: {}",
        create.line()
    );
    let start = p.rec.find(&id, "start", |_| true);
    assert_eq!(start.args, [id.as_str()], "start: {}", start.line());
    assert!(start.global.is_empty(), "start: {}", start.line());
    let delete = p.rec.find(&id, "delete", |_| true);
    assert!(delete.global.is_empty(), "delete: {}", delete.line());
    assert_eq!(
        delete.args,
        ["--force", id.as_str()],
        "delete: {}",
        delete.line()
    );
}

#[test]
fn podman_exec_pause_unpause_stop() {
    let p = setup();
    let name = "box";
    // Exits 7 on SIGTERM (as pid 1 it would otherwise ignore it).
    let args = run_args(
        &p,
        &["--detach", "--name", name],
        &[
            PODMAN_IMAGE,
            "sh",
            "-c",
            "trap 'exit 7' TERM; while true; do sleep 1; done",
        ],
    );
    p.ok(&strs(&args));
    let id = container_id(&p, name);
    assert_eq!(p.inspect(name, "{{.State.Status}}"), "running");

    let out = p.run(&[
        "exec",
        name,
        "sh",
        "-c",
        "echo in exec $(cat /proc/1/comm); exit 5",
    ]);
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (5, "in exec sh\n"),
        "podman exec: stderr: {}\n{}",
        out.stderr,
        p.diagnose()
    );
    let out = p.run(&["exec", "--tty", name, "tty"]);
    assert!(
        out.status.success() && out.stdout.contains("/dev/pts/"),
        "podman exec --tty: {out:?}\n{}",
        p.diagnose()
    );

    p.ok(&["pause", name]);
    assert_eq!(p.inspect(name, "{{.State.Status}}"), "paused");
    p.ok(&["unpause", name]);
    assert_eq!(p.inspect(name, "{{.State.Status}}"), "running");

    p.ok(&["stop", "--time", "60", name]);
    assert_eq!(p.inspect(name, "{{.State.Status}}"), "exited");
    assert_eq!(
        p.inspect(name, "{{.State.ExitCode}}"),
        "7",
        "stopped by SIGTERM, trapped\n{}",
        p.diagnose()
    );
    p.ok(&["rm", name]);

    // The contract.
    let execs: Vec<Call> = p
        .rec
        .calls_for(&id)
        .into_iter()
        .filter(|c| c.verb == "exec")
        .collect();
    assert_eq!(execs.len(), 2, "{}", p.diagnose());
    for exec in &execs {
        assert_json_log_globals(exec, "/oci-log");
        let pid_file = exec.opt("--pid-file").expect("exec --pid-file");
        assert!(pid_file.ends_with("/exec_pid"), "exec: {}", exec.line());
        let process = exec.opt("--process").expect("exec --process");
        assert!(!process.is_empty());
        assert!(exec.has("--detach"), "exec: {}", exec.line());
        assert_eq!(exec.args.last(), Some(&id));
    }
    assert_eq!(
        execs[0].args,
        [
            "--pid-file",
            execs[0].opt("--pid-file").unwrap(),
            "--process",
            execs[0].opt("--process").unwrap(),
            "--detach",
            id.as_str()
        ],
        "exec: {}",
        execs[0].line()
    );
    let tty = &execs[1];
    let socket = tty
        .opt("--console-socket")
        .unwrap_or_else(|| panic!("exec --tty --console-socket S: {}", tty.line()));
    assert_eq!(
        tty.args,
        [
            "--pid-file",
            tty.opt("--pid-file").unwrap(),
            "--process",
            tty.opt("--process").unwrap(),
            "--detach",
            "--tty",
            "--console-socket",
            socket,
            id.as_str()
        ],
        "exec --tty: {}",
        tty.line()
    );
    for verb in ["pause", "resume"] {
        let call = p.rec.find(&id, verb, |_| true);
        assert_eq!(call.args, [id.as_str()], "{verb}: {}", call.line());
        assert!(call.global.is_empty(), "{verb}: {}", call.line());
    }
    let kill = p.rec.find(&id, "kill", |_| true);
    assert_eq!(kill.args, [id.as_str(), "15"], "kill: {}", kill.line());
    assert!(kill.global.is_empty(), "kill: {}", kill.line());
    let delete = p.rec.find(&id, "delete", |_| true);
    assert_eq!(
        delete.args,
        ["--force", id.as_str()],
        "delete: {}",
        delete.line()
    );
}

/// A command that cannot be run: podman reports the runtime's error and picks its exit code by
/// matching the runtime's message as runc words it — 127 for "no such file or directory" and
/// "executable file not found in $PATH", 126 for "permission denied" or anything else.
#[test]
fn podman_reports_a_command_that_cannot_run() {
    let p = setup();
    let mut wrong = vec![];
    for (command, code) in [
        ("/no/such/binary", 127),
        ("nosuchcommand", 127),
        ("/etc/passwd", 126),
    ] {
        let args = run_args(&p, &["--rm"], &[PODMAN_IMAGE, command]);
        let out = p.run(&strs(&args));
        if out.code() != code || !out.stderr.contains(command) {
            wrong.push(format!(
                "podman run {command}: exit {} (want {code}), stderr: {}",
                out.code(),
                out.stderr.trim()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), p.diagnose());
}

/// `podman run --tty` (conmon passes `--console-socket` to create) and `podman update` of a
/// running container's memory limit (`update --resources FILE ID`), seen from inside it.
#[test]
fn podman_tty_run_and_update() {
    let p = setup();
    let args = run_args(
        &p,
        &["--rm", "--tty", "--name", "tty"],
        &[PODMAN_IMAGE, "sh", "-c", "tty; exit 4"],
    );
    let out = p.run(&strs(&args));
    assert_eq!(out.code(), 4, "podman run --tty: {out:?}\n{}", p.diagnose());
    assert!(
        out.stdout.contains("/dev/pts/"),
        "the container's stdin is a terminal: {out:?}"
    );
    let create = p
        .rec
        .calls()
        .into_iter()
        .find(|c| c.verb == "create")
        .unwrap_or_else(|| panic!("no create call:\n{}", p.diagnose()));
    assert!(
        create.opt("--console-socket").is_some(),
        "create --console-socket S: {}",
        create.line()
    );

    let name = "limits";
    let args = run_args(
        &p,
        &["--detach", "--name", name, "--memory", "256m"],
        &[PODMAN_IMAGE, "sleep", "100000"],
    );
    p.ok(&strs(&args));
    let id = p.inspect(name, "{{.Id}}");
    let limit = || {
        p.ok(&[
            "exec",
            name,
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
        ])
        .trim()
        .to_string()
    };
    assert_eq!(limit(), (256u64 << 20).to_string());
    p.ok(&["update", "--memory", "128m", name]);
    assert_eq!(
        limit(),
        (128u64 << 20).to_string(),
        "after podman update\n{}",
        p.diagnose()
    );
    // podman writes `--resources=FILE` as one argument.
    let update = p.rec.find(&id, "update", |_| true);
    let resources = update
        .opt("--resources")
        .unwrap_or_else(|| panic!("update --resources=FILE: {}", update.line()));
    assert_eq!(
        update.args,
        [format!("--resources={resources}"), id.clone()],
        "update: {}",
        update.line()
    );
    assert!(update.global.is_empty(), "update: {}", update.line());
    p.ok(&["rm", "--force", "--time", "0", name]);
}
