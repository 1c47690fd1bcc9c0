//! `skiff bench`: the API server (`api`), the cost of RBAC authorization (`rbac`), scheduling
//! throughput (`scheduling`), each measured against a server this process starts on a loopback
//! port in a scratch directory, and a server process under sustained load (`soak`).

pub mod api;
pub mod rbac;
pub mod scheduling;
pub mod soak;
