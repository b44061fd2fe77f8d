//! Every way a client operation can fail.

use std::time::Duration;

use switchboard_protocol::Refusal;

/// Why a client operation failed. Publishing errors say what is known about
/// the message: it was *not* confirmed, and may or may not have reached the
/// broker; publishing it again with the same `messageId` is always safe.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker URL cannot be parsed.
    #[error("invalid broker url: {0}")]
    InvalidUrl(String),
    /// No connection (with its topology declared) could be made in time.
    #[error("cannot reach the broker within {timeout:?}: {last_error}")]
    Connect {
        /// How long connecting was tried.
        timeout: Duration,
        /// The last connection error seen.
        last_error: String,
    },
    /// The broker was not connected at any time during the publish timeout.
    #[error("broker unavailable; message {message_id} not published")]
    Unavailable {
        /// The message's id.
        message_id: String,
    },
    /// The broker refused the message (negative confirm) on every attempt.
    #[error("broker refused message {message_id} after {attempts} attempts")]
    Nacked {
        /// The message's id.
        message_id: String,
        /// How many times it was published.
        attempts: u32,
    },
    /// The broker returned the message: no queue is bound for its routing
    /// key (reply code 312), on every attempt.
    #[error("no queue bound to {exchange} for routing key {routing_key}; message {message_id}")]
    Unroutable {
        /// The message's id.
        message_id: String,
        /// The exchange it was published to.
        exchange: String,
        /// Its routing key.
        routing_key: String,
    },
    /// No confirm arrived within the publish timeout.
    #[error("no broker confirm for message {message_id} within the publish timeout")]
    Timeout {
        /// The message's id.
        message_id: String,
    },
    /// The client (or its connector) was closed.
    #[error("the client is closed")]
    Closed,
    /// The envelope breaks the protocol; it was not published.
    #[error("invalid envelope: {0}")]
    Invalid(#[from] Refusal),
    /// Declaring, binding or consuming a queue failed.
    #[error("{action} on queue {queue} failed")]
    Queue {
        /// What was attempted.
        action: &'static str,
        /// The queue.
        queue: String,
        /// The broker's answer.
        #[source]
        source: lapin::Error,
    },
    /// An acknowledgement could not be sent because its channel is closed;
    /// the broker gives the message to a consumer again.
    #[error("acknowledgement not sent for delivery {delivery_tag}: its channel is closed")]
    AckLost {
        /// The delivery's tag on its (now closed) channel.
        delivery_tag: u64,
    },
    /// Another broker operation failed.
    #[error("broker operation failed")]
    Amqp(#[from] lapin::Error),
}
