//! The contract between the framework and a business team's handler.
//!
//! # Execution model
//!
//! The framework owns every socket and every broker channel; a handler never
//! sees either. It is called in three situations, each with a [`Context`]:
//!
//! 1. **A service event** arrives for its `businessType`, from the
//!    `switchboard.inbound` exchange or from `POST /api/publish`. The
//!    framework first calls [`BusinessHandler::check_event`] (on the node that
//!    accepts a `/api/publish`, before anything is confirmed to the producer,
//!    and again on the node that consumes the event), then
//!    [`BusinessHandler::on_event`]. With RabbitMQ, the event is acknowledged
//!    to the broker only after `on_event` returns `Ok` and every delivery it
//!    made through the context has been confirmed, so a crash in between
//!    means the event is processed again (at least once; handlers must
//!    tolerate a repeat, which carries the same `messageId`).
//! 2. **A `CLIENT_TO_SERVER` frame** arrives from a session on this node.
//!    [`BusinessHandler::on_client_message`] runs inline in that session's
//!    task, so one session's requests are handled one at a time and in order.
//!    Replies made with [`Context::reply`] are held back and written after the
//!    `ACK`, and only if the handler returns `Ok`.
//! 3. **A `CLIENT_TO_CLIENT` frame** arrives. [`BusinessHandler::permit_relay`]
//!    decides; if it allows, the framework relays the frame as addressed with
//!    the sender's identity set from the session.
//!
//! A handler is shared by all sessions and events at once: it must be
//! `Send + Sync`, keep its state behind its own synchronization, and never
//! hold a lock across an `.await`.
//!
//! # Guarantees the framework gives
//!
//! - Envelopes passed in are parsed and within size limits; `businessType` is
//!   the handler's own; for client frames `fromUniqueId` and `fromClientType`
//!   are the session's, whatever the client wrote; `messageId` and
//!   `timestamp` are set.
//! - Errors are translated once, at the edge: a [`HandlerError::Refused`]
//!   reaches the sender as an `ERROR` with its code (or dead-letters an event
//!   with the reason); a [`HandlerError::Failed`] is logged in full and the
//!   client sees only `HANDLER_FAILED`.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::broker::BrokerError;
use crate::envelope::{Envelope, ErrorCode, MessageType, Refusal};
use crate::node::Node;

/// Who sent a client frame: the session's identity, as the token granted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The session's id, unique on this node.
    pub session_id: String,
    /// The user.
    pub unique_id: String,
    /// The client type.
    pub client_type: String,
}

/// What went wrong in a handler.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A refusal in protocol terms, shown to the sender as it is. For a
    /// service event, the event is dead-lettered with this reason and not
    /// retried.
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    /// The broker could not take a delivery in time. A client sees
    /// `UNAVAILABLE`; a service event is retried.
    #[error("broker unavailable")]
    Unavailable(#[from] BrokerError),
    /// Anything else. Logged in full; a client sees only `HANDLER_FAILED`;
    /// a service event is retried a bounded number of times, then
    /// dead-lettered.
    #[error("handler failed")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl HandlerError {
    /// Wraps any error as [`HandlerError::Failed`].
    pub fn failed(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        HandlerError::Failed(err.into())
    }
}

/// Business logic for one `businessType`.
///
/// Implement it in a handler crate and register it with
/// [`register_handler!`](crate::register_handler). Every method has a
/// default, so a handler overrides only what its scenario needs; the guide in
/// `docs/handler-guide.md` walks through a complete crate.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a Switchboard business handler",
    note = "implement `switchboard::BusinessHandler` for it (see docs/handler-guide.md), \
            annotated with `#[switchboard::async_trait]`"
)]
#[async_trait]
pub trait BusinessHandler: Send + Sync + 'static {
    /// Whether this business type's pushes are reliable: kept for offline
    /// users and redelivered until the client acknowledges them, rather than
    /// live only. Read once at start. Default `false`.
    fn reliable(&self) -> bool {
        false
    }

    /// Cheap, synchronous validation of a service event before it is
    /// accepted. Called before `/api/publish` confirms to its caller and
    /// again when the event is consumed. Default: the event must be addressed
    /// (see [`Envelope::check_addressed`]), as the default `on_event` needs.
    ///
    /// # Errors
    ///
    /// A [`Refusal`]: `/api/publish` answers with a non-zero `result` and the
    /// message; an event from RabbitMQ is dead-lettered with it.
    fn check_event(&self, event: &Envelope) -> Result<(), Refusal> {
        event.check_addressed()
    }

    /// Handles a service event. Default: delivers the event as addressed
    /// (`sendType`, `toUniqueId`, `tags`, `businesses`, `toClientType`).
    ///
    /// # Errors
    ///
    /// See [`HandlerError`]: a refusal dead-letters the event, anything else
    /// makes the framework retry it.
    async fn on_event(&self, ctx: &mut Context, event: Envelope) -> Result<(), HandlerError> {
        ctx.deliver(event).await
    }

    /// Handles a `CLIENT_TO_SERVER` frame. Default: refused with
    /// `FORBIDDEN`, since a business type takes client requests only if it
    /// says so.
    ///
    /// # Errors
    ///
    /// See [`HandlerError`]; the sender gets an `ERROR` instead of the `ACK`.
    async fn on_client_message(
        &self,
        ctx: &mut Context,
        message: Envelope,
    ) -> Result<(), HandlerError> {
        let _ = (ctx, message);
        Err(Refusal::forbidden("this business type takes no client requests").into())
    }

    /// Decides whether a `CLIENT_TO_CLIENT` frame may be relayed, after
    /// looking at the sender and the target. Default: refused.
    ///
    /// # Errors
    ///
    /// A [`Refusal`], normally `FORBIDDEN`, sent to the client as an `ERROR`.
    async fn permit_relay(&self, sender: &ClientInfo, message: &Envelope) -> Result<(), Refusal> {
        let _ = (sender, message);
        Err(Refusal::forbidden(
            "this business type does not relay client messages",
        ))
    }
}

/// What a handler can do while it handles one message.
///
/// A context is made for each call and lives only for it.
pub struct Context {
    node: Arc<Node>,
    business_type: String,
    sender: Option<ClientInfo>,
    request_id: Option<String>,
    replies: Vec<Envelope>,
}

impl Context {
    pub(crate) fn new(
        node: Arc<Node>,
        business_type: &str,
        sender: Option<ClientInfo>,
        request_id: Option<String>,
    ) -> Self {
        Context {
            node,
            business_type: business_type.to_owned(),
            sender,
            request_id,
            replies: Vec::new(),
        }
    }

    /// The sending session, for a client frame; `None` for a service event.
    pub fn sender(&self) -> Option<&ClientInfo> {
        self.sender.as_ref()
    }

    /// The id of this node.
    pub fn node_id(&self) -> &str {
        self.node.node_id()
    }

    /// Replies to the sending session with a `SERVER_TO_CLIENT` whose
    /// `correlationId` is the request's `messageId` and whose `content` is
    /// `content`. The reply is written after the `ACK`, and only if the
    /// handler returns `Ok`. For a service event (no sender) it does nothing.
    pub fn reply(&mut self, content: Value) {
        let Some(sender) = &self.sender else { return };
        let mut env = Envelope::new(MessageType::ServerToClient);
        env.correlation_id = self.request_id.clone();
        env.business_type = Some(self.business_type.clone());
        env.to_unique_id = Some(sender.unique_id.clone());
        env.to_client_type = Some(sender.client_type.clone());
        env.content = content;
        env.stamp();
        self.replies.push(env);
    }

    pub(crate) fn take_replies(&mut self) -> Vec<Envelope> {
        std::mem::take(&mut self.replies)
    }

    /// Delivers `envelope` as addressed, on whichever nodes the addressed
    /// sessions are connected. `messageType` becomes `SERVER_TO_CLIENT`
    /// where absent, `businessType` this handler's where absent, and
    /// `messageId` and `timestamp` are stamped where absent. Resolves once
    /// the delivery is handed on (confirmed by the broker, with RabbitMQ).
    ///
    /// # Errors
    ///
    /// [`HandlerError::Refused`] when the envelope is not addressed (a
    /// `UNICAST` without `toUniqueId`, say); [`HandlerError::Unavailable`]
    /// when the broker cannot take it in time.
    pub async fn deliver(&self, mut envelope: Envelope) -> Result<(), HandlerError> {
        if envelope.message_type.is_none() {
            envelope.message_type = Some(MessageType::ServerToClient);
        }
        if envelope.business_type.is_none() {
            envelope.business_type = Some(self.business_type.clone());
        }
        self.node.deliver(envelope).await
    }

    /// Forwards `envelope` to backend services through the
    /// `switchboard.outbound` exchange, routing key = its `businessType`.
    /// Resolves once the broker confirmed it.
    ///
    /// # Errors
    ///
    /// [`HandlerError::Unavailable`] when the broker cannot take it in time.
    pub async fn forward_to_services(&self, mut envelope: Envelope) -> Result<(), HandlerError> {
        if envelope.business_type.is_none() {
            envelope.business_type = Some(self.business_type.clone());
        }
        envelope.stamp();
        self.node.broker().publish_outbound(&envelope).await?;
        Ok(())
    }
}

impl HandlerError {
    /// The refusal a client sees for this error.
    pub(crate) fn to_refusal(&self) -> Refusal {
        match self {
            HandlerError::Refused(refusal) => refusal.clone(),
            HandlerError::Unavailable(_) => Refusal::new(
                ErrorCode::Unavailable,
                "the service cannot take this message now",
            ),
            HandlerError::Failed(_) => Refusal::new(
                ErrorCode::HandlerFailed,
                "the handler failed; try again later",
            ),
        }
    }
}
