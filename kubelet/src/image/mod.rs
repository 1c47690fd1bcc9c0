//! The node's image store: see the crate comment.

pub mod cli;
