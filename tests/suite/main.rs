//! The workspace's integration tests, one binary with topical modules.

mod http;
mod protocol;
mod smoke;
