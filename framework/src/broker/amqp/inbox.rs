//! Reliable pushes: one durable inbox queue per user, consumed by the node
//! that holds a session of the user, acknowledged by the client's receipt.
//!
//! # Keeping
//!
//! [`Inboxes::keep`] publishes a push persistent, mandatory and confirmed to
//! the durable direct exchange `switchboard.inbox` with the user's
//! `uniqueId` as routing key. The queue `switchboard.inbox.<uniqueId>` is
//! declared first (idempotently; a bounded cache remembers recent
//! declarations), with these arguments from `reliable.*`:
//!
//! - `x-message-ttl` = `ttl_secs`: a push older than that is dropped;
//! - `x-expires` = twice `ttl_secs`: an inbox nobody consumed or declared for
//!   that long is deleted. A declaration is cached for at most `ttl_secs`,
//!   so a queue always outlives the TTL of its newest push;
//! - `x-max-length` = `max_pending_per_user` with `x-overflow` =
//!   `reject-publish`: a push to a full inbox is nacked, and the event it
//!   came from is dead-lettered with reason `inbox full`;
//! - `x-single-active-consumer`: of all nodes consuming an inbox, one gets
//!   its messages, in order; the others wait as standbys.
//!
//! A returned publish means the queue vanished (expired) since it was
//! cached: it is declared again and the push published once more.
//!
//! # Consuming
//!
//! The presence reconciler starts a consumer for a user right after it
//! bound the user's routing key to this node's queue, and stops it when the
//! user's last local session is gone. Each consumer has its own channel
//! with a prefetch of `max_in_flight_per_user`, so at most that many pushes
//! per user are out unacknowledged. Each push is remembered by `messageId`
//! and published on the live path (`switchboard.deliver`, key
//! `user.<uniqueId>`), which reaches every session of the user on every
//! node, this one included.
//!
//! A receipt (`ACK` with the push's `messageId`) acks the inbox message. A
//! receipt taken by a node that does not hold the message travels as an
//! `ACK` envelope on the live path to every node of the user, and the one
//! that holds it acks.
//!
//! Stopping closes the consumer's channel without cancelling first: the
//! queue then drops the consumer and requeues what it held in one step, so
//! the next consumer (a standby on another node, or the next session's)
//! starts with the oldest unacknowledged push. Requeued pushes keep their
//! place in the queue and their `messageId`; clients dedupe.
//!
//! # Cost
//!
//! One durable queue and one binding per user with pending pushes (or online
//! in the last TTL); one channel per online user on the node consuming it.
//! The channels live on the node's inbox connections
//! (`reliable.consumer_connections`, users spread by a hash of their id),
//! not on the main one: lapin's I/O thread looks at every channel of its
//! connection for each frame it writes, so a thousand consumer channels on
//! the connection that carries events and deliveries made that thread the
//! node's largest CPU cost. RabbitMQ's default `channel_max` (2047 per
//! connection) caps the online users one node serves reliably at about two
//! thousand per inbox connection; beyond it, consumers fail to open and are
//! retried, and those users' pushes wait in their inboxes. Sharing channels
//! would lift the cap but loses the atomic hand-back described above.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::Acker;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use switchboard_client::{Confirmed, IfUnroutable, Link, Outgoing, topology};
use switchboard_protocol::amqp::{
    CONTENT_TYPE_JSON, DELIVER_EXCHANGE, INBOX_EXCHANGE, TRANSIENT, inbox_queue, user_routing_key,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Inner, broker_error};
use crate::broker::{BrokerError, Delivery};
use crate::config::ReliableConfig;
use crate::envelope::{Envelope, MessageType, SendType};

/// Most inbox declarations remembered; the cache is emptied when full.
const DECLARED_CACHE: usize = 10_000;

/// Pause before a consumer that could not open tries again.
const REOPEN_PAUSE: Duration = Duration::from_millis(200);

/// The unacknowledged pushes of one consumer, by `messageId`. A push
/// published twice (a retried publish) may be held twice.
type Held = Arc<Mutex<HashMap<String, Vec<Acker>>>>;

/// One running consumer.
struct UserConsumer {
    stop: CancellationToken,
    held: Held,
}

/// Every user inbox this node publishes to or consumes. See the module docs.
pub(super) struct Inboxes {
    ttl: Duration,
    max_pending: u32,
    window: u16,
    publish_timeout: Duration,
    declared: Mutex<HashMap<String, Instant>>,
    consumers: Mutex<HashMap<String, UserConsumer>>,
    tasks: TaskTracker,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is one map operation; poison is harmless.
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Inboxes {
    pub(super) fn new(config: &ReliableConfig, publish_timeout: Duration) -> Self {
        Inboxes {
            ttl: Duration::from_secs(config.ttl_secs),
            max_pending: config.max_pending_per_user,
            window: config.max_in_flight_per_user,
            publish_timeout,
            declared: Mutex::new(HashMap::new()),
            consumers: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
        }
    }

    /// The inbox queue's arguments.
    fn arguments(&self) -> FieldTable {
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
        args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(ttl_ms.saturating_mul(2)),
        );
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(i64::from(self.max_pending)),
        );
        args.insert("x-overflow".into(), topology::long_string("reject-publish"));
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        args
    }

    /// Declares `unique_id`'s inbox and binds it, on `channel`.
    async fn declare_on(&self, channel: &Channel, unique_id: &str) -> Result<(), lapin::Error> {
        let queue = inbox_queue(unique_id);
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.as_str().into(), durable, self.arguments())
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                INBOX_EXCHANGE.into(),
                topology::short(unique_id),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Declares `unique_id`'s inbox unless that was done recently.
    async fn ensure_declared(&self, inner: &Inner, unique_id: &str) -> Result<(), BrokerError> {
        let fresh = lock(&self.declared)
            .get(unique_id)
            .is_some_and(|at| at.elapsed() < self.ttl);
        if fresh {
            return Ok(());
        }

        // A throwaway channel: a refused declaration (other arguments) kills
        // its channel, and must not kill a shared one.
        let deadline = Instant::now() + self.publish_timeout;
        let link =
            inner.connector.wait_link(deadline).await.map_err(|err| {
                BrokerError::Unavailable(format!("no broker connection: {err:?}"))
            })?;
        let declared = async {
            let channel = link.channel().await?;
            self.declare_on(&channel, unique_id).await?;
            let _ = channel.close(200, "inbox declared".into()).await;
            Ok::<(), lapin::Error>(())
        };
        match tokio::time::timeout(self.publish_timeout, declared).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(
                    target: "switchboard::amqp",
                    unique_id, error = %error,
                    "cannot declare inbox; were reliable.* settings changed?"
                );
                return Err(BrokerError::Unavailable(format!(
                    "cannot declare the inbox of {unique_id}: {error}"
                )));
            }
            Err(_) => {
                return Err(BrokerError::Unavailable(format!(
                    "declaring the inbox of {unique_id} timed out"
                )));
            }
        }

        let mut declared = lock(&self.declared);
        if declared.len() >= DECLARED_CACHE {
            declared.clear();
        }
        declared.insert(unique_id.to_owned(), Instant::now());
        Ok(())
    }

    /// Keeps a reliable push in its user's inbox; resolves once RabbitMQ
    /// confirmed it is stored.
    pub(super) async fn keep(&self, inner: &Inner, delivery: &Delivery) -> Result<(), BrokerError> {
        let envelope = &delivery.envelope;
        let Some(unique_id) = envelope.to_unique_id.as_deref() else {
            return Err(BrokerError::Unavailable(
                "a reliable push needs toUniqueId".into(),
            ));
        };
        let message = Outgoing {
            exchange: INBOX_EXCHANGE,
            routing_key: unique_id,
            body: delivery.text.as_bytes(),
            properties: topology::persistent_json(envelope.id()),
            unroutable: IfUnroutable::Report,
        };

        // Twice at most: the second time after declaring a queue that
        // expired since it was cached.
        for _ in 0..2 {
            self.ensure_declared(inner, unique_id).await?;
            match inner.publish(&message).await {
                Ok(Confirmed::Accepted) => return Ok(()),
                Ok(Confirmed::Returned) => {
                    lock(&self.declared).remove(unique_id);
                }
                // `reject-publish`: the inbox is at `x-max-length`.
                Err(switchboard_client::ClientError::Nacked { .. }) => {
                    return Err(BrokerError::InboxFull {
                        unique_id: unique_id.to_owned(),
                    });
                }
                Err(error) => return Err(broker_error(error)),
            }
        }
        Err(BrokerError::Unavailable(format!(
            "the inbox of {unique_id} takes no messages"
        )))
    }

    /// Starts consuming `unique_id`'s inbox unless this node already does.
    pub(super) fn start(&self, inner: &Arc<Inner>, unique_id: &str) {
        let mut consumers = lock(&self.consumers);
        if consumers.contains_key(unique_id) || inner.stop.is_cancelled() {
            return;
        }
        let consumer = UserConsumer {
            stop: inner.stop.child_token(),
            held: Held::default(),
        };
        self.tasks.spawn(consume(
            inner.clone(),
            unique_id.to_owned(),
            consumer.stop.clone(),
            consumer.held.clone(),
        ));
        consumers.insert(unique_id.to_owned(), consumer);
    }

    /// Stops consuming `unique_id`'s inbox: what this node held goes back to
    /// the queue.
    pub(super) fn stop(&self, unique_id: &str) {
        if let Some(consumer) = lock(&self.consumers).remove(unique_id) {
            consumer.stop.cancel();
        }
    }

    /// Acks the push `message_id` of `unique_id` if this node holds it;
    /// whether it did.
    pub(super) async fn settle_here(&self, unique_id: &str, message_id: &str) -> bool {
        let held = lock(&self.consumers)
            .get(unique_id)
            .map(|consumer| consumer.held.clone());
        let Some(held) = held else {
            return false;
        };
        let Some(ackers) = lock(&held).remove(message_id) else {
            return false;
        };
        for acker in ackers {
            // `Ok(false)`: the channel is gone and the push returns to the
            // queue; it will come again and be acknowledged again.
            if !matches!(acker.ack(BasicAckOptions::default()).await, Ok(true)) {
                tracing::debug!(
                    target: "switchboard::amqp",
                    unique_id, message_id, "inbox ack not sent; channel closed"
                );
            }
        }
        tracing::trace!(target: "switchboard::amqp", unique_id, message_id, "push settled");
        true
    }

    /// Settles the push here, or tells the other nodes of the user.
    pub(super) async fn receipt(&self, inner: &Inner, unique_id: &str, message_id: &str) {
        if self.settle_here(unique_id, message_id).await {
            return;
        }
        let mut receipt = Envelope::new(MessageType::Ack);
        receipt.correlation_id = Some(message_id.to_owned());
        receipt.send_type = Some(SendType::Unicast);
        receipt.to_unique_id = Some(unique_id.to_owned());
        receipt.stamp();
        let key = user_routing_key(unique_id);
        let body = receipt.to_json();
        let message = Outgoing {
            exchange: DELIVER_EXCHANGE,
            routing_key: &key,
            body: body.as_bytes(),
            properties: live_properties(receipt.id()),
            unroutable: IfUnroutable::Drop,
        };
        if let Err(error) = inner.publish(&message).await {
            // Lost receipt: the push stays pending and comes again.
            tracing::debug!(
                target: "switchboard::amqp",
                unique_id, message_id, error = %error, "receipt not forwarded"
            );
        }
    }

    /// Waits, at most `grace`, for the consumers to hand their pushes back.
    pub(super) async fn shutdown(&self, grace: Duration) {
        for (_, consumer) in lock(&self.consumers).drain() {
            consumer.stop.cancel();
        }
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
    }
}

/// Properties of a message on the live path.
fn live_properties(message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(CONTENT_TYPE_JSON.into())
        .with_delivery_mode(TRANSIENT)
        .with_message_id(topology::short(message_id))
}

/// Opens a channel consuming `unique_id`'s inbox.
async fn open(
    inner: &Inner,
    link: &Link,
    unique_id: &str,
) -> Result<(Channel, lapin::Consumer), lapin::Error> {
    let channel = link.channel().await?;
    channel
        .basic_qos(inner.inbox.window, BasicQosOptions { global: false })
        .await?;
    inner.inbox.declare_on(&channel, unique_id).await?;
    let consumer = channel
        .basic_consume(
            inbox_queue(unique_id).as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Consumes one user's inbox until `stop`, across reconnects.
async fn consume(inner: Arc<Inner>, unique_id: String, stop: CancellationToken, held: Held) {
    loop {
        let link = match inner.inbox_link(&unique_id).current() {
            Some(link) if link.is_alive() => link,
            _ => {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(REOPEN_PAUSE) => continue,
                }
            }
        };
        let (channel, mut consumer) = match open(&inner, &link, &unique_id).await {
            Ok(opened) => opened,
            Err(error) => {
                tracing::debug!(
                    target: "switchboard::amqp",
                    unique_id, error = %error, "inbox consumer could not start; retrying"
                );
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(REOPEN_PAUSE) => continue,
                }
            }
        };
        // Tags of an earlier channel mean nothing on this one.
        lock(&held).clear();
        tracing::debug!(target: "switchboard::amqp", unique_id, "inbox consumer started");

        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    // Close without a cancel first; see the module docs.
                    let _ = channel.close(200, "user left".into()).await;
                    tracing::debug!(
                        target: "switchboard::amqp", unique_id, "inbox consumer stopped"
                    );
                    return;
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => forward(&inner, &unique_id, &held, delivery).await,
                    Some(Err(error)) => tracing::debug!(
                        target: "switchboard::amqp",
                        unique_id, error = %error, "inbox consumer failed"
                    ),
                    None => break,
                },
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(REOPEN_PAUSE) => {}
        }
    }
}

/// Remembers one inbox message and publishes it to the user's sessions on
/// every node.
async fn forward(inner: &Inner, unique_id: &str, held: &Held, delivery: AmqpDelivery) {
    // Only nodes publish to inboxes; a body that is not an envelope is
    // dropped (acked) rather than redelivered forever.
    let Ok(envelope) = std::str::from_utf8(&delivery.data).map(Envelope::parse) else {
        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        return;
    };
    let Ok(envelope) = envelope else {
        tracing::warn!(target: "switchboard::amqp", unique_id, "dropped an inbox message that is not an envelope");
        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        return;
    };
    let message_id = envelope.id().to_owned();
    if delivery.redelivered {
        inner.redelivered();
    }

    // Remember before publishing, so a receipt cannot outrun the entry. A
    // second copy of a push already out (a retried publish) is held to be
    // acked with it, and not sent again.
    let again = {
        let mut held = lock(held);
        let ackers = held.entry(message_id.clone()).or_default();
        ackers.push(delivery.acker.clone());
        ackers.len() > 1
    };
    if again {
        return;
    }

    let key = user_routing_key(unique_id);
    let message = Outgoing {
        exchange: DELIVER_EXCHANGE,
        routing_key: &key,
        body: &delivery.data,
        properties: live_properties(&message_id),
        unroutable: IfUnroutable::Report,
    };
    match inner.publish(&message).await {
        Ok(Confirmed::Accepted) => tracing::trace!(
            target: "switchboard::amqp",
            unique_id, message_id, redelivered = delivery.redelivered, "push sent"
        ),
        // No node holds the user any more; the push stays held and returns
        // to the inbox when this consumer stops.
        Ok(Confirmed::Returned) => tracing::debug!(
            target: "switchboard::amqp",
            unique_id, message_id, "push routed to no node"
        ),
        // The push stays unacknowledged; it comes again after a reconnect
        // or when the user's sessions here are gone.
        Err(error) => tracing::warn!(
            target: "switchboard::amqp",
            unique_id, message_id, error = %error, "push not sent; it stays pending"
        ),
    }
}
