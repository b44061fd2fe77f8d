//! Tests that need the broker to themselves: they close every connection,
//! stop and start RabbitMQ, or link handlers of their own (a failing one, a
//! forwarding one) that other nodes would not know. Cargo runs test
//! binaries one after another, and the tests here take [`SERIAL`] so they
//! run one at a time too.

mod faults;
mod handlers;
mod reliable;

/// Held by every test of this binary for its whole run.
pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
