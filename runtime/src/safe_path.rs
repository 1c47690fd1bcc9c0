//! Paths inside the container's root, opened once and used through their fd.
//!
//! A path string resolved twice can be raced (CVE-2021-30465): a container sharing a volume
//! swaps a directory for a symlink to a host path between our check and our mount. Here every
//! path is resolved by the kernel with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`
//! relative to an fd of the root (symlinks are followed as if the root were `/`, `..` stops at
//! it), missing directories are made with `mkdirat` relative to an fd already verified to be
//! inside, and mounts go onto `/proc/self/fd/N` of the opened fd, so what was checked is what
//! gets mounted over.

use crate::error::{Context, Error, Result};
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// A directory that paths are resolved in, as if it were `/`.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// What a missing mount point must be made as.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Dir,
    File,
}

const IN_ROOT: ResolveFlag = ResolveFlag::RESOLVE_IN_ROOT.union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

/// The path through which the kernel reaches exactly what `fd` refers to.
pub fn proc_fd(fd: BorrowedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn open_how(flags: OFlag, resolve: ResolveFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(resolve)
}

impl Root {
    pub fn open(path: &Path) -> Result<Root> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ctx(|| format!("open root {}", path.display()))?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens `path` inside the root with `flags` (O_PATH when only mounting onto it).
    pub fn open_with(&self, path: &Path, flags: OFlag) -> Result<OwnedFd> {
        let rel = relative(path);
        openat2(&self.fd, rel.as_path(), open_how(flags, IN_ROOT))
            .ctx(|| format!("open {} inside {}", path.display(), self.path.display()))
    }

    pub fn open_path(&self, path: &Path) -> Result<OwnedFd> {
        self.open_with(path, OFlag::O_PATH)
    }

    /// Opens `path` inside the root, making it (and any missing parent directory) when it does
    /// not exist. Returns an O_PATH fd of what is there, which is a `kind` if it was made.
    pub fn make(&self, path: &Path, kind: Kind) -> Result<OwnedFd> {
        match self.open_path(path) {
            Err(Error::Sys {
                source: nix::errno::Errno::ENOENT,
                ..
            }) => {}
            r => return r,
        }
        let rel = relative(path);
        let parts: Vec<Component> = rel.components().collect();
        let Some((last, parents)) = parts.split_last() else {
            return self.open_path(Path::new("/"));
        };
        let mut dir = self.open_path(Path::new("/"))?;
        let mut prefix = PathBuf::new();
        for part in parents {
            prefix.push(part);
            dir = self.step(&dir, &prefix, Kind::Dir)?;
        }
        prefix.push(last);
        self.step(&dir, &prefix, kind)
    }

    /// Opens `prefix` (whose parent is `parent`), creating its last name in `parent` first
    /// when it is missing. The name is made without following anything; the reopening of
    /// `prefix` is confined to the root whatever was swapped in meanwhile.
    fn step(&self, parent: &OwnedFd, prefix: &Path, kind: Kind) -> Result<OwnedFd> {
        match self.open_path(prefix) {
            Err(Error::Sys {
                source: nix::errno::Errno::ENOENT,
                ..
            }) => {}
            r => return r,
        }
        let name = prefix.file_name().unwrap_or_default();
        let made = match kind {
            Kind::Dir => nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(0o755)),
            Kind::File => nix::fcntl::openat(
                parent,
                name,
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_WRONLY
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .map(drop),
        };
        match made {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => {
                return Err(Error::Sys {
                    context: format!("create {} inside {}", prefix.display(), self.path.display()),
                    source: e,
                });
            }
        }
        self.open_path(prefix)
    }
}

/// `path` without its root: "/a/./b" → "a/b"; ".." stays (openat2 keeps it inside).
fn relative(path: &Path) -> PathBuf {
    let rel: PathBuf = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_) | Component::ParentDir))
        .collect();
    if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    }
}

/// fstat of an fd: (file type bits, rdev major, rdev minor).
pub fn file_kind(fd: BorrowedFd) -> Result<(u32, u64, u64)> {
    let st = nix::sys::stat::fstat(fd).ctx(|| "fstat".into())?;
    let rdev = st.st_rdev as libc::dev_t;
    Ok((
        st.st_mode as u32 & libc::S_IFMT,
        libc::major(rdev) as u64,
        libc::minor(rdev) as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escape")).unwrap();
        std::os::unix::fs::symlink("../../..", dir.path().join("up")).unwrap();
        let root = Root::open(dir.path()).unwrap();
        // A link dangling inside the root is not created through.
        assert!(root.make(Path::new("/escape/sub"), Kind::Dir).is_err());
        // An absolute link to a host directory means that directory inside the root.
        let inside = dir.path().join(outside.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        root.make(Path::new("/escape/sub"), Kind::Dir).unwrap();
        assert!(inside.join("sub").is_dir());
        assert!(!outside.path().join("sub").exists());
        root.make(Path::new("up/../f"), Kind::File).unwrap();
        assert!(dir.path().join("f").is_file());
        let fd = root.make(Path::new("/a/b/c"), Kind::Dir).unwrap();
        assert_eq!(file_kind(fd.as_fd()).unwrap().0, libc::S_IFDIR);
    }
}
