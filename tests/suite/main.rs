//! The workspace's integration tests, one binary with topical modules.

mod log_secrets;
mod operations;
mod security;
mod smoke;
