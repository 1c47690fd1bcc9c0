//! The official Python `kubernetes` client (tests/python/client_test.py) against the server.

mod common;

use common::{Server, require};

#[test]
fn python_client() {
    require(
        "python3",
        &["-c", "import kubernetes"],
        "python3 with the `kubernetes` package: pip install kubernetes",
    );
    let s = Server::start_with(&["--compaction-interval", "1", "--bookmark-interval", "1"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client_test.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .env("KUBECONFIG", s.kubeconfig())
        .output()
        .expect("running python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "Python client tests failed:\n{stderr}\nserver log:\n{}",
        s.log()
    );
    assert!(stderr.contains("OK"), "{stderr}");
}
