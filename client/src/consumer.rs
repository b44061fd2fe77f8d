//! Consumers that survive reconnects, with manual acknowledgements.
//!
//! [`run_consumer`] is the loop both the gateway and services use: on every
//! live [`Link`] it opens a channel, sets the
//! prefetch (how many deliveries may be unacknowledged at once; lapin's
//! consumer stream buffers without limit otherwise), runs a `prepare` step
//! (declare and bind the queue), and consumes. When the connection or the
//! channel dies, the unacknowledged deliveries go back to the queue, and the
//! loop starts again on the next link.
//!
//! [`Subscription`] and [`Incoming`] are the service-facing side: a stream
//! of envelopes, each acknowledged by hand once the service's work on it is
//! done. An acknowledgement can fail when the channel died in between; the
//! broker then delivers the message again, so services must tolerate a
//! repeat (same `messageId`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use switchboard_protocol::{Envelope, Refusal};
use tokio::sync::mpsc;

use crate::ClientError;
use crate::connector::{Connector, Link, SetupFuture};

/// Declares and binds a consumer's queue on a fresh channel, before it
/// consumes; runs on every (re)connect.
pub type Prepare = Arc<dyn Fn(Channel) -> SetupFuture + Send + Sync>;

/// Pause before reopening a consumer whose channel failed while the
/// connection looked alive.
const REOPEN_PAUSE: Duration = Duration::from_millis(200);

/// What [`run_consumer`] consumes.
#[derive(Clone)]
pub struct ConsumerSpec {
    /// The queue.
    pub queue: String,
    /// Most unacknowledged deliveries at once (`basic_qos`, per consumer).
    pub prefetch: u16,
    /// Declares and binds the queue before consuming; `None` when the queue
    /// is declared elsewhere (a setup hook, say).
    pub prepare: Option<Prepare>,
}

impl std::fmt::Debug for ConsumerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerSpec")
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .finish()
    }
}

/// Consumes `spec.queue` on every link of `connector` until `stop` resolves,
/// passing each delivery to `on_delivery` (awaited before the next one is
/// taken; spawn inside it for concurrency, bounded by the prefetch).
///
/// On `stop`, the consumer is cancelled on the broker (no new deliveries),
/// then the channel is kept open until `release` resolves, so that work
/// still in flight can acknowledge what it holds; then the channel closes
/// and anything still unacknowledged returns to the queue.
pub async fn run_consumer<F, Fut>(
    connector: Connector,
    spec: ConsumerSpec,
    stop: impl Future<Output = ()>,
    release: impl Future<Output = ()>,
    mut on_delivery: F,
) where
    F: FnMut(Delivery) -> Fut,
    Fut: Future<Output = ()>,
{
    tokio::pin!(stop);
    tokio::pin!(release);
    let mut links = connector.watch();

    loop {
        // Wait for a live link (or the end).
        let link = loop {
            if connector.is_closed() {
                return;
            }
            if let Some(link) = links.borrow_and_update().clone()
                && link.is_alive()
            {
                break link;
            }
            tokio::select! {
                biased;
                () = &mut stop => return,
                changed = links.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(REOPEN_PAUSE) => {}
            }
        };

        let (channel, mut consumer) = match open(&link, &spec).await {
            Ok(opened) => opened,
            Err(error) => {
                tracing::debug!(
                    target: "switchboard::amqp",
                    queue = %spec.queue, generation = link.generation(), error = %error,
                    "consumer could not start; retrying"
                );
                tokio::select! {
                    biased;
                    () = &mut stop => return,
                    () = tokio::time::sleep(REOPEN_PAUSE) => continue,
                }
            }
        };
        tracing::debug!(
            target: "switchboard::amqp",
            queue = %spec.queue, generation = link.generation(), "consumer started"
        );

        loop {
            tokio::select! {
                biased;
                () = &mut stop => {
                    let tag = consumer.tag();
                    let _ = channel.basic_cancel(tag, BasicCancelOptions::default()).await;
                    release.await;
                    let _ = channel.close(200, "consumer stopped".into()).await;
                    return;
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => on_delivery(delivery).await,
                    // An error is always followed by the end of the stream.
                    Some(Err(error)) => tracing::debug!(
                        target: "switchboard::amqp",
                        queue = %spec.queue, error = %error, "consumer failed"
                    ),
                    None => break,
                },
            }
        }

        // The channel or the connection ended; start over on the next link.
        tokio::select! {
            biased;
            () = &mut stop => return,
            () = tokio::time::sleep(REOPEN_PAUSE) => {}
        }
    }
}

async fn open(
    link: &Link,
    spec: &ConsumerSpec,
) -> Result<(Channel, lapin::Consumer), lapin::Error> {
    let channel = link.channel().await?;
    channel
        .basic_qos(spec.prefetch, BasicQosOptions { global: false })
        .await?;
    if let Some(prepare) = &spec.prepare {
        prepare(channel.clone()).await?;
    }
    let consumer = channel
        .basic_consume(
            spec.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// One message from a service queue, to be acknowledged by hand.
#[derive(Debug)]
pub struct Incoming {
    delivery: Delivery,
    envelope: Result<Envelope, Refusal>,
}

impl Incoming {
    /// Parses a delivery. The AMQP `message_id` property, where set, becomes
    /// the envelope's `messageId`, as on the gateway.
    pub fn new(delivery: Delivery) -> Self {
        let mut envelope = Envelope::parse_bytes(&delivery.data);
        if let (Ok(envelope), Some(id)) = (
            envelope.as_mut(),
            crate::topology::message_id(&delivery.properties),
        ) {
            envelope.message_id = Some(id.to_owned());
        }
        Incoming { delivery, envelope }
    }

    /// The envelope, or why the body is not one.
    ///
    /// # Errors
    ///
    /// The `INVALID_MESSAGE` refusal for a body that is not an envelope.
    pub fn envelope(&self) -> Result<&Envelope, &Refusal> {
        self.envelope.as_ref()
    }

    /// The raw body.
    pub fn body(&self) -> &[u8] {
        &self.delivery.data
    }

    /// The routing key it was published with (its `businessType`).
    pub fn routing_key(&self) -> &str {
        self.delivery.routing_key.as_str()
    }

    /// Whether the broker delivered it before (to this or another consumer)
    /// without an acknowledgement: it may have been processed already.
    pub fn redelivered(&self) -> bool {
        self.delivery.redelivered
    }

    /// The lapin delivery, for properties and headers.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// Acknowledges: the broker forgets the message.
    ///
    /// # Errors
    ///
    /// [`ClientError::AckLost`] when the channel closed first (the message
    /// will be delivered again), or the lapin error.
    pub async fn ack(self) -> Result<(), ClientError> {
        let sent = self.delivery.ack(BasicAckOptions::default()).await?;
        self.check(sent)
    }

    /// Refuses for good: the broker drops the message (or dead-letters it,
    /// if the queue has a dead-letter exchange of its own).
    ///
    /// # Errors
    ///
    /// As [`Incoming::ack`].
    pub async fn reject(self) -> Result<(), ClientError> {
        let sent = self
            .delivery
            .reject(BasicRejectOptions { requeue: false })
            .await?;
        self.check(sent)
    }

    /// Gives the message back to the queue, to be delivered again (perhaps
    /// to another consumer, perhaps at once: not a retry delay).
    ///
    /// # Errors
    ///
    /// As [`Incoming::ack`].
    pub async fn requeue(self) -> Result<(), ClientError> {
        let options = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        let sent = self.delivery.nack(options).await?;
        self.check(sent)
    }

    fn check(&self, sent: bool) -> Result<(), ClientError> {
        // lapin answers `false` when nothing was sent: the channel is gone.
        if sent {
            Ok(())
        } else {
            Err(ClientError::AckLost {
                delivery_tag: self.delivery.delivery_tag,
            })
        }
    }
}

/// A stream of [`Incoming`] messages from a service queue; see
/// [`SwitchboardClient::receive`](crate::SwitchboardClient::receive).
/// Dropping it stops the consumer; unacknowledged messages return to the
/// queue.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Incoming>,
}

impl Subscription {
    pub(crate) fn new(rx: mpsc::Receiver<Incoming>) -> Self {
        Subscription { rx }
    }

    /// The next message; `None` once the client is closed. Cancel safe.
    pub async fn next(&mut self) -> Option<Incoming> {
        self.rx.recv().await
    }
}

impl futures_util::Stream for Subscription {
    type Item = Incoming;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        self.rx.poll_recv(cx)
    }
}
