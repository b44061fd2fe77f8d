//! Single-use tokens across nodes: the first node to claim a token id wins.
//!
//! Each claim declares a tiny durable queue `switchboard.token.<token id>`
//! that holds at most one message (`x-max-length: 1`, `x-overflow:
//! reject-publish`) and publishes one persistent marker into it with a
//! publisher confirm. RabbitMQ serializes the publishes to one queue, so
//! exactly one claim is acked; every later one is nacked, on whichever node
//! it is made. The queue deletes itself [`RECORD_LIFETIME`] after its last
//! use (`x-expires`), so the record of used tokens is bounded by the tokens
//! issued in that window, and a token can never outlive its record because
//! cluster mode caps `auth.token_ttl_secs` at the same lifetime.
//!
//! Cost: one short-lived channel and three round trips to the broker per
//! connect (declare, publish, confirm), plus one fsync that RabbitMQ batches
//! across claims. Connects are far rarer than messages, so this is not on a
//! hot path.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use switchboard_client::Connector;
use tokio::time::Instant;

use crate::broker::BrokerError;

/// How long a claim record lives after its last use. Cluster mode refuses an
/// `auth.token_ttl_secs` longer than this, so no valid token outlives it.
pub const RECORD_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Claims `token_id` for this connect. `Ok(true)`: first use; `Ok(false)`:
/// the token was already used, on any node.
pub(super) async fn claim(
    connector: &Connector,
    token_id: &str,
    timeout: Duration,
) -> Result<bool, BrokerError> {
    let unavailable = |what: &str, err: &dyn std::fmt::Display| {
        BrokerError::Unavailable(format!("token claim: {what}: {err}"))
    };
    let link = connector
        .wait_link(Instant::now() + timeout)
        .await
        .map_err(|err| unavailable("no connection", &format!("{err:?}")))?;
    let claim = async {
        // A channel of its own: a failed declare closes only this channel.
        let channel = link
            .channel()
            .await
            .map_err(|e| unavailable("channel", &e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| unavailable("confirm mode", &e))?;

        let queue = format!("switchboard.token.{token_id}");
        let mut args = FieldTable::default();
        args.insert(ShortString::from("x-max-length"), AMQPValue::LongLongInt(1));
        args.insert(
            ShortString::from("x-overflow"),
            AMQPValue::LongString("reject-publish".into()),
        );
        let lifetime_ms = RECORD_LIFETIME.as_millis() as i64;
        args.insert(
            ShortString::from("x-expires"),
            AMQPValue::LongLongInt(lifetime_ms),
        );
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.as_str().into(), durable, args)
            .await
            .map_err(|e| unavailable("declare", &e))?;

        // The default exchange routes by queue name; mandatory makes a
        // missing queue (deleted between declare and publish) visible.
        let mandatory = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let persistent = BasicProperties::default().with_delivery_mode(2);
        let confirm = channel
            .basic_publish("".into(), queue.as_str().into(), mandatory, b"", persistent)
            .await
            .map_err(|e| unavailable("publish", &e))?
            .await
            .map_err(|e| unavailable("confirm", &e))?;
        let _ = channel.close(200, "claimed".into()).await;

        // A returned marker means the queue vanished: treat as unknown.
        let acked = confirm.is_ack();
        if confirm.take_message().is_some() {
            return Err(unavailable("claim", &"marker returned"));
        }
        Ok(acked)
    };
    tokio::time::timeout(timeout, claim)
        .await
        .map_err(|_| BrokerError::Timeout {
            message_id: format!("token claim {token_id}"),
        })?
}
