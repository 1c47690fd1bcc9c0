//! `skiff bench`: the API server (`api`), the cost of RBAC authorization (`rbac`), scheduling
//! throughput (`scheduling`), each measured against a server this process starts on a loopback
//! port in a scratch directory, a server process under sustained load (`soak`), the
//! scheduler's hand-over between two server processes on one etcd (`failover`), and a 3-node
//! `skiff cluster` running a Deployment (`cluster`).

pub mod api;
pub mod cluster;
pub mod failover;
pub mod rbac;
pub mod scheduling;
pub mod soak;
