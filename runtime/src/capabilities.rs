//! The five capability sets of process.capabilities.

use crate::error::{Error, Result};
use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::{Capabilities, LinuxCapabilities};
use std::str::FromStr;

/// The capabilities this kernel knows, probed once (each probe is a prctl).
fn supported() -> &'static CapsHashSet {
    static SUPPORTED: std::sync::OnceLock<CapsHashSet> = std::sync::OnceLock::new();
    SUPPORTED.get_or_init(caps::runtime::thread_all_supported)
}

fn convert(set: &Option<Capabilities>) -> CapsHashSet {
    let mut out = CapsHashSet::new();
    for c in set.iter().flatten() {
        match Capability::from_str(&format!("CAP_{c}")) {
            Ok(cap) if supported().contains(&cap) => {
                out.insert(cap);
            }
            // As runc: a capability this kernel does not know is skipped with a warning.
            _ => tracing::warn!("capability CAP_{c} is not supported by this kernel; ignored"),
        }
    }
    out
}

/// Drops from the bounding set everything not listed. Needs CAP_SETPCAP: done before
/// switching user.
pub fn apply_bounding(caps: &LinuxCapabilities) -> Result<()> {
    let keep = convert(caps.bounding());
    for &cap in supported() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| Error::Other(format!("drop {cap} from the bounding set: {e}")))?;
        }
    }
    Ok(())
}

/// Sets effective, permitted, inheritable and ambient, after the user switch.
pub fn apply_sets(caps: &LinuxCapabilities) -> Result<()> {
    let set = |which: CapSet, value: CapsHashSet| {
        caps::set(None, which, &value)
            .map_err(|e| Error::Other(format!("set {which:?} capabilities: {e}")))
    };
    // The kernel lets no process gain a capability it does not hold (some hosts withhold
    // CAP_SYS_RESOURCE even from root): like an unknown one, such a capability is skipped with
    // a warning instead of failing the container.
    let held = |which: CapSet| caps::read(None, which).unwrap_or_default();
    let (held_permitted, bounding) = (held(CapSet::Permitted), held(CapSet::Bounding));
    let clamp = |field: &str, wanted: CapsHashSet, allowed: &CapsHashSet| -> CapsHashSet {
        let (keep, lost): (CapsHashSet, CapsHashSet) =
            wanted.into_iter().partition(|c| allowed.contains(c));
        for cap in lost {
            tracing::warn!(
                "process.capabilities.{field}: the runtime does not hold {cap}; skipped"
            );
        }
        keep
    };
    let permitted = clamp("permitted", convert(caps.permitted()), &held_permitted);
    let mut effective = convert(caps.effective());
    effective.retain(|c| permitted.contains(c));
    let inheritable = clamp("inheritable", convert(caps.inheritable()), &bounding);
    // Effective must stay within permitted at every step: shrink it before permitted.
    set(CapSet::Inheritable, inheritable)?;
    set(CapSet::Effective, effective)?;
    set(CapSet::Permitted, permitted)?;
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| Error::Other(format!("clear ambient capabilities: {e}")))?;
    for cap in convert(caps.ambient()) {
        // An ambient capability must be permitted and inheritable; like runc, one that is not
        // is skipped.
        if let Err(e) = caps::raise(None, CapSet::Ambient, cap) {
            tracing::debug!("cannot raise ambient {cap}: {e}");
        }
    }
    Ok(())
}
