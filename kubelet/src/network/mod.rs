//! The pod sandbox's namespaces and the pod network: see the crate comment.
