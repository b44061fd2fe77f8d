//! The workspace's integration tests, one binary with topical modules.

mod client;
mod smoke;
