//! Kernel attributes of the container's processes that the rest of the runtime does not own:
//! the execution domain (`linux.personality`), the CPU scheduler (`process.scheduler`), the I/O
//! priority (`process.ioPriority`), the CPU affinity of an exec (`process.execCPUAffinity`) and
//! the NUMA memory policy (`linux.memoryPolicy`). Each is one syscall on the calling thread,
//! made before the capabilities are dropped (a real-time policy needs CAP_SYS_NICE).

use crate::error::{Error, Result};
use oci_spec::runtime::{
    IOPriorityClass, LinuxMemoryPolicy, LinuxPersonality, LinuxPersonalityDomain,
    LinuxSchedulerFlag, LinuxSchedulerPolicy, MemoryPolicyFlagType, MemoryPolicyModeType, Process,
    Scheduler,
};

fn check(what: &str, rc: libc::c_long) -> Result<()> {
    if rc < 0 {
        return Err(Error::Other(format!(
            "{what}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// personality(2) with the domain; the spec defines no flags yet, so any is refused.
pub fn set_personality(p: &LinuxPersonality) -> Result<()> {
    if p.flags().as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(Error::Config(
            "linux.personality.flags: no flags are defined".into(),
        ));
    }
    let domain: libc::c_ulong = match p.domain() {
        LinuxPersonalityDomain::PerLinux => 0x0000,
        LinuxPersonalityDomain::PerLinux32 => 0x0008,
    };
    // SAFETY: personality(2) takes a plain integer.
    check("linux.personality", unsafe {
        libc::personality(domain) as libc::c_long
    })
}

/// The scheduler and the I/O priority of `process`, when it sets them.
pub fn apply(process: &Process) -> Result<()> {
    if let Some(io) = process.io_priority() {
        let class: i64 = match io.class() {
            IOPriorityClass::IoprioClassRt => 1,
            IOPriorityClass::IoprioClassBe => 2,
            IOPriorityClass::IoprioClassIdle => 3,
        };
        if !(0..=7).contains(&io.priority()) {
            return Err(Error::Config(format!(
                "process.ioPriority.priority: {} is not in 0..7",
                io.priority()
            )));
        }
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        // SAFETY: ioprio_set(IOPRIO_WHO_PROCESS, 0 = ourselves, class << 13 | data).
        check("process.ioPriority", unsafe {
            libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                0,
                (class << 13) | io.priority(),
            )
        })?;
    }
    if let Some(s) = process.scheduler() {
        set_scheduler(s)?;
    }
    Ok(())
}

/// `struct sched_attr`, SCHED_ATTR_SIZE_VER0.
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

fn set_scheduler(s: &Scheduler) -> Result<()> {
    let policy = match s.policy() {
        LinuxSchedulerPolicy::SchedOther => 0,
        LinuxSchedulerPolicy::SchedFifo => 1,
        LinuxSchedulerPolicy::SchedRr => 2,
        LinuxSchedulerPolicy::SchedBatch => 3,
        LinuxSchedulerPolicy::SchedIso => 4,
        LinuxSchedulerPolicy::SchedIdle => 5,
        LinuxSchedulerPolicy::SchedDeadline => 6,
    };
    let flags = s.flags().iter().flatten().fold(0u64, |acc, f| {
        acc | match f {
            LinuxSchedulerFlag::SchedResetOnFork => 0x01,
            LinuxSchedulerFlag::SchedFlagReclaim => 0x02,
            LinuxSchedulerFlag::SchedFlagDLOverrun => 0x04,
            LinuxSchedulerFlag::SchedFlagKeepPolicy => 0x08,
            LinuxSchedulerFlag::SchedFlagKeepParams => 0x10,
            LinuxSchedulerFlag::SchedFlagUtilClampMin => 0x20,
            LinuxSchedulerFlag::SchedFlagUtilClampMax => 0x40,
        }
    });
    let priority = s.priority().unwrap_or(0);
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy,
        flags,
        nice: s.nice().unwrap_or(0),
        priority: u32::try_from(priority).map_err(|_| {
            Error::Config(format!(
                "process.scheduler.priority: {priority} is negative"
            ))
        })?,
        runtime: s.runtime().unwrap_or(0),
        deadline: s.deadline().unwrap_or(0),
        period: s.period().unwrap_or(0),
    };
    // SAFETY: sched_setattr(0 = this thread, a valid sched_attr, flags 0).
    check("process.scheduler", unsafe {
        libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0)
    })
}

/// Parses a kernel list ("0-3,7") into a bitmask of 64-bit words.
pub fn parse_list(field: &str, list: &str) -> Result<Vec<u64>> {
    let bad = || {
        Error::Config(format!(
            "{field}: {list:?} is not a list of numbers below 65536 like \"0-3,7\""
        ))
    };
    let mut words: Vec<u64> = vec![];
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: usize = lo.parse().map_err(|_| bad())?;
        let hi: usize = hi.parse().map_err(|_| bad())?;
        if lo > hi || hi >= 1 << 16 {
            return Err(bad());
        }
        for bit in lo..=hi {
            if words.len() <= bit / 64 {
                words.resize(bit / 64 + 1, 0);
            }
            words[bit / 64] |= 1 << (bit % 64);
        }
    }
    if words.is_empty() {
        return Err(bad());
    }
    Ok(words)
}

/// sched_setaffinity(2) of the calling thread to the CPUs in `list`.
pub fn set_affinity(field: &str, list: &str) -> Result<()> {
    let words = parse_list(field, list)?;
    // SAFETY: the mask is a valid buffer of the given byte length.
    check(field, unsafe {
        libc::syscall(
            libc::SYS_sched_setaffinity,
            0,
            words.len() * 8,
            words.as_ptr(),
        )
    })
}

/// set_mempolicy(2) with the mode, flags and nodes of `linux.memoryPolicy`.
pub fn set_memory_policy(p: &LinuxMemoryPolicy) -> Result<()> {
    let mode: libc::c_long = match p.mode() {
        MemoryPolicyModeType::MpolDefault => 0,
        MemoryPolicyModeType::MpolPreferred => 1,
        MemoryPolicyModeType::MpolBind => 2,
        MemoryPolicyModeType::MpolInterleave => 3,
        MemoryPolicyModeType::MpolLocal => 4,
        MemoryPolicyModeType::MpolPreferredMany => 5,
        MemoryPolicyModeType::MpolWeightedInterleave => 6,
    };
    let flags = p.flags().iter().flatten().fold(0, |acc, f| {
        acc | match f {
            MemoryPolicyFlagType::MpolFNumaBalancing => 1 << 13,
            MemoryPolicyFlagType::MpolFRelativeNodes => 1 << 14,
            MemoryPolicyFlagType::MpolFStaticNodes => 1 << 15,
        }
    });
    let nodes = match p.nodes().as_deref().filter(|n| !n.is_empty()) {
        Some(n) => parse_list("linux.memoryPolicy.nodes", n)?,
        None => vec![],
    };
    let (mask, maxnode) = if nodes.is_empty() {
        (std::ptr::null(), 0)
    } else {
        // The kernel reads maxnode - 1 bits.
        (nodes.as_ptr(), nodes.len() * 64 + 1)
    };
    // SAFETY: the node mask (or null) covers maxnode - 1 bits.
    check("linux.memoryPolicy", unsafe {
        libc::syscall(libc::SYS_set_mempolicy, mode | flags, mask, maxnode)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        assert_eq!(parse_list("f", "0-3,7").unwrap(), vec![0b1000_1111]);
        assert_eq!(parse_list("f", "64").unwrap(), vec![0, 1]);
        assert_eq!(parse_list("f", " 1 , 2 ").unwrap(), vec![0b110]);
        for bad in ["", "a", "3-1", "1-", "-1", "70000"] {
            let err = parse_list("process.execCPUAffinity.initial", bad).unwrap_err();
            assert!(err.to_string().contains("execCPUAffinity.initial"), "{err}");
        }
    }
}
