//! skiff-tests: not built yet; see the open issues.
