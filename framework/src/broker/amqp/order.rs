//! Keeps events for one user in the order RabbitMQ handed them over.
//!
//! The inbound queue has a single active consumer, so this node receives
//! events in publication order, but it processes up to `broker.prefetch` of
//! them at once. Events addressed to one user (`UNICAST` with `toUniqueId`)
//! must not overtake each other, or one producer's pushes could reach the
//! user's inbox, and so the user, out of order. A [`Turn`] is taken for each
//! event in arrival order, synchronously in the consumer's callback; an
//! event waits for the turn before it, per user, and events for different
//! users (and group sends) run in parallel.
//!
//! A retried event goes to the back of the queue, so a failure that is
//! retried lets later events of the same user pass it; that is the one case
//! where order is not kept, and it is documented.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Hands out turns per key. Holds one entry per key with an event in
/// flight, so its size is bounded by the prefetch.
#[derive(Default)]
pub(super) struct Sequencer {
    tails: Mutex<HashMap<String, Tail>>,
}

struct Tail {
    /// Which turn is last in line.
    generation: u64,
    /// Resolves when that turn is done.
    done: oneshot::Receiver<()>,
}

/// One event's place in line; dropping it lets the next event of its key go.
pub(super) struct Turn {
    sequencer: Arc<Sequencer>,
    key: Option<String>,
    generation: u64,
    wait: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
}

impl Sequencer {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tail>> {
        // Each critical section is one map operation; a poisoned map is
        // still consistent.
        self.tails
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Takes the next turn for `key`; `None` takes no turn (runs at once).
    /// Must be called in arrival order.
    pub(super) fn turn(self: &Arc<Self>, key: Option<String>) -> Turn {
        let Some(key) = key else {
            return Turn {
                sequencer: self.clone(),
                key: None,
                generation: 0,
                wait: None,
                done: None,
            };
        };
        let (done_tx, done_rx) = oneshot::channel();
        let mut tails = self.lock();
        let generation = tails.get(&key).map_or(1, |t| t.generation + 1);
        let previous = tails.insert(
            key.clone(),
            Tail {
                generation,
                done: done_rx,
            },
        );
        Turn {
            sequencer: self.clone(),
            key: Some(key),
            generation,
            wait: previous.map(|t| t.done),
            done: Some(done_tx),
        }
    }
}

impl Turn {
    /// Waits until the event before this one, for the same key, is done.
    /// A predecessor that ended without finishing (a panic) counts as done.
    pub(super) async fn ready(&mut self) {
        if let Some(wait) = self.wait.take() {
            let _ = wait.await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        // Forget the key when no later turn was taken, so the map only
        // holds keys with events in flight.
        let mut tails = self.sequencer.lock();
        if tails
            .get(&key)
            .is_some_and(|t| t.generation == self.generation)
        {
            tails.remove(&key);
        }
        drop(tails);
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

/// The ordering key of an inbound event body: its `toUniqueId` when it is
/// addressed to one user, else none. A body that does not parse gets no key
/// (it is dead-lettered without waiting).
pub(super) fn key_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Target {
        #[serde(rename = "toUniqueId")]
        to_unique_id: Option<String>,
        #[serde(rename = "sendType")]
        send_type: Option<String>,
    }
    let target: Target = serde_json::from_slice(body).ok()?;
    match target.send_type.as_deref() {
        None | Some("UNICAST") => target.to_unique_id,
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A later turn of one key waits for the earlier one; another key and
    /// keyless turns do not wait; the map empties when all are done.
    #[tokio::test]
    async fn turns_of_one_key_run_in_order() {
        let sequencer = Arc::new(Sequencer::default());
        let first = sequencer.turn(Some("u".into()));
        let mut second = sequencer.turn(Some("u".into()));
        let mut other = sequencer.turn(Some("v".into()));
        let mut free = sequencer.turn(None);
        other.ready().await;
        free.ready().await;

        let waiting = tokio::spawn(async move {
            second.ready().await;
            second
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        let second = waiting.await.unwrap();
        drop((second, other, free));
        assert!(sequencer.lock().is_empty());
    }

    /// Only single-user addressing is keyed.
    #[test]
    fn keys_only_unicasts() {
        assert_eq!(key_of(br#"{"toUniqueId":"u"}"#).as_deref(), Some("u"));
        assert_eq!(
            key_of(br#"{"toUniqueId":"u","sendType":"UNICAST"}"#).as_deref(),
            Some("u")
        );
        assert_eq!(key_of(br#"{"toUniqueId":"u","sendType":"TAG"}"#), None);
        assert_eq!(key_of(b"nope"), None);
    }
}
