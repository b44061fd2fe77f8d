//! The workspace's integration tests, one binary with topical modules.

mod amqp_cluster;
mod amqp_contract;
mod client;
mod smoke;
