//! process.rlimits, and process.oomScoreAdj which has the same failure mode: raising either
//! needs CAP_SYS_RESOURCE, which some hosts withhold even from root. Like runc, a limit that
//! cannot be raised is reported as a warning, not a failed container.

use crate::error::{Error, Result};
use oci_spec::runtime::{PosixRlimit, PosixRlimitType};

fn resource(typ: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType::*;
    match typ {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

pub fn apply(limits: &[PosixRlimit]) -> Result<()> {
    for l in limits {
        if l.soft() > l.hard() {
            return Err(Error::Config(format!(
                "process.rlimits: {:?} soft limit {} is above its hard limit {}",
                l.typ(),
                l.soft(),
                l.hard()
            )));
        }
        let want = libc::rlimit {
            rlim_cur: l.soft(),
            rlim_max: l.hard(),
        };
        // SAFETY: plain syscall with a valid struct.
        if unsafe { libc::setrlimit(resource(l.typ()), &want) } == 0 {
            continue;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EPERM) {
            return Err(Error::Other(format!("setrlimit {:?}: {err}", l.typ())));
        }
        // Without CAP_SYS_RESOURCE the hard limit cannot go up: keep the current hard limit.
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        unsafe { libc::getrlimit(resource(l.typ()), &mut cur) };
        let fallback = libc::rlimit {
            rlim_cur: l.soft().min(cur.rlim_max),
            rlim_max: l.hard().min(cur.rlim_max),
        };
        tracing::warn!(
            "cannot raise {:?} to {}/{} (no CAP_SYS_RESOURCE): using {}/{}",
            l.typ(),
            l.soft(),
            l.hard(),
            fallback.rlim_cur,
            fallback.rlim_max
        );
        // SAFETY: as above.
        if unsafe { libc::setrlimit(resource(l.typ()), &fallback) } != 0 {
            return Err(Error::Other(format!(
                "setrlimit {:?}: {}",
                l.typ(),
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

pub fn apply_oom_score_adj(value: i32) -> Result<()> {
    match std::fs::write("/proc/self/oom_score_adj", value.to_string()) {
        Ok(()) => Ok(()),
        Err(e)
            if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EPERM) =>
        {
            tracing::warn!("cannot set oomScoreAdj to {value} (no CAP_SYS_RESOURCE): {e}");
            Ok(())
        }
        Err(e) => Err(Error::Other(format!("set oomScoreAdj {value}: {e}"))),
    }
}
