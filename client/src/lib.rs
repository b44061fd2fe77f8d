//! The Rust entry point for backend services that talk to a Switchboard
//! gateway through RabbitMQ.
//!
//! A service pushes envelopes to users and receives the client messages
//! that handlers forward to it:
//!
//! ```no_run
//! use serde_json::json;
//! use switchboard_client::{ClientOptions, SwitchboardClient};
//!
//! # async fn run() -> Result<(), switchboard_client::ClientError> {
//! let options = ClientOptions::default().service_name("payment-service");
//! let client = SwitchboardClient::connect("amqp://guest:guest@127.0.0.1:5672/%2f", options)
//!     .await?;
//!
//! // Resolves once RabbitMQ has the event on disk.
//! let message_id = client
//!     .unicast("payment_callback", "user-42", json!({"orderId": "A-1", "status": "PAID"}))
//!     .await?;
//!
//! // Client messages that handlers forward, from a durable queue of our own.
//! let mut inbox = client.receive("payment-service.inbox", &["payment_query"]).await?;
//! while let Some(message) = inbox.next().await {
//!     if let Ok(envelope) = message.envelope() {
//!         println!("{:?} from {:?}", envelope.message_id, envelope.from_unique_id);
//!     }
//!     message.ack().await?;
//! }
//! # let _ = message_id;
//! # Ok(())
//! # }
//! ```
//!
//! # What to plan for
//!
//! - **Publishing is confirmed.** Each push resolves only after RabbitMQ
//!   confirmed it; a nack, a returned message (no queue bound) or a lost
//!   connection is retried with the same `messageId` until
//!   [`ClientOptions::publish_timeout`], then fails. A failed push may still
//!   have arrived: pushing it again with the same `messageId` is safe, and
//!   receivers deduplicate by it.
//! - **Reconnects are automatic.** The connection is rebuilt with a backoff;
//!   pushes made meanwhile wait (within their timeout), subscriptions resume
//!   by themselves. [`SwitchboardClient::is_ready`] says whether the broker
//!   is usable now.
//! - **Receiving is at least once.** A message is acknowledged by hand; one
//!   not acknowledged when the connection drops is delivered again.
//!
//! The lower layers ([`connector`], [`publisher`], [`consumer`],
//! [`topology`]) are public: the gateway itself is built on them.
#![warn(missing_docs)]

pub mod connector;
pub mod consumer;
mod error;
pub mod publisher;
pub mod topology;

use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;
use serde_json::Value;
use switchboard_protocol::amqp::{INBOUND_EXCHANGE, OUTBOUND_EXCHANGE};
use switchboard_protocol::{Envelope, MessageType, Refusal, SendType};
use tokio::sync::{mpsc, watch};

pub use connector::{Connector, ConnectorSettings, Link};
pub use consumer::{Incoming, Subscription};
pub use error::ClientError;
/// The lapin version this crate is built on, for properties and headers.
pub use lapin;
pub use publisher::{Confirmed, IfUnroutable, Outgoing, Publisher};
/// The wire contract: the envelope and the RabbitMQ names.
pub use switchboard_protocol as protocol;

/// Settings of a [`SwitchboardClient`]. Every field has a default; change
/// what you need with the builder methods.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Connection name shown by RabbitMQ. Default `switchboard-client`.
    pub connection_name: String,
    /// Fills `fromUniqueId` where an envelope leaves it out; `fromClientType`
    /// is then `service`. Default unset.
    pub service_name: Option<String>,
    /// How long one push may take, reconnects and retries included, before
    /// it fails. Default 5 s.
    pub publish_timeout: Duration,
    /// Most pushes waiting for a confirm at once; further pushes wait.
    /// Default 1024.
    pub max_in_flight: usize,
    /// Most unacknowledged messages per subscription. Default 32.
    pub prefetch: u16,
    /// How long [`SwitchboardClient::connect`] tries before it fails.
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// Backoff between reconnect attempts: first pause. Default 200 ms.
    pub reconnect_min: Duration,
    /// Backoff between reconnect attempts: longest pause. Default 5 s.
    pub reconnect_max: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connection_name: String::from("switchboard-client"),
            service_name: None,
            publish_timeout: Duration::from_secs(5),
            max_in_flight: 1024,
            prefetch: 32,
            connect_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

impl ClientOptions {
    /// Sets [`ClientOptions::service_name`] (and the connection name).
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.connection_name = name.clone();
        self.service_name = Some(name);
        self
    }

    /// Sets [`ClientOptions::publish_timeout`].
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Sets [`ClientOptions::prefetch`].
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Sets [`ClientOptions::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

/// A service's connection to the gateway's RabbitMQ. See the crate docs.
pub struct SwitchboardClient {
    connector: Connector,
    publisher: Arc<Publisher>,
    options: ClientOptions,
    closed: watch::Sender<bool>,
}

impl std::fmt::Debug for SwitchboardClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwitchboardClient")
            .field("connector", &self.connector)
            .finish()
    }
}

impl SwitchboardClient {
    /// Connects to RabbitMQ at `url` (`amqp://user:pass@host:port/vhost`)
    /// and declares the shared topology, waiting at most
    /// [`ClientOptions::connect_timeout`]. Must be called inside a tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidUrl`], or [`ClientError::Connect`] with the
    /// last connection error.
    pub async fn connect(url: &str, options: ClientOptions) -> Result<Self, ClientError> {
        let settings = ConnectorSettings {
            name: options.connection_name.clone(),
            reconnect_min: options.reconnect_min,
            reconnect_max: options.reconnect_max,
            ..ConnectorSettings::default()
        };
        let setup: connector::SetupHook = Arc::new(|link: Link| {
            Box::pin(async move {
                // A throwaway channel: a failed declaration kills it.
                let channel = link.channel().await?;
                topology::declare_shared(&channel).await?;
                let _ = channel.close(200, "declared".into()).await;
                Ok(())
            })
        });
        let connector = Connector::start(url, settings, Some(setup))?;
        if let Err(error) = connector.wait_ready(options.connect_timeout).await {
            connector.close().await;
            return Err(error);
        }
        let publisher = Arc::new(Publisher::new(
            connector.clone(),
            options.max_in_flight,
            options.publish_timeout,
        ));
        let (closed, _) = watch::channel(false);
        Ok(SwitchboardClient {
            connector,
            publisher,
            options,
            closed,
        })
    }

    /// Whether the broker is usable now.
    pub fn is_ready(&self) -> bool {
        self.connector.is_ready()
    }

    /// The connection supervisor, for readiness watches.
    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Publishes `envelope` as an event to `switchboard.inbound`, routing
    /// key = its `businessType`, persistent, with `message_id` =
    /// `messageId`; returns that id once RabbitMQ confirmed it. Stamps
    /// `messageId` and `timestamp` where absent, makes `messageType`
    /// `SERVER_TO_CLIENT` where absent, and fills the sender from
    /// [`ClientOptions::service_name`].
    ///
    /// # Errors
    ///
    /// [`ClientError::Invalid`] for an envelope without `businessType` or
    /// over a size limit; otherwise as [`Publisher::publish`].
    pub async fn push(&self, mut envelope: Envelope) -> Result<String, ClientError> {
        if *self.closed.borrow() {
            return Err(ClientError::Closed);
        }
        if envelope.message_type.is_none() {
            envelope.message_type = Some(MessageType::ServerToClient);
        }
        if envelope.from_unique_id.is_none()
            && let Some(service) = &self.options.service_name
        {
            envelope.from_unique_id = Some(service.clone());
            envelope.from_client_type = Some(String::from("service"));
        }
        envelope.stamp();
        if envelope.business_type.is_none() {
            return Err(Refusal::invalid("businessType is required").into());
        }
        envelope.check_limits()?;
        envelope.check_addressed()?;

        let body = envelope.to_json();
        let message_id = envelope.id().to_owned();
        let message = Outgoing {
            exchange: INBOUND_EXCHANGE,
            routing_key: envelope.business(),
            body: body.as_bytes(),
            properties: topology::persistent_json(&message_id),
            unroutable: IfUnroutable::Retry,
        };
        self.publisher.publish(&message).await?;
        tracing::debug!(
            target: "switchboard::amqp",
            message_id, business_type = envelope.business(), "event published"
        );
        Ok(message_id)
    }

    /// Pushes `content` to every session of user `to`.
    ///
    /// # Errors
    ///
    /// As [`SwitchboardClient::push`].
    pub async fn unicast(
        &self,
        business_type: &str,
        to: &str,
        content: Value,
    ) -> Result<String, ClientError> {
        let mut envelope = event(business_type, SendType::Unicast, content);
        envelope.to_unique_id = Some(to.to_owned());
        self.push(envelope).await
    }

    /// Pushes `content` to every session subscribed to any of `tags`.
    ///
    /// # Errors
    ///
    /// As [`SwitchboardClient::push`].
    pub async fn to_tags(
        &self,
        business_type: &str,
        tags: &[&str],
        content: Value,
    ) -> Result<String, ClientError> {
        let mut envelope = event(business_type, SendType::Tag, content);
        envelope.tags = tags.iter().map(|t| (*t).to_owned()).collect();
        self.push(envelope).await
    }

    /// Pushes `content` to every session subscribed to any of `businesses`.
    ///
    /// # Errors
    ///
    /// As [`SwitchboardClient::push`].
    pub async fn to_businesses(
        &self,
        business_type: &str,
        businesses: &[&str],
        content: Value,
    ) -> Result<String, ClientError> {
        let mut envelope = event(business_type, SendType::Business, content);
        envelope.businesses = businesses.iter().map(|b| (*b).to_owned()).collect();
        self.push(envelope).await
    }

    /// Pushes `content` to every session.
    ///
    /// # Errors
    ///
    /// As [`SwitchboardClient::push`].
    pub async fn broadcast(
        &self,
        business_type: &str,
        content: Value,
    ) -> Result<String, ClientError> {
        self.push(event(business_type, SendType::Broadcast, content))
            .await
    }

    /// Receives the client messages that handlers forward for any of
    /// `business_types`, from the durable queue `queue` (declared here, and
    /// bound to `switchboard.outbound` with each business type as routing
    /// key). Several processes that receive from one queue share its
    /// messages. Resumes by itself after a reconnect.
    ///
    /// # Errors
    ///
    /// [`ClientError::Queue`] when the queue cannot be declared or bound
    /// (for example, it exists with other arguments);
    /// [`ClientError::Unavailable`] when the broker is not reachable within
    /// the publish timeout.
    pub async fn receive(
        &self,
        queue: &str,
        business_types: &[&str],
    ) -> Result<Subscription, ClientError> {
        let keys: Arc<Vec<String>> =
            Arc::new(business_types.iter().map(|b| (*b).to_owned()).collect());
        let queue_name = queue.to_owned();
        let prepare: consumer::Prepare = Arc::new(move |channel| {
            let keys = keys.clone();
            let queue = queue_name.clone();
            Box::pin(async move { bind_service_queue(&channel, &queue, &keys).await })
        });

        // Declare once here, so that a refusal reaches the caller instead of
        // a retry loop.
        let deadline = tokio::time::Instant::now() + self.options.publish_timeout;
        let link =
            self.connector
                .wait_link(deadline)
                .await
                .map_err(|_| ClientError::Unavailable {
                    message_id: String::new(),
                })?;
        let queue_error = |source| ClientError::Queue {
            action: "declare and bind",
            queue: queue.to_owned(),
            source,
        };
        let channel = link.channel().await.map_err(queue_error)?;
        prepare(channel.clone()).await.map_err(queue_error)?;
        let _ = channel.close(200, "declared".into()).await;

        let (tx, rx) = mpsc::channel(usize::from(self.options.prefetch.max(1)));
        let spec = consumer::ConsumerSpec {
            queue: queue.to_owned(),
            prefetch: self.options.prefetch.max(1),
            prepare: Some(prepare),
        };
        let mut closed = self.closed.subscribe();
        let stop = {
            let tx = tx.clone();
            async move {
                // Stop when the subscription is dropped or the client closes.
                tokio::select! {
                    () = tx.closed() => {}
                    _ = closed.wait_for(|closed| *closed) => {}
                }
            }
        };
        let connector = self.connector.clone();
        tokio::spawn(consumer::run_consumer(
            connector,
            spec,
            stop,
            std::future::ready(()),
            move |delivery| {
                let tx = tx.clone();
                async move {
                    // A send fails only when the subscription is gone; the
                    // delivery then returns to the queue with the channel.
                    let _ = tx.send(Incoming::new(delivery)).await;
                }
            },
        ));
        Ok(Subscription::new(rx))
    }

    /// Stops subscriptions and closes the connection. Unacknowledged
    /// messages return to their queues.
    pub async fn close(&self) {
        self.closed.send_replace(true);
        self.connector.close().await;
    }
}

impl Drop for SwitchboardClient {
    fn drop(&mut self) {
        // Without this the supervisor would keep a connection open for a
        // client nobody holds.
        self.closed.send_replace(true);
        self.connector.request_close();
    }
}

fn event(business_type: &str, send_type: SendType, content: Value) -> Envelope {
    let mut envelope = Envelope::new(MessageType::ServerToClient);
    envelope.business_type = Some(business_type.to_owned());
    envelope.send_type = Some(send_type);
    envelope.content = content;
    envelope
}

async fn bind_service_queue(
    channel: &lapin::Channel,
    queue: &str,
    keys: &[String],
) -> Result<(), lapin::Error> {
    topology::declare_durable_queue(channel, queue).await?;
    for key in keys {
        channel
            .queue_bind(
                queue.into(),
                OUTBOUND_EXCHANGE.into(),
                topology::short(key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}
