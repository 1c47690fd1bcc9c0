//! skiff-proxy: not built yet; see the open issues.
pub mod dns;
