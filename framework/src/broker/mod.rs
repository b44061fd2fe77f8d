//! The broker: the seam between one node and the cluster.
//!
//! A node never talks to another node directly. Everything that crosses
//! nodes goes through a [`Broker`]:
//!
//! - **service events** (`switchboard.inbound`): a producer hands one in, the
//!   broker gives it to exactly one node's [`NodeSink::process_event`], and
//!   considers it done only when that call returns `Ok`;
//! - **deliveries**: an addressed, already-serialized envelope that must reach
//!   every matching session, wherever it is connected; the broker passes it
//!   to [`NodeSink::deliver_local`] on each node that may hold such a session;
//! - **client messages out** (`switchboard.outbound`): envelopes a handler
//!   forwards to backend services.
//!
//! [`embedded::EmbeddedBroker`] (one process, nothing survives a restart) is
//! the default; [`amqp::AmqpBroker`] (RabbitMQ) lets several nodes act as
//! one.
//!
//! # Guarantees an implementation must give
//!
//! - A publish method resolves `Ok` only once the message is safely accepted:
//!   confirmed by RabbitMQ, or queued in memory for the embedded broker. On
//!   any doubt (nack, returned, connection lost before the confirm) it
//!   retries with the same `messageId` or returns an error; it never drops a
//!   message silently.
//! - An event whose processing fails with [`EventError::Retry`] is offered
//!   again, a bounded number of times, then dead-lettered with the reason;
//!   [`EventError::Reject`] dead-letters it at once.
//! - A delivery reaches each node's `deliver_local` at most once; a node that
//!   holds none of the addressed sessions may be skipped.
//! - A reliable push ([`Broker::deliver_reliable`]) is kept for its user
//!   until a session of the user sends a receipt for it ([`Broker::receipt`])
//!   or its TTL ends; it goes to the user's sessions at most
//!   `reliable.max_in_flight_per_user` at a time, in order, and is offered
//!   again (same `messageId`) when the sessions it went to are all gone
//!   before the receipt. See `docs/delivery-guarantees.md`.

pub mod amqp;
pub mod embedded;
mod memory_inbox;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::envelope::{Envelope, Refusal};
use crate::presence::Presence;

/// A delivery: an addressed envelope and its JSON text, serialized once and
/// shared by every session it goes to.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The envelope, for addressing.
    pub envelope: Arc<Envelope>,
    /// The envelope as JSON text, exactly as sessions receive it.
    pub text: Arc<str>,
}

impl Delivery {
    /// Serializes `envelope` once into a delivery.
    pub fn new(envelope: Envelope) -> Self {
        let text: Arc<str> = Arc::from(envelope.to_json());
        Delivery {
            envelope: Arc::new(envelope),
            text,
        }
    }
}

/// Why a broker operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The broker is not reachable now (connecting, reconnecting, closed).
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the message (nack) after every retry.
    #[error("broker refused the message {message_id} after {attempts} attempts")]
    Refused {
        /// The message's id.
        message_id: String,
        /// How many times it was tried.
        attempts: u32,
    },
    /// No confirm came within the publish timeout.
    #[error("no broker confirm for {message_id} within the publish timeout")]
    Timeout {
        /// The message's id.
        message_id: String,
    },
    /// The node is shutting down and takes no new messages.
    #[error("broker is shutting down")]
    ShuttingDown,
    /// The user's inbox holds `reliable.max_pending_per_user` pushes already;
    /// the newest push is refused.
    #[error("inbox of {unique_id} is full")]
    InboxFull {
        /// The user.
        unique_id: String,
    },
    /// Connecting or declaring the topology failed at start.
    #[error("broker setup failed: {0}")]
    Setup(String),
}

/// The outcome of processing one service event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The event can never succeed (invalid, unknown business type, refused
    /// by the handler): dead-letter it with this reason, do not retry.
    #[error("rejected: {0}")]
    Reject(Refusal),
    /// Processing failed for a reason that may pass (handler error, broker
    /// unavailable): retry, then dead-letter after the configured retries.
    #[error("retry: {0}")]
    Retry(String),
}

/// What a broker calls on its node.
#[async_trait]
pub trait NodeSink: Send + Sync + 'static {
    /// Processes one service event. Returns once everything the handler
    /// produced has been handed on; only then may the broker consider the
    /// event done.
    ///
    /// # Errors
    ///
    /// [`EventError`] saying whether to dead-letter or retry.
    async fn process_event(&self, event: Envelope) -> Result<(), EventError>;

    /// Hands a delivery to this node's matching sessions; returns how many
    /// sessions it was queued for. Never blocks.
    fn deliver_local(&self, delivery: &Delivery) -> usize;

    /// Whether a session of `unique_id` is connected to this node.
    fn has_local_user(&self, unique_id: &str) -> bool;

    /// This node's sessions of `unique_id` by client type, for a broker
    /// that answers other nodes' presence questions. Default: none, for
    /// sinks that hold no sessions.
    fn local_presence(&self, unique_id: &str) -> Presence {
        let _ = unique_id;
        Presence::default()
    }
}

/// A message broker as the node sees it. See the module docs for the
/// guarantees every implementation gives.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// A short name for logs: `embedded` or `rabbitmq`.
    fn kind(&self) -> &'static str;

    /// Connects, declares the topology and starts consuming, calling `node`
    /// for each event and delivery. Called once, before the node listens.
    ///
    /// # Errors
    ///
    /// [`BrokerError::Setup`] when the first connection or declaration fails.
    async fn start(&self, node: Arc<dyn NodeSink>) -> Result<(), BrokerError>;

    /// Publishes a service event to `switchboard.inbound`.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when it could not be safely accepted.
    async fn publish_event(&self, event: &Envelope) -> Result<(), BrokerError>;

    /// Publishes a client message for backend services to
    /// `switchboard.outbound`.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when it could not be safely accepted.
    async fn publish_outbound(&self, message: &Envelope) -> Result<(), BrokerError>;

    /// Routes a delivery to every node that may hold an addressed session.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when it could not be handed on.
    async fn deliver(&self, delivery: Delivery) -> Result<(), BrokerError>;

    /// Keeps a reliable push (a `UNICAST` of a reliable business type) for
    /// its user and sends it to the user's sessions, on any node, now or
    /// when one connects. Resolves once the push is safely kept.
    ///
    /// # Errors
    ///
    /// [`BrokerError::InboxFull`] when the user has too many pushes
    /// pending; another [`BrokerError`] when it could not be kept.
    async fn deliver_reliable(&self, delivery: Delivery) -> Result<(), BrokerError>;

    /// A session of `unique_id` sent a receipt (`ACK`) for the push
    /// `message_id`: the push is settled for all of the user's sessions.
    /// A receipt for something not pending is ignored. Best effort: a
    /// receipt lost on the way means the push comes again.
    async fn receipt(&self, unique_id: &str, message_id: &str);

    /// Tells the broker that whether this node holds a session of
    /// `unique_id` may have changed; the broker asks
    /// [`NodeSink::has_local_user`] for the current answer. Never blocks.
    fn user_presence_changed(&self, unique_id: &str);

    /// Waits, at most `timeout`, until deliveries addressed to `unique_id`
    /// reach this node. A session calls it after registering and before
    /// writing `CONNECTED`, so that whatever is published after the client
    /// saw `CONNECTED` reaches it. Returns at once where routing needs no
    /// setup (the default) or cannot happen now (broker disconnected).
    async fn wait_user_routed(&self, unique_id: &str, timeout: Duration) {
        let _ = (unique_id, timeout);
    }

    /// Whether the broker is usable now (drives `/readyz`).
    fn is_ready(&self) -> bool;

    /// Marks a connection token as used across the cluster. The node calls
    /// it at the upgrade, after its own record (see [`crate::replay`])
    /// accepted the token, and upgrades only on `Ok(true)`. `Ok(false)`
    /// means another node already accepted this token: the upgrade is
    /// refused with 401. `expires_at` (seconds since the epoch) is when the
    /// claim may be forgotten.
    ///
    /// Default: `Ok(true)`, right for a single node, whose own record is the
    /// whole truth. A broker that connects several nodes must override it
    /// with an atomic first-claim-wins check that all nodes share, or a
    /// token can connect once on every node.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the check cannot be made; the upgrade is
    /// refused with 503 (the token stays used on this node).
    async fn claim_token(&self, token_id: &str, expires_at: u64) -> Result<bool, BrokerError> {
        let _ = (token_id, expires_at);
        Ok(true)
    }

    /// The presence of `unique_id` across the cluster, given this node's own
    /// (`local`). Serves `GET /api/presence`.
    ///
    /// Default: `Ok(local)`, right for a single node. A broker that connects
    /// several nodes must override it to add the other nodes' counts (each
    /// answering from [`NodeSink::local_presence`]), within a bounded time.
    ///
    /// # Errors
    ///
    /// A [`BrokerError`] when the other nodes cannot be asked; the endpoint
    /// answers 503 rather than a count it knows is partial.
    async fn presence(&self, unique_id: &str, local: Presence) -> Result<Presence, BrokerError> {
        let _ = unique_id;
        Ok(local)
    }

    /// Stops consuming and hands unacknowledged work back to the broker,
    /// then closes. Waits at most for in-flight work to finish.
    async fn shutdown(&self);
}
