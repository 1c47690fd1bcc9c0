//! hostPath volumes: the node's path itself, checked against `type` with the kubelet's messages
//! (`hostPath type check failed: /x is not a directory`); DirectoryOrCreate and FileOrCreate make
//! what is missing (0755 directories, 0644 files) as the kubelet does.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::HostPathVolumeSource;

use super::VolumeError;

/// Checks (and for the *OrCreate types makes) the host path; returns it.
pub fn set_up(src: &HostPathVolumeSource) -> Result<PathBuf, VolumeError> {
    let path = PathBuf::from(&src.path);
    if !path.is_absolute() || src.path.split('/').any(|p| p == "..") {
        return Err(VolumeError::Invalid(format!(
            "hostPath {:?} must be absolute without '..'",
            src.path
        )));
    }
    check(&path, src.type_.as_deref().unwrap_or_default())?;
    Ok(path)
}

fn check(path: &Path, kind: &str) -> Result<(), VolumeError> {
    let failed = |what: &str| {
        VolumeError::Invalid(format!(
            "hostPath type check failed: {} is not a {what}",
            path.display()
        ))
    };
    let meta = fs::metadata(path);
    let file_type = meta.as_ref().ok().map(|m| m.file_type());
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" if file_type.is_none() => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path)
            .map_err(|e| VolumeError::Io(format!("creating {}: {e}", path.display()))),
        "DirectoryOrCreate" | "Directory" => match file_type {
            Some(t) if t.is_dir() => Ok(()),
            _ => Err(failed("directory")),
        },
        "FileOrCreate" if file_type.is_none() => {
            if let Some(parent) = path.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(|e| VolumeError::Io(format!("creating {}: {e}", parent.display())))?;
            }
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(path)
                .map(|_| ())
                .map_err(|e| VolumeError::Io(format!("creating {}: {e}", path.display())))
        }
        "FileOrCreate" | "File" => match file_type {
            Some(t) if t.is_file() => Ok(()),
            _ => Err(failed("file")),
        },
        "Socket" => match file_type {
            Some(t) if t.is_socket() => Ok(()),
            _ => Err(failed("socket file")),
        },
        "CharDevice" => match file_type {
            Some(t) if t.is_char_device() => Ok(()),
            _ => Err(failed("character device")),
        },
        "BlockDevice" => match file_type {
            Some(t) if t.is_block_device() => Ok(()),
            _ => Err(failed("block device")),
        },
        other => Err(VolumeError::Invalid(format!(
            "hostPath type {other:?} is not one of DirectoryOrCreate, Directory, FileOrCreate, File, Socket, CharDevice, BlockDevice"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(path: &Path, kind: &str) -> HostPathVolumeSource {
        HostPathVolumeSource {
            path: path.display().to_string(),
            type_: Some(kind.to_string()),
        }
    }

    #[test]
    fn types_are_checked_with_the_kubelets_messages() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "x").unwrap();
        assert!(set_up(&src(dir.path(), "Directory")).is_ok());
        assert!(set_up(&src(&file, "File")).is_ok());
        assert!(set_up(&src(&file, "")).is_ok());
        let e = set_up(&src(&file, "Directory")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "hostPath type check failed: {} is not a directory",
                file.display()
            )
        );
        let e = set_up(&src(dir.path(), "File")).unwrap_err();
        assert!(e.to_string().ends_with("is not a file"), "{e}");
        let e = set_up(&src(&file, "Socket")).unwrap_err();
        assert!(e.to_string().ends_with("is not a socket file"), "{e}");
        assert!(set_up(&src(Path::new("/dev/null"), "CharDevice")).is_ok());
        let e = set_up(&src(&file, "BlockDevice")).unwrap_err();
        assert!(e.to_string().ends_with("is not a block device"), "{e}");
        assert!(set_up(&src(&dir.path().join("missing"), "Directory")).is_err());
        assert!(set_up(&src(Path::new("relative"), "")).is_err());
        assert!(set_up(&src(&file, "Bogus")).is_err());
    }

    #[test]
    fn or_create_types_make_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        set_up(&src(&d, "DirectoryOrCreate")).unwrap();
        assert!(d.is_dir());
        let f = dir.path().join("c/file");
        set_up(&src(&f, "FileOrCreate")).unwrap();
        assert!(f.is_file());
        assert!(set_up(&src(&f, "DirectoryOrCreate")).is_err());
    }
}
