//! Linux namespaces: which to create with clone3 and which to join (setns) from a path.

use crate::error::{Error, Result};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};
use std::os::fd::OwnedFd;

pub const CLONE_NEWTIME: u64 = 0x80;

pub fn clone_flag(typ: LinuxNamespaceType) -> u64 {
    (match typ {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => return CLONE_NEWTIME,
    }) as u64
}

/// The namespaces of a container, split into those to create and those to join.
#[derive(Default)]
pub struct Namespaces {
    /// clone3 flags for new namespaces (without cgroup and time: see `new_cgroup`/`new_time`).
    pub clone_flags: u64,
    /// A new cgroup namespace is unshared by the child once it sits in its cgroup.
    pub new_cgroup: bool,
    /// A new time namespace is unshared by the parent so offsets can be written before the
    /// child enters it.
    pub new_time: bool,
    pub new_user: bool,
    pub new_mount: bool,
    /// Opened before clone so a bad path fails early, in the parent, with its name.
    pub join: Vec<(LinuxNamespaceType, OwnedFd)>,
}

impl Namespaces {
    pub fn from_spec(list: &[LinuxNamespace]) -> Result<Namespaces> {
        let mut ns = Namespaces::default();
        for n in list {
            match n.path().as_ref().filter(|p| !p.as_os_str().is_empty()) {
                Some(path) => {
                    let fd = std::fs::File::open(path).map_err(|e| {
                        Error::Config(format!(
                            "linux.namespaces: {} namespace path {}: {e}",
                            name(n.typ()),
                            path.display()
                        ))
                    })?;
                    let fd = OwnedFd::from(fd);
                    check_ns_type(&fd, n.typ(), path)?;
                    ns.join.push((n.typ(), fd));
                }
                None => match n.typ() {
                    LinuxNamespaceType::Cgroup => ns.new_cgroup = true,
                    LinuxNamespaceType::Time => ns.new_time = true,
                    t => {
                        ns.clone_flags |= clone_flag(t);
                        ns.new_user |= t == LinuxNamespaceType::User;
                        ns.new_mount |= t == LinuxNamespaceType::Mount;
                    }
                },
            }
        }
        // The user namespace is joined first: the others are owned by it.
        ns.join.sort_by_key(|(t, _)| *t != LinuxNamespaceType::User);
        Ok(ns)
    }

    pub fn has(&self, typ: LinuxNamespaceType) -> bool {
        self.clone_flags & clone_flag(typ) != 0 || self.join.iter().any(|(t, _)| *t == typ)
    }
}

pub fn name(typ: LinuxNamespaceType) -> &'static str {
    match typ {
        LinuxNamespaceType::Mount => "mount",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "network",
        LinuxNamespaceType::Time => "time",
    }
}

/// NS_GET_NSTYPE tells what kind of namespace a file is; refuse a path of another kind.
fn check_ns_type(fd: &OwnedFd, typ: LinuxNamespaceType, path: &std::path::Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: ioctl on a descriptor we own, no argument.
    let got = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) };
    if got < 0 {
        return Err(Error::Config(format!(
            "linux.namespaces: {} is not a namespace file",
            path.display()
        )));
    }
    if got as u64 != clone_flag(typ) {
        return Err(Error::Config(format!(
            "linux.namespaces: {} is not a {} namespace",
            path.display(),
            name(typ)
        )));
    }
    Ok(())
}
