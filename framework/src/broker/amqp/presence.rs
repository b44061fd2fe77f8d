//! Keeping this node's queue bound with `user.<uniqueId>` for exactly the
//! users that have a session here.
//!
//! Sessions report that a user's presence *may* have changed
//! ([`Presence::mark`], never blocking); one reconciling task then asks the
//! node for the truth ([`NodeSink::has_local_user`](crate::broker::NodeSink))
//! and binds or unbinds. Because it acts on the current truth rather than
//! on the order of reports, a user who disconnects and reconnects at once
//! converges to the right state however the reports interleave.
//!
//! After a reconnect the node's queue is new and bare, so every user the
//! task knows as present is bound again. A session waits for its user's
//! binding before `CONNECTED` is written ([`Presence::wait_routed`]), so a
//! client that saw `CONNECTED` is reachable by a `UNICAST`.
//!
//! Cost: one binding per (node, online user); a reconnect replays them one
//! by one, about a thousand per second on a local broker.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::Channel;
use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;
use switchboard_client::{Connector, topology};
use switchboard_protocol::amqp::{DELIVER_EXCHANGE, user_routing_key};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::Inner;

/// Pause after a failed bind before the next pass.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Shared between sessions (which mark) and the reconciling task.
pub(super) struct Presence {
    /// Users whose presence may have changed since the last pass.
    pending: Mutex<HashSet<String>>,
    wake: Notify,
    /// Users bound on the current connection.
    routed: Mutex<HashSet<String>>,
    /// Bumped after every change of `routed`.
    changed: watch::Sender<u64>,
}

impl Default for Presence {
    fn default() -> Self {
        Presence {
            pending: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            routed: Mutex::new(HashSet::new()),
            changed: watch::channel(0).0,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is one set operation; poison is harmless.
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Presence {
    /// Notes that `unique_id` may have arrived or left. Never blocks.
    pub(super) fn mark(&self, unique_id: &str) {
        lock(&self.pending).insert(unique_id.to_owned());
        // `notify_one` keeps a permit when the task is busy, so a mark made
        // during a pass is seen by the next one.
        self.wake.notify_one();
    }

    fn is_routed(&self, unique_id: &str) -> bool {
        lock(&self.routed).contains(unique_id)
    }

    /// Waits until `unique_id` is bound on the current connection, at most
    /// `timeout`; returns at once while disconnected (nothing can be routed
    /// then anyway).
    pub(super) async fn wait_routed(
        &self,
        connector: &Connector,
        unique_id: &str,
        timeout: Duration,
    ) {
        let deadline = Instant::now() + timeout;
        let mut changed = self.changed.subscribe();
        loop {
            if self.is_routed(unique_id) || !connector.is_ready() {
                return;
            }
            tokio::select! {
                result = changed.changed() => if result.is_err() { return },
                () = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(
                        target: "switchboard::amqp",
                        unique_id, "user binding not confirmed in time"
                    );
                    return;
                }
            }
        }
    }

    fn set_routed(&self, unique_id: &str, routed: bool) {
        let mut set = lock(&self.routed);
        if routed {
            set.insert(unique_id.to_owned());
        } else {
            set.remove(unique_id);
        }
        drop(set);
        self.changed.send_modify(|n| *n += 1);
    }

    fn clear_routed(&self) {
        lock(&self.routed).clear();
        self.changed.send_modify(|n| *n += 1);
    }
}

/// The reconciling task; ends when the broker stops.
pub(super) async fn reconcile(inner: Arc<Inner>) {
    let presence = &inner.presence;
    let mut links = inner.connector.watch();
    let mut generation = 0u64;
    let mut channel: Option<Channel> = None;
    // Users believed to have a session here: bound, or to be bound.
    let mut known: HashSet<String> = HashSet::new();
    let mut failed = false;

    loop {
        // Wait for work, unless the last pass left some.
        let idle = lock(&presence.pending).is_empty();
        if idle || failed {
            tokio::select! {
                biased;
                () = inner.stop.cancelled() => return,
                result = links.changed() => if result.is_err() { return },
                () = presence.wake.notified(), if !failed => {}
                () = tokio::time::sleep(RETRY_PAUSE), if failed => {}
            }
        }
        failed = false;

        // A new connection has a new, bare queue: bind everyone again.
        let Some(link) = inner.connector.current() else {
            // Disconnected: nothing can be bound; wait for the next link
            // (or a pause) rather than spin over the pending users.
            channel = None;
            presence.clear_routed();
            failed = true;
            continue;
        };
        if link.generation() != generation {
            generation = link.generation();
            channel = None;
            presence.clear_routed();
            lock(&presence.pending).extend(known.iter().cloned());
        }

        let batch: Vec<String> = lock(&presence.pending).drain().collect();
        for (done, user) in batch.iter().enumerate() {
            let want = inner.node.has_local_user(user);
            if want == presence.is_routed(user) {
                if want {
                    known.insert(user.clone());
                } else {
                    known.remove(user);
                }
                continue;
            }
            // The user's inbox stops flowing here before the binding goes,
            // and starts only once the binding is in place, so every push
            // the inbox sends reaches this node's sessions too.
            if !want {
                inner.inbox.stop(user);
            }
            match bind(&link, &mut channel, &inner.node_queue, user, want).await {
                Ok(()) => {
                    presence.set_routed(user, want);
                    if want {
                        inner.inbox.start(&inner, user);
                        known.insert(user.clone());
                    } else {
                        known.remove(user);
                    }
                }
                Err(error) => {
                    tracing::debug!(
                        target: "switchboard::amqp",
                        unique_id = %user, error = %error, "user binding failed; will retry"
                    );
                    // Keep this user and the rest for the next pass.
                    channel = None;
                    lock(&presence.pending).extend(batch[done..].iter().cloned());
                    failed = true;
                    break;
                }
            }
        }
    }
}

/// Binds (or unbinds) `user.<unique_id>` to the node queue on the
/// reconciler's channel, opening it when needed.
async fn bind(
    link: &switchboard_client::Link,
    channel: &mut Option<Channel>,
    queue: &str,
    unique_id: &str,
    bind: bool,
) -> Result<(), lapin::Error> {
    let open = match channel.take() {
        Some(open) if open.status().connected() => open,
        _ => link.channel().await?,
    };
    let key = topology::short(&user_routing_key(unique_id));
    let result = if bind {
        open.queue_bind(
            queue.into(),
            DELIVER_EXCHANGE.into(),
            key,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
    } else {
        open.queue_unbind(
            queue.into(),
            DELIVER_EXCHANGE.into(),
            key,
            FieldTable::default(),
        )
        .await
    };
    if result.is_ok() {
        *channel = Some(open);
    }
    result
}
