//! Loading and checking an OCI bundle's config.json.
//!
//! Errors name the file and the JSON path of the offending field (see json_path.rs), so
//! `linux.resources.memory.limit: invalid type: string "x", expected i64` reaches the user instead
//! of a bare serde message.

use crate::error::{Result, config_err};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub struct Bundle {
    pub path: PathBuf,
    pub rootfs: PathBuf,
    pub spec: Spec,
}

impl Bundle {
    /// Loads `<bundle>/config.json`; the bundle path is made absolute.
    pub fn load(bundle: &Path) -> Result<Bundle> {
        let path = std::path::absolute(bundle)
            .map_err(|e| config_err(format!("bundle {}: {e}", bundle.display())))?;
        let config = path.join("config.json");
        let data = std::fs::read(&config)
            .map_err(|e| config_err(format!("cannot read {}: {e}", config.display())))?;
        let spec =
            parse_spec(&data).map_err(|e| config_err(format!("{}: {e}", config.display())))?;
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| config_err(format!("{}: root: missing", config.display())))?;
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            path.join(root.path())
        };
        if !rootfs.is_dir() {
            return Err(config_err(format!(
                "{}: root.path: rootfs {} does not exist or is not a directory",
                config.display(),
                rootfs.display()
            )));
        }
        validate(&spec).map_err(|e| config_err(format!("{}: {e}", config.display())))?;
        Ok(Bundle { path, rootfs, spec })
    }
}

/// Parses a runtime spec, naming the JSON path of a field that does not fit.
pub fn parse_spec(data: &[u8]) -> Result<Spec, String> {
    parse_json(data)
}

/// Parses any JSON input (config.json, exec's --process, update's --resources), naming the
/// JSON path of a field that does not fit.
pub fn parse_json<T: serde::de::DeserializeOwned>(data: &[u8]) -> Result<T, String> {
    // As runc's decoder: what follows the document is not read.
    let de = &mut serde_json::Deserializer::from_slice(data);
    T::deserialize(de).map_err(|e| {
        let missing_field = e.is_data() && e.to_string().starts_with("missing field");
        match crate::json_path::at(data, e.line(), e.column(), missing_field) {
            path if path.is_empty() => e.to_string(),
            path => format!("{path}: {e}"),
        }
    })
}

/// Checks the rules of the runtime spec that serde cannot express.
fn validate(spec: &Spec) -> Result<(), String> {
    if spec.version().is_empty() {
        return Err("ociVersion: missing".into());
    }
    // `process` may be missing: such a container can be created, not started.
    if let Some(process) = spec.process() {
        match process.args() {
            Some(args) if !args.is_empty() && !args[0].is_empty() => {}
            _ => return Err("process.args: must name the program to run".into()),
        }
        if !process.cwd().is_absolute() {
            return Err(format!(
                "process.cwd: {:?} is not an absolute path",
                process.cwd()
            ));
        }
    }
    let Some(linux) = spec.linux() else {
        return Err("linux: missing (only Linux containers are supported)".into());
    };
    let mut seen = HashSet::new();
    let mut has_user = false;
    let mut has_uts = false;
    for ns in linux.namespaces().iter().flatten() {
        if !seen.insert(ns.typ()) {
            return Err(format!("linux.namespaces: {:?} is listed twice", ns.typ()));
        }
        has_user |= ns.typ() == LinuxNamespaceType::User;
        has_uts |= ns.typ() == LinuxNamespaceType::Uts;
        if let Some(p) = ns.path()
            && !p.as_os_str().is_empty()
            && !p.is_absolute()
        {
            return Err(format!(
                "linux.namespaces: path {} is not absolute",
                p.display()
            ));
        }
    }
    let maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    if maps && !has_user {
        return Err("linux.uidMappings: set but there is no user namespace".into());
    }
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty()) && !has_uts {
        return Err("hostname: set but there is no uts namespace".into());
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if m.destination().as_os_str().is_empty() {
            return Err(format!("mounts[{i}].destination: missing"));
        }
    }
    Ok(())
}
