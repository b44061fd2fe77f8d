//! Presence across nodes: asking the nodes that hold a user for their
//! sessions of that user.
//!
//! # The question
//!
//! The asking node opens a short-lived channel in confirm mode, consumes
//! RabbitMQ's direct reply-to pseudo-queue on it (no acks, as direct
//! reply-to demands, and *before* publishing, so no answer can come before
//! the consumer exists), and publishes one small transient message to
//! `switchboard.deliver` with routing key `user.<uniqueId>`, `mandatory`,
//! header `x-switchboard-kind: presence-query`, `reply_to` set to the
//! pseudo-queue and a fresh `correlation_id`. The routing key is the one a
//! `UNICAST` uses, so only the queues of nodes that hold a session of the
//! user receive the question.
//!
//! - **Returned** (no queue bound for the key): no node holds the user, the
//!   asking node included. The answer is the asking node's own count, at
//!   once: one round trip, no waiting.
//! - **Routed**: each node that received it answers from
//!   [`NodeSink::local_presence`](crate::broker::NodeSink::local_presence)
//!   straight to the asker's channel. The asker adds every answer to its
//!   own count until [`ANSWER_WINDOW`] has passed since the confirm, then
//!   answers. The number of nodes holding the user is not known in
//!   advance, so the window is always waited out in full.
//!
//! The asking node receives its own question too when it holds the user
//! (its queue is bound for the key). It never answers it: its own sessions
//! are already counted, and counting them again would double them. Answers
//! are also tagged with the answering node and taken once per node.
//!
//! # Bounds and cost
//!
//! The whole question takes at most [`SETUP_TIMEOUT`] to get a channel and
//! a confirm, plus [`ANSWER_WINDOW`]; anything slower fails with a
//! [`BrokerError`], and the endpoint answers 503. A lost channel during
//! the window fails the same way rather than return a count known to be
//! partial. The question expires in queues after the window, so a node
//! that is slow to read its queue does not answer questions nobody waits
//! for; an answer that comes after the window is dropped by RabbitMQ (its
//! channel is closed) and the node that sent it is not counted.
//!
//! Cost per question: one channel opened and closed on the asking node,
//! one publish with a confirm, and one small message per node holding the
//! user each way. Nothing is declared and nothing is left behind. The
//! endpoint is for occasional operational use; it is not built for a high
//! request rate.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Consumer};
use switchboard_client::{Link, topology};
use switchboard_protocol::amqp::{
    CONTENT_TYPE_JSON, DELIVER_EXCHANGE, DIRECT_REPLY_TO, HEADER_KIND, HEADER_NODE,
    KIND_PRESENCE_ANSWER, KIND_PRESENCE_QUERY, TRANSIENT, user_routing_key,
};
use tokio::time::Instant;

use super::Inner;
use crate::broker::BrokerError;
use crate::presence::Presence;

/// How long the asking node collects answers after RabbitMQ confirmed the
/// question was routed. Nodes answer within a few milliseconds on a
/// healthy broker; the window leaves room for a busy node or broker.
pub const ANSWER_WINDOW: Duration = Duration::from_millis(250);

/// Longest wait for a channel, its set-up and the question's confirm.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The body of a question.
#[derive(serde::Serialize, serde::Deserialize)]
struct Question {
    #[serde(rename = "uniqueId")]
    unique_id: String,
}

/// Whether a message from the node queue is a presence question.
pub(super) fn is_question(properties: &BasicProperties) -> bool {
    topology::header_str(properties, HEADER_KIND).as_deref() == Some(KIND_PRESENCE_QUERY)
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("presence question: {what}: {error}"))
}

/// The presence of `unique_id` on every node: `local` plus the answers of
/// the other nodes that hold the user. See the module docs.
pub(super) async fn ask(
    inner: &Inner,
    unique_id: &str,
    local: Presence,
) -> Result<Presence, BrokerError> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let link = inner
        .connector
        .wait_link(deadline)
        .await
        .map_err(|err| unavailable("no connection", format!("{err:?}")))?;
    let (channel, replies) = tokio::time::timeout_at(deadline, open(&link))
        .await
        .map_err(|_| unavailable("channel", "timed out"))?
        .map_err(|err| unavailable("channel", err))?;

    let result = question(inner, &channel, replies, unique_id, local, deadline).await;

    // Closing drops any answer still on its way.
    let _ = channel.close(200, "presence answered".into()).await;
    result
}

/// A channel in confirm mode that consumes the direct reply-to
/// pseudo-queue.
async fn open(link: &Link) -> Result<(Channel, Consumer), lapin::Error> {
    let channel = link.channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let replies = channel
        .basic_consume(
            DIRECT_REPLY_TO.into(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await?;
    Ok((channel, replies))
}

/// Publishes the question on `channel` and sums the answers.
async fn question(
    inner: &Inner,
    channel: &Channel,
    mut replies: Consumer,
    unique_id: &str,
    local: Presence,
    deadline: Instant,
) -> Result<Presence, BrokerError> {
    let correlation_id = uuid::Uuid::new_v4().simple().to_string();
    let body = serde_json::to_vec(&Question {
        unique_id: unique_id.to_owned(),
    })
    .unwrap_or_default();
    let mut headers = FieldTable::default();
    headers.insert(
        HEADER_KIND.into(),
        topology::long_string(KIND_PRESENCE_QUERY),
    );
    headers.insert(HEADER_NODE.into(), topology::long_string(&inner.node_id));
    let properties = BasicProperties::default()
        .with_content_type(CONTENT_TYPE_JSON.into())
        .with_delivery_mode(TRANSIENT)
        .with_reply_to(DIRECT_REPLY_TO.into())
        .with_correlation_id(topology::short(&correlation_id))
        .with_expiration(topology::short(&ANSWER_WINDOW.as_millis().to_string()))
        .with_headers(headers);
    let mandatory = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };

    // The question's confirm tells whether any queue took it.
    let key = user_routing_key(unique_id);
    let publish = async {
        channel
            .basic_publish(
                DELIVER_EXCHANGE.into(),
                topology::short(&key),
                mandatory,
                &body,
                properties,
            )
            .await?
            .await
    };
    let confirm = tokio::time::timeout_at(deadline, publish)
        .await
        .map_err(|_| unavailable("confirm", "timed out"))?
        .map_err(|err| unavailable("publish", err))?;
    match confirm {
        Confirmation::Ack(Some(_)) => {
            tracing::debug!(
                target: "switchboard::amqp",
                unique_id, correlation_id, "presence question routed to no node"
            );
            return Ok(local);
        }
        Confirmation::Ack(None) => {}
        Confirmation::Nack(_) | Confirmation::NotRequested => {
            return Err(unavailable("publish", "not confirmed"));
        }
    }

    // Sum the answers until the window ends; one per node at most, never
    // this node's own.
    let mut total = local;
    let mut answered: HashSet<String> = HashSet::new();
    let window_end = Instant::now() + ANSWER_WINDOW;
    loop {
        let next = tokio::select! {
            () = tokio::time::sleep_until(window_end) => break,
            next = replies.next() => next,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(err)) => return Err(unavailable("answers", err)),
            None => return Err(unavailable("answers", "channel closed")),
        };
        let properties = &delivery.properties;
        let matches = properties
            .correlation_id()
            .as_ref()
            .is_some_and(|id| id.as_str() == correlation_id);
        let Some(node) = topology::header_str(properties, HEADER_NODE) else {
            continue;
        };
        if !matches || node == inner.node_id || !answered.insert(node.clone()) {
            continue;
        }
        match serde_json::from_slice::<Presence>(&delivery.data) {
            Ok(answer) => total.merge(&answer),
            Err(error) => tracing::warn!(
                target: "switchboard::amqp",
                node_id = %node, correlation_id, error = %error,
                "ignored a presence answer that does not parse"
            ),
        }
    }
    tracing::debug!(
        target: "switchboard::amqp",
        unique_id, correlation_id, nodes = answered.len(), "presence question answered"
    );
    Ok(total)
}

/// The channel answers go out on: plain (no confirms, an answer is worth
/// nothing once the window is over), opened on first use and reopened on a
/// new connection.
#[derive(Default)]
pub(super) struct Answers {
    channel: switchboard_client::connector::ChannelSlot,
}

/// Answers a presence question taken from this node's queue with this
/// node's sessions of the user. Questions this node asked itself are left
/// unanswered (see the module docs). Best effort: a failure only means the
/// asker counts without this node.
pub(super) async fn answer(inner: &Inner, delivery: &AmqpDelivery) {
    let properties = &delivery.properties;
    let asker = topology::header_str(properties, HEADER_NODE);
    if asker.as_deref() == Some(inner.node_id.as_str()) {
        return;
    }
    let (Some(reply_to), Some(correlation_id)) = (
        properties.reply_to().as_ref(),
        properties.correlation_id().as_ref(),
    ) else {
        return;
    };
    let Ok(question) = serde_json::from_slice::<Question>(&delivery.data) else {
        tracing::debug!(
            target: "switchboard::amqp",
            node_id = %inner.node_id, "dropped a presence question that does not parse"
        );
        return;
    };
    let presence = inner.node.local_presence(&question.unique_id);
    let body = serde_json::to_vec(&presence).unwrap_or_default();

    let mut headers = FieldTable::default();
    headers.insert(
        HEADER_KIND.into(),
        topology::long_string(KIND_PRESENCE_ANSWER),
    );
    headers.insert(HEADER_NODE.into(), topology::long_string(&inner.node_id));
    let answer = BasicProperties::default()
        .with_content_type(CONTENT_TYPE_JSON.into())
        .with_delivery_mode(TRANSIENT)
        .with_correlation_id(correlation_id.clone())
        .with_headers(headers);
    let Some(link) = inner.connector.current() else {
        return;
    };
    let sent = async {
        let channel = inner.answers.channel.get(&link, false).await?;
        // Through the default exchange, by the reply-to name RabbitMQ gave
        // the asker's channel; not mandatory: an asker that is gone is no
        // one's concern.
        channel
            .basic_publish(
                "".into(),
                reply_to.clone(),
                BasicPublishOptions::default(),
                &body,
                answer,
            )
            .await
            .map(|_| ())
    };
    if let Err(error) = sent.await {
        tracing::debug!(
            target: "switchboard::amqp",
            unique_id = %question.unique_id, correlation_id = correlation_id.as_str(),
            error = %error, "presence answer not sent"
        );
    }
}
