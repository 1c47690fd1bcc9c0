//! skiff-runtime: an OCI runtime (runtime-spec 1.2, Linux) with runc's command line.
//!
//! The library holds every capability; the `skiff-runc` binary only parses flags and calls it.

pub mod bundle;
pub mod capabilities;
pub mod cgroups;
pub mod console;
pub mod container;
pub mod devices;
pub mod error;
pub mod features;
pub mod foreground;
pub mod fsutil;
pub mod hooks;
pub mod json_path;
pub mod log;
pub mod namespaces;
pub mod process;
pub mod procfs;
pub mod rlimits;
pub mod rootfs;
pub mod safe_path;
pub mod sealed_exe;
pub mod seccomp;
pub mod spec_template;
pub mod state;

pub use container::{CreateOptions, ExecOptions, Runtime};
pub use error::{Error, Result};
