//! The embedded in-process broker: the default when `broker.url` is unset.
//!
//! It gives one node the same behaviour as RabbitMQ gives a cluster, in
//! memory: service events wait in a bounded queue and are processed one at a
//! time, in order, with the same retry and dead-letter rules; deliveries go
//! straight to the local sessions; client messages forwarded to services are
//! broadcast to in-process subscribers ([`EmbeddedBroker::subscribe_outbound`]).
//! Reliable pushes wait in per-user inboxes in memory with the same TTL, cap,
//! in-flight window and redelivery rules as the RabbitMQ inboxes (see
//! `memory_inbox`).
//!
//! Nothing survives the process: events still queued and reliable pushes not
//! yet acknowledged when it ends are lost, and dead letters are only kept (the newest [`DEAD_LETTERS_KEPT`]) for
//! inspection. Use RabbitMQ where that matters.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::memory_inbox::MemoryInboxes;
use super::{Broker, BrokerError, Delivery, EventError, NodeSink};
use crate::config::ReliableConfig;
use crate::envelope::Envelope;
use crate::metrics::BrokerMetrics;

/// How often expired reliable pushes of offline users are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Events that may wait for processing before publishes start to wait.
const EVENT_QUEUE_LEN: usize = 4096;

/// Dead letters kept in memory for inspection.
pub const DEAD_LETTERS_KEPT: usize = 1000;

/// A dead-lettered event and why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The event.
    pub event: Envelope,
    /// Why it was dead-lettered.
    pub reason: String,
}

/// The in-process broker. See the module docs.
pub struct EmbeddedBroker {
    node: OnceLock<Arc<dyn NodeSink>>,
    events_tx: mpsc::Sender<Envelope>,
    events_rx: Mutex<Option<mpsc::Receiver<Envelope>>>,
    outbound: broadcast::Sender<Arc<Envelope>>,
    dead: Arc<Mutex<VecDeque<DeadLetter>>>,
    inboxes: Arc<MemoryInboxes>,
    max_retries: u32,
    publish_timeout: Duration,
    stop: CancellationToken,
    tasks: TaskTracker,
    metrics: Option<BrokerMetrics>,
}

impl EmbeddedBroker {
    /// A broker that retries a failing event `max_retries` times, lets a
    /// publish wait at most `publish_timeout` for room in the queue, and
    /// keeps reliable pushes as `reliable` says.
    pub fn new(max_retries: u32, publish_timeout: Duration, reliable: &ReliableConfig) -> Self {
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE_LEN);
        let (outbound, _) = broadcast::channel(1024);
        EmbeddedBroker {
            node: OnceLock::new(),
            events_tx,
            events_rx: Mutex::new(Some(events_rx)),
            outbound,
            dead: Arc::new(Mutex::new(VecDeque::new())),
            inboxes: Arc::new(MemoryInboxes::new(
                Duration::from_secs(reliable.ttl_secs),
                usize::try_from(reliable.max_pending_per_user).unwrap_or(usize::MAX),
                usize::from(reliable.max_in_flight_per_user),
            )),
            max_retries,
            publish_timeout,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            metrics: None,
        }
    }

    /// Counts publishes and dead letters into `metrics`.
    pub fn with_metrics(mut self, metrics: BrokerMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count_publish(&self, ok: bool) {
        match (&self.metrics, ok) {
            (Some(metrics), true) => metrics.publish_confirmed(),
            (Some(metrics), false) => metrics.publish_failed(),
            (None, _) => {}
        }
    }

    /// Receives every client message that handlers forward to services from
    /// now on. A receiver that falls more than 1024 messages behind loses the
    /// oldest (see `tokio::sync::broadcast`).
    pub fn subscribe_outbound(&self) -> broadcast::Receiver<Arc<Envelope>> {
        self.outbound.subscribe()
    }

    /// How many reliable pushes are kept for `unique_id` (sent and not
    /// acknowledged, or waiting).
    pub fn pending_pushes(&self, unique_id: &str) -> usize {
        self.inboxes.pending(unique_id)
    }

    /// The newest dead letters, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        lock(&self.dead).iter().cloned().collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the data half-changed
    // (every critical section is a single push or pop), so poison is ignored.
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

async fn run_events(
    node: Arc<dyn NodeSink>,
    mut events: mpsc::Receiver<Envelope>,
    dead: Arc<Mutex<VecDeque<DeadLetter>>>,
    max_retries: u32,
    stop: CancellationToken,
    metrics: Option<BrokerMetrics>,
) {
    loop {
        // On stop, close the queue to new events but finish the ones already
        // accepted: they were confirmed to their producers.
        let next = tokio::select! {
            biased;
            event = events.recv() => event,
            () = stop.cancelled() => {
                events.close();
                events.recv().await
            }
        };
        let Some(event) = next else { break };
        let mut attempt = 0;
        let reason = loop {
            match node.process_event(event.clone()).await {
                Ok(()) => break None,
                Err(EventError::Reject(refusal)) => break Some(refusal.to_string()),
                Err(EventError::Retry(why)) if attempt >= max_retries => {
                    break Some(format!("failed after {} attempts: {why}", attempt + 1));
                }
                Err(EventError::Retry(_)) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
            }
        };
        if let Some(reason) = reason {
            tracing::warn!(
                target: "switchboard::broker",
                message_id = event.id(),
                business_type = event.business(),
                reason = %reason,
                "event dead-lettered"
            );
            if let Some(metrics) = &metrics {
                metrics.dead_lettered();
            }
            let mut dead = lock(&dead);
            if dead.len() == DEAD_LETTERS_KEPT {
                dead.pop_front();
            }
            dead.push_back(DeadLetter { event, reason });
        }
    }
}

#[async_trait]
impl Broker for EmbeddedBroker {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn start(&self, node: Arc<dyn NodeSink>) -> Result<(), BrokerError> {
        let events = lock(&self.events_rx)
            .take()
            .ok_or_else(|| BrokerError::Setup("embedded broker started twice".into()))?;
        let _ = self.node.set(node.clone());
        let stop = self.stop.clone();
        self.tasks.spawn(run_events(
            node,
            events,
            self.dead.clone(),
            self.max_retries,
            stop,
            self.metrics.clone(),
        ));

        let inboxes = self.inboxes.clone();
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = every.tick() => inboxes.sweep(),
                }
            }
        });
        Ok(())
    }

    async fn publish_event(&self, event: &Envelope) -> Result<(), BrokerError> {
        if self.stop.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        let send = self.events_tx.send(event.clone());
        let result = match tokio::time::timeout(self.publish_timeout, send).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(BrokerError::ShuttingDown),
            Err(_) => Err(BrokerError::Timeout {
                message_id: event.id().to_owned(),
            }),
        };
        self.count_publish(result.is_ok());
        result
    }

    async fn publish_outbound(&self, message: &Envelope) -> Result<(), BrokerError> {
        // No subscriber is not an error: with the embedded broker, services
        // that are not in this process cannot receive anyway.
        let _ = self.outbound.send(Arc::new(message.clone()));
        Ok(())
    }

    async fn deliver(&self, delivery: Delivery) -> Result<(), BrokerError> {
        let node = self
            .node
            .get()
            .ok_or(BrokerError::Unavailable("not started".into()))?;
        node.deliver_local(&delivery);
        Ok(())
    }

    async fn deliver_reliable(&self, delivery: Delivery) -> Result<(), BrokerError> {
        let node = self
            .node
            .get()
            .ok_or(BrokerError::Unavailable("not started".into()))?;
        self.inboxes.push(node.as_ref(), delivery)
    }

    async fn receipt(&self, unique_id: &str, message_id: &str) {
        if let Some(node) = self.node.get() {
            self.inboxes.receipt(node.as_ref(), unique_id, message_id);
        }
    }

    fn user_presence_changed(&self, unique_id: &str) {
        // One node: nothing to route, but the user's inbox may start or
        // stop flowing.
        if let Some(node) = self.node.get() {
            self.inboxes.presence_changed(node.as_ref(), unique_id);
        }
    }

    fn is_ready(&self) -> bool {
        self.node.get().is_some() && !self.stop.is_cancelled()
    }

    async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}
