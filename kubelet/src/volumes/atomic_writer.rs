//! Writes a volume's files as the kubelet's AtomicWriter does, so a container never sees a mix of
//! old and new files: the payload goes into a fresh `..<timestamp>` directory, the `..data`
//! symlink is swapped to it by rename(2), and the user-visible names are symlinks through
//! `..data` (`key -> ..data/key`). An unchanged payload is not rewritten.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use super::VolumeError;

const DATA_LINK: &str = "..data";
const DATA_LINK_TMP: &str = "..data_tmp";

/// One file of a payload: its bytes and its mode (0..=0777).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Relative path → file.
pub type Payload = BTreeMap<String, FileProjection>;

/// Ownership applied to the written files before the swap (fsGroup).
#[derive(Debug, Clone, Copy)]
pub struct Ownership {
    pub fs_group: Option<u32>,
}

impl Ownership {
    /// A file's mode: with an fsGroup the group may read, as the kubelet's SetVolumeOwnership
    /// makes read-only volumes.
    fn mode(self, mode: u32) -> u32 {
        match self.fs_group {
            Some(_) => (mode & 0o777) | 0o440,
            None => mode & 0o777,
        }
    }
}

/// Checks a payload path as the API server's validation does: relative, no `..` element, not
/// starting with `..` (those names are the writer's own).
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    if path.len() > 4096 {
        return Err("must be at most 4096 characters".into());
    }
    if path.starts_with('/') {
        return Err(format!("{path:?} must be a relative path"));
    }
    if path.starts_with("..") {
        return Err(format!("{path:?} must not start with '..'"));
    }
    if path.split('/').any(|p| matches!(p, "" | "." | "..")) {
        return Err(format!(
            "{path:?} must not contain empty, '.' or '..' elements"
        ));
    }
    Ok(())
}

/// Writes `payload` into `dir`; returns whether anything changed.
pub fn write(dir: &Path, payload: &Payload, owner: Ownership) -> Result<bool, VolumeError> {
    let io = |what: String| move |e: std::io::Error| VolumeError::Io(format!("{what}: {e}"));
    for path in payload.keys() {
        validate_path(path).map_err(|m| VolumeError::Invalid(format!("path {m}")))?;
    }
    let old = fs::read_link(dir.join(DATA_LINK)).ok();
    let unchanged = old
        .as_ref()
        .is_some_and(|o| same_content(&dir.join(o), payload, owner));
    if !unchanged {
        let stamp = format!(
            "..{}.{:08x}",
            chrono::Utc::now().format("%Y_%m_%d_%H_%M_%S"),
            rand::random::<u32>()
        );
        let ts_dir = dir.join(&stamp);
        fs::create_dir(&ts_dir).map_err(io(format!("creating {}", ts_dir.display())))?;
        let written = write_tree(&ts_dir, payload, owner);
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&ts_dir);
            return Err(e);
        }
        let tmp = dir.join(DATA_LINK_TMP);
        let _ = fs::remove_file(&tmp);
        symlink(&stamp, &tmp).map_err(io(format!("linking {}", tmp.display())))?;
        fs::rename(&tmp, dir.join(DATA_LINK))
            .map_err(io(format!("swapping {}", dir.join(DATA_LINK).display())))?;
        fsync_dir(dir);
    }
    // The user-visible names: one symlink per top-level element of the payload.
    let top: std::collections::BTreeSet<String> = payload
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_string))
        .collect();
    for name in &top {
        let link = dir.join(name);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA_LINK).join(name), &link)
                .map_err(io(format!("linking {}", link.display())))?;
        }
    }
    for entry in fs::read_dir(dir)
        .map_err(io(format!("reading {}", dir.display())))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale_link = !name.starts_with("..") && !top.contains(&name);
        let stale_dir = name.starts_with("..")
            && name != DATA_LINK
            && fs::read_link(dir.join(DATA_LINK)).ok() != Some(PathBuf::from(&name));
        if stale_link {
            let _ = fs::remove_file(entry.path());
        } else if stale_dir && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = fs::remove_dir_all(entry.path());
        } else if stale_dir {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(!unchanged)
}

fn write_tree(root: &Path, payload: &Payload, owner: Ownership) -> Result<(), VolumeError> {
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| VolumeError::Io(format!("writing {p}: {e}"))
    };
    let mut dirs = std::collections::BTreeSet::new();
    for (rel, file) in payload {
        let path = root.join(rel);
        if let Some(parent) = path.parent()
            && parent != root
        {
            fs::create_dir_all(parent).map_err(io(parent))?;
            dirs.extend(
                parent
                    .ancestors()
                    .take_while(|a| *a != root)
                    .map(Path::to_path_buf),
            );
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(&file.data).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
        if let Some(g) = owner.fs_group {
            std::os::unix::fs::lchown(&path, None, Some(g)).map_err(io(&path))?;
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(owner.mode(file.mode)))
            .map_err(io(&path))?;
    }
    for d in std::iter::once(root.to_path_buf()).chain(dirs) {
        super::apply_dir_ownership(&d, owner.fs_group, 0o755)?;
    }
    fsync_dir(root);
    Ok(())
}

/// Whether the directory holds exactly the payload (contents and modes).
fn same_content(dir: &Path, payload: &Payload, owner: Ownership) -> bool {
    let mut count = 0usize;
    let ok = payload.iter().all(|(rel, file)| {
        fs::symlink_metadata(dir.join(rel))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o7777 == owner.mode(file.mode))
            && fs::read(dir.join(rel)).is_ok_and(|d| d == file.data)
    });
    count_files(dir, &mut count);
    ok && count == payload.len()
}

fn count_files(dir: &Path, count: &mut usize) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path(), count),
            Ok(_) => *count += 1,
            Err(_) => {}
        }
    }
}

fn fsync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &str, mode: u32) -> FileProjection {
        FileProjection {
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    const NO_GROUP: Ownership = Ownership { fs_group: None };

    #[test]
    fn paths_are_checked() {
        assert!(validate_path("a/b.txt").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "..data", "a/./b"] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn writes_through_data_link_and_swaps_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Payload::new();
        p.insert("key".into(), file("one", 0o644));
        p.insert("sub/inner".into(), file("two", 0o400));
        assert!(write(dir.path(), &p, NO_GROUP).unwrap());
        let key = dir.path().join("key");
        assert_eq!(fs::read_link(&key).unwrap(), Path::new("..data/key"));
        assert_eq!(fs::read_to_string(&key).unwrap(), "one");
        assert_eq!(
            fs::read_link(dir.path().join("sub")).unwrap(),
            Path::new("..data/sub")
        );
        let inner = dir.path().join("sub/inner");
        assert_eq!(
            fs::metadata(&inner).unwrap().permissions().mode() & 0o777,
            0o400
        );
        let first = fs::read_link(dir.path().join("..data")).unwrap();

        // Unchanged: nothing rewritten.
        assert!(!write(dir.path(), &p, NO_GROUP).unwrap());
        assert_eq!(fs::read_link(dir.path().join("..data")).unwrap(), first);

        // Changed: a new timestamped directory, the old one and the dropped name removed.
        let mut q = Payload::new();
        q.insert("key".into(), file("three", 0o644));
        assert!(write(dir.path(), &q, NO_GROUP).unwrap());
        let second = fs::read_link(dir.path().join("..data")).unwrap();
        assert_ne!(first, second);
        assert!(second.to_string_lossy().starts_with(".."));
        assert_eq!(fs::read_to_string(&key).unwrap(), "three");
        assert!(!dir.path().join(&first).exists());
        assert!(fs::symlink_metadata(dir.path().join("sub")).is_err());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn a_mode_change_alone_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Payload::new();
        p.insert("k".into(), file("v", 0o644));
        write(dir.path(), &p, NO_GROUP).unwrap();
        p.insert("k".into(), file("v", 0o600));
        assert!(write(dir.path(), &p, NO_GROUP).unwrap());
        let m = fs::metadata(dir.path().join("k"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o600);
    }
}
