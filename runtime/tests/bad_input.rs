//! Bad input: a non-zero exit, one line on stderr (and in --log) naming the problem, and nothing
//! left behind — no state directory, no cgroup, no mount, no process (needs root).

mod common;
use common::*;
use serde_json::json;

/// Runs `create` on a bundle that must fail; checks the message and that nothing is left.
fn refused(runc: &Runc, b: &Bundle, id: &str, expect: &[&str]) {
    let ours: Vec<&std::path::Path> = vec![b.path(), runc.root.path()];
    let before = host_mounts_under(&ours);
    let cg = b.config["linux"]["cgroupsPath"]
        .as_str()
        .map(str::to_string);
    let log = b.path().join("log.json");
    let out = runc.run(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "create",
        "--bundle",
        b.path_str(),
        id,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line on stderr, got: {err}"
    );
    for e in expect {
        assert!(err.contains(e), "stderr {err:?} does not name {e:?}");
    }
    // containerd's shim reads the last JSON line of --log.
    let logged = std::fs::read_to_string(&log).unwrap();
    let last: serde_json::Value = serde_json::from_str(logged.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error");
    assert_eq!(last["msg"].as_str().unwrap(), err.trim_end());
    assert!(last["time"].is_string());
    assert!(
        !runc.root.path().join(id).exists(),
        "state directory left behind"
    );
    if let Some(cg) = cg {
        assert!(
            cgroup_dirs(&cg).is_empty(),
            "cgroups left behind: {:?}",
            cgroup_dirs(&cg)
        );
    }
    assert_eq!(before, host_mounts_under(&ours), "a mount was left behind");
    let list = runc.ok(&["list", "-q"]);
    assert!(!list.contains(id), "{list}");
}

fn bundle_with_cgroup() -> Bundle {
    let cg = format!("/skiff-test-{}", unique("bad"));
    Bundle::new(&["true"]).with(|c| c["linux"]["cgroupsPath"] = json!(cg))
}

#[test]
fn missing_config() {
    let runc = Runc::new();
    let b = Bundle::new(&["true"]);
    std::fs::remove_file(b.path().join("config.json")).unwrap();
    refused(
        &runc,
        &b,
        &unique("noconf"),
        &["config.json", "No such file"],
    );
}

#[test]
fn malformed_config() {
    let runc = Runc::new();
    let b = Bundle::new(&["true"]);
    std::fs::write(
        b.path().join("config.json"),
        "{\"ociVersion\": \"1.2.0\", \"process\": ",
    )
    .unwrap();
    refused(&runc, &b, &unique("malformed"), &["config.json", "EOF"]);
}

#[test]
fn field_of_the_wrong_type() {
    let runc = Runc::new();
    let b = Bundle::new(&["true"]).with(|c| c["process"]["user"]["uid"] = json!("root"));
    refused(
        &runc,
        &b,
        &unique("type"),
        &["config.json", "process.user.uid", "invalid type"],
    );
    let b = Bundle::new(&["true"])
        .with(|c| c["linux"]["resources"] = json!({"memory": {"limit": "lots"}}));
    refused(
        &runc,
        &b,
        &unique("type"),
        &["linux.resources.memory.limit"],
    );
}

#[test]
fn missing_rootfs() {
    let runc = Runc::new();
    let b = Bundle::new(&["true"]).with(|c| c["root"]["path"] = json!("nope"));
    refused(
        &runc,
        &b,
        &unique("norootfs"),
        &["root.path", "nope", "does not exist"],
    );
}

#[test]
fn invalid_namespace_path() {
    let runc = Runc::new();
    let b = bundle_with_cgroup().with(|c| {
        c["linux"]["namespaces"].as_array_mut().unwrap()[1]["path"] =
            json!("/proc/nonexistent/ns/net");
    });
    refused(
        &runc,
        &b,
        &unique("nspath"),
        &["linux.namespaces", "/proc/nonexistent/ns/net"],
    );
    // A namespace file of another type is refused too.
    let b = bundle_with_cgroup().with(|c| {
        c["linux"]["namespaces"].as_array_mut().unwrap()[1]["path"] = json!("/proc/self/ns/uts");
    });
    refused(
        &runc,
        &b,
        &unique("nstype"),
        &["is not a network namespace"],
    );
}

#[test]
fn mount_with_a_missing_source() {
    let runc = Runc::new();
    let b = bundle_with_cgroup().with(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/data", "type": "bind", "source": "/no/such/dir", "options": ["rbind"]}));
    });
    refused(
        &runc,
        &b,
        &unique("mount"),
        &["mounts[7]", "/data", "/no/such/dir"],
    );
}

#[test]
fn program_not_found() {
    let runc = Runc::new();
    let b = bundle_with_cgroup().with(|c| c["process"]["args"] = json!(["no-such-program"]));
    refused(
        &runc,
        &b,
        &unique("noprog"),
        &["no-such-program", "not found"],
    );
}

#[test]
fn invalid_and_duplicate_ids() {
    let runc = Runc::new();
    let b = Bundle::new(&["sleep", "100"]);
    refused(&runc, &b, "../escape", &["invalid container id"]);
    let id = unique("dup");
    runc.ok(&["create", "--bundle", b.path_str(), &id]);
    let out = runc.run(&["create", "--bundle", b.path_str(), &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("container with id exists"));
    // The first container is untouched.
    assert_eq!(runc.status(&id), "created");
    runc.ok(&["delete", "--force", &id]);
}

#[test]
fn unknown_id_for_every_verb() {
    let runc = Runc::new();
    for verb in [&["start"][..], &["state"], &["kill"], &["delete"], &["ps"]] {
        let mut args = verb.to_vec();
        args.push("nosuchcontainer");
        let out = runc.run(&args);
        assert_eq!(out.status.code(), Some(1), "{verb:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("does not exist") && err.contains("nosuchcontainer"),
            "{verb:?}: {err}"
        );
    }
    // As runc: delete --force of an unknown container succeeds.
    runc.ok(&["delete", "--force", "nosuchcontainer"]);
}
