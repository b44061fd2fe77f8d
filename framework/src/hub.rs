//! The hub: this node's sessions and their subscriptions, and local fan-out.
//!
//! Each session has a bounded outbound queue. Fan-out never waits on a
//! session: it offers the shared, already-serialized frame to each matching
//! queue with `try_send`, and a session whose queue is full is a client that
//! does not read; it is ended with [`SessionEnd::SlowClient`] and nobody else
//! waits for it.
//!
//! The indexes sit behind one `std::sync::RwLock`. Every critical section is
//! a few map operations; no lock is ever held across an `.await`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::Delivery;
use crate::envelope::SendType;
use crate::session::SessionEnd;

/// Default for the most tags plus businesses one session may be subscribed
/// to; the node uses `limits.max_subscriptions_per_session`.
pub const MAX_SUBSCRIPTIONS: usize = 256;

/// A frame waiting in a session's outbound queue. Cloning it shares the
/// bytes, so every session of a fan-out writes from one buffer.
pub(crate) type Outbound = tungstenite::Utf8Bytes;

/// What the hub keeps of one session.
pub(crate) struct SessionHandle {
    pub(crate) id: u64,
    pub(crate) unique_id: String,
    pub(crate) client_type: String,
    tx: mpsc::Sender<Outbound>,
    end: OnceLock<SessionEnd>,
    cancel: CancellationToken,
}

impl SessionHandle {
    pub(crate) fn new(
        id: u64,
        unique_id: String,
        client_type: String,
        tx: mpsc::Sender<Outbound>,
    ) -> Self {
        SessionHandle {
            id,
            unique_id,
            client_type,
            tx,
            end: OnceLock::new(),
            cancel: CancellationToken::new(),
        }
    }

    /// Asks the session to end for `reason`; the first reason given wins.
    pub(crate) fn end(&self, reason: SessionEnd) {
        let _ = self.end.set(reason);
        self.cancel.cancel();
    }

    /// Resolves once someone called [`SessionHandle::end`]. Cancel safe.
    pub(crate) async fn ended(&self) -> SessionEnd {
        self.cancel.cancelled().await;
        self.end.get().cloned().unwrap_or(SessionEnd::Kicked)
    }

    /// Queues a frame without waiting. A full queue ends the session.
    fn offer(&self, frame: &Outbound) -> Offered {
        match self.tx.try_send(frame.clone()) {
            Ok(()) => Offered::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.end(SessionEnd::SlowClient);
                Offered::Full
            }
            // The session is already ending.
            Err(mpsc::error::TrySendError::Closed(_)) => Offered::Closing,
        }
    }
}

/// What became of one frame offered to one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offered {
    Queued,
    Full,
    Closing,
}

/// What a fan-out did, session by session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FanOut {
    /// Sessions the frame was queued for.
    pub delivered: usize,
    /// Sessions whose queue was full; each is being closed as a slow client.
    pub dropped_slow_client: usize,
    /// Sessions that were already closing.
    pub dropped_closing: usize,
}

#[derive(Default)]
struct Indexes {
    sessions: HashMap<u64, Arc<SessionHandle>>,
    by_user: HashMap<String, HashSet<u64>>,
    by_tag: HashMap<String, HashSet<u64>>,
    by_business: HashMap<String, HashSet<u64>>,
    subs: HashMap<u64, Subscriptions>,
}

#[derive(Default)]
struct Subscriptions {
    tags: HashSet<String>,
    businesses: HashSet<String>,
}

/// A subscription change would pass [`MAX_SUBSCRIPTIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooManySubscriptions;

/// This node's sessions. See the module docs.
pub struct Hub {
    inner: RwLock<Indexes>,
    next_id: AtomicU64,
    max_subscriptions: usize,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::with_max_subscriptions(MAX_SUBSCRIPTIONS)
    }
}

fn add_to(index: &mut HashMap<String, HashSet<u64>>, key: &str, id: u64) {
    index.entry(key.to_owned()).or_default().insert(id);
}

fn remove_from(index: &mut HashMap<String, HashSet<u64>>, key: &str, id: u64) {
    if let Some(set) = index.get_mut(key) {
        set.remove(&id);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

impl Hub {
    /// A hub that allows at most `max` tags plus businesses per session.
    pub fn with_max_subscriptions(max: usize) -> Self {
        Hub {
            inner: RwLock::default(),
            next_id: AtomicU64::default(),
            max_subscriptions: max,
        }
    }

    /// Most tags plus businesses one session may hold.
    pub fn max_subscriptions(&self) -> usize {
        self.max_subscriptions
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Indexes> {
        // Every critical section leaves the indexes consistent before it can
        // panic, so a poisoned lock is still safe to use.
        self.inner
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Indexes> {
        self.inner
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub(crate) fn next_session_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Adds a session with its initial subscriptions. Returns whether it is
    /// the user's first session on this node.
    pub(crate) fn register(
        &self,
        handle: Arc<SessionHandle>,
        tags: &[String],
        businesses: &[String],
    ) -> bool {
        let id = handle.id;
        let mut inner = self.write();
        let user = inner.by_user.entry(handle.unique_id.clone()).or_default();
        let first = user.is_empty();
        user.insert(id);
        let mut subs = Subscriptions::default();
        for tag in tags.iter().take(self.max_subscriptions) {
            subs.tags.insert(tag.clone());
            add_to(&mut inner.by_tag, tag, id);
        }
        let room = self.max_subscriptions.saturating_sub(subs.tags.len());
        for business in businesses.iter().take(room) {
            subs.businesses.insert(business.clone());
            add_to(&mut inner.by_business, business, id);
        }
        inner.subs.insert(id, subs);
        inner.sessions.insert(id, handle);
        first
    }

    /// Removes a session. Returns whether it was the user's last on this node.
    pub(crate) fn unregister(&self, handle: &SessionHandle) -> bool {
        let id = handle.id;
        let mut inner = self.write();
        inner.sessions.remove(&id);
        if let Some(subs) = inner.subs.remove(&id) {
            for tag in &subs.tags {
                remove_from(&mut inner.by_tag, tag, id);
            }
            for business in &subs.businesses {
                remove_from(&mut inner.by_business, business, id);
            }
        }
        remove_from(&mut inner.by_user, &handle.unique_id, id);
        !inner.by_user.contains_key(&handle.unique_id)
    }

    /// Adds subscriptions to a session, all or nothing.
    pub(crate) fn subscribe(
        &self,
        id: u64,
        tags: &[String],
        businesses: &[String],
    ) -> Result<(), TooManySubscriptions> {
        let mut inner = self.write();
        let Some(subs) = inner.subs.get_mut(&id) else {
            return Ok(());
        };
        let new_tags: Vec<&String> = tags.iter().filter(|t| !subs.tags.contains(*t)).collect();
        let new_businesses: Vec<&String> = businesses
            .iter()
            .filter(|b| !subs.businesses.contains(*b))
            .collect();
        let total = subs.tags.len() + subs.businesses.len() + new_tags.len() + new_businesses.len();
        if total > self.max_subscriptions {
            return Err(TooManySubscriptions);
        }
        subs.tags.extend(new_tags.iter().map(|t| (*t).clone()));
        subs.businesses
            .extend(new_businesses.iter().map(|b| (*b).clone()));
        for tag in new_tags {
            add_to(&mut inner.by_tag, tag, id);
        }
        for business in new_businesses {
            add_to(&mut inner.by_business, business, id);
        }
        Ok(())
    }

    /// Removes subscriptions from a session; unknown names are ignored.
    pub(crate) fn unsubscribe(&self, id: u64, tags: &[String], businesses: &[String]) {
        let mut inner = self.write();
        let Some(subs) = inner.subs.get_mut(&id) else {
            return;
        };
        let gone_tags: Vec<String> = tags
            .iter()
            .filter(|t| subs.tags.remove(*t))
            .cloned()
            .collect();
        let gone_businesses: Vec<String> = businesses
            .iter()
            .filter(|b| subs.businesses.remove(*b))
            .cloned()
            .collect();
        for tag in &gone_tags {
            remove_from(&mut inner.by_tag, tag, id);
        }
        for business in &gone_businesses {
            remove_from(&mut inner.by_business, business, id);
        }
    }

    /// Whether a session of `unique_id` is connected here.
    pub fn has_user(&self, unique_id: &str) -> bool {
        self.read().by_user.contains_key(unique_id)
    }

    /// The sessions of `unique_id` connected here, counted by client type.
    pub fn sessions_of(&self, unique_id: &str) -> BTreeMap<String, usize> {
        let inner = self.read();
        let mut counts = BTreeMap::new();
        for id in inner.by_user.get(unique_id).into_iter().flatten() {
            if let Some(handle) = inner.sessions.get(id) {
                *counts.entry(handle.client_type.clone()).or_default() += 1;
            }
        }
        counts
    }

    /// Number of sessions connected here.
    pub fn session_count(&self) -> usize {
        self.read().sessions.len()
    }

    /// Queues `delivery` for every matching local session. Returns how many
    /// sessions it was queued for.
    pub fn fan_out(&self, delivery: &Delivery) -> usize {
        self.fan_out_counted(delivery).delivered
    }

    /// Like [`Hub::fan_out`], saying what became of each matching session.
    pub fn fan_out_counted(&self, delivery: &Delivery) -> FanOut {
        let env = &delivery.envelope;
        let client_type = env.to_client_type.as_deref();
        let matches = |h: &SessionHandle| client_type.is_none_or(|c| h.client_type == c);

        // One copy per delivery into a shareable buffer; none per session.
        let frame = Outbound::from(&*delivery.text);

        // Offered under the read lock: an offer never waits (a full queue
        // ends its session without taking a hub lock), and offering in place
        // saves cloning and dropping an `Arc` per session, which was the
        // largest cost of a broadcast after the socket writes themselves.
        let inner = self.read();
        let mut counts = FanOut::default();
        let mut offer = |h: &SessionHandle| {
            if !matches(h) {
                return;
            }
            match h.offer(&frame) {
                Offered::Queued => counts.delivered += 1,
                Offered::Full => counts.dropped_slow_client += 1,
                Offered::Closing => counts.dropped_closing += 1,
            }
        };
        let ids: Vec<u64> = match env.effective_send_type() {
            SendType::Broadcast => {
                inner.sessions.values().for_each(|h| offer(h));
                return counts;
            }
            SendType::Unicast => {
                let user = env
                    .to_unique_id
                    .as_deref()
                    .and_then(|u| inner.by_user.get(u));
                user.map(|ids| ids.iter().copied().collect())
                    .unwrap_or_default()
            }
            SendType::Tag => union(&inner.by_tag, &env.tags),
            SendType::Business => union(&inner.by_business, &env.businesses),
        };
        ids.iter()
            .filter_map(|id| inner.sessions.get(id))
            .for_each(|h| offer(h));
        counts
    }
}

/// The ids of the sessions subscribed to any of `keys`, each once.
fn union(index: &HashMap<String, HashSet<u64>>, keys: &[String]) -> Vec<u64> {
    if let [key] = keys {
        return index
            .get(key)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default();
    }
    let mut ids: HashSet<u64> = HashSet::new();
    for key in keys {
        if let Some(set) = index.get(key) {
            ids.extend(set.iter().copied());
        }
    }
    ids.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, MessageType};

    fn session(
        hub: &Hub,
        user: &str,
        client: &str,
        tags: &[&str],
        queue: usize,
    ) -> (Arc<SessionHandle>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(queue);
        let handle = Arc::new(SessionHandle::new(
            hub.next_session_id(),
            user.into(),
            client.into(),
            tx,
        ));
        let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        hub.register(handle.clone(), &tags, &[]);
        (handle, rx)
    }

    fn delivery(
        send_type: SendType,
        to: Option<&str>,
        tags: &[&str],
        client: Option<&str>,
    ) -> Delivery {
        let mut env = Envelope::new(MessageType::ServerToClient);
        env.send_type = Some(send_type);
        env.to_unique_id = to.map(String::from);
        env.to_client_type = client.map(String::from);
        env.tags = tags.iter().map(|t| t.to_string()).collect();
        Delivery::new(env)
    }

    /// Unicast reaches all of a user's sessions, narrowed by client type.
    #[test]
    fn unicast_reaches_every_session_of_the_user() {
        let hub = Hub::default();
        let (_a, mut ra) = session(&hub, "u1", "H5", &[], 4);
        let (_b, mut rb) = session(&hub, "u1", "APP", &[], 4);
        let (_c, mut rc) = session(&hub, "u2", "H5", &[], 4);
        assert_eq!(
            hub.fan_out(&delivery(SendType::Unicast, Some("u1"), &[], None)),
            2
        );
        assert!(ra.try_recv().is_ok() && rb.try_recv().is_ok() && rc.try_recv().is_err());
        assert_eq!(
            hub.fan_out(&delivery(SendType::Unicast, Some("u1"), &[], Some("APP"))),
            1
        );
        assert!(ra.try_recv().is_err() && rb.try_recv().is_ok());
    }

    /// A session subscribed to two of the targeted tags gets one copy.
    #[test]
    fn tag_send_reaches_each_session_once() {
        let hub = Hub::default();
        let (_a, mut ra) = session(&hub, "u1", "H5", &["x", "y"], 4);
        let (_b, _rb) = session(&hub, "u2", "H5", &["z"], 4);
        assert_eq!(
            hub.fan_out(&delivery(SendType::Tag, None, &["x", "y"], None)),
            1
        );
        assert!(ra.try_recv().is_ok() && ra.try_recv().is_err());
    }

    /// A full queue ends the slow session and no one else is affected.
    #[test]
    fn full_queue_ends_only_the_slow_session() {
        let hub = Hub::default();
        let (slow, _rs) = session(&hub, "slow", "H5", &[], 1);
        let (_ok, mut rok) = session(&hub, "ok", "H5", &[], 4);
        let broadcast = delivery(SendType::Broadcast, None, &[], None);
        assert_eq!(hub.fan_out(&broadcast), 2);
        assert_eq!(hub.fan_out(&broadcast), 1);
        assert_eq!(slow.end.get(), Some(&SessionEnd::SlowClient));
        assert!(rok.try_recv().is_ok() && rok.try_recv().is_ok());
    }

    /// Unregistering the last session reports the user gone and drops indexes.
    #[test]
    fn unregister_cleans_up() {
        let hub = Hub::default();
        let (a, _ra) = session(&hub, "u1", "H5", &["t"], 4);
        let (b, _rb) = session(&hub, "u1", "H5", &[], 4);
        assert!(!hub.unregister(&a));
        assert!(hub.unregister(&b));
        assert!(!hub.has_user("u1"));
        assert!(hub.read().by_tag.is_empty());
    }
}
