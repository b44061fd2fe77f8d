//! Single-use tokens across nodes: the first node to claim a token id wins.
//!
//! Each claim declares a tiny durable queue `switchboard.token.<token id>`
//! that holds at most one message (`x-max-length: 1`, `x-overflow:
//! reject-publish`) and publishes one persistent marker into it with a
//! publisher confirm. RabbitMQ serializes the publishes to one queue, so
//! exactly one claim is acked; every later one is nacked, on whichever node
//! it is made. The queue deletes itself once the token has expired
//! (`x-expires`: the token's remaining lifetime plus [`CLOCK_SLACK`], at most
//! [`RECORD_LIFETIME`], counted from the queue's last use), so the record of
//! used tokens holds only tokens that could still be presented; cluster mode
//! caps `auth.token_ttl_secs` at `RECORD_LIFETIME`. Each record is a durable
//! queue, and RabbitMQ recovers every durable queue when it restarts, so
//! keeping them no longer than needed matters.
//!
//! A second claim computes another `x-expires` (time has passed), and
//! RabbitMQ refuses to redeclare a queue with other arguments
//! (`PRECONDITION_FAILED`): that refusal means the queue exists, so the
//! token was claimed before, and is reported as such.
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

/// Kept past a token's expiry, for nodes whose clocks run behind.
pub const CLOCK_SLACK: Duration = Duration::from_secs(60);

/// How long the record of a token that expires at `expires_at` (Unix
/// seconds) is kept after its last use, seen at `now`.
fn record_lifetime(expires_at: u64, now: u64) -> Duration {
    let remaining = Duration::from_secs(expires_at.saturating_sub(now));
    (remaining + CLOCK_SLACK).min(RECORD_LIFETIME)
}

/// Whether RabbitMQ refused a declaration because the queue exists with
/// other arguments.
fn is_precondition_failed(error: &lapin::Error) -> bool {
    const PRECONDITION_FAILED: u16 = 406;
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if e.get_id() == PRECONDITION_FAILED)
}

/// Claims `token_id`, a token that expires at `expires_at` (Unix seconds),
/// on `connector`'s broker. `Ok(true)`: first use; `Ok(false)`: the token was
/// already used, on any node.
///
/// # Errors
///
/// [`BrokerError::Unavailable`] when the broker cannot answer, and
/// [`BrokerError::Timeout`] after `timeout`; the caller must then refuse the
/// connect, since whether the token was used is unknown.
pub async fn claim(
    connector: &Connector,
    token_id: &str,
    expires_at: u64,
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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let lifetime_ms = record_lifetime(expires_at, now).as_millis() as i64;
        args.insert(
            ShortString::from("x-expires"),
            AMQPValue::LongLongInt(lifetime_ms),
        );
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(queue.as_str().into(), durable, args)
            .await
        {
            Ok(_) => {}
            Err(error) if is_precondition_failed(&error) => return Ok(false),
            Err(error) => return Err(unavailable("declare", &error)),
        }

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A record lasts until its token expires plus the slack, never longer
    /// than the cap, and a minute for a token already expired.
    #[test]
    fn records_last_as_long_as_their_token() {
        assert_eq!(record_lifetime(1_060, 1_000), Duration::from_secs(120));
        assert_eq!(record_lifetime(1_000, 1_000), CLOCK_SLACK);
        assert_eq!(record_lifetime(900, 1_000), CLOCK_SLACK);
        assert_eq!(record_lifetime(100_000, 1_000), RECORD_LIFETIME);
    }
}
