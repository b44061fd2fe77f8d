//! The embedded broker's inboxes: reliable pushes kept in memory, per user.
//!
//! Each user with pending pushes has a queue in publication order. While
//! the user has a session on this node, the oldest pushes not yet sent are
//! handed to the sessions, at most `window` unacknowledged at once. A
//! receipt removes its push and lets the next one go. When the user's last
//! session goes, every push sent and not acknowledged is marked unsent, so
//! the next session gets them again, oldest first, with the same
//! `messageId`. Pushes older than the TTL are dropped.
//!
//! Everything here is lost when the process ends.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{BrokerError, Delivery, NodeSink};

/// One kept push.
struct Pending {
    message_id: String,
    delivery: Delivery,
    expires: Instant,
    /// Handed to the user's sessions and not acknowledged yet.
    sent: bool,
}

/// One user's pending pushes, oldest first.
#[derive(Default)]
struct UserInbox {
    pushes: VecDeque<Pending>,
}

impl UserInbox {
    fn expire(&mut self, now: Instant) {
        self.pushes.retain(|p| p.expires > now);
    }

    /// Hands the oldest unsent pushes to the user's sessions until `window`
    /// are in flight.
    fn pump(&mut self, node: &dyn NodeSink, window: usize) {
        let in_flight = self.pushes.iter().filter(|p| p.sent).count();
        let room = window.saturating_sub(in_flight);
        for push in self.pushes.iter_mut().filter(|p| !p.sent).take(room) {
            node.deliver_local(&push.delivery);
            push.sent = true;
        }
    }
}

/// Every user's inbox. See the module docs.
pub(crate) struct MemoryInboxes {
    users: Mutex<HashMap<String, UserInbox>>,
    ttl: Duration,
    max_pending: usize,
    window: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section leaves the queues consistent; poison is harmless.
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl MemoryInboxes {
    pub(crate) fn new(ttl: Duration, max_pending: usize, window: usize) -> Self {
        MemoryInboxes {
            users: Mutex::new(HashMap::new()),
            ttl,
            max_pending,
            window: window.max(1),
        }
    }

    /// Keeps `delivery` for its user and sends it at once when the user is
    /// here and the window has room.
    ///
    /// Sessions are offered pushes while the lock is held, so two pushes
    /// for one user can never overtake each other; offering never waits
    /// and the hub never calls back into the inboxes.
    pub(crate) fn push(&self, node: &dyn NodeSink, delivery: Delivery) -> Result<(), BrokerError> {
        let Some(user) = delivery.envelope.to_unique_id.clone() else {
            return Err(BrokerError::Unavailable(
                "reliable push without toUniqueId".into(),
            ));
        };
        let now = Instant::now();
        let mut users = lock(&self.users);
        let inbox = users.entry(user.clone()).or_default();
        inbox.expire(now);
        if inbox.pushes.len() >= self.max_pending {
            return Err(BrokerError::InboxFull { unique_id: user });
        }
        inbox.pushes.push_back(Pending {
            message_id: delivery.envelope.id().to_owned(),
            delivery,
            expires: now + self.ttl,
            sent: false,
        });
        if node.has_local_user(&user) {
            inbox.pump(node, self.window);
        }
        Ok(())
    }

    /// Settles `message_id` for `unique_id` and sends the next push.
    pub(crate) fn receipt(&self, node: &dyn NodeSink, unique_id: &str, message_id: &str) {
        let mut users = lock(&self.users);
        let Some(inbox) = users.get_mut(unique_id) else {
            return;
        };
        inbox.pushes.retain(|p| p.message_id != message_id);
        inbox.expire(Instant::now());
        if inbox.pushes.is_empty() {
            users.remove(unique_id);
        } else if node.has_local_user(unique_id) {
            inbox.pump(node, self.window);
        }
    }

    /// The user's first session arrived or the last one left.
    pub(crate) fn presence_changed(&self, node: &dyn NodeSink, unique_id: &str) {
        let mut users = lock(&self.users);
        let Some(inbox) = users.get_mut(unique_id) else {
            return;
        };
        inbox.expire(Instant::now());
        if node.has_local_user(unique_id) {
            inbox.pump(node, self.window);
        } else {
            // Nobody acknowledged these: the next session gets them again.
            for push in &mut inbox.pushes {
                push.sent = false;
            }
        }
        if inbox.pushes.is_empty() {
            users.remove(unique_id);
        }
    }

    /// Drops expired pushes of every user, and users left with none.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        lock(&self.users).retain(|_, inbox| {
            inbox.expire(now);
            !inbox.pushes.is_empty()
        });
    }

    /// Pushes kept for `unique_id`, sent or not.
    pub(crate) fn pending(&self, unique_id: &str) -> usize {
        lock(&self.users)
            .get(unique_id)
            .map_or(0, |inbox| inbox.pushes.len())
    }
}
