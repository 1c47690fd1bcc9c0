//! skiff-controlplane: the Kubernetes API server (REST, watch, TLS, client-certificate auth) on a
//! revisioned store, plus the `skiff` command line.

pub mod api;
pub mod bench;
pub mod components;
pub mod controllers;
pub mod events;
pub mod leader;
pub mod pki;
pub mod scheduler;
pub mod server;
pub mod store;
