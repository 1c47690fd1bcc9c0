//! `skiff bench`: the API server (`api`), the cost of RBAC authorization (`rbac`) and scheduling
//! throughput (`scheduling`), each measured
//! against a server this process starts on a loopback port in a scratch directory.

pub mod api;
pub mod rbac;
pub mod scheduling;
