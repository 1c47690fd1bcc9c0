//! Unpacking one layer (a tar stream, gzip/zstd/plain) into a directory in overlayfs form.
//!
//! Every entry is hostile: paths are split into components and `..` is refused; each parent
//! directory is opened with `O_NOFOLLOW` relative to the one before (openat), so no symlink — in
//! this layer or planted by an earlier entry — can lead outside the layer; files are created with
//! `O_EXCL` after removing what was there, so nothing is ever written through a link; hard links
//! resolve their target the same way; device nodes are skipped; only `security.capability` and
//! `user.*` extended attributes are kept (a layer must not forge `trusted.overlay.*`); the stream
//! length, entry count and each long-name/pax header are bounded.
//!
//! Whiteouts become what overlayfs reads: `.wh.NAME` a 0:0 character device `NAME`, and
//! `.wh..wh..opq` the `trusted.overlay.opaque=y` attribute on its directory.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{
    FileStat, Mode, SFlag, UtimensatFlags, fchmod, fstatat, futimens, mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use tar::EntryType;

use super::ImageError;
use super::digest::{HashState, HashingReader};
use super::error::IoContext;

/// Largest uncompressed layer stream accepted.
pub(crate) const MAX_LAYER_BYTES: u64 = 64 << 30;
/// Most entries one layer may have.
const MAX_ENTRIES: u64 = 2_000_000;
/// Largest GNU long name/link or pax header.
const MAX_HEADER_BYTES: u64 = 1 << 20;
/// Longest path of an entry.
const MAX_PATH_BYTES: usize = 4096;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Unpacks a layer blob into the empty directory `dest`, checking the digest of the blob as it
/// is stored (`blob_digest`, when there is one besides the diff id) and of the uncompressed tar
/// (`diff_id`). Returns the bytes of file content unpacked.
pub(crate) fn unpack_verified(
    blob: impl Read,
    blob_digest: Option<&str>,
    diff_id: &str,
    dest: &Path,
) -> Result<u64, ImageError> {
    let mut stored = HashState::new(MAX_LAYER_BYTES);
    let mut tar_stream = HashState::new(MAX_LAYER_BYTES);
    let size = {
        let hashed = BufReader::new(HashingReader::new(blob, &mut stored));
        let decompressed =
            decompress(hashed).context(|| format!("layer {diff_id}: reading its compression"))?;
        let mut tar_reader = HashingReader::new(decompressed, &mut tar_stream);
        let size = unpack(&mut tar_reader, dest, diff_id)?;
        // The zero blocks after the end marker are part of the diff id.
        io::copy(&mut tar_reader, &mut io::sink())
            .context(|| format!("layer {diff_id}: reading the end of the tar stream"))?;
        size
    };
    tar_stream.verify(&format!("layer {diff_id} (uncompressed)"), diff_id)?;
    if let Some(blob_digest) = blob_digest {
        stored.verify(&format!("layer blob {blob_digest}"), blob_digest)?;
    }
    Ok(size)
}

/// Chooses the decompressor by the stream's magic bytes: gzip, zstd, or none.
fn decompress<'a, R: BufRead + 'a>(mut reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let head = reader.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(reader)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(reader)?))
    } else {
        Ok(Box::new(reader))
    }
}

/// Metadata carried by the GNU long-name/long-link and pax entries before an entry.
#[derive(Default)]
struct Extensions {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

impl Extensions {
    fn pax_value(&self, key: &str) -> Option<&[u8]> {
        let pax = self.pax.as_deref()?;
        tar::PaxExtensions::new(pax)
            .filter_map(Result::ok)
            .filter(|e| e.key_bytes() == key.as_bytes())
            .last()
            .map(|e| e.value_bytes())
    }

    fn pax_number(&self, key: &str) -> Option<u64> {
        std::str::from_utf8(self.pax_value(key)?).ok()?.parse().ok()
    }

    fn xattrs(&self) -> Vec<(&[u8], &[u8])> {
        let Some(pax) = self.pax.as_deref() else {
            return Vec::new();
        };
        tar::PaxExtensions::new(pax)
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.key_bytes().strip_prefix(b"SCHILY.xattr.")?;
                let kept = name == b"security.capability" || name.starts_with(b"user.");
                kept.then(|| (name, e.value_bytes()))
            })
            .collect()
    }
}

fn trim_nul(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

/// Unpacks the tar stream into `dest`; `layer` names it in errors.
pub(crate) fn unpack(reader: impl Read, dest: &Path, layer: &str) -> Result<u64, ImageError> {
    let unsafe_layer = |reason: String| ImageError::UnsafeLayer {
        layer: layer.to_string(),
        reason,
    };
    let root = openat(
        nix::fcntl::AT_FDCWD,
        dest,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .context(|| format!("opening {}", dest.display()))?;
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .context(|| format!("layer {layer}: reading the tar stream"))?
        .raw(true);
    let mut extensions = Extensions::default();
    let mut count = 0u64;
    let mut size = 0u64;
    for entry in entries {
        let mut entry = entry.context(|| format!("layer {layer}: reading the tar stream"))?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(unsafe_layer(format!("more than {MAX_ENTRIES} entries")));
        }
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::GNULongName
                | EntryType::GNULongLink
                | EntryType::XHeader
                | EntryType::XGlobalHeader
        ) {
            if entry.size() > MAX_HEADER_BYTES {
                return Err(unsafe_layer(format!(
                    "a {kind:?} header of {} bytes (limit {MAX_HEADER_BYTES})",
                    entry.size()
                )));
            }
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .context(|| format!("layer {layer}: reading the tar stream"))?;
            match kind {
                EntryType::GNULongName => extensions.long_name = Some(trim_nul(data)),
                EntryType::GNULongLink => extensions.long_link = Some(trim_nul(data)),
                EntryType::XHeader => extensions.pax = Some(data),
                _ => {}
            }
            continue;
        }
        let ext = std::mem::take(&mut extensions);
        let header = entry.header();
        let path = ext
            .pax_value("path")
            .map(<[u8]>::to_vec)
            .or(ext.long_name.clone())
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let link = ext
            .pax_value("linkpath")
            .map(<[u8]>::to_vec)
            .or(ext.long_link.clone())
            .or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
        let number = |key: &str, from_header: io::Result<u64>| -> Result<u64, ImageError> {
            ext.pax_number(key)
                .map(Ok)
                .unwrap_or(from_header)
                .map_err(|e| {
                    unsafe_layer(format!(
                        "{}: bad {key}: {e}",
                        String::from_utf8_lossy(&path)
                    ))
                })
        };
        let owner = Owner {
            uid: id(number("uid", header.uid())?, &path).map_err(unsafe_layer)?,
            gid: id(number("gid", header.gid())?, &path).map_err(unsafe_layer)?,
        };
        let mode = Mode::from_bits_truncate(
            (header
                .mode()
                .map_err(|e| unsafe_layer(format!("bad mode: {e}")))?
                & 0o7777) as _,
        );
        let mtime = number("mtime", header.mtime()).unwrap_or(0);
        let meta = EntryMeta {
            kind,
            owner,
            mode,
            mtime: TimeSpec::new(mtime.min(i64::MAX as u64) as i64, 0),
            xattrs: ext.xattrs(),
        };
        size += unpack_entry(&root, &path, link.as_deref(), &meta, &mut entry).map_err(
            |e| match e {
                EntryError::Unsafe(reason) => unsafe_layer(format!(
                    "entry {:?}: {reason}",
                    String::from_utf8_lossy(&path)
                )),
                EntryError::Io(source) => ImageError::Io {
                    context: format!(
                        "layer {layer}: unpacking {:?}",
                        String::from_utf8_lossy(&path)
                    ),
                    source,
                },
            },
        )?;
    }
    Ok(size)
}

fn id(value: u64, path: &[u8]) -> Result<u32, String> {
    u32::try_from(value).map_err(|_| {
        format!(
            "{}: owner id {value} out of range",
            String::from_utf8_lossy(path)
        )
    })
}

#[derive(Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

struct EntryMeta<'a> {
    kind: EntryType,
    owner: Owner,
    mode: Mode,
    mtime: TimeSpec,
    xattrs: Vec<(&'a [u8], &'a [u8])>,
}

enum EntryError {
    Unsafe(String),
    Io(io::Error),
}

impl From<Errno> for EntryError {
    fn from(errno: Errno) -> Self {
        EntryError::Io(errno.into())
    }
}

impl From<io::Error> for EntryError {
    fn from(e: io::Error) -> Self {
        EntryError::Io(e)
    }
}

/// The normal components of an entry path: `.` and empty ones dropped, a leading `/` taken as
/// the layer's root, `..` refused.
fn components(path: &[u8]) -> Result<Vec<&OsStr>, EntryError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(EntryError::Unsafe(format!(
            "path longer than {MAX_PATH_BYTES} bytes"
        )));
    }
    let mut out = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(EntryError::Unsafe("path has a '..' component".into())),
            _ if part.contains(&0) => {
                return Err(EntryError::Unsafe("path has a NUL byte".into()));
            }
            _ => out.push(OsStr::from_bytes(part)),
        }
    }
    Ok(out)
}

const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_RDONLY)
    .union(OFlag::O_CLOEXEC);

/// Opens the directory `dirs` below `root` one component at a time without following symlinks,
/// creating missing directories when `create`.
fn open_dir_below(root: &OwnedFd, dirs: &[&OsStr], create: bool) -> Result<OwnedFd, EntryError> {
    let mut current = root.try_clone()?;
    for dir in dirs {
        let next = match openat(&current, *dir, DIR_FLAGS, Mode::empty()) {
            Err(Errno::ENOENT) if create => {
                match mkdirat(&current, *dir, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                openat(&current, *dir, DIR_FLAGS, Mode::empty())
            }
            other => other,
        };
        current = next.map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => EntryError::Unsafe(format!(
                "parent {:?} is not a directory (a symlink or file)",
                dir
            )),
            other => other.into(),
        })?;
    }
    Ok(current)
}

fn stat_at(dir: &OwnedFd, name: &OsStr) -> Result<Option<FileStat>, Errno> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR
}

/// Removes whatever `name` is in `dir` (a directory only when empty).
fn remove_existing(dir: &OwnedFd, name: &OsStr) -> Result<(), EntryError> {
    match stat_at(dir, name)? {
        None => Ok(()),
        Some(st) if is_dir(&st) => match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
            Err(Errno::ENOTEMPTY) => {
                Err(EntryError::Unsafe("replaces a non-empty directory".into()))
            }
            other => Ok(other?),
        },
        Some(_) => Ok(unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?),
    }
}

fn set_xattr(fd: &impl AsFd, name: &[u8], value: &[u8]) -> Result<(), EntryError> {
    let name = CString::new(name)
        .map_err(|_| EntryError::Unsafe("extended attribute name has a NUL byte".into()))?;
    // SAFETY: name is NUL-terminated and value is a valid slice for the call's duration.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_fd().as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(rc).map(drop).map_err(Into::into)
}

fn set_owner_mode(fd: &OwnedFd, meta: &EntryMeta) -> Result<(), EntryError> {
    fchown(
        fd,
        Some(Uid::from_raw(meta.owner.uid)),
        Some(Gid::from_raw(meta.owner.gid)),
    )?;
    // After chown, which clears set-id bits.
    fchmod(fd, meta.mode)?;
    for (name, value) in &meta.xattrs {
        set_xattr(fd, name, value)?;
    }
    Ok(())
}

fn chown_at(dir: &OwnedFd, name: &OsStr, owner: Owner) -> Result<(), Errno> {
    fchownat(
        dir,
        name,
        Some(Uid::from_raw(owner.uid)),
        Some(Gid::from_raw(owner.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
}

/// Unpacks one entry; returns the bytes of file content written.
fn unpack_entry(
    root: &OwnedFd,
    path: &[u8],
    link: Option<&[u8]>,
    meta: &EntryMeta,
    content: &mut impl Read,
) -> Result<u64, EntryError> {
    let parts = components(path)?;
    let Some((name, parents)) = parts.split_last() else {
        // The layer's root itself ("./").
        if meta.kind == EntryType::Directory {
            set_owner_mode(root, meta)?;
        }
        return Ok(0);
    };
    let parent = open_dir_below(root, parents, true)?;
    let name_bytes = name.as_bytes();
    if name_bytes == OPAQUE_MARKER.as_bytes() {
        set_xattr(&parent, b"trusted.overlay.opaque", b"y")?;
        return Ok(0);
    }
    if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        // Other `.wh..wh.` names are aufs bookkeeping, meaningless here.
        if hidden.is_empty() || hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Ok(0);
        }
        let hidden = OsStr::from_bytes(hidden);
        remove_existing(&parent, hidden)?;
        mknodat(
            &parent,
            hidden,
            SFlag::S_IFCHR,
            Mode::empty(),
            libc::makedev(0, 0),
        )?;
        return Ok(0);
    }
    match meta.kind {
        EntryType::Directory => {
            match stat_at(&parent, name)? {
                Some(st) if is_dir(&st) => {}
                Some(_) => remove_existing(&parent, name)?,
                None => {}
            }
            match mkdirat(&parent, *name, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            let dir = openat(&parent, *name, DIR_FLAGS, Mode::empty())?;
            set_owner_mode(&dir, meta)?;
            Ok(0)
        }
        EntryType::Regular | EntryType::Continuous => {
            remove_existing(&parent, name)?;
            let fd = openat(
                &parent,
                *name,
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )?;
            let mut file = File::from(fd);
            let written = io::copy(content, &mut file)?;
            let fd = OwnedFd::from(file);
            set_owner_mode(&fd, meta)?;
            futimens(&fd, &meta.mtime, &meta.mtime)?;
            Ok(written)
        }
        EntryType::Symlink => {
            let target =
                link.ok_or_else(|| EntryError::Unsafe("symlink without a target".into()))?;
            remove_existing(&parent, name)?;
            symlinkat(OsStr::from_bytes(target), &parent, *name)?;
            chown_at(&parent, name, meta.owner)?;
            utimensat(
                &parent,
                *name,
                &meta.mtime,
                &meta.mtime,
                UtimensatFlags::NoFollowSymlink,
            )?;
            Ok(0)
        }
        EntryType::Link => {
            let target =
                link.ok_or_else(|| EntryError::Unsafe("hard link without a target".into()))?;
            let target_parts = components(target)?;
            let Some((target_name, target_dirs)) = target_parts.split_last() else {
                return Err(EntryError::Unsafe("hard link to the layer's root".into()));
            };
            let not_here = || {
                EntryError::Unsafe(format!(
                    "hard link target {:?} is not in this layer",
                    String::from_utf8_lossy(target)
                ))
            };
            let target_dir = match open_dir_below(root, target_dirs, false) {
                Err(EntryError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(not_here());
                }
                other => other?,
            };
            remove_existing(&parent, name)?;
            linkat(&target_dir, *target_name, &parent, *name, AtFlags::empty()).map_err(
                |e| match e {
                    Errno::ENOENT => not_here(),
                    other => other.into(),
                },
            )?;
            Ok(0)
        }
        EntryType::Fifo => {
            remove_existing(&parent, name)?;
            mknodat(&parent, *name, SFlag::S_IFIFO, meta.mode, 0)?;
            chown_at(&parent, name, meta.owner)?;
            Ok(0)
        }
        EntryType::Char | EntryType::Block => {
            // The runtime gives containers their devices; a layer's own are not trusted.
            tracing::debug!(path = %String::from_utf8_lossy(path), "skipping a device node in a layer");
            Ok(0)
        }
        other => Err(EntryError::Unsafe(format!(
            "unsupported entry type {other:?}"
        ))),
    }
}
