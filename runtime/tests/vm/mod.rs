//! The runtime's scenario in the cgroup v2 test VM (skiff-testvm's [`run_scenario`]: Debian's
//! cloud kernel under qemu TCG, cgroup2 the only hierarchy): `scenario.sh` runs every case of
//! [`cases`] against an OCI runtime with runc's command line, its bundles under /skiff/cases.
//!
//! skiff-testvm says what the host needs (qemu-system-x86, busybox-static, apt to fetch the
//! kernel once). No root needed. `SKIFF_VM_TIMEOUT`: seconds before qemu is killed (default 240).

pub mod cases;

use anyhow::Result;
use skiff_testvm::{Outcome, Scenario, run_scenario};
use std::path::Path;

/// The checks, run with the runtime under test as `$1`.
const SCENARIO_SH: &str = include_str!("scenario.sh");

/// Kernel options the scenario relies on (all built in, `=y`).
const REQUIRED_KERNEL_CONFIG: &[&str] = &[
    "CONFIG_CGROUPS",
    "CONFIG_CPUSETS",
    "CONFIG_CGROUP_SCHED",
    "CONFIG_FAIR_GROUP_SCHED",
    "CONFIG_CFS_BANDWIDTH",
    "CONFIG_BLK_CGROUP",
    "CONFIG_BLK_CGROUP_IOCOST",
    "CONFIG_MEMCG",
    "CONFIG_SWAP",
    "CONFIG_CGROUP_HUGETLB",
    "CONFIG_HUGETLBFS",
    "CONFIG_CGROUP_PIDS",
    "CONFIG_CGROUP_BPF",
    "CONFIG_BPF_SYSCALL",
    "CONFIG_NAMESPACES",
    "CONFIG_UTS_NS",
    "CONFIG_IPC_NS",
    "CONFIG_PID_NS",
    "CONFIG_NET_NS",
    "CONFIG_USER_NS",
    "CONFIG_TIME_NS",
    "CONFIG_TMPFS",
    "CONFIG_DEVTMPFS",
    "CONFIG_BLK_DEV_INITRD",
    "CONFIG_SERIAL_8250",
    "CONFIG_SERIAL_8250_CONSOLE",
    "CONFIG_POSIX_MQUEUE",
    "CONFIG_SECCOMP_FILTER",
];

/// Modules put into the VM, with the kernel option that must be `=m` for them; none is needed to
/// boot. bfq provides `io.bfq.weight`, which runc prefers over `io.weight` when it exists: the
/// scenario loads it half-way to test both paths. brd makes a ramdisk (block 1:0) for the io.max
/// throttling case.
const MODULES: &[(&str, &str)] = &[
    ("kernel/block/bfq.ko.xz", "CONFIG_IOSCHED_BFQ"),
    ("kernel/drivers/block/brd.ko.xz", "CONFIG_BLK_DEV_RAM"),
];

/// Boots the VM with the runtime's scenario and collects the checks.
pub fn run(runtime: &Path) -> Result<Outcome> {
    let mut kernel_config: Vec<(&str, &str)> =
        REQUIRED_KERNEL_CONFIG.iter().map(|o| (*o, "y")).collect();
    kernel_config.extend(MODULES.iter().map(|(_, o)| (*o, "m")));
    let modules: Vec<&str> = MODULES.iter().map(|(m, _)| *m).collect();
    // Bundles and what the scenario expects of each.
    let mut files = Vec::new();
    let mut list = String::new();
    for case in cases::cases() {
        files.push((format!("cases/{}/config.json", case.id), case.config_json()));
        files.push((
            format!("cases/{}/expect", case.id),
            case.expect().into_bytes(),
        ));
        list.push_str(case.id);
        list.push('\n');
    }
    files.push(("cases/list".to_string(), list.into_bytes()));
    run_scenario(&Scenario {
        name: "runtime",
        tmp_dir: Path::new(env!("CARGO_TARGET_TMPDIR")),
        runtime,
        script: SCENARIO_SH,
        tools: &[],
        kernel_config: &kernel_config,
        modules: &modules,
        files,
    })
}
