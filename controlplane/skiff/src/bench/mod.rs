//! `skiff bench`: the API server (`api`), the cost of RBAC authorization (`rbac`), scheduling
//! throughput (`scheduling`), each measured against a server this process starts on a loopback
//! port in a scratch directory, a server process under sustained load (`soak`), and the
//! scheduler's hand-over between two server processes on one etcd (`failover`).

pub mod api;
pub mod failover;
pub mod rbac;
pub mod scheduling;
pub mod soak;
