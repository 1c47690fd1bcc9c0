//! examples/vagrant/Vagrantfile passes `vagrant validate` (Debian's vagrant, without provider
//! plugins: `--ignore-provider` checks everything but the provider blocks), with this build's
//! binaries as the files it provisions — and fails naming them when they are missing, so the
//! check is a real one. Run on a copy, so that vagrant's state stays out of the repository.

use std::path::Path;
use std::process::{Command, Output};

use skiff_tests::*;

fn validate(bin_dir: &Path) -> Output {
    let scratch = tempfile::tempdir().expect("scratch directory");
    std::fs::copy(
        workspace_dir().join("examples/vagrant/Vagrantfile"),
        scratch.path().join("Vagrantfile"),
    )
    .expect("copying the Vagrantfile");
    Command::new("vagrant")
        .args(["validate", "--ignore-provider"])
        .current_dir(scratch.path())
        .env("VAGRANT_CWD", scratch.path())
        .env("VAGRANT_HOME", scratch.path().join("vagrant.d"))
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .env("SKIFF_BIN_DIR", bin_dir)
        .output()
        .expect("running vagrant validate")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

#[test]
fn vagrantfile_validates() {
    require("vagrant", &["--version"], "Debian package vagrant");
    for b in ["skiff", "skiff-runc", "skiff-shim"] {
        binary(b);
    }
    let missing = std::thread::spawn(|| validate(Path::new("/nonexistent/skiff-bin")));
    let out = validate(&target_dir());
    assert!(
        out.status.success() && text(&out).contains("Vagrantfile validated successfully"),
        "vagrant validate:\n{}",
        text(&out)
    );
    let out = missing.join().expect("vagrant validate");
    assert!(
        !out.status.success() && text(&out).contains("/nonexistent/skiff-bin/skiff-runc"),
        "vagrant validate passes binaries that are not there:\n{}",
        text(&out)
    );
}
