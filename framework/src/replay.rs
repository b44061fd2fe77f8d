//! Single-use tokens: the record of token ids that already connected.
//!
//! A connection URL carries its token, and URLs leak (browser history, proxy
//! logs, a shared screenshot). Refusing a second upgrade with the same token
//! shrinks what a leaked URL is worth to nothing once its owner connected.
//!
//! Each node keeps a [`UsedTokens`] record. An entry leaves when its token
//! expires, since an expired token is refused anyway, so the record holds at
//! most the tokens redeemed on this node within one `auth.token_ttl_secs`,
//! and `limits.max_used_tokens` caps even that. A full record refuses new
//! claims (fail closed) rather than forgetting live ones.
//!
//! The record is per node. Across nodes the broker's
//! [`Broker::claim_token`](crate::broker::Broker::claim_token) is asked as
//! well; the embedded broker has no other node to ask.
//!
//! Entries are 64-bit keyed hashes of the token id, not the id itself: the
//! record stays small (about 40 bytes an entry) and holds nothing that could
//! be turned back into a token. The key is random per process, so nobody
//! can make two ids collide on purpose; an accidental collision (odds about
//! n²/2⁶⁵) refuses one genuine token, whose client simply asks for another.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

/// The outcome of [`UsedTokens::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First use: the token may connect.
    Fresh,
    /// The token connected before: refuse with 401.
    Reused,
    /// The record is at its cap: refuse with 503 until entries expire.
    Full,
}

#[derive(Debug, Default)]
struct Record {
    used: HashSet<u64>,
    /// (expires_at, fingerprint), soonest expiry on top.
    expiry: BinaryHeap<Reverse<(u64, u64)>>,
}

/// The used-token record of one node. See the module docs.
#[derive(Debug)]
pub struct UsedTokens {
    cap: usize,
    hasher: RandomState,
    record: Mutex<Record>,
}

impl UsedTokens {
    /// A record holding at most `cap` live entries.
    pub fn new(cap: usize) -> Self {
        UsedTokens {
            cap,
            hasher: RandomState::new(),
            record: Mutex::new(Record::default()),
        }
    }

    /// Marks `token_id`, valid until `expires_at` (seconds since the epoch),
    /// as used at `now`, unless it already was.
    pub fn claim(&self, token_id: &str, expires_at: u64, now: u64) -> Claim {
        let fingerprint = self.hasher.hash_one(token_id);
        let mut record = self
            .record
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());

        // Forget expired tokens first: they cannot be presented again.
        while let Some(Reverse((at, old))) = record.expiry.peek().copied() {
            if at > now {
                break;
            }
            record.expiry.pop();
            record.used.remove(&old);
        }

        if record.used.contains(&fingerprint) {
            return Claim::Reused;
        }
        if record.used.len() >= self.cap {
            return Claim::Full;
        }
        record.used.insert(fingerprint);
        record.expiry.push(Reverse((expires_at, fingerprint)));
        Claim::Fresh
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.record
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .used
            .len()
    }

    /// Whether the record is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token is fresh once, then reused until it expires and is forgotten.
    #[test]
    fn second_claim_is_refused_until_expiry() {
        let record = UsedTokens::new(10);
        assert_eq!(record.claim("t1", 100, 50), Claim::Fresh);
        assert_eq!(record.claim("t1", 100, 60), Claim::Reused);
        assert_eq!(record.claim("t2", 120, 60), Claim::Fresh);
        assert_eq!(record.len(), 2);
        assert_eq!(record.claim("t3", 200, 100), Claim::Fresh);
        assert_eq!(record.len(), 2, "t1 expired at 100 and was dropped");
    }

    /// A full record refuses new tokens and recovers as entries expire.
    #[test]
    fn full_record_fails_closed() {
        let record = UsedTokens::new(2);
        assert_eq!(record.claim("a", 100, 0), Claim::Fresh);
        assert_eq!(record.claim("b", 200, 0), Claim::Fresh);
        assert_eq!(record.claim("c", 200, 0), Claim::Full);
        assert_eq!(record.claim("a", 100, 0), Claim::Reused);
        assert_eq!(record.claim("c", 200, 100), Claim::Fresh);
    }
}
