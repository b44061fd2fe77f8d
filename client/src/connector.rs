//! The connection supervisor: one AMQP connection, rebuilt whenever it is
//! lost.
//!
//! A [`Connector`] owns a background task that connects, runs an optional
//! setup hook (declaring the topology), publishes the live connection as a
//! [`Link`], and waits for the connection to fail. On failure it withdraws
//! the link, waits with an exponential backoff, and starts over, forever,
//! until [`Connector::close`].
//!
//! Everything built on a connection (publisher channels, consumers,
//! bindings) watches the link with [`Connector::watch`] and rebuilds itself
//! on each new one: a [`Link`] carries a generation number that changes on
//! every reconnect, so a user can tell whether its channel belongs to the
//! current connection. lapin's own auto-recovery is not used.
//!
//! Readiness ([`Connector::is_ready`]) is true only while a connection is up
//! *and* its setup hook has succeeded.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::{Channel, Connection, ConnectionProperties, Event};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::ClientError;

/// What a setup hook returns.
pub type SetupFuture = Pin<Box<dyn Future<Output = Result<(), lapin::Error>> + Send>>;

/// Runs on every new connection before it is published as ready: declare
/// the topology here. An error closes that connection and the supervisor
/// tries again after its backoff.
pub type SetupHook = Arc<dyn Fn(Link) -> SetupFuture + Send + Sync>;

/// How a [`Connector`] connects and reconnects.
#[derive(Debug, Clone)]
pub struct ConnectorSettings {
    /// Connection name shown by `rabbitmqctl list_connections` and the
    /// management UI.
    pub name: String,
    /// First pause after a failed attempt or a lost connection; it doubles
    /// on each failure up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest pause between two attempts.
    pub reconnect_max: Duration,
    /// Longest one connection attempt (TCP, handshake, setup hook) may take.
    pub attempt_timeout: Duration,
}

impl Default for ConnectorSettings {
    fn default() -> Self {
        ConnectorSettings {
            name: String::from("switchboard-client"),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

/// One live connection, as published by the supervisor.
#[derive(Clone)]
pub struct Link {
    connection: Arc<Connection>,
    generation: u64,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("generation", &self.generation)
            .finish()
    }
}

impl Link {
    /// Counts connections made by this connector: 1 for the first, +1 for
    /// each reconnect.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The connection.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Whether the connection is still up.
    pub fn is_alive(&self) -> bool {
        self.connection.status().connected()
    }

    /// Opens a new channel on this connection.
    ///
    /// # Errors
    ///
    /// The lapin error when the connection is gone or refuses a channel.
    pub async fn channel(&self) -> Result<Channel, lapin::Error> {
        self.connection.create_channel().await
    }
}

/// One channel kept for reuse on the current connection: opened on first
/// use, opened again when it died or belongs to an older connection.
#[derive(Default)]
pub struct ChannelSlot {
    // An async mutex, held across the opening, so that callers who find the
    // channel dead at the same time open one new channel, not one each.
    slot: tokio::sync::Mutex<Option<(u64, Channel)>>,
}

impl std::fmt::Debug for ChannelSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelSlot { .. }")
    }
}

impl ChannelSlot {
    /// The kept channel of `link`, or a new one; `confirm` puts a new
    /// channel in publisher-confirm mode.
    ///
    /// # Errors
    ///
    /// The lapin error when no channel can be opened.
    pub async fn get(&self, link: &Link, confirm: bool) -> Result<Channel, lapin::Error> {
        let mut slot = self.slot.lock().await;
        if let Some((generation, channel)) = slot.as_ref()
            && *generation == link.generation()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = link.channel().await?;
        if confirm {
            channel
                .confirm_select(lapin::options::ConfirmSelectOptions::default())
                .await?;
        }
        *slot = Some((link.generation(), channel.clone()));
        Ok(channel)
    }
}

/// Why [`Connector::wait_link`] returned without a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoLink {
    /// The deadline passed while disconnected.
    Deadline,
    /// The connector was closed.
    Closed,
}

struct Shared {
    url: String,
    settings: ConnectorSettings,
    setup: Option<SetupHook>,
    link: watch::Sender<Option<Link>>,
    closed: watch::Sender<bool>,
    last_error: Mutex<Option<String>>,
}

/// The connection supervisor. See the module docs. Cloning is cheap and
/// shares the one supervisor.
#[derive(Clone)]
pub struct Connector {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("name", &self.shared.settings.name)
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Connector {
    /// Checks `url` and starts the supervisor in the background; it connects
    /// at once. Must be called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidUrl`] when `url` is not an AMQP URL.
    pub fn start(
        url: &str,
        settings: ConnectorSettings,
        setup: Option<SetupHook>,
    ) -> Result<Connector, ClientError> {
        url.parse::<lapin::uri::AMQPUri>()
            .map_err(ClientError::InvalidUrl)?;
        let (link, _) = watch::channel(None);
        let (closed, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            url: url.to_owned(),
            settings,
            setup,
            link,
            closed,
            last_error: Mutex::new(None),
        });
        tokio::spawn(supervise(shared.clone()));
        Ok(Connector { shared })
    }

    /// Whether a connection is up and its setup hook has succeeded.
    pub fn is_ready(&self) -> bool {
        self.shared
            .link
            .borrow()
            .as_ref()
            .is_some_and(Link::is_alive)
    }

    /// Whether [`Connector::close`] was called.
    pub fn is_closed(&self) -> bool {
        *self.shared.closed.borrow()
    }

    /// The current link, if connected.
    pub fn current(&self) -> Option<Link> {
        self.shared.link.borrow().clone()
    }

    /// A receiver that sees every change of link: `Some` on each (re)connect,
    /// `None` while disconnected.
    pub fn watch(&self) -> watch::Receiver<Option<Link>> {
        self.shared.link.subscribe()
    }

    /// The last connection error, for messages.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.last_error).clone()
    }

    /// Waits for a live link until `deadline`. Cancel safe.
    ///
    /// # Errors
    ///
    /// [`NoLink`] when the deadline passed or the connector was closed.
    pub async fn wait_link(&self, deadline: Instant) -> Result<Link, NoLink> {
        let mut links = self.shared.link.subscribe();
        let mut closed = self.shared.closed.subscribe();
        loop {
            if *closed.borrow_and_update() {
                return Err(NoLink::Closed);
            }
            if let Some(link) = links.borrow_and_update().clone()
                && link.is_alive()
            {
                return Ok(link);
            }
            // A dead link that is still published is withdrawn by the
            // supervisor within moments; poll rather than miss that.
            let tick = (Instant::now() + Duration::from_millis(50)).min(deadline);
            tokio::select! {
                _ = links.changed() => {}
                _ = closed.changed() => {}
                () = tokio::time::sleep_until(tick) => {}
            }
            if Instant::now() >= deadline {
                return Err(NoLink::Deadline);
            }
        }
    }

    /// Waits until ready, at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] with the last connection error, or
    /// [`ClientError::Closed`].
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ClientError> {
        match self.wait_link(Instant::now() + timeout).await {
            Ok(_) => Ok(()),
            Err(NoLink::Closed) => Err(ClientError::Closed),
            Err(NoLink::Deadline) => Err(ClientError::Connect {
                timeout,
                last_error: self
                    .last_error()
                    .unwrap_or_else(|| String::from("no connection yet")),
            }),
        }
    }

    /// Tells the supervisor to stop, without waiting: it drops its
    /// connection, which closes once nothing else holds a channel of it.
    /// For `Drop` implementations; prefer [`Connector::close`].
    pub fn request_close(&self) {
        self.shared.closed.send_replace(true);
    }

    /// Stops reconnecting and closes the connection. Unacknowledged
    /// deliveries go back to their queues.
    pub async fn close(&self) {
        self.shared.closed.send_replace(true);
        let link = self.shared.link.send_replace(None);
        if let Some(link) = link {
            let _ = link.connection.close(200, "closing".into()).await;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is one assignment or clone; poison is harmless.
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Removes `user:password@` from a URL before it is logged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return String::from("<unparsable url>");
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => url.to_owned(),
    }
}

/// The supervisor task: connect, set up, publish, wait for loss, repeat.
async fn supervise(shared: Arc<Shared>) {
    let settings = &shared.settings;
    let mut closed = shared.closed.subscribe();
    let mut pause = settings.reconnect_min;
    let mut generation = 0u64;
    let mut failures = 0u32;
    let mut was_connected = false;

    while !*closed.borrow_and_update() {
        let attempt =
            tokio::time::timeout(settings.attempt_timeout, connect(&shared, generation + 1));
        let outcome = tokio::select! {
            outcome = attempt => outcome,
            _ = closed.changed() => break,
        };
        let (link, events) = match outcome {
            Ok(Ok(connected)) => connected,
            failed => {
                let error = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => String::from("connection attempt timed out"),
                };
                failures += 1;
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(
                        target: "switchboard::amqp",
                        name = %settings.name, url = %redact_url(&shared.url),
                        failures, error = %error,
                        "broker connection attempt failed"
                    );
                }
                *lock(&shared.last_error) = Some(error);
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = closed.changed() => break,
                }
                pause = (pause * 2).min(settings.reconnect_max);
                continue;
            }
        };

        // Connected and set up: publish the link, then wait for its end.
        generation = link.generation;
        failures = 0;
        pause = settings.reconnect_min;
        if was_connected {
            tracing::warn!(
                target: "switchboard::amqp",
                name = %settings.name, generation, "broker connection restored"
            );
        } else {
            tracing::info!(
                target: "switchboard::amqp",
                name = %settings.name, url = %redact_url(&shared.url), "broker connected"
            );
        }
        was_connected = true;
        shared.link.send_replace(Some(link.clone()));

        let lost = tokio::select! {
            error = wait_for_loss(&link, events) => Some(error),
            _ = closed.changed() => None,
        };
        shared.link.send_replace(None);
        let Some(error) = lost else { break };
        tracing::warn!(
            target: "switchboard::amqp",
            name = %settings.name, generation, error = %error,
            "broker connection lost; reconnecting"
        );
        *lock(&shared.last_error) = Some(error);
        drop(link);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = closed.changed() => break,
        }
    }
    // Closed: make sure nothing stays published.
    shared.link.send_replace(None);
}

type Events = Pin<Box<dyn futures_util::Stream<Item = Event> + Send>>;

/// One attempt: connect, subscribe to the connection's events, run the
/// setup hook.
async fn connect(shared: &Shared, generation: u64) -> Result<(Link, Events), lapin::Error> {
    let properties =
        ConnectionProperties::default().with_connection_name(shared.settings.name.clone().into());
    let connection = Connection::connect(&shared.url, properties).await?;

    // Listen before the hook runs, so a failure during setup is not missed.
    let events: Events = Box::pin(connection.events_listener());
    let link = Link {
        connection: Arc::new(connection),
        generation,
    };
    if let Some(setup) = &shared.setup
        && let Err(error) = setup(link.clone()).await
    {
        let _ = link.connection.close(200, "setup failed".into()).await;
        return Err(error);
    }
    Ok((link, events))
}

/// Resolves when the connection fails, with a description of why.
async fn wait_for_loss(link: &Link, mut events: Events) -> String {
    // The event stream reports errors; the status check is a backstop for a
    // connection that ends without one.
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Event::Error(error)) => return error.to_string(),
                Some(_) => {}
                None => return String::from("connection event stream ended"),
            },
            _ = check.tick() => {
                if !link.is_alive() {
                    return String::from("connection no longer open");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Credentials never reach a log line.
    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact_url("amqp://guest:secret@10.0.0.1:5672/%2f"),
            "amqp://***@10.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://host/%2f"), "amqp://host/%2f");
    }
}
