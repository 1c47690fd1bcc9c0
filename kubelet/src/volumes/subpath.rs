//! volumeMounts' subPath, resolved safely inside the volume: the path is opened with
//! openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) from the volume's directory, so neither `..`
//! nor a symlink planted by a container can lead out of it (the kernel refuses with EXDEV);
//! missing directories are made the same way. The opened descriptor's `/proc/self/fd` path is
//! then bind-mounted at a staging path under the pod's directory, which the container's runtime
//! binds: what it binds is the object that was checked, not a path that could change meanwhile.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, fstat, mkdirat};

use super::VolumeError;

/// Checks a subPath as the API server does: relative, without `..`.
pub fn validate(sub: &str) -> Result<(), String> {
    if sub.starts_with('/') {
        return Err(format!("subPath {sub:?} must be a relative path"));
    }
    if Path::new(sub)
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(format!("subPath {sub:?} must not contain '..'"));
    }
    Ok(())
}

fn open_beneath(root: &OwnedFd, path: &str, directory: bool) -> Result<OwnedFd, Errno> {
    let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    if directory {
        flags |= OFlag::O_DIRECTORY;
    }
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root, if path.is_empty() { "." } else { path }, how)
}

/// Opens `sub` inside `volume_dir`, making missing directories; refuses any way out.
pub fn open(volume_dir: &Path, sub: &str) -> Result<OwnedFd, VolumeError> {
    validate(sub).map_err(VolumeError::Invalid)?;
    let escape = |e: Errno| match e {
        Errno::EXDEV | Errno::ELOOP => VolumeError::Invalid(format!(
            "subPath {sub:?} points outside the volume {} (through a symlink or '..')",
            volume_dir.display()
        )),
        e => VolumeError::Io(format!("opening subPath {sub:?}: {e}")),
    };
    let root: OwnedFd = fs::File::open(volume_dir)
        .map_err(|e| VolumeError::Io(format!("opening {}: {e}", volume_dir.display())))?
        .into();
    match open_beneath(&root, sub, false) {
        Err(Errno::ENOENT) => {}
        other => return other.map_err(escape),
    }
    let parts: Vec<&str> = sub
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    for i in 0..parts.len() {
        let prefix = parts[..=i].join("/");
        match open_beneath(&root, &prefix, true) {
            Ok(_) => continue,
            Err(Errno::ENOENT) => {
                let parent = open_beneath(&root, &parts[..i].join("/"), true).map_err(escape)?;
                match mkdirat(&parent, parts[i], Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => {
                        return Err(VolumeError::Io(format!("creating subPath {sub:?}: {e}")));
                    }
                }
            }
            Err(e) => return Err(escape(e)),
        }
    }
    open_beneath(&root, sub, false).map_err(escape)
}

/// Binds the opened subPath at `target` (a file or directory made to match), replacing an
/// earlier bind there.
pub fn bind(fd: &OwnedFd, target: &Path) -> Result<(), VolumeError> {
    let io = |what: &str, e: &dyn std::fmt::Display| {
        VolumeError::Io(format!("{what} {}: {e}", target.display()))
    };
    let st = fstat(fd).map_err(|e| io("stat of the subPath for", &e))?;
    let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    let _ = umount2(target, MntFlags::MNT_DETACH);
    if is_dir {
        fs::create_dir_all(target).map_err(|e| io("creating", &e))?;
    } else {
        if let Some(p) = target.parent() {
            fs::create_dir_all(p).map_err(|e| io("creating the parent of", &e))?;
        }
        if !target.exists() {
            fs::write(target, b"").map_err(|e| io("creating", &e))?;
        }
    }
    let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
    mount(
        Some(source.as_str()),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| io("binding the subPath at", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subpaths_stay_inside_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        fs::create_dir(&vol).unwrap();
        fs::write(vol.join("f"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", vol.join("abs")).unwrap();
        std::os::unix::fs::symlink("../..", vol.join("up")).unwrap();
        std::os::unix::fs::symlink("f", vol.join("inside")).unwrap();
        assert!(open(&vol, "f").is_ok());
        assert!(open(&vol, "inside").is_ok());
        for bad in ["abs", "abs/passwd", "up", "up/x/y", "../x", "/etc"] {
            let e = open(&vol, bad).unwrap_err();
            assert!(matches!(e, VolumeError::Invalid(_)), "{bad}: {e}");
        }
        // Missing directories are made inside the volume.
        open(&vol, "new/deeper").unwrap();
        assert!(vol.join("new/deeper").is_dir());
        assert!(!dir.path().join("x").exists());
    }
}
