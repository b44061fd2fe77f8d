//! The node: what one Switchboard process is, tying the hub, the handler
//! registry and the broker together.
//!
//! Every message enters through one of three doors, and each door is one
//! method here, so the rules of the protocol live in one place:
//!
//! - [`Node::on_client_envelope`]: a parsed frame from a local session;
//! - [`Node::accept_service_event`]: an event handed in over HTTP;
//! - [`NodeSink::process_event`]: an event the broker gives this node.

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::broker::{Broker, BrokerError, Delivery, EventError, NodeSink};
use crate::config::Config;
use crate::envelope::{Envelope, ErrorCode, MessageType, Refusal, SendType};
use crate::handler::{ClientInfo, Context, HandlerError};
use crate::hub::Hub;
use crate::limits::Admission;
use crate::metrics::{DeliveryOutcome, Metrics};
use crate::origin::OriginPolicy;
use crate::presence::Presence;
use crate::registry::HandlerRegistry;
use crate::replay::UsedTokens;
use crate::token::TokenSigner;

/// One Switchboard node. Built by [`crate::Server`]; handlers reach it only
/// through their [`Context`].
pub struct Node {
    me: Weak<Node>,
    config: Config,
    node_id: String,
    registry: HandlerRegistry,
    hub: Hub,
    broker: Arc<dyn Broker>,
    signer: TokenSigner,
    authenticator: Arc<dyn Authenticator>,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    metrics: Arc<Metrics>,
    admission: Arc<Admission>,
    used_tokens: UsedTokens,
    origins: OriginPolicy,
}

impl Node {
    pub(crate) fn new(
        config: Config,
        node_id: String,
        registry: HandlerRegistry,
        broker: Arc<dyn Broker>,
        signer: TokenSigner,
        authenticator: Arc<dyn Authenticator>,
        metrics: Arc<Metrics>,
    ) -> Arc<Node> {
        let limits = &config.limits;
        let admission = Admission::new(limits.max_connections, limits.max_sessions_per_user);
        let used_tokens = UsedTokens::new(limits.max_used_tokens);
        let hub = Hub::with_max_subscriptions(limits.max_subscriptions_per_session);
        // The list was checked when the configuration was validated; should
        // an unchecked one ever arrive, refuse browsers rather than allow all.
        let origins = OriginPolicy::new(&config.ws.allowed_origins)
            .unwrap_or_else(|_| OriginPolicy::refuse_browsers());
        Arc::new_cyclic(|me| Node {
            me: me.clone(),
            config,
            node_id,
            registry,
            hub,
            broker,
            signer,
            authenticator,
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            metrics,
            admission,
            used_tokens,
            origins,
        })
    }

    fn arc(&self) -> Arc<Node> {
        // `self` is always reached through an `Arc<Node>`, so the upgrade
        // succeeds whenever a method runs.
        self.me
            .upgrade()
            .expect("node is alive while its methods run")
    }

    /// The configuration this node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The handlers of this node.
    pub fn registry(&self) -> &HandlerRegistry {
        &self.registry
    }

    /// This node's sessions.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    pub(crate) fn signer(&self) -> &TokenSigner {
        &self.signer
    }

    pub(crate) fn authenticator(&self) -> &dyn Authenticator {
        self.authenticator.as_ref()
    }

    /// This node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    pub(crate) fn used_tokens(&self) -> &UsedTokens {
        &self.used_tokens
    }

    pub(crate) fn origins(&self) -> &OriginPolicy {
        &self.origins
    }

    /// The presence of `unique_id`: this node's sessions plus, through the
    /// broker, every other node's.
    ///
    /// # Errors
    ///
    /// A [`crate::broker::BrokerError`] when other nodes cannot be asked.
    pub async fn presence(&self, unique_id: &str) -> Result<Presence, crate::broker::BrokerError> {
        let local = self.local_presence(unique_id);
        self.broker.presence(unique_id, local).await
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    pub(crate) fn session_tasks(&self) -> &TaskTracker {
        &self.sessions
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Stamps, checks and hands a delivery to the broker: a `UNICAST` of a
    /// reliable business type to the user's inbox, anything else to the
    /// live path.
    pub(crate) async fn deliver(&self, mut envelope: Envelope) -> Result<(), HandlerError> {
        envelope.stamp();
        envelope.check_addressed()?;
        let message_id = envelope.id().to_owned();
        let reliable = envelope.effective_send_type() == SendType::Unicast
            && envelope.message_type == Some(MessageType::ServerToClient)
            && envelope.business_type.is_some()
            && self.registry.is_reliable(envelope.business());
        if !reliable {
            self.broker.deliver(Delivery::new(envelope)).await?;
            tracing::trace!(target: "switchboard::node", message_id, "delivery handed on");
            return Ok(());
        }
        match self.broker.deliver_reliable(Delivery::new(envelope)).await {
            Ok(()) => {
                tracing::trace!(target: "switchboard::node", message_id, "reliable push kept");
                Ok(())
            }
            // A full inbox will not empty by retrying now: refuse, so the
            // event is dead-lettered with the reason.
            Err(BrokerError::InboxFull { unique_id }) => {
                tracing::warn!(
                    target: "switchboard::node",
                    message_id, unique_id, "reliable push refused: inbox full"
                );
                Err(HandlerError::Refused(Refusal::new(
                    ErrorCode::Unavailable,
                    "inbox full: the user has too many unacknowledged pushes",
                )))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Checks a service event and publishes it to the broker; resolves once
    /// it is safely accepted. Returns its `messageId`.
    ///
    /// # Errors
    ///
    /// The [`Refusal`] to show the producer: `INVALID_MESSAGE`,
    /// `UNKNOWN_BUSINESS_TYPE`, the handler's own refusal, or `UNAVAILABLE`.
    pub async fn accept_service_event(&self, mut event: Envelope) -> Result<String, Refusal> {
        if self.is_draining() {
            return Err(Refusal::new(
                ErrorCode::Unavailable,
                "the node is shutting down",
            ));
        }
        self.check_service_event(&mut event)?;
        event.stamp();

        // A reliable push is handled here and now rather than queued as an
        // event: its handler runs and the push is kept in the user's inbox
        // before the producer's answer, so pushes a producer sends one after
        // another reach the inbox, and the user, in that order, and a full
        // inbox is refused to the producer directly.
        if self.registry.is_reliable(event.business())
            && event.effective_send_type() == SendType::Unicast
        {
            let id = event.id().to_owned();
            return match self.process_event(event).await {
                Ok(()) => Ok(id),
                Err(EventError::Reject(refusal)) => Err(refusal),
                Err(EventError::Retry(_)) => Err(Refusal::new(
                    ErrorCode::Unavailable,
                    "the broker cannot take events now",
                )),
            };
        }
        match self.broker.publish_event(&event).await {
            Ok(()) => Ok(event.id().to_owned()),
            Err(err) => {
                tracing::warn!(
                    target: "switchboard::node",
                    message_id = event.id(), business_type = event.business(), error = %err,
                    "service event not accepted"
                );
                Err(Refusal::new(
                    ErrorCode::Unavailable,
                    "the broker cannot take events now",
                ))
            }
        }
    }

    /// The checks every service event passes, wherever it entered.
    fn check_service_event(&self, event: &mut Envelope) -> Result<(), Refusal> {
        match event.message_type {
            None => event.message_type = Some(MessageType::ServerToClient),
            Some(MessageType::ServerToClient) => {}
            Some(other) => {
                return Err(Refusal::invalid(format!(
                    "a service event must be SERVER_TO_CLIENT, not {}",
                    serde_json::to_value(other).unwrap_or_default()
                )));
            }
        }
        let business = event
            .business_type
            .as_deref()
            .ok_or_else(|| Refusal::invalid("businessType is required"))?;
        self.registry.get(business)?.handler.check_event(event)
    }

    /// Handles one parsed frame from a local session and returns the frames
    /// to write back to that session, in order.
    pub(crate) async fn on_client_envelope(
        &self,
        sender: &ClientInfo,
        session: u64,
        mut envelope: Envelope,
    ) -> Vec<Envelope> {
        // The sender is who the token says, whatever the client wrote.
        envelope.from_unique_id = Some(sender.unique_id.clone());
        envelope.from_client_type = Some(sender.client_type.clone());
        envelope.stamp();
        let id = envelope.id().to_owned();
        let refuse = |refusal: Refusal| vec![Envelope::error(&refusal, Some(&id))];

        let Some(message_type) = envelope.message_type else {
            return refuse(Refusal::invalid("messageType is required"));
        };
        match message_type {
            MessageType::Heartbeat => {
                let mut beat = Envelope::new(MessageType::Heartbeat);
                beat.correlation_id = Some(id);
                beat.stamp();
                vec![beat]
            }
            // A client's receipt of a delivery. For a reliable push it
            // settles the push; live deliveries need no bookkeeping. It is
            // never answered (an ACK of an ACK would never end).
            MessageType::Ack => {
                if let Some(message_id) = envelope.correlation_id.as_deref() {
                    self.broker.receipt(&sender.unique_id, message_id).await;
                }
                Vec::new()
            }
            MessageType::Subscribe => {
                match self
                    .hub
                    .subscribe(session, &envelope.tags, &envelope.businesses)
                {
                    Ok(()) => vec![Envelope::ack(&id)],
                    Err(_) => refuse(Refusal::invalid(format!(
                        "a session may hold at most {} subscriptions",
                        self.hub.max_subscriptions()
                    ))),
                }
            }
            MessageType::Unsubscribe => {
                self.hub
                    .unsubscribe(session, &envelope.tags, &envelope.businesses);
                vec![Envelope::ack(&id)]
            }
            MessageType::ClientToServer => self.client_request(sender, envelope).await,
            MessageType::ClientToClient => self.client_relay(sender, envelope).await,
            MessageType::ServerToClient | MessageType::Connected | MessageType::Error => refuse(
                Refusal::invalid("this messageType cannot be sent by a client"),
            ),
        }
    }

    async fn client_request(&self, sender: &ClientInfo, envelope: Envelope) -> Vec<Envelope> {
        let id = envelope.id().to_owned();
        if envelope.business_type.is_none() {
            return vec![Envelope::error(
                &Refusal::invalid("businessType is required"),
                Some(&id),
            )];
        }
        let business = envelope.business().to_owned();
        let registered = match self.registry.get(&business) {
            Ok(registered) => registered,
            Err(refusal) => return vec![Envelope::error(&refusal, Some(&id))],
        };
        let mut ctx = Context::new(
            self.arc(),
            &business,
            Some(sender.clone()),
            Some(id.clone()),
        );
        let timer = self.metrics.handler_timer(&business, "client");
        let result = registered
            .handler
            .on_client_message(&mut ctx, envelope)
            .await;
        drop(timer);
        match result {
            Ok(()) => {
                let mut answers = vec![Envelope::ack(&id)];
                answers.extend(ctx.take_replies());
                answers
            }
            Err(err) => {
                self.log_handler_error(&err, &business, &id);
                vec![Envelope::error(&err.to_refusal(), Some(&id))]
            }
        }
    }

    async fn client_relay(&self, sender: &ClientInfo, envelope: Envelope) -> Vec<Envelope> {
        let id = envelope.id().to_owned();
        let refuse = |refusal: Refusal| vec![Envelope::error(&refusal, Some(&id))];
        if envelope.business_type.is_none() {
            return refuse(Refusal::invalid("businessType is required"));
        }
        let registered = match self.registry.get(envelope.business()) {
            Ok(registered) => registered,
            Err(refusal) => return refuse(refusal),
        };
        if let Err(refusal) = envelope.check_addressed() {
            return refuse(refusal);
        }
        if let Err(refusal) = registered.handler.permit_relay(sender, &envelope).await {
            return refuse(refusal);
        }
        let business = envelope.business().to_owned();
        match self.deliver(envelope).await {
            Ok(()) => vec![Envelope::ack(&id)],
            Err(err) => {
                self.log_handler_error(&err, &business, &id);
                refuse(err.to_refusal())
            }
        }
    }

    fn log_handler_error(&self, err: &HandlerError, business_type: &str, message_id: &str) {
        match err {
            HandlerError::Refused(refusal) => tracing::debug!(
                target: "switchboard::node",
                business_type, message_id, code = refusal.code.as_str(),
                "handler refused message"
            ),
            HandlerError::Unavailable(error) => tracing::warn!(
                target: "switchboard::node",
                business_type, message_id, error = %error,
                "broker unavailable for handler"
            ),
            HandlerError::Failed(error) => tracing::error!(
                target: "switchboard::node",
                business_type, message_id, error = %error, error_debug = ?error,
                "handler failed"
            ),
        }
    }

    /// Starts draining: readiness turns false, sessions close with 1001, and
    /// new events are refused.
    pub fn begin_drain(&self) {
        self.shutdown.cancel();
        self.sessions.close();
    }
}

#[async_trait]
impl NodeSink for Node {
    async fn process_event(&self, mut event: Envelope) -> Result<(), EventError> {
        self.check_service_event(&mut event)
            .map_err(EventError::Reject)?;
        event.stamp();
        let business = event.business().to_owned();
        let id = event.id().to_owned();
        let registered = self.registry.get(&business).map_err(EventError::Reject)?;
        let mut ctx = Context::new(self.arc(), &business, None, None);
        let timer = self.metrics.handler_timer(&business, "event");
        let result = registered.handler.on_event(&mut ctx, event).await;
        drop(timer);
        match result {
            Ok(()) => Ok(()),
            Err(HandlerError::Refused(refusal)) => Err(EventError::Reject(refusal)),
            Err(err) => {
                self.log_handler_error(&err, &business, &id);
                Err(EventError::Retry(err.to_string()))
            }
        }
    }

    fn deliver_local(&self, delivery: &Delivery) -> usize {
        let counts = self.hub.fan_out_counted(delivery);
        let message_type = delivery.envelope.message_type;
        let metrics = &self.metrics;
        if counts == crate::hub::FanOut::default() {
            metrics.delivered(message_type, DeliveryOutcome::NoLocalSession, 1);
        }
        let per_session = [
            (DeliveryOutcome::Delivered, counts.delivered),
            (
                DeliveryOutcome::DroppedSlowClient,
                counts.dropped_slow_client,
            ),
            (DeliveryOutcome::DroppedClosing, counts.dropped_closing),
        ];
        for (outcome, n) in per_session {
            metrics.delivered(message_type, outcome, n as u64);
        }
        counts.delivered
    }

    fn has_local_user(&self, unique_id: &str) -> bool {
        self.hub.has_user(unique_id)
    }

    fn local_presence(&self, unique_id: &str) -> Presence {
        Presence {
            sessions: self.hub.sessions_of(unique_id),
        }
    }
}
