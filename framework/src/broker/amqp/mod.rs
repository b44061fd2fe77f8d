//! The RabbitMQ broker: several nodes act as one service.
//!
//! Built on `switchboard-client`'s connection supervisor and confirmed
//! publisher; `docs/rabbitmq.md` describes the topology for operators.
//!
//! # Topology
//!
//! Declared idempotently on every (re)connect, on a throwaway channel:
//!
//! - `switchboard.inbound`, a durable topic exchange, and the durable queue
//!   `switchboard.inbound.events` bound with `#`, with a single active
//!   consumer: every node subscribes, one at a time receives, in order
//!   ([`order`] keeps one user's events in that order on the node). Manual
//!   acks and a prefetch of `broker.prefetch`; each event is acked only
//!   after what replaces it (deliveries, a dead letter, a retry) is
//!   confirmed.
//! - `switchboard.dead`, a durable fanout exchange and queue: events that can
//!   never succeed, with the reason in headers.
//! - `switchboard.outbound`, a durable topic exchange for
//!   [`Context::forward_to_services`](crate::Context::forward_to_services).
//! - `switchboard.deliver`, a durable direct exchange, and this node's own
//!   queue `switchboard.node.<node_id>`: exclusive to the node's connection,
//!   so it vanishes with the node (and a second process with the same node
//!   id is refused). It is bound with `all`, and with `user.<uniqueId>` for
//!   each user that has a session here, kept by a reconciling task.
//!
//! # Deliveries
//!
//! A `UNICAST` is published with routing key `user.<uniqueId>`, so RabbitMQ
//! copies it only to the queues of nodes that hold the user; no route means
//! the user is offline, which is fine for a live delivery. `TAG`,
//! `BUSINESS` and `BROADCAST` go with key `all` to every node, which
//! filters locally. A queue receives a message once however many of its
//! bindings match, so each node, and through its hub each session, sees a
//! delivery once.
//!
//! # Presence
//!
//! `GET /api/presence` on one node asks the nodes that hold the user: a
//! question published with key `user.<uniqueId>` reaches only their queues,
//! and they answer through RabbitMQ's direct reply-to within a bounded
//! window ([`presence_query`]).
//!
//! `UNICAST` pushes of reliable business types do not take this path
//! directly: they are kept in per-user inbox queues and sent on from there
//! ([`inbox`]).
//!
//! Deliveries are published *transient*: they are only useful to the
//! sessions connected while they travel, and the node queue does not
//! survive its node anyway. The event they came from stays unacknowledged
//! in the durable inbound queue until the delivery publish is confirmed, so
//! a crash before that point redelivers the event rather than losing it.

mod events;
mod inbox;
mod order;
mod presence;
pub mod presence_query;
pub mod tokens;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use switchboard_client::connector::{SetupHook, redact_url};
use switchboard_client::consumer::{ConsumerSpec, run_consumer};
use switchboard_client::{
    ClientError, Confirmed, Connector, ConnectorSettings, IfUnroutable, Link, Outgoing, Publisher,
    topology,
};
use switchboard_protocol::amqp::{
    CONTENT_TYPE_JSON, DELIVER_ALL_KEY, DELIVER_EXCHANGE, INBOUND_EXCHANGE, INBOUND_QUEUE,
    INBOX_EXCHANGE, OUTBOUND_EXCHANGE, TRANSIENT, node_queue, user_routing_key,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Broker, BrokerError, Delivery, NodeSink};
use crate::config::{Config, ReliableConfig};
use crate::envelope::{Envelope, SendType};
use crate::metrics::BrokerMetrics;
use presence::Presence;

/// Prefetch of the node's delivery queue: deliveries are handed to local
/// sessions without waiting, so a generous window costs little.
const NODE_QUEUE_PREFETCH: u16 = 512;

/// How long the first connection may take before the node refuses to start.
const MIN_START_TIMEOUT: Duration = Duration::from_secs(10);

/// What the consumers and the reconciler share.
struct Inner {
    node_id: String,
    node_queue: String,
    max_retries: u32,
    connector: Connector,
    /// Connections for the inbox consumers (`reliable.consumer_connections`),
    /// so that their many channels neither count against the main
    /// connection's `channel_max` nor slow its I/O thread, which lapin
    /// makes look at every channel of a connection for each frame it writes.
    inbox_links: Vec<Connector>,
    publisher: Publisher,
    /// The node's broker counters; `None` when built without them.
    metrics: Option<BrokerMetrics>,
    node: Arc<dyn NodeSink>,
    presence: Presence,
    answers: presence_query::Answers,
    inbox: inbox::Inboxes,
    /// Keeps one user's events in arrival order.
    order: Arc<order::Sequencer>,
    /// Cancelled at shutdown: consumers stop taking deliveries.
    stop: CancellationToken,
    /// Cancelled once in-flight events are done: consumer channels close.
    release: CancellationToken,
    /// Events being processed.
    handlers: TaskTracker,
}

/// The RabbitMQ broker. See the module docs.
pub struct AmqpBroker {
    url: String,
    node_id: String,
    prefetch: u16,
    max_retries: u32,
    max_in_flight: usize,
    publish_timeout: Duration,
    grace: Duration,
    reliable: ReliableConfig,
    metrics: Option<BrokerMetrics>,
    inner: OnceLock<Arc<Inner>>,
    tasks: TaskTracker,
}

impl AmqpBroker {
    /// A broker for node `node_id` with the `broker` settings of `config`;
    /// nothing connects before [`Broker::start`].
    ///
    /// # Errors
    ///
    /// [`BrokerError::Setup`] when `broker.url` is unset.
    pub fn new(config: &Config, node_id: &str) -> Result<Self, BrokerError> {
        let broker = &config.broker;
        let url = broker
            .url
            .clone()
            .ok_or_else(|| BrokerError::Setup("broker.url is unset".into()))?;
        Ok(AmqpBroker {
            url,
            node_id: node_id.to_owned(),
            prefetch: broker.prefetch,
            max_retries: broker.max_retries,
            max_in_flight: broker.max_in_flight,
            publish_timeout: Duration::from_secs(broker.publish_timeout_secs),
            grace: Duration::from_secs(config.server.shutdown_grace_secs),
            reliable: config.reliable.clone(),
            metrics: None,
            inner: OnceLock::new(),
            tasks: TaskTracker::new(),
        })
    }

    /// Counts publishes, redeliveries and dead letters into `metrics`; set
    /// before [`Broker::start`].
    pub fn with_metrics(mut self, metrics: BrokerMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn running(&self) -> Result<&Arc<Inner>, BrokerError> {
        self.inner
            .get()
            .ok_or_else(|| BrokerError::Unavailable("broker not started".into()))
    }

    /// Publishes with the shared publisher and translates its errors.
    async fn publish(&self, message: &Outgoing<'_>) -> Result<Confirmed, BrokerError> {
        let inner = self.running()?;
        inner.publish(message).await.map_err(broker_error)
    }
}

impl Inner {
    /// Publishes with the shared publisher and counts the outcome: a
    /// confirm (returned messages included: the broker acked them) or a
    /// failure after every retry.
    async fn publish(&self, message: &Outgoing<'_>) -> Result<Confirmed, ClientError> {
        let result = self.publisher.publish(message).await;
        if let Some(metrics) = &self.metrics {
            match &result {
                Ok(_) => metrics.publish_confirmed(),
                Err(_) => metrics.publish_failed(),
            }
        }
        result
    }

    /// The connection that carries `unique_id`'s inbox consumer.
    fn inbox_link(&self, unique_id: &str) -> &Connector {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        unique_id.hash(&mut hasher);
        // At least one link exists (the configuration refuses 0).
        let i = (hasher.finish() % self.inbox_links.len() as u64) as usize;
        &self.inbox_links[i]
    }

    /// A consumed message arrived again (flagged by RabbitMQ, or a retry).
    fn redelivered(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.redelivered();
        }
    }

    /// An event was dead-lettered (the dead letter is confirmed).
    fn dead_lettered(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.dead_lettered();
        }
    }
}

impl Drop for AmqpBroker {
    fn drop(&mut self) {
        // Dropped without `shutdown` (a drain cut short): stop the tasks
        // and the supervisor so no connection outlives the broker.
        if let Some(inner) = self.inner.get() {
            inner.stop.cancel();
            inner.release.cancel();
            inner.connector.request_close();
            for link in &inner.inbox_links {
                link.request_close();
            }
        }
    }
}

/// The setup hook: the shared topology, the delivery exchange, this node's
/// queue and its `all` binding.
fn setup_hook(queue: String) -> SetupHook {
    Arc::new(move |link: Link| {
        let queue = queue.clone();
        Box::pin(async move {
            // A throwaway channel: a refused declaration kills its channel.
            let channel = link.channel().await?;
            topology::declare_shared(&channel).await?;
            let durable = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            channel
                .exchange_declare(
                    DELIVER_EXCHANGE.into(),
                    ExchangeKind::Direct,
                    durable,
                    FieldTable::default(),
                )
                .await?;
            channel
                .exchange_declare(
                    INBOX_EXCHANGE.into(),
                    ExchangeKind::Direct,
                    durable,
                    FieldTable::default(),
                )
                .await?;

            // Exclusive: the queue lives and dies with this connection, so a
            // dead node leaves nothing behind and a new connection starts
            // with an empty queue whose user bindings are then rebuilt.
            let exclusive = QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(queue.as_str().into(), exclusive, FieldTable::default())
                .await?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    DELIVER_EXCHANGE.into(),
                    DELIVER_ALL_KEY.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let _ = channel.close(200, "topology declared".into()).await;
            Ok(())
        })
    })
}

/// A client error in the broker's terms.
fn broker_error(error: ClientError) -> BrokerError {
    match error {
        ClientError::Nacked {
            message_id,
            attempts,
        } => BrokerError::Refused {
            message_id,
            attempts,
        },
        ClientError::Timeout { message_id } => BrokerError::Timeout { message_id },
        ClientError::Closed => BrokerError::ShuttingDown,
        ClientError::Unroutable {
            exchange,
            routing_key,
            ..
        } => BrokerError::Unavailable(format!(
            "no queue bound to {exchange} for routing key {routing_key}"
        )),
        other => BrokerError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    async fn start(&self, node: Arc<dyn NodeSink>) -> Result<(), BrokerError> {
        if self.inner.get().is_some() {
            return Err(BrokerError::Setup("rabbitmq broker started twice".into()));
        }
        let queue = node_queue(&self.node_id);

        // Connect and declare before anything listens; a node that cannot
        // reach its broker at start refuses to start.
        let settings = ConnectorSettings {
            name: format!("switchboard {}", self.node_id),
            ..ConnectorSettings::default()
        };
        let connector = Connector::start(&self.url, settings, Some(setup_hook(queue.clone())))
            .map_err(|err| BrokerError::Setup(err.to_string()))?;
        let start_timeout = self.publish_timeout.max(MIN_START_TIMEOUT);
        if let Err(err) = connector.wait_ready(start_timeout).await {
            connector.close().await;
            return Err(BrokerError::Setup(format!(
                "{}: {err}",
                redact_url(&self.url)
            )));
        }

        let publisher = Publisher::new(connector.clone(), self.max_in_flight, self.publish_timeout);
        let mut inbox_links = Vec::new();
        for i in 0..self.reliable.consumer_connections {
            let settings = ConnectorSettings {
                name: format!("switchboard {} inbox {i}", self.node_id),
                ..ConnectorSettings::default()
            };
            let link = Connector::start(&self.url, settings, None)
                .map_err(|err| BrokerError::Setup(err.to_string()))?;
            inbox_links.push(link);
        }
        let inner = Arc::new(Inner {
            node_id: self.node_id.clone(),
            node_queue: queue.clone(),
            max_retries: self.max_retries,
            connector: connector.clone(),
            inbox_links,
            publisher,
            metrics: self.metrics.clone(),
            node,
            presence: Presence::default(),
            answers: presence_query::Answers::default(),
            inbox: inbox::Inboxes::new(&self.reliable, self.publish_timeout),
            order: Arc::default(),
            stop: CancellationToken::new(),
            release: CancellationToken::new(),
            handlers: TaskTracker::new(),
        });
        if self.inner.set(inner.clone()).is_err() {
            return Err(BrokerError::Setup("rabbitmq broker started twice".into()));
        }

        // Service events: each delivery becomes a tracked task; the prefetch
        // bounds how many run at once.
        let events = ConsumerSpec {
            queue: INBOUND_QUEUE.to_owned(),
            prefetch: self.prefetch,
            prepare: None,
        };
        let on_event = {
            let inner = inner.clone();
            move |delivery: lapin::message::Delivery| {
                // Taken here, in arrival order, before the event's task runs.
                let mut turn = inner.order.turn(order::key_of(&delivery.data));
                let task = events::handle(inner.clone(), delivery);
                inner.handlers.spawn(async move {
                    turn.ready().await;
                    task.await;
                    drop(turn);
                });
                std::future::ready(())
            }
        };
        self.tasks.spawn(run_consumer(
            connector.clone(),
            events,
            inner.stop.clone().cancelled_owned(),
            inner.release.clone().cancelled_owned(),
            on_event,
        ));

        // Deliveries for this node's sessions, handed on in order.
        let deliveries = ConsumerSpec {
            queue,
            prefetch: NODE_QUEUE_PREFETCH,
            prepare: None,
        };
        let on_delivery = {
            let inner = inner.clone();
            move |delivery| events::deliver_local(inner.clone(), delivery)
        };
        self.tasks.spawn(run_consumer(
            connector,
            deliveries,
            inner.stop.clone().cancelled_owned(),
            std::future::ready(()),
            on_delivery,
        ));

        self.tasks.spawn(presence::reconcile(inner.clone()));
        tracing::info!(
            target: "switchboard::amqp",
            node_id = %self.node_id, prefetch = self.prefetch, "rabbitmq broker started"
        );
        Ok(())
    }

    async fn publish_event(&self, event: &Envelope) -> Result<(), BrokerError> {
        let body = event.to_json();
        let message = Outgoing {
            exchange: INBOUND_EXCHANGE,
            routing_key: event.business(),
            body: body.as_bytes(),
            properties: topology::persistent_json(event.id()),
            unroutable: IfUnroutable::Retry,
        };
        self.publish(&message).await.map(|_| ())
    }

    async fn publish_outbound(&self, message: &Envelope) -> Result<(), BrokerError> {
        let body = message.to_json();
        let outgoing = Outgoing {
            exchange: OUTBOUND_EXCHANGE,
            routing_key: message.business(),
            body: body.as_bytes(),
            properties: topology::persistent_json(message.id()),
            unroutable: IfUnroutable::Retry,
        };
        self.publish(&outgoing).await.map(|_| ())
    }

    async fn deliver(&self, delivery: Delivery) -> Result<(), BrokerError> {
        let envelope = &delivery.envelope;
        let key = match (envelope.effective_send_type(), &envelope.to_unique_id) {
            (SendType::Unicast, Some(user)) => user_routing_key(user),
            _ => DELIVER_ALL_KEY.to_owned(),
        };
        let properties = BasicProperties::default()
            .with_content_type(CONTENT_TYPE_JSON.into())
            .with_delivery_mode(TRANSIENT)
            .with_message_id(topology::short(envelope.id()));
        let message = Outgoing {
            exchange: DELIVER_EXCHANGE,
            routing_key: &key,
            body: delivery.text.as_bytes(),
            properties,
            unroutable: IfUnroutable::Report,
        };
        if self.publish(&message).await? == Confirmed::Returned {
            // No node queue is bound for the key: for a UNICAST, the user has
            // no session anywhere. Live deliveries are not kept.
            tracing::debug!(
                target: "switchboard::amqp",
                message_id = envelope.id(), routing_key = %key,
                "delivery routed to no node"
            );
        }
        Ok(())
    }

    async fn deliver_reliable(&self, delivery: Delivery) -> Result<(), BrokerError> {
        let inner = self.running()?;
        inner.inbox.keep(inner, &delivery).await
    }

    async fn receipt(&self, unique_id: &str, message_id: &str) {
        if let Some(inner) = self.inner.get() {
            inner.inbox.receipt(inner, unique_id, message_id).await;
        }
    }

    fn user_presence_changed(&self, unique_id: &str) {
        if let Some(inner) = self.inner.get() {
            inner.presence.mark(unique_id);
        }
    }

    async fn wait_user_routed(&self, unique_id: &str, timeout: Duration) {
        if let Some(inner) = self.inner.get() {
            inner
                .presence
                .wait_routed(&inner.connector, unique_id, timeout)
                .await;
        }
    }

    async fn claim_token(&self, token_id: &str, expires_at: u64) -> Result<bool, BrokerError> {
        let inner = self.running()?;
        tokens::claim(&inner.connector, token_id, expires_at, self.publish_timeout).await
    }

    /// Asks the nodes that hold `unique_id` for their sessions, waiting at
    /// most [`presence_query::SETUP_TIMEOUT`] plus
    /// [`presence_query::ANSWER_WINDOW`]; a user no node holds is answered
    /// after one round trip. See [`presence_query`].
    async fn presence(
        &self,
        unique_id: &str,
        local: crate::presence::Presence,
    ) -> Result<crate::presence::Presence, BrokerError> {
        let inner = self.running()?;
        presence_query::ask(inner, unique_id, local).await
    }

    fn is_ready(&self) -> bool {
        self.inner
            .get()
            .is_some_and(|inner| !inner.stop.is_cancelled() && inner.connector.is_ready())
    }

    async fn shutdown(&self) {
        let Some(inner) = self.inner.get() else {
            return;
        };

        // Stop taking events, let the ones in flight finish (their acks need
        // the channel), then close: whatever is still unacknowledged returns
        // to the queue for another node.
        inner.stop.cancel();
        inner.handlers.close();
        if tokio::time::timeout(self.grace, inner.handlers.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                target: "switchboard::amqp",
                node_id = %inner.node_id, in_flight = inner.handlers.len(),
                "events still in flight at shutdown; they return to the queue"
            );
        }
        inner.release.cancel();

        // Inbox consumers close their channels: unacknowledged pushes go
        // back to their inboxes for the user's next node.
        inner.inbox.shutdown(Duration::from_secs(2)).await;
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
        for link in &inner.inbox_links {
            link.close().await;
        }
        inner.connector.close().await;
        tracing::info!(target: "switchboard::amqp", node_id = %inner.node_id, "rabbitmq broker closed");
    }
}
