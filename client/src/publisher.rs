//! The confirmed publisher.
//!
//! Every publish goes out on a channel in confirm mode and resolves only
//! when the broker has confirmed it: for a persistent message to a durable
//! queue, once it is on disk. Anything less is retried with the same
//! properties (and so the same `message_id`), with a backoff, until the
//! publish timeout:
//!
//! - a negative confirm (nack);
//! - a returned message: with `mandatory`, a message that no queue takes is
//!   returned with reply code 312 *and then acked*; lapin hands the returned
//!   message in the ack, and it is treated as a failure;
//! - a channel or connection error before the confirm: the message may or
//!   may not have arrived, so it is published again on the next connection.
//!
//! A message can therefore arrive twice; receivers deduplicate by
//! `messageId`. Concurrent publishes share one channel, so their confirms
//! are pipelined; a semaphore bounds how many wait for a confirm at once,
//! and further publishes wait for a slot (within the same timeout).

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::ClientError;
use crate::connector::{ChannelSlot, Connector, Link, NoLink};

/// First pause between two attempts; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(50);

/// Longest pause between two attempts.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// The exchange.
    pub exchange: &'a str,
    /// The routing key.
    pub routing_key: &'a str,
    /// The body.
    pub body: &'a [u8],
    /// The properties; their `message_id` names the message in errors.
    pub properties: BasicProperties,
    /// What a message that no queue takes means.
    pub unroutable: IfUnroutable,
}

/// What to do with a message that no queue takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfUnroutable {
    /// Publish without `mandatory`: the broker drops it silently and the
    /// publish still succeeds. For messages that are only useful to whoever
    /// listens now.
    Drop,
    /// Publish with `mandatory`: a returned message is a failure, retried
    /// until the timeout, then [`ClientError::Unroutable`].
    Retry,
    /// Publish with `mandatory`: a returned message resolves at once as
    /// [`Confirmed::Returned`], so the caller can tell.
    Report,
}

/// How a publish ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    /// The broker confirmed it (and, unless [`IfUnroutable::Drop`], at least
    /// one queue took it).
    Accepted,
    /// The broker returned it: no queue is bound for its routing key
    /// ([`IfUnroutable::Report`] only).
    Returned,
}

impl Outgoing<'_> {
    fn message_id(&self) -> String {
        crate::topology::message_id(&self.properties)
            .unwrap_or("")
            .to_owned()
    }
}

/// Why one attempt did not end in a clean confirm.
#[derive(Debug)]
enum Failure {
    Unavailable,
    Nacked,
    Returned,
    Channel(lapin::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unavailable => f.write_str("no confirm-mode channel"),
            Failure::Nacked => f.write_str("negative confirm"),
            Failure::Returned => f.write_str("returned: no queue bound"),
            Failure::Channel(error) => write!(f, "channel error: {error}"),
        }
    }
}

/// A confirmed publisher on top of a [`Connector`]. See the module docs.
pub struct Publisher {
    connector: Connector,
    channel: ChannelSlot,
    permits: Semaphore,
    timeout: Duration,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("timeout", &self.timeout)
            .field("free_slots", &self.permits.available_permits())
            .finish()
    }
}

impl Publisher {
    /// A publisher that lets at most `max_in_flight` publishes wait for a
    /// confirm at once and gives each at most `timeout`, reconnects
    /// included. `max_in_flight` of 0 is taken as 1.
    pub fn new(connector: Connector, max_in_flight: usize, timeout: Duration) -> Self {
        Publisher {
            connector,
            channel: ChannelSlot::default(),
            permits: Semaphore::new(max_in_flight.max(1)),
            timeout,
        }
    }

    /// The publish timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Publishes `message` and waits for its confirm, retrying as the module
    /// docs say, for at most the publish timeout. Cancel safe in the sense
    /// that dropping it abandons the message (which may or may not have
    /// been published).
    ///
    /// # Errors
    ///
    /// [`ClientError::Unavailable`], [`ClientError::Nacked`],
    /// [`ClientError::Unroutable`] or [`ClientError::Timeout`], after the
    /// failure seen last; [`ClientError::Closed`] once the connector is
    /// closed.
    pub async fn publish(&self, message: &Outgoing<'_>) -> Result<Confirmed, ClientError> {
        self.publish_until(message, Instant::now() + self.timeout)
            .await
    }

    /// Like [`Publisher::publish`] with an explicit deadline.
    ///
    /// # Errors
    ///
    /// As [`Publisher::publish`].
    pub async fn publish_until(
        &self,
        message: &Outgoing<'_>,
        deadline: Instant,
    ) -> Result<Confirmed, ClientError> {
        let message_id = message.message_id();
        let Ok(permit) = tokio::time::timeout_at(deadline, self.permits.acquire()).await else {
            return Err(ClientError::Timeout { message_id });
        };
        // The semaphore is never closed, so the permit is always granted.
        let _permit = permit.ok();

        let mut attempts = 0u32;
        let mut pause = FIRST_PAUSE;
        let mut last = Failure::Unavailable;
        loop {
            let link = match self.connector.wait_link(deadline).await {
                Ok(link) => link,
                Err(NoLink::Closed) => return Err(ClientError::Closed),
                Err(NoLink::Deadline) => break,
            };
            attempts += 1;
            match tokio::time::timeout_at(deadline, self.attempt(&link, message)).await {
                Ok(Ok(())) => return Ok(Confirmed::Accepted),
                Ok(Err(Failure::Returned)) if message.unroutable == IfUnroutable::Report => {
                    return Ok(Confirmed::Returned);
                }
                Ok(Err(failure)) => {
                    tracing::debug!(
                        target: "switchboard::amqp",
                        message_id, exchange = message.exchange, attempts,
                        error = %failure, "publish not confirmed; retrying"
                    );
                    last = failure;
                }
                // No confirm in time: whatever came before, this is a timeout.
                Err(_) => return Err(ClientError::Timeout { message_id }),
            }
            if Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }

        Err(match last {
            Failure::Unavailable | Failure::Channel(_) => ClientError::Unavailable { message_id },
            Failure::Nacked => ClientError::Nacked {
                message_id,
                attempts,
            },
            Failure::Returned => ClientError::Unroutable {
                message_id,
                exchange: message.exchange.to_owned(),
                routing_key: message.routing_key.to_owned(),
            },
        })
    }

    /// One publish on the current confirm channel, awaiting its confirm.
    async fn attempt(&self, link: &Link, message: &Outgoing<'_>) -> Result<(), Failure> {
        let channel = self
            .channel
            .get(link, true)
            .await
            .map_err(Failure::Channel)?;
        let options = BasicPublishOptions {
            mandatory: message.unroutable != IfUnroutable::Drop,
            immediate: false,
        };
        let confirm = channel
            .basic_publish(
                crate::topology::short(message.exchange),
                crate::topology::short(message.routing_key),
                options,
                message.body,
                message.properties.clone(),
            )
            .await
            .map_err(Failure::Channel)?;
        match confirm.await.map_err(Failure::Channel)? {
            // An ack that carries a returned message is a message no queue took.
            Confirmation::Ack(Some(_)) => Err(Failure::Returned),
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Nack(_) => Err(Failure::Nacked),
            // Every channel made here is in confirm mode; a channel that is
            // not would be a bug, and the message is not known to be safe.
            Confirmation::NotRequested => Err(Failure::Unavailable),
        }
    }
}
