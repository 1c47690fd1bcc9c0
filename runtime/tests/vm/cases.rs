//! The containers the cgroup v2 scenario runs: one OCI bundle each, and what `scenario.sh` expects
//! of it. The expected values are runc's (v1.1, Debian 12), against which this file was validated.
//!
//! `expect` is read by scenario.sh, one directive a line:
//! - `path exact|suffix|dedicated [P]`: where the container's cgroup must be (as /proc/PID/cgroup
//!   shows it from outside), `dedicated` meaning only "neither / nor the runtime's own cgroup";
//! - `file NAME VALUE`: the cgroup file NAME must read VALUE (newlines joined by spaces), both from
//!   outside (/sys/fs/cgroup/<path>/NAME) and from inside (the container's /sys/fs/cgroup/NAME);
//! - `inside-cgroup P`: the container has no cgroup namespace, so its /proc/self/cgroup shows P
//!   (otherwise "/");
//! - `before CMD`: run in the VM before `create`;
//! - `finish kill SIG` (kill, wait for stopped, delete) or `finish force` (`delete --force`);
//! - `finish fail WORD`: `create` must fail, saying WORD on stderr, and leave no cgroup nor state;
//! - `finish run EXIT`: the container is run with `run` (in the background of the scenario, which
//!   checks the cgroup from outside meanwhile, then lets it go by creating /tmp/run-shared/go, seen
//!   in the container as /shared/go) and must exit with EXIT;
//! - `finish live`: after the checks of a started container, scenario.sh's `live_<id>` (dashes as
//!   underscores) drives it further (exec, pause/resume, events, update) and ends it;
//! - `update flags ARGS…` / `update resources JSON`: (`live` cases) `update` with those flags, or
//!   with `--resources` of a file holding JSON, on the running container, in order; each followed
//!   by `after NAME VALUE` lines: what the cgroup file NAME must then read, from outside and (via
//!   `exec`) from inside.
//!
//! Inside the container, the process prints `IN NAME VALUE` for each file, `CGROUP <own cgroup>`,
//! the lines of its extra checks (`CHECK ok|fail NAME DETAIL`), then `PROBE-DONE`, and sleeps.

use serde_json::{Value, json};

/// runc's cpu.shares → cpu.weight conversion (libcontainer/cgroups.ConvertCPUSharesToCgroupV2Value).
pub fn cpu_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + ((shares - 2) * 9999) / 262142
}

/// runc's blkio.weight → io.weight conversion (ConvertBlkIOToIOWeightValue), used when the kernel has
/// no io.bfq.weight.
pub fn io_weight(blkio: u64) -> u64 {
    if blkio == 0 {
        return 0;
    }
    1 + (blkio - 10) * 9999 / 990
}

const MIB: i64 = 1024 * 1024;

pub struct Case {
    pub id: &'static str,
    pub cgroups_path: Option<&'static str>,
    pub resources: Value,
    pub path: (&'static str, &'static str),
    pub files: Vec<(&'static str, String)>,
    /// Extra shell run inside the container, with `check NAME WANT GOT`, `open_r`, `open_w` (print
    /// the error of opening a file, empty on success) at hand.
    pub inside: String,
    pub mounts: Vec<Value>,
    pub before: Option<&'static str>,
    pub finish: &'static str,
    /// `live` cases: `update` calls (`flags …` or `resources {json}`) and the files they must set.
    pub updates: Vec<(String, Vec<(&'static str, String)>)>,
    /// The namespaces the container shares with the VM: "pid" (nothing dies with its init),
    /// "cgroup" (then `path` must be `exact`: the container sees that path as its cgroup).
    pub shared_ns: &'static [&'static str],
}

/// Shell prelude of every container's process.
const PROBE_HEAD: &str = r#"
check() { if [ "$2" = "$3" ]; then echo "CHECK ok $1 $3"; else echo "CHECK fail $1 want '$2' got '$3'"; fi; }
open_r() { ( exec 3<"$1" ) 2>&1 | sed 's/.*: //'; }
open_w() { ( exec 3>"$1" ) 2>&1 | sed 's/.*: //'; }
for f in "$@"; do printf 'IN %s %s\n' "$f" "$(cat /sys/fs/cgroup/$f 2>&1 | tr '\n' ' ' | sed 's/ *$//')"; done
printf 'CGROUP %s\n' "$(cat /proc/self/cgroup | tr '\n' ' ' | sed 's/ *$//')"
"#;

const PROBE_TAIL: &str = "
echo PROBE-DONE
exec sleep 100000
";

/// hugetlb: 4 MiB = two 2 MiB pages may be taken (the VM reserves 8), a third may not.
const HUGETLB_INSIDE: &str = r#"
check hugetlb-within-limit "" "$(fallocate -l 4194304 /hugepages/a 2>&1)"
check hugetlb-charged 4194304 "$(cat /sys/fs/cgroup/hugetlb.2MB.current)"
check hugetlb-over-limit-refused refused "$(fallocate -l 2097152 /hugepages/b 2>/dev/null && echo allowed || echo refused)"
rm -f /hugepages/a /hugepages/b
"#;

/// pids: fork far more than pids.max allows. Must come last: once at the limit the shell cannot fork,
/// so everything after it uses builtins only (`read`, `case`, `echo`, `[`).
const PIDS_INSIDE: &str = r#"
out=$( ( for i in $(seq 30); do sleep 60 < /dev/null > /dev/null 2>&1 & done; echo forked-all-30 ) 2>&1 )
case "$out" in *forked-all-30*) echo "CHECK fail pids-fork-refused-at-limit all 30 forks succeeded";; *) echo "CHECK ok pids-fork-refused-at-limit ${out##*: }";; esac
read n < /sys/fs/cgroup/pids.current
if [ "$n" -le 16 ] && [ "$n" -ge 10 ]; then echo "CHECK ok pids-current-at-limit $n"; else echo "CHECK fail pids-current-at-limit want 10..16 got '$n'"; fi
read e < /sys/fs/cgroup/pids.events
case "$e" in "max 0"|"") echo "CHECK fail pids-events-max want 'max N>0' got '$e'";; *) echo "CHECK ok pids-events-max $e";; esac
"#;

/// devices (eBPF program on v2): the rules of the `devices` case below.
const DEVICES_INSIDE: &str = r#"
check dev-null-rw "" "$( (echo x > /dev/null && cat /dev/null) 2>&1)"
check mknod-allowed "" "$(mknod /tmp/sda b 8 0 2>&1; mknod /tmp/kmsg c 1 11 2>&1; mknod /tmp/loop0 b 7 0 2>&1; mknod /tmp/loop1 b 7 1 2>&1)"
check denied-block-read "Operation not permitted" "$(open_r /tmp/sda)"
check denied-block-write "Operation not permitted" "$(open_w /tmp/sda)"
check read-only-rule-read "" "$(open_r /tmp/kmsg)"
check read-only-rule-write "Operation not permitted" "$(open_w /tmp/kmsg)"
check wildcard-minor-read-allowed "No such device or address" "$(open_r /tmp/loop0)"
check wildcard-minor-read-allowed-2 "No such device or address" "$(open_r /tmp/loop1)"
check wildcard-minor-write-denied "Operation not permitted" "$(open_w /tmp/loop1)"
"#;

/// Many rules, as on a node with device plugins: 64 allowed char devices 100:0..63, a few checked.
const MANY_DEVICES_INSIDE: &str = r#"
check mknod-allowed "" "$(mknod /tmp/d0 c 100 0 2>&1; mknod /tmp/d63 c 100 63 2>&1; mknod /tmp/d64 c 100 64 2>&1)"
check first-rule-allowed "No such device or address" "$(open_r /tmp/d0)"
check last-rule-allowed "No such device or address" "$(open_w /tmp/d63)"
check unlisted-denied "Operation not permitted" "$(open_r /tmp/d64)"
"#;

/// The device rules of the `stats-update` case before any update (scenario.sh's DEVICES_PROBE tries
/// the same after each one, through exec).
const UPDATE_DEVICES_INSIDE: &str = r#"
check dev-null-w "" "$(open_w /dev/null)"
check mknod-allowed "" "$(mknod /tmp/sda b 8 0 2>&1; mknod /tmp/kmsg c 1 11 2>&1)"
check denied-block-read "Operation not permitted" "$(open_r /tmp/sda)"
check denied-block-write "Operation not permitted" "$(open_w /tmp/sda)"
check read-only-rule-read "" "$(open_r /tmp/kmsg)"
check read-only-rule-write "Operation not permitted" "$(open_w /tmp/kmsg)"
"#;

/// The `type: cgroup` mount, read-only as in runc's default spec: the container's own cgroup
/// (the limits the case sets, its own process listed) and nothing of the VM's hierarchy, which it
/// cannot write; mountinfo shows which cgroup is mounted (the root of a cgroup namespace, or the
/// bound directory itself as the VM sees it).
fn cgroup_mount_inside(root: &str) -> String {
    format!(
        r#"
check cgroup.procs-lists-self yes "$(grep -qx "$$" /sys/fs/cgroup/cgroup.procs && echo yes || echo no)"
check vm-hierarchy-hidden absent "$( [ -e /sys/fs/cgroup/harness ] && echo present || echo absent)"
check mount-root-and-ro "{root} ro" "$(awk '$5 == "/sys/fs/cgroup" {{ split($6, o, ","); print $4, o[1] }}' /proc/self/mountinfo)"
check write-refused "Read-only file system" "$(open_w /sys/fs/cgroup/pids.max)"
check mkdir-refused "Read-only file system" "$(mkdir /sys/fs/cgroup/sub 2>&1 | sed 's/.*: //')"
"#
    )
}

fn dev(allow: bool, kind: &str, major: Option<i64>, minor: Option<i64>, access: &str) -> Value {
    let mut d = json!({"allow": allow, "access": access});
    if kind != "a" {
        d["type"] = json!(kind);
    }
    if let Some(m) = major {
        d["major"] = json!(m);
    }
    if let Some(m) = minor {
        d["minor"] = json!(m);
    }
    d
}

pub fn cases() -> Vec<Case> {
    let mut many_devices = vec![
        dev(false, "a", None, None, "rwm"),
        dev(true, "c", None, None, "m"),
        dev(true, "c", Some(1), Some(3), "rwm"),
    ];
    many_devices.extend((0..64).map(|n| dev(true, "c", Some(100), Some(n), "rw")));
    let hugetlbfs = json!({"destination": "/hugepages", "type": "hugetlbfs", "source": "hugetlbfs", "options": ["pagesize=2M"]});
    vec![
        Case {
            id: "resources",
            cgroups_path: Some("/skiff-abs/resources"),
            resources: json!({
                "memory": {"limit": 200 * MIB, "reservation": 50 * MIB, "swap": 300 * MIB},
                "cpu": {"shares": 2048, "quota": 50000, "period": 100000, "cpus": "1", "mems": "0"},
                "pids": {"limit": 16},
                "blockIO": {"weight": 500},
                "hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MIB}],
            }),
            path: ("exact", "/skiff-abs/resources"),
            files: vec![
                ("memory.max", (200 * MIB).to_string()),
                ("memory.low", (50 * MIB).to_string()),
                ("memory.swap.max", (100 * MIB).to_string()),
                ("cpu.weight", cpu_weight(2048).to_string()),
                ("cpu.max", "50000 100000".into()),
                ("cpuset.cpus", "1".into()),
                ("cpuset.mems", "0".into()),
                ("pids.max", "16".into()),
                ("io.weight", format!("default {}", io_weight(500))),
                ("hugetlb.2MB.max", (4 * MIB).to_string()),
            ],
            inside: [HUGETLB_INSIDE, PIDS_INSIDE].concat(),
            mounts: vec![hugetlbfs],
            before: None,
            finish: "kill KILL",
            shared_ns: &[],
            updates: vec![],
        },
        Case {
            id: "relative",
            cgroups_path: Some("skiff-rel/relative"),
            resources: json!({
                "memory": {"limit": 100 * MIB, "swap": 100 * MIB},
                "cpu": {"shares": 2, "quota": -1, "period": 250000},
                "pids": {"limit": -1},
            }),
            path: ("suffix", "/skiff-rel/relative"),
            files: vec![
                ("memory.max", (100 * MIB).to_string()),
                ("memory.swap.max", "0".into()),
                ("cpu.weight", cpu_weight(2).to_string()),
                ("cpu.max", "max 250000".into()),
                ("pids.max", "max".into()),
            ],
            inside: String::new(),
            mounts: vec![],
            before: None,
            finish: "kill 9",
            shared_ns: &[],
            updates: vec![],
        },
        Case {
            // The read-only cgroup mount of a container without a cgroup namespace: its own
            // directory bound there (runc and crun would mount the whole hierarchy).
            id: "ro-cgroup-no-cgroupns",
            cgroups_path: Some("/skiff-abs/ro-cgroup-no-cgroupns"),
            resources: json!({"memory": {"limit": 48 * MIB}, "pids": {"limit": 20}}),
            path: ("exact", "/skiff-abs/ro-cgroup-no-cgroupns"),
            files: vec![
                ("memory.max", (48 * MIB).to_string()),
                ("pids.max", "20".into()),
            ],
            inside: cgroup_mount_inside("/skiff-abs/ro-cgroup-no-cgroupns"),
            mounts: vec![],
            before: None,
            finish: "kill KILL",
            shared_ns: &["cgroup"],
            updates: vec![],
        },
        Case {
            // The same with a cgroup namespace: a cgroup2 mount whose root is the container's.
            id: "ro-cgroup-cgroupns",
            cgroups_path: Some("/skiff-abs/ro-cgroup-cgroupns"),
            resources: json!({"memory": {"limit": 48 * MIB}, "pids": {"limit": 20}}),
            path: ("exact", "/skiff-abs/ro-cgroup-cgroupns"),
            files: vec![
                ("memory.max", (48 * MIB).to_string()),
                ("pids.max", "20".into()),
            ],
            inside: cgroup_mount_inside("/"),
            mounts: vec![],
            before: None,
            finish: "kill KILL",
            shared_ns: &[],
            updates: vec![],
        },
        Case {
            id: "devices",
            cgroups_path: None,
            resources: json!({
                "memory": {"limit": 64 * MIB, "swap": -1},
                "devices": [
                    dev(false, "a", None, None, "rwm"),
                    dev(true, "c", None, None, "m"),
                    dev(true, "b", None, None, "m"),
                    dev(true, "c", Some(1), Some(3), "rwm"),
                    dev(true, "c", Some(1), Some(5), "rwm"),
                    dev(true, "c", Some(1), Some(11), "r"),
                    dev(true, "b", Some(7), None, "r"),
                ],
            }),
            path: ("dedicated", ""),
            files: vec![
                ("memory.max", (64 * MIB).to_string()),
                ("memory.swap.max", "max".into()),
            ],
            inside: DEVICES_INSIDE.into(),
            mounts: vec![],
            before: None,
            finish: "kill KILL",
            shared_ns: &[],
            updates: vec![],
        },
        Case {
            id: "many-devices",
            cgroups_path: Some("/skiff-abs/many-devices"),
            resources: json!({ "devices": many_devices }),
            path: ("exact", "/skiff-abs/many-devices"),
            files: vec![],
            inside: MANY_DEVICES_INSIDE.into(),
            mounts: vec![],
            before: None,
            finish: "kill KILL",
            shared_ns: &[],
            updates: vec![],
        },
        Case {
            // A ramdisk (brd, block 1:0) to throttle: io.max needs a device that exists.
            id: "io-throttle",
            cgroups_path: Some("/skiff-abs/io-throttle"),
            resources: json!({"blockIO": {
                "throttleReadBpsDevice": [{"major": 1, "minor": 0, "rate": 1048576}],
                "throttleWriteIOPSDevice": [{"major": 1, "minor": 0, "rate": 1000}],
            }}),
            path: ("exact", "/skiff-abs/io-throttle"),
            files: vec![(
                "io.max",
                "1:0 rbps=1048576 wbps=max riops=max wiops=1000".into(),
            )],
            inside: String::new(),
            mounts: vec![],
            before: Some("insmod /skiff/modules/brd.ko rd_nr=1 rd_size=4096"),
            finish: "kill KILL",
            shared_ns: &[],
            updates: vec![],
        },
        Case {
            // A limit the kernel refuses: create fails naming it, and leaves nothing behind.
            id: "bad-limit",
            cgroups_path: Some("/skiff-abs/bad-limit"),
            resources: json!({"memory": {"limit": 64 * MIB}, "cpu": {"cpus": "4096"}}),
            path: ("exact", "/skiff-abs/bad-limit"),
            files: vec![],
            inside: String::new(),
            mounts: vec![],
            before: None,
            finish: "fail cpuset.cpus",
            shared_ns: &[],
            updates: vec![],
        },
        Case {
            // After bfq is loaded, io.bfq.weight exists and runc writes blkio.weight there as is.
            id: "bfq",
            cgroups_path: Some("/skiff-abs/bfq"),
            resources: json!({"blockIO": {"weight": 300}}),
            path: ("exact", "/skiff-abs/bfq"),
            files: vec![("io.bfq.weight", "default 300".into())],
            inside: String::new(),
            mounts: vec![],
            before: Some("insmod /skiff/modules/bfq.ko"),
            finish: "force",
            shared_ns: &[],
            updates: vec![],
        },
        Case {
            id: "run",
            cgroups_path: Some("/skiff-abs/run"),
            resources: json!({"pids": {"limit": 7}}),
            path: ("exact", "/skiff-abs/run"),
            files: vec![("pids.max", "7".into())],
            inside: String::new(),
            mounts: vec![
                json!({"destination": "/shared", "type": "bind", "source": "/tmp/run-shared", "options": ["rbind", "rw"]}),
            ],
            before: None,
            finish: "run 7",
            shared_ns: &[],
            updates: vec![],
        },
        // The `live` cases come last: the bfq case above has loaded bfq, so `--blkio-weight` lands
        // in io.bfq.weight, as runc writes it when that file exists.
        Case {
            // memory = memory+swap = 32 MiB, no pids limit: exec (args, --detach --pid-file,
            // --process), an exec'd dd OOM-killed and seen in the `events` stream, pause/resume
            // (cgroup.freeze), kill --all of a paused container: live_exec_oom_pause.
            id: "exec-oom-pause",
            cgroups_path: Some("/skiff-abs/exec-oom-pause"),
            resources: json!({"memory": {"limit": 32 * MIB, "swap": 32 * MIB}}),
            path: ("exact", "/skiff-abs/exec-oom-pause"),
            files: vec![
                ("memory.max", (32 * MIB).to_string()),
                ("memory.swap.max", "0".into()),
                ("cgroup.freeze", "0".into()),
            ],
            inside: String::new(),
            mounts: vec![],
            before: None,
            finish: "live",
            shared_ns: &[],
            updates: vec![],
        },
        Case {
            // events --stats against the cgroup files, then `update` (flags, --resources, memory
            // alone) with the device program checked after each: live_stats_update.
            id: "stats-update",
            cgroups_path: Some("/skiff-abs/stats-update"),
            resources: json!({
                "memory": {"limit": 64 * MIB, "swap": 128 * MIB},
                "cpu": {"shares": 1024},
                "pids": {"limit": 32},
                "hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MIB}],
                "devices": [
                    dev(false, "a", None, None, "rwm"),
                    dev(true, "c", None, None, "m"),
                    dev(true, "b", None, None, "m"),
                    dev(true, "c", Some(1), Some(3), "rwm"),
                    dev(true, "c", Some(1), Some(5), "rwm"),
                    dev(true, "c", Some(1), Some(11), "r"),
                ],
            }),
            path: ("exact", "/skiff-abs/stats-update"),
            files: vec![
                ("memory.max", (64 * MIB).to_string()),
                ("memory.swap.max", (64 * MIB).to_string()),
                ("cpu.weight", cpu_weight(1024).to_string()),
                ("pids.max", "32".into()),
            ],
            inside: UPDATE_DEVICES_INSIDE.into(),
            mounts: vec![],
            before: None,
            finish: "live",
            shared_ns: &[],
            updates: vec![
                (
                    "flags --memory 128m --memory-swap 256m --memory-reservation 16m \
                     --cpu-share 512 --cpu-quota 500000 --cpu-period 250000 --cpuset-cpus 0 \
                     --cpuset-mems 0 --pids-limit 99 --blkio-weight 200"
                        .into(),
                    vec![
                        ("memory.max", (128 * MIB).to_string()),
                        // v2 has no memory+swap: memory.swap.max is the swap alone.
                        ("memory.swap.max", (128 * MIB).to_string()),
                        ("memory.low", (16 * MIB).to_string()),
                        ("cpu.weight", cpu_weight(512).to_string()),
                        // Room for two CPUs: a tight quota makes every later exec crawl under TCG.
                        ("cpu.max", "500000 250000".into()),
                        ("cpuset.cpus", "0".into()),
                        ("cpuset.mems", "0".into()),
                        ("pids.max", "99".into()),
                        ("io.bfq.weight", "default 200".into()),
                    ],
                ),
                (
                    // Memory lowered below the current memory.swap.max (128m); what is left out
                    // stays as it is.
                    format!(
                        "resources {}",
                        json!({"memory": {"limit": 48 * MIB, "swap": 64 * MIB}, "cpu": {"quota": -1}, "pids": {"limit": 12}})
                    ),
                    vec![
                        ("memory.max", (48 * MIB).to_string()),
                        ("memory.swap.max", (16 * MIB).to_string()),
                        ("memory.low", (16 * MIB).to_string()),
                        ("cpu.weight", cpu_weight(512).to_string()),
                        ("cpu.max", "max 250000".into()),
                        ("pids.max", "12".into()),
                    ],
                ),
                (
                    // Memory alone: memory.swap.max is left as it is (runc: an update without
                    // --memory-swap writes no swap limit), not recomputed from an earlier
                    // memory+swap.
                    "flags --memory 32m".into(),
                    vec![
                        ("memory.max", (32 * MIB).to_string()),
                        ("memory.swap.max", (16 * MIB).to_string()),
                        ("pids.max", "12".into()),
                    ],
                ),
            ],
        },
        Case {
            // Processes that ignore SIGTERM, spread by a forking loop in a container that shares
            // the VM's pid namespace (nothing dies with its init): kill --all TERM (freeze,
            // signal, thaw) stops the init only, kill --all KILL (cgroup.kill) every process:
            // live_fork_loop.
            id: "fork-loop",
            cgroups_path: Some("/skiff-abs/fork-loop"),
            resources: json!({"pids": {"limit": 64}}),
            path: ("exact", "/skiff-abs/fork-loop"),
            files: vec![("pids.max", "64".into())],
            inside: String::new(),
            mounts: vec![],
            before: None,
            finish: "live",
            shared_ns: &["pid"],
            updates: vec![],
        },
    ]
}

impl Case {
    /// The process: the probe, then sleep until killed (or, for `run`, exit with the expected code).
    fn args(&self) -> Value {
        let tail = match self.finish.strip_prefix("run ") {
            // Held until the scenario has looked at the cgroup from outside (see run_foreground).
            Some(code) => format!(
                "\necho PROBE-DONE\nwhile [ ! -e /shared/go ]; do sleep 0.1; done\nexit {code}\n"
            ),
            None => PROBE_TAIL.to_string(),
        };
        let mut args = vec![
            "sh".to_string(),
            "-c".to_string(),
            format!("{PROBE_HEAD}{}{tail}", self.inside),
            "probe".to_string(),
        ];
        args.extend(self.files.iter().map(|(f, _)| f.to_string()));
        json!(args)
    }

    pub fn config_json(&self) -> Vec<u8> {
        let mut mounts = vec![
            json!({"destination": "/proc", "type": "proc", "source": "proc"}),
            json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
            json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
            json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=1777"]}),
        ];
        mounts.extend(self.mounts.iter().cloned());
        // CAP_MKNOD for the device nodes of the devices case, CAP_SYSLOG to read /dev/kmsg there.
        let caps = json!([
            "CAP_AUDIT_WRITE",
            "CAP_KILL",
            "CAP_NET_BIND_SERVICE",
            "CAP_MKNOD",
            "CAP_SYSLOG"
        ]);
        let mut linux = json!({
            "resources": self.resources,
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"},
            ],
        });
        linux["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| !self.shared_ns.contains(&n["type"].as_str().unwrap()));
        if let Some(p) = self.cgroups_path {
            linux["cgroupsPath"] = json!(p);
        }
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": self.args(),
                "env": ["PATH=/bin", "HOME=/root"],
                "cwd": "/",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                "noNewPrivileges": true,
            },
            "root": {"path": "/skiff/rootfs", "readonly": true},
            "hostname": self.id,
            "mounts": mounts,
            "linux": linux,
        });
        serde_json::to_vec_pretty(&config).expect("serialising config.json")
    }

    pub fn expect(&self) -> String {
        let mut e = format!(
            "path {} {}\nfinish {}\n",
            self.path.0, self.path.1, self.finish
        );
        if self.shared_ns.contains(&"cgroup") {
            e.push_str(&format!("inside-cgroup {}\n", self.path.1));
        }
        if let Some(b) = self.before {
            e.push_str(&format!("before {b}\n"));
        }
        for (f, v) in &self.files {
            e.push_str(&format!("file {f} {v}\n"));
        }
        for (update, after) in &self.updates {
            let update: Vec<&str> = update.split_whitespace().collect();
            e.push_str(&format!("update {}\n", update.join(" ")));
            for (f, v) in after {
                e.push_str(&format!("after {f} {v}\n"));
            }
        }
        e
    }
}
