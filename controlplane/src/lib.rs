//! skiff-controlplane: not built yet; see the open issues.
