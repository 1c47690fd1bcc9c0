//! A busybox image built from the host's statically linked `/bin/busybox` (Debian's
//! busybox-static): every applet as a symlink in `/bin`, `/etc/passwd` and `/etc/group` with root
//! and nobody (65534), `/tmp`. Examples and tests use it to run real containers offline.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::IoContext;
use super::oci_archive::{BuiltImage, LayerBuilder, write_oci_archive};
use super::{ImageConfig, ImageError};

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\n";

/// A file added to the image (to make a second, different image from the same busybox).
#[derive(Debug, Clone)]
pub struct ExtraFile {
    /// Absolute path in the image.
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
}

/// What goes into a busybox image; `new` gives the defaults, the fields may be changed.
#[derive(Debug, Clone)]
pub struct BusyboxImage {
    pub reference: String,
    /// The busybox binary to put in; must be statically linked.
    pub busybox: PathBuf,
    pub extra_files: Vec<ExtraFile>,
    pub config: ImageConfig,
}

impl BusyboxImage {
    /// `reference` (e.g. `busybox:1`) from `/bin/busybox`, running `sh` in `/` by default.
    pub fn new(reference: &str) -> Self {
        BusyboxImage {
            reference: reference.to_string(),
            busybox: PathBuf::from("/bin/busybox"),
            extra_files: Vec::new(),
            config: ImageConfig {
                env: vec![
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
                ],
                cmd: Some(vec!["sh".to_string()]),
                working_dir: Some("/".to_string()),
                ..ImageConfig::default()
            },
        }
    }

    /// Writes the image as a one-layer OCI archive to `output`.
    pub fn write(&self, output: &Path) -> Result<BuiltImage, ImageError> {
        let layer = self.layer()?;
        write_oci_archive(output, &self.reference, &self.config, &[layer])
    }

    fn layer(&self) -> Result<Vec<u8>, ImageError> {
        let binary = std::fs::read(&self.busybox)
            .context(|| format!("reading {}", self.busybox.display()))?;
        if has_interpreter(&binary) {
            return Err(ImageError::content(
                self.busybox.display().to_string(),
                "is dynamically linked; a static busybox is needed (Debian package busybox-static)",
            ));
        }
        let applets = applets(&self.busybox)?;
        let build = || -> std::io::Result<Vec<u8>> {
            let mut layer = LayerBuilder::new();
            for dir in ["dev", "etc", "home", "proc", "sys", "usr", "var"] {
                layer.dir(dir, 0o755)?;
            }
            layer
                .dir("bin", 0o755)?
                .file("bin/busybox", &binary, 0o755)?;
            for applet in &applets {
                layer.symlink(&format!("bin/{applet}"), "busybox")?;
            }
            layer
                .file("etc/passwd", PASSWD.as_bytes(), 0o644)?
                .file("etc/group", GROUP.as_bytes(), 0o644)?
                .dir("root", 0o700)?
                .dir("tmp", 0o1777)?;
            for extra in &self.extra_files {
                layer.file(
                    extra.path.trim_start_matches('/'),
                    &extra.contents,
                    extra.mode,
                )?;
            }
            layer.finish()
        };
        build().context(|| "building the busybox layer".to_string())
    }
}

/// Whether an ELF executable names a program interpreter (is dynamically linked).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return true;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return true;
    };
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        elf.get(at..at + 4)
            .is_none_or(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == PT_INTERP)
    })
}

/// The applet names `busybox --list` prints.
fn applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let output = Command::new(busybox)
        .arg("--list")
        .output()
        .context(|| format!("running {} --list", busybox.display()))?;
    if !output.status.success() {
        return Err(ImageError::content(
            format!("{} --list", busybox.display()),
            format!("exited with {}", output.status),
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty() && !name.contains('/') && *name != "busybox")
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_busybox_has_no_interpreter() {
        let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (Debian busybox-static)");
        assert!(!has_interpreter(&busybox));
        let dynamic = std::fs::read("/bin/ls").unwrap();
        assert!(has_interpreter(&dynamic));
    }
}
