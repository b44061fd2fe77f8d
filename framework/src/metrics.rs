//! Prometheus metrics, exposed as text at `GET /metrics`.
//!
//! Each node owns one [`Metrics`] with its own registry (not a process-wide
//! one), so several nodes in one process, as in the tests, report their own
//! numbers. We use the `prometheus` crate: it is the long-standing client
//! maintained by TiKV, gives typed labelled metrics on an explicit registry,
//! and encodes the text format without running an HTTP server of its own,
//! so `/metrics` is one more warp route. (`metrics` with its Prometheus
//! exporter records into one global recorder, which would merge the nodes
//! of a test.)
//!
//! Label values are always from small fixed sets: message types, outcomes,
//! reasons, registered business types, and client types capped at
//! [`MAX_CLIENT_TYPE_LABELS`] distinct values (later ones report as
//! `other`). No metric is ever labelled with a user, a session, a token or
//! a message id.
//!
//! `docs/operations.md` says what each metric means and which ones to alert
//! on.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::envelope::MessageType;

/// Distinct `client_type` label values kept; any further client type is
/// counted as `other`, so a client inventing types cannot grow the series.
pub const MAX_CLIENT_TYPE_LABELS: usize = 32;

/// The label used for client types past [`MAX_CLIENT_TYPE_LABELS`].
pub const OTHER_CLIENT_TYPE: &str = "other";

/// Why a session ended, as labels of `switchboard_session_ends_total`.
const SESSION_END_REASONS: &[&str] = &[
    "client_closed",
    "idle_timeout",
    "message_too_big",
    "shutdown",
    "slow_client",
    "rate_limited",
    "transport_error",
    "kicked",
];

/// What became of a delivery at this node's hub, as labels of
/// `switchboard_deliveries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Queued for a session (one count per session).
    Delivered,
    /// The session's queue was full; the session is closed as a slow client
    /// (one count per session).
    DroppedSlowClient,
    /// The session was already closing (one count per session).
    DroppedClosing,
    /// No session on this node matched (one count per delivery).
    NoLocalSession,
}

impl DeliveryOutcome {
    const ALL: [DeliveryOutcome; 4] = [
        DeliveryOutcome::Delivered,
        DeliveryOutcome::DroppedSlowClient,
        DeliveryOutcome::DroppedClosing,
        DeliveryOutcome::NoLocalSession,
    ];

    fn label(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::DroppedSlowClient => "dropped_slow_client",
            DeliveryOutcome::DroppedClosing => "dropped_closing",
            DeliveryOutcome::NoLocalSession => "no_local_session",
        }
    }
}

/// Why an upgrade was refused before it happened, as labels of
/// `switchboard_upgrades_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeRefusal {
    /// `Origin` not in `ws.allowed_origins` (403).
    Origin,
    /// Tampered or malformed token (401).
    InvalidToken,
    /// Expired token (401).
    ExpiredToken,
    /// Token already used (401).
    ReusedToken,
    /// `limits.max_sessions_per_user` reached (429).
    UserSessionLimit,
    /// `limits.max_connections` reached (503).
    NodeFull,
    /// The used-token record is full or the broker cannot check (503).
    TokenCheckUnavailable,
    /// The node is draining (503).
    ShuttingDown,
}

impl UpgradeRefusal {
    const ALL: [UpgradeRefusal; 8] = [
        UpgradeRefusal::Origin,
        UpgradeRefusal::InvalidToken,
        UpgradeRefusal::ExpiredToken,
        UpgradeRefusal::ReusedToken,
        UpgradeRefusal::UserSessionLimit,
        UpgradeRefusal::NodeFull,
        UpgradeRefusal::TokenCheckUnavailable,
        UpgradeRefusal::ShuttingDown,
    ];

    /// The label value, also used as the `reason` log field.
    pub fn label(self) -> &'static str {
        match self {
            UpgradeRefusal::Origin => "origin",
            UpgradeRefusal::InvalidToken => "invalid_token",
            UpgradeRefusal::ExpiredToken => "expired_token",
            UpgradeRefusal::ReusedToken => "reused_token",
            UpgradeRefusal::UserSessionLimit => "user_session_limit",
            UpgradeRefusal::NodeFull => "node_full",
            UpgradeRefusal::TokenCheckUnavailable => "token_check_unavailable",
            UpgradeRefusal::ShuttingDown => "shutting_down",
        }
    }
}

/// Counters for broker implementations to increment. Cheap to clone; every
/// clone counts into the same node's registry.
#[derive(Clone)]
pub struct BrokerMetrics {
    publishes: IntCounterVec,
    redeliveries: IntCounter,
    dead_letters: IntCounter,
}

impl BrokerMetrics {
    /// A publish (event, delivery or outbound message) was confirmed.
    pub fn publish_confirmed(&self) {
        self.publishes.with_label_values(&["confirmed"]).inc();
    }

    /// A publish failed for good (nack after retries, timeout, unavailable).
    pub fn publish_failed(&self) {
        self.publishes.with_label_values(&["failed"]).inc();
    }

    /// A consumed message arrived flagged as redelivered.
    pub fn redelivered(&self) {
        self.redeliveries.inc();
    }

    /// An event was dead-lettered.
    pub fn dead_lettered(&self) {
        self.dead_letters.inc();
    }
}

impl std::fmt::Debug for BrokerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerMetrics { .. }")
    }
}

/// Every metric of one node. See the module docs.
pub struct Metrics {
    registry: Registry,
    connections: IntGauge,
    sessions: IntGaugeVec,
    frames_received: IntCounterVec,
    frames_sent: IntCounterVec,
    deliveries: IntCounterVec,
    handler_seconds: HistogramVec,
    session_ends: IntCounterVec,
    slow_client_disconnects: IntCounter,
    rate_limited_frames: IntCounter,
    upgrades_refused: IntCounterVec,
    tokens_issued: IntCounter,
    events_published: IntCounterVec,
    broker_ready: IntGauge,
    draining: IntGauge,
    used_tokens: IntGauge,
    broker: BrokerMetrics,
    client_types: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics { .. }")
    }
}

/// Registers `metric` and hands it back; names are fixed and unique, so a
/// failure is a programming error caught by the tests.
fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        registry,
        IntCounter::new(name, help).expect("valid metric name"),
    )
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric name");
    register(registry, vec)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(
        registry,
        IntGauge::new(name, help).expect("valid metric name"),
    )
}

impl Metrics {
    /// A fresh set of metrics with its own registry. `business_types` (the
    /// registered ones) get their latency series up front, at zero.
    pub fn new(business_types: &[&str]) -> Self {
        let r = Registry::new();
        let handler_seconds = HistogramVec::new(
            HistogramOpts::new(
                "switchboard_handler_duration_seconds",
                "Time a business handler took for one client request or service event",
            )
            .buckets(vec![
                0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["business_type", "source"],
        )
        .expect("valid metric name");
        let metrics = Metrics {
            connections: gauge(&r, "switchboard_connections", "Open WebSocket sessions"),
            sessions: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "switchboard_sessions",
                        "Open WebSocket sessions by client type (at most 32 types, then other)",
                    ),
                    &["client_type"],
                )
                .expect("valid metric name"),
            ),
            frames_received: counter_vec(
                &r,
                "switchboard_frames_received_total",
                "Frames received from clients by messageType (invalid, binary when unparsed)",
                "message_type",
            ),
            frames_sent: counter_vec(
                &r,
                "switchboard_frames_sent_total",
                "Frames queued or written to clients by messageType",
                "message_type",
            ),
            deliveries: counter_vec(
                &r,
                "switchboard_deliveries_total",
                "Deliveries at this node's hub by outcome",
                "outcome",
            ),
            handler_seconds: register(&r, handler_seconds),
            session_ends: counter_vec(
                &r,
                "switchboard_session_ends_total",
                "Sessions ended, by reason",
                "reason",
            ),
            slow_client_disconnects: counter(
                &r,
                "switchboard_slow_client_disconnects_total",
                "Sessions closed because the client did not read (close code 4001)",
            ),
            rate_limited_frames: counter(
                &r,
                "switchboard_rate_limited_frames_total",
                "Client frames dropped with RATE_LIMITED",
            ),
            upgrades_refused: counter_vec(
                &r,
                "switchboard_upgrades_refused_total",
                "WebSocket upgrades refused before the upgrade, by reason",
                "reason",
            ),
            tokens_issued: counter(
                &r,
                "switchboard_tokens_issued_total",
                "Connection tokens issued",
            ),
            events_published: counter_vec(
                &r,
                "switchboard_events_published_total",
                "Service events handed in over POST /api/publish, by outcome",
                "outcome",
            ),
            broker_ready: gauge(
                &r,
                "switchboard_broker_ready",
                "1 while the broker is usable, else 0",
            ),
            draining: gauge(
                &r,
                "switchboard_draining",
                "1 while the node drains, else 0",
            ),
            used_tokens: gauge(
                &r,
                "switchboard_used_tokens",
                "Entries in this node's used-token record",
            ),
            broker: BrokerMetrics {
                publishes: counter_vec(
                    &r,
                    "switchboard_broker_publishes_total",
                    "Broker publishes by outcome (confirmed, failed)",
                    "outcome",
                ),
                redeliveries: counter(
                    &r,
                    "switchboard_broker_redeliveries_total",
                    "Consumed broker messages flagged as redelivered",
                ),
                dead_letters: counter(
                    &r,
                    "switchboard_broker_dead_letters_total",
                    "Service events dead-lettered",
                ),
            },
            registry: r,
            client_types: Mutex::new(HashSet::new()),
        };
        metrics.zero_known_series(business_types);
        metrics
    }

    /// Creates the series whose label values are known, at zero, so that
    /// dashboards and `rate()` see them before the first event.
    fn zero_known_series(&self, business_types: &[&str]) {
        for reason in SESSION_END_REASONS {
            self.session_ends.with_label_values(&[reason]);
        }
        for outcome in DeliveryOutcome::ALL {
            self.deliveries.with_label_values(&[outcome.label()]);
        }
        for refusal in UpgradeRefusal::ALL {
            self.upgrades_refused.with_label_values(&[refusal.label()]);
        }
        for outcome in ["accepted", "refused", "unavailable"] {
            self.events_published.with_label_values(&[outcome]);
        }
        for outcome in ["confirmed", "failed"] {
            self.broker.publishes.with_label_values(&[outcome]);
        }
        for business_type in business_types {
            for source in ["client", "event"] {
                self.handler_seconds
                    .with_label_values(&[business_type, source]);
            }
        }
    }

    /// The counters a broker implementation increments.
    pub fn broker(&self) -> BrokerMetrics {
        self.broker.clone()
    }

    /// The label for `client_type`: itself while fewer than
    /// [`MAX_CLIENT_TYPE_LABELS`] types were seen, else `other`.
    fn client_type_label(&self, client_type: &str) -> String {
        let mut seen = self
            .client_types
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if seen.contains(client_type) {
            return client_type.to_owned();
        }
        if seen.len() < MAX_CLIENT_TYPE_LABELS {
            seen.insert(client_type.to_owned());
            return client_type.to_owned();
        }
        OTHER_CLIENT_TYPE.to_owned()
    }

    /// A session opened (and its `CONNECTED` frame is on its way). The
    /// returned guard counts it as open until dropped.
    pub fn session_opened(&self, client_type: &str) -> OpenSession {
        let sessions = self
            .sessions
            .with_label_values(&[self.client_type_label(client_type)]);
        sessions.inc();
        self.connections.inc();
        self.frame_sent(Some(MessageType::Connected));
        OpenSession {
            connections: self.connections.clone(),
            sessions,
        }
    }

    /// A session ended for `reason` (a [`crate::session::SessionEnd`] label).
    pub(crate) fn session_ended(&self, reason: &str) {
        self.session_ends.with_label_values(&[reason]).inc();
    }

    /// A session was closed because its client did not read.
    pub(crate) fn slow_client_disconnected(&self) {
        self.slow_client_disconnects.inc();
    }

    /// A client frame was dropped with `RATE_LIMITED`.
    pub(crate) fn frame_rate_limited(&self) {
        self.rate_limited_frames.inc();
    }

    /// A frame arrived; `None` when it could not be parsed.
    pub(crate) fn frame_received(&self, message_type: Option<MessageType>) {
        self.frames_received
            .with_label_values(&[message_type_label(message_type, "invalid")])
            .inc();
    }

    /// A binary frame arrived (refused by the protocol).
    pub(crate) fn binary_frame_received(&self) {
        self.frames_received.with_label_values(&["binary"]).inc();
    }

    /// A frame was written or queued for one client.
    pub(crate) fn frame_sent(&self, message_type: Option<MessageType>) {
        self.frames_sent_n(message_type, 1);
    }

    fn frames_sent_n(&self, message_type: Option<MessageType>, n: u64) {
        if n != 0 {
            self.frames_sent
                .with_label_values(&[message_type_label(message_type, "unknown")])
                .inc_by(n);
        }
    }

    /// A delivery reached the hub: `n` sessions got `outcome`.
    pub(crate) fn delivered(
        &self,
        message_type: Option<MessageType>,
        outcome: DeliveryOutcome,
        n: u64,
    ) {
        if n == 0 {
            return;
        }
        self.deliveries
            .with_label_values(&[outcome.label()])
            .inc_by(n);
        if outcome == DeliveryOutcome::Delivered {
            self.frames_sent_n(message_type, n);
        }
    }

    /// Starts timing a handler call; the time is recorded when the returned
    /// timer is dropped. `business_type` must be a registered one.
    pub(crate) fn handler_timer(
        &self,
        business_type: &str,
        source: &'static str,
    ) -> prometheus::HistogramTimer {
        self.handler_seconds
            .with_label_values(&[business_type, source])
            .start_timer()
    }

    /// An upgrade was refused for `reason`.
    pub(crate) fn upgrade_refused(&self, reason: UpgradeRefusal) {
        self.upgrades_refused
            .with_label_values(&[reason.label()])
            .inc();
    }

    /// A token was issued.
    pub(crate) fn token_issued(&self) {
        self.tokens_issued.inc();
    }

    /// A `/api/publish` call ended: `accepted`, `refused` or `unavailable`.
    pub(crate) fn event_published(&self, outcome: &'static str) {
        self.events_published.with_label_values(&[outcome]).inc();
    }

    /// The text exposition of every metric, after refreshing the gauges that
    /// are read rather than counted.
    pub fn render(&self, broker_ready: bool, draining: bool, used_tokens: usize) -> String {
        self.broker_ready.set(i64::from(broker_ready));
        self.draining.set(i64::from(draining));
        self.used_tokens
            .set(i64::try_from(used_tokens).unwrap_or(i64::MAX));
        let mut text = Vec::new();
        // Encoding into a Vec cannot fail for metrics built by this module.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut text);
        String::from_utf8(text).unwrap_or_default()
    }

    /// The `Content-Type` of [`Metrics::render`]'s output.
    pub fn content_type() -> &'static str {
        prometheus::TEXT_FORMAT
    }
}

/// Keeps a session counted in `switchboard_connections` and
/// `switchboard_sessions` until dropped.
#[derive(Debug)]
pub struct OpenSession {
    connections: IntGauge,
    sessions: IntGauge,
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.connections.dec();
        self.sessions.dec();
    }
}

fn message_type_label(message_type: Option<MessageType>, absent: &'static str) -> &'static str {
    match message_type {
        None => absent,
        Some(MessageType::ClientToServer) => "CLIENT_TO_SERVER",
        Some(MessageType::ServerToClient) => "SERVER_TO_CLIENT",
        Some(MessageType::ClientToClient) => "CLIENT_TO_CLIENT",
        Some(MessageType::Subscribe) => "SUBSCRIBE",
        Some(MessageType::Unsubscribe) => "UNSUBSCRIBE",
        Some(MessageType::Ack) => "ACK",
        Some(MessageType::Heartbeat) => "HEARTBEAT",
        Some(MessageType::Connected) => "CONNECTED",
        Some(MessageType::Error) => "ERROR",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Client types past the cap share the `other` label.
    #[test]
    fn client_type_labels_are_capped() {
        let metrics = Metrics::new(&["notice"]);
        let guards: Vec<_> = (0..MAX_CLIENT_TYPE_LABELS + 5)
            .map(|i| metrics.session_opened(&format!("type{i}")))
            .collect();
        let text = metrics.render(true, false, 0);
        assert!(text.contains("switchboard_sessions{client_type=\"type0\"} 1"));
        assert!(
            text.contains("switchboard_sessions{client_type=\"other\"} 5"),
            "{text}"
        );
        assert!(!text.contains("type33"));
        drop(guards);
        let text = metrics.render(true, false, 0);
        assert!(text.contains("switchboard_connections 0"), "{text}");
    }

    /// Known series exist at zero before any event.
    #[test]
    fn known_series_start_at_zero() {
        let text = Metrics::new(&["notice"]).render(false, false, 0);
        assert!(text.contains("switchboard_session_ends_total{reason=\"slow_client\"} 0"));
        assert!(text.contains("switchboard_deliveries_total{outcome=\"no_local_session\"} 0"));
        let latency = r#"handler_duration_seconds_count{business_type="notice",source="event"} 0"#;
        assert!(text.contains(latency));
        assert!(text.contains("switchboard_broker_ready 0"));
    }
}
