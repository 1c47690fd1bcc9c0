//! The finalizers through which the API server hands cascading deletion to the garbage collector
//! (`propagationPolicy: Orphan` and `Foreground`).

/// The dependents are to be orphaned before the owner goes.
pub const ORPHAN: &str = "orphan";
/// The owner stays (with `deletionTimestamp`) until its blocking dependents are gone.
pub const FOREGROUND: &str = "foregroundDeletion";
