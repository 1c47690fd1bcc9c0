//! `skiff-proxy cleanup` on the iptables nf_tables backend reads what it owns without
//! `iptables-save` (1.8.9's crashes on 10,000 Services' chains): run here with no
//! `iptables-save` on its PATH, inside a network namespace of its own, it removes our chains and
//! jumps and leaves another component's `SKIFF-` chain and a foreign chain as they were.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The full path of `tool` on PATH, or a failure naming the package to install.
fn which(tool: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("this test needs `{tool}` (Debian package {package}) and root"))
}

/// A network namespace removed on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

impl Netns {
    fn exec(&self, args: &[&str]) -> String {
        let out = run(Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn cleanup_on_nf_tables_needs_no_iptables_save_and_keeps_foreign_chains() {
    let iptables = which("iptables", "iptables");
    which("iptables-save", "iptables");
    which("ip", "iproute2");
    let version = run(Command::new(&iptables).arg("-V")).stdout;
    assert!(
        String::from_utf8_lossy(&version).contains("nf_tables"),
        "this test needs iptables' nf_tables backend (update-alternatives --set iptables /usr/sbin/iptables-nft)"
    );
    let nft = which("nft", "nftables");
    let restore = which("iptables-restore", "iptables");

    let ns = Netns(format!("spclean{}", std::process::id()));
    run(Command::new("ip").args(["netns", "add", &ns.0]));
    for (table, chain) in [
        ("nat", "SKIFF-SERVICES"),
        ("nat", "SKIFF-SVC-AAAAAAAAAAAAAAAA"),
        ("nat", "SKIFF-SEP-BBBBBBBBBBBBBBBB"),
        ("nat", "SKIFF-HP-KEEP"),
        ("filter", "SKIFF-SERVICES"),
        ("filter", "OTHER"),
    ] {
        ns.exec(&["iptables", "-t", table, "-N", chain]);
    }
    ns.exec(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "SKIFF-SVC-AAAAAAAAAAAAAAAA",
        "-j",
        "SKIFF-SEP-BBBBBBBBBBBBBBBB",
    ]);
    ns.exec(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "SKIFF-SEP-BBBBBBBBBBBBBBBB",
        "-p",
        "tcp",
        "-j",
        "DNAT",
        "--to-destination",
        "10.244.0.2:80",
    ]);
    for (table, builtin, target) in [
        ("nat", "PREROUTING", "SKIFF-SERVICES"),
        ("nat", "OUTPUT", "SKIFF-SERVICES"),
        ("nat", "PREROUTING", "SKIFF-HP-KEEP"),
        ("filter", "INPUT", "SKIFF-SERVICES"),
        ("filter", "INPUT", "OTHER"),
    ] {
        ns.exec(&["iptables", "-t", table, "-A", builtin, "-j", target]);
    }

    // A PATH holding only the tools the proxy may use for this.
    let bin = tempfile::tempdir().expect("tempdir");
    for tool in [&iptables, &nft, &restore] {
        let name = tool.file_name().expect("tool name");
        std::os::unix::fs::symlink(tool, bin.path().join(name)).expect("symlink");
    }
    assert!(!Path::new(&bin.path().join("iptables-save")).exists());
    ns.exec(&[
        "env",
        &format!("PATH={}", bin.path().display()),
        env!("CARGO_BIN_EXE_skiff-proxy"),
        "cleanup",
    ]);

    let left = ns.exec(&["iptables-save"]);
    for gone in ["SKIFF-SERVICES", "SKIFF-SVC-", "SKIFF-SEP-"] {
        assert!(!left.contains(gone), "{gone} left behind:\n{left}");
    }
    for kept in [
        ":SKIFF-HP-KEEP",
        "-A PREROUTING -j SKIFF-HP-KEEP",
        ":OTHER",
        "-A INPUT -j OTHER",
    ] {
        assert!(left.contains(kept), "{kept} removed:\n{left}");
    }
}
