//! The pod sandbox's pinned namespaces (root only): made, joined, adopted, removed.

use std::path::Path;
use std::process::Command;

use skiff_kubelet::network::{Sandbox, SandboxOptions};

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the network tests need root"
    );
}

fn ns_id(path: &Path) -> String {
    std::fs::metadata(path)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m).to_string())
        .unwrap()
}

fn nsenter_output(args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .args(args)
        .output()
        .expect("nsenter (util-linux) is needed");
    assert!(
        out.status.success(),
        "nsenter {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn sandbox_pins_namespaces_and_is_adopted_and_removed() {
    require_root();
    let run = tempfile::tempdir().unwrap();
    let options = SandboxOptions {
        hostname: "web-0".into(),
        ..Default::default()
    };
    let sandbox = Sandbox::create(run.path(), "uid-1", &options).unwrap();
    let net = sandbox.net_path().unwrap();
    let uts = sandbox.uts_path().unwrap();
    let ipc = sandbox.ipc_path().unwrap();
    for (path, own) in [
        (&net, "/proc/self/ns/net"),
        (&uts, "/proc/self/ns/uts"),
        (&ipc, "/proc/self/ns/ipc"),
    ] {
        assert_ne!(
            ns_id(path),
            ns_id(Path::new(own)),
            "{} is the node's",
            path.display()
        );
    }
    // The namespaces outlive the thread that made them and can be joined by path.
    let uts_arg = format!("--uts={}", uts.display());
    assert_eq!(nsenter_output(&[&uts_arg, "hostname"]).trim(), "web-0");
    let net_arg = format!("--net={}", net.display());
    let links = nsenter_output(&[&net_arg, "cat", "/proc/net/dev"]);
    assert!(links.contains("lo:") && !links.contains("eth0"), "{links}");

    let oci = serde_json::to_value(sandbox.oci_namespaces()).unwrap();
    assert_eq!(
        oci,
        serde_json::json!([
            {"type": "network", "path": net},
            {"type": "ipc", "path": ipc},
            {"type": "uts", "path": uts},
        ])
    );

    // A second create is refused; a restarted kubelet adopts the same namespaces.
    assert!(Sandbox::create(run.path(), "uid-1", &options).is_err());
    let adopted = Sandbox::open(run.path(), "uid-1").unwrap().unwrap();
    assert_eq!(ns_id(&adopted.net_path().unwrap()), ns_id(&net));
    assert_eq!(Sandbox::list_uids(run.path()).unwrap(), ["uid-1"]);

    adopted.remove().unwrap();
    adopted.remove().unwrap();
    assert!(!sandbox.dir().exists());
    assert!(Sandbox::open(run.path(), "uid-1").unwrap().is_none());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(run.path().to_str().unwrap()),
        "mounts left: {mounts}"
    );
}

#[test]
fn host_network_sandbox_keeps_the_node_network_and_hostname() {
    require_root();
    let run = tempfile::tempdir().unwrap();
    let options = SandboxOptions {
        host_network: true,
        ..Default::default()
    };
    let sandbox = Sandbox::create(run.path(), "uid-host", &options).unwrap();
    assert!(sandbox.net_path().is_none() && sandbox.uts_path().is_none());
    let kinds: Vec<_> = sandbox
        .namespaces()
        .into_iter()
        .map(|(k, _)| k.oci_type())
        .collect();
    assert_eq!(kinds, ["ipc"]);
    Sandbox::remove_by_uid(run.path(), "uid-host").unwrap();
    assert!(!sandbox.dir().exists());
}

#[test]
fn half_made_sandbox_is_cleared() {
    require_root();
    let run = tempfile::tempdir().unwrap();
    // What a crash between the bind mounts and the marker leaves behind.
    let dir = Sandbox::dir_of(run.path(), "uid-half").unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("net"), "").unwrap();
    std::fs::write(dir.join(".sandbox.json.tmp-1"), "{").unwrap();
    assert!(Sandbox::open(run.path(), "uid-half").unwrap().is_none());
    let options = SandboxOptions {
        hostname: "h".into(),
        ..Default::default()
    };
    let sandbox = Sandbox::create(run.path(), "uid-half", &options).unwrap();
    assert!(Sandbox::open(run.path(), "uid-half").unwrap().is_some());
    sandbox.remove().unwrap();
    assert!(!dir.exists());
    assert!(Sandbox::create(run.path(), "../escape", &options).is_err());
}
