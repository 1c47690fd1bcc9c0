//! `skiff install server|agent` into a scratch directory: the units pass `systemd-analyze
//! verify`, the token sits only in the private environment file, a second run changes nothing,
//! a file changed by hand is replaced only with `--force`, `--dry-run` writes nothing and bad
//! flags are refused by name with nothing written.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");
const TOKEN: &str = "abcdef.0123456789abcdef";

fn skiff(args: &[&str]) -> Output {
    Command::new(SKIFF)
        .args(args)
        .output()
        .expect("running skiff")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn install_server(dir: &Path, extra: &[&str]) -> Output {
    let env = dir.join("server.env");
    let mut args = vec![
        "install",
        "server",
        "--unit-dir",
        dir.to_str().unwrap(),
        "--env-file",
        env.to_str().unwrap(),
        "--bin",
        SKIFF,
    ];
    args.extend_from_slice(extra);
    skiff(&args)
}

fn install_agent(dir: &Path, extra: &[&str]) -> Output {
    install_agent_with(dir, &[], extra)
}

/// `skiff install agent` with valid flags, each of `replace` (flag, value) in place of its
/// valid value, and `extra` after them.
fn install_agent_with(dir: &Path, replace: &[(&str, &str)], extra: &[&str]) -> Output {
    let env = dir.join("agent.env");
    let flags = [
        ("--server", "https://10.0.0.1:6443"),
        ("--token", TOKEN),
        ("--node-name", "node-1"),
        ("--node-ip", "10.0.0.2"),
        ("--kubelet-arg", "--max-pods=50"),
        ("--unit-dir", dir.to_str().unwrap()),
        ("--env-file", env.to_str().unwrap()),
        ("--bin", SKIFF),
    ];
    let mut args = vec!["install".to_string(), "agent".to_string()];
    for (flag, value) in flags {
        let value = replace
            .iter()
            .find(|(f, _)| *f == flag)
            .map_or(value, |(_, v)| v);
        args.push(format!("{flag}={value}"));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Command::new(SKIFF)
        .args(&args)
        .output()
        .expect("running skiff")
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("scratch directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "this test needs `systemd-analyze` (Debian package systemd); it is missing"
    );
    let tmp = tempfile::tempdir().expect("scratch directory");
    let dir = tmp.path();
    let out = install_server(dir, &["--data-dir", "/var/lib/skiff/server"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = install_agent(dir, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        files(dir),
        [
            "agent.env",
            "server.env",
            "skiff-agent.service",
            "skiff-server.service"
        ]
    );

    let agent = std::fs::read_to_string(dir.join("skiff-agent.service")).expect("agent unit");
    let server = std::fs::read_to_string(dir.join("skiff-server.service")).expect("server unit");
    for line in [
        &format!(
            "ExecStart={SKIFF} agent --server https://10.0.0.1:6443 --data-dir /var/lib/skiff/agent --node-name node-1 --node-ip 10.0.0.2 --kubelet-arg=--max-pods=50"
        ),
        &format!("EnvironmentFile={}", dir.join("agent.env").display()),
        "KillMode=process",
        "Delegate=yes",
        "Restart=always",
        "Type=simple",
        "After=network-online.target",
        "ExecStartPre=-/sbin/modprobe br_netfilter",
    ] {
        assert!(
            agent.lines().any(|l| l == line),
            "agent unit lacks {line:?}:\n{agent}"
        );
    }
    assert!(!agent.contains(TOKEN), "the token is in the unit:\n{agent}");
    assert!(
        server.lines().any(|l| l
            == format!(
                "ExecStart={SKIFF} server --data-dir /var/lib/skiff/server --listen 0.0.0.0:6443"
            )),
        "{server}"
    );
    let env = dir.join("agent.env");
    assert!(
        std::fs::read_to_string(&env)
            .expect("agent.env")
            .lines()
            .any(|l| l == format!("SKIFF_TOKEN={TOKEN}"))
    );
    let mode = std::fs::metadata(&env)
        .expect("agent.env")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the token's file is private");

    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("skiff-server.service"))
        .arg(dir.join("skiff-agent.service"))
        .output()
        .expect("systemd-analyze verify");
    let said = text(&verify);
    let about_ours: Vec<&str> = said.lines().filter(|l| l.contains("skiff")).collect();
    assert!(
        verify.status.success() && about_ours.is_empty(),
        "systemd-analyze verify finds fault with the units:\n{said}"
    );

    // Again: nothing to change.
    let out = install_agent(dir, &[]);
    assert!(
        out.status.success() && text(&out).contains("already as they should be"),
        "{}",
        text(&out)
    );
    // A different token: refused without --force, the old file kept; replaced with it.
    std::fs::write(&env, "SKIFF_TOKEN=other\n").expect("editing agent.env");
    let out = install_agent(dir, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{} exists", env.display())) && text(&out).contains("--force"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        "SKIFF_TOKEN=other\n"
    );
    let out = install_agent(dir, &["--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read_to_string(&env).unwrap().contains(TOKEN));
}

#[test]
fn dry_run_prints_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("scratch directory");
    let out = install_agent(tmp.path(), &["--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = text(&out);
    assert!(printed.contains("[Service]") && printed.contains(&format!("SKIFF_TOKEN={TOKEN}")));
    assert!(files(tmp.path()).is_empty(), "{:?}", files(tmp.path()));
}

#[test]
fn bad_flags_are_refused_by_name() {
    let tmp = tempfile::tempdir().expect("scratch directory");
    let dir = tmp.path();
    for (flag, value) in [
        ("--server", "http://10.0.0.1:6443"),
        ("--node-name", "Node_1"),
        ("--token", "a b"),
        ("--node-ip", "10.0.0.300"),
        ("--bin", "/nonexistent/skiff"),
        ("--env-file", "relative.env"),
        ("--kubelet-arg", "--a=\nb"),
    ] {
        let out = install_agent_with(dir, &[(flag, value)], &[]);
        let said = text(&out);
        assert!(
            !out.status.success(),
            "{flag}={value:?} was accepted:\n{said}"
        );
        assert!(
            said.contains(flag),
            "{flag}={value:?}: the error does not name it:\n{said}"
        );
        assert!(
            files(dir).is_empty(),
            "{flag}={value:?} left {:?}",
            files(dir)
        );
    }
    let out = install_agent(dir, &["--no-such-flag"]);
    assert!(
        !out.status.success() && text(&out).contains("--no-such-flag"),
        "{}",
        text(&out)
    );
    let out = install_server(dir, &["--listen", "6443"]);
    assert!(
        !out.status.success() && text(&out).contains("--listen"),
        "{}",
        text(&out)
    );
    assert!(files(dir).is_empty(), "{:?}", files(dir));
}
