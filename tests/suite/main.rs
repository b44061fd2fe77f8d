//! The workspace's integration tests, one binary with topical modules.

mod amqp_cluster;
mod amqp_contract;
mod amqp_operations;
mod client;
mod config;
mod delivery;
mod handlers;
mod hostile;
mod http;
mod lifecycle;
mod log_secrets;
mod operations;
mod protocol;
mod registry;
mod reliable;
mod security;
mod smoke;
