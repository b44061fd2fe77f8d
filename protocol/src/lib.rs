//! Switchboard's wire contract, shared by the gateway and by the services
//! that talk to it: the unified JSON [`Envelope`] that every WebSocket frame
//! and every broker message carries, and the names of the RabbitMQ
//! exchanges, queues and headers ([`amqp`]).
//!
//! This crate has no I/O and few dependencies, so that any Rust program can
//! speak the protocol without pulling in the gateway.
#![warn(missing_docs)]

pub mod amqp;
pub mod envelope;

pub use envelope::{Envelope, ErrorCode, MessageType, Refusal, SendType};
