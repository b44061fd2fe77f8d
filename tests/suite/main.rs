//! The workspace's integration tests, one binary with topical modules.

mod delivery;
mod handlers;
mod hostile;
mod http;
mod protocol;
mod smoke;
