//! cgroup v2, for real: boots a small VM in which cgroup2 is the only hierarchy (this machine's
//! controllers sit on cgroup v1 and cannot be moved) and runs the runtime's cgroup checks there
//! through its runc command line: limits from create on, the eBPF device program, the read-only
//! cgroup mount with and without a cgroup namespace, and on running containers exec,
//! pause/resume (cgroup.freeze), `events` (--stats and the stream with OOM events) and `update`.
//! See vm/mod.rs for how, vm/cases.rs and vm/scenario.sh for what.
//!
//! The runtime under test is skiff-runc, or `SKIFF_VM_RUNTIME` (e.g. /usr/sbin/runc, against which
//! the harness and its expected values were validated, except for the case
//! ro-cgroup-no-cgroupns: there runc shows the whole hierarchy, skiff-runc the container's own
//! cgroup). Needs qemu-system-x86 and busybox-static;
//! fetches Debian's linux-image-6.12.*-cloud-amd64-unsigned once (apt-get download). Takes 60–120 s
//! under TCG, depending on how busy the machine is. Run alone with
//! `cargo test -p skiff-runtime --test cgroup_v2_vm -- --nocapture` to see every check.

mod vm;

use std::path::PathBuf;

/// A complete run makes 347 checks; fewer than this means whole cases were skipped.
const MIN_CHECKS: usize = 330;

#[test]
fn cgroup_v2_in_a_vm() {
    let runtime = match std::env::var_os("SKIFF_VM_RUNTIME") {
        Some(r) if !r.is_empty() => PathBuf::from(r),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_skiff-runc")),
    };
    let outcome = vm::run(&runtime).unwrap_or_else(|e| panic!("cgroup v2 VM: {e:#}"));
    let log = outcome.report(&format!("cgroup v2 VM with {}", runtime.display()));
    let failed = outcome.failed();
    let mut problems = Vec::new();
    if !failed.is_empty() {
        problems.push(format!(
            "{} of {} checks failed:\n{}",
            failed.len(),
            outcome.checks.len(),
            failed.join("\n")
        ));
    }
    if outcome.done.is_none() {
        problems.push(format!(
            "the VM did not finish the scenario (no SKIFF-DONE); last serial lines:\n{}",
            skiff_testvm::tail(&log, 30)
        ));
    } else if outcome.checks.len() < MIN_CHECKS {
        problems.push(format!(
            "only {} checks ran (at least {MIN_CHECKS} expected): cases stopped early, see the failures above",
            outcome.checks.len()
        ));
    }
    assert!(
        problems.is_empty(),
        "cgroup v2 VM with {}: {}\n(serial log {})",
        runtime.display(),
        problems.join("\n"),
        outcome.serial_log.display()
    );
}
