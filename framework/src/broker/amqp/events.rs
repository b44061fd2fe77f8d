//! What a node does with each message it consumes.
//!
//! # Service events (`switchboard.inbound`)
//!
//! 1. The body is parsed; the AMQP `message_id`, where set, becomes the
//!    envelope's `messageId` (an event with neither gets a fresh one, kept
//!    across its retries).
//! 2. [`NodeSink::process_event`] runs the handler; it returns only once the
//!    deliveries the handler made are confirmed by RabbitMQ.
//! 3. By outcome:
//!    - `Ok`: ack.
//!    - rejected (not an envelope, unknown business type, the handler
//!      refused): publish to `switchboard.dead` with the reason, confirmed,
//!      *then* ack;
//!    - failed: wait a backoff, republish to the inbound queue with the
//!      attempts header raised by one, confirmed, *then* ack; once
//!      `broker.max_retries` retries have failed, dead-letter instead.
//!
//! Every ack follows a confirmed publish of whatever replaces the message,
//! so a crash at any point leaves the event in a queue (perhaps twice, with
//! the same `messageId`), never nowhere. If the replacement cannot be
//! published, the event is requeued as it is.
//!
//! # Deliveries (the node's own queue)
//!
//! Each is handed to the local sessions without waiting, then acked.
//! Presence questions from other nodes arrive on the same queue, marked by
//! a header, and are answered instead ([`presence_query`]).

use std::sync::Arc;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use switchboard_client::{IfUnroutable, Outgoing, topology};
use switchboard_protocol::amqp::{
    DEAD_EXCHANGE, HEADER_ATTEMPTS, HEADER_NODE, HEADER_REASON, HEADER_REASON_CODE,
    HEADER_ROUTING_KEY, INBOUND_QUEUE, PERSISTENT,
};

use super::{Inner, presence_query};
use crate::broker::{Delivery, EventError};
use crate::envelope::{Envelope, ErrorCode, MessageType, Refusal};

/// First pause before a failed event is offered again; doubles per attempt.
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Longest pause before a failed event is offered again.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// What becomes of one event.
enum Outcome {
    Done,
    Dead(Refusal),
    Retry { attempts: u32 },
}

/// Processes one service event and settles it with the broker.
pub(super) async fn handle(inner: Arc<Inner>, delivery: AmqpDelivery) {
    let properties = &delivery.properties;
    let attempts_header = topology::header_u32(properties, HEADER_ATTEMPTS);
    let attempts_before = attempts_header.unwrap_or(0);
    let routing_key = topology::header_str(properties, HEADER_ROUTING_KEY)
        .unwrap_or_else(|| delivery.routing_key.to_string());
    let mut message_id = topology::message_id(properties).map(str::to_owned);
    let mut business_type = String::new();
    // Seen before: flagged by RabbitMQ after a lost channel, or a retry
    // this gateway republished.
    if delivery.redelivered || attempts_header.is_some() {
        inner.redelivered();
    }

    // Parse and process.
    let outcome = match Envelope::parse_bytes(&delivery.data) {
        Err(refusal) => Outcome::Dead(refusal),
        Ok(mut event) => {
            match &message_id {
                Some(id) => event.message_id = Some(id.clone()),
                None => {
                    event.stamp();
                    message_id = event.message_id.clone();
                }
            }
            business_type = event.business().to_owned();
            tracing::trace!(
                target: "switchboard::amqp",
                message_id = event.id(), business_type, attempts = attempts_before,
                redelivered = delivery.redelivered, "event received"
            );
            match inner.node.process_event(event).await {
                Ok(()) => Outcome::Done,
                Err(EventError::Reject(refusal)) => Outcome::Dead(refusal),
                Err(EventError::Retry(why)) if attempts_before >= inner.max_retries => {
                    Outcome::Dead(Refusal::new(
                        ErrorCode::HandlerFailed,
                        format!("failed after {} attempts: {why}", attempts_before + 1),
                    ))
                }
                Err(EventError::Retry(_)) => Outcome::Retry {
                    attempts: attempts_before + 1,
                },
            }
        }
    };
    let message_id = message_id.unwrap_or_default();

    // Settle: replace the message where needed (confirmed), then ack.
    let dead = matches!(outcome, Outcome::Dead(_));
    let replaced = match outcome {
        Outcome::Done => true,
        Outcome::Dead(refusal) => {
            tracing::warn!(
                target: "switchboard::amqp",
                message_id, business_type, routing_key, code = refusal.code.as_str(),
                reason = %refusal.message, "event dead-lettered"
            );
            let headers = [
                (HEADER_REASON, topology::long_string(&refusal.to_string())),
                (
                    HEADER_REASON_CODE,
                    topology::long_string(refusal.code.as_str()),
                ),
                (HEADER_ROUTING_KEY, topology::long_string(&routing_key)),
                (HEADER_NODE, topology::long_string(&inner.node_id)),
            ];
            let properties = with_headers(properties, &message_id, &headers);
            let message = Outgoing {
                exchange: DEAD_EXCHANGE,
                routing_key: &routing_key,
                body: &delivery.data,
                properties,
                unroutable: IfUnroutable::Retry,
            };
            republish(&inner, &message, &message_id).await
        }
        Outcome::Retry { attempts } => {
            // Hold the event for a backoff before offering it again, so a
            // short outage of what the handler needs is not burnt through at
            // once. On shutdown give up waiting: unacked, it returns to the
            // queue when the channel closes.
            let pause = FIRST_RETRY_PAUSE
                .saturating_mul(1 << attempts.min(16))
                .min(MAX_RETRY_PAUSE);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = inner.stop.cancelled() => return,
            }
            tracing::debug!(
                target: "switchboard::amqp",
                message_id, business_type, attempts, "event failed; offering it again"
            );
            let headers = [
                (HEADER_ATTEMPTS, AMQPValue::LongUInt(attempts)),
                (HEADER_ROUTING_KEY, topology::long_string(&routing_key)),
            ];
            let properties = with_headers(properties, &message_id, &headers);
            // Straight to the queue through the default exchange, so that
            // other bindings of the inbound exchange do not see retries.
            let message = Outgoing {
                exchange: "",
                routing_key: INBOUND_QUEUE,
                body: &delivery.data,
                properties,
                unroutable: IfUnroutable::Retry,
            };
            republish(&inner, &message, &message_id).await
        }
    };

    if replaced && dead {
        inner.dead_lettered();
    }
    let settled = if replaced {
        delivery.ack(BasicAckOptions::default()).await
    } else {
        let requeue = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        delivery.nack(requeue).await
    };
    // `Ok(false)`: nothing was sent because the channel is gone; the broker
    // redelivers the event (a duplicate, with the same messageId).
    if !matches!(settled, Ok(true)) {
        tracing::debug!(
            target: "switchboard::amqp",
            message_id, "event settlement not sent; the broker will redeliver it"
        );
    }
}

/// Publishes the message that replaces an event; whether it was confirmed.
async fn republish(inner: &Inner, message: &Outgoing<'_>, message_id: &str) -> bool {
    match inner.publish(message).await {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(
                target: "switchboard::amqp",
                message_id, exchange = message.exchange, error = %error,
                "could not republish event; returning it to the queue"
            );
            false
        }
    }
}

/// The event's properties with `headers` added, persistent, and with the
/// message id the event was processed under.
fn with_headers(
    properties: &BasicProperties,
    message_id: &str,
    headers: &[(&str, AMQPValue)],
) -> BasicProperties {
    let mut table = properties.headers().clone().unwrap_or_default();
    for (name, value) in headers {
        table.insert((*name).into(), value.clone());
    }
    let mut properties = properties
        .clone()
        .with_headers(table)
        .with_delivery_mode(PERSISTENT);
    if !message_id.is_empty() {
        properties = properties.with_message_id(topology::short(message_id));
    }
    if properties.timestamp().is_none() {
        properties = properties.with_timestamp(topology::now_secs());
    }
    properties
}

/// Hands one delivery from the node's queue to the local sessions, then
/// acks it.
pub(super) async fn deliver_local(inner: Arc<Inner>, delivery: AmqpDelivery) {
    // A presence question from another node is answered, not delivered.
    if presence_query::is_question(&delivery.properties) {
        presence_query::answer(&inner, &delivery).await;
        if !matches!(delivery.ack(BasicAckOptions::default()).await, Ok(true)) {
            tracing::debug!(target: "switchboard::amqp", "question ack not sent; channel closed");
        }
        return;
    }

    // Only nodes publish here, so a bad body is a bug or a stranger; it is
    // dropped (acked) rather than redelivered forever.
    match std::str::from_utf8(&delivery.data).map(Envelope::parse) {
        // A receipt forwarded by the node that took it: settle the push if
        // this node holds it; it is never shown to sessions.
        Ok(Ok(envelope)) if envelope.message_type == Some(MessageType::Ack) => {
            if let (Some(user), Some(id)) = (&envelope.to_unique_id, &envelope.correlation_id) {
                inner.inbox.settle_here(user, id).await;
            }
        }
        Ok(Ok(envelope)) => {
            let text = String::from_utf8_lossy(&delivery.data);
            let local = Delivery {
                envelope: Arc::new(envelope),
                text: Arc::from(text.as_ref()),
            };
            let sessions = inner.node.deliver_local(&local);
            tracing::trace!(
                target: "switchboard::amqp",
                message_id = local.envelope.id(), sessions, "delivery handed to sessions"
            );
        }
        _ => tracing::warn!(
            target: "switchboard::amqp",
            node_id = %inner.node_id, "dropped a delivery that is not an envelope"
        ),
    }
    if !matches!(delivery.ack(BasicAckOptions::default()).await, Ok(true)) {
        tracing::debug!(target: "switchboard::amqp", "delivery ack not sent; channel closed");
    }
}
