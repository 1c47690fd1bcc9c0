//! cgroup v2 device control: an eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE, assembled here
//! and attached to the container's cgroup. cgroup2 has no devices.allow file; the kernel asks the
//! program for every open/mknod of a device node. No crate assembles these few instructions.
//!
//! The rules keep cgroup v1's meaning: the last rule of type `a` sets the default (allow or deny,
//! allow when there is none, as a fresh v1 cgroup inherits), and the rules after it are
//! exceptions where the latest matching one wins.

use crate::error::{Error, Result};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};
use std::os::fd::AsRawFd;
use std::path::Path;

#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

const LDX_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const AND32_K: u8 = 0x54;
const RSH32_K: u8 = 0x74;
const MOV32_X: u8 = 0xbc;
const MOV64_K: u8 = 0xb7;
const JNE_K: u8 = 0x55;
const JEQ_K: u8 = 0x15;
const EXIT: u8 = 0x95;

/// bpf_cgroup_dev_ctx access bits (upper half of access_type) and device types (lower half).
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

fn access_bits(access: &str) -> i32 {
    access.chars().fold(0, |acc, c| {
        acc | match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => 0,
        }
    })
}

/// Assembles the program for `rules`.
fn assemble(rules: &[LinuxDeviceCgroup]) -> Vec<Insn> {
    let all = ACC_READ | ACC_WRITE | ACC_MKNOD;
    let wildcard = |r: &LinuxDeviceCgroup| matches!(r.typ(), None | Some(LinuxDeviceType::A));
    let (default_allow, exceptions) = match rules.iter().rposition(wildcard) {
        Some(k) => (rules[k].allow(), &rules[k + 1..]),
        None => (true, rules),
    };
    let mut prog = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND32_K, 2, 0, 0, 0xffff), // r2 = device type
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH32_K, 3, 0, 0, 16), // r3 = requested access
        insn(LDX_W, 4, 1, 4, 0),    // r4 = major
        insn(LDX_W, 5, 1, 8, 0),    // r5 = minor
    ];
    for rule in exceptions.iter().rev() {
        let mut block: Vec<Insn> = vec![];
        // Each check is a jump to the end of the block ("no match"); offsets are fixed below.
        let mut skips: Vec<usize> = vec![];
        match rule.typ() {
            Some(LinuxDeviceType::B) => {
                skips.push(block.len());
                block.push(insn(JNE_K, 2, 0, 0, DEV_BLOCK));
            }
            Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => {
                skips.push(block.len());
                block.push(insn(JNE_K, 2, 0, 0, DEV_CHAR));
            }
            _ => {}
        }
        let access = rule.access().as_deref().map(access_bits).unwrap_or(all);
        if access != all {
            block.push(insn(MOV32_X, 0, 3, 0, 0));
            if rule.allow() {
                // An allow matches when everything requested is allowed.
                block.push(insn(AND32_K, 0, 0, 0, !access & all));
                skips.push(block.len());
                block.push(insn(JNE_K, 0, 0, 0, 0));
            } else {
                // A deny matches when anything requested is denied.
                block.push(insn(AND32_K, 0, 0, 0, access));
                skips.push(block.len());
                block.push(insn(JEQ_K, 0, 0, 0, 0));
            }
        }
        if let Some(major) = rule.major().filter(|m| *m >= 0) {
            skips.push(block.len());
            block.push(insn(JNE_K, 4, 0, 0, major as i32));
        }
        if let Some(minor) = rule.minor().filter(|m| *m >= 0) {
            skips.push(block.len());
            block.push(insn(JNE_K, 5, 0, 0, minor as i32));
        }
        block.push(insn(MOV64_K, 0, 0, 0, rule.allow() as i32));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let len = block.len();
        for i in skips {
            block[i].off = (len - i - 1) as i16;
        }
        prog.extend(block);
    }
    prog.push(insn(MOV64_K, 0, 0, 0, default_allow as i32));
    prog.push(insn(EXIT, 0, 0, 0, 0));
    prog
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i32> {
    // SAFETY: attr is a live, properly laid out bpf_attr prefix of the size we pass.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

/// Loads the program for `rules` and attaches it to the cgroup directory `dir`.
pub fn apply(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    let prog = assemble(rules);
    let license = c"Apache-2.0";
    let load = |log: &mut [u8]| {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: prog.len() as u32,
            insns: prog.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: u32::from(!log.is_empty()),
            log_size: log.len() as u32,
            // The kernel refuses a non-null buffer of size 0: null when there is no log.
            log_buf: if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },

            ..Default::default()
        };
        bpf(BPF_PROG_LOAD, &mut attr)
    };
    // Without a log first (the verifier's log costs time); on failure again with one, to say why.
    let prog_fd = load(&mut []).or_else(|_| {
        let mut log = vec![0u8; 1 << 20];
        load(&mut log).map_err(|e| {
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0');
            let tail = &text[text.len().saturating_sub(400)..];
            Error::Other(format!("load the cgroup v2 device program: {e}: {tail}"))
        })
    })?;
    // SAFETY: the kernel just gave us this descriptor.
    let prog_fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(prog_fd) };
    let cgroup = std::fs::File::open(dir)
        .map_err(|e| Error::Other(format!("open {}: {e}", dir.display())))?;
    let mut attach = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog_fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attach).map_err(|e| {
        Error::Other(format!(
            "attach the device program to {}: {e}",
            dir.display()
        ))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        allow: bool,
        typ: LinuxDeviceType,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(allow);
        r.set_typ(Some(typ));
        r.set_major(major);
        r.set_minor(minor);
        r.set_access(Some(access.into()));
        r
    }

    #[test]
    fn deny_all_then_allow_null() {
        let prog = assemble(&[
            rule(false, LinuxDeviceType::A, None, None, "rwm"),
            rule(true, LinuxDeviceType::C, Some(1), Some(3), "rwm"),
        ]);
        // 6 loads, one 5-insn block (type, major, minor, mov, exit), default deny.
        assert_eq!(prog.len(), 6 + 5 + 2);
        assert_eq!(prog[6].off, 4); // type mismatch skips the rest of the block
        assert_eq!(prog[prog.len() - 2].imm, 0);
    }
}
