//! Reading an image archive (a tar file): its members are indexed by path in one pass, then
//! opened at their offsets, so layers are streamed straight from the archive into the store.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Take};
use std::path::{Path, PathBuf};

use super::ImageError;
use super::error::IoContext;
use super::spec::MAX_DOCUMENT_BYTES;

/// Most members an archive may have.
const MAX_MEMBERS: usize = 100_000;
/// Most symlinks followed to find one member (`docker save` links repeated layers).
const MAX_LINK_DEPTH: usize = 8;

enum Member {
    File { offset: u64, size: u64 },
    Link(String),
}

pub(crate) struct ArchiveReader {
    path: PathBuf,
    members: HashMap<String, Member>,
}

impl ArchiveReader {
    pub fn scan(path: &Path) -> Result<ArchiveReader, ImageError> {
        let invalid = |reason: String| ImageError::InvalidArchive {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).context(|| format!("opening {}", path.display()))?;
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        let entries = archive
            .entries()
            .map_err(|e| invalid(format!("not a tar file: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| invalid(format!("reading the tar: {e}")))?;
            if members.len() >= MAX_MEMBERS {
                return Err(invalid(format!("more than {MAX_MEMBERS} members")));
            }
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(name) = normalize(&name) else {
                continue;
            };
            let member = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => Member::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| String::from_utf8_lossy(&t).into_owned())
                        .unwrap_or_default();
                    let base = if entry.header().entry_type() == tar::EntryType::Symlink {
                        name.rsplit_once('/').map(|(dir, _)| dir).unwrap_or("")
                    } else {
                        ""
                    };
                    match normalize(&format!("{base}/{target}")) {
                        Some(target) => Member::Link(target),
                        None => continue,
                    }
                }
                _ => continue,
            };
            members.insert(name, member);
        }
        Ok(ArchiveReader {
            path: path.to_path_buf(),
            members,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn contains(&self, name: &str) -> bool {
        self.members.contains_key(name)
    }

    fn invalid(&self, reason: String) -> ImageError {
        ImageError::InvalidArchive {
            path: self.path.clone(),
            reason,
        }
    }

    fn locate(&self, name: &str) -> Result<(u64, u64), ImageError> {
        let mut current = normalize(name).unwrap_or_default();
        for _ in 0..=MAX_LINK_DEPTH {
            match self.members.get(&current) {
                Some(Member::File { offset, size }) => return Ok((*offset, *size)),
                Some(Member::Link(target)) => current = target.clone(),
                None => return Err(self.invalid(format!("has no member {name:?}"))),
            }
        }
        Err(self.invalid(format!("member {name:?}: too many links")))
    }

    /// A member's content, streamed from the archive file.
    pub fn open(&self, name: &str) -> Result<Take<File>, ImageError> {
        let (offset, size) = self.locate(name)?;
        let mut file =
            File::open(&self.path).context(|| format!("opening {}", self.path.display()))?;
        file.seek(SeekFrom::Start(offset))
            .context(|| format!("reading {}", self.path.display()))?;
        Ok(file.take(size))
    }

    /// A member holding a JSON document (bounded in size).
    pub fn read_document(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let (_, size) = self.locate(name)?;
        if size > MAX_DOCUMENT_BYTES {
            return Err(self.invalid(format!(
                "member {name:?} is {size} bytes, more than the {MAX_DOCUMENT_BYTES} allowed for a document"
            )));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        self.open(name)?
            .read_to_end(&mut bytes)
            .context(|| format!("reading {name} from {}", self.path.display()))?;
        Ok(bytes)
    }
}

/// A member path with `.` and empty components removed and `..` applied; None if it climbs
/// above the archive's root.
fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            _ => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn member_paths() {
        assert_eq!(
            normalize("./blobs/sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(
            normalize("a/../b/layer.tar").as_deref(),
            Some("b/layer.tar")
        );
        assert_eq!(normalize("../x"), None);
        assert_eq!(normalize("./"), None);
    }
}
