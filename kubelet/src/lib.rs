//! skiff-kubelet: not built yet; see the open issues.
