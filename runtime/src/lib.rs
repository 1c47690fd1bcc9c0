//! skiff-runtime: an OCI runtime (runtime-spec 1.2, Linux) with runc's command line.
