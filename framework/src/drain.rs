//! Spreading the closes of a drain over time.
//!
//! When a node drains, every client it closes reconnects, normally to the
//! other nodes. Closing ten thousand sessions in the same millisecond turns
//! into ten thousand token requests and upgrades in the next one. Instead,
//! each session picks its own moment, uniformly at random within
//! `server.drain_spread_secs` of the drain signal, and keeps serving until
//! then; the close is still 1001. The spread must end within
//! `server.shutdown_grace_secs`, which the configuration checks.

use std::time::Duration;

use rand::Rng;

use crate::node::Node;

/// Resolves when this session's turn to close has come: after the drain
/// began plus a random share of the spread window. Build it once per
/// session, before its loop, so the random delay is drawn once. Cancel safe.
pub(crate) async fn closing_turn(node: &Node) {
    let spread_ms = node.config().server.drain_spread_secs * 1000;
    node.shutdown_token().cancelled().await;
    if spread_ms != 0 {
        let delay = rand::rng().random_range(0..spread_ms);
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
}
