//! Limits that keep one client, one user or a crowd from taking a node down.
//!
//! Two mechanisms live here:
//!
//! - [`Admission`] counts connections per node and per user. An upgrade
//!   takes a [`Permit`] *before* the socket is upgraded and the permit is
//!   released when the session ends (or the upgrade never happens), so the
//!   caps hold even while many upgrades are in flight at once.
//! - [`SessionLimiter`] meters what one session sends: frames per second and
//!   bytes per second, each a token bucket with a burst. A frame over either
//!   rate is dropped and answered with `ERROR` `RATE_LIMITED`; a session that
//!   keeps sending while limited is closed with 1008.
//!
//! The buckets are hand-rolled rather than taken from `governor`: each one is
//! owned by a single session task, so it needs no atomics, and it reads the
//! time it is given, which lets tests drive it with Tokio's paused clock;
//! `governor` brings its own clock and lock-free state for limiters shared
//! between threads, which this does not need.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::LimitsConfig;

/// Why an upgrade was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// The node holds `limits.max_connections` connections.
    #[error("this node is at its connection limit")]
    NodeFull,
    /// The user holds `limits.max_sessions_per_user` sessions here.
    #[error("too many sessions for this user")]
    UserFull,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_user: HashMap<String, usize>,
}

/// Connection counts of one node. See the module docs.
#[derive(Debug)]
pub struct Admission {
    max_connections: usize,
    max_per_user: usize,
    counts: Mutex<Counts>,
}

/// One admitted connection; dropping it gives the place back.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    unique_id: String,
}

impl Admission {
    /// Counts against `max_connections` and `max_per_user`; 0 is unlimited.
    pub fn new(max_connections: usize, max_per_user: usize) -> Arc<Self> {
        Arc::new(Admission {
            max_connections,
            max_per_user,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Each critical section is a few integer updates that cannot panic
        // half-way, so a poisoned lock still holds consistent counts.
        self.counts
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Takes a place for a connection of `unique_id`.
    ///
    /// # Errors
    ///
    /// [`AdmissionError`] when the node or the user is at its cap.
    pub fn admit(self: &Arc<Self>, unique_id: &str) -> Result<Permit, AdmissionError> {
        let mut counts = self.counts();
        if self.max_connections != 0 && counts.total >= self.max_connections {
            return Err(AdmissionError::NodeFull);
        }
        let user = counts.per_user.get(unique_id).copied().unwrap_or(0);
        if self.max_per_user != 0 && user >= self.max_per_user {
            return Err(AdmissionError::UserFull);
        }
        counts.total += 1;
        counts.per_user.insert(unique_id.to_owned(), user + 1);
        Ok(Permit {
            admission: self.clone(),
            unique_id: unique_id.to_owned(),
        })
    }

    /// Whether the node is at `limits.max_connections`.
    pub fn is_full(&self) -> bool {
        self.max_connections != 0 && self.counts().total >= self.max_connections
    }

    /// Connections admitted and not yet ended.
    pub fn connections(&self) -> usize {
        self.counts().total
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.admission.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_user.get_mut(&self.unique_id) {
            *n -= 1;
            if *n == 0 {
                counts.per_user.remove(&self.unique_id);
            }
        }
    }
}

/// A token bucket: `rate` units a second, holding at most `burst`.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    /// `None` when `rate` is 0 (unlimited).
    fn new(rate: u64, burst: u64, now: Instant) -> Option<Self> {
        (rate != 0).then_some(Bucket {
            rate: rate as f64,
            burst: burst as f64,
            level: burst as f64,
            at: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.rate).min(self.burst);
        self.at = now;
    }
}

/// What to do with a frame, decided by [`SessionLimiter::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limits: handle it.
    Pass,
    /// Over a rate: drop it and answer `RATE_LIMITED`.
    Limited,
    /// Over a rate once too often within the window: close with 1008.
    Close,
}

/// The send limits of one session. See the module docs.
#[derive(Debug)]
pub struct SessionLimiter {
    frames: Option<Bucket>,
    bytes: Option<Bucket>,
    close_after: usize,
    window: Duration,
    limited_at: VecDeque<Instant>,
}

impl SessionLimiter {
    /// A limiter with full buckets at `now`.
    pub fn new(limits: &LimitsConfig, now: Instant) -> Self {
        SessionLimiter {
            frames: Bucket::new(
                u64::from(limits.frames_per_sec),
                u64::from(limits.frame_burst),
                now,
            ),
            bytes: Bucket::new(limits.bytes_per_sec, limits.byte_burst, now),
            close_after: limits.rate_limited_close_after as usize,
            window: Duration::from_secs(limits.rate_limited_window_secs),
            limited_at: VecDeque::new(),
        }
    }

    /// Meters one frame of `len` bytes received at `now`.
    pub fn check(&mut self, len: usize, now: Instant) -> Verdict {
        let len = len as f64;
        if let Some(frames) = &mut self.frames {
            frames.refill(now);
        }
        if let Some(bytes) = &mut self.bytes {
            bytes.refill(now);
        }

        // Take from both buckets or from neither: a dropped frame must not
        // use up the other allowance.
        let frame_ok = self.frames.as_ref().is_none_or(|b| b.level >= 1.0);
        let bytes_ok = self.bytes.as_ref().is_none_or(|b| b.level >= len);
        if frame_ok && bytes_ok {
            if let Some(frames) = &mut self.frames {
                frames.level -= 1.0;
            }
            if let Some(bytes) = &mut self.bytes {
                bytes.level -= len;
            }
            return Verdict::Pass;
        }

        if self.close_after == 0 {
            return Verdict::Limited;
        }
        while self
            .limited_at
            .front()
            .is_some_and(|&at| now.saturating_duration_since(at) >= self.window)
        {
            self.limited_at.pop_front();
        }
        self.limited_at.push_back(now);
        if self.limited_at.len() >= self.close_after {
            Verdict::Close
        } else {
            Verdict::Limited
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(fps: u32, burst: u32, bps: u64, byte_burst: u64, close_after: u32) -> LimitsConfig {
        LimitsConfig {
            frames_per_sec: fps,
            frame_burst: burst,
            bytes_per_sec: bps,
            byte_burst,
            rate_limited_close_after: close_after,
            rate_limited_window_secs: 10,
            ..LimitsConfig::default()
        }
    }

    /// The frame bucket passes a burst, drops, and refills with time.
    #[test]
    fn frame_bucket_bursts_and_refills() {
        let t0 = Instant::now();
        let mut limiter = SessionLimiter::new(&limits(2, 3, 0, 0, 0), t0);
        for _ in 0..3 {
            assert_eq!(limiter.check(10, t0), Verdict::Pass);
        }
        assert_eq!(limiter.check(10, t0), Verdict::Limited);
        assert_eq!(
            limiter.check(10, t0 + Duration::from_millis(500)),
            Verdict::Pass
        );
        assert_eq!(
            limiter.check(10, t0 + Duration::from_millis(500)),
            Verdict::Limited
        );
    }

    /// The byte bucket limits by size, and a dropped frame costs nothing.
    #[test]
    fn byte_bucket_limits_by_size() {
        let t0 = Instant::now();
        let mut limiter = SessionLimiter::new(&limits(100, 100, 1000, 1000, 0), t0);
        assert_eq!(limiter.check(600, t0), Verdict::Pass);
        assert_eq!(limiter.check(600, t0), Verdict::Limited);
        assert_eq!(limiter.check(400, t0), Verdict::Pass);
        assert_eq!(
            limiter.check(600, t0 + Duration::from_millis(600)),
            Verdict::Pass
        );
    }

    /// Repeated limiting within the window closes; spread out, it does not.
    #[test]
    fn sustained_abuse_closes() {
        let t0 = Instant::now();
        let mut limiter = SessionLimiter::new(&limits(1, 1, 0, 0, 3), t0);
        assert_eq!(limiter.check(1, t0), Verdict::Pass);
        assert_eq!(limiter.check(1, t0), Verdict::Limited);
        assert_eq!(limiter.check(1, t0), Verdict::Limited);
        assert_eq!(limiter.check(1, t0), Verdict::Close);

        let mut limiter = SessionLimiter::new(&limits(1, 1, 0, 0, 2), t0);
        let mut now = t0;
        for _ in 0..5 {
            assert_eq!(limiter.check(1, now), Verdict::Pass);
            assert_eq!(limiter.check(1, now), Verdict::Limited);
            now += Duration::from_secs(11);
        }
    }

    /// Permits count per node and per user and give their place back.
    #[test]
    fn admission_caps_and_releases() {
        let admission = Admission::new(3, 2);
        let a1 = admission.admit("a").unwrap();
        let _a2 = admission.admit("a").unwrap();
        assert_eq!(admission.admit("a").unwrap_err(), AdmissionError::UserFull);
        let _b = admission.admit("b").unwrap();
        assert!(admission.is_full());
        assert_eq!(admission.admit("c").unwrap_err(), AdmissionError::NodeFull);
        drop(a1);
        assert!(!admission.is_full());
        let _a3 = admission.admit("a").unwrap();
        assert_eq!(admission.connections(), 3);
    }
}
