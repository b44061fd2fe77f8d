//! The `limits.*` section: what one client, one user and one node may use.
//!
//! Every limit protects the node from one kind of abuse or accident, and
//! each has a default that a typical deployment can keep. Where 0 means
//! "unlimited", the field says so; elsewhere 0 is refused.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Limits per session, per user and per node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Frames a session may send per second, on average, before further
    /// frames are dropped with `ERROR` `RATE_LIMITED`. Counts text and binary
    /// frames, not pings or pongs. Default 20; 0 = unlimited.
    pub frames_per_sec: u32,
    /// Frames a session may send at once above `frames_per_sec` after a quiet
    /// spell (the bucket's size). Default 40; must be at least 1 when
    /// `frames_per_sec` is set.
    pub frame_burst: u32,
    /// Bytes of frame payload a session may send per second, on average.
    /// Default 262144 (256 KiB/s); 0 = unlimited.
    pub bytes_per_sec: u64,
    /// Bytes a session may send at once after a quiet spell. Must be at least
    /// `ws.max_message_bytes`, or a frame of the largest allowed size could
    /// never pass. Default 1048576 (1 MiB).
    pub byte_burst: u64,
    /// Rate-limited frames within `rate_limited_window_secs` after which the
    /// session is closed with 1008 (policy violation): a client that keeps
    /// sending after being told to slow down is not going to stop. Default
    /// 20; 0 = never close, only drop.
    pub rate_limited_close_after: u32,
    /// The window, in seconds, over which rate-limited frames are counted
    /// for `rate_limited_close_after`. Default 10; must be at least 1.
    pub rate_limited_window_secs: u64,
    /// Most tags plus businesses one session may be subscribed to. A token
    /// request asking for more is refused with 400; a `SUBSCRIBE` that would
    /// pass it is refused with `INVALID_MESSAGE` and changes nothing.
    /// Bounds the hub's memory per session. Default 256; 0 is refused.
    pub max_subscriptions_per_session: usize,
    /// Most sessions one user (`uniqueId`) may hold on this node at once. A
    /// further upgrade is refused with HTTP 429 before the upgrade, and the
    /// sessions already open are left alone (closing the oldest instead
    /// would let a stolen token knock the owner off). The count is per node:
    /// with N nodes a user may hold up to N times this. Default 16;
    /// 0 = unlimited.
    pub max_sessions_per_user: usize,
    /// Most WebSocket connections this node holds at once, counting upgrades
    /// in progress. When it is reached, the token endpoint and the upgrade
    /// answer HTTP 503 so a load balancer can send clients elsewhere. Each
    /// connection costs at least the 128 KiB read buffer that tungstenite
    /// reserves, plus the send queue. Default 10000; 0 = unlimited.
    pub max_connections: usize,
    /// Most used tokens this node remembers at once, to refuse a second
    /// connect with the same token. Entries leave when their token expires,
    /// so the record holds at most the tokens redeemed here within one
    /// `auth.token_ttl_secs`; this is the hard cap above that (about 40 bytes
    /// each). When it is full, upgrades are refused with HTTP 503 until
    /// entries expire: failing closed keeps tokens single-use. Default
    /// 200000; 0 is refused.
    pub max_used_tokens: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            frames_per_sec: 20,
            frame_burst: 40,
            bytes_per_sec: 256 * 1024,
            byte_burst: 1024 * 1024,
            rate_limited_close_after: 20,
            rate_limited_window_secs: 10,
            max_subscriptions_per_session: 256,
            max_sessions_per_user: 16,
            max_connections: 10_000,
            max_used_tokens: 200_000,
        }
    }
}

impl LimitsConfig {
    /// Checks the section against itself and the largest frame allowed.
    pub(super) fn validate(&self, max_message_bytes: usize) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        if self.frames_per_sec != 0 && self.frame_burst == 0 {
            return invalid("limits.frame_burst", "must be at least 1");
        }
        if self.bytes_per_sec != 0 && self.byte_burst < max_message_bytes as u64 {
            return invalid(
                "limits.byte_burst",
                "must be at least ws.max_message_bytes, or the largest frame could never pass",
            );
        }
        if self.rate_limited_window_secs == 0 {
            return invalid("limits.rate_limited_window_secs", "must be at least 1");
        }
        if self.max_subscriptions_per_session == 0 {
            return invalid("limits.max_subscriptions_per_session", "must be at least 1");
        }
        if self.max_used_tokens == 0 {
            return invalid("limits.max_used_tokens", "must be at least 1");
        }
        Ok(())
    }
}
